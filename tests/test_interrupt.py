"""Ctrl-C during training: the step in flight finishes, a checkpoint is saved, one line gives the resume command,
exit status 130; a second Ctrl-C exits at once, and the latest complete checkpoint stays usable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from remix_rft.checkpoint import latest_checkpoint
from remix_rft.config import load_config
from remix_rft.interrupt import DUPLICATE_WINDOW_S, StopRequest
from remix_rft.trainer import run_training

TINY = ["model.name=tiny-random", "train.prompts_per_step=2", "train.samples_per_prompt=2", "train.minibatch_size=2",
        "rollout.max_new_tokens=4", "eval.limit=2", "eval.max_new_tokens=4", "logging.tensorboard=false",
        "logging.progress=false", "data.train_options={size: 16}", "checkpoint.every=0"]


def train_steps(run_dir: Path) -> list[int]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [line["step"] for line in lines if line["type"] == "train"]


def _deliver(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.05)  # the handler runs at the next bytecode after delivery


def test_first_signal_requests_a_stop_and_the_second_interrupts():
    previous = signal.getsignal(signal.SIGINT)
    with StopRequest(announce=False) as stop:
        _deliver(signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            _deliver(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous


def test_under_torchrun_the_launchers_relay_is_not_a_second_ctrl_c():
    with StopRequest(ignore_duplicates=True, announce=False) as stop:
        _deliver(signal.SIGINT)
        _deliver(signal.SIGINT)  # the same keypress, relayed by torchrun's agent a moment later
        assert stop.requested
        time.sleep(DUPLICATE_WINDOW_S)
        with pytest.raises(KeyboardInterrupt):
            _deliver(signal.SIGINT)


def test_a_stop_request_saves_the_finished_step_and_resume_continues(tmp_path, capsys):
    config = load_config("quickstart", [*TINY, "train.steps=3", f"logging.output_dir={tmp_path}",
                                        "logging.run_name=run", "checkpoint.save_final=false"])
    trainer = run_training(config, on_step_end=lambda t, record: t.request_stop() if record["step"] == 1 else None)
    assert trainer.interrupted and trainer.state.step == 1
    assert latest_checkpoint(trainer.run_dir).name == "step_000001"  # saved although save_final=false
    assert not (trainer.run_dir / "eval" / "step_000001").exists()  # the final evaluation is skipped
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"stopped after step 1 of 3: checkpoint {trainer.run_dir / 'checkpoints' / 'step_000001'}; "
                       f"resume with: remix-rft train --resume {trainer.run_dir}")
    resumed = run_training(config, resume=trainer.run_dir)
    assert not resumed.interrupted and train_steps(trainer.run_dir) == [1, 2, 3]


SLOW_REWARD = "import time\n\ndef reward(response, example):\n    time.sleep(0.4)\n    return 0.0\n"


def _start(tmp_path: Path, steps: int) -> tuple[subprocess.Popen, Path]:
    """`remix-rft train` in a child process, with a reward slow enough (0.4 s a response) that a signal lands in a
    step; returns once the first step is logged."""
    (tmp_path / "slow_reward.py").write_text(SLOW_REWARD)
    run_dir = tmp_path / "runs" / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "remix_rft.cli", "train", *TINY, f"train.steps={steps}", "eval.benchmarks=[]",
         f"reward.custom={tmp_path / 'slow_reward.py'}:reward", f"logging.output_dir={run_dir.parent}",
         "logging.run_name=run"],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ((run_dir / "metrics.jsonl").exists() and train_steps(run_dir)):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the first step never finished"
        time.sleep(0.2)
    return process, run_dir


def test_ctrl_c_in_a_subprocess_saves_a_checkpoint_and_exits_130(tmp_path):
    process, run_dir = _start(tmp_path, steps=50)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    steps = train_steps(run_dir)
    assert 1 <= steps[-1] < 50
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint.name == f"step_{steps[-1]:06d}"  # the step in flight finished and was saved
    assert err.strip().splitlines()[-1] == (f"stopped after step {steps[-1]} of 50: checkpoint {checkpoint}; "
                                            f"resume with: remix-rft train --resume {run_dir}")


def test_a_second_ctrl_c_exits_at_once(tmp_path):
    process, run_dir = _start(tmp_path, steps=50)
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)  # inside the step: its 4 responses take 1.6 s to score
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err, err
    assert time.monotonic() - started < 15
    assert err.strip().splitlines()[-1] == ("remix-rft train: interrupted: no checkpoint was saved, so there is "
                                            "nothing to resume; start again with `remix-rft train`")
    assert latest_checkpoint(run_dir) is None


RANKS_WORKER = """
import sys
from pathlib import Path

import torch

from remix_rft.config import load_config
from remix_rft.trainer import run_training

torch.set_num_threads(1)
out, overrides = Path(sys.argv[1]), sys.argv[2:]
config = load_config("quickstart", [*overrides, f"logging.output_dir={out}", "logging.run_name=run"])


def rank_0_stops(trainer, record):
    if record["step"] == 1 and trainer.dist.is_main:  # as if only rank 0 (node 0) got the Ctrl-C
        trainer.request_stop()


trainer = run_training(config, on_step_end=rank_0_stops)
(out / f"rank{trainer.dist.rank}.txt").write_text(f"{trainer.interrupted} {trainer.state.step}")
"""


def test_under_torchrun_every_rank_stops_after_the_same_step(tmp_path):
    """Rank 0 alone is asked to stop: both ranks agree (one collective a step), stop after step 1 and save it."""
    worker = tmp_path / "worker.py"
    worker.write_text(RANKS_WORKER)
    src = Path(__file__).resolve().parent.parent / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(worker),
         str(tmp_path), *TINY, "model.device=cpu", "train.steps=3", "eval.benchmarks=[]", "train.prompts_per_step=4",
         "train.minibatch_size=4"],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-5000:]
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["True 1", "True 1"]
    assert latest_checkpoint(tmp_path / "run").name == "step_000001"
    assert "resume with: torchrun <same options> -m remix_rft.cli train --resume" in result.stderr
