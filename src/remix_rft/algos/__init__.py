"""The ReMix algorithm core: pure tensor math, no model, I/O or config.

- core: masked reductions, `agg_loss`, the Mix-PPG clipped `policy_loss`, KL penalties and KL-Convex,
  the critic's `value_loss`, entropy, off-policy health statistics.
- advantages: GRPO / Dr.GRPO group advantages, GAE, sequence-reward placement.
- is_correction: truncated / masked importance weights for the sampler-trainer mismatch (TIS / MIS) and the
  rejection masks beside them (geometric-mean sequence mask, IcePop token mask).
- registry: name -> function registries for policy losses and advantage estimators.
"""

from remix_rft.algos.advantages import gae, grpo_advantages, sequence_rewards_to_tokens
from remix_rft.algos.core import (
    AGG_MODES,
    KL_KINDS,
    LOG_RATIO_CLAMP,
    agg_loss,
    effective_sample_size,
    entropy_from_logits,
    kl_convex,
    kl_convex_weight,
    kl_penalty,
    masked_mean,
    masked_sum,
    masked_whiten,
    policy_loss,
    ratio_statistics,
    value_loss,
)
from remix_rft.algos.is_correction import (
    IS_CORRECTIONS,
    IS_LEVELS,
    MASK_DEFAULT_BOUNDS,
    MISMATCH_MASKS,
    is_weight_statistics,
    mask_bounds,
    mask_statistics,
    mismatch_is_weights,
    mismatch_mask,
    raw_is_weights,
    second_moment_mask,
)
from remix_rft.algos.registry import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    UnknownNameError,
    get_advantage_estimator,
    get_policy_loss,
    register_advantage_estimator,
    register_policy_loss,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "IS_CORRECTIONS",
    "IS_LEVELS",
    "AGG_MODES",
    "KL_KINDS",
    "LOG_RATIO_CLAMP",
    "MASK_DEFAULT_BOUNDS",
    "MISMATCH_MASKS",
    "POLICY_LOSSES",
    "UnknownNameError",
    "agg_loss",
    "effective_sample_size",
    "entropy_from_logits",
    "gae",
    "get_advantage_estimator",
    "get_policy_loss",
    "grpo_advantages",
    "is_weight_statistics",
    "kl_convex",
    "kl_convex_weight",
    "kl_penalty",
    "mask_bounds",
    "mask_statistics",
    "masked_mean",
    "masked_sum",
    "masked_whiten",
    "mismatch_is_weights",
    "mismatch_mask",
    "policy_loss",
    "ratio_statistics",
    "raw_is_weights",
    "second_moment_mask",
    "register_advantage_estimator",
    "register_policy_loss",
    "sequence_rewards_to_tokens",
    "value_loss",
]
