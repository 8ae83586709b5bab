"""Importance-sampling weights for the sampler-trainer mismatch (pure tensor math).

The rollout engine (vLLM, another kernel set, another precision) samples from mu_engine, while the trainer's
own forward pass of the same weights gives mu_trainer. Their token log-probs differ, so "on-policy" data is
slightly off-policy. Following Yao et al., "Your efficient RL framework secretly brings you off-policy RL
training" (truncated IS, TIS) and verl's rollout correction (masked IS, MIS), the policy loss is computed with
the trainer's log-probs as the behaviour policy and each token's loss is multiplied by a detached weight

    w = mu_trainer / mu_engine

  - "tis": min(w, cap)              (truncated: bounded variance, small bias)
  - "mis": w if w <= cap else 0     (masked: tokens / sequences with an outlying ratio are left out)
  - "none": 1

at the "token" level (w per token) or the "sequence" level (w = product over the response's tokens, the same
weight for every token of the sequence). Log-ratios are clamped to [-20, 20] before `exp`.
"""

from __future__ import annotations

import torch

IS_CORRECTIONS = ("none", "tis", "mis")
IS_LEVELS = ("token", "sequence")
_LOG_RATIO_CLAMP = 20.0


def mismatch_is_weights(
    trainer_logp: torch.Tensor,
    sampler_logp: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "tis",
    cap: float = 2.0,
    level: str = "token",
) -> torch.Tensor:
    """Detached per-token IS weights [B, T] correcting samples of the engine towards the trainer's policy.

    `trainer_logp` / `sampler_logp` are the log-probs of the sampled tokens under the trainer's forward pass
    and under the engine that sampled them; `mask` marks response tokens. Masked-out positions get weight 0.
    """
    if mode not in IS_CORRECTIONS:
        raise ValueError(f"unknown IS correction {mode!r}; allowed: {', '.join(IS_CORRECTIONS)}")
    if level not in IS_LEVELS:
        raise ValueError(f"unknown IS level {level!r}; allowed: {', '.join(IS_LEVELS)}")
    if cap <= 0:
        raise ValueError(f"the IS cap must be > 0, got {cap}")
    if trainer_logp.shape != sampler_logp.shape or trainer_logp.shape != mask.shape:
        raise ValueError(
            f"shape mismatch: trainer_logp {tuple(trainer_logp.shape)}, sampler_logp "
            f"{tuple(sampler_logp.shape)}, mask {tuple(mask.shape)}"
        )
    mask = mask.float()
    ratio = raw_is_weights(trainer_logp, sampler_logp, mask, level)
    if mode == "none":
        weights = torch.ones_like(ratio)
    elif mode == "tis":
        weights = ratio.clamp(max=cap)
    else:
        weights = torch.where(ratio <= cap, ratio, torch.zeros_like(ratio))
    return weights * mask


def raw_is_weights(
    trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, level: str = "token"
) -> torch.Tensor:
    """Uncapped ratios mu_trainer / mu_engine per token, or per sequence broadcast over its tokens; 0 off-mask."""
    valid = mask > 0
    # torch.where, not a product with the mask: padding may hold inf/NaN
    log_ratio = torch.where(valid, trainer_logp.detach().float() - sampler_logp.detach().float(), 0.0)
    if level == "sequence":
        log_ratio = log_ratio.sum(dim=-1, keepdim=True).expand_as(log_ratio)
    ratio = torch.exp(log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))
    return torch.where(valid, ratio, torch.zeros_like(ratio))


def is_weight_statistics(raw: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """What the correction did over the masked tokens: the raw ratio's mean / max, the applied weight's mean /
    min, and the share of tokens whose weight the cap changed (truncated or masked)."""
    valid = mask > 0
    if not bool(valid.any()):
        return {}
    raw, applied = raw.float()[valid], weights.float()[valid]
    return {
        "raw_ratio_mean": float(raw.mean()),
        "raw_ratio_max": float(raw.max()),
        "weight_mean": float(applied.mean()),
        "weight_min": float(applied.min()),
        "capped_fraction": float((applied != raw).float().mean()),
    }
