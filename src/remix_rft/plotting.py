"""Training-curve figures from one or more run directories (`remix-rft plot`).

A run directory holds `metrics.jsonl` (one JSON object a line, `"type"` = "train" | "eval" | "event") and
`config.yaml`, both written by the trainer. Every figure overlays all runs, one colour a run, and marks each
run's policy-reincarnation step with a dashed vertical line in that run's colour. A figure whose series no run
logged is skipped with a note rather than drawn empty.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: must work on machines without a display

import matplotlib.pyplot as plt  # noqa: E402  (the backend has to be chosen before pyplot is imported)
import yaml  # noqa: E402

from remix_rft.errors import DataError, UsageError, one_line  # noqa: E402
from remix_rft.metrics import read_metrics  # noqa: E402

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"


@dataclass
class RunLog:
    """The parsed logs of one training run."""

    label: str
    path: Path
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    reincarnate_at: int | None = None  # the step T after which training went on-policy, if it happened
    reincarnation_rollouts: float | None = (
        None  # cumulative rollouts at that moment, when the event logged it
    )

    def rollouts_at_step(self, step: float) -> float | None:
        """Cumulative rollouts logged at train step `step` (to place the reincarnation on a rollouts axis)."""
        for row in self.train:
            if row.get("step") == step and _is_number(row.get("rollouts/total")):
                return float(row["rollouts/total"])
        return None


@dataclass(frozen=True)
class Series:
    key: str
    label: str | None = None  # legend suffix when a figure has several series a run
    linestyle: str = "-"


@dataclass(frozen=True)
class FigureSpec:
    """One figure: which log lines, which x key, which y series."""

    filename: str
    title: str
    source: str  # "train" | "eval"
    x_key: str
    x_label: str
    y_label: str
    series: tuple[Series, ...]
    reference_y: float | None = None  # a horizontal guide (e.g. ratio = 1)


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec(
        "accuracy_vs_rollouts.png",
        "Held-out accuracy vs. rollouts generated",
        "eval",
        "rollouts/total",
        "cumulative rollouts (responses generated)",
        "average Pass@1",
        (Series("eval/average/pass@1"),),
    ),
    FigureSpec(
        "accuracy_vs_step.png",
        "Held-out accuracy vs. training step",
        "eval",
        "step",
        "training step",
        "average Pass@1",
        (Series("eval/average/pass@1"),),
    ),
    FigureSpec(
        "reward.png",
        "Training reward",
        "train",
        "step",
        "training step",
        "mean reward",
        (Series("reward/mean"),),
    ),
    FigureSpec(
        "train_accuracy.png",
        "Training accuracy",
        "train",
        "step",
        "training step",
        "accuracy on training prompts",
        (Series("accuracy/train"),),
    ),
    FigureSpec(
        "response_length.png",
        "Response length",
        "train",
        "step",
        "training step",
        "mean response length (tokens)",
        (Series("response_length/mean"),),
    ),
    FigureSpec(
        "importance_ratio.png",
        "Importance ratio pi_theta / pi_behaviour",
        "train",
        "step",
        "training step",
        "mean ratio",
        (
            Series("ratio/mean", "all", "-"),
            Series("ratio/fresh_mean", "fresh", "--"),
            Series("ratio/replay_mean", "replay", ":"),
        ),
        reference_y=1.0,
    ),
    FigureSpec(
        "kl_convex_weight.png",
        "KL-Convex weight lambda (on KL to the base policy)",
        "train",
        "step",
        "training step",
        "lambda",
        (Series("kl_convex/weight"),),
    ),
    FigureSpec(
        "kl_base.png",
        "KL to the base policy",
        "train",
        "step",
        "training step",
        "KL(pi_theta || pi_base)",
        (Series("kl/base"),),
    ),
    FigureSpec(
        "entropy.png",
        "Policy entropy",
        "train",
        "step",
        "training step",
        "entropy (nats / token)",
        (Series("entropy"),),
    ),
    FigureSpec(
        "self_reflection.png",
        "Share of held-out responses with self-reflection words",
        "eval",
        "rollouts/total",
        "cumulative rollouts (responses generated)",
        "self-reflection rate",
        (Series("eval/average/self_reflection"),),
    ),
)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def split_metrics(path: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """A metrics.jsonl as (train, eval, event) rows. Unknown `type`s are ignored (newer trainers)."""
    records = read_metrics(path)
    return tuple([row for row in records if row["type"] == kind] for kind in ("train", "eval", "event"))


def _configured_reincarnation_step(run_dir: Path) -> int | None:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise DataError(f"{path}: not valid YAML ({one_line(error)})") from error
    remix = config.get("remix") if isinstance(config, dict) else None
    if isinstance(remix, dict) and remix.get("enabled") is False:
        return None  # plain PPO/GRPO: reincarnate_at is inert
    step = remix.get("reincarnate_at") if isinstance(remix, dict) else None
    if step == "auto":
        return None  # adaptive: only the logged event knows the step
    if step is not None and not _is_number(step):
        raise DataError(f"{path}: remix.reincarnate_at must be a step number or null, got {step!r}")
    return None if step is None else int(step)


def load_run(run_dir: Path, label: str | None = None) -> RunLog:
    """Read a run directory. The reincarnation step comes from the logged event when there is one (it did
    happen), else from config.yaml when the run got past that step."""
    run_dir = Path(run_dir)
    train, evals, events = split_metrics(run_dir / METRICS_FILE)
    run = RunLog(label or run_dir.resolve().name, run_dir, train, evals, events)
    reincarnations = [e for e in events if e.get("event") == "reincarnation" and _is_number(e.get("step"))]
    if reincarnations:
        # The event is logged at the first on-policy step, T + 1.
        run.reincarnate_at = int(reincarnations[0]["step"]) - 1
        if _is_number(reincarnations[0].get("rollouts/total")):
            run.reincarnation_rollouts = float(reincarnations[0]["rollouts/total"])
    else:
        configured = _configured_reincarnation_step(run_dir)
        last_step = max((row["step"] for row in train if _is_number(row.get("step"))), default=None)
        if configured is not None and last_step is not None and last_step > configured:
            run.reincarnate_at = configured
    return run


def _points(rows: Sequence[dict], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    pairs = sorted(
        (float(row[x_key]), float(row[y_key]))
        for row in rows
        if _is_number(row.get(x_key)) and _is_number(row.get(y_key))
    )
    return [x for x, _ in pairs], [y for _, y in pairs]


def _draw_figure(spec: FigureSpec, runs: Sequence[RunLog], out_path: Path) -> bool:
    """Draw one figure; returns False (drawing nothing) when no run has any of its series."""
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    drew_any = False
    try:
        for run_index, run in enumerate(runs):
            colour = colours[run_index % len(colours)]
            rows = run.train if spec.source == "train" else run.evals
            for series in spec.series:
                xs, ys = _points(rows, spec.x_key, series.key)
                if not xs:
                    continue
                label = run.label if series.label is None else f"{run.label} ({series.label})"
                axes.plot(
                    xs,
                    ys,
                    color=colour,
                    linestyle=series.linestyle,
                    marker="." if len(xs) < 30 else None,
                    label=label,
                )
                drew_any = True
            if run.reincarnate_at is not None:
                if spec.x_key == "step":
                    x = run.reincarnate_at
                else:
                    x = run.reincarnation_rollouts
                    if x is None:
                        x = run.rollouts_at_step(run.reincarnate_at)
                if x is not None:
                    axes.axvline(
                        x,
                        color=colour,
                        linestyle="--",
                        linewidth=1,
                        alpha=0.8,
                        label=f"{run.label}: reincarnation (step {run.reincarnate_at})",
                    )
        if not drew_any:
            return False
        if spec.reference_y is not None:
            axes.axhline(spec.reference_y, color="grey", linewidth=0.8, alpha=0.6)
        axes.set_title(spec.title)
        axes.set_xlabel(spec.x_label)
        axes.set_ylabel(spec.y_label)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        figure.tight_layout()
        figure.savefig(out_path, dpi=120)
        return True
    finally:
        plt.close(figure)


def _benchmark_names(runs: Sequence[RunLog]) -> list[str]:
    names: list[str] = []
    for run in runs:
        for row in run.evals:
            for key in row:
                parts = key.split("/")
                if len(parts) == 3 and parts[0] == "eval" and parts[2] == "pass@1" and parts[1] != "average":
                    if parts[1] not in names:
                        names.append(parts[1])
    return names


def _per_benchmark_spec(benchmark: str) -> FigureSpec:
    return FigureSpec(
        f"accuracy_{benchmark}.png",
        f"{benchmark}: Pass@1 vs. rollouts generated",
        "eval",
        "rollouts/total",
        "cumulative rollouts (responses generated)",
        "Pass@1",
        (Series(f"eval/{benchmark}/pass@1"),),
    )


def plot_runs(
    run_dirs: Sequence[Path], out_dir: Path, labels: Sequence[str] | None = None, verbose: bool = True,
    only: Sequence[str] | None = None,
) -> list[Path]:
    """Write one PNG per figure overlaying all runs; returns the paths written.

    Figures no run has data for are skipped (a note goes to stderr when `verbose`). `only` names the figures
    (file stems such as "accuracy_vs_rollouts") to draw; by default all of them.
    """
    if not run_dirs:
        raise UsageError("plot_runs needs at least one run directory")
    if labels is not None and len(labels) != len(run_dirs):
        raise UsageError(f"got {len(labels)} labels for {len(run_dirs)} run directories")
    runs = [load_run(Path(d), labels[i] if labels else None) for i, d in enumerate(run_dirs)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = list(FIGURES) + [_per_benchmark_spec(name) for name in _benchmark_names(runs)]
    if only is not None:
        known = {Path(spec.filename).stem for spec in specs}
        unknown = sorted(set(only) - known)
        if unknown:
            raise UsageError(f"unknown figure(s) {unknown}; known: {sorted(known)}")
        specs = [spec for spec in specs if Path(spec.filename).stem in only]
    written: list[Path] = []
    for spec in specs:
        out_path = out_dir / spec.filename
        if _draw_figure(spec, runs, out_path):
            written.append(out_path)
        elif verbose:
            keys = ", ".join(series.key for series in spec.series)
            print(
                f"note: skipped {spec.filename}: no run logged {keys} on its {spec.source} lines",
                file=sys.stderr,
            )
    return written


@dataclass(frozen=True)
class BandPoint:
    """One evaluation/step of a run repeated over seeds: the mean and the band (min..max) across seeds."""

    x: float
    mean: float
    low: float
    high: float
    seeds: int


def seed_band(runs: Sequence[RunLog], source: str, x_key: str, y_key: str) -> list[BandPoint]:
    """Aggregate one run's repeats (seeds) step by step: x is the mean of `x_key` over the seeds that logged that
    step (rollouts/total is the same for every seed of a run), y the mean of `y_key`, the band its min and max."""
    by_step: dict[float, list[tuple[float, float]]] = {}
    for run in runs:
        for row in run.train if source == "train" else run.evals:
            if _is_number(row.get("step")) and _is_number(row.get(x_key)) and _is_number(row.get(y_key)):
                by_step.setdefault(float(row["step"]), []).append((float(row[x_key]), float(row[y_key])))
    points = []
    for step in sorted(by_step):
        pairs = by_step[step]
        ys = [y for _, y in pairs]
        points.append(BandPoint(sum(x for x, _ in pairs) / len(pairs), sum(ys) / len(ys), min(ys), max(ys),
                                len(pairs)))
    return points


def plot_seed_bands(
    groups: Sequence[tuple[str, Sequence[RunLog]]], out_path: Path, *, source: str, x_key: str, y_key: str,
    title: str, x_label: str, y_label: str,
) -> bool:
    """One line per labelled group of runs (a run's seeds): the mean over seeds with a shaded min-max band.

    Returns False, writing nothing, when no group logged `y_key`."""
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    figure, axes = plt.subplots(figsize=(7.5, 4.8))
    drew_any = False
    try:
        for index, (label, runs) in enumerate(groups):
            points = seed_band(runs, source, x_key, y_key)
            if not points:
                continue
            colour = colours[index % len(colours)]
            xs = [p.x for p in points]
            seeds = max(p.seeds for p in points)
            axes.plot(xs, [p.mean for p in points], color=colour, marker="." if len(xs) < 30 else None,
                      label=label if seeds == 1 else f"{label} (mean of {seeds} seeds, band: min-max)")
            if seeds > 1:
                axes.fill_between(xs, [p.low for p in points], [p.high for p in points], color=colour, alpha=0.2,
                                  linewidth=0)
            drew_any = True
        if not drew_any:
            return False
        axes.set_title(title)
        axes.set_xlabel(x_label)
        axes.set_ylabel(y_label)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        figure.tight_layout()
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out_path, dpi=120)
        return True
    finally:
        plt.close(figure)


def add_plot_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dirs",
        nargs="+",
        type=Path,
        metavar="RUN_DIR",
        help="run directories written by `remix-rft train` (each with metrics.jsonl)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write the PNGs (default: <first RUN_DIR>/plots)"
    )
    parser.add_argument(
        "--labels",
        default=None,
        help="comma-separated legend labels, one per run (default: the directory names)",
    )


def plot_command(args: argparse.Namespace) -> int:
    labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
    out_dir = args.out if args.out is not None else Path(args.run_dirs[0]) / "plots"
    written = plot_runs(args.run_dirs, out_dir, labels)
    for path in written:
        print(path)
    if not written:
        raise DataError("none of the runs has any metric to plot (their metrics.jsonl files have no numbers yet)")
    return 0
