"""Checkpoint writes are atomic: a crash mid-save leaves the previous checkpoint usable."""

import errno
import json
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from remix_rft.checkpoint import (
    _state_globals,
    checkpoint_root,
    checkpoint_to_resume,
    latest_checkpoint,
    list_checkpoints,
    out_of_space,
    read_training_state,
    remove_dead_temp_dirs,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from remix_rft.cli import main
from remix_rft.errors import DiskFullError
from remix_rft.safe_load import UnsafeCheckpointError, load_file, load_sharded
from remix_rft.trainer import run_training

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import tiny_config  # noqa: E402


def _writer(payload: str):
    def write(directory: Path) -> None:
        (directory / "state.txt").write_text(payload)

    return write


def test_save_publishes_and_prunes(tmp_path):
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, _writer(f"step {step}"), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000004", "step_000006"]
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step_000006" and (latest / "state.txt").read_text() == "step 6"


def test_crash_mid_save_keeps_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path, 2, _writer("step 2"))

    def crashing_write(directory: Path) -> None:
        (directory / "state.txt").write_text("half")
        raise KeyboardInterrupt("killed while writing")

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 4, crashing_write)
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step_000002"
    assert (latest / "state.txt").read_text() == "step 2"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000002"]  # the temp dir is never a checkpoint
    # the next save after the crash succeeds and becomes the latest
    save_checkpoint(tmp_path, 4, _writer("step 4"))
    assert latest_checkpoint(tmp_path).name == "step_000004"


def _raising(error: BaseException):
    def write(directory: Path) -> None:
        raise error

    return write


class SafetensorLikeError(Exception):
    """What safetensors raises on a full disk: not an OSError, the errno only in its message."""


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   SafetensorLikeError("Error while serializing: I/O error: No space left on device "
                                                       "(os error 28)")], ids=["errno", "safetensors"])
def test_a_full_disk_mid_save_removes_the_half_written_checkpoint_and_keeps_the_last(tmp_path, error):
    save_checkpoint(tmp_path, 2, _writer("step 2"))

    def filling_write(directory: Path) -> None:
        (directory / "state.txt").write_text("half")
        raise error

    with pytest.raises(DiskFullError) as caught:
        save_checkpoint(tmp_path, 4, filling_write)
    message = str(caught.value)
    assert "\n" not in message and "step 4" in message and str(checkpoint_root(tmp_path)) in message
    assert "the half-written checkpoint was removed" in message  # the run adds the kept checkpoint and the command
    assert isinstance(caught.value, OSError) and caught.value.__cause__ is error
    # the half-written temp dir is gone (its space freed), the last complete checkpoint is untouched
    assert sorted(p.name for p in checkpoint_root(tmp_path).iterdir()) == ["latest", "step_000002"]
    assert (latest_checkpoint(tmp_path) / "state.txt").read_text() == "step 2"


def test_only_a_full_disk_is_reported_as_one(tmp_path, monkeypatch):
    assert not out_of_space(ValueError("bad value"), tmp_path)
    assert not out_of_space(OSError(errno.EACCES, "Permission denied"), tmp_path)
    # torch.save's message on a full disk names no errno: a failed write counts only where the disk is nearly full
    failed = RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                          "data/0: file write failed")
    assert not out_of_space(failed, tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(total=10**9, used=10**9, free=4096))
    assert out_of_space(failed, tmp_path)
    # any other error while writing propagates as it was; a first save's disk-full leaves no checkpoint behind
    with pytest.raises(ValueError, match="bad value"):
        save_checkpoint(tmp_path, 2, _raising(ValueError("bad value")))
    with pytest.raises(DiskFullError, match="checkpoint of step 2 .* the half-written checkpoint was removed"):
        save_checkpoint(tmp_path, 2, _raising(OSError(errno.ENOSPC, "full")))
    assert latest_checkpoint(tmp_path) is None and not list(checkpoint_root(tmp_path).glob(".tmp_step_*"))


def test_a_run_whose_disk_fills_ends_with_one_line_and_resumes_from_its_last_checkpoint(tmp_path, monkeypatch,
                                                                                           capsys):
    """The CLI on a full disk at step 2's save: exit 2, one line naming the kept checkpoint and the resume command,
    nothing written before lost; once space is back, the resume finishes the run. At step 1's save there is nothing
    to resume, and the line says so."""
    from remix_rft import checkpoint
    from test_trainer import TINY

    real = checkpoint.write_training_state
    full_at = [1]  # the step whose save finds the disk full

    def full_at_step(directory: Path, state, phase):
        if directory.name.startswith(f".tmp_step_{full_at[0]:06d}"):
            (directory / "policy").mkdir()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(directory, state, phase)

    monkeypatch.setattr(checkpoint, "write_training_state", full_at_step)
    out = tmp_path / "runs"
    argv = ["train", *TINY, "train.steps=3", "checkpoint.every=1", "eval.before_training=false",
            "eval.after_training=false", f"logging.output_dir={out}"]
    assert main([*argv, "logging.run_name=first"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "checkpoint of step 1" in err
    assert "no checkpoint was saved, so there is nothing to resume; start again with `remix-rft train`" in err
    assert list_checkpoints(out / "first") == [] and not list(checkpoint_root(out / "first").glob(".tmp_step_*"))
    full_at[0] = 2
    assert main([*argv, "logging.run_name=r"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("remix-rft train: error: no space left"), err
    assert "the half-written checkpoint was removed" in errors[0]
    assert f"checkpoint {out / 'r' / 'checkpoints' / 'step_000001'}; resume with: remix-rft train --resume {out / 'r'}" \
        in errors[0]
    assert [p.name for p in list_checkpoints(out / "r")] == ["step_000001"]
    assert not list(checkpoint_root(out / "r").glob(".tmp_step_*"))
    monkeypatch.setattr(checkpoint, "write_training_state", real)
    assert main(["train", "--resume", str(out / "r")]) == 0
    lines = [json.loads(x) for x in (out / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["type"] == "train"] == [1, 2, 3]


def test_resave_same_step_replaces_it(tmp_path):
    save_checkpoint(tmp_path, 3, _writer("first"))
    save_checkpoint(tmp_path, 3, _writer("second"))
    assert (latest_checkpoint(tmp_path) / "state.txt").read_text() == "second"
    assert len(list_checkpoints(tmp_path)) == 1


def test_no_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path) is None


def test_checkpoint_to_resume_names_the_run_without_one(tmp_path):
    from remix_rft.errors import PathNotFoundError

    with pytest.raises(PathNotFoundError, match="no complete checkpoint under .*checkpoints"):
        checkpoint_to_resume(tmp_path)
    save_checkpoint(tmp_path, 3, lambda d: (d / "state.txt").write_text("three"))
    assert checkpoint_to_resume(tmp_path).name == "step_000003"


def test_kill_9_mid_write_never_leaves_a_checkpoint_resume_would_read(tmp_path):
    """A real kill -9 of a process half-way through writing step 4: resume still finds step 2, and the next save
    removes the dead temp dir."""
    save_checkpoint(tmp_path, 2, _writer("step 2"))
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from remix_rft.checkpoint import save_checkpoint

        def write(directory):
            (directory / "policy").mkdir()
            (directory / "policy" / "model.safetensors").write_bytes(b"half" * 1024)
            print("writing", flush=True)
            time.sleep(120)

        save_checkpoint(Path(sys.argv[1]), 4, write)
    """)
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "writing"
    finally:
        process.kill()  # SIGKILL: no handler, no finally block runs in the child
        process.wait()
    root = checkpoint_root(tmp_path)
    assert [p.name for p in root.glob(".tmp_step_000004_*")]  # the half-written step 4 is on disk ...
    assert checkpoint_to_resume(tmp_path).name == "step_000002"  # ... and never picked up
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000002"]
    save_checkpoint(tmp_path, 4, _writer("step 4"))
    assert not list(root.glob(".tmp_*")) and latest_checkpoint(tmp_path).name == "step_000004"


def test_crash_between_the_renames_of_a_resave_falls_back_to_a_complete_checkpoint(tmp_path):
    """Re-saving step 4 moves the old step_000004 aside before the new one takes its name: a crash in between leaves
    `latest` naming a missing dir, and resume takes the newest complete one."""
    save_checkpoint(tmp_path, 2, _writer("step 2"))
    save_checkpoint(tmp_path, 4, _writer("step 4"))
    root = checkpoint_root(tmp_path)
    (root / "step_000004").rename(root / ".old_step_000004_1")
    (root / ".tmp_step_000004_1").mkdir()
    assert latest_checkpoint(tmp_path).name == "step_000002"
    (root / "latest").write_text("../../elsewhere\n")  # a pointer that names no checkpoint is ignored
    assert latest_checkpoint(tmp_path).name == "step_000002"
    assert {p.name for p in remove_dead_temp_dirs(tmp_path)} == {".old_step_000004_1", ".tmp_step_000004_1"}


# ------------------------------------------------------------------------------ a checkpoint cannot run code


class RunsCode:
    """Pickles as the call `Path.touch(marker)`: what a crafted checkpoint file runs when it is unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.marker,))


RUN = ["train.steps=1", "checkpoint.every=1", "remix.offpolicy_fraction=0.5", "eval.before_training=false",
       "eval.after_training=false"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A real one-step remix-grpo run with its checkpoint (replay buffer filled); tests work on copies."""
    return run_training(tiny_config(tmp_path_factory.mktemp("tiny"), "remix-grpo", *RUN)).run_dir


def copy_run(tiny_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the tiny run under tmp_path/run, and its checkpoint."""
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    return run_dir, latest_checkpoint(run_dir)


def test_crafted_pickle_runs_code_when_loaded_unsafely(tmp_path):
    """The attack the tests below defend against is real: a plain torch.load of the crafted file runs its call."""
    marker = tmp_path / "ran"
    torch.save({"step": 1, "rng": RunsCode(marker)}, tmp_path / "trainer_state.pt")
    torch.load(tmp_path / "trainer_state.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("name", ["trainer_state.pt", "optimizer.pt", "buffer.pt"])
def test_resume_refuses_a_checkpoint_file_that_would_run_code(tiny_run, tmp_path, name):
    run_dir, step = copy_run(tiny_run, tmp_path)
    marker = tmp_path / "ran"
    saved = torch.load(step / name, weights_only=True) if name != "trainer_state.pt" else {"step": 1}
    torch.save({**saved, "payload": RunsCode(marker)}, step / name)  # otherwise the file as written
    with pytest.raises(UnsafeCheckpointError, match="holds objects a checkpoint may not hold") as caught:
        run_training(tiny_config(tmp_path, "remix-grpo", *RUN), resume=run_dir)
    message = str(caught.value)
    assert str(step / name) in message and "pathlib.Path" in message and "\n" not in message
    assert not marker.exists()


def test_cli_resume_of_a_crafted_checkpoint_is_one_line_and_runs_nothing(tiny_run, tmp_path, capsys):
    run_dir, step = copy_run(tiny_run, tmp_path)
    marker = tmp_path / "ran"
    torch.save(RunsCode(marker), step / "trainer_state.pt")
    assert main(["train", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("remix-rft train: error: "), err
    assert f"{step / 'trainer_state.pt'} holds objects a checkpoint may not hold" in errors[0]
    assert not marker.exists()


def test_checkpoint_files_hold_only_what_a_weights_only_load_builds(tiny_run):
    """Every .pt a run writes loads with no allow-list (a pipelined run's trainer_state.pt adds `_state_globals`)."""
    files = sorted(latest_checkpoint(tiny_run).glob("*.pt"))
    assert {f.name for f in files} == {"trainer_state.pt", "optimizer.pt", "buffer.pt"}
    for file in files:
        assert torch.serialization.get_unsafe_globals_in_checkpoint(file) == [], file.name
        assert load_file(file) is not None


def test_rng_states_load_from_new_and_older_checkpoints(tmp_path):
    """numpy's RNG key is saved as a list; checkpoints written before hold it as a uint32 array, still accepted."""
    np.random.seed(3)
    np.random.normal()  # a cached gaussian too
    expected = np.random.rand(4)
    np.random.seed(3)
    np.random.normal()
    older = {**rng_state(), "numpy": np.random.get_state()}
    torch.save({"rng": rng_state()}, tmp_path / "new.pt")
    torch.save({"rng": older}, tmp_path / "old.pt")
    for name in ("new.pt", "old.pt"):
        np.random.seed(0)
        restore_rng_state(load_file(tmp_path / name, _state_globals())["rng"])
        assert np.array_equal(np.random.rand(4), expected), name


def test_rank_file_that_would_run_code_is_refused(tmp_path):
    """A torchrun checkpoint's own rank file is read first, with the same refusal."""
    marker = tmp_path / "ran"
    (tmp_path / "trainer_state.json").write_text(json.dumps({"world_size": 2}))
    torch.save({"step": 2, "rng": RunsCode(marker)}, tmp_path / "rank_00001.pt")
    training: Any = SimpleNamespace(dist=SimpleNamespace(active=True, rank=1, world_size=2))
    with pytest.raises(UnsafeCheckpointError, match=r"rank_00001\.pt holds objects .*pathlib\.Path"):
        read_training_state(tmp_path, training, "float32")
    assert not marker.exists()


# DCP warns that it saves and loads in one process: these tests mean to
SINGLE_PROCESS_DCP = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _sharded(tmp_path: Path, extra: Any = None) -> Path:
    """A torch.distributed.checkpoint folder (one process) of a small model and its optimizer state."""
    from torch.distributed.checkpoint import save

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.25)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = {"policy": model.state_dict(), "optimizer": {"lr": 0.25, "betas": (0.9, 0.99), "name": "adamw"}}
    if extra is not None:
        state["extra"] = extra
    save(state, checkpoint_id=tmp_path / "sharded")
    return tmp_path / "sharded"


@SINGLE_PROCESS_DCP
def test_sharded_checkpoint_loads_tensors_and_values(tmp_path):
    directory = _sharded(tmp_path)
    state = {"policy": {"weight": torch.zeros(2, 3), "bias": torch.zeros(2)},
             "optimizer": {"lr": 0.0, "betas": (0.0, 0.0), "name": ""}}
    load_sharded(state, directory)
    assert state["optimizer"] == {"lr": 0.25, "betas": (0.9, 0.99), "name": "adamw"}
    assert state["policy"]["weight"].abs().sum() > 0


@SINGLE_PROCESS_DCP
def test_sharded_metadata_that_would_run_code_is_refused(tmp_path):
    directory = _sharded(tmp_path)
    marker = tmp_path / "ran"
    (directory / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(UnsafeCheckpointError, match=r"\.metadata holds objects .*pathlib\.Path"):
        load_sharded({"policy": {"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}}, directory)
    assert not marker.exists()


@SINGLE_PROCESS_DCP
def test_sharded_value_that_would_run_code_is_refused(tmp_path):
    """DCP stores non-tensor values as torch.save bytes and loads them with weights_only=False: vetted first."""
    marker = tmp_path / "ran"
    directory = _sharded(tmp_path, extra=RunsCode(marker))
    with pytest.raises(UnsafeCheckpointError, match=r"sharded \(its value extra\) holds objects .*getattr"):
        load_sharded({"policy": {"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}, "extra": None}, directory)
    assert not marker.exists()
