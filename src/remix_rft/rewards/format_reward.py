"""Format reward: a bonus for stating the final answer in `\\boxed{...}`, as the instruction asks."""

from __future__ import annotations

from collections.abc import Sequence

from remix_rft.data.loaders import last_boxed_content
from remix_rft.data.types import Example
from remix_rft.rewards.answer_policy import THINK_END, answer_region
from remix_rft.rewards.base import Score
from remix_rft.rewards.verifier import STATUS_NO_ANSWER, STATUS_OK


class FormatReward:
    """`weight` for a response with a complete, non-empty `\\boxed{...}`, else 0. It never decides `correct`.

    The box is looked for after the last `</think>` when there is one; with `require_think` a response
    without `</think>` (thinking never finished) gets nothing.
    """

    def __init__(self, weight: float = 1.0, *, require_think: bool = False):
        self.weight = float(weight)
        self.require_think = require_think

    def score(self, responses: Sequence[str], examples: Sequence[Example]) -> list[Score]:
        if len(responses) != len(examples):
            raise ValueError(f"{len(responses)} responses but {len(examples)} examples")
        return [self._score_one(response) for response in responses]

    def _score_one(self, response: str) -> Score:
        if self.require_think and THINK_END not in response:
            return Score(0.0, False, None, STATUS_NO_ANSWER)
        boxed = last_boxed_content(answer_region(response))
        if boxed is None or not boxed.strip():
            return Score(0.0, False, None, STATUS_NO_ANSWER)
        return Score(self.weight, False, boxed, STATUS_OK)

    def close(self) -> None:
        """Nothing to release; present so every reward can be closed alike."""
