"""Memory soak: the default job's shape run for many steps, RSS per step and its slope after warm-up.

A process whose resident memory grows a little every step runs out of memory on a long run, however low its peak
was on a short one. Each run here is its own `remix-rft train` process (the CLI, so the allocator is the one users
get: jemalloc where installed) on the quickstart config with evaluation and checkpoints off, for each precision:
`model.dtype=float32` and `model.dtype=bfloat16` (bf16 autocast; emulated, so slower, on CPUs without AVX512-BF16).
Every step logs `memory/rss_mb` (resident memory at the step's end, after the allocator has handed its free pages
back), `memory/heap_mb` (bytes allocated on the C heap: no allocator caching in it) and `memory/peak_rss_mb`; a
slope is the least-squares fit of RSS (or heap) against step over the steps after warm-up (the mix phase,
reincarnation and the first on-policy steps fill caches and the allocator's pools once).

    python benchmarks/soak.py --model tiny-random --steps 60                 # minutes
    python benchmarks/soak.py --model smollm2-135m-instruct --steps 20       # the embedded model: ~1 h on 2 cores
    python benchmarks/soak.py --model tiny-random --steps 60 --dtypes bfloat16 --overrides train.lr=1e-5

Prints a table and the RSS of every step; nothing is asserted (the README's Precision section holds the figures).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def slope_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope of ys against xs and its standard error (NaN where undefined): RSS swings from step to
    step with the responses' lengths, so a slope means something only next to its error."""
    n = len(xs)
    if n < 2:
        return float("nan"), float("nan")
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    var = sum((x - mean_x) ** 2 for x in xs)
    if not var:
        return float("nan"), float("nan")
    b = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var
    if n < 3:
        return b, float("nan")
    residual = sum((y - mean_y - b * (x - mean_x)) ** 2 for x, y in zip(xs, ys))
    return b, (residual / (n - 2) / var) ** 0.5


def default_warmup(steps: int, reincarnate_at: int | None) -> int:
    """Steps left out of the fit: through reincarnation plus two on-policy steps, at least 5, at most half."""
    warm = max(5, (reincarnate_at or 0) + 2)
    return min(warm, steps // 2)


def run_cli(config: str, overrides: list[str], keep: Path | None = None,
            name: str = "job") -> tuple[list[dict], float, str]:
    """`remix-rft train --config CONFIG OVERRIDES` in its own process, run dir in a temp folder (or under `keep`,
    where its metrics can be read while it runs and stay afterwards): every metrics line, the wall seconds and the
    process's stderr (its log)."""
    from remix_rft.metrics import read_metrics

    if keep is not None and (keep / name).exists():  # metrics.jsonl is appended to: two runs would mix
        sys.exit(f"{keep / name} exists: give --keep an empty folder")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(keep) if keep is not None else tmp
        args = ["--config", config, "logging.progress=false", "logging.tensorboard=false",
                f"logging.output_dir={out}", f"logging.run_name={name}", *overrides]
        env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "remix_rft.cli", "train", *args], env=env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"remix-rft train --config {config} {' '.join(overrides)} failed (exit {done.returncode}):\n"
                     f"{done.stderr[-3000:]}")
        return read_metrics(Path(out) / name / "metrics.jsonl"), seconds, done.stderr


def run_job(overrides: list[str], keep: Path | None = None, name: str = "job") -> tuple[list[dict], float, str]:
    """The quickstart job with evaluation and checkpoints off: its train lines, wall seconds and host allocator."""
    lines, seconds, log = run_cli("quickstart", ["eval.before_training=false", "eval.after_training=false",
                                                 "eval.every=0", "checkpoint.every=0", "checkpoint.save_final=false",
                                                 *overrides], keep, name)
    allocator = re.search(r"host memory allocator: (\w+)", log)
    return [line for line in lines if line["type"] == "train"], seconds, allocator.group(1) if allocator else "?"


def run_soak(model: str, dtype: str, steps: int, overrides: list[str], keep: Path | None = None) -> dict:
    """One soak run: its per-step RSS, peak, wall time and allocator."""
    train, seconds, allocator = run_job([f"model.name={model}", f"model.dtype={dtype}", f"train.steps={steps}",
                                         *overrides], keep, f"soak-{dtype}")
    return {"steps": [line["step"] for line in train], "rss": [line["memory/rss_mb"] for line in train],
            "heap": [line.get("memory/heap_mb") for line in train],
            "peak": max(line["memory/peak_rss_mb"] for line in train), "seconds": seconds,
            "step_seconds": sum(line["time/step"] for line in train) / len(train), "allocator": allocator}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-random", help="tiny-random, smollm2-135m-instruct or a path")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--warmup", type=int, default=None,
                        help="steps left out of the slope (default: through reincarnation + 2, at least 5)")
    parser.add_argument("--overrides", nargs="*", default=[], help="more key=value overrides of the quickstart job")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep each run's directory (soak-<dtype>/metrics.jsonl) here, readable while it runs")
    args = parser.parse_args()

    from remix_rft.config import load_config
    from remix_rft.hardware import cpu_model_name, native_cpu_bf16

    config = load_config("quickstart", [f"train.steps={args.steps}", *args.overrides])
    warmup = args.warmup if args.warmup is not None else default_warmup(args.steps, config.remix.reincarnate_at)
    print(f"soak: quickstart on {args.model}, {args.steps} steps, slope over steps {warmup + 1}-{args.steps}; "
          f"CPU {cpu_model_name()} ({os.cpu_count()} cores, native bf16: {native_cpu_bf16()})", flush=True)
    results = {}
    for dtype in args.dtypes:
        results[dtype] = result = run_soak(args.model, dtype, args.steps, args.overrides, args.keep)
        print(f"{dtype}: RSS MiB per step: " + " ".join(f"{r:.0f}" for r in result["rss"]), flush=True)
    header = (f"{'model.dtype':<12} {'allocator':<9} {'s/step':>7} {'RSS@1':>7} {f'RSS@{warmup}':>8} "
              f"{'RSS@last':>9} {'peak RSS':>9} {'slope MiB/step':>15} {'std. error':>10} {'heap slope':>10} "
              f"{'std. error':>10}")
    print("\n" + header + "\n" + "-" * len(header))
    for dtype, r in results.items():
        after = [(s, v) for s, v in zip(r["steps"], r["rss"]) if s > warmup]
        fit, error = slope_fit([s for s, _ in after], [v for _, v in after])
        heap = [(s, v) for s, v in zip(r["steps"], r["heap"]) if s > warmup and v is not None]
        heap_fit, heap_error = slope_fit([s for s, _ in heap], [v for _, v in heap])
        at_warmup = r["rss"][min(warmup, len(r["rss"])) - 1]
        print(f"{dtype:<12} {r['allocator']:<9} {r['step_seconds']:>7.1f} {r['rss'][0]:>7.0f} {at_warmup:>8.0f} "
              f"{r['rss'][-1]:>9.0f} {r['peak']:>9.0f} {fit:>15.2f} {error:>10.2f} {heap_fit:>10.2f} "
              f"{heap_error:>10.2f}")


if __name__ == "__main__":
    main()
