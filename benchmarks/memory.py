"""Peak memory and time of the log-prob pass and of one training micro-batch: plain vs lean (chunked) log-probs.

Each measurement runs in a fresh process (peak RSS, VmHWM, is a whole-process maximum) on the embedded
SmolLM2-135M on CPU: load the model, build a micro-batch of random tokens, record the resident memory, run the pass,
report the peak and its rise over the model-loaded baseline. `plain` computes the [rows, R, vocab] float32 logits
of all response columns at once (the code before the lean path); `chunked` gathers the response positions' hidden
states and runs the LM head `--chunk` tokens at a time, recomputing it in backward (remix_rft/logprobs.py);
`chunked + act. ckpt` adds activation checkpointing (`model.gradient_checkpointing=true`, the default job's where memory is short).

    python benchmarks/memory.py                          # the four passes, table printed
    python benchmarks/memory.py --job                    # + the default job (`remix-rft train`) peak RSS and time
    python benchmarks/memory.py --job --job-overrides train.steps=2 eval.before_training=false
    python benchmarks/memory.py --only-job --allocators auto system   # the job under jemalloc, then glibc's malloc

Prints a table; nothing is asserted (targets are checked by reading it, see the README's Benchmarks section).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def worker(kind: str, path: str, args: argparse.Namespace) -> dict:
    import torch

    from remix_rft.batching import collate, token_logprobs
    from remix_rft.metrics import peak_rss_mb, rss_mb
    from remix_rft.models import autocast_context, enable_activation_checkpointing, load_model

    torch.manual_seed(0)
    model = load_model(args.model)
    model.train(kind == "train")
    if path == "checkpointed":
        enable_activation_checkpointing(model)
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompts = torch.randint(3, vocab, (args.rows, args.prompt_tokens), generator=generator).tolist()
    responses = torch.randint(3, vocab, (args.rows, args.response_tokens), generator=generator).tolist()
    batch = collate(prompts, responses, pad_token_id=0)
    chunk = None if path == "plain" else args.chunk
    baseline = rss_mb()
    start = time.perf_counter()
    if kind == "logprobs":
        with torch.no_grad(), autocast_context("cpu", args.bf16):
            token_logprobs(model, batch, with_entropy=True, chunk_tokens=chunk)
    else:
        with autocast_context("cpu", args.bf16):
            logp, entropy = token_logprobs(model, batch, with_entropy=True, chunk_tokens=chunk)
        (logp.sum() + 0.01 * entropy.sum()).backward()
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    return {"baseline_mb": baseline, "peak_mb": peak, "seconds": seconds}


def run_worker(kind: str, path: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", kind, path, "--rows", str(args.rows),
               "--prompt-tokens", str(args.prompt_tokens), "--response-tokens", str(args.response_tokens),
               "--chunk", str(args.chunk), "--model", args.model] + (["--bf16"] if args.bf16 else [])
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_job(overrides: list[str], allocator: str) -> dict:
    """The default job in a subprocess (REMIX_RFT_ALLOCATOR=`allocator`): wall time, the allocator it ran under,
    the peak RSS it logged, and the plan's CPU estimate."""
    import re
    import tempfile

    from remix_rft.config import load_config
    from remix_rft.memory import ALLOCATOR_ENV
    from remix_rft.metrics import read_metrics
    from remix_rft.plan import memory_estimate, resolve_architecture

    with tempfile.TemporaryDirectory() as tmp:
        run = [f"logging.output_dir={tmp}", "logging.run_name=job", "logging.progress=false"]
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), ALLOCATOR_ENV: allocator}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "remix_rft.cli", "train", *overrides, *run], env=env,
                              capture_output=True, text=True)  # the table is ours
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"the default job failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        used = re.search(r"host memory allocator: (\w+)", done.stderr)
        lines = read_metrics(Path(tmp) / "job" / "metrics.jsonl")
    train = [line for line in lines if line["type"] == "train"]
    evals = [line for line in lines if line["type"] == "eval"]
    config = load_config("quickstart", overrides)
    estimate = memory_estimate(config, resolve_architecture(config.model.name), prompt_tokens=64, device_type="cpu")
    accuracy = [(e["step"], {k: v for k, v in e.items() if k.endswith("pass@1")}) for e in evals]
    return {"seconds": seconds, "allocator": used.group(1) if used else "?",
            "peak_rss_mb": max(line["memory/peak_rss_mb"] for line in train),
            "plan_mb": estimate["peak"] / 2**20, "eval": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--response-tokens", type=int, default=192)
    parser.add_argument("--chunk", type=int, default=512, help="LM-head chunk of the lean path, in tokens")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (slow on CPUs without AVX512-BF16)")
    parser.add_argument("--job", action="store_true", help="also run the default job and report its peak RSS")
    parser.add_argument("--job-overrides", nargs="*", default=[], help="overrides for the default job")
    parser.add_argument("--only-job", action="store_true", help="the default job only, not the four passes")
    parser.add_argument("--allocators", nargs="+", default=["auto"], choices=["auto", "jemalloc", "system"],
                        help="run the job once per host allocator (REMIX_RFT_ALLOCATOR; auto: jemalloc if installed)")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args)))
        return
    tokens = args.rows * (args.prompt_tokens + args.response_tokens)
    print(f"model {args.model}, micro-batch {args.rows} rows x ({args.prompt_tokens} prompt + {args.response_tokens}"
          f" response) = {tokens} tokens, {'bf16 autocast' if args.bf16 else 'float32'}, "
          f"{os.cpu_count()} CPUs, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    header = f"{'pass':<24} {'log-probs':<22} {'peak RSS MB':>12} {'rise MB':>9} {'seconds':>8}"
    if not args.only_job:
        print(header + "\n" + "-" * len(header))
    names = {"plain": "plain (full logits)", "chunked": f"chunked ({args.chunk} tokens)",
             "checkpointed": "chunked + act. ckpt"}
    for kind, label in () if args.only_job else (("logprobs", "log-prob pass (no grad)"),
                                                  ("train", "train micro-batch")):
        for path in ("plain", "chunked") if kind == "logprobs" else ("plain", "chunked", "checkpointed"):
            result = run_worker(kind, path, args)
            name = names[path]
            print(f"{label:<24} {name:<22} {result['peak_mb']:>12.0f} "
                  f"{result['peak_mb'] - result['baseline_mb']:>9.0f} {result['seconds']:>8.1f}", flush=True)
    if args.job or args.only_job:
        print(f"\ndefault job: remix-rft train {' '.join(args.job_overrides)}")
        header = f"{'allocator':<10} {'wall min':>9} {'peak RSS MB':>12} {'plan MB':>8}  held-out Pass@1 by step"
        print(header + "\n" + "-" * len(header), flush=True)
        for allocator in args.allocators:
            job = run_job(args.job_overrides, allocator)
            scores = "; ".join(f"{step}: {scores}" for step, scores in job["eval"])
            print(f"{job['allocator']:<10} {job['seconds'] / 60:>9.1f} {job['peak_rss_mb']:>12.0f} "
                  f"{job['plan_mb']:>8.0f}  {scores}", flush=True)


if __name__ == "__main__":
    main()
