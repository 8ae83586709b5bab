"""The watchdog (issue 35): a phase that makes no progress stops the run with one line naming the phase and the rank,
and the checkpoint to resume from; a call Python cannot interrupt ends the process with exit status 4. Every stall
here is injected (a sleep in the engine or the reward, a store wait inside C++), and every test is bounded in time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from remix_rft import checkpoint
from remix_rft.config import ConfigError, load_config
from remix_rft.errors import UserError
from remix_rft.rollout.hf import HFRolloutEngine
from remix_rft.trainer import Trainer, run_training
from remix_rft.watchdog import EXIT_STATUS, Watchdog, WatchdogTimeout

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import _comparable, read_lines  # noqa: E402

FAST = ["model.name=tiny-random", "train.prompts_per_step=2", "train.samples_per_prompt=2", "train.minibatch_size=2",
        "rollout.max_new_tokens=4", "eval.limit=2", "eval.max_new_tokens=4", "eval.before_training=false",
        "eval.after_training=false", "logging.tensorboard=false", "logging.progress=false",
        "data.train_options={size: 16}", "checkpoint.save_final=false", "train.peak_tflops=1"]
LENGTH_REWARD = "def length(response, example):\n    return len(response) / 50\n"
# a wait inside C++ that no Python signal handler can end, as a gloo / NCCL collective whose peer is gone
BLOCKED_REWARD = """
from datetime import timedelta

import torch.distributed as dist


def blocked(response, example):
    store = dist.TCPStore("127.0.0.1", 0, 1, True, timeout=timedelta(seconds=120))
    store.wait(["never-set"])
    return 0.0
"""
STALL_S = 60  # an injected stall: far past every limit below, so only the watchdog ends it


def fast_config(tmp_path: Path, *overrides: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "length_reward.py").write_text(LENGTH_REWARD)
    return load_config("grpo", [*FAST, f"reward.custom={tmp_path / 'length_reward.py'}:length",
                                "reward.custom_timeout=null", f"logging.output_dir={tmp_path}", "logging.run_name=run",
                                *overrides])


def watchdog_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("remix-rft-watchdog")]


def shorten_after_step_1(trainer: Trainer, record: dict) -> None:
    """Step 1 runs under a limit no slow machine trips; the step that stalls gets a 1.5 s one."""
    if record["step"] == 1:
        trainer.watchdog.seconds = 1.5


# ------------------------------------------------------------------------------------------ the Watchdog itself
def test_a_stalled_phase_is_interrupted_with_one_line_naming_it_and_the_rank():
    watchdog = Watchdog(0.5, rank=3)
    watchdog.step = 7
    handler = signal.getsignal(signal.SIGUSR1)
    start = time.monotonic()
    with pytest.raises(WatchdogTimeout) as caught:
        with watchdog.watch("training_loop"), watchdog.phase("scoring"):
            try:
                time.sleep(STALL_S)
            except Exception:  # a reward's own `except Exception` does not swallow the interrupt
                pass
    assert time.monotonic() - start < 5
    message = str(caught.value)
    assert "\n" not in message and isinstance(caught.value, UserError)
    assert message.startswith("watchdog: rank 3 made no progress in scoring for ")
    assert message.endswith(" s at step 7 (train.watchdog_seconds=0.5)")
    assert watchdog.stall.phase == "scoring" and watchdog.stall.thread is None
    assert signal.getsignal(signal.SIGUSR1) == handler and not watchdog_threads() and not watchdog.open_phases()


def test_progress_resets_the_clock_and_an_off_watchdog_does_nothing():
    watchdog = Watchdog(0.6)
    with watchdog.watch("training_loop"):
        assert watchdog_threads() == ["remix-rft-watchdog-rank0"]
        for _ in range(6):  # 1.5 s in all, each phase well within the limit
            with watchdog.phase("generation"):
                time.sleep(0.25)
        assert watchdog.open_phases() == {"MainThread": ["training_loop"]}
    assert watchdog.stall is None and not watchdog_threads()
    off = Watchdog(None)
    with off.watch("training_loop"), off.phase("generation"):
        assert not watchdog_threads() and not off.open_phases()


def test_a_stall_in_a_background_thread_names_the_thread_and_stops_the_waiting_trainer():
    """The pipelined generation job: its scoring hangs, the trainer waits for it; the line names the job's phase."""
    watchdog, release = Watchdog(0.5, rank=1), threading.Event()

    def job() -> None:
        with watchdog.phase("scoring"):
            release.wait(STALL_S)

    worker = threading.Thread(target=job, name="remix-generate-step-2", daemon=True)
    with pytest.raises(WatchdogTimeout, match=r"^watchdog: rank 1 made no progress in scoring \(thread "
                                              r"remix-generate-step-2\) for "):
        with watchdog.watch("training_loop"):
            worker.start()  # launched during the step before
            time.sleep(0.2)
            with watchdog.phase("generation"):  # the trainer waits for the job's responses
                worker.join()
    release.set()
    worker.join(5)


def test_the_config_key_is_validated():
    with pytest.raises(ConfigError, match="train.watchdog_seconds"):
        load_config("grpo", ["train.watchdog_seconds=0"])
    assert load_config("grpo", ["train.watchdog_seconds=null"]).train.watchdog_seconds is None


# ------------------------------------------------------------------------------------------ the trainer
def test_a_stall_in_generation_stops_the_run_with_one_line_and_the_last_checkpoint(tmp_path, monkeypatch):
    calls = []
    generate = HFRolloutEngine.generate

    def stalling(self, *args, **kwargs):
        calls.append(time.monotonic())
        if len(calls) == 2:  # step 2
            time.sleep(STALL_S)
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(HFRolloutEngine, "generate", stalling)
    config = fast_config(tmp_path, "train.steps=3", "checkpoint.every=1", "train.watchdog_seconds=60")
    with pytest.raises(WatchdogTimeout) as caught:
        run_training(config, on_step_end=shorten_after_step_1)
    assert time.monotonic() - calls[1] < 1.5 + 5  # the limit, then at most a few polls and the unwinding
    run = tmp_path / "run"
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("watchdog: rank 0 made no progress in generation for ")
    assert " s at step 2 (train.watchdog_seconds=1.5): checkpoint " in message
    assert message.endswith(f"checkpoint {run / 'checkpoints' / 'step_000001'}; resume with: remix-rft train "
                            f"--resume {run}")
    [event] = read_lines(run, "event")
    assert event["event"] == "watchdog" and event["phase"] == "generation" and event["rank"] == 0
    assert event["step"] == 1 and event["stalled_step"] == 2 and event["message"] in message
    assert [c.name for c in checkpoint.list_checkpoints(run)] == ["step_000001"]  # nothing else was saved
    assert not watchdog_threads()


def test_a_stall_in_scoring_saves_the_last_finished_step_as_it_was(tmp_path, monkeypatch):
    """checkpoint.every=0: the stall in step 2's scoring (after step 2 drew its prompts) rolls the data position and
    the RNG back to the start of step 2 and saves step 1: the checkpoint checkpoint.every=1 would have written."""
    trainer = Trainer(fast_config(tmp_path, "train.steps=3", "checkpoint.every=0", "train.watchdog_seconds=60"))
    seen: dict = {}

    def at_step_end(trainer: Trainer, record: dict) -> None:
        seen.update(sampler=trainer.prompts.state_dict(), rng=checkpoint.rng_state(),
                    weights={k: v.detach().clone() for k, v in trainer.policy.state_dict().items()})
        shorten_after_step_1(trainer, record)

    score = trainer.reward.score

    def stalling(responses, examples):
        if trainer.state.step == 1:
            seen["moved"] = trainer.prompts.state_dict()
            time.sleep(STALL_S)
        return score(responses, examples)

    trainer.on_step_end = at_step_end
    monkeypatch.setattr(trainer.reward, "score", stalling)
    try:
        with pytest.raises(WatchdogTimeout) as caught:
            trainer.train()
    finally:
        trainer.close()
    saved = trainer.run_dir / "checkpoints" / "step_000001"
    assert "made no progress in scoring" in str(caught.value) and "; saved the last finished step 1" in str(caught.value)
    assert str(caught.value).endswith(f"checkpoint {saved}; resume with: remix-rft train --resume {trainer.run_dir}")
    assert seen["moved"] != seen["sampler"]  # step 2 had drawn its prompts: the save undid that
    state = torch.load(saved / "trainer_state.pt", weights_only=False)
    assert state["step"] == 1 and state["sampler"] == seen["sampler"]
    assert torch.equal(state["rng"]["torch"], seen["rng"]["torch"]) and state["rng"]["python"] == seen["rng"]["python"]
    weights = load_file(saved / "policy" / "model.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in seen["weights"].items() if k in weights) and weights
    # resumed from it (the reward no longer stalls), the run is the uninterrupted one
    resumed = run_training(trainer.config, resume=trainer.run_dir)
    straight = run_training(fast_config(tmp_path / "straight", "train.steps=3", "checkpoint.every=0"))
    for kind in ("train", "ledger"):
        assert _comparable(read_lines(resumed.run_dir, kind)) == _comparable(read_lines(straight.run_dir, kind))


def test_a_stall_in_the_pipelined_job_names_its_thread_and_the_run_still_closes(tmp_path, monkeypatch):
    """rollout.pipeline: step 2's responses are scored in the background job during step 1's update; its hang stops
    the trainer (waiting for it, or about to), and closing the run does not wait for the stuck job."""
    trainer = Trainer(fast_config(tmp_path, "train.steps=3", "rollout.pipeline=true", "train.watchdog_seconds=60"))
    score, release, threads = trainer.reward.score, threading.Event(), []

    def stalling(responses, examples):
        threads.append(threading.current_thread().name)
        if len(threads) == 2:  # the job's first batch: step 2's responses
            release.wait(STALL_S)
        return score(responses, examples)

    trainer.on_step_end = shorten_after_step_1
    monkeypatch.setattr(trainer.reward, "score", stalling)
    try:
        with pytest.raises(WatchdogTimeout, match=r"^watchdog: rank 0 made no progress in scoring \(thread "
                                                  r"remix-generate-step-2\) for .* at step [12] "):
            trainer.train()
        assert trainer.watchdog.stall.thread == "remix-generate-step-2"
    finally:
        trainer.close()  # returns: the stuck job is not waited for
        release.set()
    assert threads[:2] == ["MainThread", "remix-generate-step-2"] and not watchdog_threads()


def test_a_normal_run_watches_every_phase_without_a_false_alarm(tmp_path, monkeypatch):
    phases: list[str] = []
    phase = Watchdog.phase

    def spy(self, name, *args, **kwargs):
        phases.append(name)
        return phase(self, name, *args, **kwargs)

    monkeypatch.setattr(Watchdog, "phase", spy)
    handler = signal.getsignal(signal.SIGUSR1)
    trainer = run_training(fast_config(tmp_path, "train.steps=2", "checkpoint.every=1", "train.watchdog_seconds=30",
                                       "eval.after_training=true"))
    assert trainer.state.step == 2 and trainer.watchdog.stall is None
    assert not [e for e in read_lines(trainer.run_dir, "event") if e.get("event") == "watchdog"]
    assert {"generation", "weight_sync", "scoring", "update", "logprobs", "collective", "checkpoint",
            "evaluation"} <= set(phases)
    assert signal.getsignal(signal.SIGUSR1) == handler and not watchdog_threads()


def test_a_call_python_cannot_interrupt_ends_the_command_with_status_4_and_one_line(tmp_path):
    """The command line, its reward blocked inside C++ (a store wait): the interrupt never reaches Python, so after
    the limit and the grace the process writes the line and exits with status 4; the event is in metrics.jsonl."""
    (tmp_path / "blocked_reward.py").write_text(BLOCKED_REWARD)
    env = {k: v for k, v in os.environ.items() if k not in ("REMIX_DEBUG",)}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "remix_rft.cli", "train", *FAST, "train.steps=2",
                           f"reward.custom={tmp_path / 'blocked_reward.py'}:blocked", "reward.custom_timeout=null",
                           "train.watchdog_seconds=6", f"logging.output_dir={tmp_path}", "logging.run_name=run"],
                          capture_output=True, text=True, env=env, timeout=120)
    elapsed = time.monotonic() - start
    assert done.returncode == EXIT_STATUS, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if "watchdog" in line]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("watchdog: rank 0 made no progress in scoring for ")
    assert "at step 1 (train.watchdog_seconds=6); the blocked call did not return to Python" in lines[0]
    assert lines[0].endswith("so the process exits with status 4: no checkpoint was saved, so there is nothing to "
                             "resume; start again with `remix-rft train`")
    assert "Traceback" not in done.stderr
    [event] = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
               if '"watchdog"' in line]
    assert event["phase"] == "scoring" and event["rank"] == 0 and event["step"] == 0
    assert event["seconds"] < 6 + 1 and elapsed < 60  # start-up, step 1's generation, the limit, the grace
