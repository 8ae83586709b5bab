"""Checks of what the user provides that would otherwise fail late, run before the model loads.

`Trainer.__init__` checks everything the user provides before the weights load (minutes on a big model), each
failure a `UserError` naming the key or the path (the CLI prints one line and exits 2):
  1. the config (at load: keys, values, registered names; config.py)
  2. the custom reward: building the reward imports its module (rewards/custom.py)
  3. the output folder: `check_writable` below
  4. the model path and tokenizer, then the training data and held-out sets (models.py, data/)
"""

from __future__ import annotations

import os
from pathlib import Path

from remix_rft.errors import PathNotWritableError


def check_writable(folder: Path, key: str) -> None:
    """Raise PathNotWritableError unless `folder` can be created (or exists as a folder) and written to.

    Checked where it exists, else at its nearest existing parent; `key` names the setting that chose it."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise PathNotWritableError(f"{key} {folder}: {probe} is a file, not a folder; choose another folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == folder else f" (its parent {probe} exists and cannot be written)"
        raise PathNotWritableError(f"{key} {folder}: not writable{where}; choose a folder you can write to")
