"""Pipelined (one-step-off) vs synchronous generation on the default job: seconds a step, where they go, peak RSS.

Each run is its own `remix-rft train` process (the CLI, with the allocator users get) on `--config quickstart`, the
same data, seed and schedule; `rollout.pipeline=true` with `rollout.max_staleness=1` against the synchronous default
(and, with `--runs ... staleness0`, the pipeline with no overlap). No evaluation: the table is about step time.
Prints one table; nothing is asserted (README, Pipelined generation holds the figures).

    python benchmarks/pipeline.py                      # 8 steps each way: ~12 min on 2 cores
    python benchmarks/pipeline.py --steps 4 --runs sync pipelined staleness0
"""

from __future__ import annotations

import argparse
import os
import re

from soak import run_cli  # one `remix-rft train` process per run (benchmarks/soak.py)

RUNS = {"sync": [], "pipelined": ["rollout.pipeline=true", "rollout.max_staleness=1"],
        "staleness0": ["rollout.pipeline=true", "rollout.max_staleness=0"]}


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def run_job(overrides: list[str]) -> dict:
    """One run's per-step times (step 1 left out: nothing was generated ahead for it) and peak RSS."""
    lines, seconds, log = run_cli("quickstart", ["checkpoint.save_final=false", "eval.before_training=false",
                                                 "eval.after_training=false", *overrides])
    precision = re.search(r"precision: (\w+)", log)
    train = [line for line in lines if line["type"] == "train"]
    later = train[1:]
    return {
        "steps": len(train), "seconds": seconds, "precision": precision.group(1) if precision else "?",
        "step_seconds": mean([line["time/step"] for line in later]),
        "generation_seconds": mean([line["time/generation"] for line in later]),
        "wait_seconds": mean([line.get("time/generation_wait", line["time/generation"]) for line in later]),
        "update_seconds": mean([line["time/update"] for line in later]),
        "peak_rss_mb": max(line["memory/peak_rss_mb"] for line in train),
        "staleness": mean([line.get("rollouts/staleness", 0.0) for line in later]),
        "reward": mean([line["reward/mean"] for line in train]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["sync", "pipelined"], choices=list(RUNS))
    parser.add_argument("--steps", type=int, default=8, help="train.steps of each run")
    parser.add_argument("--overrides", nargs="*", default=[], help="more key=value overrides for every run")
    args = parser.parse_args()

    from remix_rft.hardware import cpu_model_name

    overrides = [f"train.steps={args.steps}", *args.overrides]
    print(f"Pipelined vs synchronous generation: the default job ({' '.join(overrides)}); CPU {cpu_model_name()}, "
          f"{os.cpu_count()} cores", flush=True)
    results = {}
    for name in args.runs:
        results[name] = run_job([*overrides, *RUNS[name]])
        print(f"{name}: {results[name]}", flush=True)
    print("\n| run | precision | steps | s/step (steps 2+) | generation s | waited for it s | update s | "
          "staleness | peak RSS (MiB) | mean reward |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['precision']} | {r['steps']} | {r['step_seconds']:.1f} | {r['generation_seconds']:.1f} "
              f"| {r['wait_seconds']:.1f} | {r['update_seconds']:.1f} | {r['staleness']:.1f} | "
              f"{r['peak_rss_mb']:,.0f} | {r['reward']:.3f} |")


if __name__ == "__main__":
    main()
