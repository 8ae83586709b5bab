"""Data-parallel training cost: step time and peak memory per rank, one process vs torchrun + FSDP2.

Each setup trains the same config for a few steps in its own process(es) and the table reads its metrics.jsonl:
median seconds per step (the first step, which warms up, left out), rollouts per second, and the peak memory of each
rank (resident memory; allocated GPU memory on CUDA).

    python benchmarks/distributed.py --out /tmp/dist                  # CPU: plain vs torchrun 2 processes (gloo)
    python benchmarks/distributed.py --out /tmp/dist --gpu            # GPU: plain vs torchrun 1 process (FSDP2)
    python benchmarks/distributed.py --out /tmp/dist --gpu --nproc 1 2 4 --model smollm2-135m-instruct

Setups: `plain` is `python -m remix_rft.cli train` (no process group, no sharding); `torchrun xN` is
`torchrun --standalone --nproc-per-node N -m remix_rft.cli train` (FSDP2 over N ranks; 1 rank still runs the FSDP2
code path). The global batch (prompts x samples per step) is the same in every setup.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from remix_rft.evaluation import markdown_table

REPO = Path(__file__).resolve().parent.parent


def train_command(nproc: int | None, overrides: list[str]) -> list[str]:
    cli = ["-m", "remix_rft.cli", "train", "--config", "grpo", *overrides]
    if nproc is None:
        return [sys.executable, *cli]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *cli]


def run_setup(name: str, nproc: int | None, args: argparse.Namespace) -> dict:
    run_dir = Path(args.out) / name
    overrides = [f"model.name={args.model}", f"model.device={'cuda' if args.gpu else 'cpu'}",
                 f"train.steps={args.steps}", f"train.prompts_per_step={args.prompts}",
                 f"train.samples_per_prompt={args.samples}", f"train.minibatch_size={args.prompts * args.samples // 2}",
                 f"rollout.max_new_tokens={args.max_new_tokens}", f"model.dtype={'bfloat16' if args.bf16 else 'float32'}",
                 "eval.before_training=false", "eval.after_training=false", "checkpoint.every=0",
                 "checkpoint.save_final=false", "logging.progress=false", "logging.tensorboard=false",
                 f"logging.output_dir={args.out}", f"logging.run_name={name}", *args.overrides]
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        metrics.unlink()
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TOKENIZERS_PARALLELISM": "false"}
    if not args.gpu:
        env["OMP_NUM_THREADS"] = str(args.threads)
    command = train_command(nproc, overrides)
    print("$", " ".join(command), flush=True)
    subprocess.run(command, env=env, check=True, cwd=REPO)
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [line for line in lines if line.get("type") == "train"]
    timed = train[1:] or train
    last = train[-1]
    ranks = int(last.get("distributed/world_size", 1))

    def per_rank(key: str) -> str:
        values = [last.get(f"{key}/rank{r}", last.get(key) if ranks == 1 else None) for r in range(ranks)]
        return " / ".join("-" if v is None else f"{v:.0f}" for v in values)

    seconds = statistics.median(line["time/step"] for line in timed)
    return {"setup": name, "ranks": ranks, "s/step": seconds,
            "rollouts/s": statistics.median(line["rollouts/step"] / line["time/step"] for line in timed),
            "rollouts/step": last["rollouts/step"], "rss": per_rank("memory/peak_rss_mb"),
            "gpu": per_rank("memory/peak_gpu_mb") if "memory/peak_gpu_mb" in last else "-"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for the runs")
    parser.add_argument("--gpu", action="store_true", help="CUDA: plain vs torchrun with --nproc processes")
    parser.add_argument("--nproc", type=int, nargs="+", default=None,
                        help="torchrun process counts to compare with the plain run (default: 2 on CPU, 1 on GPU)")
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--bf16", action="store_true", help="model.dtype=bfloat16: fp32 masters, bf16 autocast / FSDP2 bf16 compute, float32 reduction")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process (OMP_NUM_THREADS)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="more config overrides")
    args = parser.parse_args(argv)
    counts = args.nproc or ([1] if args.gpu else [2])
    rows = [run_setup("plain", None, args)] + [run_setup(f"torchrun-x{n}", n, args) for n in counts]
    header = ["setup", "ranks", "s/step (median)", "rollouts/s", "rollouts/step", "peak RSS MiB per rank",
              "peak GPU MiB per rank"]
    table = [[r["setup"], str(r["ranks"]), f"{r['s/step']:.2f}", f"{r['rollouts/s']:.1f}", str(r["rollouts/step"]),
              r["rss"], r["gpu"]] for r in rows]
    device = "GPU" if args.gpu else f"CPU ({args.threads} thread(s) per process)"
    print(f"\n{args.model}, {args.prompts} prompts x {args.samples} samples a step, {args.max_new_tokens} new tokens, "
          f"{args.steps} steps, {device}:\n")
    print(markdown_table(header, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
