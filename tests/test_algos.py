"""Hand-computed checks of the ReMix algorithm core (remix_rft.algos)."""

from __future__ import annotations

import math

import pytest
import torch

from remix_rft.algos import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    agg_loss,
    effective_sample_size,
    entropy_from_logits,
    gae,
    get_advantage_estimator,
    get_policy_loss,
    grpo_advantages,
    kl_convex,
    kl_convex_weight,
    kl_penalty,
    masked_mean,
    masked_whiten,
    policy_loss,
    ratio_statistics,
    register_policy_loss,
    sequence_rewards_to_tokens,
    value_loss,
)

LN = math.log


def ppo_reference_loss(logp, old_logp, advantages, mask, eps):
    """Textbook PPO clipped loss (CleanRL style), token-mean over the mask; written independently."""
    ratio = torch.exp(logp - old_logp)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1 - eps, 1 + eps)
    per_token = torch.max(loss1, loss2)
    return (per_token * mask).sum() / mask.sum()


def geppo_reference_token_loss(logp, behaviour_logp, proximal_logp, advantages, eps):
    """Piecewise form of the GePPO objective: for A >= 0 the ratio is capped at c + eps, for A < 0 floored
    at c - eps (equivalent to -min(r A, clip(r, c - eps, c + eps) A), written without clamp/min of
    products)."""
    ratio = torch.exp(logp - behaviour_logp)
    centre = torch.exp(proximal_logp - behaviour_logp)
    capped = torch.minimum(ratio, centre + eps)
    floored = torch.maximum(ratio, centre - eps)
    return torch.where(advantages >= 0, -advantages * capped, -advantages * floored)


# ----------------------------------------------------------------------------------------------------
# A 2 x 3 batch worked out by hand (eps = 0.2). Row 0 is fresh data (centre 1), row 1 is replayed data.
#   token  ratio  centre  A    clip range     min(rA, clip(r)A)           loss   clip active
#   (0,0)  1.5    1       +1   [0.8, 1.2]     min(1.5, 1.2) = 1.2         -1.2   yes
#   (0,1)  0.5    1       +1   [0.8, 1.2]     min(0.5, 0.8) = 0.5         -0.5   no
#   (0,2)  0.5    1       -2   [0.8, 1.2]     min(-1.0, -1.6) = -1.6      +1.6   yes
#   (1,0)  1.5    1.4     +1   [1.2, 1.6]     min(1.5, 1.5) = 1.5         -1.5   no   (PPO would clip to 1.2)
#   (1,1)  1.0    0.5     +1   [0.3, 0.7]     min(1.0, 0.7) = 0.7         -0.7   yes
#   (1,2)  padding (mask 0, garbage values)
# ----------------------------------------------------------------------------------------------------
def hand_batch():
    behaviour = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, float("-inf")]])
    logp = behaviour.clone()
    logp[0] += torch.tensor([LN(1.5), LN(0.5), LN(0.5)])
    logp[1, :2] += torch.tensor([LN(1.5), LN(1.0)])
    logp[1, 2] = 123.0  # garbage in the padding
    proximal = behaviour.clone()
    proximal[1, :2] += torch.tensor([LN(1.4), LN(0.5)])
    proximal[1, 2] = -50.0
    advantages = torch.tensor([[1.0, 1.0, -2.0], [1.0, 1.0, 1e6]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    return logp.requires_grad_(), behaviour, proximal, advantages, mask


def test_policy_loss_hand_computed_token_mean():
    logp, behaviour, proximal, advantages, mask = hand_batch()
    loss, metrics = policy_loss(logp, behaviour, proximal, advantages, mask, clip_eps=0.2)
    # (-1.2 - 0.5 + 1.6 - 1.5 - 0.7) / 5 = -2.3 / 5
    assert loss.item() == pytest.approx(-0.46, abs=1e-6)
    assert metrics["loss"] == pytest.approx(-0.46, abs=1e-6)
    assert metrics["clip_frac"] == pytest.approx(3 / 5)
    assert metrics["ratio_mean"] == pytest.approx((1.5 + 0.5 + 0.5 + 1.5 + 1.0) / 5, abs=1e-6)
    assert metrics["ratio_max"] == pytest.approx(1.5, abs=1e-6)
    assert metrics["centre_mean"] == pytest.approx((1 + 1 + 1 + 1.4 + 0.5) / 5, abs=1e-6)
    assert metrics["centre_max"] == pytest.approx(1.4, abs=1e-6)
    # k3 = r - 1 - ln r per token
    k3 = [r - 1 - LN(r) for r in (1.5, 0.5, 0.5, 1.5, 1.0)]
    assert metrics["approx_kl"] == pytest.approx(sum(k3) / 5, abs=1e-6)
    assert all(isinstance(value, float) for value in metrics.values())


def test_policy_loss_hand_computed_gradient():
    logp, behaviour, proximal, advantages, mask = hand_batch()
    loss, _ = policy_loss(logp, behaviour, proximal, advantages, mask)
    loss.backward()
    # d(-r A)/d logp = -r A where the unclipped term is active, 0 where clipped; token-mean divides by 5.
    expected = torch.tensor([[0.0, -0.5 / 5, 0.0], [-1.5 / 5, 0.0, 0.0]])
    torch.testing.assert_close(logp.grad, expected, atol=1e-6, rtol=1e-5)


def test_policy_loss_each_agg_mode_by_hand():
    logp, behaviour, proximal, advantages, mask = hand_batch()
    # Per-row token losses: row 0 = [-1.2, -0.5, 1.6] (sum -0.1), row 1 = [-1.5, -0.7] (sum -2.2).
    seq_mean, _ = policy_loss(logp, behaviour, proximal, advantages, mask, agg="seq-mean-token-mean")
    assert seq_mean.item() == pytest.approx((-0.1 / 3 + -2.2 / 2) / 2, abs=1e-6)
    dr_grpo, _ = policy_loss(
        logp, behaviour, proximal, advantages, mask, agg="seq-mean-token-sum-norm", norm_len=4
    )
    assert dr_grpo.item() == pytest.approx((-0.1 / 4 + -2.2 / 4) / 2, abs=1e-6)
    # norm_len defaults to the token dimension (3 here)
    dr_default, _ = policy_loss(logp, behaviour, proximal, advantages, mask, agg="seq-mean-token-sum-norm")
    assert dr_default.item() == pytest.approx((-0.1 / 3 + -2.2 / 3) / 2, abs=1e-6)


def test_policy_loss_clip_eps_high():
    # ratio 1.25, centre 1, A = +1: eps 0.2 caps it at 1.2; with eps_high = 0.28 (DAPO) the cap is 1.28 and
    # the ratio is not clipped: loss = -1.25.
    logp = torch.tensor([[LN(1.25)]])
    zeros = torch.zeros(1, 1)
    ones = torch.ones(1, 1)
    loss_sym, _ = policy_loss(logp, zeros, zeros, ones, ones, clip_eps=0.2)
    loss_high, _ = policy_loss(logp, zeros, zeros, ones, ones, clip_eps=0.2, clip_eps_high=0.28)
    assert loss_sym.item() == pytest.approx(-1.2)
    assert loss_high.item() == pytest.approx(-1.25)


def test_policy_loss_reduces_to_ppo_when_proximal_is_behaviour():
    gen = torch.Generator().manual_seed(0)
    behaviour = -torch.rand(4, 7, generator=gen) * 3
    logp = behaviour + 0.5 * torch.randn(4, 7, generator=gen)
    advantages = torch.randn(4, 7, generator=gen)
    mask = (torch.rand(4, 7, generator=gen) > 0.3).float()
    for proximal in (behaviour, None):
        ours, _ = policy_loss(logp, behaviour, proximal, advantages, mask, clip_eps=0.2)
        reference = ppo_reference_loss(logp, behaviour, advantages, mask, 0.2)
        torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)


def test_policy_loss_gradient_matches_reference_formula():
    gen = torch.Generator().manual_seed(1)
    behaviour = -torch.rand(3, 6, generator=gen) * 2
    proximal = behaviour + 0.3 * torch.randn(3, 6, generator=gen)
    start = behaviour + 0.4 * torch.randn(3, 6, generator=gen)
    advantages = torch.randn(3, 6, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 1, 0]], dtype=torch.float32)

    logp = start.clone().requires_grad_()
    loss, _ = policy_loss(logp, behaviour, proximal, advantages, mask, clip_eps=0.2)
    loss.backward()

    logp_ref = start.clone().requires_grad_()
    token_loss = geppo_reference_token_loss(logp_ref, behaviour, proximal, advantages, 0.2)
    reference = (token_loss * mask).sum() / mask.sum()
    reference.backward()

    torch.testing.assert_close(loss, reference, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logp.grad, logp_ref.grad, atol=1e-6, rtol=1e-5)


def test_policy_loss_accepts_per_sequence_advantages_and_rejects_bad_shapes():
    logp = torch.zeros(2, 3)
    mask = torch.ones(2, 3)
    per_sequence, _ = policy_loss(logp, logp, logp, torch.tensor([1.0, -1.0]), mask)
    per_token, _ = policy_loss(logp, logp, logp, torch.tensor([[1.0] * 3, [-1.0] * 3]), mask)
    assert per_sequence.item() == pytest.approx(per_token.item())
    with pytest.raises(ValueError, match="shape mismatch"):
        policy_loss(logp, logp, logp, torch.zeros(2, 4), mask)
    with pytest.raises(ValueError, match="agg"):
        policy_loss(logp, logp, logp, torch.zeros(2, 3), mask, agg="sum")


def test_policy_loss_extreme_log_ratio_is_finite():
    # log-ratio 500 would overflow exp in float32; it is clamped to 20 first.
    logp = torch.tensor([[500.0, -500.0]], requires_grad=True)
    zeros = torch.zeros(1, 2)
    loss, metrics = policy_loss(logp, zeros, zeros, torch.tensor([[-1.0, 1.0]]), torch.ones(1, 2))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert metrics["ratio_max"] == pytest.approx(math.exp(20), rel=1e-5)


def test_fully_masked_batch_gives_zero_not_nan():
    logp = torch.randn(2, 3, requires_grad=True)
    mask = torch.zeros(2, 3)
    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        loss, metrics = policy_loss(
            logp, torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), mask, agg=agg
        )
        assert loss.item() == 0.0
        assert all(math.isfinite(value) for value in metrics.values())
        loss.backward()
        assert torch.equal(logp.grad, torch.zeros(2, 3))
        logp.grad = None


def test_agg_loss_modes_by_hand():
    losses = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 0.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # token-mean: (1 + 2 + 3 + 10) / 4 masked tokens
    assert agg_loss(losses, mask, "token-mean").item() == pytest.approx(4.0)
    # seq-mean-token-mean: rows 2 and 10, the empty row is left out: (2 + 10) / 2
    assert agg_loss(losses, mask, "seq-mean-token-mean").item() == pytest.approx(6.0)
    # token-sum-norm: (6 / 8 + 10 / 8 + 0 / 8) / 3 rows
    assert agg_loss(losses, mask, "seq-mean-token-sum-norm", norm_len=8).item() == pytest.approx(16 / 24)
    with pytest.raises(ValueError, match="token-mean"):
        agg_loss(losses, mask, "mean")
    with pytest.raises(ValueError, match="norm_len"):
        agg_loss(losses, mask, "seq-mean-token-sum-norm", norm_len=0)


def test_masked_mean_and_whiten_by_hand():
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert masked_mean(x, mask).item() == pytest.approx(1.5)
    torch.testing.assert_close(masked_mean(x, mask, dim=-1), torch.tensor([1.5, 0.0]))
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0

    # mean 4, unbiased var (4 + 0 + 4) / 2 = 4, std 2
    y = torch.tensor([[2.0, 4.0, 6.0, 1e9]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    torch.testing.assert_close(masked_whiten(y, m), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        masked_whiten(y, m, shift_mean=False), torch.tensor([[3.0, 4.0, 5.0, 0.0]]), atol=1e-5, rtol=0
    )
    assert torch.equal(masked_whiten(y, torch.zeros(1, 4)), torch.zeros(1, 4))
    assert torch.equal(masked_whiten(y, torch.tensor([[0.0, 1.0, 0.0, 0.0]])), torch.zeros(1, 4))


def test_masked_whiten_over_ranks_equals_whitening_the_whole_batch():
    """Two data-parallel shards whitened with summed statistics give the whole batch's whitening (the PPO
    advantage on 2 ranks must be the one-process advantage); each shard's own statistics would not."""
    import threading

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=generator) * 3 + 2
    mask = (torch.rand(6, 5, generator=generator) > 0.3).float()
    x[mask == 0] = float("inf")  # padding never leaks into the statistics
    whole = masked_whiten(x, mask)
    shards = [(x[:2], mask[:2]), (x[2:], mask[2:])]
    barrier, slots, results = threading.Barrier(2), [None, None], [None, None]

    def all_reduce_sum(rank: int, tensor: torch.Tensor) -> torch.Tensor:
        slots[rank] = tensor
        barrier.wait()
        total = slots[0] + slots[1]
        barrier.wait()  # both ranks have read the slots before either writes its next statistics
        return total

    def rank_main(rank: int) -> None:
        results[rank] = masked_whiten(*shards[rank], reduce_sum=lambda t: all_reduce_sum(rank, t))

    threads = [threading.Thread(target=rank_main, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    torch.testing.assert_close(torch.cat(results), whole, atol=1e-6, rtol=0)
    local = torch.cat([masked_whiten(*shard) for shard in shards])
    assert not torch.allclose(local, whole, atol=1e-3)


def test_grpo_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 1.0, 5.0, 2.0, 2.0])
    groups = torch.tensor([0, 0, 0, 1, 2, 2])
    # group 0: mean 2/3, deviations (1/3, -2/3, 1/3), unbiased var (1/9 + 4/9 + 1/9) / 2 = 1/3
    std = math.sqrt(1 / 3)
    expected = torch.tensor([(1 / 3) / std, (-2 / 3) / std, (1 / 3) / std, 0.0, 0.0, 0.0])
    # group 1 has one response -> 0; group 2 has equal rewards -> 0
    torch.testing.assert_close(grpo_advantages(rewards, groups, eps=0.0), expected)
    torch.testing.assert_close(
        grpo_advantages(rewards, groups, scale="none"), torch.tensor([1 / 3, -2 / 3, 1 / 3, 0.0, 0.0, 0.0])
    )
    # equal rewards are exactly 0 even when the float mean is off by an ulp and eps is 0
    equal = grpo_advantages(torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7]), [0, 0, 0, 1, 1], eps=0.0)
    assert torch.equal(equal, torch.zeros(5))


def test_grpo_advantages_matches_torch_std_and_accepts_labels():
    gen = torch.Generator().manual_seed(3)
    rewards = torch.rand(12, generator=gen)
    labels = ["a", "b", "c"] * 4  # interleaved string labels
    advantages = grpo_advantages(rewards, labels)
    for offset in range(3):
        group = rewards[offset::3]
        expected = (group - group.mean()) / (group.std() + 1e-6)
        torch.testing.assert_close(advantages[offset::3], expected)
    with pytest.raises(ValueError, match="scale"):
        grpo_advantages(rewards, labels, scale="max")
    with pytest.raises(ValueError, match="group_ids"):
        grpo_advantages(rewards, labels[:5])


def test_gae_by_hand():
    # gamma 0.9, lam 0.8 (gamma * lam = 0.72), value after the last token is 0:
    #   t=2: delta = 1 + 0 - 0.7 = 0.3                   A = 0.3
    #   t=1: delta = 0 + 0.9 * 0.7 - 0.6 = 0.03          A = 0.03 + 0.72 * 0.3 = 0.246
    #   t=0: delta = 0 + 0.9 * 0.6 - 0.5 = 0.04          A = 0.04 + 0.72 * 0.246 = 0.21712
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7, 9.0]])  # 9.0 sits in the padding and must be ignored
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(advantages, torch.tensor([[0.21712, 0.246, 0.3, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.71712, 0.846, 1.0, 0.0]]))


def gae_reference_loop(rewards, values, lengths, gamma, lam):
    """Hand-unrolled GAE on right-padded rows, one Python float at a time."""
    batch, num_tokens = rewards.shape
    advantages = torch.zeros(batch, num_tokens)
    for b in range(batch):
        running = 0.0
        for t in reversed(range(lengths[b])):
            next_value = values[b, t + 1].item() if t + 1 < lengths[b] else 0.0
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            running = delta + gamma * lam * running
            advantages[b, t] = running
    return advantages


def test_gae_matches_hand_unrolled_loop():
    gen = torch.Generator().manual_seed(4)
    lengths = [5, 2, 7, 0]
    rewards = torch.randn(4, 7, generator=gen)
    values = torch.randn(4, 7, generator=gen)
    mask = torch.tensor([[1.0] * n + [0.0] * (7 - n) for n in lengths])
    advantages, returns = gae(rewards, values, mask, gamma=0.95, lam=0.7)
    expected = gae_reference_loop(rewards, values, lengths, 0.95, 0.7)
    torch.testing.assert_close(advantages, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(returns, (expected + values) * mask, atol=1e-5, rtol=1e-5)


def test_gae_skips_gaps_in_the_mask():
    # A gap (e.g. left padding or non-response tokens) is transparent: [x, gap, y] equals the row [x, y].
    rewards = torch.tensor([[0.2, 7.0, 1.0]])
    values = torch.tensor([[0.5, 3.0, 0.4]])
    with_gap, _ = gae(rewards, values, torch.tensor([[1.0, 0.0, 1.0]]), gamma=0.9, lam=0.5)
    compact, _ = gae(
        torch.tensor([[0.2, 1.0]]), torch.tensor([[0.5, 0.4]]), torch.ones(1, 2), gamma=0.9, lam=0.5
    )
    torch.testing.assert_close(with_gap[:, [0, 2]], compact)
    assert with_gap[0, 1].item() == 0.0


def test_gae_with_unit_discount_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 1.0, 1.5]])
    advantages, returns = gae(rewards, values, torch.ones(1, 3))
    torch.testing.assert_close(returns, torch.tensor([[2.0, 2.0, 2.0]]))
    torch.testing.assert_close(advantages, torch.tensor([[1.5, 1.0, 0.5]]))


def test_sequence_rewards_to_tokens():
    mask = torch.tensor(
        [[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]]
    )
    tokens = sequence_rewards_to_tokens(torch.tensor([2.0, -1.0, 5.0, 3.0]), mask)
    expected = torch.tensor(
        [[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]]
    )
    assert torch.equal(tokens, expected)
    with pytest.raises(ValueError, match="rewards"):
        sequence_rewards_to_tokens(torch.zeros(3), mask)


def test_kl_penalty_kinds_by_hand():
    logp = torch.tensor([LN(0.5)])
    ref = torch.tensor([LN(0.25)])
    # k1 = ln 0.5 - ln 0.25 = ln 2; k2 = 0.5 (ln 2)^2; k3 = exp(-ln 2) + ln 2 - 1 = ln 2 - 0.5
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(LN(2))
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * LN(2) ** 2)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(LN(2) - 0.5)
    assert kl_penalty(logp, ref, "low_var_kl").item() == pytest.approx(LN(2) - 0.5)
    assert kl_penalty(logp, logp, "k3").item() == 0.0
    with pytest.raises(ValueError, match="k1.*k2.*k3"):
        kl_penalty(logp, ref, "k4")


def test_kl_k3_is_finite_for_extreme_gaps_and_has_the_right_gradient():
    logp = torch.tensor([-200.0, 0.0, LN(0.5)], requires_grad=True)
    ref = torch.tensor([0.0, -200.0, LN(0.25)])
    kl = kl_penalty(logp, ref, "k3")
    kl.sum().backward()
    assert torch.isfinite(kl).all() and torch.isfinite(logp.grad).all()
    # d/dlogp [exp(ref - logp) - (ref - logp) - 1] = 1 - exp(ref - logp) = 1 - 0.5 at the last token
    assert logp.grad[2].item() == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("step", "weight"),
    [(0, 1.0), (50, 1.0), (51, 0.9), (60, 0.9), (61, 0.8), (90, 0.6), (91, 0.5), (200, 0.5)],
)
def test_kl_convex_weight_table(step, weight):
    # ceil(max(step - 50, 0) / 10): 0 -> 0, 50 -> 0, 51 -> 1, 60 -> 1, 61 -> 2, 90 -> 4, 91 -> 5 (floor 0.5)
    assert kl_convex_weight(step) == pytest.approx(weight)


def test_kl_convex_weight_custom_parameters_and_validation():
    assert kl_convex_weight(7, start=0, interval=5, decrement=0.25, floor=0.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="interval"):
        kl_convex_weight(10, interval=0)
    with pytest.raises(ValueError, match="floor"):
        kl_convex_weight(10, floor=1.5)


def test_kl_convex_mixes_the_two_references():
    logp = torch.tensor([LN(0.5)])
    base = torch.tensor([LN(0.25)])
    precedent = torch.tensor([LN(0.5)])  # same as the policy: its k3 is 0
    mixed = kl_convex(logp, base, precedent, weight=0.7)
    assert mixed.item() == pytest.approx(0.7 * (LN(2) - 0.5))
    mixed_k1 = kl_convex(logp, base, torch.tensor([LN(1.0)]), weight=0.5, kind="k1")
    assert mixed_k1.item() == pytest.approx(0.5 * LN(2) + 0.5 * LN(0.5))
    assert kl_convex(logp, base, None, weight=1.0).item() == pytest.approx(LN(2) - 0.5)
    with pytest.raises(ValueError, match="precedent_logp"):
        kl_convex(logp, base, None, weight=0.5)
    with pytest.raises(ValueError, match="weight"):
        kl_convex(logp, base, precedent, weight=1.5)


def test_value_loss_by_hand():
    # clip 0.5:
    #   v=1.0 old=0.0 R=0.2: clipped v 0.5; errors 0.64 vs 0.09 -> 0.5 * 0.64 = 0.32   (clip not active)
    #   v=0.0 old=1.0 R=0.0: clipped v 0.5; errors 0.0 vs 0.25  -> 0.5 * 0.25 = 0.125  (clip active)
    #   v=2.0 old=1.8 R=3.0: clipped v 2.0; errors 1.0 vs 1.0   -> 0.5               (not active)
    values = torch.tensor([[1.0, 0.0, 2.0, 50.0]], requires_grad=True)
    old = torch.tensor([[0.0, 1.0, 1.8, 0.0]])
    returns = torch.tensor([[0.2, 0.0, 3.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, metrics = value_loss(values, old, returns, mask, clip=0.5)
    assert loss.item() == pytest.approx((0.32 + 0.125 + 0.5) / 3)
    assert metrics["vf_clip_frac"] == pytest.approx(1 / 3)
    assert metrics["value_mean"] == pytest.approx(1.0)
    assert metrics["return_mean"] == pytest.approx(3.2 / 3)
    loss.backward()
    # grads: (v - R) / 3 where unclipped is the max, 0 where the clipped (constant) branch wins
    torch.testing.assert_close(values.grad, torch.tensor([[0.8 / 3, 0.0, -1.0 / 3, 0.0]]))
    unclipped, _ = value_loss(values, old, returns, mask, clip=None)
    assert unclipped.item() == pytest.approx(0.5 * (0.64 + 0.0 + 1.0) / 3)


def test_value_loss_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.ones(1, 3)
    _, perfect = value_loss(returns.clone(), returns, returns, mask)
    assert perfect["explained_var"] == pytest.approx(1.0)
    _, constant = value_loss(torch.full((1, 3), 2.0), returns, returns, mask, clip=None)
    assert constant["explained_var"] == pytest.approx(0.0)  # a constant predictor explains nothing


def test_entropy_from_logits():
    logits = torch.tensor([[0.0, 0.0], [0.0, LN(3)], [1000.0, 1000.0]])
    # uniform over 2 -> ln 2; probs (1/4, 3/4) -> -(1/4 ln 1/4 + 3/4 ln 3/4); huge equal logits -> ln 2
    expected = torch.tensor([LN(2), -(0.25 * LN(0.25) + 0.75 * LN(0.75)), LN(2)])
    torch.testing.assert_close(entropy_from_logits(logits), expected)
    random_logits = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(5)) * 4
    torch.testing.assert_close(
        entropy_from_logits(random_logits), torch.distributions.Categorical(logits=random_logits).entropy()
    )


def test_entropy_with_masked_vocabulary_has_finite_gradient():
    logits = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]], requires_grad=True)
    entropy = entropy_from_logits(logits)
    entropy.sum().backward()
    assert entropy.item() == pytest.approx(LN(2))
    assert torch.isfinite(logits.grad).all()


def test_ratio_statistics_and_effective_sample_size_by_hand():
    behaviour = torch.tensor([[-1.0, -1.0, -1.0, -1.0]])
    logp = behaviour + torch.tensor([[LN(2.0), 0.0, LN(0.5), 30.0]])  # last token is padding
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    stats = ratio_statistics(logp, behaviour, mask)
    assert stats["ratio_mean"] == pytest.approx(3.5 / 3)
    assert stats["ratio_max"] == pytest.approx(2.0)
    assert stats["ratio_min"] == pytest.approx(0.5)
    assert stats["approx_kl"] == pytest.approx(((1 - LN(2)) + 0 + (-0.5 + LN(2))) / 3)
    # ESS of weights (2, 1, 0.5): 3.5^2 / (3 * (4 + 1 + 0.25))
    assert stats["ess"] == pytest.approx(12.25 / 15.75)
    assert stats["tokens"] == 3.0


def test_effective_sample_size_limits():
    mask = torch.ones(1, 5)
    assert effective_sample_size(torch.full((1, 5), 7.0), mask) == pytest.approx(1.0)
    # one weight of e^1000 dominates: ESS -> 1/n, computed without overflow
    dominated = torch.tensor([[1000.0, 0.0, 0.0, 0.0, 0.0]])
    assert effective_sample_size(dominated, mask) == pytest.approx(0.2)
    assert effective_sample_size(dominated, torch.zeros(1, 5)) == 1.0


def test_policy_loss_registry():
    assert get_policy_loss("mix_ppg") is policy_loss
    assert get_policy_loss("ppo") is policy_loss
    assert get_policy_loss("clipped") is policy_loss
    for error in (KeyError, ValueError):
        with pytest.raises(error, match="mix_ppg"):
            get_policy_loss("nonexistent")

    @register_policy_loss("test_vanilla_pg")
    def vanilla_pg(
        logp, behaviour_logp, proximal_logp, advantages, mask, clip_eps=0.2, agg="token-mean", norm_len=None
    ):
        return agg_loss(-logp * advantages, mask, agg, norm_len), {}

    try:
        assert get_policy_loss("test_vanilla_pg") is vanilla_pg
        with pytest.raises(ValueError, match="already registered"):
            register_policy_loss("test_vanilla_pg")(policy_loss)
    finally:
        POLICY_LOSSES.pop("test_vanilla_pg")


def test_advantage_estimators_registry():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    groups = [0, 0, 1, 1]
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    std = math.sqrt(0.5)  # group 0: rewards (1, 0), unbiased std sqrt(0.5); group 1 equal rewards -> 0
    advantages, returns = get_advantage_estimator("grpo")(rewards=rewards, mask=mask, group_ids=groups)
    expected = torch.tensor([[0.5 / std] * 2 + [0.0], [-0.5 / std, 0.0, 0.0], [0.0] * 3, [0.0] * 3])
    torch.testing.assert_close(advantages, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(returns, advantages)

    dr_advantages, _ = get_advantage_estimator("drgrpo")(rewards=rewards, mask=mask, group_ids=groups)
    torch.testing.assert_close(
        dr_advantages, torch.tensor([[0.5, 0.5, 0.0], [-0.5, 0, 0], [0.0] * 3, [0.0] * 3])
    )

    values = torch.full((4, 3), 0.25)
    gae_advantages, gae_returns = get_advantage_estimator("gae")(rewards=rewards, mask=mask, values=values)
    reference = gae(sequence_rewards_to_tokens(rewards, mask), values, mask)
    torch.testing.assert_close(gae_advantages, reference[0])
    torch.testing.assert_close(gae_returns, reference[1])
    token_rewards = torch.ones(4, 3)
    with_tokens, _ = get_advantage_estimator("gae")(
        rewards=rewards, mask=mask, values=values, token_rewards=token_rewards, gamma=0.5, lam=0.5
    )
    torch.testing.assert_close(with_tokens, gae(token_rewards, values, mask, gamma=0.5, lam=0.5)[0])

    assert {"grpo", "drgrpo", "gae"} <= set(ADVANTAGE_ESTIMATORS)
    with pytest.raises(ValueError, match="group_ids"):
        get_advantage_estimator("grpo")(rewards=rewards, mask=mask)
    with pytest.raises(ValueError, match="values"):
        get_advantage_estimator("gae")(rewards=rewards, mask=mask)
    with pytest.raises(KeyError, match="grpo"):
        get_advantage_estimator("rloo_typo")
