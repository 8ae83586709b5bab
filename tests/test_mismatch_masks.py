"""Sampler/trainer mismatch rejection masks (geometric-mean sequence mask, IcePop token mask) against hand-computed
values, their combination with TIS / MIS in the step batch, their config keys, and a short training run."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest
import torch

from remix_rft import algos
from remix_rft.batching import collate
from remix_rft.config import load_config
from remix_rft.errors import ConfigError
from remix_rft.experience import StepBatch, mismatch_correction
from remix_rft.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import tiny_config  # noqa: E402

LN2 = math.log(2.0)


def _logps():
    # token ratios trainer/engine: row 0: 2, 1/2, 4 ; row 1: 1, 3, (padding holding NaN) ; row 2: e^0.0005, e^-0.0003
    trainer = torch.tensor([[LN2, 0.0, 2 * LN2], [0.0, math.log(3.0), float("nan")], [0.0005, -0.0003, 0.0]])
    engine = torch.tensor([[0.0, LN2, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    return trainer, engine, mask


def test_geo_mean_keeps_or_drops_whole_sequences_by_the_geometric_mean_ratio():
    trainer, engine, mask = _logps()
    # geometric means: row 0 (2 * 0.5 * 4)^(1/3) = 2^(2/3) = 1.587 ; row 1 3^(1/2) = 1.732 ; row 2 e^0.0001
    keep = algos.mismatch_mask(trainer, engine, mask, "geo_mean", low=0.5, high=1.6)
    torch.testing.assert_close(keep, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    keep = algos.mismatch_mask(trainer, engine, mask, "geo_mean", low=0.5, high=1.8)
    torch.testing.assert_close(keep, mask)
    # the default band [1/1.001, 1.001] keeps only the sequence whose mean per-token deviation is under 0.1%
    keep = algos.mismatch_mask(trainer, engine, mask, "geo_mean")
    torch.testing.assert_close(keep, torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    # a lower bound above the mean drops from below: row 2's e^0.0001 < 1.0002
    keep = algos.mismatch_mask(trainer, engine, mask, "geo_mean", low=1.0 / 1.0002, high=1.0002)
    assert keep[2].sum() == 2
    keep = algos.mismatch_mask(trainer + torch.tensor([[0.0], [0.0], [-0.001]]), engine, mask, "geo_mean",
                               low=1 / 1.0002, high=1.0002)
    assert keep[2].sum() == 0  # mean log-ratio 0.0001 - 0.001 = -0.0009 < log(1/1.0002)


def test_icepop_drops_tokens_whose_ratio_leaves_the_band():
    trainer, engine, mask = _logps()
    keep = algos.mismatch_mask(trainer, engine, mask, "icepop", low=0.6, high=3.5)
    # ratios 2 | 0.5 (< 0.6) | 4 (> 3.5) ; 1 | 3 ; ~1 | ~1
    torch.testing.assert_close(keep, torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]))
    # IcePop's default band [0.5, 5] keeps all of these ratios (0.5 itself sits on the float32 edge: not asked)
    keep = algos.mismatch_mask(trainer, engine, mask, "icepop", low=0.45)
    torch.testing.assert_close(keep, mask)


def test_icepop_with_masked_is_is_the_published_weight():
    # IcePop's M(w) = w inside [alpha, beta], 0 outside == MIS weights (cap beta) times the icepop mask (alpha, beta)
    trainer, engine, mask = _logps()
    mis = algos.mismatch_is_weights(trainer, engine, mask, mode="mis", cap=3.5)
    keep = algos.mismatch_mask(trainer, engine, mask, "icepop", low=0.6, high=3.5)
    expected = torch.tensor([[2.0, 0.0, 0.0], [1.0, 3.0, 0.0], [math.exp(0.0005), math.exp(-0.0003), 0.0]])
    torch.testing.assert_close(mis * keep, expected)


def test_non_finite_log_ratios_are_dropped_not_propagated():
    trainer, engine, mask = _logps()
    trainer[0, 1] = float("-inf")
    trainer[1, 0] = float("nan")
    icepop = algos.mismatch_mask(trainer, engine, mask, "icepop", low=0.1, high=10.0)
    torch.testing.assert_close(icepop, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]))
    geo = algos.mismatch_mask(trainer, engine, mask, "geo_mean", low=0.1, high=10.0)
    torch.testing.assert_close(geo, torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))


def test_mask_statistics_count_tokens_and_sequences():
    trainer, engine, mask = _logps()
    keep = algos.mismatch_mask(trainer, engine, mask, "icepop", low=0.6, high=3.5)
    stats = algos.mask_statistics(keep, mask)
    # 2 of 7 response tokens dropped, both in row 0: 1 of 3 responses touched
    assert stats == {"token_share": pytest.approx(2 / 7), "sequence_share": pytest.approx(1 / 3)}
    assert algos.mask_statistics(keep, torch.zeros_like(mask)) == {}


def test_bounds_default_per_mask_and_are_checked():
    assert algos.mask_bounds("geo_mean") == (pytest.approx(1 / 1.001), 1.001)
    assert algos.mask_bounds("icepop") == (0.5, 5.0)
    assert algos.mask_bounds("icepop", high=2.0) == (0.5, 2.0)
    with pytest.raises(ValueError, match="low <= 1 <= high"):
        algos.mask_bounds("icepop", low=1.5)
    trainer, engine, mask = _logps()
    with pytest.raises(ValueError, match="unknown mismatch mask"):
        algos.mismatch_mask(trainer, engine, mask, "token_veto")
    torch.testing.assert_close(algos.mismatch_mask(trainer, engine, mask, "none"), mask)


def _step_batch():
    trainer, engine, mask = _logps()
    trainer = torch.nan_to_num(trainer)
    tokens = collate([[5], [6], [7]], [[1, 2, 3], [1, 2], [1, 2]], 0)
    assert torch.equal(tokens.response_mask, mask)
    return StepBatch(tokens=tokens, behaviour_logp=engine.clone(), rewards=torch.zeros(3),
                     sequence_advantages=torch.zeros(3), is_replay=torch.tensor([False, True, True]),
                     versions=torch.zeros(3), proximal_logp=trainer.clone(),  # row 0 fresh: pi_k's are the trainer's
                     trainer_behaviour_logp=trainer.clone()), trainer, engine


def _config(*overrides):
    return load_config(None, ["rollout.behaviour_logprobs=engine", *overrides])


def test_step_batch_mask_alone_keeps_the_engine_as_behaviour():
    batch, _, engine = _step_batch()
    metrics = mismatch_correction(_config("rollout.mismatch_mask=icepop", "rollout.mismatch_mask_low=0.6",
                                          "rollout.mismatch_mask_high=3.5"), batch)
    torch.testing.assert_close(batch.is_weights, torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]))
    assert torch.equal(batch.behaviour_logp, engine)  # no IS correction: PPO stays anchored on the engine
    assert metrics["mismatch_mask/token_share"] == pytest.approx(2 / 7)
    assert metrics["mismatch_mask/fresh_token_share"] == pytest.approx(2 / 3)
    assert metrics["mismatch_mask/replay_token_share"] == 0.0
    assert metrics["mismatch_mask/fresh_sequence_share"] == 1.0 and metrics["mismatch_mask/replay_sequence_share"] == 0
    assert not any(key.startswith("is_correction/") for key in metrics)


def test_step_batch_geo_mean_with_tis_multiplies_weights_and_mask():
    batch, _, _ = _step_batch()
    metrics = mismatch_correction(_config("rollout.is_correction=tis", "rollout.is_cap=2.5",
                                          "rollout.mismatch_mask=geo_mean", "rollout.mismatch_mask_high=1.6",
                                          "rollout.mismatch_mask_low=0.5"), batch)
    # TIS weights: 2, 0.5, 2.5 | 1, 2.5 | ~1, ~1 ; the geo_mean mask drops row 1 (3^(1/2) > 1.6)
    expected = torch.tensor([[2.0, 0.5, 2.5], [0.0, 0.0, 0.0], [math.exp(0.0005), math.exp(-0.0003), 0.0]])
    torch.testing.assert_close(batch.is_weights, expected)
    assert torch.equal(batch.behaviour_logp, batch.trainer_behaviour_logp)  # TIS: the trainer's is the behaviour
    assert metrics["is_correction/capped_fraction"] == pytest.approx(2 / 7)  # what TIS did, before the mask
    assert metrics["mismatch_mask/sequence_share"] == pytest.approx(1 / 3)
    assert metrics["mismatch_mask/replay_sequence_share"] == pytest.approx(1 / 2)


@pytest.mark.parametrize("overrides, key", [
    (["rollout.mismatch_mask=clip"], "rollout.mismatch_mask"),
    (["rollout.mismatch_mask=icepop", "rollout.behaviour_logprobs=recompute"], "rollout.mismatch_mask"),
    (["rollout.mismatch_mask=icepop", "rollout.mismatch_mask_low=0"], "rollout.mismatch_mask_low"),
    (["rollout.mismatch_mask=geo_mean", "rollout.mismatch_mask_high=-1"], "rollout.mismatch_mask_high"),
    (["rollout.mismatch_mask=geo_mean", "rollout.mismatch_mask_high=0.99"], "rollout.mismatch_mask_low/high"),
    (["rollout.mismatch_mask_high=2"], "rollout.mismatch_mask"),
])
def test_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
        load_config(None, ["rollout.behaviour_logprobs=engine", *overrides])


def test_config_defaults_change_nothing_and_vllm_takes_top_p_with_engine_logprobs():
    ro = load_config(None, []).rollout
    assert (ro.mismatch_mask, ro.mismatch_mask_low, ro.mismatch_mask_high, ro.is_correction) == ("none", None,
                                                                                                 None, "none")
    # the trainer now computes the truncated distribution's log-probs, as vLLM returns them
    ro = load_config(None, ["rollout.engine=vllm", "rollout.behaviour_logprobs=engine", "rollout.top_p=0.9",
                            "rollout.top_k=20", "rollout.mismatch_mask=icepop"]).rollout
    assert ro.top_p == 0.9 and ro.mismatch_mask == "icepop"


@pytest.mark.parametrize("mask", ["geo_mean", "icepop"])
def test_training_with_top_p_engine_logprobs_tis_and_a_mask(tmp_path, mask):
    """Two ReMix steps (fresh, then fresh + replay) with top-p / top-k sampling, the engine's log-probs, TIS and a
    mask. The HF engine shares the trainer's numerics and its truncated distribution, so on the tiny model every
    sampler/trainer ratio is ~1: the mask drops nothing and no fresh token falls outside pi_k's top-p set. The
    tiny runs' lr (1e-3) moves the near-uniform logits' top-200 set a lot, so replayed tokens and tokens in later
    minibatches do fall outside the current policy's set: they are masked, and the loss stays finite."""
    config = tiny_config(tmp_path, "remix-grpo", "train.steps=2", "remix.offpolicy_fraction=0.5",
                         "rollout.behaviour_logprobs=engine", "rollout.is_correction=tis", "rollout.top_p=0.9",
                         "rollout.top_k=200", "rollout.temperature=0.8", f"rollout.mismatch_mask={mask}",
                         "model.dtype=float32")
    trainer = Trainer(config)
    try:
        records = [trainer.train_step(1), trainer.train_step(2)]
    finally:
        trainer.close()
    assert records[1]["replay/groups"] > 0
    for record, kinds in zip(records, (("", "fresh_"), ("", "fresh_", "replay_"))):
        for kind in kinds:
            assert record[f"mismatch_mask/{kind}token_share"] == 0.0
            assert record[f"mismatch_mask/{kind}sequence_share"] == 0.0
            assert record[f"is_correction/{kind}weight_mean"] == pytest.approx(1.0, abs=1e-3)
        assert record["truncation/fresh_masked_share"] == 0.0
        assert 0 <= record["truncation/masked_share"] <= 1 and 0 <= record["truncation/update_masked_share"] <= 1
        assert math.isfinite(record["loss/policy"]) and math.isfinite(record["grad_norm"])
        assert record["skipped_updates"] == 0


class _TwoRanks:
    """Two threads' `Distributed` stand-ins: all_reduce combines both ranks' lists element-wise."""

    def __init__(self):
        import threading

        self.barrier, self.lists = threading.Barrier(2), [None, None]

    def rank(self, index):
        outer = self

        class Rank:
            active = True

            def all_reduce(self, values, op="sum"):
                outer.lists[index] = list(values)
                outer.barrier.wait()
                combine = {"sum": lambda a, b: a + b, "max": max, "min": min}[op]
                out = [combine(a, b) for a, b in zip(*outer.lists)]
                outer.barrier.wait()
                return out

            def all_gather_object(self, value):
                outer.lists[index] = value
                outer.barrier.wait()
                out = list(outer.lists)
                outer.barrier.wait()
                return out

        return Rank()


def test_mismatch_metrics_reduce_over_ranks_token_weighted():
    import threading

    from remix_rft.metrics import reduce_over_ranks

    base = {"replay/groups": 0, "replay/mean_age": 0.0}
    records = [{**base, "mismatch_mask/token_share": 0.1, "mismatch_mask/sequence_share": 0.5,
                "truncation/fresh_masked_share": 0.0, "is_correction/weight_min": 0.3,
                "is_correction/raw_ratio_max": 1.5, "is_correction/weight_mean": 1.0},
               {**base, "mismatch_mask/token_share": 0.4, "mismatch_mask/sequence_share": 1.0,
                "truncation/fresh_masked_share": 0.2, "is_correction/weight_min": 0.7,
                "is_correction/raw_ratio_max": 1.2, "is_correction/weight_mean": 0.5}]
    dist, out = _TwoRanks(), [None, None]
    # rank 0: 10 rollouts, 100 response tokens; rank 1: 30 rollouts, 300 tokens
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(
        i, reduce_over_ranks(records[i], dist.rank(i), rollouts=10 * (2 * i + 1), tokens=100.0 * (2 * i + 1))))
        for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert out[0] == out[1]
    reduced = out[0]
    assert reduced["mismatch_mask/token_share"] == pytest.approx((0.1 * 100 + 0.4 * 300) / 400)
    assert reduced["mismatch_mask/sequence_share"] == pytest.approx((0.5 * 10 + 1.0 * 30) / 40)
    assert reduced["truncation/fresh_masked_share"] == pytest.approx(0.2 * 300 / 400)
    assert reduced["is_correction/weight_mean"] == pytest.approx((1.0 * 100 + 0.5 * 300) / 400)
    assert reduced["is_correction/weight_min"] == 0.3 and reduced["is_correction/raw_ratio_max"] == 1.5


def _reduce_on_two_ranks(records, **per_rank):
    """reduce_over_ranks on two threads; `per_rank` maps a keyword to its (rank 0, rank 1) values."""
    import threading

    from remix_rft.metrics import reduce_over_ranks

    dist, out = _TwoRanks(), [None, None]
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, reduce_over_ranks(
        records[i], dist.rank(i), **{k: v[i] for k, v in per_rank.items()}))) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert out[0] is not None and out[1] is not None, "a rank hung"
    return out


def test_ranks_with_and_without_replayed_rows_reduce_the_same_keys_weighted_by_their_own_tokens():
    """Issue 35: with top-p, `truncation/replay_*` (and the mismatch masks' and IS weights' replay_ keys) exist
    only on ranks holding replayed rows; every rank must still reduce the same list, and a fresh_/replay_ key is
    weighted by that kind's tokens. Rank 0: 60 fresh + 40 replayed tokens; rank 1: 300 fresh, none replayed."""
    base = {"replay/groups": 1, "replay/mean_age": 1.0, "rollouts/replayed": 2, "ratio/mean": 1.01}
    records = [{**base, "truncation/masked_share": 0.1, "truncation/fresh_masked_share": 0.05,
                "truncation/replay_masked_share": 0.175, "is_correction/replay_weight_min": 0.4,
                "is_correction/replay_raw_ratio_max": 3.0, "mismatch_mask/replay_sequence_share": 0.5},
               {**base, "replay/groups": 0, "rollouts/replayed": 0, "truncation/masked_share": 0.2,
                "truncation/fresh_masked_share": 0.2, "late/only_here": 7}]
    out = _reduce_on_two_ranks(records, rollouts=(10, 30), tokens=(100.0, 300.0),
                               kind_tokens=({"fresh": 60.0, "replay": 40.0}, {"fresh": 300.0, "replay": 0.0}),
                               kind_rows=({"fresh": 6, "replay": 4}, {"fresh": 30, "replay": 0}))
    assert out[0] == out[1]
    reduced = out[0]
    assert reduced["truncation/masked_share"] == pytest.approx((0.1 * 100 + 0.2 * 300) / 400)
    assert reduced["truncation/fresh_masked_share"] == pytest.approx((0.05 * 60 + 0.2 * 300) / 360)
    assert reduced["truncation/replay_masked_share"] == pytest.approx(0.175)  # rank 0's 40 tokens alone
    assert reduced["is_correction/replay_weight_min"] == 0.4 and reduced["is_correction/replay_raw_ratio_max"] == 3.0
    assert reduced["mismatch_mask/replay_sequence_share"] == pytest.approx(0.5)
    assert reduced["replay/mean_age"] == pytest.approx(1.0) and reduced["rollouts/replayed"] == 2
    assert reduced["late/only_here"] == 7 and reduced["ratio/mean"] == 1.01


def _cut_token_batch():
    """One fresh response: three tokens inside the trainer's top-p set at log w = -0.0012, and one outside it whose
    -inf trainer log-prob was replaced by the engine's (-2.0), as the log-prob pass does."""
    tokens = collate([[5]], [[1, 2, 3, 4]], 0)
    engine = torch.tensor([[-0.5, -0.5, -0.5, -2.0]])
    trainer = torch.tensor([[-0.5012, -0.5012, -0.5012, -2.0]])
    batch = StepBatch(tokens=tokens, behaviour_logp=engine.clone(), rewards=torch.zeros(1),
                      sequence_advantages=torch.zeros(1), is_replay=torch.tensor([False]), versions=torch.zeros(1),
                      proximal_logp=trainer.clone(), trainer_behaviour_logp=trainer.clone())
    return batch, torch.tensor([[False, False, False, True]])


def test_a_token_outside_the_top_p_set_is_no_agreement_in_the_geo_mean_mask():
    """Issue 35 item 2: without the cut flag the geometric mean reads -0.0009 (within verl's 1.001 band): kept. A
    token the trainer gives probability 0 must reject its sequence (verl's veto)."""
    config = _config("rollout.mismatch_mask=geo_mean")
    batch, cut = _cut_token_batch()
    mismatch_correction(config, batch)
    assert batch.is_weights.tolist() == [[1.0, 1.0, 1.0, 1.0]]  # the old reading: perfect agreement on the cut token
    batch, cut = _cut_token_batch()
    mismatch_correction(config, batch, cut=cut)
    assert batch.is_weights.tolist() == [[0.0, 0.0, 0.0, 0.0]]


def test_a_token_outside_the_top_p_set_vetoes_the_sequence_level_is_weight():
    batch, cut = _cut_token_batch()
    mismatch_correction(_config("rollout.is_correction=tis", "rollout.is_level=sequence"), batch, cut=cut)
    assert float(batch.is_weights.max()) < 1e-6  # the product of the ratios is 0 (clamped at exp(-20))


def test_the_cut_flag_is_stored_with_the_group_and_comes_back_on_replay():
    from remix_rft.buffer import RolloutGroup
    from remix_rft.experience import assemble, keep_logprobs

    batch, cut = _cut_token_batch()
    batch.generation_cut = cut
    group = RolloutGroup(version=1, prompt_ids=[5], response_ids=[[1, 2, 3, 4]], behaviour_logprobs=[[-0.5] * 4],
                         rewards=[1.0], advantages=[0.5])
    keep_logprobs(_config(), [group], batch)
    assert group.cut_tokens[0].tolist() == [False, False, False, True]
    restored = RolloutGroup.from_state(group.to_state())
    replayed = assemble([], [restored], 0, torch.device("cpu"))
    assert replayed.generation_cut.tolist() == [[False, False, False, True]]


def test_rejected_tokens_leave_every_term_of_the_update(tmp_path):
    """Issue 35 item 3: a batch in which a mask rejects half the rows updates the policy exactly as the batch of
    the kept rows alone (token-mean loss, KL and entropy): the kept tokens' gradient does not halve."""
    import copy

    from remix_rft.actor import Actor
    from remix_rft.models import load_model
    from remix_rft.schedule import build_schedule

    config = load_config("grpo", ["model.name=tiny-random", "train.minibatch_size=4", "train.prompts_per_step=2",
                                  "train.samples_per_prompt=2", "algorithm.kl_coef=0.1",
                                  "algorithm.entropy_coef=0.01", "train.lr=1e-2", "model.dtype=float32"])
    plan = build_schedule(config).plan(1)
    base = load_model("tiny-random", dtype="float32")
    generator = torch.Generator().manual_seed(0)

    def batch_of(rows):
        prompts = [[5, 6], [7, 8], [9, 10], [11, 12]]
        responses = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10, 11]]
        tokens = collate([prompts[r] for r in rows], [responses[r] for r in rows], 0)
        shape = tokens.response_ids.shape
        logp = torch.full(shape, -1.0)
        advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])[rows]
        return StepBatch(tokens=tokens, behaviour_logp=logp.clone(), rewards=torch.zeros(len(rows)),
                         sequence_advantages=advantages, is_replay=torch.zeros(len(rows), dtype=torch.bool),
                         versions=torch.ones(len(rows)), proximal_logp=logp.clone(), reference_logp=logp - 0.1,
                         advantages=advantages[:, None] * tokens.response_mask)

    torch.manual_seed(int(torch.randint(0, 1000, (1,), generator=generator)))
    rejected = batch_of([0, 1, 2, 3])
    rejected.is_weights = rejected.tokens.response_mask * torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    kept = batch_of([0, 2])
    updates = []
    for batch in (rejected, kept):
        model = copy.deepcopy(base)
        actor = Actor(model, config)
        # one optimizer step over the whole batch: the minibatch is every row
        actor.config.train.minibatch_size = len(batch.tokens)
        actor.update(batch, plan, 1)
        updates.append(model.state_dict())
    for name, value in updates[0].items():
        torch.testing.assert_close(value, updates[1][name], atol=1e-6, rtol=1e-5, msg=name)
