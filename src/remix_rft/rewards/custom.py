"""User rewards given by import path: `package.module:function` (or `path/to/file.py:function`).

The function is called as `function(response: str, example: Example)` and returns a float (correct when
> 0), a bool, or a full `Score`. It runs in the trainer process: it is the user's own code, not model output.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from remix_rft.data.types import Example
from remix_rft.errors import ConfigError, UserError
from remix_rft.rewards.base import Score
from remix_rft.rewards.verifier import STATUS_ERROR, STATUS_OK

logger = logging.getLogger(__name__)


# A custom reward path that names nothing usable is the user's input (reward.custom / reward.name): each error keeps
# the built-in type callers catch.
class CustomRewardImportError(UserError, ImportError):
    """The module or file of a custom reward path cannot be found."""


class CustomRewardAttributeError(UserError, AttributeError):
    """The module has no such attribute."""


class CustomRewardTypeError(UserError, TypeError):
    """The attribute is not callable."""


def load_callable(path: str) -> Callable[..., Any]:
    """Import `package.module:attribute` (dotted attributes allowed) or `file.py:attribute`."""
    module_name, separator, attribute = path.rpartition(":")
    if not separator or not module_name or not attribute:
        raise ConfigError(f"custom reward {path!r}: expected 'package.module:function' or 'file.py:function'")
    if module_name.endswith(".py"):
        module = _import_file(Path(module_name), path)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise CustomRewardImportError(
                f"custom reward {path!r}: cannot import module {module_name!r} ({error}); is it on PYTHONPATH?"
            ) from error
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise CustomRewardAttributeError(f"custom reward {path!r}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise CustomRewardTypeError(f"custom reward {path!r}: {attribute!r} is a {type(target).__name__}, not a function")
    return target


def _import_file(file: Path, path: str) -> Any:
    if not file.is_file():
        raise CustomRewardImportError(f"custom reward {path!r}: file {str(file)!r} not found")
    module_name = f"remix_rft_custom_reward_{file.stem}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise CustomRewardImportError(f"custom reward {path!r}: cannot load {str(file)!r} as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


class CustomReward:
    """A per-response user function as a `RewardFunction`.

    An exception on one response gives that response reward 0 and status "error" (counted in the verifier
    metrics; the first traceback of each exception type is logged), so a rare failure does not stop training.
    A wrong return type is a bug in the function and raises.
    """

    def __init__(self, function: str | Callable[[str, Example], Any]):
        self.name = (
            function if isinstance(function, str) else getattr(function, "__qualname__", repr(function))
        )
        self.function = load_callable(function) if isinstance(function, str) else function
        self._logged_errors: set[str] = set()

    def score(self, responses: Sequence[str], examples: Sequence[Example]) -> list[Score]:
        if len(responses) != len(examples):
            raise ValueError(f"{len(responses)} responses but {len(examples)} examples")
        return [self._score_one(response, example) for response, example in zip(responses, examples)]

    def close(self) -> None:
        """Nothing to release; present so every reward can be closed alike."""

    def _score_one(self, response: str, example: Example) -> Score:
        try:
            value = self.function(response, example)
        except Exception as error:  # noqa: BLE001 - reported as status "error" and logged, see class doc
            kind = type(error).__name__
            if kind not in self._logged_errors:
                self._logged_errors.add(kind)
                logger.warning(
                    "custom reward %s raised %s on example %r; scored 0 with status 'error'",
                    self.name,
                    kind,
                    example.id,
                    exc_info=True,
                )
            return Score(0.0, False, None, STATUS_ERROR)
        if isinstance(value, Score):
            return value
        if isinstance(value, bool):
            return Score(float(value), value, None, STATUS_OK)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return Score(float(value), value > 0, None, STATUS_OK)
        raise TypeError(
            f"custom reward {self.name} returned {value!r} ({type(value).__name__}); "
            "expected a finite float, a bool or a Score"
        )
