"""User rewards given by import path: `package.module:function` (or `path/to/file.py:function`).

The function is called as `function(response: str, example: Example)` and returns a float (correct when > 0), a
bool, or a full `Score`. The path may instead name an object with a `score(responses, examples)` method (a
`RewardFunction`) that scores a whole batch, returning one float, bool or `Score` per response. Either runs in the
trainer process, in its main thread, so code that uses signals (math-verify's own timeouts) works: it is the user's
own code, not model output.

What a fault does (README, Troubleshooting), so that no step trains on wrong rewards without saying so:
- an exception on one response: that response scores 0 with status "error" (counted as `verifier/error`; the first
  traceback of each exception type is logged), so a rare failure does not stop training. An exception on every
  response of a batch (a broken reward, not a rare input) raises `RewardError`.
- no result within `timeout` seconds on one response (a batch object: `timeout` x its responses): `RewardError`. The
  call is interrupted by a signal (`TIMEOUT_SIGNAL`) to the main thread; called from another thread it has no limit.
- NaN, inf, a value that is neither a number, a bool nor a `Score`, or a batch result of the wrong length:
  `RewardError`.
Every `RewardError` names the reward and the sample (its index in the batch and its example id).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import math
import signal
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from remix_rft.data.types import Example
from remix_rft.errors import ConfigError, RewardError, UserError
from remix_rft.rewards.base import Score
from remix_rft.rewards.verifier import STATUS_ERROR, STATUS_OK

logger = logging.getLogger(__name__)

DEFAULT_CUSTOM_TIMEOUT = 60.0  # seconds one response may take (reward.custom_timeout)
TIMEOUT_SIGNAL = getattr(signal, "SIGUSR2", None)  # None off POSIX: no timeout there
_PACKAGE_DIR = Path(__file__).resolve().parent.parent


# A custom reward path that names nothing usable is the user's input (reward.custom / reward.name): each error keeps
# the built-in type callers catch.
class CustomRewardImportError(UserError, ImportError):
    """The module or file of a custom reward path cannot be found or fails while it is imported."""


class CustomRewardAttributeError(UserError, AttributeError):
    """The module has no such attribute."""


class CustomRewardTypeError(UserError, TypeError):
    """The attribute is neither callable nor an object with a `score` method."""


def load_callable(path: str) -> Any:
    """Import `package.module:attribute` (dotted attributes allowed) or `file.py:attribute`: a function, or an object
    with a `score(responses, examples)` method."""
    module_name, separator, attribute = path.rpartition(":")
    if not separator or not module_name or not attribute:
        raise ConfigError(f"custom reward {path!r}: expected 'package.module:function' or 'file.py:function'")
    if module_name.endswith(".py"):
        module = _import_file(Path(module_name), path)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            if error.name is not None and (module_name + ".").startswith(error.name + "."):  # it, or its package
                raise CustomRewardImportError(f"custom reward {path!r}: cannot import module {module_name!r} "
                                              f"({error}); is it on PYTHONPATH?") from error
            raise _failed_import(path, module_name, error) from error
        except Exception as error:  # noqa: BLE001 - the user's module failed while importing: say where
            raise _failed_import(path, module_name, error) from error
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise CustomRewardAttributeError(f"custom reward {path!r}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target) and not callable(getattr(target, "score", None)):
        raise CustomRewardTypeError(f"custom reward {path!r}: {attribute!r} is a {type(target).__name__}, not a "
                                    "function or an object with a score(responses, examples) method")
    return target


def _failed_import(path: str, module_name: str, error: BaseException) -> CustomRewardImportError:
    """An error naming the file and line where importing the user's module failed."""
    if isinstance(error, SyntaxError):
        where = f"{error.filename}:{error.lineno}"
    else:
        # the deepest frame in the user's code: not Python's or an installed package's, not importlib's, not ours
        library = tuple(p for p in {sysconfig.get_path(name) for name in ("stdlib", "purelib", "platlib")} if p)
        frames = traceback.extract_tb(error.__traceback__)
        user = [f for f in frames if not f.filename.startswith((*library, "<", str(_PACKAGE_DIR)))] or frames
        where = f"{user[-1].filename}:{user[-1].lineno}" if user else module_name
    return CustomRewardImportError(f"custom reward {path!r}: importing {module_name!r} failed at {where}: "
                                   f"{type(error).__name__}: {error}")


# file path -> (modification time, module): a file is executed once per version, however many times it is named
_FILE_MODULES: dict[Path, tuple[int, Any]] = {}


def _import_file(file: Path, path: str) -> Any:
    if not file.is_file():
        raise CustomRewardImportError(f"custom reward {path!r}: file {str(file)!r} not found")
    resolved, mtime = file.resolve(), file.stat().st_mtime_ns
    cached = _FILE_MODULES.get(resolved)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    module_name = f"remix_rft_custom_reward_{file.stem}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise CustomRewardImportError(f"custom reward {path!r}: cannot load {str(file)!r} as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - a syntax or import-time error in the user's file: say where
        sys.modules.pop(module_name, None)
        raise _failed_import(path, str(file), error) from error
    _FILE_MODULES[resolved] = (mtime, module)
    return module


class _Timeout(BaseException):
    """Raised inside the user's code when its call runs past the deadline: a BaseException, so that the user's own
    `except Exception` does not swallow it."""


class _Watchdog:
    """Interrupts the main thread when a call runs past its deadline.

    One daemon thread sleeps until the deadline and then sends TIMEOUT_SIGNAL to the main thread, whose handler raises
    `_Timeout` inside the user's code (a blocking call returns early with EINTR). The handler is installed once and
    stays: a signal that arrives after the call ended, or one sent by someone else, is ignored rather than left to its
    default action (ending the process)."""

    _lock = threading.Lock()
    _instance: _Watchdog | None = None

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._deadline: float | None = None
        self._fired = False
        self._previous: Any = signal.signal(TIMEOUT_SIGNAL, self._on_signal)
        threading.Thread(target=self._run, name="remix-rft-reward-watchdog", daemon=True).start()

    @classmethod
    def get(cls) -> _Watchdog | None:
        """The process's watchdog; None where a call cannot be interrupted (not the main thread, not POSIX)."""
        if TIMEOUT_SIGNAL is None or threading.current_thread() is not threading.main_thread():
            return None
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    @contextlib.contextmanager
    def limit(self, seconds: float) -> Iterator[None]:
        with self._condition:
            self._deadline, self._fired = time.monotonic() + seconds, False
            self._condition.notify()
        try:
            yield
        finally:
            with self._condition:
                self._deadline, self._fired = None, False  # a signal still in flight is now ignored
                self._condition.notify()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._fired:
            self._fired = False
            raise _Timeout
        if callable(self._previous):
            self._previous(signum, frame)

    def _run(self) -> None:
        main = threading.main_thread().ident
        with self._condition:
            while True:
                if self._deadline is None:
                    self._condition.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._condition.wait(remaining)
                    continue
                self._deadline, self._fired = None, True
                signal.pthread_kill(main, TIMEOUT_SIGNAL)


class CustomReward:
    """A user function (one response at a time) or batch-scoring object as a `RewardFunction`; faults as in the
    module docstring."""

    def __init__(self, function: str | Callable[[str, Example], Any] | Any,
                 timeout: float | None = DEFAULT_CUSTOM_TIMEOUT):
        self.name = (
            function if isinstance(function, str) else getattr(function, "__qualname__", repr(function))
        )
        self.function = load_callable(function) if isinstance(function, str) else function
        # an object with a score method that is not itself a plain function scores whole batches
        self.batch = callable(getattr(self.function, "score", None)) and not callable(self.function)
        self.timeout = timeout
        self._logged_errors: set[str] = set()

    def score(self, responses: Sequence[str], examples: Sequence[Example]) -> list[Score]:
        if len(responses) != len(examples):
            raise ValueError(f"{len(responses)} responses but {len(examples)} examples")
        if not responses:
            return []
        if self.batch:
            return self._score_batch(responses, examples)
        scores, errors = [], []
        for index, (response, example) in enumerate(zip(responses, examples)):
            score, error = self._score_one(response, example, index)
            scores.append(score)
            if error is not None:
                errors.append((index, example, error))
        if len(errors) == len(responses):
            index, example, error = errors[0]
            raise RewardError(f"custom reward {self.name} raised on every response of the batch ({len(errors)}), "
                              f"first on {_sample(index, example)}: {type(error).__name__}: {error}") from error
        return scores

    def close(self) -> None:
        """Nothing to release; present so every reward can be closed alike."""

    def _call(self, seconds: float | None, what: str, call: Callable[[], Any]) -> Any:
        watchdog = _Watchdog.get() if seconds is not None else None
        if watchdog is None:
            return call()
        try:
            with watchdog.limit(seconds):
                return call()
        except _Timeout:
            raise RewardError(f"custom reward {self.name} gave no result within {seconds:g} s on {what} "
                              "(reward.custom_timeout); make it return faster or raise the limit") from None

    def _score_one(self, response: str, example: Example, index: int) -> tuple[Score, Exception | None]:
        try:
            value = self._call(self.timeout, _sample(index, example), lambda: self.function(response, example))
        except RewardError:
            raise
        except Exception as error:  # noqa: BLE001 - reported as status "error" and logged, see the module doc
            kind = type(error).__name__
            if kind not in self._logged_errors:
                self._logged_errors.add(kind)
                logger.warning("custom reward %s raised %s on %s; scored 0 with status 'error'", self.name, kind,
                               _sample(index, example), exc_info=True)
            return Score(0.0, False, None, STATUS_ERROR), error
        return self._as_score(value, index, example), None

    def _score_batch(self, responses: Sequence[str], examples: Sequence[Example]) -> list[Score]:
        seconds = None if self.timeout is None else self.timeout * len(responses)
        values = self._call(seconds, f"a batch of {len(responses)} responses",
                            lambda: self.function.score(list(responses), list(examples)))
        try:
            count = len(values)
        except TypeError:
            raise RewardError(f"custom reward {self.name} returned {type(values).__name__} for a batch; expected a "
                              f"list of {len(responses)} scores") from None
        if count != len(responses):
            raise RewardError(f"custom reward {self.name} returned {count} scores for {len(responses)} responses "
                              f"(first sample: {_sample(0, examples[0])}); it must return one per response")
        return [self._as_score(value, index, example) for index, (value, example) in enumerate(zip(values, examples))]

    def _as_score(self, value: Any, index: int, example: Example) -> Score:
        reward = value.reward if isinstance(value, Score) else value
        if not isinstance(reward, (int, float)) or not math.isfinite(reward):  # bool is an int
            raise RewardError(f"custom reward {self.name} returned {value!r} ({type(value).__name__}) on "
                              f"{_sample(index, example)}; expected a finite float, a bool or a Score")
        if isinstance(value, Score):
            return value
        return Score(float(value), bool(value > 0), None, STATUS_OK)


def _sample(index: int, example: Example) -> str:
    return f"sample {index} of the batch (example {example.id or '<no id>'!r})"
