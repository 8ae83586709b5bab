"""Building the reward from config names, and the verifier metrics the trainer logs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from remix_rft.errors import ConfigError
from remix_rft.rewards.answer_policy import STATUS_HEDGED, STATUS_NOT_LITERAL, STATUS_RESTATED
from remix_rft.rewards.base import RewardFunction, Score
from remix_rft.rewards.combined import CombinedReward
from remix_rft.rewards.custom import DEFAULT_CUSTOM_TIMEOUT, CustomReward
from remix_rft.rewards.format_reward import FormatReward
from remix_rft.rewards.math_reward import MathReward
from remix_rft.rewards.verifier import DEFAULT_TIMEOUT, STATUS_ERROR, STATUS_NO_ANSWER, STATUS_TIMEOUT

REWARD_NAMES = ("math", "custom")


def build_reward(
    name: str = "math",
    *,
    format_weight: float = 0.0,
    timeout: float = DEFAULT_TIMEOUT,
    correct_reward: float = 1.0,
    incorrect_reward: float = 0.0,
    require_boxed: bool = False,
    num_workers: int = 1,
    custom: str | None = None,
    grader: str = "auto",
    custom_timeout: float | None = DEFAULT_CUSTOM_TIMEOUT,
) -> RewardFunction:
    """The training / evaluation reward.

    name "math": the correctness reward under `grader` ("strict", "paper", or "auto": the paper's protocol on
    the paper's five benchmarks, strict elsewhere; see `MathReward`); with `custom` the custom function's value is added to it.
    name "custom" (or a `package.module:function` path as the name): the custom function is the primary
    reward and decides correctness. `format_weight` > 0 adds that much for a `\\boxed{}` answer. `custom_timeout`:
    seconds the custom function may take on one response (None: no limit), see `CustomReward`.
    """
    if format_weight < 0:
        raise ValueError(f"format_weight must be >= 0, got {format_weight}")
    extras: list[RewardFunction] = []
    if name == "math":
        primary: RewardFunction = MathReward(
            timeout=timeout,
            correct_reward=correct_reward,
            incorrect_reward=incorrect_reward,
            require_boxed=require_boxed,
            num_workers=num_workers,
            grader=grader,
        )
        if custom:
            extras.append(CustomReward(custom, timeout=custom_timeout))
    elif name == "custom" or ":" in name:
        path = custom if name == "custom" else name
        if not path:
            raise ConfigError("reward 'custom' needs custom='package.module:function' (reward.custom)")
        primary = CustomReward(path, timeout=custom_timeout)
    else:
        raise ConfigError(
            f"unknown reward {name!r}: choose one of {', '.join(REWARD_NAMES)} "
            "or give 'package.module:function'"
        )
    if format_weight > 0:
        extras.append(FormatReward(format_weight))
    return CombinedReward(primary, *extras) if extras else primary


def reward_from_config(reward: Any) -> RewardFunction:
    """The training reward of a run's `reward:` config section (a `config.RewardConfig`)."""
    return build_reward(reward.name, format_weight=reward.format_weight, timeout=reward.timeout,
                        correct_reward=reward.correct_reward, incorrect_reward=reward.incorrect_reward,
                        require_boxed=reward.require_boxed, num_workers=reward.num_workers, custom=reward.custom,
                        grader=reward.grader, custom_timeout=reward.custom_timeout)


# the statuses counted per batch (logged as `verifier/<status>`): responses that got no reward for a reason other than
# a wrong answer
GRADING_PROBLEMS = (
    STATUS_NO_ANSWER, STATUS_TIMEOUT, STATUS_ERROR, STATUS_RESTATED, STATUS_NOT_LITERAL, STATUS_HEDGED,
)


def summarise_scores(scores: Sequence[Score]) -> dict[str, float]:
    """Reward mean, accuracy and the count of each grading problem (`GRADING_PROBLEMS`) of a batch."""
    count = len(scores)
    statuses = [score.status for score in scores]
    return {
        "count": float(count),
        "reward_mean": sum(score.reward for score in scores) / count if count else 0.0,
        "accuracy": sum(bool(score.correct) for score in scores) / count if count else 0.0,
        **{status: float(statuses.count(status)) for status in GRADING_PROBLEMS},
    }
