from __future__ import annotations

import pytest
import torch
from torch import nn

from remix_rft.batching import collate, token_logprobs
from remix_rft.logprobs import sampling_truncation
from remix_rft.models import DEFAULT_MODEL, autocast_context, load_model
from remix_rft.rollout import HFRolloutEngine, Rollout, RolloutEngine, SamplingParams, build_engine
from remix_rft.rollout.hf import filter_top_k_top_p

PROMPTS = [
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "Hi",
    "A noticeably longer prompt, so that the shorter ones in the batch get left padding.",
]


def bias_towards_eos(model, eos_id: int, logit_bias: float) -> None:
    """Give the LM head a bias on EOS so random tiny models stop early in some samples (not all)."""
    head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.get_output_embeddings().weight)
        head.bias.zero_()
        head.bias[eos_id] = logit_bias
    model.lm_head = head


def behaviour_matrix(rollouts: list[Rollout], width: int) -> torch.Tensor:
    out = torch.zeros(len(rollouts), width)
    for row, rollout in enumerate(rollouts):
        out[row, : len(rollout.logprobs)] = torch.tensor(rollout.logprobs)
    return out


# EOS biases chosen so EOS has roughly a 10% chance a step: some samples stop, some run out of tokens.
# Near-uniform logits over 49k tokens need ~ln(4900)*T; after top-k=50 truncation ~ln(5.5) suffices.
@pytest.mark.parametrize(
    ("temperature", "top_p", "top_k", "eos_bias"),
    [(0.7, 0.9, 0, 0.7 * 8.5), (1.0, 0.8, 50, 1.7), (1.0, 1.0, 0, 8.5)],
    ids=["t0.7-top_p0.9", "t1.0-top_p0.8-top_k50", "t1.0-untruncated"],
)
def test_behaviour_logprobs_match_teacher_forced(tokenizer, tiny_model, temperature, top_p, top_k, eos_bias):
    bias_towards_eos(tiny_model, tokenizer.eos_token_id, logit_bias=eos_bias)
    engine = HFRolloutEngine(tiny_model, tokenizer, max_batch_size=5)
    sampling = SamplingParams(max_new_tokens=16, temperature=temperature, top_p=top_p, top_k=top_k, seed=7)
    rollouts = engine.generate(PROMPTS, samples_per_prompt=4, sampling=sampling)

    assert {r.finish_reason for r in rollouts} == {"eos", "length"}
    batch = collate(
        [r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts], tokenizer.pad_token_id
    )
    assert len({len(r.prompt_ids) for r in rollouts}) == 3  # left padding is exercised
    # the engine's log-probs are those of the truncated, renormalised distribution it drew from; so are the
    # trainer's with the sampler's truncation, on the lean chunked head and on the plain path alike
    truncation = sampling_truncation(top_k, top_p)
    behaviour = behaviour_matrix(rollouts, batch.response_length)
    with torch.no_grad():
        for kwargs in ({}, {"max_tokens": 64}, {"chunk_tokens": None}):
            teacher_forced, _ = token_logprobs(tiny_model, batch, temperature=temperature, truncation=truncation,
                                               **kwargs)
            assert (teacher_forced - behaviour).abs().max() < 1e-4
        full, _ = token_logprobs(tiny_model, batch, temperature=temperature)
    if truncation is not None:  # renormalised over fewer tokens: above the full distribution's
        assert (behaviour - full)[batch.response_mask > 0].min() > 1e-3


def test_finish_reasons_lengths_and_grouped_order(tokenizer, tiny_model):
    eos = tokenizer.eos_token_id
    bias_towards_eos(tiny_model, eos, logit_bias=8.5)
    engine = HFRolloutEngine(tiny_model, tokenizer, max_batch_size=4)
    rollouts = engine.generate(
        PROMPTS, samples_per_prompt=3, sampling=SamplingParams(max_new_tokens=12, seed=4)
    )
    assert [(r.prompt_index, r.sample_index) for r in rollouts] == [
        (p, s) for p in range(3) for s in range(3)
    ]
    for rollout in rollouts:
        assert (
            rollout.prompt_ids == tokenizer(PROMPTS[rollout.prompt_index], add_special_tokens=False).input_ids
        )
        assert 1 <= rollout.num_tokens <= 12
        assert len(rollout.logprobs) == rollout.num_tokens
        assert eos not in rollout.response_ids[:-1]
        if rollout.finish_reason == "eos":
            assert rollout.response_ids[-1] == eos
        else:
            assert rollout.finish_reason == "length" and rollout.num_tokens == 12
        assert rollout.text == tokenizer.decode(rollout.response_ids, skip_special_tokens=True)
        assert "<|im_end|>" not in rollout.text
    assert {r.finish_reason for r in rollouts} == {"eos", "length"}


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16"])
def test_finished_rows_leaving_the_batch_change_no_token(tokenizer, tiny_model, bf16, monkeypatch):
    """Compaction (finished rows leave the decode batch) against the plain loop that decodes every row to the end:
    the same tokens, and log-probs within float noise (float32) or bf16's rounding of another batch shape."""
    from transformers.cache_utils import DynamicCache

    selections = []
    select = DynamicCache.batch_select_indices
    monkeypatch.setattr(DynamicCache, "batch_select_indices",
                        lambda cache, indices: (selections.append(len(indices)), select(cache, indices)))
    bias_towards_eos(tiny_model, tokenizer.eos_token_id, logit_bias=8.5)
    sampling = SamplingParams(max_new_tokens=16, temperature=0.9, seed=11)
    compacted = HFRolloutEngine(tiny_model, tokenizer, autocast_bf16=bf16).generate(PROMPTS, 6, sampling)
    shrinks = list(selections)
    assert len(shrinks) >= 2 and shrinks == sorted(shrinks, reverse=True)  # the batch shrank, step by step
    plain = HFRolloutEngine(tiny_model, tokenizer, autocast_bf16=bf16, compact=False).generate(PROMPTS, 6, sampling)
    assert selections == shrinks  # the plain loop decodes every row to the end
    lengths = sorted(r.num_tokens for r in plain)
    assert lengths[0] < lengths[len(lengths) // 2] < lengths[-1]  # rows stop at many different steps
    same = [a.response_ids == b.response_ids for a, b in zip(compacted, plain)]
    if not bf16:
        assert all(same)
    else:  # another batch shape rounds bf16 matmuls differently: a near-tie may draw another token
        assert sum(same) >= 0.8 * len(same)
    gap = max(max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs))
              for a, b, equal in zip(compacted, plain, same) if equal)
    assert gap < (0.05 if bf16 else 1e-5)


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "no-compact"])
@pytest.mark.parametrize("greedy", [False, True], ids=["sampled", "greedy"])
def test_preallocated_cache_changes_no_token(tokenizer, tiny_model, greedy, compact, monkeypatch):
    """The loop's preallocated KV cache against transformers' DynamicCache (`preallocate=False`, the loop before
    issue 36): the same tokens and log-probs, with rows stopping at different steps and leaving the batch."""
    from transformers.cache_utils import DynamicCache

    from remix_rft.rollout import hf

    preallocated, selections = [], []
    preallocate = hf.preallocate_cache
    monkeypatch.setattr(hf, "preallocate_cache",
                        lambda cache, capacity: preallocated.append(preallocate(cache, capacity)) or preallocated[-1])
    select = DynamicCache.batch_select_indices
    monkeypatch.setattr(DynamicCache, "batch_select_indices",
                        lambda cache, indices: (selections.append(len(indices)), select(cache, indices)))
    prompts = PROMPTS + [f"Question {i}: what is {i} times {i + 3}?" for i in range(6)]
    # EOS biases under which rows stop anywhere from the first step to the last (greedy: one row per prompt)
    bias_towards_eos(tiny_model, tokenizer.eos_token_id, logit_bias=1.0 if greedy else 8.0)
    sampling = SamplingParams(max_new_tokens=16, temperature=0.9, seed=11, greedy=greedy)
    samples = 1 if greedy else 3
    new = HFRolloutEngine(tiny_model, tokenizer, compact=compact).generate(prompts, samples, sampling)
    assert preallocated == [True] and bool(selections) == compact
    old = HFRolloutEngine(tiny_model, tokenizer, compact=compact, preallocate=False).generate(prompts, samples,
                                                                                          sampling)
    assert preallocated == [True]  # the old path never preallocates
    lengths = sorted(r.num_tokens for r in old)
    assert len(set(lengths)) >= 4 and lengths[-1] == 16  # rows stop at different steps, some run to the end
    assert [r.response_ids for r in new] == [r.response_ids for r in old]
    assert max(max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) for a, b in zip(new, old)) < 1e-5



@pytest.mark.parametrize("compact", [True, False], ids=["compact", "no-compact"])
def test_a_prompts_samples_share_its_prefill_and_no_token_changes(tokenizer, tiny_model, compact):
    """share_prompts (train.shared_prompt_forward): each distinct prompt is prefilled once and its KV cache rows
    and last logits repeated for its samples; the same tokens and log-probs as every row's own prefill."""
    prompts = PROMPTS + [f"Question {i}: what is {i} times {i + 3}?" for i in range(3)]
    bias_towards_eos(tiny_model, tokenizer.eos_token_id, logit_bias=8.0)  # rows stop at different steps
    sampling = SamplingParams(max_new_tokens=12, temperature=0.9, seed=5)
    prefills = []
    tiny_model.register_forward_hook(
        lambda module, args, kwargs, out: prefills.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[1] > 1 else None, with_kwargs=True)
    shared = HFRolloutEngine(tiny_model, tokenizer, compact=compact, with_entropy=True).generate(prompts, 3, sampling)
    plain = HFRolloutEngine(tiny_model, tokenizer, compact=compact, with_entropy=True,
                            share_prompts=False).generate(prompts, 3, sampling)
    assert prefills == [len(prompts), 3 * len(prompts)]
    assert len({r.num_tokens for r in plain}) >= 3
    assert [r.response_ids for r in shared] == [r.response_ids for r in plain]
    assert max(max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) for a, b in zip(shared, plain)) < 1e-5
    assert max(max(abs(x - y) for x, y in zip(a.entropies, b.entropies)) for a, b in zip(shared, plain)) < 1e-5


def test_a_cache_the_prefill_cannot_share_prefills_every_row_from_then_on(tokenizer, tiny_model, monkeypatch):
    """A cache that is not plain keys / values (sliding-window, recurrent): the engine prefills the full batch
    again, the same tokens as without sharing, and stops trying on later calls."""
    from remix_rft.rollout import hf

    monkeypatch.setattr(hf, "repeat_kv_rows", lambda cache, length, inverse: False)
    sampling = SamplingParams(max_new_tokens=6, temperature=0.9, seed=3)
    prefills = []
    tiny_model.register_forward_hook(
        lambda module, args, kwargs, out: prefills.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[1] > 1 else None, with_kwargs=True)
    engine = HFRolloutEngine(tiny_model, tokenizer)
    first = engine.generate(PROMPTS, 2, sampling)
    assert engine.share_prompts is False
    engine.generate(PROMPTS, 2, sampling)
    assert prefills == [len(PROMPTS), 2 * len(PROMPTS), 2 * len(PROMPTS)]
    plain = HFRolloutEngine(tiny_model, tokenizer, share_prompts=False).generate(PROMPTS, 2, sampling)
    assert [r.response_ids for r in first] == [r.response_ids for r in plain]


def test_preallocated_layer_reads_as_a_dynamic_layer():
    """Writes in place, views of the filled part: the same keys, values, lengths and mask sizes as a DynamicLayer
    through a prefill, decode steps, a row selection and a crop."""
    from transformers.cache_utils import DynamicLayer

    from remix_rft.rollout.hf import PreallocatedLayer

    generator = torch.Generator().manual_seed(0)
    states = [torch.randn(4, 2, n, 8, generator=generator) for n in (5, 1, 1, 1)]
    dynamic = DynamicLayer()
    dynamic.update(states[0], -states[0])
    layer = PreallocatedLayer(states[0], -states[0], capacity=8)
    for step, state in enumerate(states[1:]):
        if step == 1:
            for cache in (dynamic, layer):
                cache.batch_select_indices(torch.tensor([0, 2, 3]))
                cache.crop(-1)
        state = state[: dynamic.keys.shape[0]]
        assert all(torch.equal(a, b) for a, b in zip(dynamic.update(state, -state), layer.update(state, -state)))
        assert layer.keys.data_ptr() == layer.key_buffer.data_ptr()  # a view, not a copy
        assert layer.get_seq_length() == dynamic.get_seq_length()
        assert layer.get_mask_sizes(1) == dynamic.get_mask_sizes(1)
    with pytest.raises(RuntimeError, match="overflow"):
        layer.update(torch.zeros(3, 2, 3, 8), torch.zeros(3, 2, 3, 8))


def test_only_a_cache_of_full_attention_layers_is_preallocated():
    """Sliding-window, linear-attention (hybrid) and empty (KV-sharing) layers, or another cache class, keep
    transformers' own update rules: the loop then runs on the cache as the model made it."""
    from types import SimpleNamespace

    from transformers import cache_utils

    from remix_rft.rollout.hf import PreallocatedLayer, preallocate_cache

    def filled(layer):
        layer.update(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4))
        return layer

    for odd in (filled(cache_utils.DynamicSlidingWindowLayer(sliding_window=4)), cache_utils.DynamicLayer(),
                object.__new__(cache_utils.LinearAttentionAndFullAttentionLayer)):
        cache = cache_utils.DynamicCache()
        cache.layers = [filled(cache_utils.DynamicLayer()), odd]
        assert not preallocate_cache(cache, 8) and cache.layers[1] is odd
    assert not preallocate_cache(SimpleNamespace(layers=[filled(cache_utils.DynamicLayer())]), 8)
    cache = cache_utils.DynamicCache()
    cache.layers = [filled(cache_utils.DynamicLayer()) for _ in range(2)]
    assert preallocate_cache(cache, 8) and all(isinstance(layer, PreallocatedLayer) for layer in cache.layers)


def test_inverse_transform_sampling_draws_the_distribution_and_never_a_cut_token():
    from remix_rft.rollout.hf import sample_from_logits

    generator = torch.Generator().manual_seed(0)
    logits = filter_top_k_top_p(torch.randn(1, 40, generator=generator) * 2, top_k=0, top_p=0.9)
    probs = logits.softmax(-1)[0].double()
    draws = 100_000
    tokens = sample_from_logits(logits.expand(draws, -1), torch.rand(draws, generator=generator, dtype=torch.float64))
    counts = torch.bincount(tokens, minlength=40).double()
    assert counts[probs == 0].sum() == 0  # outside the top-p set: never drawn
    kept = probs > 0
    chi2 = float(((counts[kept] - draws * probs[kept]) ** 2 / (draws * probs[kept])).sum())
    assert chi2 < 30  # dof = kept - 1 (a handful here); p < 1e-4 beyond this


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone(tokenizer, tiny_model):
    engine = HFRolloutEngine(tiny_model, tokenizer)
    sampling = SamplingParams(max_new_tokens=8, temperature=1.0, seed=123)
    state_before = torch.get_rng_state()
    first = engine.generate(PROMPTS, 2, sampling)
    assert torch.equal(torch.get_rng_state(), state_before)
    second = engine.generate(PROMPTS, 2, sampling)
    assert [r.response_ids for r in first] == [r.response_ids for r in second]
    assert [r.logprobs for r in first] == [r.logprobs for r in second]
    other_seed = engine.generate(PROMPTS, 2, SamplingParams(max_new_tokens=8, temperature=1.0, seed=124))
    assert [r.response_ids for r in other_seed] != [r.response_ids for r in first]
    # Samples of one prompt differ from each other (no accidental reuse of one random stream per prompt).
    assert first[0].response_ids != first[1].response_ids


def test_greedy_is_deterministic_argmax_and_independent_of_batching(tokenizer, tiny_model):
    greedy = SamplingParams(max_new_tokens=10, greedy=True, temperature=0.3)
    batched = HFRolloutEngine(tiny_model, tokenizer, max_batch_size=64).generate(PROMPTS, 2, greedy)
    one_at_a_time = HFRolloutEngine(tiny_model, tokenizer, max_batch_size=1).generate(PROMPTS, 2, greedy)
    assert [r.response_ids for r in batched] == [r.response_ids for r in one_at_a_time]
    assert batched[0].response_ids == batched[1].response_ids
    # Each greedy token is the argmax of the teacher-forced distribution; log-probs are at temperature 1.
    batch = collate(
        [r.prompt_ids for r in batched], [r.response_ids for r in batched], tokenizer.pad_token_id
    )
    with torch.no_grad():
        logits = tiny_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).logits
        P, R = batch.prompt_length, batch.response_length
        argmax = logits[:, P - 1 : P + R - 1].argmax(-1)
        teacher_forced, _ = token_logprobs(tiny_model, batch, temperature=1.0)
    assert torch.equal(argmax[batch.response_mask.bool()], batch.response_ids[batch.response_mask.bool()])
    assert (teacher_forced - behaviour_matrix(batched, R)).abs().max() < 1e-4


def test_generation_restores_training_mode_and_tracks_no_grad(tokenizer, tiny_model):
    tiny_model.train()
    engine = build_engine("hf", tiny_model, tokenizer, max_batch_size=8)
    assert isinstance(engine, RolloutEngine)
    engine.generate(["Hello"], 2, SamplingParams(max_new_tokens=3, seed=0))
    assert tiny_model.training
    assert all(p.grad is None for p in tiny_model.parameters())
    tiny_model.eval()
    engine.generate(["Hello"], 1, SamplingParams(max_new_tokens=3, seed=0))
    assert not tiny_model.training


def test_update_weights_follows_the_shared_model(tokenizer, tiny_model):
    engine = HFRolloutEngine(tiny_model, tokenizer)
    greedy = SamplingParams(max_new_tokens=6, greedy=True)
    before = engine.generate(["Hello"], 1, greedy)[0].response_ids
    with torch.no_grad():  # a "training step": sharing the module means the engine sees it without copying
        tiny_model.get_output_embeddings().weight[
            before[0]
        ] *= -1.0  # its logit changes sign: no longer the argmax
    engine.update_weights(tiny_model)
    after = engine.generate(["Hello"], 1, greedy)[0].response_ids
    assert after[0] != before[0]


def test_top_k_top_p_filter():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_top_k_top_p(logits, top_k=2, top_p=1.0)).tolist() == [
        [False, False, True, True]
    ]
    assert torch.isinf(filter_top_k_top_p(logits, top_k=0, top_p=0.75)).tolist() == [
        [False, False, True, True]
    ]
    assert torch.isinf(filter_top_k_top_p(logits, top_k=0, top_p=0.1)).tolist() == [[False, True, True, True]]
    assert not torch.isinf(filter_top_k_top_p(logits, top_k=0, top_p=1.0)).any()


def test_bad_arguments_are_rejected(tokenizer, tiny_model):
    engine = HFRolloutEngine(tiny_model, tokenizer)
    with pytest.raises(ValueError, match="temperature"):
        engine.generate(["Hi"], 1, SamplingParams(temperature=0.0))
    with pytest.raises(ValueError, match="top_p"):
        engine.generate(["Hi"], 1, SamplingParams(top_p=0.0))
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate(["Hi"], 1, SamplingParams(max_new_tokens=0))
    with pytest.raises(ValueError, match="samples_per_prompt"):
        engine.generate(["Hi"], 0, SamplingParams())
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate(["Hi", ""], 1, SamplingParams(max_new_tokens=2))
    assert engine.generate([], 3, SamplingParams()) == []
    with pytest.raises(ValueError, match="known engines: hf, vllm"):
        build_engine("sglang", tiny_model, tokenizer)


def test_bf16_autocast_generation_is_close_to_bf16_teacher_forcing(tokenizer, tiny_model):
    engine = HFRolloutEngine(tiny_model, tokenizer, autocast_bf16=True)
    rollouts = engine.generate(PROMPTS, 2, SamplingParams(max_new_tokens=8, seed=5))
    batch = collate(
        [r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts], tokenizer.pad_token_id
    )
    with torch.no_grad(), autocast_context("cpu", enabled=True):
        teacher_forced, _ = token_logprobs(tiny_model, batch)
    difference = (teacher_forced - behaviour_matrix(rollouts, batch.response_length)).abs().max()
    assert teacher_forced.dtype == torch.float32 and difference < 0.05


@pytest.mark.slow
def test_embedded_model_rollouts_agree_with_teacher_forcing(tokenizer):
    model = load_model(DEFAULT_MODEL)
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        for question in ("What is 2+2? Answer with a number.", "Name a colour.")
    ]
    engine = HFRolloutEngine(model, tokenizer)
    rollouts = engine.generate(prompts, 2, SamplingParams(max_new_tokens=24, temperature=0.8, seed=0))
    assert any(r.finish_reason == "eos" for r in rollouts)
    batch = collate(
        [r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts], tokenizer.pad_token_id
    )
    with torch.no_grad():
        teacher_forced, _ = token_logprobs(model, batch, temperature=0.8)
    assert (teacher_forced - behaviour_matrix(rollouts, batch.response_length)).abs().max() < 1e-4


def test_engine_options_carry_the_vllm_settings_of_the_config():
    """Each rollout.* setting of the vLLM engine reaches it; kv_cache_gb as bytes (it was once lost in a comment)."""
    from remix_rft.config import load_config
    from remix_rft.rollout import engine_options

    config = load_config("remix-grpo", ["rollout.engine=vllm", "rollout.kv_cache_gb=1.5", "model.dtype=bfloat16",
                                        "rollout.max_model_len=512", "rollout.enable_sleep_mode=true"])
    options = engine_options(config)
    assert options["kv_cache_memory_bytes"] == int(1.5 * 2**30)
    assert options["dtype"] == "bfloat16" and options["autocast_bf16"] is True
    assert options["max_model_len"] == 512 and options["enable_sleep_mode"] is True
    assert options["seed"] == config.train.seed
    assert engine_options(load_config("remix-grpo", ["rollout.engine=vllm"]))["kv_cache_memory_bytes"] is None
    assert "kv_cache_memory_bytes" not in engine_options(load_config("remix-grpo"))  # the HF engine has no such knob


def test_rows_leave_only_a_cache_of_attention_layers():
    """A hybrid model's linear-attention layer keeps recurrent states that dropping rows would leave whole."""
    from types import SimpleNamespace

    from transformers import cache_utils

    from remix_rft.rollout.hf import rows_can_leave

    select = lambda indices: None  # noqa: E731
    attention = object.__new__(cache_utils.DynamicLayer)
    assert rows_can_leave(SimpleNamespace(layers=[attention, attention], batch_select_indices=select))
    hybrid = object.__new__(cache_utils.LinearAttentionAndFullAttentionLayer)
    assert not rows_can_leave(SimpleNamespace(layers=[attention, hybrid], batch_select_indices=select))
    assert not rows_can_leave(SimpleNamespace(batch_select_indices=select))  # an older cache: no layers to check


def test_non_finite_logits_are_an_error_not_a_sample():
    from remix_rft.rollout.hf import sample_from_logits

    with pytest.raises(ValueError, match="non-finite"):
        sample_from_logits(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0.5], dtype=torch.float64))
