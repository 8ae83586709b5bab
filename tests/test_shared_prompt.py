"""train.shared_prompt_forward (issue 36): rows that repeat a prompt (a GRPO group's samples) run it once, through
the model's KV cache with autograd kept. The same log-probs, entropies and parameter gradients as the plain forward
(float32: within 1e-5; bf16: within the bound the plain path's own bf16 test uses), where it falls back to the
plain forward, the alarm for a layer that drops the cache, and a training run that matches the plain one."""

from __future__ import annotations

import random

import pytest
import torch

from remix_rft import batching
from remix_rft.batching import collate, shared_prompt_rows, token_logprobs
from remix_rft.logprobs import sampling_truncation
from remix_rft.models import build_tiny_model, enable_activation_checkpointing
from remix_rft.trainer import run_training
from test_trainer import _comparable, read_lines, tiny_config

PAD = 0


def grouped_rows(seed: int, prompts: int, samples: int, vocab: int = 49152):
    """`prompts` prompts of 1..9 tokens (the first of 1: its prefix is all padding), each repeated for `samples`
    responses of 0..7 tokens (one of 7 at least)."""
    rng = random.Random(seed)
    distinct = [[rng.randrange(3, vocab) for _ in range(rng.randint(2, 9))] for _ in range(prompts)]
    distinct[0] = distinct[0][:1]
    prompt_ids = [prompt for prompt in distinct for _ in range(samples)]
    responses = [[rng.randrange(3, vocab) for _ in range(rng.randint(0, 7))] for _ in prompt_ids]
    responses[0] = [rng.randrange(3, vocab) for _ in range(7)]
    order = list(range(len(prompt_ids)))
    rng.shuffle(order)  # a minibatch holds a group's rows anywhere, not side by side
    return [prompt_ids[i] for i in order], [responses[i] for i in order]


def _run(model, batch, share, weights=None, **kwargs):
    model.zero_grad(set_to_none=True)
    logp, entropy = token_logprobs(model, batch, with_entropy=True, share_prompts=share, **kwargs)
    if weights is None:
        return logp.detach(), entropy.detach(), None
    ((logp * weights[0]).sum() + (entropy * weights[1]).sum()).backward()
    return logp.detach(), entropy.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _decoder_calls(model) -> list[int]:
    calls = []
    model.get_decoder().register_forward_hook(lambda module, args, output: calls.append(1))
    return calls


def test_shared_prompt_rows_by_hand():
    a, b, c = [5, 6, 7], [8, 9], [5, 6, 7, 4]
    batch = collate([a, b, a, c, a, b], [[11], [12, 13], [14], [15], [], [16]], PAD)
    first, inverse = shared_prompt_rows(batch)
    # the prefix is the prompt without its last token: `c` shares a's first tokens but not a's padding, so not a's
    assert len(first) == 3
    assert inverse[0] == inverse[2] == inverse[4] and inverse[1] == inverse[5]
    assert len({int(inverse[0]), int(inverse[1]), int(inverse[3])}) == 3
    assert sorted(first.tolist()) == [0, 1, 3]  # the first row of each prompt stands for it
    assert all(first[inverse[row]] <= row for row in range(6))
    # nothing to share: distinct prompts, or one-token prompts (no prefix before the last prompt token)
    assert shared_prompt_rows(collate([a, b, c], [[1], [2], [3]], PAD)) is None
    assert shared_prompt_rows(collate([[5], [5], [5]], [[1], [2], [3]], PAD)) is None


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 1.0), (0.7, 0.9)])
def test_equal_to_the_plain_forward_in_values_and_gradients(temperature, top_p):
    model = build_tiny_model(seed=0).train()
    prompts, responses = grouped_rows(seed=1, prompts=4, samples=3)
    batch = collate(prompts, responses, PAD)
    weights = torch.randn(2, *batch.response_ids.shape, generator=torch.Generator().manual_seed(0))
    options = dict(temperature=temperature, chunk_tokens=5, truncation=sampling_truncation(0, top_p))
    calls = _decoder_calls(model)
    plain = _run(model, batch, False, weights, **options)
    assert len(calls) == 1
    shared = _run(model, batch, True, weights, **options)
    assert len(calls) == 3  # the distinct prompts' prefixes, then every row's own positions
    kept = torch.isfinite(plain[0])  # top-p: a target outside the truncated set is -inf on both paths
    assert torch.equal(kept, torch.isfinite(shared[0]))
    assert (shared[0][kept] - plain[0][kept]).abs().max() < 1e-5
    assert (shared[1] - plain[1]).abs().max() < 1e-5
    for name, grad in plain[2].items():
        scale = grad.abs().max().clamp(min=1e-6)
        assert (shared[2][name] - grad).abs().max() / scale < 1e-4, name


def test_micro_batches_split_groups_and_still_match():
    """A token budget splits a group's rows over micro-batches: each shares what it holds."""
    model = build_tiny_model(seed=2).eval()
    prompts, responses = grouped_rows(seed=3, prompts=3, samples=4)
    batch = collate(prompts, responses, PAD)
    with torch.no_grad():
        plain = _run(model, batch, False, max_tokens=40)
        shared = _run(model, batch, True, max_tokens=40)
    assert len(batching.split_by_token_budget(batch, 40)) > 1
    assert (shared[0] - plain[0]).abs().max() < 1e-5 and (shared[1] - plain[1]).abs().max() < 1e-5


def test_under_bf16_autocast_within_the_plain_paths_bf16_bound():
    model = build_tiny_model(seed=4).eval()
    prompts, responses = grouped_rows(seed=5, prompts=3, samples=4)
    batch = collate(prompts, responses, PAD)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = _run(model, batch, False)
        shared = _run(model, batch, True)
    # the bound of test_batching's bf16 lean-vs-plain test: bf16 matmuls on the same inputs, other summation orders
    assert (shared[0] - plain[0]).abs().max() < 2e-2 and (shared[1] - plain[1]).abs().max() < 2e-2


def test_activation_checkpointing_in_training_runs_the_plain_forward():
    """transformers drops the cache inside checkpointed layers in training mode: the plain forward runs there."""
    model = build_tiny_model(seed=0)
    enable_activation_checkpointing(model)
    model.train()
    prompts, responses = grouped_rows(seed=1, prompts=2, samples=3)
    batch = collate(prompts, responses, PAD)
    calls = _decoder_calls(model)
    weights = torch.ones(2, *batch.response_ids.shape)
    checkpointed = _run(model, batch, True, weights)
    assert len(calls) == 1
    model.eval()  # no recomputation in eval mode: shared again
    with torch.no_grad():
        shared = _run(model, batch, True)
    assert len(calls) == 3
    assert (shared[0] - checkpointed[0]).abs().max() < 1e-5


def test_a_layer_that_drops_the_cache_is_an_error_not_a_prompt_less_forward():
    model = build_tiny_model(seed=0).eval()
    prompts, responses = grouped_rows(seed=1, prompts=2, samples=3)
    batch = collate(prompts, responses, PAD)
    seen = []

    def forget_own_positions_on_second_call(module, args, kwargs, output):
        seen.append(1)
        if len(seen) == 2:  # the rows' own positions: the layer leaves the cache as the prompt's alone
            cache = next(v for k, v in kwargs.items() if k in ("cache", "past_key_values", "past_key_value"))
            layer, cut = cache.layers[1], batch.prompt_length - 1
            layer.keys, layer.values = layer.keys[:, :, :cut], layer.values[:, :, :cut]
        return output

    model.get_decoder().layers[1].register_forward_hook(forget_own_positions_on_second_call, with_kwargs=True)
    with torch.no_grad(), pytest.raises(RuntimeError, match="did not use the prompt's KV cache"):
        token_logprobs(model, batch, share_prompts=True)


def test_a_cache_that_is_not_plain_keys_and_values_falls_back_once(monkeypatch, caplog):
    model = build_tiny_model(seed=0).eval()
    prompts, responses = grouped_rows(seed=1, prompts=2, samples=3)
    batch = collate(prompts, responses, PAD)
    with torch.no_grad():
        plain = _run(model, batch, False)
        monkeypatch.setattr(batching, "_plain_kv_cache", lambda cache, length: False)
        calls = _decoder_calls(model)
        first = _run(model, batch, True)
        again = _run(model, batch, True)
    assert len(calls) == 3  # the prefix forward once, then the plain forward each time; no more prefix forwards
    assert "not plain per-layer keys / values" in caplog.text
    assert torch.equal(first[0], plain[0]) and torch.equal(again[0], plain[0])


def test_an_fsdp_sharded_update_runs_the_plain_forward_and_its_no_grad_passes_share(monkeypatch):
    """Under FSDP2 each layer call of a forward with autograd all-gathers its shards: ranks that share (two calls a
    layer) and ranks that do not would pair their collectives wrongly, so the update's forward never shares there.
    The no-grad passes run on gathered parameters (no collectives) and share."""
    model = build_tiny_model(seed=0).train()
    monkeypatch.setattr(batching, "_fsdp_sharded", lambda module: True)
    prompts, responses = grouped_rows(seed=1, prompts=2, samples=3)
    batch = collate(prompts, responses, PAD)
    calls = _decoder_calls(model)
    _run(model, batch, True, torch.ones(2, *batch.response_ids.shape))
    assert len(calls) == 1
    with torch.no_grad():
        _run(model, batch, True)
    assert len(calls) == 3


def test_probe_forwards_are_not_counted_as_training_work():
    from remix_rft.batching import DECODER_TOKENS

    model = build_tiny_model(seed=0).eval()
    prompts, responses = grouped_rows(seed=1, prompts=2, samples=3)
    batch = collate(prompts, responses, PAD)
    before = DECODER_TOKENS.snapshot()
    with torch.no_grad(), DECODER_TOKENS.excluded():
        token_logprobs(model, batch)
    assert DECODER_TOKENS.since(before) == (0, 0)
    with torch.no_grad():
        token_logprobs(model, batch)
    assert DECODER_TOKENS.since(before)[0] > 0


def test_a_training_run_matches_the_plain_forward(tmp_path):
    """remix-grpo on the tiny model, 3 steps (fresh and replayed groups, two update passes), float32: the same
    metrics with the shared prompt forward as without, to float rounding."""
    overrides = ["train.steps=3", "model.dtype=float32", "remix.offpolicy_fraction=0.5", "remix.kl_convex_start=1",
                 "remix.kl_convex_interval=1"]
    from remix_rft.batching import DECODER_TOKENS

    counted = DECODER_TOKENS.snapshot()
    shared = run_training(tiny_config(tmp_path / "a", "remix-grpo", *overrides))
    shared_tokens, counted = DECODER_TOKENS.since(counted), DECODER_TOKENS.snapshot()
    plain = run_training(tiny_config(tmp_path / "b", "remix-grpo", *overrides, "train.shared_prompt_forward=false"))
    plain_tokens = DECODER_TOKENS.since(counted)
    # both the no-grad passes and the update ran fewer decoder tokens: the shared path was taken in each
    assert shared_tokens[0] < plain_tokens[0] and shared_tokens[1] < plain_tokens[1]
    for a, b in zip(_comparable(read_lines(shared.run_dir, "train")), _comparable(read_lines(plain.run_dir, "train")),
                    strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, float):
                assert value == pytest.approx(b[key], rel=1e-3, abs=1e-5), key
            else:
                assert value == b[key], key
