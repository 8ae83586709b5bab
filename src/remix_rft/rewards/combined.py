"""Sum of reward components; correctness, the extracted answer and the status come from the first one."""

from __future__ import annotations

from collections.abc import Sequence

from remix_rft.data.types import Example
from remix_rft.rewards.base import RewardFunction, Score


class CombinedReward:
    """`primary` (normally the math reward) plus shaping terms (format, custom); rewards add up."""

    def __init__(self, primary: RewardFunction, *others: RewardFunction):
        self.primary = primary
        self.others = list(others)

    @property
    def components(self) -> list[RewardFunction]:
        return [self.primary, *self.others]

    def score(self, responses: Sequence[str], examples: Sequence[Example]) -> list[Score]:
        combined = [
            Score(s.reward, s.correct, s.extracted, s.status) for s in self.primary.score(responses, examples)
        ]
        for component in self.others:
            for total, part in zip(combined, component.score(responses, examples), strict=True):
                total.reward += part.reward
        return combined

    def close(self) -> None:
        for component in self.components:
            close = getattr(component, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> CombinedReward:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
