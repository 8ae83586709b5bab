"""A pool of killable grading processes: math-verify runs there, never in the trainer process.

Why processes: math-verify's timeouts use SIGALRM, which fails outside the main thread and cannot interrupt
a long C-level operation (a big-integer power like 9^{9^{9^9}} runs inside one C call). A worker process can
always be killed. Each job gets `timeout` seconds inside the worker (an interval timer there) and the parent
kills the worker `kill_grace` seconds later if it has not answered, restarts it and records "timeout".

Workers are plain subprocesses of `python -m remix_rft.rewards.verify_worker` speaking JSON lines over
pipes: no fork of the (torch-loaded, multi-threaded) trainer and, unlike multiprocessing's spawn, no re-import
of the user's `__main__`. They start lazily on the first batch, once; `close()`, the context manager and a
finalizer at interpreter exit stop them, and every stopped process is waited for (no zombies).
Verdicts are deterministic: workers run with PYTHONHASHSEED=0 whatever the trainer's hash seed, and each job starts
from the same sympy state (verify_worker.py), so a verdict depends neither on the seed nor on which worker, fresh or
long-running, graded the answer.
Needs a POSIX system (select on pipes).
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# The Score.status values (rewards/base.py).
STATUS_OK = "ok"
STATUS_NO_ANSWER = "no_answer"
STATUS_TIMEOUT = "timeout"
STATUS_ERROR = "error"

DEFAULT_TIMEOUT = 5.0
DEFAULT_MEMORY_LIMIT_MB = 4096
START_TIMEOUT = 120.0  # seconds for a worker to import math-verify (slow on a loaded machine)
MAX_ATTEMPTS = 2  # a job whose worker died unexpectedly (not on a timeout) is retried once on a fresh worker
MAX_START_FAILURES = 3
STATUSES = (STATUS_OK, STATUS_NO_ANSWER, STATUS_TIMEOUT, STATUS_ERROR)
WORKER_HASH_SEED = "0"  # set iteration inside sympy follows str hashes: one fixed seed for every worker
# A job: (acceptable gold answers, prediction) or (golds, prediction, relations), where `relations` lets an interval
# equal the inequality describing it (the strict grader's choice; the paper protocol's math-verify call has it off).
Job = tuple[Sequence[str], str] | tuple[Sequence[str], str, bool]


@dataclass
class GradeResult:
    status: str  # one of STATUSES
    correct: bool
    extracted: str | None = None
    detail: str = ""


class VerifierError(RuntimeError):
    """The grading workers cannot run at all (e.g. math-verify fails to import)."""


class _Worker:
    """One worker process and the parent's view of it: ready or starting, idle or busy on a job."""

    def __init__(self, command: list[str], env: dict[str, str], start_timeout: float):
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
            start_new_session=True,  # Ctrl-C in a terminal reaches the trainer only; it stops the workers
        )
        self.fd = self.process.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buffer = bytearray()
        self.ready = False
        self.start_deadline = time.monotonic() + start_timeout
        self.job: tuple[int, int] | None = None  # (job index, attempt) while busy
        self.deadline = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, index: int, attempt: int, job: Job, deadline: float) -> bool:
        """Hand a job to this (idle, ready) worker; False if its pipe is broken (it died)."""
        golds, prediction = job[0], job[1]
        relations = bool(job[2]) if len(job) > 2 else False
        line = json.dumps({"id": index, "gold": list(golds), "pred": prediction, "relations": relations}) + "\n"
        try:
            self.process.stdin.write(line.encode())
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        self.job = (index, attempt)
        self.deadline = deadline
        return True

    def read_messages(self) -> tuple[list[dict], bool]:
        """The complete messages available now, and whether the worker's output has closed (it exited)."""
        closed = False
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                closed = True
                break
            self.buffer.extend(chunk)
        messages = []
        while b"\n" in self.buffer:
            line, _, rest = bytes(self.buffer).partition(b"\n")
            self.buffer = bytearray(rest)
            if line.strip():
                messages.append(json.loads(line))
        return messages, closed

    def stop(self, kill: bool = False) -> None:
        """Stop the process and reap it. Politely (close its input) unless `kill`."""
        try:
            if kill:
                self.process.kill()
            else:
                self.process.stdin.close()
            self.process.wait(timeout=0 if kill else 2.0)
        except (subprocess.TimeoutExpired, OSError, ValueError):
            self.process.kill()
        finally:
            try:
                self.process.wait(timeout=10.0)
            except subprocess.TimeoutExpired:  # pragma: no cover - a SIGKILLed process always ends
                logger.error("grading worker %d did not exit after SIGKILL", self.pid)
            for stream in (self.process.stdin, self.process.stdout):
                try:
                    stream.close()
                except (OSError, ValueError):
                    pass


def _stop_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.stop(kill=worker.job is not None)
    workers.clear()


class VerifierPool:
    """`num_workers` persistent grading processes; `grade_batch` spreads a batch over all of them.

    Thread-safe (batches from several threads are graded one after another). POSIX only.
    """

    def __init__(
        self,
        num_workers: int = 1,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        kill_grace: float | None = None,
        memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB,
        start_timeout: float = START_TIMEOUT,
    ):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.num_workers = num_workers
        self.timeout = float(timeout)
        # Time for the worker's own alarm to fire and its answer to arrive before the parent kills it.
        self.kill_grace = float(kill_grace) if kill_grace is not None else max(0.5, 0.2 * self.timeout)
        self.memory_limit_mb = memory_limit_mb
        self.start_timeout = start_timeout
        self.restarts = 0  # workers replaced after a timeout kill or a crash
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self._start_failures = 0
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the workers now instead of on the first batch (they import math-verify: ~1 s each)."""
        with self._lock:
            self._start_missing()

    def close(self) -> None:
        """Stop and reap all workers. The pool can not be used afterwards."""
        with self._lock:
            self._closed = True
            self._finalizer()

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def worker_pids(self) -> list[int]:
        return [worker.pid for worker in self._workers]

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "remix_rft.rewards.verify_worker",
            "--timeout",
            repr(self.timeout),
            "--memory-limit-mb",
            str(self.memory_limit_mb),
        ]

    def _env(self) -> dict[str, str]:
        # The worker must import this very package, installed or not (e.g. run from a source tree).
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONHASHSEED"] = WORKER_HASH_SEED
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        return env

    def _start_missing(self) -> None:
        if self._closed:
            raise VerifierError("the verifier pool is closed")
        while len(self._workers) < self.num_workers:
            self._workers.append(_Worker(self._command(), self._env(), self.start_timeout))

    def _replace(self, worker: _Worker, *, kill: bool) -> None:
        worker.stop(kill=kill)
        self._workers.remove(worker)
        self.restarts += 1
        self._start_missing()

    # ------------------------------------------------------------------------------------------ grading

    def grade(self, golds: Sequence[str], prediction: str) -> GradeResult:
        return self.grade_batch([(golds, prediction)])[0]

    def grade_batch(self, jobs: Sequence[Job]) -> list[GradeResult]:
        """Grade (acceptable gold answers, prediction text[, relations]) jobs; one result each, in order.

        Never raises for a bad answer: timeouts, crashes and parse failures come back as statuses.
        Raises `VerifierError` only if workers repeatedly fail to start.
        """
        results: list[GradeResult | None] = [None] * len(jobs)
        if not jobs:
            return []
        with self._lock:
            self._start_missing()
            pending: deque[tuple[int, int]] = deque((index, 0) for index in range(len(jobs)))
            try:
                while pending or any(worker.job is not None for worker in self._workers):
                    self._dispatch(pending, jobs)
                    self._wait_and_collect(pending, results)
                    self._enforce_deadlines(results)
            except BaseException:
                # Interrupted (Ctrl-C, VerifierError): a busy worker would answer into the next batch; end it.
                for worker in [w for w in self._workers if w.job is not None]:
                    worker.stop(kill=True)
                    self._workers.remove(worker)
                raise
        return [result for result in results if result is not None]

    def _dispatch(self, pending: deque[tuple[int, int]], jobs: Sequence[Job]) -> None:
        for worker in list(self._workers):
            if not pending:
                return
            if worker.ready and worker.job is None:
                index, attempt = pending.popleft()
                if not worker.send(index, attempt, jobs[index], time.monotonic() + self.timeout + self.kill_grace):
                    pending.appendleft((index, attempt))  # not sent: the worker is dead, the job is intact
                    logger.warning(
                        "grading worker %d died while idle (exit code %s); restarting it",
                        worker.pid,
                        worker.process.poll(),
                    )
                    self._replace(worker, kill=True)

    def _wait_and_collect(self, pending: deque[tuple[int, int]], results: list[GradeResult | None]) -> None:
        now = time.monotonic()
        deadlines = [
            worker.deadline if worker.job is not None else worker.start_deadline
            for worker in self._workers
            if worker.job is not None or not worker.ready
        ]
        wait = max(0.0, min(deadlines) - now) if deadlines else 0.0
        # selectors (epoll/kqueue), not select.select: a big trainer process may hold fds above FD_SETSIZE.
        with selectors.DefaultSelector() as selector:
            for worker in self._workers:
                selector.register(worker.fd, selectors.EVENT_READ, worker)
            readable = [key.data for key, _ in selector.select(wait)]
        for worker in readable:
            messages, closed = worker.read_messages()
            for message in messages:
                if "ready" in message:
                    worker.ready = True
                    self._start_failures = 0
                elif worker.job is not None and message.get("id") == worker.job[0]:
                    results[worker.job[0]] = GradeResult(
                        status=message["status"],
                        correct=bool(message["correct"]),
                        extracted=message.get("extracted"),
                        detail=message.get("detail", ""),
                    )
                    worker.job = None
            if closed:
                self._on_worker_exit(worker, pending, results)

    def _on_worker_exit(
        self, worker: _Worker, pending: deque[tuple[int, int]], results: list[GradeResult | None]
    ) -> None:
        try:
            exit_code: int | None = worker.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            exit_code = None  # closed its output but still running: it is killed below
        if not worker.ready:
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                self._replace_failed_start(worker)
                raise VerifierError(
                    f"grading workers failed to start {self._start_failures} times "
                    f"(last exit code {exit_code}); "
                    "their error output is above"
                )
        elif worker.job is not None:
            index, attempt = worker.job
            if attempt + 1 < MAX_ATTEMPTS:
                pending.appendleft((index, attempt + 1))
            else:
                results[index] = GradeResult(
                    STATUS_ERROR, False, None, f"grading worker died (exit code {exit_code}) on this answer"
                )
            worker.job = None
        logger.warning(
            "grading worker %d exited unexpectedly (exit code %s); restarting it", worker.pid, exit_code
        )
        self._replace(worker, kill=True)

    def _replace_failed_start(self, worker: _Worker) -> None:
        worker.stop(kill=True)
        self._workers.remove(worker)

    def _enforce_deadlines(self, results: list[GradeResult | None]) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.job is not None and now > worker.deadline:
                index, _ = worker.job
                results[index] = GradeResult(
                    STATUS_TIMEOUT,
                    False,
                    None,
                    f"grading did not finish within {self.timeout:g}s; worker killed",
                )
                self._replace(worker, kill=True)
            elif not worker.ready and now > worker.start_deadline:
                self._replace_failed_start(worker)
                raise VerifierError(f"a grading worker did not start within {self.start_timeout:g}s")
