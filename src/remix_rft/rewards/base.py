"""The reward interface: responses + their examples in, one `Score` per response out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from remix_rft.data.types import Example


@dataclass
class Score:
    reward: float
    correct: bool  # the answer matched the ground truth (accuracy is computed from this, not the reward)
    extracted: str | None = None  # the answer the grader extracted, for auditing
    status: str = "ok"  # "ok" | "no_answer" | "timeout" | "error"


@runtime_checkable
class RewardFunction(Protocol):
    def score(self, responses: Sequence[str], examples: Sequence[Example]) -> list[Score]: ...
