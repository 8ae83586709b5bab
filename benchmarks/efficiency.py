"""Efficiency study: GRPO, ReMix-GRPO, PPO, ReMix-PPO and TRL's GRPOTrainer on the same task and budget.

Every run uses the same model, seed, data, reward, prompts per step and samples per prompt (the `quickstart` config
with the overrides below), each in its own process so its wall time and peak memory are its own. Then one table:
held-out accuracy at fixed rollout budgets, rollouts needed to reach a target accuracy, final accuracy, seconds per
step and in total, peak memory; plus the ablations (without raised UTD, without KL-Convex, without reincarnation), an
off-policy fraction sweep (response length and importance ratio against p: the Whipping effect) and figures.

    python benchmarks/efficiency.py --out runs/efficiency --docs docs/results.md        # the full study
    python benchmarks/efficiency.py --out /tmp/eff --quick                               # minutes, tiny model

A finished run (its final evaluation logged) is not run again, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

from remix_rft.evaluation import markdown_table
from remix_rft.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
TRL_SCRIPT = Path(__file__).resolve().parent / "trl_baseline.py"
REPORT_FIGURES = ("accuracy_vs_rollouts", "reward", "response_length", "importance_ratio", "kl_convex_weight")


@dataclass
class RunSpec:
    name: str
    overrides: list[str]
    group: str  # "main", "ablation" or "sweep"
    engine: str = "remix"  # "remix" (our trainer) or "trl"
    label: str = ""


def plan_runs(sweep: list[float], ablations: list[str], runs: list[str]) -> list[RunSpec]:
    """What the study runs. Plain GRPO/PPO are `remix.enabled=false`: the same code path with p = 0 and m = 1."""
    catalogue = {
        "grpo": RunSpec("grpo", ["remix.enabled=false"], "main", label="GRPO"),
        "remix-grpo": RunSpec("remix-grpo", [], "main", label="ReMix-GRPO"),
        "ppo": RunSpec("ppo", ["algorithm.name=ppo", "remix.enabled=false"], "main", label="PPO"),
        "remix-ppo": RunSpec("remix-ppo", ["algorithm.name=ppo"], "main", label="ReMix-PPO"),
        "trl-grpo": RunSpec("trl-grpo", ["remix.enabled=false"], "main", engine="trl", label="TRL GRPOTrainer"),
    }
    unknown = sorted(set(runs) - set(catalogue))
    if unknown:
        raise SystemExit(f"unknown run(s) {unknown}; known: {sorted(catalogue)}")
    specs = [catalogue[name] for name in runs]
    ablation_catalogue = {
        "no-utd": (["remix.updates_per_batch=1"], "ReMix-GRPO w/o raised UTD"),
        "no-klconvex": (["remix.kl_convex=false"], "ReMix-GRPO w/o KL-Convex"),
        "no-reincarnation": (["remix.reincarnate_at=null"], "ReMix-GRPO w/o reincarnation"),
    }
    for name in ablations:
        if name not in ablation_catalogue:
            raise SystemExit(f"unknown ablation {name!r}; known: {sorted(ablation_catalogue)}")
        overrides, label = ablation_catalogue[name]
        specs.append(RunSpec(f"remix-grpo-{name}", overrides, "ablation", label=label))
    for p in sweep:
        # without reincarnation, so the whole run shows the effect of p
        specs.append(RunSpec(f"sweep-p{p:g}", [f"remix.offpolicy_fraction={p}", "remix.reincarnate_at=null"],
                             "sweep", label=f"p = {p:g}"))
    return specs


def run_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return read_metrics(path) if path.exists() else []


def is_finished(run_dir: Path, steps: int) -> bool:
    return any(r.get("type") == "eval" and r.get("step") == steps for r in run_records(run_dir)) and (
        run_dir / "wall.json").exists()


def run_one(spec: RunSpec, base: list[str], out: Path, steps: int) -> None:
    run_dir = out / spec.name
    if is_finished(run_dir, steps):
        print(f"[{spec.name}] already finished, skipped", flush=True)
        return
    if run_dir.exists():
        # a half-finished run is restarted from scratch: its timings would not be comparable otherwise
        shutil.rmtree(run_dir)
    overrides = [*base, *spec.overrides]
    if spec.engine == "trl":
        command = [sys.executable, str(TRL_SCRIPT), "--config", "quickstart", *overrides, "--run-dir", str(run_dir)]
    else:
        command = [sys.executable, "-m", "remix_rft.cli", "train", "--config", "quickstart", *overrides,
                   f"logging.output_dir={out}", f"logging.run_name={spec.name}"]
    print(f"[{spec.name}] {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{spec.name}.log").open("w") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"[{spec.name}] failed with exit code {result.returncode}; see {out / (spec.name + '.log')}")
    (run_dir / "wall.json").write_text(json.dumps({"wall_seconds": wall, "command": command}))
    print(f"[{spec.name}] done in {wall:.0f} s", flush=True)


@dataclass
class RunSummary:
    spec: RunSpec
    evals: list[dict] = field(default_factory=list)  # (rollouts, accuracy) in order
    train: list[dict] = field(default_factory=list)
    wall: float = float("nan")

    def final_problems(self) -> int | None:
        """How many held-out problems the last evaluation graded (the sample size behind its accuracy)."""
        value = self.evals[-1].get("eval/average/problems") if self.evals else None
        return int(value) if value else None

    def accuracy_curve(self) -> list[tuple[int, float]]:
        return [(int(e["rollouts/total"]), float(e["eval/average/pass@1"])) for e in self.evals]

    def accuracy_at(self, budget: int) -> float | None:
        """Held-out accuracy of the last evaluation made within `budget` rollouts."""
        within = [acc for rollouts, acc in self.accuracy_curve() if rollouts <= budget]
        return within[-1] if within else None

    def rollouts_to(self, target: float) -> int | None:
        return next((rollouts for rollouts, acc in self.accuracy_curve() if acc >= target), None)

    def mean(self, key: str, phase: str | None = None) -> float | None:
        values = [r[key] for r in self.train
                  if r.get(key) is not None and (phase is None or r.get("phase") == phase)]
        return sum(values) / len(values) if values else None

    def last(self, key: str) -> float | None:
        values = [r[key] for r in self.train if r.get(key) is not None]
        return values[-1] if values else None


def summarise(spec: RunSpec, out: Path) -> RunSummary:
    records = run_records(out / spec.name)
    summary = RunSummary(spec, evals=[r for r in records if r.get("type") == "eval"],
                         train=[r for r in records if r.get("type") == "train"])
    wall_file = out / spec.name / "wall.json"
    if wall_file.exists():
        summary.wall = json.loads(wall_file.read_text())["wall_seconds"]
    return summary


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: how far apart two runs' accuracies must be to mean anything."""
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _interval(s: RunSummary) -> str:
    curve, n = s.accuracy_curve(), s.final_problems()
    if not curve or not n:
        return "-"
    low, high = wilson_interval(curve[-1][1], n)
    return f"{100 * low:.1f}-{100 * high:.1f}"


def final_verdicts(run_dir: Path, step: int) -> dict[tuple[str, str], bool]:
    """Per held-out problem, whether the evaluation at `step` got it right (first sample: greedy Pass@1)."""
    path = run_dir / "eval" / f"step_{step:06d}" / "samples.jsonl"
    if not path.exists():
        return {}
    verdicts = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("sample_index", 0) == 0:
            verdicts[(row["benchmark"], str(row["problem_id"]))] = bool(row["correct"])
    return verdicts


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar test (binomial on the discordant pairs): chance of a split this uneven under no
    difference between two runs graded on the same problems."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_first, only_second) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_table(summaries: list[RunSummary], baseline: RunSummary, out: Path, steps: int) -> str:
    """Each run against the baseline on the same held-out problems at the final evaluation."""
    base = final_verdicts(out / baseline.spec.name, steps)
    header = ["run", "problems", "both right", "right only here", f"right only in {baseline.spec.label}",
              "exact McNemar p"]
    rows = []
    for s in summaries:
        verdicts = final_verdicts(out / s.spec.name, steps)
        shared = sorted(set(verdicts) & set(base))
        if s is baseline or not shared:
            continue
        both = sum(verdicts[k] and base[k] for k in shared)
        only_here = sum(verdicts[k] and not base[k] for k in shared)
        only_base = sum(base[k] and not verdicts[k] for k in shared)
        rows.append([s.spec.label or s.spec.name, str(len(shared)), str(both), str(only_here), str(only_base),
                     f"{mcnemar_exact(only_here, only_base):.2f}"])
    return markdown_table(header, rows)


def main_table(summaries: list[RunSummary], budgets: list[int], target: float) -> str:
    header = ["run", "rollouts", *[f"acc @ {b}" for b in budgets], f"rollouts to {100 * target:.1f}%",
              "acc before", "final acc", "95% CI", "s / step", "total s", "peak RSS (GB)"]
    rows = []
    for s in summaries:
        curve = s.accuracy_curve()
        reached = s.rollouts_to(target)
        peak = max((r.get("memory/peak_rss_mb") or 0 for r in s.train), default=0) / 1024
        rows.append([s.spec.label or s.spec.name, str(curve[-1][0] if curve else "-"),
                     *[_pct(s.accuracy_at(b)) for b in budgets],
                     "not reached" if reached is None else str(reached),
                     _pct(curve[0][1] if curve else None), _pct(curve[-1][1] if curve else None),
                     _interval(s), _num(s.mean("time/step")), _num(s.wall, 0), _num(peak, 2)])
    return markdown_table(header, rows)


def run_setting(run_dir: Path, section: str, key: str):
    """A value from a run's resolved config.yaml (None when absent)."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return None
    return (yaml.safe_load(path.read_text()) or {}).get(section, {}).get(key)


def sweep_table(summaries: list[RunSummary], out: Path) -> str:
    header = ["run", "p", "response length (mean)", "response length (last step)", "ratio mean (replayed)",
              "ratio max (replayed)", "clip fraction (replayed)", "ESS (replayed)", "final acc"]
    rows = []
    for s in sorted(summaries, key=lambda s: run_setting(out / s.spec.name, "remix", "offpolicy_fraction") or 0):
        p = run_setting(out / s.spec.name, "remix", "offpolicy_fraction")
        curve = s.accuracy_curve()
        rows.append([s.spec.label or s.spec.name, _num(p, 3), _num(s.mean("response_length/mean")),
                     _num(s.last("response_length/mean")), _num(s.mean("ratio/replay_mean"), 4),
                     _num(s.mean("ratio/replay_max"), 2), _num(s.mean("clip_fraction/replay"), 3),
                     _num(s.mean("ess/replay"), 3), _pct(curve[-1][1] if curve else None)])
    return markdown_table(header, rows)


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"{platform.system()} {platform.release()}")


def write_report(path: Path, out: Path, specs: list[RunSpec], args: argparse.Namespace, base: list[str],
                 budgets: list[int], target: float, figures: list[Path], command: str, steps: int) -> str:
    summaries = {s.name: summarise(s, out) for s in specs}
    groups = {g: [summaries[s.name] for s in specs if s.group == g] for g in ("main", "ablation", "sweep")}
    reference = summaries.get("remix-grpo")
    parts = [
        "# Efficiency study: ReMix vs on-policy PPO/GRPO and TRL, at laptop scale",
        "",
        f"Generated by `benchmarks/efficiency.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        f"- Machine: {machine_description()}; no GPU.",
        f"- Command: `{command}`",
        f"- Shared settings: the `quickstart` config with `{' '.join(base)}` (same model, seed, data, reward, "
        "prompts per step and samples per prompt for every run). Held-out accuracy is greedy Pass@1 on "
        "arithmetic test problems disjoint from the training ones.",
        f"- Target accuracy for \"rollouts to\": {100 * target:.1f}% (initial accuracy + {100 * args.target_gain:.0f} "
        "points). Budgets are in generated responses (rollouts).",
        "",
        "## Main comparison",
        "",
        main_table(groups["main"], budgets, target),
    ]
    if groups["ablation"]:
        parts += ["", "## Ablations (ReMix-GRPO)", "",
                  main_table(([reference] if reference else []) + groups["ablation"], budgets, target)]
    if groups["sweep"]:
        # the no-reincarnation ablation is the sweep's point at the default p
        points = groups["sweep"] + [s for s in groups["ablation"] if s.spec.name.endswith("no-reincarnation")]
        parts += ["", "## Off-policy fraction sweep (no reincarnation): the Whipping effect", "",
                  sweep_table(points, out)]
    baseline = summaries.get("grpo")
    if baseline is not None:
        table = paired_table([summaries[s.name] for s in specs], baseline, out, steps)
        if table.count("\n") > 1:
            parts += ["", "## Paired against GRPO at the final evaluation", "",
                      "Same held-out problems, greedy answers: problems only one of the two runs gets right, and the "
                      "exact McNemar test on them (p < 0.05: the difference is unlikely to be evaluation noise).", "",
                      table]
    shown = [f for f in figures if f.stem in REPORT_FIGURES]
    if shown:
        parts += ["", "## Figures", ""]
        for figure in shown:
            rel = figure.relative_to(path.parent) if figure.is_relative_to(path.parent) else figure
            parts.append(f"![{figure.stem}]({rel})")
    parts += ["", "## Reading the numbers", "", args.notes or "(see the issue notes)", ""]
    text = "\n".join(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def _without_notes(argv: list[str]) -> list[str]:
    """The command line as reported: `--notes` only adds prose, and its text would swamp the command."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--notes":
            skip = True
        elif not arg.startswith("--notes="):
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/efficiency"), help="where the runs go")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--eval-every", type=int, default=4)
    parser.add_argument("--eval-limit", type=int, default=100)
    parser.add_argument("--runs", default="grpo,remix-grpo,ppo,remix-ppo,trl-grpo")
    parser.add_argument("--ablations", default="no-utd,no-klconvex,no-reincarnation",
                        help="comma-separated; empty for none")
    parser.add_argument("--sweep", default="0.5,0.75",
                        help="off-policy fractions, run without reincarnation (the no-reincarnation ablation adds "
                             "the default p); empty for none")
    parser.add_argument("--target-gain", type=float, default=0.05,
                        help="target accuracy = mean initial accuracy + this")
    parser.add_argument("--docs", type=Path, default=None, help="write the markdown report (and figures) here")
    parser.add_argument("--notes", default="", help="text for the 'Reading the numbers' section")
    parser.add_argument("--quick", action="store_true", help="tiny random model, 2 steps: checks the pipeline")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    args = parser.parse_args(argv)

    split = [x.strip() for x in args.runs.split(",") if x.strip()]
    ablations = [x.strip() for x in args.ablations.split(",") if x.strip()]
    sweep = [float(x) for x in args.sweep.split(",") if x.strip()]
    steps = 2 if args.quick else args.steps
    base = [f"train.steps={steps}", f"eval.every={1 if args.quick else args.eval_every}",
            f"eval.limit={4 if args.quick else args.eval_limit}", "checkpoint.save_final=false",
            "logging.progress=false"]
    if args.quick:
        base += ["model.name=tiny-random", "model.autocast_bf16=false", "rollout.max_new_tokens=4",
                 "eval.max_new_tokens=4", "remix.reincarnate_at=1"]
    base += args.overrides
    specs = plan_runs(sweep, ablations, split)
    for spec in specs:
        run_one(spec, base, args.out, steps)

    summaries = [summarise(s, args.out) for s in specs]
    initial = [s.accuracy_curve()[0][1] for s in summaries if s.accuracy_curve()]
    target = (sum(initial) / len(initial) if initial else 0.0) + args.target_gain
    per_step = max((s.train[0]["rollouts/step"] for s in summaries if s.train), default=1)
    full = steps * per_step  # what on-policy GRPO generates over the whole run
    budgets = sorted({max(1, full // 4), max(1, full // 2), full})

    figures: list[Path] = []
    if args.docs:
        # only the figures the report links (`remix-rft plot` on the run directories draws the rest)
        from remix_rft.plotting import plot_runs

        figure_dir = args.docs.parent / "figures"
        main_runs = [args.out / s.name for s in specs if s.group == "main"]
        if main_runs:
            figures += plot_runs(main_runs, figure_dir / "main", labels=[s.label for s in specs if s.group == "main"],
                                 verbose=False, only=REPORT_FIGURES)
        extra = [s for s in specs if s.group != "main"]
        if extra:
            figures += plot_runs([args.out / s.name for s in extra], figure_dir / "ablations_sweep",
                                 labels=[s.label for s in extra], verbose=False, only=REPORT_FIGURES)
    command = "python benchmarks/efficiency.py " + " ".join(_without_notes(argv if argv is not None else sys.argv[1:]))
    report_path = args.docs or (args.out / "results.md")
    text = write_report(report_path, args.out, specs, args, base, budgets, target, figures, command, steps)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
