"""Stopping a training run cleanly on Ctrl-C.

The first SIGINT does not interrupt anything: it records a request that the training loop honours at the next step
boundary (every rank agrees through one collective, see `Trainer`), so the step in flight finishes, a checkpoint is
saved and the command exits with status 130. A second SIGINT raises KeyboardInterrupt at once; whatever it cuts short,
the latest complete checkpoint stays usable (checkpoint writes are atomic, see checkpoint.py).

Under torchrun the terminal's Ctrl-C reaches every local rank and the launcher relays it to them again a moment
later: a second signal within `DUPLICATE_WINDOW_S` of the first is that relay, not a second Ctrl-C.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

DUPLICATE_WINDOW_S = 1.0


class Interrupted(KeyboardInterrupt):
    """A KeyboardInterrupt that carries the one line to print (what was kept and how to resume); the CLI prints it and
    exits with status 130."""


class StopRequest:
    """A context manager that turns SIGINT into `requested = True` while it is entered (main thread only; elsewhere,
    e.g. a trainer run from a worker thread, signals keep their handlers and only `request()` stops the run)."""

    def __init__(self, ignore_duplicates: bool = False, announce: bool = True):
        self.requested = False
        self.ignore_duplicates = ignore_duplicates  # torchrun: the launcher relays the terminal's signal
        self.announce = announce  # print what the first Ctrl-C does (rank 0 only)
        self._first_at: float | None = None
        self._previous: Any = None
        self._installed = False

    def request(self) -> None:
        """Ask the run to stop at the next step boundary (what the first Ctrl-C does)."""
        self.requested = True

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_signal)
            self._installed = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self._first_at is None:  # the first Ctrl-C (a `request()` before it does not count as one)
            self.requested, self._first_at = True, now
            if self.announce:
                print("\nCtrl-C: stopping after the current step and saving a checkpoint (Ctrl-C again to exit at "
                      "once)", file=sys.stderr, flush=True)
            return
        if self.ignore_duplicates and now - self._first_at < DUPLICATE_WINDOW_S:
            return
        if self._installed:  # a third Ctrl-C during the unwinding gets Python's own handler
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
        raise KeyboardInterrupt
