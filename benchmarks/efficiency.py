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

This file is the entry point; the study lives beside it by role: `efficiency_study.py` (presets and the plan of runs),
`efficiency_runner.py` (launching, resuming, stopping run processes) and `efficiency_report.py` (results, tables,
figures, the markdown report). Their public names are re-exported here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from efficiency_report import (
    REPORT_FIGURES,
    RunSummary,
    Study,
    accuracy_targets,
    band_figures,
    baseline_paired_table,
    git_commit,
    interval_text,
    machine_description,
    main_table,
    mcnemar_exact,
    paired_table,
    records_by_run,
    report_figures,
    report_text,
    rollout_budgets,
    savings_table,
    seed_table,
    summarise,
    sweep_table,
    wilson_interval,
    write_section,
)
from efficiency_runner import (
    REPO,
    RUN_ENVIRONMENT,
    TRL_SCRIPT,
    is_finished,
    next_action,
    run_command,
    run_environment,
    run_records,
    run_study,
)
from efficiency_study import PRESET_DIR, PresetError, RunSpec, load_preset, plan_study, shared_settings

__all__ = [
    "PRESET_DIR", "REPO", "REPORT_FIGURES", "RUN_ENVIRONMENT", "TRL_SCRIPT", "PresetError", "RunSpec", "RunSummary",
    "Study", "accuracy_targets", "band_figures", "baseline_paired_table", "git_commit", "interval_text", "is_finished",
    "load_preset", "machine_description", "main", "main_table", "mcnemar_exact", "next_action", "paired_table",
    "plan_study", "records_by_run", "report_figures", "report_text", "rollout_budgets", "run_command",
    "run_environment", "run_records", "run_study", "savings_table", "seed_table", "shared_settings", "summarise",
    "sweep_table", "wilson_interval", "write_section",
]


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


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

    targets, target_gain = accuracy_targets(preset, summaries, args.target_gain)
    budgets = rollout_budgets(preset, summaries, quick=args.quick)

    report_path = args.docs or (out / "results.md")
    figures = report_figures(preset, specs, summaries, out, args.docs.parent / preset.get("figure_dir", "figures")) \
        if args.docs else []
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
