"""Token-level loss math for ReMix: masked reductions, the Mix-PPG clipped loss, KL penalties, critic loss.

Every function is pure torch: tensors are [batch, tokens] and `mask` is a 0/1 float tensor marking response
tokens. Positions where mask == 0 never influence a result (they may even hold inf/NaN padding), and a fully
masked row or batch contributes 0 instead of NaN.

Numerical safety: log-ratios are clamped to [-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP] (= [-20, 20]) before `exp`, so
an importance ratio lies in [2e-9, 4.9e8] and never overflows to inf. A clamped log-ratio has zero gradient,
which only happens for tokens whose ratio is already astronomically far outside any clip range.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

LOG_RATIO_CLAMP = 20.0
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_KINDS = ("k1", "k2", "k3", "low_var_kl", "kl", "mse")


def _check_same_shape(**tensors: torch.Tensor | None) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shape mismatch: {shapes}")


def _masked_values(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # torch.where rather than x * mask: padding may hold inf/NaN, and inf * 0 is NaN.
    return torch.where(mask > 0, x * mask, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of x over the positions where mask is set (over all elements when dim is None)."""
    values = _masked_values(x, mask)
    return values.sum() if dim is None else values.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over masked positions; 0 where there is no masked position (never NaN)."""
    mask = mask.to(x.dtype) if x.is_floating_point() else mask.float()
    total = masked_sum(x, mask, dim)
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return total / count.clamp(min=1.0)


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """(x - mean) / std over masked positions (unbiased variance); masked-out positions come back as 0.

    shift_mean=False only rescales (adds the mean back), as in verl/TRL. A single masked element or a fully
    masked tensor has variance 0 and whitens to 0 (or to the mean when shift_mean is False), not NaN.
    `reduce_sum` sums a small tensor of statistics over data-parallel ranks, so that every rank whitens with the
    global batch's mean and variance (as one process holding the whole batch would); None: this tensor alone.
    """
    reduce_sum = reduce_sum or (lambda t: t)
    mask = mask.to(x.dtype)
    # two passes (mean, then squared deviations from it): as exact as the one-process formula, unlike E[x^2]-E[x]^2
    total, count = reduce_sum(torch.stack([masked_sum(x, mask), mask.sum()]).double()).unbind()
    mean = (total / count.clamp(min=1.0)).to(x.dtype)
    centred = _masked_values(x - mean, mask)
    # Bessel's correction like torch.var; with one element the sum of squares is 0 anyway.
    squares = reduce_sum((centred.double() ** 2).sum()[None])[0]
    var = (squares / (count - 1).clamp(min=1.0)).to(x.dtype)
    whitened = centred * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return _masked_values(whitened, mask)


def agg_loss(
    token_loss: torch.Tensor, mask: torch.Tensor, agg: str = "token-mean", norm_len: float | None = None
) -> torch.Tensor:
    """Reduce a [batch, tokens] loss to a scalar; the single aggregation used by every token loss.

    - "token-mean": sum over masked tokens / number of masked tokens (long responses weigh more).
    - "seq-mean-token-mean": mean over each sequence's masked tokens, then mean over the sequences that have
      at least one masked token (every response weighs the same).
    - "seq-mean-token-sum-norm" (Dr.GRPO): each sequence's masked-token sum / the constant `norm_len`, then
      mean over all rows. `norm_len` defaults to the token dimension (the padded length); pass the generation
      budget (max response length) to match Dr.GRPO exactly.
    """
    _check_same_shape(token_loss=token_loss, mask=mask)
    if token_loss.dim() != 2:
        raise ValueError(f"agg_loss expects [batch, tokens] tensors, got shape {tuple(token_loss.shape)}")
    mask = mask.to(token_loss.dtype)
    if agg == "token-mean":
        return masked_mean(token_loss, mask)
    if agg == "seq-mean-token-mean":
        seq_loss = masked_mean(token_loss, mask, dim=-1)
        non_empty = (mask.sum(dim=-1) > 0).to(token_loss.dtype)
        return masked_mean(seq_loss, non_empty)
    if agg == "seq-mean-token-sum-norm":
        if norm_len is None:
            norm_len = token_loss.shape[-1]
        if norm_len <= 0:
            raise ValueError(f"norm_len must be > 0, got {norm_len}")
        seq_sum = masked_sum(token_loss, mask, dim=-1)
        if seq_sum.numel() == 0:
            return seq_sum.sum()
        return (seq_sum / norm_len).mean()
    raise ValueError(f"unknown agg {agg!r}; allowed: {', '.join(AGG_MODES)}")


def _masked_max(x: torch.Tensor, mask: torch.Tensor) -> float:
    selected = x[mask > 0]
    return selected.max().item() if selected.numel() else 0.0


def _clamped_log_ratio(logp: torch.Tensor, other_logp: torch.Tensor) -> torch.Tensor:
    return (logp - other_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def policy_loss(
    logp: torch.Tensor,
    behaviour_logp: torch.Tensor,
    proximal_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    agg: str = "token-mean",
    norm_len: float | None = None,
    clip_eps_high: float | None = None,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mix-PPG (GePPO) clipped surrogate loss (METHOD.md section 1).

    Per token, for a sample drawn from the behaviour policy mu:
        ratio  r = exp(logp - behaviour_logp)            (current policy vs the generating policy)
        centre c = exp(proximal_logp - behaviour_logp)   (pre-update policy pi_k vs mu; 1 for fresh samples)
        loss   = -min(r * A, clamp(r, c - eps, c + eps) * A)
    With proximal == behaviour (or proximal_logp=None) c = 1 and this is exactly PPO/GRPO's clipped loss.
    `clip_eps_high` (DAPO "clip-higher") sets the upper half-width separately; default: clip_eps.
    `is_weights` [batch, tokens] (detached) multiply each token's loss: the sampler-trainer mismatch correction
    of `algos.mismatch_is_weights` (TIS / MIS), with behaviour_logp then being the trainer's own log-probs.

    `advantages` is [batch, tokens], or [batch] (broadcast over tokens). behaviour_logp and proximal_logp are
    data: they are detached. Computation runs in float32 whatever the input dtype.

    Metrics (token-mean over masked tokens, detached floats):
      loss, clip_frac (share of tokens where the clipped term is the active one, i.e. gradient zeroed),
      ratio_mean, ratio_max, centre_mean, centre_max,
      approx_kl: k3 estimate of KL(mu || pi_theta) from mu's samples, mean((r - 1) - log r) >= 0.
    """
    if clip_eps < 0:
        raise ValueError(f"clip_eps must be >= 0, got {clip_eps}")
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    if eps_high < 0:
        raise ValueError(f"clip_eps_high must be >= 0, got {eps_high}")
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(logp)
    if proximal_logp is None:
        proximal_logp = behaviour_logp
    _check_same_shape(
        logp=logp,
        behaviour_logp=behaviour_logp,
        proximal_logp=proximal_logp,
        advantages=advantages,
        mask=mask,
    )
    logp = logp.float()
    behaviour_logp = behaviour_logp.detach().float()
    proximal_logp = proximal_logp.detach().float()
    advantages = advantages.detach().float()
    mask = mask.float()

    log_ratio = _clamped_log_ratio(logp, behaviour_logp)
    ratio = torch.exp(log_ratio)
    centre = torch.exp(_clamped_log_ratio(proximal_logp, behaviour_logp))
    unclipped = -ratio * advantages
    clipped = -torch.clamp(ratio, centre - clip_eps, centre + eps_high) * advantages
    token_loss = torch.maximum(unclipped, clipped)  # -min(a, b) == max(-a, -b)
    if is_weights is not None:
        _check_same_shape(logp=logp, is_weights=is_weights)
        token_loss = token_loss * is_weights.detach().float()
    loss = agg_loss(token_loss, mask, agg, norm_len)

    with torch.no_grad():
        metrics = {
            "loss": loss.item(),
            "clip_frac": masked_mean((clipped > unclipped).float(), mask).item(),
            "ratio_mean": masked_mean(ratio, mask).item(),
            "ratio_max": _masked_max(ratio, mask),
            "centre_mean": masked_mean(centre, mask).item(),
            "centre_max": _masked_max(centre, mask),
            "approx_kl": masked_mean(ratio - 1.0 - log_ratio, mask).item(),
        }
    return loss, metrics


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from samples of pi_theta (Schulman's k1/k2/k3).

    - "k1" (alias "kl"): logp - ref_logp                       (unbiased, can be negative; PPO in-reward)
    - "k2" (alias "mse"): 0.5 * (logp - ref_logp)^2
    - "k3" (alias "low_var_kl"): exp(ref - logp) - (ref - logp) - 1   (unbiased, >= 0, low variance; GRPO)
    The k3 exponent is clamped to [-20, 20] so it cannot overflow. ref_logp is detached.
    """
    ref_logp = ref_logp.detach()
    _check_same_shape(logp=logp, ref_logp=ref_logp)
    if kind in ("k1", "kl"):
        return logp - ref_logp
    if kind in ("k2", "mse"):
        return 0.5 * (logp - ref_logp) ** 2
    if kind in ("k3", "low_var_kl"):
        delta = _clamped_log_ratio(ref_logp, logp)
        return torch.exp(delta) - delta - 1.0
    raise ValueError(f"unknown KL kind {kind!r}; allowed: {', '.join(KL_KINDS)}")


def kl_convex_weight(
    step: int, start: int = 50, interval: int = 10, decrement: float = 0.1, floor: float = 0.5
) -> float:
    """KL-Convex weight lam(t) = max(1 - decrement * ceil(max(t - start, 0) / interval), floor).

    With the defaults: 1.0 up to step 50, 0.9 for 51-60, 0.8 for 61-70, 0.7 for 71-80, 0.6 for 81-90 and
    the floor 0.5 from step 91 on.
    """
    if interval <= 0:
        raise ValueError(f"kl_convex interval must be > 0, got {interval}")
    if decrement < 0:
        raise ValueError(f"kl_convex decrement must be >= 0, got {decrement}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"kl_convex floor must be in [0, 1], got {floor}")
    decays = math.ceil(max(step - start, 0) / interval)
    return max(1.0 - decrement * decays, floor)


def kl_convex(
    logp: torch.Tensor,
    base_logp: torch.Tensor,
    precedent_logp: torch.Tensor | None,
    weight: float,
    kind: str = "k3",
) -> torch.Tensor:
    """Per-token KL-Convex penalty: weight * KL(pi || pi_base) + (1 - weight) * KL(pi || pi_precedent).

    pi_precedent is the previous step's policy (METHOD.md section 2). With weight == 1 the precedent term
    vanishes and `precedent_logp` may be None.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"KL-Convex weight must be in [0, 1], got {weight}")
    base_term = kl_penalty(logp, base_logp, kind)
    if weight == 1.0:
        return base_term
    if precedent_logp is None:
        raise ValueError(f"precedent_logp is required when the KL-Convex weight is < 1 (got {weight})")
    return weight * base_term + (1.0 - weight) * kl_penalty(logp, precedent_logp, kind)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None = 0.5,
    agg: str = "token-mean",
    norm_len: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO critic loss 0.5 * max((v - R)^2, (clamp(v, old - clip, old + clip) - R)^2), reduced by agg_loss.

    clip=None disables value clipping (plain 0.5 * (v - R)^2). old_values and returns are detached.
    Metrics: loss, vf_clip_frac (share of tokens where the clipped error is the larger one), value_mean,
    return_mean, explained_var (1 - Var(R - v) / Var(R) over masked tokens; 0 when Var(R) is 0).
    """
    _check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    values = values.float()
    old_values = old_values.detach().float()
    returns = returns.detach().float()
    mask = mask.float()
    unclipped_err = (values - returns) ** 2
    if clip is None:
        token_loss = 0.5 * unclipped_err
        clipped_err = unclipped_err
    else:
        if clip < 0:
            raise ValueError(f"value clip must be >= 0 or None, got {clip}")
        clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
        clipped_err = (clipped_values - returns) ** 2
        token_loss = 0.5 * torch.maximum(unclipped_err, clipped_err)
    loss = agg_loss(token_loss, mask, agg, norm_len)
    with torch.no_grad():
        return_var = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
        residual = returns - values
        residual_var = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
        explained = 1.0 - residual_var / return_var if return_var.item() > 0 else torch.zeros(())
        metrics = {
            "loss": loss.item(),
            "vf_clip_frac": masked_mean((clipped_err > unclipped_err).float(), mask).item(),
            "value_mean": masked_mean(values, mask).item(),
            "return_mean": masked_mean(returns, mask).item(),
            "explained_var": float(explained),
        }
    return loss, metrics


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim: logsumexp(z) - sum(softmax(z) * z).

    Stable for large logits, and -inf logits (masked vocabulary entries) contribute 0 without NaN in values
    or gradients.
    """
    # Entropy is shift-invariant: subtracting the (detached) row max keeps both terms small, so their
    # difference does not lose float32 precision when logits are large.
    shifted = logits - logits.max(dim=-1, keepdim=True).values.detach()
    log_norm = torch.logsumexp(shifted, dim=-1)
    probs = torch.softmax(shifted, dim=-1)
    # Replace -inf by 0 *before* multiplying: 0 * -inf is NaN, and a where() after it would leak NaN grads.
    zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
    finite = torch.where(torch.isfinite(shifted), shifted, zero)
    return log_norm - (probs * finite).sum(dim=-1)


def effective_sample_size(log_ratio: torch.Tensor, mask: torch.Tensor) -> float:
    """Normalised effective sample size (sum w)^2 / (n * sum w^2) of importance weights w = exp(log_ratio).

    Over masked tokens, in (0, 1]: 1 when all weights are equal, ~1/n when one weight dominates. Computed in
    log-space (2 * logsumexp(lw) - logsumexp(2 lw) - log n), so huge or tiny ratios do not overflow.
    Returns 1.0 when there is no masked token.
    """
    _check_same_shape(log_ratio=log_ratio, mask=mask)
    log_w = log_ratio.detach().double()[mask > 0]
    n = log_w.numel()
    if n == 0:
        return 1.0
    log_ess = 2.0 * torch.logsumexp(log_w, dim=0) - torch.logsumexp(2.0 * log_w, dim=0) - math.log(n)
    return min(math.exp(log_ess.item()), 1.0)  # rounding can land a hair above 1


def ratio_statistics(
    logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """Off-policy health of a batch: importance ratio pi_theta / mu over masked tokens (LESSONS.md #5).

    Keys: ratio_mean, ratio_max, ratio_min, approx_kl (k3 estimate of KL(mu || pi_theta), as in policy_loss),
    ess (effective_sample_size), tokens (number of masked tokens). All 0 (ess 1) for an empty mask.
    """
    _check_same_shape(logp=logp, behaviour_logp=behaviour_logp, mask=mask)
    with torch.no_grad():
        mask = mask.float()
        log_ratio = _clamped_log_ratio(logp.detach().float(), behaviour_logp.detach().float())
        ratio = torch.exp(log_ratio)
        selected = ratio[mask > 0]
        return {
            "ratio_mean": masked_mean(ratio, mask).item(),
            "ratio_max": selected.max().item() if selected.numel() else 0.0,
            "ratio_min": selected.min().item() if selected.numel() else 0.0,
            "approx_kl": masked_mean(ratio - 1.0 - log_ratio, mask).item(),
            "ess": effective_sample_size(log_ratio, mask),
            "tokens": float(mask.sum().item()),
        }
