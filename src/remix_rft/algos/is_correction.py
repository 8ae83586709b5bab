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

Beside the weights, a rejection mask (verl's rollout_rs, slime's rs_*: kept apart from the IS weighting and
combinable with it) leaves outlying tokens or sequences out of the loss, keep = 1 or 0, with bounds [low, high]:

  - "geo_mean": per response, g = exp(mean over its tokens of (log mu_trainer - log mu_engine)), the geometric
    mean of the token ratios; the whole sequence is kept iff low <= g <= high. verl's "geometric" rejection
    sampling (later versions: seq_mean_k1, the same test on the negated mean log-ratio); default [1/1.001,
    1.001], verl's preset (decoupled_geo_rs): a mean per-token deviation of 0.1%, blind to response length
    where the product of the "sequence" level grows with it.
  - "icepop": per token, kept iff low <= w <= high, w = mu_trainer / mu_engine (IcePop, Ring-1T: "Small Leak Can
    Sink a Great Ship"; its mask M(w) = w inside [alpha, beta], 0 outside, is this mask times the IS weight w, i.e.
    with is_correction="mis" and cap = beta). Default [0.5, 5], IcePop's alpha and beta (also INTELLECT-3's).

Bounds are compared in log space, so a -inf or NaN log-ratio drops its token (icepop) or sequence (geo_mean).
"""

from __future__ import annotations

import math

import torch

IS_CORRECTIONS = ("none", "tis", "mis")
IS_LEVELS = ("token", "sequence")
MISMATCH_MASKS = ("none", "geo_mean", "icepop")
# (low, high) of each mask when the config leaves them null; see the module doc for where they come from
MASK_DEFAULT_BOUNDS = {"geo_mean": (1 / 1.001, 1.001), "icepop": (0.5, 5.0)}
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


def mask_bounds(kind: str, low: float | None = None, high: float | None = None) -> tuple[float, float]:
    """The [low, high] band of mask `kind`: the given bounds, each null one from MASK_DEFAULT_BOUNDS."""
    if kind not in MASK_DEFAULT_BOUNDS:
        raise ValueError(f"mask {kind!r} has no bounds; masks with bounds: {', '.join(MASK_DEFAULT_BOUNDS)}")
    default_low, default_high = MASK_DEFAULT_BOUNDS[kind]
    low = default_low if low is None else float(low)
    high = default_high if high is None else float(high)
    if not 0 < low <= 1 <= high:
        # a band without 1 would drop tokens on which the two engines agree exactly
        raise ValueError(f"{kind} bounds must satisfy 0 < low <= 1 <= high, got low={low}, high={high}")
    return low, high


def mismatch_mask(
    trainer_logp: torch.Tensor,
    sampler_logp: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "geo_mean",
    low: float | None = None,
    high: float | None = None,
) -> torch.Tensor:
    """Detached keep-mask [B, T] (1.0 kept, 0.0 dropped, 0.0 off `mask`) of rejection mask `kind` (module doc).

    `low` / `high` bound the geometric-mean ratio (geo_mean) or the token ratio (icepop); None: the mask's default.
    """
    if kind not in MISMATCH_MASKS:
        raise ValueError(f"unknown mismatch mask {kind!r}; allowed: {', '.join(MISMATCH_MASKS)}")
    if trainer_logp.shape != sampler_logp.shape or trainer_logp.shape != mask.shape:
        raise ValueError(
            f"shape mismatch: trainer_logp {tuple(trainer_logp.shape)}, sampler_logp "
            f"{tuple(sampler_logp.shape)}, mask {tuple(mask.shape)}"
        )
    valid = mask > 0
    if kind == "none":
        return valid.float()
    low, high = mask_bounds(kind, low, high)
    # torch.where, not a product with the mask: padding may hold inf/NaN
    log_ratio = torch.where(valid, trainer_logp.detach().float() - sampler_logp.detach().float(), 0.0)
    if kind == "geo_mean":
        count = valid.sum(dim=-1, keepdim=True).clamp(min=1)
        log_ratio = (log_ratio.sum(dim=-1, keepdim=True) / count).expand_as(log_ratio)
    keep = (log_ratio >= math.log(low)) & (log_ratio <= math.log(high)) & valid
    return keep.float()


def mask_statistics(keep: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """What a mask removed: the share of response tokens it dropped and the share of responses it dropped at
    least one token of (verl's seq_masked_fraction; for geo_mean, the responses dropped whole)."""
    valid = mask > 0
    if not bool(valid.any()):
        return {}
    dropped = valid & (keep <= 0)
    responses = valid.any(dim=-1)
    return {
        "token_share": float(dropped.sum() / valid.sum()),
        "sequence_share": float(dropped.any(dim=-1)[responses].float().mean()),
    }


def second_moment_mask(log_ratio: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """M2PO's second-moment trust mask (Zheng et al. 2025, "Prosperity before Collapse"): keep [B, T] in {0, 1}.

    M2 = mean over the masked tokens of (log r)^2. While M2 > `threshold`, the token with the largest (log r)^2 is
    left out and M2 is taken again over the tokens kept: the fewest outliers are removed that bring the second
    moment of the kept tokens to at most `threshold` (M2PO's default 0.04). Positions outside `mask` stay 0; a
    non-finite log-ratio is always left out."""
    if threshold <= 0:
        raise ValueError(f"the second-moment threshold must be > 0, got {threshold}")
    valid = mask > 0
    squared = torch.where(valid, log_ratio.float() ** 2, torch.zeros((), dtype=torch.float32))
    squared = torch.where(torch.isfinite(squared), squared, torch.full((), float("inf")))
    values, order = torch.sort(squared[valid], descending=True)
    count = values.numel()
    keep = valid.clone()
    if count == 0:
        return keep.to(mask.dtype)
    # M2 after leaving out the k largest, k = 0..count-1 (inf where an infinite value is still in)
    finite = torch.where(torch.isfinite(values), values, torch.zeros(()))
    tail = finite.flip(0).cumsum(0).flip(0)  # tail[k] = sum of values[k:]
    infinite_left = (~torch.isfinite(values)).flip(0).cumsum(0).flip(0) > 0
    m2 = torch.where(infinite_left, torch.full((), float("inf")), tail / torch.arange(count, 0, -1))
    ok = (m2 <= threshold).nonzero()
    drop = int(ok[0]) if ok.numel() else count - 1  # at least one token stays: the smallest
    kept_flat = torch.ones(count, dtype=torch.bool)
    kept_flat[order[:drop]] = False
    keep[valid] = kept_flat
    return keep.to(mask.dtype)
