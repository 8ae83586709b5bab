"""LoRA vs full finetuning on the default job: peak RSS, seconds a step and held-out accuracy, same run otherwise.

Each run is its own `remix-rft train` process (the CLI, so the allocator is the one users get: jemalloc where
installed): `--config quickstart` (full finetuning) and `--config quickstart-lora` (rank-16 adapters on every linear
layer, the adapters' learning rate 10x train.lr), the same data, seed, schedule and held-out evaluation (greedy
Pass@1 before and after the run's steps). Prints one table; nothing is asserted (README, LoRA holds the figures).

    python benchmarks/lora.py                                    # the default job, both ways: ~40 min on 2 cores
    python benchmarks/lora.py --steps 4 --eval-limit 20          # a quick look
    python benchmarks/lora.py --runs lora --overrides model.lora.r=64
"""

from __future__ import annotations

import argparse
import os
import re

from soak import run_cli  # one `remix-rft train` process per run (benchmarks/soak.py)

RUNS = {"full": "quickstart", "lora": "quickstart-lora"}


def run_job(config: str, overrides: list[str]) -> dict:
    """One `remix-rft train` run: its per-step cost, held-out accuracy before/after and wall time."""
    lines, seconds, log = run_cli(config, ["checkpoint.save_final=false", *overrides])
    allocator = re.search(r"host memory allocator: (\w+)", log)
    precision = re.search(r"precision: (\w+)", log)
    train = [line for line in lines if line["type"] == "train"]
    accuracy = [line.get("eval/average/pass@1") for line in lines if line["type"] == "eval"]
    return {
        "steps": len(train), "seconds": seconds, "allocator": allocator.group(1) if allocator else "?",
        "precision": precision.group(1) if precision else "?",
        "step_seconds": sum(line["time/step"] for line in train) / len(train),
        "update_seconds": sum(line["time/update"] for line in train) / len(train),
        "peak_rss_mb": max(line["memory/peak_rss_mb"] for line in train),
        "before": accuracy[0] if len(accuracy) > 1 else None, "after": accuracy[-1] if accuracy else None,
        "rollouts": train[-1]["rollouts/total"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--steps", type=int, default=None, help="train.steps (default: the config's, 16)")
    parser.add_argument("--eval-limit", type=int, default=None, help="eval.limit (default: the config's, 100)")
    parser.add_argument("--overrides", nargs="*", default=[], help="more key=value overrides for every run")
    args = parser.parse_args()

    from remix_rft.hardware import cpu_model_name

    overrides = [*([f"train.steps={args.steps}"] if args.steps else []),
                 *([f"eval.limit={args.eval_limit}"] if args.eval_limit else []), *args.overrides]
    print(f"LoRA vs full finetuning: the default job ({' '.join(overrides) or 'as shipped'}); CPU {cpu_model_name()}, "
          f"{os.cpu_count()} cores", flush=True)
    results = {}
    for name in args.runs:
        results[name] = run_job(RUNS[name], overrides)
        print(f"{name}: {results[name]}", flush=True)
    print("\n| run | config | precision | steps | rollouts | s/step | update s/step | peak RSS (MiB) | "
          "held-out before | after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        before = f"{100 * r['before']:.1f}" if r["before"] is not None else "-"
        after = f"{100 * r['after']:.1f}" if r["after"] is not None else "-"
        print(f"| {name} | {RUNS[name]} | {r['precision']} | {r['steps']} | {r['rollouts']} | {r['step_seconds']:.1f} "
              f"| {r['update_seconds']:.1f} | {r['peak_rss_mb']:,.0f} | {before} | {after} |")


if __name__ == "__main__":
    main()
