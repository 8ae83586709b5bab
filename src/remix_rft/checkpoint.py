"""Atomic checkpoints: a crash mid-save leaves the previous checkpoint usable.

Layout: <run_dir>/checkpoints/step_000010/ written first as a temp dir and renamed into place; the file
<run_dir>/checkpoints/latest names the newest complete checkpoint and is replaced atomically.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: Path, step: int, write: Callable[[Path], None], keep: int = 2) -> Path:
    """Call `write(tmp_dir)` to fill a temp dir, then publish it as step_<step> and prune old ones."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write(tmp)
    if final.exists():  # re-saving the same step (e.g. final save right after a periodic one)
        old = root / f".old_step_{step:06d}_{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    pointer_tmp = root / f".latest.{os.getpid()}"
    pointer_tmp.write_text(final.name + "\n")
    os.replace(pointer_tmp, root / "latest")
    for stale in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = checkpoint_root(run_dir)
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint named by `latest`, else the newest complete step_ dir (temp dirs are never complete)."""
    root = checkpoint_root(run_dir)
    pointer = root / "latest"
    if pointer.exists():
        candidate = root / pointer.read_text().strip()
        if candidate.is_dir():
            return candidate
    found = list_checkpoints(run_dir)
    return found[-1] if found else None
