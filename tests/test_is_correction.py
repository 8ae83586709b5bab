"""Sampler-trainer mismatch IS weights (TIS / MIS, token / sequence level) against hand-computed values."""

import math

import pytest
import torch

from remix_rft import algos

LN2 = math.log(2.0)


def _logps():
    # row 0: token ratios trainer/engine = 2, 1/2, 4 ; row 1: ratios 1, 3, (padding holding NaN)
    trainer = torch.tensor([[LN2, 0.0, 2 * LN2], [0.0, math.log(3.0), float("nan")]])
    engine = torch.tensor([[0.0, LN2, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    return trainer, engine, mask


def test_token_tis_truncates_at_the_cap():
    trainer, engine, mask = _logps()
    w = algos.mismatch_is_weights(trainer, engine, mask, mode="tis", cap=2.5, level="token")
    torch.testing.assert_close(w, torch.tensor([[2.0, 0.5, 2.5], [1.0, 2.5, 0.0]]))


def test_token_mis_masks_tokens_above_the_cap():
    trainer, engine, mask = _logps()
    w = algos.mismatch_is_weights(trainer, engine, mask, mode="mis", cap=2.5, level="token")
    torch.testing.assert_close(w, torch.tensor([[2.0, 0.5, 0.0], [1.0, 0.0, 0.0]]))


def test_sequence_level_uses_the_product_of_token_ratios():
    trainer, engine, mask = _logps()
    # row 0: 2 * 0.5 * 4 = 4 ; row 1: 1 * 3 = 3
    raw = algos.raw_is_weights(trainer, engine, mask, level="sequence")
    torch.testing.assert_close(raw, torch.tensor([[4.0, 4.0, 4.0], [3.0, 3.0, 0.0]]))
    tis = algos.mismatch_is_weights(trainer, engine, mask, mode="tis", cap=3.5, level="sequence")
    torch.testing.assert_close(tis, torch.tensor([[3.5, 3.5, 3.5], [3.0, 3.0, 0.0]]))
    mis = algos.mismatch_is_weights(trainer, engine, mask, mode="mis", cap=3.5, level="sequence")
    torch.testing.assert_close(mis, torch.tensor([[0.0, 0.0, 0.0], [3.0, 3.0, 0.0]]))


def test_none_gives_unit_weights_on_response_tokens_only():
    trainer, engine, mask = _logps()
    w = algos.mismatch_is_weights(trainer, engine, mask, mode="none")
    torch.testing.assert_close(w, mask)


def test_statistics_report_the_capped_share():
    trainer, engine, mask = _logps()
    raw = algos.raw_is_weights(trainer, engine, mask)
    w = algos.mismatch_is_weights(trainer, engine, mask, mode="tis", cap=2.5)
    stats = algos.is_weight_statistics(raw, w, mask)
    # raw ratios on the 5 tokens: 2, 0.5, 4, 1, 3 ; applied: 2, 0.5, 2.5, 1, 2.5
    assert stats["raw_ratio_mean"] == pytest.approx(10.5 / 5)
    assert stats["raw_ratio_max"] == pytest.approx(4.0)
    assert stats["weight_mean"] == pytest.approx(8.5 / 5)
    assert stats["weight_min"] == pytest.approx(0.5)
    assert stats["capped_fraction"] == pytest.approx(2 / 5)


def test_weights_multiply_the_token_loss():
    # ratio 1 everywhere (logp == behaviour), advantages 1: token loss -1, weighted token-mean = -(2 + 0.5) / 2
    logp = torch.zeros(1, 2, requires_grad=True)
    weights = torch.tensor([[2.0, 0.5]])
    loss, _ = algos.policy_loss(logp, torch.zeros(1, 2), None, torch.ones(1, 2), torch.ones(1, 2),
                                is_weights=weights)
    assert loss.item() == pytest.approx(-1.25)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.0, -0.25]]))


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "clip"}, "unknown IS correction"),
    ({"level": "geometric"}, "unknown IS level"),
    ({"cap": 0.0}, "cap must be > 0"),
])
def test_bad_arguments_name_the_problem(kwargs, message):
    trainer, engine, mask = _logps()
    with pytest.raises(ValueError, match=message):
        algos.mismatch_is_weights(trainer, engine, mask, **kwargs)
