"""The efficiency study's report: each run's results (from its directory or a combined metrics file), the tables
(accuracy at rollout budgets, rollouts to targets, seeds, savings, paired tests, the off-policy sweep), figures, and
the markdown written between a document's section markers.

Part of `benchmarks/efficiency.py` (the entry point), beside `efficiency_study.py` and `efficiency_runner.py`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml

from efficiency_runner import REPO, run_records
from efficiency_study import RunSpec
from remix_rft.evaluation import markdown_table
from remix_rft.metrics import read_metrics
from remix_rft.plotting import RunLog, plot_runs, plot_seed_bands

REPORT_FIGURES = ("accuracy_vs_rollouts", "reward", "response_length", "importance_ratio", "kl_convex_weight")



@dataclass
class RunSummary:
    spec: RunSpec
    evals: list[dict] = field(default_factory=list)  # (rollouts, accuracy) in order
    train: list[dict] = field(default_factory=list)
    wall: float = float("nan")
    resumed: bool = False
    excluded: bool = False  # left out of seed summaries, savings and bands (e.g. a reward-hacked run)
    events: list[dict] = field(default_factory=list)

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

    def first_eval_at(self, target: float) -> dict | None:
        """The first evaluation at or above `target`, which every "... to the target" figure reads. A small
        tolerance: 0.5 logged as 0.49999999 from 150/300 still reaches 50%."""
        return next((e for e in self.evals if float(e["eval/average/pass@1"]) >= target - 1e-9), None)

    def rollouts_to(self, target: float) -> int | None:
        first = self.first_eval_at(target)
        return None if first is None else int(first["rollouts/total"])

    def tokens_to(self, target: float) -> int | None:
        """Generated tokens (`tokens/total`) up to the first evaluation at or above `target` (None where it has no
        token count): the cost in tokens beside the cost in responses (a method whose responses grow pays more per
        rollout)."""
        first = self.first_eval_at(target)
        return None if first is None or first.get("tokens/total") is None else int(first["tokens/total"])

    def total(self, key: str) -> int | None:
        """The run's `rollouts/total` or `tokens/total` at its last evaluation: what it spent in all."""
        value = self.evals[-1].get(key) if self.evals else None
        return None if value is None else int(value)

    def seconds_to(self, target: float) -> float | None:
        """Training wall-clock (the steps' `time/step`, evaluations left out) up to the first evaluation at or above
        `target`: the cost in time beside the cost in rollouts."""
        first = self.first_eval_at(target)
        if first is None:
            return None
        step = int(first["step"])
        return sum(float(r.get("time/step") or 0.0) for r in self.train if int(r["step"]) <= step)

    def reincarnation(self) -> str:
        """Where the run went back on-policy: "step N", with the trigger when an adaptive one fired."""
        event = next((e for e in self.events if e.get("event") == "reincarnation"), None)
        if event is None:
            return "-"
        return f"{event['step']}" + (f" ({event['trigger']})" if event.get("trigger") else "")

    def mean(self, key: str, phase: str | None = None) -> float | None:
        values = [r[key] for r in self.train
                  if r.get(key) is not None and (phase is None or r.get("phase") == phase)]
        return sum(values) / len(values) if values else None

    def last(self, key: str) -> float | None:
        values = [r[key] for r in self.train if r.get(key) is not None]
        return values[-1] if values else None

    def eval_value(self, key: str, index: int) -> float | None:
        values = [e[key] for e in self.evals if e.get(key) is not None]
        return values[index] if values else None

    def run_log(self, label: str) -> RunLog:
        return RunLog(label, Path(self.spec.run_dir), self.train, self.evals, self.events)


def summarise(spec: RunSpec, out: Path | None, records: list[dict] | None = None) -> RunSummary:
    """A run's results, from its directory under `out` or from `records` (its metrics lines; `out` None)."""
    records = run_records(out / spec.run_dir) if out is not None else (records or [])
    summary = RunSummary(spec, evals=[r for r in records if r.get("type") == "eval"],
                         train=[r for r in records if r.get("type") == "train"],
                         events=[r for r in records if r.get("type") == "event"])
    wall_file = None if out is None else out / spec.run_dir / "wall.json"
    if wall_file is not None and wall_file.exists():
        wall = json.loads(wall_file.read_text())
        summary.wall = wall["wall_seconds"]
        summary.resumed = wall.get("resumed_from_step") is not None
    return summary


def records_by_run(path: Path) -> dict[str, list[dict]]:
    """A study's combined metrics file: every metrics line of its runs, each with a `run` field (the run directory)."""
    by_run: dict[str, list[dict]] = {}
    for line_number, row in enumerate(read_metrics(path), start=1):
        if not isinstance(row.get("run"), str):
            raise ValueError(f"{path}, record {line_number}: missing the 'run' field naming its run directory")
        by_run.setdefault(row["run"], []).append(row)
    return by_run


# ----------------------------------------------------------------------------------------------------------------
# tables


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _target_name(target: float) -> str:
    return f"{100 * target:.1f}%" if round(100 * target, 1) != round(100 * target) else f"{100 * target:.0f}%"


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: how far apart two runs' accuracies must be to mean anything."""
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def interval_text(s: RunSummary) -> str:
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


def _label(s: RunSummary, with_seed: bool) -> str:
    label = s.spec.label or s.spec.name
    return f"{label}, seed {s.spec.seed}" if with_seed else label


def paired_table(summaries: list[RunSummary], baseline: RunSummary | dict[int, RunSummary], out: Path,
                 steps: int) -> str:
    """Each run against the baseline (of the same seed, given one per seed) on the same held-out problems at the
    final evaluation."""
    baselines = baseline if isinstance(baseline, dict) else None
    with_seed = baselines is not None and len(baselines) > 1
    any_base = next(iter(baselines.values())) if baselines else baseline
    header = ["run", "problems", "both right", "right only here", f"right only in {any_base.spec.label}",
              "exact McNemar p"]
    rows = []
    for s in summaries:
        base_run = baselines.get(s.spec.seed) if baselines is not None else baseline
        if base_run is None or s is base_run:
            continue
        counts = _paired_counts(s, base_run, out, steps)
        if counts is None:
            continue
        shared, both, only_here, only_base = counts
        rows.append([_label(s, with_seed), str(shared), str(both), str(only_here), str(only_base),
                     f"{mcnemar_exact(only_here, only_base):.2f}"])
    return markdown_table(header, rows)


class PairedCounts(NamedTuple):
    shared: int  # problems both runs were evaluated on
    both: int  # right in both
    only_here: int  # right only in the run
    only_base: int  # right only in the baseline


def _paired_counts(run: RunSummary, baseline: RunSummary, out: Path, steps: int) -> PairedCounts | None:
    """(shared problems, right in both, right only in `run`, right only in `baseline`) at each one's final
    evaluation; None where they share no problem."""
    base = final_verdicts(out / baseline.spec.run_dir, baseline.spec.steps or steps)
    verdicts = final_verdicts(out / run.spec.run_dir, run.spec.steps or steps)
    shared = set(verdicts) & set(base)
    if not shared:
        return None
    return PairedCounts(len(shared), sum(verdicts[k] and base[k] for k in shared),
                        sum(verdicts[k] and not base[k] for k in shared),
                        sum(base[k] and not verdicts[k] for k in shared))


def baseline_paired_table(summaries: list[RunSummary], out: Path, steps: int) -> str:
    """Each run against each baseline it names, on the same held-out problems at the final evaluation: seed by
    seed, then pooled over the seeds (each seed's problems are pairs of their own, so the discordant counts add up
    and one exact McNemar test reads them all: three seeds of 100 problems test like 300)."""
    by_key = {(s.spec.name, s.spec.seed): s for s in summaries if not s.excluded and s.evals}
    header = ["run", "vs", "seeds", "right only here vs only in the baseline, per seed", "p per seed",
              "problems (pooled)", "right only here vs only in the baseline (pooled)", "exact McNemar p (pooled)"]
    rows = []
    for name, runs in _by_name(summaries).items():
        for baseline in runs[0].spec.baselines:
            pairs = []
            for s in runs:
                run, base = by_key.get((name, s.spec.seed)), by_key.get((baseline, s.spec.seed))
                counts = _paired_counts(run, base, out, steps) if run and base else None
                if counts:
                    pairs.append((run, base, counts))
            if not pairs:
                continue
            per_seed = [c for _, _, c in pairs]
            shared, here = sum(c.shared for c in per_seed), sum(c.only_here for c in per_seed)
            there = sum(c.only_base for c in per_seed)
            rows.append([pairs[0][0].spec.label, pairs[0][1].spec.label,
                         " / ".join(str(r.spec.seed) for r, _, _ in pairs),
                         " / ".join(f"{c.only_here} vs {c.only_base}" for c in per_seed),
                         " / ".join(f"{mcnemar_exact(c.only_here, c.only_base):.2f}" for c in per_seed),
                         str(shared), f"{here} vs {there}", f"{mcnemar_exact(here, there):.2f}"])
    return markdown_table(header, rows) if rows else ""


def main_table(summaries: list[RunSummary], budgets: list[int], targets: list[float], with_seed: bool = False,
               self_reflection: bool = False) -> str:
    peak_gpu = {id(s): max((r.get("memory/peak_gpu_mb") or 0 for r in s.train), default=0) / 1024
                for s in summaries}
    show_gpu = any(v > 0 for v in peak_gpu.values())
    header = ["run", *(["seed"] if with_seed else []), "rollouts", *[f"acc @ {b}" for b in budgets],
              *[f"rollouts to {_target_name(t)}" for t in targets], *[f"train s to {_target_name(t)}" for t in targets],
              "reincarnated at step", "acc before", "final acc", "95% CI",
              *(["self-reflection (first -> last eval)"] if self_reflection else []), "s / step", "total s",
              "peak RSS (GB)", *(["peak GPU (GB)"] if show_gpu else [])]
    rows = []
    for s in summaries:
        curve = s.accuracy_curve()
        peak = max((r.get("memory/peak_rss_mb") or 0 for r in s.train), default=0) / 1024
        label = (s.spec.label or s.spec.name) + (" (excluded: see notes)" if s.excluded else "")
        reached = [s.rollouts_to(t) for t in targets]
        total = _num(s.wall, 0) + (" (resumed)" if s.resumed else "")
        reflection = (f"{_num(s.eval_value('eval/average/self_reflection', 0), 2)} -> "
                      f"{_num(s.eval_value('eval/average/self_reflection', -1), 2)}")
        rows.append([label, *([str(s.spec.seed)] if with_seed else []), str(curve[-1][0] if curve else "-"),
                     *[_pct(s.accuracy_at(b)) for b in budgets],
                     *["not reached" if r is None else str(r) for r in reached],
                     *["-" if (sec := s.seconds_to(t)) is None else _num(sec, 0) for t in targets],
                     s.reincarnation(), _pct(curve[0][1] if curve else None), _pct(curve[-1][1] if curve else None),
                     interval_text(s), *([reflection] if self_reflection else []), _num(s.mean("time/step")), total,
                     _num(peak, 2), *([_num(peak_gpu[id(s)], 1)] if show_gpu else [])])
    return markdown_table(header, rows)


def _by_name(summaries: list[RunSummary]) -> dict[str, list[RunSummary]]:
    grouped: dict[str, list[RunSummary]] = {}
    for s in summaries:
        grouped.setdefault(s.spec.name, []).append(s)
    return grouped


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{100 * mean:.1f}"
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{100 * mean:.1f} ± {100 * sd:.1f}"


def seed_table(summaries: list[RunSummary], targets: list[float]) -> str:
    """One row per run over its seeds (as the issue's table): values per seed, separated by ' / '."""
    header = ["run", "seeds", "acc before", *[f"to {_target_name(t)}" for t in targets],
              *[f"tokens to {_target_name(t)}" for t in targets], "final acc", "final mean ± sd", "rollouts"]
    rows = []
    for name, runs in _by_name(summaries).items():
        kept = [s for s in runs if not s.excluded and s.evals]
        if not kept:
            continue
        finals = [s.accuracy_curve()[-1][1] for s in kept]
        reached = [[s.rollouts_to(t) for s in kept] for t in targets]
        tokens = [[s.tokens_to(t) for s in kept] for t in targets]
        totals = sorted({f"{s.accuracy_curve()[-1][0]:,}" for s in kept})
        rows.append([kept[0].spec.label or name, " / ".join(str(s.spec.seed) for s in kept),
                     " / ".join(_pct(s.accuracy_curve()[0][1]) for s in kept),
                     *[" / ".join("-" if r is None else f"{r:,}" for r in per_seed) for per_seed in reached],
                     *[" / ".join("-" if n is None else f"{n / 1000:.1f}k" for n in per_seed) for per_seed in tokens],
                     " / ".join(_pct(f) for f in finals), _mean_sd(finals), " / ".join(totals)])
    return markdown_table(header, rows)


def _saving(run: RunSummary, base: RunSummary, target: float, key: str) -> tuple[str, float] | None:
    """How many times less of `key` (rollouts/total or tokens/total) `run` spent than `base` to reach `target`:
    ("=", ratio) where both reached it; where one never did, the bound its whole spend gives: ("<", base's cost /
    run's total) when the run never reached it, (">", base's total / run's cost) when the baseline never did; None
    where neither did, or where one met it before spending anything."""
    def cost(s: RunSummary) -> int | None:
        return s.rollouts_to(target) if key == "rollouts/total" else s.tokens_to(target)

    if key == "tokens/total" and any("tokens/total" not in e for e in run.evals + base.evals):
        return None  # a log without token counts: no token ratio, rather than a bound from a partial count
    mine, theirs = cost(run), cost(base)
    if mine == 0 or theirs == 0:  # met at the first evaluation, before any training: no cost to compare
        return None
    if mine is not None and theirs is not None:
        return "=", theirs / mine
    if mine is None and theirs is not None and run.total(key):
        return "<", theirs / run.total(key)
    if theirs is None and mine is not None and base.total(key):
        return ">", base.total(key) / mine
    return None


def _median_saving(savings: list[tuple[str, float]]) -> str:
    """The median of per-seed savings where some are bounds: the median is monotone in each seed's value, so it lies
    between the median of the seeds' lowest possible values ("<x": 0) and that of their highest (">x": unbounded).
    Exact where those meet, else the bound or the range they give."""
    low = statistics.median(0.0 if sign == "<" else value for sign, value in savings)
    high = statistics.median(math.inf if sign == ">" else value for sign, value in savings)
    if low == high:
        return f" (median {low:.2f}x)"
    if math.isinf(high):
        return f" (median >={low:.2f}x)"
    if low == 0.0:
        return f" (median <={high:.2f}x)"
    return f" (median {low:.2f}-{high:.2f}x)"


def _ratios(pairs: list[tuple[RunSummary, RunSummary]], target: float, key: str) -> str:
    """Per seed: the baseline's cost to `target` over this run's (`_saving`: a bound where only one reached it, '-'
    where neither did), and their median over the seeds with one, where three or more have (the issue's goals are
    medians over seeds; a seed where the run never reached the target ranks low, not out)."""
    per_seed = [_saving(run, base, target, key) for run, base in pairs]
    text = " / ".join("-" if s is None else f"{'' if s[0] == '=' else s[0]}{s[1]:.2f}x" for s in per_seed)
    known = [s for s in per_seed if s is not None]
    return text + (_median_saving(known) if len(known) >= 3 else "")


def savings_table(summaries: list[RunSummary], targets: list[float]) -> str:
    """Each run with a baseline against it (a row per baseline it names), seed by seed: how many times fewer
    rollouts and generated tokens it needed to reach each target, and final accuracy and rollouts used."""
    by_key = {(s.spec.name, s.spec.seed): s for s in summaries if not s.excluded and s.evals}
    header = ["run", "vs", "seeds", *[f"fewer rollouts to {_target_name(t)}" for t in targets],
              *[f"fewer tokens to {_target_name(t)}" for t in targets], "final acc (run vs baseline)",
              "rollouts used"]
    rows = []
    for name, runs in _by_name(summaries).items():
        for baseline in runs[0].spec.baselines:
            pairs = [(by_key[(name, s.spec.seed)], by_key[(baseline, s.spec.seed)]) for s in runs
                     if (name, s.spec.seed) in by_key and (baseline, s.spec.seed) in by_key]
            if not pairs:
                continue
            finals = " / ".join(f"{_pct(r.accuracy_curve()[-1][1])} vs {_pct(b.accuracy_curve()[-1][1])}"
                                for r, b in pairs)
            used = sorted({f"{r.accuracy_curve()[-1][0]:,} vs {b.accuracy_curve()[-1][0]:,}" for r, b in pairs})
            rows.append([pairs[0][0].spec.label, pairs[0][1].spec.label,
                         " / ".join(str(r.spec.seed) for r, _ in pairs),
                         *[_ratios(pairs, t, "rollouts/total") for t in targets],
                         *[_ratios(pairs, t, "tokens/total") for t in targets], finals, " / ".join(used)])
    return markdown_table(header, rows) if rows else ""


def run_setting(run_dir: Path | None, section: str, key: str):
    """A value from a run's resolved config.yaml (None when absent)."""
    path = None if run_dir is None else run_dir / "config.yaml"
    if path is None or not path.exists():
        return None
    return (yaml.safe_load(path.read_text()) or {}).get(section, {}).get(key)


def offpolicy_fraction(s: RunSummary, out: Path | None) -> float | None:
    """p of a run: its config, else the mix-phase steps' logged value (runs read from a combined metrics file)."""
    value = run_setting(None if out is None else out / s.spec.run_dir, "remix", "offpolicy_fraction")
    if value is None:
        value = next((r.get("offpolicy_fraction") for r in s.train if r.get("phase") == "mix"), s.spec.value)
    return value


def sweep_table(summaries: list[RunSummary], out: Path | None, self_reflection: bool = False) -> str:
    header = ["run", "p", "response length (mean)", "response length (last step)", "ratio mean (replayed)",
              "ratio max (replayed)", "clip fraction (replayed)", "ESS (replayed)", "final acc",
              *(["held-out length (first -> last eval)", "self-reflection (first -> last eval)"]
                if self_reflection else [])]
    rows = []
    for s in sorted(summaries, key=lambda s: offpolicy_fraction(s, out) or 0):
        curve = s.accuracy_curve()
        extra = []
        if self_reflection:
            extra = [f"{_num(s.eval_value('eval/average/response_length', 0))} -> "
                     f"{_num(s.eval_value('eval/average/response_length', -1))}",
                     f"{_num(s.eval_value('eval/average/self_reflection', 0), 2)} -> "
                     f"{_num(s.eval_value('eval/average/self_reflection', -1), 2)}"]
        rows.append([s.spec.label or s.spec.name, _num(offpolicy_fraction(s, out), 3),
                     _num(s.mean("response_length/mean")), _num(s.last("response_length/mean")),
                     _num(s.mean("ratio/replay_mean"), 4), _num(s.mean("ratio/replay_max"), 2),
                     _num(s.mean("clip_fraction/replay"), 3), _num(s.mean("ess/replay"), 3),
                     _pct(curve[-1][1] if curve else None), *extra])
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
    gpu = ""
    if torch.cuda.is_available():
        gpu = f"{torch.cuda.get_device_name(0)} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB), "
    return (f"{gpu}{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"{platform.system()} {platform.release()}")


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return None
    return result.stdout.strip() or None


# ----------------------------------------------------------------------------------------------------------------
# figures


def _band_figure(groups: list[tuple[str, list[RunSummary]]], path: Path, source: str, x_key: str, y_key: str,
                 title: str, x_label: str, y_label: str) -> Path | None:
    series = [(label, [s.run_log(label) for s in runs if not s.excluded]) for label, runs in groups]
    drawn = plot_seed_bands([(label, logs) for label, logs in series if logs], path, source=source, x_key=x_key,
                            y_key=y_key, title=title, x_label=x_label, y_label=y_label)
    return path if drawn else None


def band_figures(preset: dict[str, Any], summaries: list[RunSummary], figure_dir: Path) -> list[Path]:
    """Per group: accuracy vs rollouts, one line per run with its seed band; response length vs step (per p for a
    sweep); held-out self-reflection where the group reports it."""
    written = []
    rollouts = "cumulative rollouts (responses generated)"
    for group, config in preset["groups"].items():
        members = [s for s in summaries if s.spec.group == group and s.evals]
        reference = [s for s in summaries if s.spec.name == config.get("reference") and s.evals]
        runs = _by_name(reference + members)
        if not members:
            continue
        labelled = [(rs[0].spec.label or name, rs) for name, rs in runs.items()]
        prefix = "" if group == "main" else f"{group}_"
        title = config.get("title", group).split(" (")[0]  # the part before the settings in parentheses
        figures = [
            ("eval", "rollouts/total", "eval/average/pass@1", f"{prefix}accuracy_vs_rollouts.png",
             "Held-out accuracy vs rollouts", rollouts, "greedy Pass@1"),
            ("train", "step", "response_length/mean", f"{prefix}response_length.png", "Response length",
             "training step", "mean response length (tokens)"),
        ]
        if config.get("self_reflection"):
            figures.append(("eval", "step", "eval/average/self_reflection", f"{prefix}self_reflection.png",
                            "Held-out responses with self-reflection words", "training step",
                            "self-reflection rate"))
        for source, x_key, y_key, filename, name, x_label, y_label in figures:
            path = _band_figure(labelled, figure_dir / filename, source, x_key, y_key, f"{name}: {title}",
                                x_label, y_label)
            if path:
                written.append(path)
    return written


# ----------------------------------------------------------------------------------------------------------------
# the report


def _marker(section: str, end: bool = False) -> str:
    return f"<!-- efficiency-study:{section} {'end' if end else 'begin'} (generated by benchmarks/efficiency.py) -->"


def write_section(path: Path, section: str, text: str) -> None:
    """Put `text` between the section's markers in `path`, keeping everything outside them (hand-written notes,
    other studies' sections); a section not there yet is appended."""
    begin, end = _marker(section), _marker(section, end=True)
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(block)
        return
    current = path.read_text()
    if begin in current and end in current:
        before, rest = current.split(begin, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        path.write_text(before + block + ("\n" + after if after else ""))
    else:
        path.write_text(current.rstrip("\n") + "\n\n" + block)


@dataclass
class Study:
    """What the report needs to know about how the study was set up and measured."""

    preset: dict[str, Any]
    specs: list[RunSpec]
    summaries: list[RunSummary]
    out: Path | None  # None: the results came from a combined metrics file
    budgets: list[int]
    targets: list[float]
    command: str
    machine: str
    shared: list[str] = field(default_factory=list)  # the overrides every run got
    commit: str | None = None
    target_gain: list[float] | None = None  # points over the initial accuracy, one per target
    notes: str = ""
    source: str | None = None  # the combined metrics file the report was built from, when not from run dirs


def report_text(study: Study, figures: list[Path], report_dir: Path) -> str:
    preset, summaries = study.preset, study.summaries
    by_group = {g: [s for s in summaries if s.spec.group == g and s.evals] for g in preset["groups"]}
    with_seed = len({s.spec.seed for s in summaries}) > 1
    first_seed = {}
    for s in summaries:
        first_seed.setdefault(s.spec.name, s)
    one_config = len({s.spec.config for s in summaries}) == 1 and not any(
        g.get("overrides") for g in preset["groups"].values())
    when = datetime.now(timezone.utc)
    parts = [f"# {preset.get('title', 'Efficiency study')}", ""]
    if study.source:
        parts += [f"Built by `benchmarks/efficiency.py` on {when:%Y-%m-%d %H:%M} UTC from the metrics of runs made "
                  f"elsewhere: `{study.source}`.", ""]
    else:
        parts += [f"Generated by `benchmarks/efficiency.py` on {when:%Y-%m-%d %H:%M} UTC.", ""]
    note = preset.get("machine_note")
    parts.append(f"- Machine: {study.machine}" + (f"; {note}." if note else "."))
    if study.commit:
        parts.append(f"- Project commit: {study.commit}")
    parts.append(f"- Command: `{study.command}`")
    if one_config and not with_seed:
        parts.append(f"- Shared settings: the `{preset['config']}` config with `{' '.join(study.shared)}` (same "
                     "model, seed, data, "
                     "reward, prompts per step and samples per prompt for every run). Held-out accuracy is greedy "
                     "Pass@1 on arithmetic test problems disjoint from the training ones.")
    else:
        parts.append(f"- Preset: `benchmarks/presets/{preset['_name']}.yaml` (each run's config and overrides, "
                     "below). Held-out accuracy is greedy Pass@1 on arithmetic test problems disjoint from the "
                     "training ones; each seed draws its own training order and held-out problems.")
    if study.target_gain is not None:
        named = ", ".join(f"{100 * target:.1f}% (initial accuracy + {100 * gain:.0f} points)"
                          for target, gain in zip(study.targets, study.target_gain))
        parts.append(f"- Target accuracy for \"rollouts to\": {named}. Budgets are in generated responses "
                     "(rollouts).")
    else:
        parts.append(f"- Targets for \"rollouts to\": {', '.join(_target_name(t) for t in study.targets)} held-out "
                     "accuracy, the first evaluation at or above it. Budgets are in generated responses (rollouts).")
    excluded = [s for s in summaries if s.excluded]
    if excluded:
        parts.append(f"- Excluded from the seed summaries, savings and figures: "
                     f"{', '.join(s.spec.run_dir for s in excluded)} (see the notes).")
    missing = [s.spec.run_dir for s in summaries if not s.evals]
    if missing:
        where = "not in the metrics file" if study.source else "no metrics yet"
        parts.append(f"- Not run ({where}): {', '.join(missing)}.")
    for group, config in preset["groups"].items():
        members = by_group[group]
        if not members:
            continue
        parts += ["", f"## {config.get('title', group)}", ""]
        if config.get("kind") == "sweep":
            points = members + [s for s in summaries if s.spec.name in config.get("include", []) and s.evals]
            parts.append(sweep_table(points, study.out, self_reflection=bool(config.get("self_reflection"))))
            continue
        reference = [s for s in summaries if s.spec.name == config.get("reference") and s.evals]
        parts.append(main_table(reference + members, study.budgets, study.targets, with_seed=with_seed,
                                self_reflection=bool(config.get("self_reflection"))))
        if with_seed and len({s.spec.seed for s in members}) > 1:
            parts += ["", "Per run over its seeds:", "", seed_table(reference + members, study.targets)]
        savings = savings_table(members, study.targets) if with_seed else ""
        if savings:
            parts += ["", "Rollout saving against each baseline the run names, of the same seed (baseline's "
                      "rollouts, or generated tokens, to the target / this run's; \"<x\" where the run never reached "
                      "it, x from all it spent, \">x\" where the baseline never did; evaluations every few steps, "
                      "so each figure is as coarse as that grid):", "",
                      savings]
    baselines = {s.spec.seed: s for s in summaries if s.spec.name == "grpo" and s.evals}
    if baselines and study.out is not None:  # needs the held-out samples of the run directories
        baseline = baselines if with_seed else next(iter(baselines.values()))
        table = paired_table([s for s in summaries if s.evals], baseline, study.out,
                             next(iter(baselines.values())).spec.steps or 0)
        if table.count("\n") > 1:
            parts += ["", "## Paired against GRPO at the final evaluation", "",
                      "Same held-out problems, greedy answers: problems only one of the two runs gets right, and the "
                      "exact McNemar test on them (p < 0.05: the difference is unlikely to be evaluation noise).", "",
                      table]
    named = (baseline_paired_table(summaries, study.out, preset.get("steps") or 0)
             if with_seed and study.out is not None else "")
    if named:
        parts += ["", "## Paired against each baseline the run names, at the final evaluation", "",
                  "Per seed and pooled over the seeds (each seed's held-out problems are pairs of their own, so the "
                  "discordant counts add up into one exact McNemar test). Each run is read at its own final "
                  "evaluation, whatever it spent to get there (the savings table gives the rollouts).", "", named]
    if not one_config or with_seed:
        caveat = (" These are the preset's settings; the runs reported here were made elsewhere, with the settings "
                  "their notes give." if study.source else "")
        parts += ["", "<details><summary>Each run's config and overrides</summary>", "",
                  f"Every run: `{' '.join(study.shared)}`, then its group's and its own overrides and "
                  f"`train.seed=SEED`.{caveat}", "", run_settings_table(summaries, study.shared), "", "</details>"]
    shown = [f for f in figures if preset.get("figures") == "bands" or f.stem in REPORT_FIGURES]
    if shown:
        parts += ["", "## Figures", ""]
        for figure in shown:
            rel = figure.relative_to(report_dir) if figure.is_relative_to(report_dir) else figure
            parts.append(f"![{figure.stem}]({rel})")
    parts += ["", "## Reading the numbers", "", study.notes or "(see the issue notes)"]
    parts.append("")
    return "\n".join(parts)


def run_settings_table(summaries: list[RunSummary], shared: list[str]) -> str:
    """Per run: its seeds, config and the overrides it adds to the shared ones."""
    rows = []
    for name, runs in _by_name(summaries).items():
        spec = runs[0].spec
        left = list(spec.overrides)
        for override in shared:  # the shared ones are a sub-sequence of every run's list
            if override in left:
                left.remove(override)
        own = [o for o in left if not o.startswith(("train.steps=", "eval.every=", "eval.limit=", "train.seed="))]
        rows.append([f"`{name}`", " / ".join(str(s.spec.seed) for s in runs), f"`{spec.config}`", str(spec.steps),
                     " ".join(f"`{o}`" for o in own) or "-"])
    return markdown_table(["run", "seeds", "config", "steps", "overrides"], rows)


def accuracy_targets(preset: dict[str, Any], summaries: list[RunSummary],
                     target_gain: float | None = None) -> tuple[list[float], list[float] | None]:
    """The held-out accuracies "rollouts to" reports: the preset's `targets`, or the mean initial accuracy plus
    `target_gain` (the command line's, else the preset's: one gain or a list, the headline first); returns (targets,
    the gains used or None)."""
    if "targets" in preset:
        return [float(t) for t in preset["targets"]], None
    gain = target_gain if target_gain is not None else preset["target_gain"]
    gains = [float(g) for g in gain] if isinstance(gain, list) else [float(gain)]
    initial = [s.accuracy_curve()[0][1] for s in summaries if s.accuracy_curve()]
    start = sum(initial) / len(initial) if initial else 0.0
    return [start + g for g in gains], gains


def rollout_budgets(preset: dict[str, Any], summaries: list[RunSummary], quick: bool = False) -> list[int]:
    """The rollout budgets accuracy is read at: the preset's, else a quarter, half and all of what on-policy GRPO
    generates over the main runs' steps (also in --quick, whose runs are too short for the preset's)."""
    if preset.get("budgets") and not quick:
        return [int(b) for b in preset["budgets"]]
    per_step = max((s.train[0]["rollouts/step"] for s in summaries if s.train and not s.excluded), default=1)
    steps = max((s.spec.steps for s in summaries if s.spec.group == "main"), default=1)
    full = steps * per_step
    return sorted({max(1, full // 4), max(1, full // 2), full})


def report_figures(preset: dict[str, Any], specs: list[RunSpec], summaries: list[RunSummary], out: Path,
                   figure_dir: Path) -> list[Path]:
    """The figures a report links: seed bands per group (`figures: bands`), else the main runs' and the
    ablations'/sweep's curves (`remix-rft plot` on the run directories draws the rest)."""
    if preset.get("figures") == "bands":
        return band_figures(preset, summaries, figure_dir)
    figures: list[Path] = []
    for folder, chosen in (("main", [s for s in specs if s.group == "main"]),
                           ("ablations_sweep", [s for s in specs if s.group != "main"])):
        present = [s for s in chosen if (out / s.run_dir / "metrics.jsonl").exists()]
        if present:
            figures += plot_runs([out / s.run_dir for s in present], figure_dir / folder,
                                 labels=[s.label for s in present], verbose=False, only=REPORT_FIGURES)
    return figures
