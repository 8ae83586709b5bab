"""Efficiency study: GRPO, ReMix-GRPO, PPO, ReMix-PPO (and TRL's GRPOTrainer) on the same task and budget.

What a study runs is a preset, a YAML file of data (benchmarks/presets/<name>.yaml): the runs, each one's config and
overrides, the seeds, the evaluation cadence, the accuracy targets, how many runs share the machine at a time. Every
run is its own `remix-rft train` process. Then one report: held-out accuracy at fixed rollout budgets, rollouts needed
to reach target accuracies, final accuracy, seconds per step, peak memory, per-seed summaries and the rollout saving
against each run's baseline, the ablations, an off-policy fraction sweep (response length, importance ratio and
self-reflection against p: the Whipping effect) and figures.

    python benchmarks/efficiency.py --out runs/efficiency --docs docs/results.md     # the CPU study (preset cpu)
    python benchmarks/efficiency.py --preset gpu --out runs/gpu --docs docs/results.md   # the GPU study, 6 at a time
    python benchmarks/efficiency.py --preset gpu --only grpo,remix-grpo --seeds 0,1  # part of it
    python benchmarks/efficiency.py --out /tmp/eff --quick                           # the pipeline on a tiny model
    python benchmarks/efficiency.py --preset gpu --figures-from ALL.metrics.jsonl --docs docs/results.md

Repeating a command continues the study: finished runs are skipped, an interrupted run resumes from its latest
checkpoint when it has one (else it starts again). `--figures-from` builds the report from one metrics file holding
every metrics line of a study's runs with a `run` field naming the run directory (runs made elsewhere).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml

from remix_rft.checkpoint import latest_checkpoint
from remix_rft.evaluation import markdown_table
from remix_rft.metrics import read_metrics
from remix_rft.plotting import RunLog, plot_runs, plot_seed_bands

REPO = Path(__file__).resolve().parent.parent
TRL_SCRIPT = Path(__file__).resolve().parent / "trl_baseline.py"
PRESET_DIR = Path(__file__).resolve().parent / "presets"
REPORT_FIGURES = ("accuracy_vs_rollouts", "reward", "response_length", "importance_ratio", "kl_convex_weight")
# Each run process gets these unless the caller's environment sets them: concurrent runs on one GPU fragment its
# memory less with expandable segments.
RUN_ENVIRONMENT = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "TOKENIZERS_PARALLELISM": "false"}

# ----------------------------------------------------------------------------------------------------------------
# presets: what a study runs, as data

PRESET_KEYS = {"title", "machine_note", "config", "steps", "eval_every", "eval_limit", "seeds", "run_dir",
               "max_concurrent", "keep_checkpoints", "target_gain", "targets", "budgets", "figures", "figure_dir", "common",
               "quick", "groups", "runs", "sweep"}
QUICK_KEYS = {"steps", "eval_every", "eval_limit", "max_concurrent", "runs", "overrides"}
GROUP_KEYS = {"title", "kind", "reference", "include", "overrides", "self_reflection"}
RUN_KEYS = {"name", "key", "label", "group", "config", "engine", "seeds", "steps", "run_dir", "baseline", "overrides"}
SWEEP_KEYS = {"group", "values", "name", "label", "seeds", "overrides", "config"}


class PresetError(ValueError):
    """A preset file is malformed; the message names the file and the key."""


def _check_keys(where: str, data: Any, allowed: set[str]) -> dict:
    if not isinstance(data, dict):
        raise PresetError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise PresetError(f"{where}: unknown key(s) {unknown}; known: {sorted(allowed)}")
    return data


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A preset by name (benchmarks/presets/NAME.yaml) or path, checked key by key."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise PresetError(f"no preset {name_or_path!r} (looked for {path}); built-in presets: {known}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise PresetError(f"{path}: not valid YAML ({err})") from None
    _check_keys(str(path), data, PRESET_KEYS)
    for key in ("config", "steps", "eval_every", "eval_limit", "runs"):
        if key not in data:
            raise PresetError(f"{path}: missing key '{key}'")
    if ("target_gain" in data) == ("targets" in data):
        raise PresetError(f"{path}: give exactly one of 'target_gain' (relative to the initial accuracy) or 'targets'")
    if data.get("figures", "runs") not in ("runs", "bands"):
        raise PresetError(f"{path}: 'figures' must be 'runs' or 'bands', got {data['figures']!r}")
    _check_keys(f"{path}: quick", data.get("quick", {}), QUICK_KEYS)
    groups = data.setdefault("groups", {})
    for name, group in groups.items():
        _check_keys(f"{path}: groups.{name}", group, GROUP_KEYS)
    if not isinstance(data["runs"], list):
        raise PresetError(f"{path}: 'runs' must be a list")
    names = set()
    for index, run in enumerate(data["runs"]):
        where = f"{path}: runs[{index}]"
        _check_keys(where, run, RUN_KEYS)
        for key in ("name", "group"):
            if key not in run:
                raise PresetError(f"{where}: missing key '{key}'")
        if run["group"] not in groups:
            raise PresetError(f"{where}: group {run['group']!r} is not under 'groups' ({sorted(groups)})")
        if run["name"] in names:
            raise PresetError(f"{where}: run name {run['name']!r} appears twice")
        names.add(run["name"])
    if "sweep" in data:
        _check_keys(f"{path}: sweep", data["sweep"], SWEEP_KEYS)
        if data["sweep"].get("group") not in groups:
            raise PresetError(f"{path}: sweep.group must name one of 'groups' ({sorted(groups)})")
    for run in data["runs"]:
        if run.get("baseline") and run["baseline"] not in names:
            raise PresetError(f"{path}: run {run['name']!r} has baseline {run['baseline']!r}, which is no run")
    data["_name"] = path.stem
    return data


@dataclass
class RunSpec:
    name: str  # the run in the preset ("remix-grpo"); one RunSpec per (run, seed)
    overrides: list[str]  # the run's own config overrides; `plan_study` fills in the full list
    group: str
    engine: str = "remix"  # "remix" (our trainer) or "trl"
    label: str = ""
    seed: int = 0
    run_dir: str = ""  # directory name under --out (default: name)
    config: str = "quickstart"
    steps: int | None = None
    baseline: str | None = None  # the run this one's rollout saving is measured against (same seed)
    value: float | None = None  # the swept value (off-policy fraction) of a sweep run

    def __post_init__(self) -> None:
        self.run_dir = self.run_dir or self.name


def _key(override: str) -> str:
    return override.split("=", 1)[0].strip()


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def shared_settings(preset: dict[str, Any], quick: bool = False, steps: int | None = None,
                    eval_every: int | None = None, eval_limit: int | None = None,
                    user_overrides: Sequence[str] = ()) -> list[str]:
    """The overrides every run of a study gets (besides its group's and its own), for the report."""
    quick_cfg = preset.get("quick", {}) if quick else {}
    return [f"train.steps={quick_cfg.get('steps', steps if steps is not None else preset['steps'])}",
            f"eval.every={quick_cfg.get('eval_every', eval_every if eval_every is not None else preset['eval_every'])}",
            f"eval.limit={quick_cfg.get('eval_limit', eval_limit if eval_limit is not None else preset['eval_limit'])}",
            *preset.get("common", []), *quick_cfg.get("overrides", []), *user_overrides]


def plan_study(preset: dict[str, Any], runs: list[str] | None = None, ablations: list[str] | None = None,
               sweep: list[float] | None = None, quick: bool = False, steps: int | None = None,
               eval_every: int | None = None, eval_limit: int | None = None,
               user_overrides: Sequence[str] = ()) -> list[RunSpec]:
    """The runs of a study, one per (run, seed), with their full override lists.

    `runs` picks runs by key outside the `ablation` group, `ablations` those in it, `sweep` the swept values; None
    takes the preset's. Overrides apply in this order (later wins): steps and evaluation cadence, the preset's
    `common`, the run's group, the run itself, its seed, `--quick`'s (except keys the run sets itself: an ablation's
    `remix.reincarnate_at=null` stays), then the command line's.
    """
    quick_cfg = preset.get("quick", {}) if quick else {}
    base_steps = quick_cfg.get("steps", steps if steps is not None else preset["steps"])
    every = quick_cfg.get("eval_every", eval_every if eval_every is not None else preset["eval_every"])
    limit = quick_cfg.get("eval_limit", eval_limit if eval_limit is not None else preset["eval_limit"])
    groups = preset["groups"]
    entries = []
    for run in preset["runs"]:
        entries.append(dict(run, key=run.get("key", run["name"])))
    sweep_cfg = preset.get("sweep")
    values = sweep if sweep is not None else (sweep_cfg or {}).get("values", [])
    if values and not sweep_cfg:
        raise SystemExit(f"preset {preset['_name']!r} has no sweep")
    for value in values:
        fmt = {"value": value}
        entries.append({"name": sweep_cfg["name"].format(**fmt), "key": f"{value:g}", "group": sweep_cfg["group"],
                        "label": sweep_cfg["label"].format(**fmt), "value": float(value),
                        "seeds": sweep_cfg.get("seeds"), "config": sweep_cfg.get("config"),
                        "overrides": [o.format(**fmt) for o in sweep_cfg.get("overrides", [])]})

    def picked(entry: dict) -> bool:
        if "value" in entry:
            return True  # chosen by `values` above
        chosen = ablations if entry["group"] == "ablation" else runs
        return chosen is None or entry["key"] in chosen

    known_runs = [e["key"] for e in entries if e["group"] != "ablation" and "value" not in e]
    known_ablations = [e["key"] for e in entries if e["group"] == "ablation"]
    for chosen, known, what in ((runs, known_runs, "run"), (ablations, known_ablations, "ablation")):
        unknown = sorted(set(chosen or []) - set(known))
        if unknown:
            raise SystemExit(f"unknown {what}(s) {unknown}; known: {known}")
    quick_runs = quick_cfg.get("runs")
    if quick_runs is not None:
        unknown = sorted(set(quick_runs) - {e["name"] for e in entries})
        if unknown:
            raise SystemExit(f"preset {preset['_name']!r}: quick.runs names unknown run(s) {unknown}")

    planned = []
    for entry in entries:
        if not picked(entry) or (quick_runs is not None and entry["name"] not in quick_runs):
            continue
        seeds = quick_runs[entry["name"]] if quick_runs is not None else entry.get("seeds") or preset.get("seeds", [0])
        planned.append((entry, seeds))
    several_seeds = len({s for _, seeds in planned for s in seeds}) > 1
    specs = []
    for entry, seeds in planned:
        own = list(entry.get("overrides", []))
        own_keys = {_key(o) for o in own}
        run_steps = quick_cfg.get("steps") or entry.get("steps") or base_steps
        template = entry.get("run_dir") or preset.get("run_dir", "{name}")
        if several_seeds and "{seed}" not in template:
            template += "-s{seed}"
        for seed in seeds:
            overrides = [f"train.steps={run_steps}", f"eval.every={every}", f"eval.limit={limit}",
                         *preset.get("common", []), *groups[entry["group"]].get("overrides", []), *own,
                         f"train.seed={seed}",
                         *[o for o in quick_cfg.get("overrides", []) if _key(o) not in own_keys], *user_overrides]
            specs.append(RunSpec(entry["name"], overrides, entry["group"], engine=entry.get("engine", "remix"),
                                 label=entry.get("label", entry["name"]), seed=int(seed),
                                 run_dir=template.format(name=entry["name"], seed=seed),
                                 config=entry.get("config") or preset["config"], steps=int(run_steps),
                                 baseline=entry.get("baseline"), value=entry.get("value")))
    return specs


# ----------------------------------------------------------------------------------------------------------------
# running: each run its own process, a bounded number at a time, resumable


def run_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return read_metrics(path) if path.exists() else []


def is_finished(run_dir: Path, steps: int) -> bool:
    return any(r.get("type") == "eval" and r.get("step") == steps for r in run_records(run_dir)) and (
        run_dir / "wall.json").exists()


def next_action(spec: RunSpec, out: Path) -> str:
    """"skip" (finished), "resume" (interrupted, with a checkpoint) or "fresh" (never started, or nothing to resume
    from: a half-finished run without a checkpoint starts again, so its timings stay comparable)."""
    run_dir = out / spec.run_dir
    if is_finished(run_dir, spec.steps):
        return "skip"
    if spec.engine == "remix" and run_dir.exists() and latest_checkpoint(run_dir) is not None:
        return "resume"
    return "fresh"


def run_command(spec: RunSpec, out: Path, action: str) -> list[str]:
    run_dir = out / spec.run_dir
    if spec.engine == "trl":
        return [sys.executable, str(TRL_SCRIPT), "--config", spec.config, *spec.overrides, "--run-dir", str(run_dir)]
    if action == "resume":  # the run's config.yaml plus the same overrides: the trainer restores everything else
        return [sys.executable, "-m", "remix_rft.cli", "train", "--resume", str(run_dir), *spec.overrides]
    return [sys.executable, "-m", "remix_rft.cli", "train", "--config", spec.config, *spec.overrides,
            f"logging.output_dir={out}", f"logging.run_name={spec.run_dir}"]


def run_environment(max_concurrent: int) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in RUN_ENVIRONMENT.items():
        env.setdefault(key, value)
    if max_concurrent > 1 and "OMP_NUM_THREADS" not in env:
        # concurrent runs share the CPU cores instead of each starting one thread per core
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max_concurrent))
    return env


@dataclass
class _Running:
    spec: RunSpec
    process: subprocess.Popen
    command: list[str]
    started: float
    resumed_from: int | None
    log: Any


def _stop(job: _Running) -> None:
    """Stop a run and the processes it started (its verifier workers): it has its own process group."""
    try:
        os.killpg(job.process.pid, signal.SIGTERM)
        job.process.wait(timeout=60)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(job.process.pid, signal.SIGKILL)
        job.process.wait()


def run_study(specs: list[RunSpec], out: Path, max_concurrent: int, keep_checkpoints: bool = True,
              time_limit: float | None = None) -> dict[str, str]:
    """Run what is not finished, at most `max_concurrent` at a time; returns run_dir -> "skipped", "done",
    "failed (exit N)" or "interrupted". Past `time_limit` seconds (or on Ctrl-C / SIGTERM) running runs are stopped,
    to resume from their checkpoints next time."""
    out.mkdir(parents=True, exist_ok=True)
    status: dict[str, str] = {}
    pending = []
    for spec in specs:
        if next_action(spec, out) == "skip":
            print(f"[{spec.run_dir}] already finished, skipped", flush=True)
            status[spec.run_dir] = "skipped"
        else:
            pending.append(spec)
    env = run_environment(max_concurrent)
    deadline = None if time_limit is None else time.monotonic() + time_limit
    running: list[_Running] = []

    def on_sigterm(signum, frame):  # noqa: ARG001  (signal handler signature)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm) if os.name == "posix" else None
    try:
        while pending or running:
            while pending and len(running) < max_concurrent and (deadline is None or time.monotonic() < deadline):
                spec = pending.pop(0)
                action = next_action(spec, out)
                run_dir = out / spec.run_dir
                resumed_from = None
                if action == "resume":
                    resumed_from = int(latest_checkpoint(run_dir).name.split("_")[-1])
                elif run_dir.exists():
                    shutil.rmtree(run_dir)
                command = run_command(spec, out, action)
                note = f" (resuming from step {resumed_from})" if resumed_from is not None else ""
                print(f"[{spec.run_dir}]{note} {' '.join(command[1:])}", flush=True)
                log = (out / f"{spec.run_dir}.log").open("a" if action == "resume" else "w")
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                           start_new_session=True)
                running.append(_Running(spec, process, command, time.perf_counter(), resumed_from, log))
            if deadline is not None and time.monotonic() >= deadline:
                for job in running:
                    _stop(job)
                    job.log.close()
                    status[job.spec.run_dir] = "interrupted"
                    print(f"[{job.spec.run_dir}] stopped at the time limit; it resumes on the next call", flush=True)
                for spec in pending:
                    status[spec.run_dir] = "not started"
                running, pending = [], []
                break
            time.sleep(0.5)
            for job in [j for j in running if j.process.poll() is not None]:
                running.remove(job)
                job.log.close()
                wall = time.perf_counter() - job.started
                name = job.spec.run_dir
                if job.process.returncode != 0:
                    status[name] = f"failed (exit {job.process.returncode})"
                    print(f"[{name}] failed with exit code {job.process.returncode}; see {out / (name + '.log')}",
                          flush=True)
                    continue
                (out / name / "wall.json").write_text(json.dumps(
                    {"wall_seconds": wall, "command": job.command, "resumed_from_step": job.resumed_from,
                     "concurrent": max_concurrent}))
                if not keep_checkpoints:
                    shutil.rmtree(out / name / "checkpoints", ignore_errors=True)
                status[name] = "done"
                print(f"[{name}] done in {wall:.0f} s", flush=True)
    except KeyboardInterrupt:
        for job in running:
            _stop(job)
            status[job.spec.run_dir] = "interrupted"
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return status


# ----------------------------------------------------------------------------------------------------------------
# reading results


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

    def rollouts_to(self, target: float) -> int | None:
        # a small tolerance: 0.5 logged as 0.49999999 from 150/300 still reaches 50%
        return next((rollouts for rollouts, acc in self.accuracy_curve() if acc >= target - 1e-9), None)

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
        base = final_verdicts(out / base_run.spec.run_dir, base_run.spec.steps or steps)
        verdicts = final_verdicts(out / s.spec.run_dir, s.spec.steps or steps)
        shared = sorted(set(verdicts) & set(base))
        if not shared:
            continue
        both = sum(verdicts[k] and base[k] for k in shared)
        only_here = sum(verdicts[k] and not base[k] for k in shared)
        only_base = sum(base[k] and not verdicts[k] for k in shared)
        rows.append([_label(s, with_seed), str(len(shared)), str(both), str(only_here), str(only_base),
                     f"{mcnemar_exact(only_here, only_base):.2f}"])
    return markdown_table(header, rows)


def main_table(summaries: list[RunSummary], budgets: list[int], targets: list[float], with_seed: bool = False,
               self_reflection: bool = False) -> str:
    peak_gpu = {id(s): max((r.get("memory/peak_gpu_mb") or 0 for r in s.train), default=0) / 1024
                for s in summaries}
    show_gpu = any(v > 0 for v in peak_gpu.values())
    header = ["run", *(["seed"] if with_seed else []), "rollouts", *[f"acc @ {b}" for b in budgets],
              *[f"rollouts to {_target_name(t)}" for t in targets], "acc before", "final acc", "95% CI",
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
                     _pct(curve[0][1] if curve else None), _pct(curve[-1][1] if curve else None),
                     _interval(s), *([reflection] if self_reflection else []), _num(s.mean("time/step")), total,
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
    header = ["run", "seeds", "acc before", *[f"to {_target_name(t)}" for t in targets], "final acc",
              "final mean ± sd", "rollouts"]
    rows = []
    for name, runs in _by_name(summaries).items():
        kept = [s for s in runs if not s.excluded and s.evals]
        if not kept:
            continue
        finals = [s.accuracy_curve()[-1][1] for s in kept]
        reached = [[s.rollouts_to(t) for s in kept] for t in targets]
        totals = sorted({f"{s.accuracy_curve()[-1][0]:,}" for s in kept})
        rows.append([kept[0].spec.label or name, " / ".join(str(s.spec.seed) for s in kept),
                     " / ".join(_pct(s.accuracy_curve()[0][1]) for s in kept),
                     *[" / ".join("-" if r is None else f"{r:,}" for r in per_seed) for per_seed in reached],
                     " / ".join(_pct(f) for f in finals), _mean_sd(finals), " / ".join(totals)])
    return markdown_table(header, rows)


def savings_table(summaries: list[RunSummary], targets: list[float]) -> str:
    """Each run with a baseline against it, seed by seed: how many times fewer rollouts it needed to reach each
    target, and final accuracy and rollouts used."""
    by_key = {(s.spec.name, s.spec.seed): s for s in summaries if not s.excluded and s.evals}
    header = ["run", "vs", "seeds", *[f"fewer rollouts to {_target_name(t)}" for t in targets],
              "final acc (run vs baseline)", "rollouts used"]
    rows = []
    for name, runs in _by_name(summaries).items():
        baseline = runs[0].spec.baseline
        pairs = [(by_key[(name, s.spec.seed)], by_key[(baseline, s.spec.seed)]) for s in runs
                 if (name, s.spec.seed) in by_key and (baseline, s.spec.seed) in by_key]
        if not baseline or not pairs:
            continue
        ratios = []
        for target in targets:
            per_seed = []
            for run, base in pairs:
                mine, theirs = run.rollouts_to(target), base.rollouts_to(target)
                per_seed.append("-" if mine is None or theirs is None else f"{theirs / mine:.2f}x")
            ratios.append(" / ".join(per_seed))
        finals = " / ".join(f"{_pct(r.accuracy_curve()[-1][1])} vs {_pct(b.accuracy_curve()[-1][1])}"
                            for r, b in pairs)
        used = sorted({f"{r.accuracy_curve()[-1][0]:,} vs {b.accuracy_curve()[-1][0]:,}" for r, b in pairs})
        rows.append([pairs[0][0].spec.label, pairs[0][1].spec.label, " / ".join(str(r.spec.seed) for r, _ in pairs),
                     *ratios, finals, " / ".join(used)])
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
    target_gain: float | None = None
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
        parts.append(f"- Target accuracy for \"rollouts to\": {100 * study.targets[0]:.1f}% (initial accuracy + "
                     f"{100 * study.target_gain:.0f} points). Budgets are in generated responses (rollouts).")
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
            parts += ["", "Rollout saving against the baseline of the same seed (baseline's rollouts to the target "
                      "/ this run's; evaluations every few steps, so each figure is as coarse as that grid):", "",
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


def _quoted(argv: list[str]) -> str:
    return " ".join(arg if arg and all(c.isalnum() or c in "-_.,=/:@+" for c in arg) else f'"{arg}"'
                    for arg in argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu",
                        help="a preset in benchmarks/presets (cpu, gpu) or a YAML path (default: cpu)")
    parser.add_argument("--out", type=Path, default=None, help="where the runs go (default: runs/efficiency for "
                        "the cpu preset, runs/efficiency-PRESET otherwise)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--eval-limit", type=int, default=None)
    parser.add_argument("--runs", default=None, help="comma-separated runs outside the ablations (default: the "
                        "preset's)")
    parser.add_argument("--ablations", default=None, help="comma-separated ablation keys; empty for none")
    parser.add_argument("--sweep", default=None, help="off-policy fractions, run without reincarnation; empty for "
                        "none (default: the preset's)")
    parser.add_argument("--only", default=None, help="launch only these runs (names, e.g. grpo,sweep-p0.4); the "
                        "report still covers the whole study")
    parser.add_argument("--seeds", default=None, help="launch only these seeds (comma-separated)")
    parser.add_argument("--max-concurrent", type=int, default=None, help="runs at the same time (default: the "
                        "preset's)")
    parser.add_argument("--time-limit", type=float, default=None, help="seconds: then stop the running runs (they "
                        "resume from their checkpoints next time), launch no more, and write the report")
    parser.add_argument("--target-gain", type=float, default=None,
                        help="target accuracy = mean initial accuracy + this (presets with target_gain)")
    parser.add_argument("--docs", type=Path, default=None, help="write the report (and figures) into this markdown "
                        "file, between its section markers")
    parser.add_argument("--notes", default="", help="text for the 'Reading the numbers' section")
    parser.add_argument("--quick", action="store_true", help="the preset's quick variant: tiny random model, 2 "
                        "steps (checks the pipeline)")
    parser.add_argument("--figures-from", type=Path, default=None, help="run nothing: build the report and figures "
                        "from one metrics file with every line of the study's runs, each with a `run` field")
    parser.add_argument("--exclude", default="", help="run directories (e.g. remix-grpo-s2) left out of the seed "
                        "summaries, savings and figures, but listed in the tables")
    parser.add_argument("--machine", default=None, help="the machine the runs were measured on (default: this one)")
    parser.add_argument("--commit", default=None, help="the project commit the runs were measured at (default: "
                        "this checkout's, when running)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    args = parser.parse_args(argv)

    try:
        preset = load_preset(args.preset)
    except PresetError as err:
        raise SystemExit(f"efficiency.py: {err}") from None
    sweep = None if args.sweep is None else [float(x) for x in _split(args.sweep)]
    specs = plan_study(preset, runs=_split(args.runs), ablations=_split(args.ablations), sweep=sweep,
                       quick=args.quick, steps=args.steps, eval_every=args.eval_every, eval_limit=args.eval_limit,
                       user_overrides=args.overrides)
    out = args.out or Path("runs/efficiency" if preset["_name"] == "cpu" else f"runs/efficiency-{preset['_name']}")
    excluded = set(_split(args.exclude) or [])
    status: dict[str, str] = {}
    if args.figures_from is None:
        only, seeds = _split(args.only), _split(args.seeds)
        if only:
            unknown = sorted(set(only) - {s.name for s in specs})
            if unknown:
                raise SystemExit(f"--only names run(s) not in this study: {unknown}; "
                                 f"in it: {sorted({s.name for s in specs})}")
        if seeds:
            unknown = sorted(set(seeds) - {str(s.seed) for s in specs})
            if unknown:
                raise SystemExit(f"--seeds names seed(s) no run of this study has: {unknown}")
        launch = [s for s in specs if (not only or s.name in only) and (not seeds or str(s.seed) in seeds)]
        quick = preset.get("quick", {}) if args.quick else {}
        max_concurrent = args.max_concurrent or quick.get("max_concurrent") or preset.get("max_concurrent", 1)
        status = run_study(launch, out, max_concurrent, keep_checkpoints=preset.get("keep_checkpoints", True),
                           time_limit=args.time_limit)
        summaries = [summarise(s, out) for s in specs]
    else:
        by_run = records_by_run(args.figures_from)
        summaries = [summarise(s, None, by_run.get(s.run_dir, [])) for s in specs]
        unused = sorted(set(by_run) - {s.run_dir for s in specs})
        if unused:
            print(f"note: {args.figures_from} has runs this preset does not plan, not reported: {unused}",
                  file=sys.stderr)
    for s in summaries:
        s.excluded = s.spec.run_dir in excluded

    target_gain = None
    if "targets" in preset:
        targets = [float(t) for t in preset["targets"]]
    else:
        target_gain = args.target_gain if args.target_gain is not None else preset["target_gain"]
        initial = [s.accuracy_curve()[0][1] for s in summaries if s.accuracy_curve()]
        targets = [(sum(initial) / len(initial) if initial else 0.0) + target_gain]
    per_step = max((s.train[0]["rollouts/step"] for s in summaries if s.train and not s.excluded), default=1)
    steps = max((s.spec.steps for s in summaries if s.spec.group == "main"), default=1)
    full = steps * per_step  # what on-policy GRPO generates over the whole run
    budgets = sorted({max(1, full // 4), max(1, full // 2), full})
    if preset.get("budgets") and not args.quick:
        budgets = [int(b) for b in preset["budgets"]]

    figures: list[Path] = []
    report_path = args.docs or (out / "results.md")
    if args.docs:
        figure_dir = args.docs.parent / preset.get("figure_dir", "figures")
        if preset.get("figures") == "bands":
            figures = band_figures(preset, summaries, figure_dir)
        else:  # only the figures the report links (`remix-rft plot` on the run directories draws the rest)
            for folder, chosen in (("main", [s for s in specs if s.group == "main"]),
                                   ("ablations_sweep", [s for s in specs if s.group != "main"])):
                present = [s for s in chosen if (out / s.run_dir / "metrics.jsonl").exists()]
                if present:
                    figures += plot_runs([out / s.run_dir for s in present], figure_dir / folder,
                                         labels=[s.label for s in present], verbose=False, only=REPORT_FIGURES)
    command = "python benchmarks/efficiency.py " + _quoted(_without_notes(argv if argv is not None else sys.argv[1:]))
    study = Study(preset, specs, summaries, out if args.figures_from is None else None, budgets, targets,
                  command.strip(), machine=args.machine or machine_description(),
                  shared=shared_settings(preset, args.quick, args.steps, args.eval_every, args.eval_limit,
                                         args.overrides),
                  commit=args.commit or (git_commit() if args.figures_from is None else None),
                  target_gain=target_gain, notes=args.notes, source=str(args.figures_from or "") or None)
    text = report_text(study, figures, report_path.parent)
    write_section(report_path, preset["_name"], text)
    print(text)
    failed = {name: st for name, st in status.items() if st not in ("done", "skipped")}
    if failed:
        print(f"not finished: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
