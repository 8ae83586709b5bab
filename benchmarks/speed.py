"""Training speed: TRL's GRPOTrainer, our GRPO and our ReMix-GRPO on the default job's shape, in one table.

For each precision, `float32` (model.dtype=float32) and `bf16` (model.dtype=bfloat16: bf16 autocast, emulated and
slow on a CPU without AVX512-BF16 or AMX; the header says which of the two the default `auto` picks here), and each
setup, one process after the other:
`trl` (TRL's GRPOTrainer through benchmarks/trl_baseline.py: plain GRPO on our data, reward and batch shape), `grpo`
(`remix-rft train --config quickstart remix.enabled=false`) and `remix-grpo` (`remix-rft train --config
quickstart`). Every run has the quickstart shape (8 prompts x 4 samples, 48 new tokens, 6 steps; ReMix's mix phase
generates 6 of the 8 prompt groups a step, replays 2 and makes 2 update passes) with evaluation, checkpoints and the
progress bar off. The table gives, as medians over steps 2..N (step 1 warms up): seconds a step; seconds of each
phase a run times (`time/generation`, `time/logprobs`, `time/update`; TRL times its generation only: '-' elsewhere,
and a note below the table gives the rest of its step); the update's MFU and generation tokens/s (`perf/*`; TRL's
tokens/s is its step's completion tokens over its generation time); the process's peak RSS (VmHWM, which both
trainers log at every step's end as `memory/peak_rss_mb`: measured the same way for all three, and not ru_maxrss,
which a child inherits from its parent across exec); and the speed relative to TRL at the same precision (TRL's
s/step over the setup's: 2.00x = twice as fast). The host allocator is the one each program gives its users: our CLI
re-executes itself under jemalloc where installed, TRL runs on glibc's malloc (REMIX_RFT_ALLOCATOR=system in the
environment puts ours on glibc's too).

    python benchmarks/speed.py                                    # 3 setups x 2 precisions: 22 min on 2 cores
    python benchmarks/speed.py --precisions bf16 --setups grpo,remix-grpo --out runs/speed-bf16
    python benchmarks/speed.py --model tiny-random --steps 2 rollout.max_new_tokens=4    # a quick check, ~3 min

Each run's directory and log (`<setup>-<precision>/`, `<setup>-<precision>.log`) go to --out; the table, with its
header (machine, torch, commit, command, date), is printed and written to OUT/speed.md. Nothing is asserted (speed
is measured by this script, never by tests asserting wall-clock).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import yaml

from efficiency_runner import REPO, run_command, run_environment, run_records
from efficiency_study import RunSpec

# setup -> (label, engine, its own overrides): what `remix-rft train --config quickstart` runs besides the shared ones
SETUPS = {
    "trl": ("TRL GRPOTrainer", "trl", []),  # trl_baseline.py runs plain on-policy GRPO whatever remix.* says
    "grpo": ("GRPO (ours)", "remix", ["remix.enabled=false"]),
    "remix-grpo": ("ReMix-GRPO (ours)", "remix", []),
}
PRECISIONS = {"float32": ["model.dtype=float32"], "bf16": ["model.dtype=bfloat16"]}
# the speed job: no evaluation, no checkpoints, no progress bar (as soak.py's run_job)
JOB = ["eval.before_training=false", "eval.after_training=false", "eval.every=0", "checkpoint.every=0",
       "checkpoint.save_final=false", "logging.progress=false", "logging.tensorboard=false"]
COLUMNS = ["setup", "precision", "allocator", "s/step", "generation s", "log-probs s", "update s", "update MFU",
           "gen tokens/s", "peak RSS MiB", "speed vs TRL"]


def split_list(text: str, known: dict) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in names if x not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of {', '.join(known)}")
    return names


def median_after_warmup(train: list[dict], value) -> float | None:
    """Median of `value(line)` over steps 2..N (the first step warms up), None where no step has it."""
    values = [v for v in (value(line) for line in train if line["step"] >= 2) if v is not None]
    return statistics.median(values) if values else None


def generation_tokens_per_s(line: dict) -> float | None:
    """Our runs log it; TRL's: the step's completion tokens over its generation seconds."""
    if "perf/generation_tokens_per_s" in line:
        return line["perf/generation_tokens_per_s"]
    tokens, seconds = line.get("tokens/step"), line.get("time/generation")
    return tokens / seconds if tokens is not None and seconds else None


def run_dtype(setup: str, run_dir: Path) -> str:
    """What the run computed in: our run_info.json's compute dtype, TRL's bf16 flag in trl_config.yaml."""
    try:
        if SETUPS[setup][1] == "trl":
            values = yaml.safe_load((run_dir / "trl_config.yaml").read_text())["grpo_config"]
            return "bfloat16" if values["bf16"] else "float32"
        return json.loads((run_dir / "run_info.json").read_text())["precision"]["compute_dtype"]
    except (OSError, KeyError, TypeError, ValueError):
        return "?"


def run_checkpointing(setup: str, run_dir: Path) -> str:
    """Whether the run checkpointed activations: the line our trainer logs in run_info.json (its `auto` decision
    and why), TRL's gradient_checkpointing flag in trl_config.yaml."""
    try:
        if SETUPS[setup][1] == "trl":
            values = yaml.safe_load((run_dir / "trl_config.yaml").read_text())["grpo_config"]
            return f"gradient checkpointing {'on' if values['gradient_checkpointing'] else 'off'}"
        return json.loads((run_dir / "run_info.json").read_text())["gradient_checkpointing"]
    except (OSError, KeyError, TypeError, ValueError):
        return "gradient checkpointing ?"


def run_allocator(setup: str, log: str, env: dict[str, str]) -> str:
    """The host allocator: our trainer logs it; TRL's process has jemalloc only when the environment preloads it."""
    if SETUPS[setup][1] == "trl":
        return "jemalloc" if "jemalloc" in env.get("LD_PRELOAD", "") else "system"
    for line in log.splitlines():
        if "host memory allocator:" in line:
            return line.rsplit(":", 1)[1].strip()
    return "?"


def summarise_run(setup: str, precision: str, train: list[dict]) -> dict:
    """One table row's numbers from a run's train lines (medians over steps 2..N; peak RSS over the run)."""
    def key(name: str):
        return lambda line: line.get(name)

    step = median_after_warmup(train, key("time/step"))
    generation = median_after_warmup(train, key("time/generation"))
    logprobs = median_after_warmup(train, key("time/logprobs"))
    update = median_after_warmup(train, key("time/update"))
    untimed = None  # TRL: its step's seconds after generation and scoring (log-prob passes + update)
    if SETUPS[setup][1] == "trl" and step is not None and generation is not None:
        untimed = median_after_warmup(train, lambda line: line["time/step"] - line["time/generation"]
                                      - line.get("time/scoring", 0.0))
    peaks = [line["memory/peak_rss_mb"] for line in train if "memory/peak_rss_mb" in line]
    return {"setup": setup, "precision": precision, "steps": len(train), "step": step, "generation": generation,
            "logprobs": logprobs, "update": update, "untimed": untimed,
            "update_mfu": median_after_warmup(train, key("perf/update_mfu")),
            "tokens_per_s": median_after_warmup(train, generation_tokens_per_s),
            "peak_rss_mb": max(peaks) if peaks else None}


def run_setup(setup: str, precision: str, out: Path, overrides: list[str], env: dict[str, str]) -> dict:
    """Run one setup at one precision in its own process (its log in OUT/<name>.log); its row's numbers."""
    name = f"{setup}-{precision}"
    run_dir = out / name
    if run_dir.exists():  # metrics.jsonl is appended to: an old run's lines would mix in
        shutil.rmtree(run_dir)
    spec = RunSpec(name, [*JOB, *PRECISIONS[precision], *SETUPS[setup][2], *overrides], "speed",
                   engine=SETUPS[setup][1], config="quickstart")
    command = run_command(spec, out, "fresh")
    print(f"[{name}] {shlex.join(command[1:])}", flush=True)
    log_path = out / f"{name}.log"
    with log_path.open("w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    train = [line for line in run_records(run_dir) if line.get("type") == "train"]
    row = summarise_run(setup, precision, train)
    row.update(dtype=run_dtype(setup, run_dir), log=str(log_path), checkpointing=run_checkpointing(setup, run_dir),
               allocator=run_allocator(setup, log_path.read_text(errors="replace"), env),
               status="done" if done.returncode == 0 and train else f"failed (exit {done.returncode})")
    print(f"[{name}] {row['status']}: {len(train)} steps, median {fmt(row['step'], '.2f')} s/step", flush=True)
    return row


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:{spec}}{suffix}"


def speed_table(rows: list[dict]) -> str:
    """The markdown table (COLUMNS), one row per run; speed vs TRL = TRL's s/step at the same precision / the row's."""
    from remix_rft.evaluation import markdown_table

    trl = {r["precision"]: r["step"] for r in rows if r["setup"] == "trl" and r["status"] == "done"}
    lines = []
    for r in rows:
        expected = "float32" if r["precision"] == "float32" else "bfloat16"
        precision = r["precision"] if r["dtype"] == expected else f"{r['precision']} (ran {r['dtype']})"
        if r["status"] != "done":
            lines.append([SETUPS[r["setup"]][0], precision, r["allocator"], r["status"], *["-"] * 7])
            continue
        reference = trl.get(r["precision"])
        ratio = reference / r["step"] if reference and r["step"] else None
        lines.append([SETUPS[r["setup"]][0], precision, r["allocator"], fmt(r["step"], ".2f"),
                      fmt(r["generation"], ".2f"), fmt(r["logprobs"], ".2f"), fmt(r["update"], ".2f"),
                      fmt(None if r["update_mfu"] is None else 100 * r["update_mfu"], ".1f", "%"),
                      fmt(r["tokens_per_s"], ".0f"), fmt(r["peak_rss_mb"], ",.0f"), fmt(ratio, ".2f", "x")])
    return markdown_table(COLUMNS, lines)


def table_notes(rows: list[dict]) -> list[str]:
    notes = []
    for r in rows:
        if r["status"] != "done":
            notes.append(f"- {SETUPS[r['setup']][0]}, {r['precision']}: {r['status']}; see {r['log']}")
            continue
        line = f"- {SETUPS[r['setup']][0]}, {r['precision']}: {r.get('checkpointing', 'gradient checkpointing ?')}"
        if r["untimed"] is not None:
            line += (f"; TRL logs no log-prob or update times: the rest of its step (log-prob passes + update) took "
                     f"{r['untimed']:.2f} s (median)")
        notes.append(line)
    return notes


def commit() -> str:
    """`git rev-parse --short HEAD`, with +dirty when tracked files differ from it."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def header(argv: list[str], config) -> list[str]:
    import torch
    import transformers

    from remix_rft.hardware import auto_dtype, cpu_flags, cpu_model_name, native_cpu_bf16

    flags = [flag for flag, present in cpu_flags().items() if present and ("bf16" in flag or "amx" in flag)]
    auto, why = auto_dtype(config.model.device)
    try:
        import trl

        versions = f"torch {torch.__version__}, transformers {transformers.__version__}, TRL {trl.__version__}"
    except ImportError:
        versions = f"torch {torch.__version__}, transformers {transformers.__version__}, TRL not installed"
    gpu = f"{torch.cuda.get_device_name(0)}; " if torch.cuda.is_available() else ""
    train = config.train
    return [
        f"## Training speed: {config.model.name}, {train.prompts_per_step} prompts x {train.samples_per_prompt} "
        f"samples, {config.rollout.max_new_tokens} new tokens, {train.steps} steps (medians over steps 2..{train.steps})",
        "",
        f"- machine: {gpu}{cpu_model_name()}, {os.cpu_count()} cores, native bf16: "
        f"{'yes' if native_cpu_bf16() else 'no'} ({', '.join(flags) or 'no AVX512-BF16/AMX flags'})",
        f"- precision bf16 = model.dtype=bfloat16 (bf16 autocast); the default model.dtype=auto resolves here to "
        f"{auto}: {why}",
        f"- {versions}",
        f"- commit: {commit()}",
        f"- command: python benchmarks/speed.py {shlex.join(argv)}".rstrip(),
        f"- date: {datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/speed.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="train.steps of every run (default 6; at least 2)")
    parser.add_argument("--precisions", type=lambda text: split_list(text, PRECISIONS), default=list(PRECISIONS),
                        help="comma-separated: float32, bf16 (default: both)")
    parser.add_argument("--setups", type=lambda text: split_list(text, SETUPS), default=list(SETUPS),
                        help="comma-separated: trl, grpo, remix-grpo (default: all three)")
    parser.add_argument("--model", default=None, help="model.name: smollm2-135m-instruct (the default, embedded), "
                        "tiny-random for a quick check, or a path / hub name")
    parser.add_argument("--out", type=Path, default=Path("runs/speed"), help="where the runs go (default runs/speed)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides for every run "
                        "(the TRL baseline maps what it can and rejects what it cannot run)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2: step 1 warms up and is left out")

    from remix_rft.config import ConfigError, load_config
    from remix_rft.models import DEFAULT_MODEL

    overrides = [f"model.name={args.model or DEFAULT_MODEL}", f"train.steps={args.steps}", *args.overrides]
    try:
        config = load_config("quickstart", [*JOB, *overrides])
    except (ConfigError, FileNotFoundError) as err:
        parser.error(str(err))
    head = header(argv, config)
    print("\n".join(head) + "\n", flush=True)
    args.out = args.out.resolve()  # the runs start in the repository's root
    args.out.mkdir(parents=True, exist_ok=True)
    env = run_environment(1)
    rows = [run_setup(setup, precision, args.out, overrides, env)
            for precision in args.precisions for setup in args.setups]
    text = "\n".join([*head, "", speed_table(rows), *([""] + table_notes(rows) if table_notes(rows) else [])])
    (args.out / "speed.md").write_text(text + "\n")
    print("\n" + text, flush=True)
    return 0 if all(r["status"] == "done" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
