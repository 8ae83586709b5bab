"""The watchdog: a phase of a run that makes no progress stops it with one line (issue 35).

A hung generation, grader, weight sync or collective (TRL's async NCCL hang: a rank waits forever in a collective its
peer never joins) used to leave a run burning its machines silently. Each rank's trainer now holds a `Watchdog`
(`train.watchdog_seconds`, default 7200; null: off). The trainer wraps each blocking phase in `phase(name)`:
generation, scoring, weight_sync, logprobs, update (the update and its collectives), evaluation, checkpoint,
collective (the stop-request agreement), training_loop (the rest of the loop) and shutdown. Entering or leaving a
phase is progress; a daemon monitor thread fires when the innermost open phase of a thread has seen none for longer
than the limit. Then:

1. It interrupts the trainer's thread with SIGUSR1, whose handler (installed while the loop runs) raises `_Stalled`
   there: a BaseException, so no `except Exception` in a reward or an engine swallows it. (A trainer run outside the
   main thread gets it as an asynchronous exception, which cannot end a blocked call.) The innermost phase it leaves
   turns it into
   `WatchdogTimeout`, a `UserError`: the command line prints it as one line and exits with status 2. The line names
   the phase and the rank (`watchdog: rank R made no progress in <phase> for N s at step S (train.watchdog_seconds=
   L)`), then the checkpoint to resume from and the command. The event is logged in `metrics.jsonl` (`"event":
   "watchdog"`, under the last finished step so a resume keeps it). When the hang was in the generation or scoring of
   a step (no training state changed yet; single process, not pipelined) and the last finished step has no
   checkpoint, the run first restores the step's data position and RNG state as they were at its start and saves
   that step: the checkpoint is exactly the one `checkpoint.every` would have written.
2. A call blocked inside C (a gloo/NCCL collective, a CUDA synchronize, a store wait) never returns to the
   interpreter, so no Python exception can end it. If the trainer's thread has not left the stalled phase within a
   grace period (a quarter of the limit, 2 to 30 s), the monitor logs the event (rank 0), writes the same line,
   with the checkpoint to resume from, to stderr and ends the process with `os._exit(EXIT_STATUS)` (4): nothing
   else runs, no checkpoint is written. Under torchrun every rank has its own watchdog; the launcher then stops
   the other ranks. The first such line names the rank that hung (ranks that waited for it may follow).

A stall in a background thread (the pipelined generation job) is named with its thread and interrupts the trainer's
thread when that thread is inside a phase (it is: it updates, or waits for the job). Ranks do not talk to each other
about it: each names its own phase.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from remix_rft import checkpoint
from remix_rft.errors import UserError

__all__ = ["EXIT_STATUS", "Stall", "Watchdog", "WatchdogTimeout", "mark_step", "stopping_on_stall", "watched"]

logger = logging.getLogger(__name__)

EXIT_STATUS = 4  # the process's exit status when a stalled call could not be interrupted (2: input error, 3: hacking)
INTERRUPT_SIGNAL = getattr(signal, "SIGUSR1", None)  # None off POSIX: the trainer's thread gets an async exception
MIN_GRACE_S, MAX_GRACE_S = 2.0, 30.0  # how long an interrupted thread has to leave the stalled phase
MAX_POLL_S = 1.0
# the phases of a step's generation: a stall in one of them leaves the training state as the step began, but for what
# `mark_step` restores (a stall elsewhere, e.g. in a reincarnation's weight copy, may have changed more)
ROLLBACK_PHASES = ("generation", "weight_sync", "scoring")
C_LEVEL_NOTE = (f"; the blocked call did not return to Python (a hang inside C: NCCL, gloo, CUDA, a store), so the "
                f"process exits with status {EXIT_STATUS}")


class WatchdogTimeout(UserError, RuntimeError):
    """A phase of the run made no progress for `train.watchdog_seconds`; the message is one line naming the phase,
    the rank, and the checkpoint to resume from."""


class _Stalled(BaseException):
    """Raised in the trainer's thread by the watchdog's interrupt; the innermost phase turns it into WatchdogTimeout."""


@dataclass(frozen=True)
class Stall:
    """What the watchdog found: a phase without progress."""

    phase: str
    rank: int
    seconds: float  # without progress when the watchdog fired
    limit: float
    step: int | None  # the training step in progress (or last begun)
    thread: str | None = None  # the thread's name when not the trainer's own (the pipelined generation job)

    def line(self) -> str:
        where = f"{self.phase} (thread {self.thread})" if self.thread else self.phase
        at = f" at step {self.step}" if self.step is not None else ""
        seconds = f"{self.seconds:.1f}" if self.seconds < 10 else f"{self.seconds:.0f}"
        return (f"watchdog: rank {self.rank} made no progress in {where} for {seconds} s{at} "
                f"(train.watchdog_seconds={self.limit:g})")

    def event(self, last_step: int, message: str) -> dict[str, Any]:
        """The metrics.jsonl line; logged under the last finished step, so a resume from it keeps the line."""
        return {"type": "event", "event": "watchdog", "step": last_step, "stalled_step": self.step,
                "phase": self.phase, "rank": self.rank, "thread": self.thread, "seconds": round(self.seconds, 3),
                "limit": self.limit, "message": message}


@dataclass(eq=False)
class _Phase:
    name: str
    since: float  # the last progress: entering the phase, or leaving a phase inside it
    thread: str
    fired: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class Watchdog:
    """Phases, per thread, and the monitor that fires on a phase without progress (module docstring).

    `seconds=None`: off (`phase` is a no-op). The limit may be changed while it runs (`watchdog.seconds = ...`)."""

    def __init__(self, seconds: float | None, rank: int = 0):
        self.seconds = seconds
        self.rank = rank
        self.step: int | None = None  # set by `mark_step`, named in the line
        self.stall: Stall | None = None  # the last stall the watchdog fired on
        # the run's last words before os._exit: (stall, line) -> the line to print (logs the event, adds the resume)
        self.last_words: Callable[[Stall, str], str] | None = None
        # restores the state the step in progress began with (see `mark_step`); None once that state has changed
        self.rollback: Callable[[], bool] | None = None
        self._lock = threading.Lock()
        self._stacks: dict[int, list[_Phase]] = {}  # thread ident -> its open phases, innermost last
        self._target: int | None = None  # the thread `watch` runs in (the trainer's): the one interrupted
        self._depth = 0
        self._monitor: threading.Thread | None = None
        self._closing = threading.Event()
        self._pending = False  # an interrupt was sent and not yet raised
        self._interrupted = False  # the trainer's thread was interrupted since `watch` began
        self._handler_installed = False
        self._previous_handler: Any = None

    @property
    def enabled(self) -> bool:
        return self.seconds is not None

    @property
    def grace(self) -> float:
        """How long the interrupted thread has to leave the stalled phase before the process exits."""
        return min(max((self.seconds or 0.0) / 4, MIN_GRACE_S), MAX_GRACE_S)

    # ------------------------------------------------------------------------------------------------ phases
    def phase(self, name: str, changes_state: bool = False) -> contextlib.AbstractContextManager[None]:
        """A blocking phase: entering and leaving it is progress. `changes_state`: from here on the step's training
        state differs from the one it began with (no rollback to it)."""
        if self.seconds is None:
            return contextlib.nullcontext()
        if changes_state:
            self.rollback = None
        return self._phase(name)

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        ident = threading.get_ident()
        entry = _Phase(name, time.monotonic(), threading.current_thread().name)
        with self._lock:
            self._stacks.setdefault(ident, []).append(entry)
        try:
            yield
        except BaseException as error:
            # after an interrupt, whatever leaves the trainer's phases is its consequence (a _Stalled that a library
            # wrapped into its own error included)
            if isinstance(error, _Stalled) or (self._interrupted and ident == self._target
                                               and not isinstance(error, WatchdogTimeout)):
                stall, self._interrupted = self.stall, False
                raise WatchdogTimeout(stall.line() if stall is not None else
                                      f"watchdog: rank {self.rank} interrupted in {name}") from error
            raise
        finally:
            with self._lock:
                stack = self._stacks.get(ident, [])
                if entry in stack:
                    stack.remove(entry)
                if stack:
                    stack[-1].since = time.monotonic()  # the enclosing phase made progress
                else:
                    self._stacks.pop(ident, None)
            entry.done.set()

    def open_phases(self) -> dict[str, list[str]]:
        """Thread name -> its open phases, outermost first (for tests and debugging)."""
        with self._lock:
            return {stack[0].thread: [p.name for p in stack] for stack in self._stacks.values() if stack}

    # ------------------------------------------------------------------------------------------------ arming
    @contextlib.contextmanager
    def watch(self, name: str) -> Iterator[None]:
        """Watch the block, itself a phase `name`, with the calling thread as the one to interrupt on a stall."""
        if self.seconds is None:
            yield
            return
        self._arm()
        try:
            with self._phase(name):
                yield
        finally:
            self._disarm()

    def _arm(self) -> None:
        self._depth += 1
        if self._depth > 1:
            return
        self._target, self._pending, self._interrupted = threading.get_ident(), False, False
        # SIGUSR1 is taken while the watchdog is armed, unless a handler installed outside Python holds it
        if INTERRUPT_SIGNAL is not None and threading.current_thread() is threading.main_thread() \
                and signal.getsignal(INTERRUPT_SIGNAL) is not None:
            self._previous_handler = signal.signal(INTERRUPT_SIGNAL, self._on_signal)
            self._handler_installed = True
        self._closing = threading.Event()
        self._monitor = threading.Thread(target=self._run, args=(self._closing,), daemon=True,
                                         name=f"remix-rft-watchdog-rank{self.rank}")
        self._monitor.start()

    def _disarm(self) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        self._closing.set()
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(timeout=5.0)
        self._monitor = None
        self._pending = False
        if self._handler_installed:
            signal.signal(INTERRUPT_SIGNAL, self._previous_handler)
            self._handler_installed = False

    def _on_signal(self, signum: int, frame: Any) -> None:
        # no lock here: the interrupted thread may hold it; a dict lookup is atomic under the GIL
        if self._pending and self._stacks.get(threading.get_ident()):
            self._pending = False
            self._interrupted = True
            raise _Stalled
        if callable(self._previous_handler):
            self._previous_handler(signum, frame)

    # ------------------------------------------------------------------------------------------------ monitor
    def _run(self, closing: threading.Event) -> None:
        while not closing.wait(min(MAX_POLL_S, (self.seconds or MAX_POLL_S) / 10)):
            found = self._find_stall()
            if found is None:
                continue
            stall, target = found
            self.stall = stall
            if target is None:  # the trainer's thread waits in no phase: it will stop when it waits for this one
                logger.warning("%s; the training thread is not in a watched phase yet", stall.line())
                continue
            self._interrupt()
            if target.done.wait(self.grace) or closing.is_set():
                continue
            self._die(stall)

    def _find_stall(self) -> tuple[Stall, _Phase | None] | None:
        """The innermost phase (of any thread) longest without progress past the limit, marked as fired, and the
        trainer thread's innermost phase (the one its interruption must leave)."""
        limit = self.seconds
        if limit is None:
            return None
        now = time.monotonic()
        with self._lock:
            stalled = [(now - stack[-1].since, ident, stack[-1]) for ident, stack in self._stacks.items()
                       if stack and not stack[-1].fired and now - stack[-1].since > limit]
            if not stalled:
                return None
            idle, ident, phase = max(stalled, key=lambda item: item[0])
            phase.fired = True
            target_stack = self._stacks.get(self._target) if self._target is not None else None
            target = target_stack[-1] if target_stack else None
        return Stall(phase.name, self.rank, idle, limit, self.step,
                     None if ident == self._target else phase.thread), target

    def _interrupt(self) -> None:
        self._pending = True
        if self._handler_installed:
            signal.pthread_kill(self._target, INTERRUPT_SIGNAL)
        else:  # not the main thread (or no SIGUSR1): raised at its next bytecode; a blocked call is not ended
            self._interrupted = True
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._target), ctypes.py_object(_Stalled))

    def _die(self, stall: Stall) -> None:
        """The stalled call never came back to Python: say so on one line and end the process."""
        line = stall.line() + C_LEVEL_NOTE
        try:
            if self.last_words is not None:
                line = self.last_words(stall, line)
        except Exception as error:  # the line matters more than the event
            line += f" (logging the event failed: {type(error).__name__}: {error})"
        # os.write: the interpreter's stderr object may be locked by the blocked thread
        os.write(2, (" ".join(line.split("\n")) + "\n").encode("utf-8", "replace"))
        os._exit(EXIT_STATUS)


def watched(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A method decorator: the method runs as phase `name` of its object's `watchdog` (when it has one)."""

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            watchdog = getattr(self, "watchdog", None)
            if watchdog is None or not watchdog.enabled:
                return method(self, *args, **kwargs)
            with watchdog.phase(name):
                return method(self, *args, **kwargs)

        return wrapper

    return decorate


# ---------------------------------------------------------------------------------------------------- the trainer
# `trainer` below is a remix_rft.trainer.Trainer (not imported: the trainer imports this module)

def mark_step(trainer: Any, step: int) -> None:
    """At the start of a training step: name it in the watchdog's line, and keep what its generation changes (the
    data position, the prompt selector, the RNG) as they are now, so that a stall before the update can still save
    the last finished step exactly. Single process without a pipeline only: with several ranks a save needs every
    rank, and a pipelined step began with the job of the step before."""
    watchdog = trainer.watchdog
    if not watchdog.enabled:
        return
    watchdog.step = step
    watchdog.rollback = None
    if trainer.dist.active or trainer.pipeline is not None:
        return
    sampler = trainer.prompts.state_dict()
    selector = trainer.selector.state_dict() if trainer.selector is not None else None
    rng = checkpoint.rng_state()
    finished, reincarnated = trainer.state.step, trainer.state.reincarnated

    def restore() -> bool:
        if (trainer.state.step, trainer.state.reincarnated) != (finished, reincarnated):
            return False  # the step reincarnated (or finished): that state is gone
        trainer.prompts.load_state_dict(sampler)
        if selector is not None:
            trainer.selector.load_state_dict(selector)
        checkpoint.restore_rng_state(rng)
        return True

    watchdog.rollback = restore


@contextlib.contextmanager
def stopping_on_stall(trainer: Any, resume_hint: Callable[[str], str]) -> Iterator[None]:
    """Around the training loop: the watchdog watches it; a stall ends it with a WatchdogTimeout whose line names the
    phase, the rank and (`resume_hint(line)`) the checkpoint to resume from, after logging the event and, where the
    state allows it, saving the last finished step (module docstring)."""
    watchdog = trainer.watchdog
    if not watchdog.enabled:
        yield
        return
    watchdog.last_words = lambda stall, line: _last_words(trainer, resume_hint, stall, line)
    with watchdog.watch("training_loop"):
        try:
            yield
        except (WatchdogTimeout, _Stalled) as error:
            stall = watchdog.stall
            if stall is None:
                raise
            raise WatchdogTimeout(_after_stall(trainer, resume_hint, stall)) from error


def _after_stall(trainer: Any, resume_hint: Callable[[str], str], stall: Stall) -> str:
    watchdog, line = trainer.watchdog, stall.line()
    if trainer.metrics is not None:
        trainer.metrics.log(stall.event(trainer.state.step, line))
    rollback, watchdog.rollback = watchdog.rollback, None
    step = trainer.state.step
    if rollback is not None and stall.thread is None and stall.phase in ROLLBACK_PHASES and step > 0 \
            and not _has_checkpoint(trainer.run_dir, step) and rollback():
        trainer.save()  # a phase of its own: watched like the rest
        line += f"; saved the last finished step {step}"
    return resume_hint(line)


def _last_words(trainer: Any, resume_hint: Callable[[str], str], stall: Stall, line: str) -> str:
    if trainer.metrics is not None:
        trainer.metrics.log(stall.event(trainer.state.step, line))
    return resume_hint(line)


def _has_checkpoint(run_dir: Any, step: int) -> bool:
    return (checkpoint.checkpoint_root(run_dir) / f"step_{step:06d}").is_dir()
