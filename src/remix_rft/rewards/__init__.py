"""Rewards: the paper's math-correctness reward (math-verify in killable worker processes), a format bonus,
user functions by import path, and their sum."""

from remix_rft.rewards.answer_policy import (
    STATUS_HEDGED,
    STATUS_NOT_LITERAL,
    FinalAnswer,
    Judgement,
    final_answer,
    judge,
    parse_literal,
)
from remix_rft.rewards.base import RewardFunction, Score, check_scores
from remix_rft.rewards.combined import CombinedReward
from remix_rft.rewards.custom import CustomReward, load_callable
from remix_rft.rewards.factory import (
    GRADING_PROBLEMS,
    REWARD_NAMES,
    build_reward,
    reward_from_config,
    summarise_scores,
)
from remix_rft.rewards.format_reward import FormatReward
from remix_rft.rewards.math_reward import (
    DEFAULT_MAX_RESPONSE_CHARS,
    GRADERS,
    STATUS_RESTATED,
    MathReward,
    answer_region,
    gold_answers,
    restates_problem,
)
from remix_rft.rewards.verifier import STATUSES, GradeResult, VerifierError, VerifierPool

__all__ = [
    "DEFAULT_MAX_RESPONSE_CHARS",
    "GRADERS",
    "STATUS_HEDGED",
    "STATUS_NOT_LITERAL",
    "FinalAnswer",
    "Judgement",
    "final_answer",
    "judge",
    "parse_literal",
    "GRADING_PROBLEMS",
    "REWARD_NAMES",
    "STATUSES",
    "STATUS_RESTATED",
    "CombinedReward",
    "CustomReward",
    "FormatReward",
    "GradeResult",
    "MathReward",
    "restates_problem",
    "RewardFunction",
    "Score",
    "VerifierError",
    "VerifierPool",
    "answer_region",
    "build_reward",
    "check_scores",
    "reward_from_config",
    "gold_answers",
    "load_callable",
    "summarise_scores",
]
