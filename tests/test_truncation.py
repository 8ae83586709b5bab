"""Top-k / top-p in the trainer: log-probs of the sampler's truncated distribution, their gradients (lean chunked
head against plain autograd), tokens outside the truncated set masked out of the loss and counted, and no change
at all when nothing is truncated."""

from __future__ import annotations

import math

import pytest
import torch

from remix_rft.actor import Actor
from remix_rft.batching import collate, token_logprobs
from remix_rft.config import load_config
from remix_rft.experience import StepBatch, compute_advantages, logprob_passes
from remix_rft.logprobs import Truncation, chunked_logprobs, sampling_truncation, truncation_keep_mask
from remix_rft.models import build_tiny_model
from remix_rft.references import FrozenReferences
from remix_rft.schedule import StepPlan

PAD = 0


def random_rows(seed: int, rows: int, vocab: int = 49152) -> tuple[list[list[int]], list[list[int]]]:
    generator = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, vocab, (int(n),), generator=generator).tolist()
               for n in torch.randint(1, 6, (rows,), generator=generator)]
    responses = [torch.randint(1, vocab, (int(n),), generator=generator).tolist()
                 for n in torch.randint(1, 7, (rows,), generator=generator)]
    return prompts, responses


def test_keep_mask_against_hand_computed_sets():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert truncation_keep_mask(logits, 0, 0.75).tolist() == [[True, True, False, False]]  # mass before: 0, .5
    assert truncation_keep_mask(logits, 0, 0.1).tolist() == [[True, False, False, False]]  # the top token stays
    # top-k first, then top-p over the renormalised top 3 (.526, .316, .158): mass before .842 < .9 keeps all 3
    assert truncation_keep_mask(logits, 3, 0.9).tolist() == [[True, True, True, False]]
    # ties at a cut are kept together, whatever order the sort gives them
    assert truncation_keep_mask(torch.tensor([[1.0, 0.0, 1.0]]), 1, 1.0).tolist() == [[True, False, True]]
    assert truncation_keep_mask(torch.tensor([[0.0, 2.0, 2.0, 0.0]]), 0, 0.3).tolist() == [[False, True, True, False]]


def test_nothing_truncated_means_no_truncation():
    assert sampling_truncation(0, 1.0) is None
    assert sampling_truncation(5, 1.0) == Truncation(5, 1.0)
    with pytest.raises(ValueError, match="top_p"):
        sampling_truncation(0, 0.0)


def _reference(hidden, head, targets, temperature, truncation):
    """Plain autograd: log_softmax over the kept set (-inf elsewhere) and that distribution's entropy."""
    z = head(hidden) / temperature
    kept = truncation_keep_mask(z, truncation.top_k, truncation.top_p)
    log_p = torch.log_softmax(z.masked_fill(~kept, float("-inf")), dim=-1)
    entropy = -(log_p.exp() * torch.where(kept, log_p, 0.0)).sum(-1)
    return log_p.gather(-1, targets[:, None]).squeeze(-1), entropy


@pytest.mark.parametrize("truncation", [Truncation(0, 0.7), Truncation(5, 0.9), Truncation(4, 1.0)])
def test_truncated_chunked_logprobs_values_and_gradients_match_autograd(truncation):
    generator = torch.Generator().manual_seed(3)
    head = torch.nn.Linear(8, 13, bias=True)
    hidden = torch.randn(9, 8, generator=generator, requires_grad=True)
    with torch.no_grad():
        z = head(hidden) / 0.7
        kept = truncation_keep_mask(z, truncation.top_k, truncation.top_p)
        # half the targets inside the kept set, half outside
        targets = torch.where(torch.arange(9) % 2 == 0, z.argmax(-1), z.argmin(-1))
    inside = kept.gather(-1, targets[:, None]).squeeze(-1)
    assert inside.any() and not inside.all()
    logp, entropy = chunked_logprobs(hidden, head, targets, temperature=0.7, chunk_tokens=2, with_entropy=True,
                                     truncation=truncation)
    ref_logp, ref_entropy = _reference(hidden, head, targets, 0.7, truncation)
    assert torch.equal(torch.isneginf(logp), ~inside) and torch.equal(torch.isneginf(ref_logp), ~inside)
    assert torch.allclose(logp[inside], ref_logp[inside], atol=1e-6)
    assert torch.allclose(entropy, ref_entropy, atol=1e-6)
    weights = torch.randn(2, 9, generator=generator)
    params = [hidden, head.weight, head.bias]
    # an outside target's -inf is a constant: whatever weight it gets, no gradient comes from it
    ours = torch.autograd.grad((torch.where(inside, logp * weights[0], 0.0) + entropy * weights[1]).sum(), params)
    theirs = torch.autograd.grad((torch.where(inside, ref_logp * weights[0], 0.0) + ref_entropy * weights[1]).sum(),
                                 params)
    for a, b in zip(ours, theirs):
        assert torch.isfinite(a).all() and torch.allclose(a, b, atol=1e-5)
    logp, entropy = chunked_logprobs(hidden, head, targets, 0.7, 2, True, truncation)
    loud = torch.autograd.grad([logp, entropy], params, grad_outputs=[torch.where(inside, weights[0], 7.0),
                                                                       weights[1]])
    for a, b in zip(loud, ours):
        assert torch.allclose(a, b, atol=1e-6)


def _grads_of(model, batch, chunk_tokens, truncation, weights):
    model.zero_grad(set_to_none=True)
    logp, entropy = token_logprobs(model, batch, 0.8, with_entropy=True, chunk_tokens=chunk_tokens,
                                   truncation=truncation)
    inside = torch.isfinite(logp)
    (torch.where(inside, logp * weights[0], 0.0).sum() + (entropy * weights[1]).sum()).backward()
    return logp.detach(), entropy.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_truncated_lean_path_equals_plain_path_on_the_model(tiny_model):
    """The lean chunked head and the plain full-logits path agree on the truncated distribution: the same tokens
    fall outside it (-inf), the same log-probs, entropies and parameter gradients."""
    tiny_model.train()
    batch = collate(*random_rows(seed=5, rows=6), PAD)
    weights = torch.randn(2, *batch.response_ids.shape, generator=torch.Generator().manual_seed(0))
    truncation = Truncation(0, 0.9)
    plain = _grads_of(tiny_model, batch, None, truncation, weights)
    lean = _grads_of(tiny_model, batch, 3, truncation, weights)
    outside = torch.isneginf(plain[0])
    assert outside.any() and torch.equal(torch.isneginf(lean[0]), outside)
    assert torch.allclose(lean[0][~outside], plain[0][~outside], atol=1e-5)
    assert torch.allclose(lean[1], plain[1], atol=1e-5)
    for name, grad in plain[2].items():
        assert torch.isfinite(lean[2][name]).all(), name
        scale = grad.abs().max().clamp(min=1e-6)
        assert (lean[2][name] - grad).abs().max() / scale < 1e-4, name
    # the truncated distribution is renormalised: a kept token's log-prob is above its full-distribution one
    with torch.no_grad():
        full, _ = token_logprobs(tiny_model, batch, 0.8)
    inside = ~outside & (batch.response_mask > 0)
    assert (lean[0][inside] > full[inside]).all()


@pytest.mark.parametrize("chunk_tokens", [None, 4])
def test_a_truncation_that_cuts_nothing_is_bit_identical_to_none(tiny_model, chunk_tokens):
    batch = collate(*random_rows(seed=7, rows=4), PAD)
    vocab = tiny_model.config.vocab_size
    with torch.no_grad():
        base = token_logprobs(tiny_model, batch, 0.7, with_entropy=True, chunk_tokens=chunk_tokens)
        noop = token_logprobs(tiny_model, batch, 0.7, with_entropy=True, chunk_tokens=chunk_tokens,
                              truncation=Truncation(top_k=vocab, top_p=1.0))
    assert torch.equal(base[0], noop[0]) and torch.equal(base[1], noop[1])


def _outside_batch(model, config_overrides):
    """Two responses of two tokens each: the most likely next token, then the least likely one (outside any top-p
    set below 1), scored by the sampler with made-up finite log-probs."""
    config = load_config(None, ["model.name=tiny-random", "train.prompts_per_step=1", "train.samples_per_prompt=2",
                                "train.minibatch_size=2", "algorithm.kl_coef=0.001", "remix.enabled=false",
                                "algorithm.entropy_coef=0.01", "rollout.top_p=0.5", *config_overrides])
    prompts = [[11, 12, 13], [14, 15]]
    responses = []
    with torch.no_grad():
        for prompt in prompts:
            first = int(model(input_ids=torch.tensor([prompt])).logits[0, -1].argmax())
            last = int(model(input_ids=torch.tensor([prompt + [first]])).logits[0, -1].argmin())
            responses.append([first, last])
    tokens = collate(prompts, responses, PAD)
    batch = StepBatch(tokens=tokens, behaviour_logp=torch.full((2, 2), -3.0), rewards=torch.tensor([1.0, 0.0]),
                      sequence_advantages=torch.tensor([1.0, -1.0]), is_replay=torch.zeros(2, dtype=torch.bool),
                      versions=torch.ones(2), trainer_behaviour_logp=torch.zeros(2, 2))  # step 1's own
    return config, batch


@pytest.mark.parametrize("overrides", [[], ["rollout.behaviour_logprobs=engine", "rollout.is_correction=tis"]])
def test_a_token_outside_the_truncated_set_is_masked_and_counted(overrides):
    model = build_tiny_model(seed=0)
    config, batch = _outside_batch(model, overrides)
    plan = StepPlan(step=1, phase="on-policy", offpolicy_fraction=0.0, updates_per_batch=1, kl_convex_weight=1.0,
                    reincarnate=False, fresh_prompts=1, replay_prompts=0)
    references = FrozenReferences(model, config)
    metrics = logprob_passes(config, batch, plan, model, references, None)
    assert metrics["truncation/masked_share"] == 0.5 and metrics["truncation/fresh_masked_share"] == 0.5
    assert "truncation/replay_masked_share" not in metrics
    # the second token of each row leaves the loss; its pi_k log-prob is the behaviour's stand-in, finite
    assert torch.equal(batch.is_weights > 0, torch.tensor([[True, False], [True, False]]))
    assert torch.isfinite(batch.proximal_logp).all() and (batch.proximal_logp[:, 1] == -3.0).all()
    assert math.isfinite(metrics["kl/base"]) and math.isfinite(metrics["entropy"])
    compute_advantages(config, batch, plan)
    actor = Actor(model, config)
    before = [p.detach().clone() for p in model.parameters()]
    update = actor.update(batch, plan, step=1)
    assert update["optimizer_steps"] == 1 and update["skipped_updates"] == 0
    assert math.isfinite(update["loss/policy"]) and math.isfinite(update["grad_norm"])
    assert math.isfinite(update["loss/kl"])
    # the cut tokens left every term of the update (issue 35 item 3), so the in-update share counts the kept ones
    assert update["truncation/update_masked_share"] == 0.0
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_a_pipelined_response_outside_its_snapshots_truncated_set_is_masked():
    """A response generated one version earlier (pipelined) carries its snapshot's log-probs; a token that set
    truncated away (-inf) leaves the loss like pi_k's own, with the sampler's log-prob as its finite stand-in."""
    model = build_tiny_model(seed=0)
    config, batch = _outside_batch(model, [])
    batch.versions = torch.zeros(2)  # generated by the weights before step 1's: stale by one version
    batch.trainer_behaviour_logp = torch.tensor([[-0.5, -float("inf")], [-0.7, -1.5]])
    plan = StepPlan(step=1, phase="on-policy", offpolicy_fraction=0.0, updates_per_batch=1, kl_convex_weight=1.0,
                    reincarnate=False, fresh_prompts=1, replay_prompts=0)
    metrics = logprob_passes(config, batch, plan, model, FrozenReferences(model, config), None)
    # pi_k cuts the second token of both rows (as above); the snapshot's -inf falls on one of them
    assert torch.equal(batch.is_weights > 0, torch.tensor([[True, False], [True, False]]))
    assert torch.isfinite(batch.behaviour_logp).all()
    assert batch.behaviour_logp[0, 0] == -0.5 and batch.behaviour_logp[1, 1] == -1.5  # the snapshot's, kept
    assert batch.behaviour_logp[0, 1] == -3.0  # the sampler's stand-in for the snapshot's -inf
    # what the mismatch corrections and a later replay count as cut is the generating snapshot's own cut only (row
    # 0's second token), not the current pi_k's (both rows' second tokens leave this step's loss either way)
    assert batch.generation_cut.tolist() == [[False, True], [False, False]]
    assert metrics["truncation/masked_share"] == 0.5


@pytest.mark.parametrize("precedent", ["lagged", "proximal"])
def test_kl_metrics_read_zero_at_step_one_under_top_p(tmp_path, precedent):
    """Issue 35 item 4: at step 1 the policy is the base model, so KL(pi_k || pi_base) is 0; comparing the top-p
    truncated pi_k with the untruncated reference read a floor (0.0054 with top_p = 0.9), as large as the adaptive
    trigger's tuned range. The metrics now take pi_k's untruncated log-probs."""
    import sys
    from pathlib import Path

    from remix_rft.trainer import Trainer

    sys.path.insert(0, str(Path(__file__).parent))
    from test_trainer import tiny_config

    config = tiny_config(tmp_path, "remix-grpo", "rollout.top_p=0.9", "model.dtype=float32",
                         "model.frozen_dtype=float32", f"remix.precedent={precedent}", "remix.kl_convex_start=0",
                         "remix.kl_convex_interval=1", "eval.before_training=false", "eval.after_training=false")
    trainer = Trainer(config)
    try:
        record = trainer.train_step(1)
    finally:
        trainer.close()
    assert record["truncation/masked_share"] >= 0 and abs(record["kl/base"]) < 1e-6
    if precedent == "lagged":  # the lagged copy holds the start weights at step 1 too
        assert abs(record["kl/precedent"]) < 1e-6
