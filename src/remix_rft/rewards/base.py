"""The reward interface: responses + their examples in, one `Score` per response out."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from remix_rft.data.types import Example
from remix_rft.errors import RewardError


@dataclass
class Score:
    reward: float
    correct: bool  # the answer matched the ground truth (accuracy is computed from this, not the reward)
    extracted: str | None = None  # the answer the grader extracted, for auditing
    status: str = "ok"  # "ok" | "no_answer" | "timeout" | "error"


@runtime_checkable
class RewardFunction(Protocol):
    def score(self, responses: Sequence[str], examples: Sequence[Example]) -> list[Score]: ...


def check_scores(reward: object, scores: Sequence[Score], examples: Sequence[Example]) -> list[Score]:
    """`scores` as a list when `reward` gave one `Score` with a finite reward per example; else a `RewardError` naming
    the reward and the first bad sample, so a step never trains on a shifted or NaN reward."""
    name = getattr(reward, "name", None) or type(reward).__name__
    scores = list(scores)
    if len(scores) != len(examples):
        raise RewardError(f"reward {name} returned {len(scores)} scores for {len(examples)} responses; it must "
                          "return one per response")
    for index, (score, example) in enumerate(zip(scores, examples)):
        value = getattr(score, "reward", None)
        if not isinstance(score, Score) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RewardError(f"reward {name} returned {score!r} for sample {index} of the batch (example "
                              f"{example.id or '<no id>'!r}); expected a Score with a finite reward")
    return scores
