"""The efficiency study's definition: presets (benchmarks/presets/<name>.yaml) checked key by key, and the plan of
runs they describe, one `RunSpec` per (run, seed) with its full list of config overrides.

Part of `benchmarks/efficiency.py` (the entry point), beside `efficiency_runner.py` and `efficiency_report.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).resolve().parent / "presets"
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
        baselines = _baselines(run.get("baseline"))
        if run.get("baseline") is not None and (not baselines or not all(isinstance(b, str) for b in baselines)
                                                or len(set(baselines)) < len(baselines)):
            raise PresetError(f"{path}: run {run['name']!r}: baseline must name one run or a list of distinct runs, "
                              f"got {run['baseline']!r}")
        for baseline in baselines:
            if baseline not in names:
                raise PresetError(f"{path}: run {run['name']!r} has baseline {baseline!r}, which is no run")
            if baseline == run["name"]:
                raise PresetError(f"{path}: run {run['name']!r} names itself as its baseline")
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
    baselines: tuple[str, ...] = ()  # the runs this one's rollout saving is measured against (same seed)
    value: float | None = None  # the swept value (off-policy fraction) of a sweep run

    def __post_init__(self) -> None:
        self.run_dir = self.run_dir or self.name

    @property
    def baseline(self) -> str | None:
        """The first baseline (the savings table has a row for each)."""
        return self.baselines[0] if self.baselines else None


def _baselines(value: Any) -> tuple:
    """A run's `baseline`: one run's name, or a list of them (each gets its own rows in the savings table)."""
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list) else (value,)


def _key(override: str) -> str:
    return override.split("=", 1)[0].strip()


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
                                 baselines=_baselines(entry.get("baseline")), value=entry.get("value")))
    return specs
