"""Running an efficiency study: each run is its own `remix-rft train` (or TRL baseline) process, a bounded number
at a time, in its own process group; finished runs are skipped and interrupted ones resume from their checkpoints.

Part of `benchmarks/efficiency.py` (the entry point), beside `efficiency_study.py` and `efficiency_report.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from efficiency_study import RunSpec
from remix_rft.checkpoint import latest_checkpoint
from remix_rft.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
TRL_SCRIPT = Path(__file__).resolve().parent / "trl_baseline.py"
# Each run process gets these unless the caller's environment sets them: concurrent runs on one GPU fragment its
# memory less with expandable segments.
RUN_ENVIRONMENT = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "TOKENIZERS_PARALLELISM": "false"}



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
    # the runs use this checkout's code: a study launched from a git worktree (pinned to a commit) would otherwise
    # import whatever the editable install points at, and later edits there would change runs mid-study
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
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
