"""Checkpoint writes are atomic: a crash mid-save leaves the previous checkpoint usable."""

from pathlib import Path

import pytest

from remix_rft.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint


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


def test_resave_same_step_replaces_it(tmp_path):
    save_checkpoint(tmp_path, 3, _writer("first"))
    save_checkpoint(tmp_path, 3, _writer("second"))
    assert (latest_checkpoint(tmp_path) / "state.txt").read_text() == "second"
    assert len(list_checkpoints(tmp_path)) == 1


def test_no_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path) is None


def test_checkpoint_to_resume_names_the_run_without_one(tmp_path):
    from remix_rft.checkpoint import checkpoint_to_resume
    from remix_rft.errors import PathNotFoundError

    with pytest.raises(PathNotFoundError, match="no complete checkpoint under .*checkpoints"):
        checkpoint_to_resume(tmp_path)
    save_checkpoint(tmp_path, 3, lambda d: (d / "state.txt").write_text("three"))
    assert checkpoint_to_resume(tmp_path).name == "step_000003"
