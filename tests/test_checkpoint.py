"""Checkpoint writes are atomic: a crash mid-save leaves the previous checkpoint usable."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from remix_rft.checkpoint import (
    checkpoint_root,
    checkpoint_to_resume,
    latest_checkpoint,
    list_checkpoints,
    remove_dead_temp_dirs,
    save_checkpoint,
)


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
