from __future__ import annotations

import random

import pytest
import torch

from remix_rft.batching import (
    TokenBatch,
    collate,
    split_by_token_budget,
    token_logprobs,
    token_values,
)
from remix_rft.models import ValueModel

PAD = 0


def random_rows(seed: int, rows: int, vocab: int = 49152) -> tuple[list[list[int]], list[list[int]]]:
    """Prompts of 1..9 tokens and responses of 0..7 tokens (ids >= 3 so none is pad/bos/eos)."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(1, 9))] for _ in range(rows)]
    responses = [[rng.randrange(3, vocab) for _ in range(rng.randint(0, 7))] for _ in range(rows)]
    responses[0] = [rng.randrange(3, vocab) for _ in range(7)]  # at least one non-empty response
    return prompts, responses


def direct_logprobs(model, batch: TokenBatch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: full-sequence logits, full float32 log_softmax, response positions sliced out."""
    logits = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
    ).logits
    P, R = batch.prompt_length, batch.response_length
    logp_all = torch.log_softmax(logits[:, P - 1 : P + R - 1].float() / temperature, dim=-1)
    logp = logp_all.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1) * batch.response_mask
    entropy = -(logp_all.exp() * logp_all).sum(-1) * batch.response_mask
    return logp, entropy


def test_collate_layout():
    batch = collate([[5, 6, 7], [8]], [[9], [10, 11, 12]], pad_token_id=PAD)
    assert batch.prompt_length == 3 and batch.response_length == 3 and len(batch) == 2
    assert batch.input_ids.tolist() == [[5, 6, 7, 9, PAD, PAD], [PAD, PAD, 8, 10, 11, 12]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 3, 3], [0, 0, 0, 1, 2, 3]]
    assert batch.response_ids.tolist() == [[9, PAD, PAD], [10, 11, 12]]
    assert batch.response_mask.dtype == torch.float32
    assert batch.response_mask.tolist() == [[1, 0, 0], [1, 1, 1]]


def test_collate_rejects_bad_input():
    with pytest.raises(ValueError, match="row 1"):
        collate([[1], []], [[2], [3]], pad_token_id=PAD)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        collate([[1], [2]], [[3]], pad_token_id=PAD)


def test_select_trims_padding_and_keeps_values():
    prompts = [[11, 12, 13, 14], [21], [31, 32]]
    responses = [[15], [22, 23, 24, 25], [33, 34]]
    batch = collate(prompts, responses, pad_token_id=PAD)
    sub = batch.select([1, 2])
    assert sub.prompt_length == 2 and sub.response_length == 4
    assert sub.input_ids.tolist() == [[PAD, 21, 22, 23, 24, 25], [31, 32, 33, 34, PAD, PAD]]
    assert sub.attention_mask.tolist() == [[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
    assert sub.position_ids.tolist() == [[0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 3, 3]]
    assert torch.equal(sub.response_ids, batch.response_ids[[1, 2]])
    # Row 0 alone: no prompt padding to trim, but responses shrink to 1 column.
    only_first = batch.select(torch.tensor([0]))
    assert only_first.input_ids.tolist() == [[11, 12, 13, 14, 15]]
    assert only_first.response_mask.tolist() == [[1.0]]
    assert torch.equal(collate([prompts[2]], [responses[2]], PAD).input_ids, batch.select([2]).input_ids)


@pytest.mark.parametrize("budget", [1, 12, 20, 50, 1000])
def test_split_by_token_budget_respects_budget(budget):
    prompts, responses = random_rows(seed=budget, rows=13)
    batch = collate(prompts, responses, PAD)
    groups = split_by_token_budget(batch, budget)
    assert sorted(row for group in groups for row in group) == list(range(13))
    for group in groups:
        assert group == sorted(group) and len(group) >= 1
        sub = batch.select(group)
        padded_size = len(group) * sub.input_ids.shape[1]
        assert padded_size <= budget or len(group) == 1
    assert split_by_token_budget(batch, None) == [list(range(13))]
    if budget >= 13 * batch.input_ids.shape[1]:
        assert len(groups) == 1


def test_split_by_token_budget_rejects_nonpositive():
    batch = collate([[1]], [[2]], PAD)
    with pytest.raises(ValueError, match="max_tokens"):
        split_by_token_budget(batch, 0)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_token_logprobs_match_direct_computation(tiny_model, temperature):
    prompts, responses = random_rows(seed=1, rows=6)
    batch = collate(prompts, responses, PAD)
    with torch.no_grad():
        logp, entropy = token_logprobs(tiny_model, batch, temperature=temperature, with_entropy=True)
        ref_logp, ref_entropy = direct_logprobs(tiny_model, batch, temperature)
    assert logp.dtype == torch.float32 and logp.shape == batch.response_ids.shape
    assert torch.allclose(logp, ref_logp, atol=1e-5)
    assert torch.allclose(entropy, ref_entropy, atol=1e-4)
    assert torch.all(logp[batch.response_mask == 0] == 0) and torch.all(
        entropy[batch.response_mask == 0] == 0
    )
    assert torch.all(logp[batch.response_mask == 1] < 0)


def test_micro_batching_equals_full_batch(tiny_model):
    prompts, responses = random_rows(seed=2, rows=9)
    batch = collate(prompts, responses, PAD)
    with torch.no_grad():
        full, full_entropy = token_logprobs(tiny_model, batch, with_entropy=True)
        for budget in (1, 16, 40):
            assert len(split_by_token_budget(batch, budget)) > 1
            micro, micro_entropy = token_logprobs(tiny_model, batch, with_entropy=True, max_tokens=budget)
            assert (micro - full).abs().max() < 1e-5
            assert (micro_entropy - full_entropy).abs().max() < 1e-4


def test_token_logprobs_keeps_autograd_with_finite_gradients(tiny_model):
    prompts, responses = random_rows(seed=3, rows=5)
    batch = collate(prompts, responses, PAD)
    logp, entropy = token_logprobs(tiny_model, batch, with_entropy=True, max_tokens=30)
    assert logp.requires_grad and entropy.requires_grad
    (logp.sum() + entropy.sum()).backward()
    grads = [p.grad for p in tiny_model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    with torch.no_grad():
        assert not token_logprobs(tiny_model, batch)[0].requires_grad


def test_token_logprobs_with_only_empty_responses(tiny_model):
    batch = collate([[5, 6], [7]], [[], []], PAD)
    logp, entropy = token_logprobs(tiny_model, batch, with_entropy=True)
    assert logp.shape == (2, 0) and entropy.shape == (2, 0)


def test_token_values_read_positions_and_micro_batching(tiny_model):
    critic = ValueModel.from_pretrained_lm(tiny_model)
    torch.nn.init.normal_(critic.value_head.weight, std=0.5)
    prompts, responses = random_rows(seed=4, rows=7)
    batch = collate(prompts, responses, PAD)
    with torch.no_grad():
        values = token_values(critic, batch)
        micro = token_values(critic, batch, max_tokens=20)
        everywhere = critic(batch.input_ids, batch.attention_mask, batch.position_ids)
    P, R = batch.prompt_length, batch.response_length
    assert values.shape == (7, R) and values.dtype == torch.float32
    assert torch.allclose(values, everywhere[:, P - 1 : P + R - 1] * batch.response_mask, atol=1e-5)
    assert (micro - values).abs().max() < 1e-5
    assert torch.all(values[batch.response_mask == 0] == 0)


def _grads_of(model, batch, chunk_tokens, temperature, weights):
    model.zero_grad(set_to_none=True)
    logp, entropy = token_logprobs(model, batch, temperature, with_entropy=True, chunk_tokens=chunk_tokens)
    ((logp * weights[0]).sum() + (entropy * weights[1]).sum()).backward()
    return logp.detach(), entropy.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_equal_plain_path_in_values_and_gradients(tiny_model, temperature):
    """The lean path (head on response tokens, 3 at a time, recomputed in backward) vs the plain full-logits path:
    same log-probs, entropies and parameter gradients (through both the log-prob and the entropy terms)."""
    tiny_model.train()
    prompts, responses = random_rows(seed=5, rows=6)
    batch = collate(prompts, responses, PAD)
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(2, *batch.response_ids.shape, generator=generator)
    plain = _grads_of(tiny_model, batch, None, temperature, weights)
    lean = _grads_of(tiny_model, batch, 3, temperature, weights)
    assert torch.allclose(lean[0], plain[0], atol=1e-5) and torch.allclose(lean[1], plain[1], atol=1e-5)
    for name, grad in plain[2].items():
        scale = grad.abs().max().clamp(min=1e-6)
        assert (lean[2][name] - grad).abs().max() / scale < 1e-4, name


def test_chunked_logprobs_under_bf16_autocast_match_plain_path(tiny_model):
    prompts, responses = random_rows(seed=6, rows=5)
    batch = collate(prompts, responses, PAD)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        lean, lean_entropy = token_logprobs(tiny_model, batch, with_entropy=True, chunk_tokens=4)
        plain, plain_entropy = token_logprobs(tiny_model, batch, with_entropy=True, chunk_tokens=None)
    # both run the head's matmul in bf16 on the same bf16 inputs; only the summation order differs
    assert (lean - plain).abs().max() < 2e-2 and (lean_entropy - plain_entropy).abs().max() < 2e-2


def test_chunked_logprobs_function_against_log_softmax():
    from remix_rft.logprobs import chunked_logprobs

    generator = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(8, 11, bias=True)
    hidden = torch.randn(7, 8, generator=generator, requires_grad=True)
    targets = torch.randint(0, 11, (7,), generator=generator)
    logp, entropy = chunked_logprobs(hidden, head, targets, temperature=0.5, chunk_tokens=2, with_entropy=True)
    log_softmax = torch.log_softmax(head(hidden) / 0.5, dim=-1)
    expected = log_softmax.gather(-1, targets[:, None]).squeeze(-1)
    expected_entropy = -(log_softmax.exp() * log_softmax).sum(-1)
    assert torch.allclose(logp, expected, atol=1e-6) and torch.allclose(entropy, expected_entropy, atol=1e-6)
    ours = torch.autograd.grad((logp * 2 + entropy * 3).sum(), [hidden, head.weight, head.bias])
    theirs = torch.autograd.grad((expected * 2 + expected_entropy * 3).sum(), [hidden, head.weight, head.bias])
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16])
def test_head_backward_in_vocabulary_slices_is_exact_to_its_precision_without_whole_vocabulary_copies(
        monkeypatch, compute_dtype):
    """The head's backward runs its matmuls over vocabulary slices (ragged here: 16, 16, 16, 16, 5 of V=69): its
    gradients match float64 autograd through the plain head to the compute precision, and neither a bf16
    [chunk, V] buffer (the logits' product, the gradient's copy) nor a [V, H] weight-gradient product is allocated."""
    from torch.profiler import ProfilerActivity, profile

    from remix_rft import logprobs

    monkeypatch.setattr(logprobs, "HEAD_VOCAB_SLICE", 16)
    generator = torch.Generator().manual_seed(2)
    vocab, width, rows, chunk = 69, 24, 16, 6  # chunks of 6, 6, 4 rows
    head = torch.nn.Linear(width, vocab, bias=True)
    with torch.no_grad():  # from the seeded generator, not the global one
        head.weight.copy_(torch.randn(vocab, width, generator=generator) / width**0.5)
        head.bias.copy_(torch.randn(vocab, generator=generator) / 10)
    hidden = torch.randn(rows, width, generator=generator, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    g_logp, g_entropy = torch.randn(2, rows, generator=generator, dtype=torch.float64)
    bf16 = compute_dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logp, entropy = logprobs.chunked_logprobs(hidden, head, targets, chunk_tokens=chunk, with_entropy=True)
    params = [hidden, head.weight, head.bias]
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        ours = torch.autograd.grad((logp * g_logp.float() + entropy * g_entropy.float()).sum(), params)
    exact = [p.detach().double().requires_grad_() for p in params]
    log_softmax = torch.log_softmax(torch.nn.functional.linear(*exact), dim=-1)
    expected = log_softmax.gather(-1, targets[:, None]).squeeze(-1)
    expected_entropy = -(log_softmax.exp() * log_softmax).sum(-1)
    truth = torch.autograd.grad((expected * g_logp + expected_entropy * g_entropy).sum(), exact)
    for name, a, b in zip(("hidden", "weight", "bias"), ours, truth):
        # bf16, over 200 seeds: ours 0.36% on average (at most 0.68%), autograd's own bf16 path 0.34%
        assert (a.double() - b).norm() <= (1.5e-2 if bf16 else 1e-5) * b.norm(), name
    # what each op allocated itself (a matmul's output is its own; a cast's is its aten::empty_strided's)
    sizes = [e.self_cpu_memory_usage for e in prof.events() if (e.self_cpu_memory_usage or 0) > 0]
    assert sizes.count(vocab * width * 4) == 1  # the weight's float32 gradient, and no float32 [V, H] product
    if bf16:
        assert sizes.count(vocab * width * 2) == 1  # the weight's bf16 copy, and no bf16 [V, H] product
        assert chunk * vocab * 2 not in sizes  # nor a bf16 copy of a chunk's whole gradient


def test_lean_head_only_for_plain_linear_heads(tiny_model):
    from remix_rft.logprobs import lean_head

    assert lean_head(tiny_model) is tiny_model.lm_head
    tiny_model.config.final_logit_softcapping = 30.0  # Gemma-2 style: the head's output is transformed
    assert lean_head(tiny_model) is None
    assert lean_head(torch.nn.Linear(2, 2)) is None


def _tied_weight_backward(model: torch.nn.Module, micro_batches: int = 2) -> tuple[dict[str, torch.Tensor], int]:
    """Gradients of a log-prob + entropy loss through the lean head, accumulated over micro-batches as the actor's
    update does, and how many [vocabulary, hidden] float32 buffers the backward passes allocated."""
    from torch.profiler import ProfilerActivity, profile

    from remix_rft.logprobs import lean_head

    head = lean_head(model)
    full_size = head.weight.numel() * 4
    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for seed in range(micro_batches):
            prompts, responses = random_rows(seed=10 + seed, rows=4)
            batch = collate(prompts, [r + r[:1] for r in responses], PAD)  # a repeated token: its row summed twice
            logp, entropy = token_logprobs(model, batch, with_entropy=True, chunk_tokens=5)
            (-(logp * batch.response_mask).sum() - 0.1 * entropy.sum()).backward()
    allocations = sum(1 for e in prof.events() if e.name in ("aten::empty", "aten::empty_strided")
                      and (e.cpu_memory_usage or 0) >= full_size)
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}, allocations


def test_a_tied_head_and_embedding_accumulate_into_one_gradient_buffer():
    from remix_rft.logprobs import accumulate_tied_grad_in_place
    from remix_rft.models import build_tiny_model

    usual_model, one_buffer_model = build_tiny_model(seed=3).train(), build_tiny_model(seed=3).train()
    assert accumulate_tied_grad_in_place(one_buffer_model)
    usual, usual_buffers = _tied_weight_backward(usual_model)
    one_buffer, buffers = _tied_weight_backward(one_buffer_model)
    assert usual.keys() == one_buffer.keys()
    tied = one_buffer["model.embed_tokens.weight"]
    assert tied.layout == torch.strided and tied.shape == (49152, 64) and tied.dtype == torch.float32
    for name in usual:  # the same sums, added in another order
        torch.testing.assert_close(one_buffer[name], usual[name], rtol=1e-5, atol=1e-7, msg=name)
    # one `.grad`, made by the first micro-batch and added into after; the usual path makes two in every
    # micro-batch (the head's gradient and the embedding's dense one)
    assert buffers == 1 and usual_buffers == 4, (buffers, usual_buffers)
    torch.optim.AdamW(one_buffer_model.parameters(), lr=1e-3, fused=True).step()  # AdamW rejects sparse gradients


def test_accumulating_in_place_leaves_models_without_a_trained_tied_pair_alone():
    from remix_rft.logprobs import TIED_GRAD_IN_PLACE_ATTR, accumulate_tied_grad_in_place
    from remix_rft.models import build_tiny_model

    untied = build_tiny_model(seed=3)
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
    frozen = build_tiny_model(seed=3).requires_grad_(False)  # LoRA: the base, embedding included, does not train
    critic = ValueModel.from_pretrained_lm(build_tiny_model(seed=3))  # a trunk, no head: its gradient stays dense
    for model in (untied, frozen, critic, critic.trunk):
        assert not accumulate_tied_grad_in_place(model)
    for model in (untied, frozen):
        assert not model.get_input_embeddings().sparse
        assert not hasattr(model.get_output_embeddings(), TIED_GRAD_IN_PLACE_ATTR)
    assert not critic.trunk.get_input_embeddings().sparse
