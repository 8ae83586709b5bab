"""Property tests (hypothesis) for the algorithm core: random shapes and masks, fully masked rows included."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from remix_rft.algos import (
    AGG_MODES,
    agg_loss,
    effective_sample_size,
    gae,
    grpo_advantages,
    kl_convex,
    masked_mean,
    masked_whiten,
    policy_loss,
    ratio_statistics,
    value_loss,
)

PROPERTY_SETTINGS = settings(max_examples=50, deadline=None)


@st.composite
def masked_batches(draw):
    """(batch, tokens, mask, seed): masks are arbitrary 0/1 patterns, so empty rows and batches occur."""
    batch = draw(st.integers(1, 4))
    tokens = draw(st.integers(1, 6))
    rows = draw(
        st.lists(st.lists(st.booleans(), min_size=tokens, max_size=tokens), min_size=batch, max_size=batch)
    )
    seed = draw(st.integers(0, 2**31 - 1))
    return batch, tokens, torch.tensor(rows, dtype=torch.float32), seed


def random_policy_inputs(batch, tokens, seed, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    behaviour = -torch.rand(batch, tokens, generator=gen) * 5
    proximal = behaviour + scale * torch.randn(batch, tokens, generator=gen)
    logp = behaviour + scale * torch.randn(batch, tokens, generator=gen)
    advantages = torch.randn(batch, tokens, generator=gen) * 2
    return logp, behaviour, proximal, advantages


@PROPERTY_SETTINGS
@given(masked_batches(), st.sampled_from(AGG_MODES), st.floats(0.0, 0.5))
def test_policy_loss_is_finite_with_any_mask(data, agg, clip_eps):
    batch, tokens, mask, seed = data
    logp, behaviour, proximal, advantages = random_policy_inputs(batch, tokens, seed, scale=30.0)
    logp.requires_grad_()
    loss, metrics = policy_loss(logp, behaviour, proximal, advantages, mask, clip_eps=clip_eps, agg=agg)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logp.grad).all()
    assert all(math.isfinite(value) for value in metrics.values())
    # masked-out tokens receive no gradient, and an empty batch has loss exactly 0
    assert torch.all(logp.grad[mask == 0] == 0)
    if mask.sum() == 0:
        assert loss.item() == 0.0
    assert 0.0 <= metrics["clip_frac"] <= 1.0
    assert metrics["approx_kl"] >= -1e-6


@PROPERTY_SETTINGS
@given(masked_batches())
def test_policy_loss_ignores_padding_values(data):
    batch, tokens, mask, seed = data
    logp, behaviour, proximal, advantages = random_policy_inputs(batch, tokens, seed)
    garbage = torch.full_like(logp, 1e4)
    padded = [torch.where(mask > 0, t, garbage) for t in (logp, behaviour, proximal, advantages)]
    for agg in AGG_MODES:
        clean, _ = policy_loss(logp, behaviour, proximal, advantages, mask, agg=agg)
        noisy, _ = policy_loss(*padded, mask, agg=agg)
        torch.testing.assert_close(clean, noisy)


@PROPERTY_SETTINGS
@given(masked_batches())
def test_policy_loss_with_centre_one_equals_ppo(data):
    batch, tokens, mask, seed = data
    logp, behaviour, _, advantages = random_policy_inputs(batch, tokens, seed, scale=0.5)
    ours, _ = policy_loss(logp, behaviour, behaviour, advantages, mask, clip_eps=0.2)
    ratio = torch.exp(logp - behaviour)
    per_token = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 0.8, 1.2))
    reference = (per_token * mask).sum() / mask.sum() if mask.sum() > 0 else torch.tensor(0.0)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


@PROPERTY_SETTINGS
@given(masked_batches(), st.sampled_from(AGG_MODES))
def test_agg_loss_of_a_constant(data, agg):
    # Aggregating a constant loss c over the masked tokens gives c (token-sum-norm: c * len / norm_len).
    batch, tokens, mask, _ = data
    constant = torch.full((batch, tokens), 2.5)
    result = agg_loss(constant, mask, agg, norm_len=tokens)
    lengths = mask.sum(dim=-1)
    if agg == "token-mean":
        expected = 2.5 if mask.sum() > 0 else 0.0
    elif agg == "seq-mean-token-mean":
        expected = 2.5 if (lengths > 0).any() else 0.0
    else:
        expected = (2.5 * lengths / tokens).mean().item()
    assert math.isclose(result.item(), expected, rel_tol=1e-6, abs_tol=1e-6)


@PROPERTY_SETTINGS
@given(masked_batches())
def test_value_loss_and_stats_are_finite(data):
    batch, tokens, mask, seed = data
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(batch, tokens, generator=gen).requires_grad_()
    old_values = torch.randn(batch, tokens, generator=gen)
    returns = torch.randn(batch, tokens, generator=gen)
    loss, metrics = value_loss(values, old_values, returns, mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(values.grad).all()
    assert all(math.isfinite(value) for value in metrics.values())
    stats = ratio_statistics(values.detach(), old_values, mask)
    assert all(math.isfinite(value) for value in stats.values())
    assert 0.0 < stats["ess"] <= 1.0


@PROPERTY_SETTINGS
@given(masked_batches(), st.floats(-50.0, 50.0))
def test_effective_sample_size_in_unit_interval(data, spread):
    batch, tokens, mask, seed = data
    log_ratio = spread * torch.randn(batch, tokens, generator=torch.Generator().manual_seed(seed))
    ess = effective_sample_size(log_ratio, mask)
    count = int(mask.sum().item())
    assert 0.0 < ess <= 1.0
    if count:
        assert ess >= 1.0 / count - 1e-9  # one weight dominating is the worst case


@PROPERTY_SETTINGS
@given(masked_batches())
def test_masked_reductions_never_nan(data):
    batch, tokens, mask, seed = data
    x = torch.randn(batch, tokens, generator=torch.Generator().manual_seed(seed))
    for result in (masked_mean(x, mask), masked_mean(x, mask, dim=-1), masked_whiten(x, mask)):
        assert torch.isfinite(result).all()
    whitened = masked_whiten(x, mask)
    assert torch.all(whitened[mask == 0] == 0)
    if mask.sum() > 1:
        assert abs(masked_mean(whitened, mask).item()) < 1e-4


@PROPERTY_SETTINGS
@given(masked_batches(), st.floats(0.0, 1.0))
def test_kl_convex_is_non_negative_and_finite(data, weight):
    batch, tokens, mask, seed = data
    logp, base, precedent, _ = random_policy_inputs(batch, tokens, seed, scale=40.0)
    kl = kl_convex(logp, base, precedent, weight)
    assert torch.isfinite(kl).all() and torch.all(kl >= -1e-6)  # k3 >= 0 up to float rounding


@PROPERTY_SETTINGS
@given(st.lists(st.integers(0, 4), min_size=1, max_size=16), st.integers(0, 2**31 - 1))
def test_grpo_advantages_are_centred_per_group(group_ids, seed):
    rewards = torch.randint(0, 2, (len(group_ids),), generator=torch.Generator().manual_seed(seed)).float()
    for scale in ("std", "none"):
        advantages = grpo_advantages(rewards, group_ids, scale=scale)
        assert torch.isfinite(advantages).all()
        for group in set(group_ids):
            members = torch.tensor([g == group for g in group_ids])
            assert abs(advantages[members].sum().item()) < 1e-4
            if members.sum() == 1 or rewards[members].unique().numel() == 1:
                assert torch.all(advantages[members] == 0)


@PROPERTY_SETTINGS
@given(masked_batches())
def test_gae_unit_discount_zero_values_is_reward_to_go(data):
    batch, tokens, mask, seed = data
    rewards = torch.randn(batch, tokens, generator=torch.Generator().manual_seed(seed))
    advantages, returns = gae(rewards, torch.zeros(batch, tokens), mask)
    masked_rewards = rewards * mask
    reward_to_go = masked_rewards.flip(-1).cumsum(-1).flip(-1) * mask
    torch.testing.assert_close(advantages, reward_to_go, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(returns, reward_to_go, atol=1e-5, rtol=1e-5)
