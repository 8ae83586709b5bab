"""model.dtype=bfloat16 is mixed precision: float32 master weights + AdamW state, bf16 autocast, bf16 frozen copies."""

from __future__ import annotations

import json
import random

import pytest
import torch

from remix_rft import hardware
from remix_rft.batching import collate, token_logprobs
from remix_rft.config import load_config
from remix_rft.models import autocast_context, build_tiny_model
from remix_rft.trainer import Trainer


def _fixed_batch():
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 49152) for _ in range(rng.randint(3, 9))] for _ in range(8)]
    responses = [[rng.randrange(3, 49152) for _ in range(rng.randint(4, 12))] for _ in range(8)]
    batch = collate(prompts, responses, 0)
    advantages = torch.randn(8, generator=torch.Generator().manual_seed(0))[:, None] * batch.response_mask
    return batch, advantages


def _parameter_delta(weights_dtype: torch.dtype, bf16_autocast: bool, steps: int = 5, lr: float = 1e-6):
    """Flattened parameter change after `steps` AdamW steps of a policy-gradient loss at a small learning rate."""
    batch, advantages = _fixed_batch()
    model = build_tiny_model(0).to(weights_dtype).train()
    start = [p.detach().double().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        optimizer.zero_grad()
        with autocast_context("cpu", bf16_autocast):
            logp, _ = token_logprobs(model, batch)
        (-(logp.float() * advantages).sum() / batch.response_mask.sum()).backward()
        optimizer.step()
    return torch.cat([(p.detach().double() - s).flatten() for p, s in zip(model.parameters(), start)])


def test_small_learning_rate_moves_the_policy_the_same_way_under_bf16_as_under_float32():
    """AdamW's step is ~lr per coordinate in the direction of the gradient's sign, so the two runs must agree on
    almost every coordinate. bf16 autocast perturbs gradients by ~2^-8 relative; only coordinates whose gradient is
    within that noise of zero can flip (0.1% measured), hence sign agreement > 98% and cosine > 0.99 (10x margin).
    The old behaviour (weights stored in bf16, updated in place) fails both: ~98% of the updates are rounded away."""
    reference = _parameter_delta(torch.float32, bf16_autocast=False)
    moved = reference != 0
    assert moved.float().mean() > 0.99

    def agreement(delta):
        cosine = torch.nn.functional.cosine_similarity(reference[moved], delta[moved], dim=0)
        signs = (torch.sign(reference[moved]) == torch.sign(delta[moved])).double().mean()
        return float(cosine), float(signs), float((delta[moved] != 0).double().mean())

    cosine, signs, changed = agreement(_parameter_delta(torch.float32, bf16_autocast=True))
    assert cosine > 0.99 and signs > 0.98 and changed > 0.99
    _, old_signs, old_changed = agreement(_parameter_delta(torch.bfloat16, bf16_autocast=False))
    assert old_changed < 0.5 and old_signs < 0.5


def _tiny_config(tmp_path, *overrides: str):
    """A one-step ReMix-GRPO run on the tiny model with a reference and a lagged precedent (KL-Convex from step 1)."""
    return load_config("remix-grpo", [
        "model.name=tiny-random", "model.device=cpu", "train.steps=1",
        "train.prompts_per_step=2", "train.samples_per_prompt=2", "train.minibatch_size=4", "data.limit=8",
        "rollout.max_new_tokens=4", "eval.benchmarks=[]", f"logging.output_dir={tmp_path}", "logging.progress=false",
        "logging.tensorboard=false", "remix.offpolicy_fraction=0.5", "remix.kl_convex_start=0", *overrides])


def test_bf16_config_keeps_float32_master_weights_and_bf16_frozen_copies(tmp_path):
    trainer = Trainer(_tiny_config(tmp_path, "model.dtype=bfloat16"))
    try:
        assert {p.dtype for p in trainer.policy.parameters()} == {torch.float32}
        assert {p.dtype for p in trainer.references.reference.parameters()} == {torch.bfloat16}
        assert {p.dtype for p in trainer.references.lagged.parameters()} == {torch.bfloat16}
        before = [p.detach().clone() for p in trainer.policy.parameters()]
        record = trainer.train_step(1)
        assert record["optimizer_steps"] >= 1
        assert {p.dtype for g in trainer.actor.optimizer.param_groups for p in g["params"]} == {torch.float32}
        changed = sum(int((p.detach() != b).sum()) for p, b in zip(trainer.policy.parameters(), before))
        assert changed > 0
        assert record["perf/generation_tokens_per_s"] > 0 and record["perf/update_tokens_per_s"] > 0
        assert 0 < record["perf/mfu"] < 1
    finally:
        trainer.close()


def test_autocast_bf16_is_the_older_spelling_of_dtype_bfloat16():
    old = load_config("quickstart", ["model.dtype=float32", "model.autocast_bf16=true"]).model
    new = load_config("quickstart", ["model.dtype=bfloat16", "model.autocast_bf16=false"]).model
    assert old.compute_dtype == new.compute_dtype == "bfloat16" and old.bf16 and new.bf16
    assert load_config("remix-grpo").model.compute_dtype == "float32"


@pytest.mark.parametrize("avx512_bf16, amx, speedup, expected", [
    (True, False, 2.5, "bfloat16"),  # AVX512-BF16 whose bf16 matmuls are measured faster (an AMD EPYC, Zen 4)
    (True, False, 0.52, "float32"),  # AVX512-BF16 whose bf16 matmuls are slower (an Intel Xeon exposing no AMX)
    (True, True, 0.52, "bfloat16"),  # AMX: no measurement needed
    (False, True, None, "bfloat16"),
    (False, False, None, "float32"),  # emulated bf16 is ~3x slower than float32
])
def test_dtype_auto_is_bf16_only_where_the_cpu_computes_it_faster(monkeypatch, avx512_bf16, amx, speedup, expected):
    """The default job asks for `model.dtype=auto`: bf16 autocast only where the CPU runs bf16 matmuls faster."""
    monkeypatch.delenv("REMIX_RFT_AUTO_DTYPE", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    measured = []
    monkeypatch.setattr(hardware, "bf16_matmul_speedup", lambda: measured.append(1) or speedup)
    model = load_config("quickstart", ["model.device=cpu"]).model
    assert model.dtype == "auto" and model.compute_dtype == expected and model.bf16 == (expected == "bfloat16")
    assert bool(measured) == (avx512_bf16 and not amx)  # measured only where the flags leave it open
    if measured:
        assert f"{speedup:.2f}x" in hardware.auto_dtype("cpu")[1]


def test_the_bf16_speedup_is_measured_once_and_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("REMIX_CACHE_DIR", str(tmp_path))
    calls = []
    monkeypatch.setattr(hardware, "_measure_bf16_speedup", lambda: calls.append(1) or 0.75)
    hardware.bf16_matmul_speedup.cache_clear()
    try:
        assert hardware.bf16_matmul_speedup() == 0.75 and hardware.bf16_matmul_speedup() == 0.75
        hardware.bf16_matmul_speedup.cache_clear()  # a new process reads the file
        assert hardware.bf16_matmul_speedup() == 0.75 and calls == [1]
        assert list(json.loads((tmp_path / "bf16_speedup.json").read_text()).values()) == [0.75]
    finally:
        hardware.bf16_matmul_speedup.cache_clear()


def test_the_measured_speedup_is_a_ratio_of_real_matmuls():
    speedup = hardware._measure_bf16_speedup(rounds=1, repeats=1)
    assert 0.05 < speedup < 50  # emulated bf16 (~0.3x) up to AMX (~10x)


def test_dtype_auto_on_cuda_without_a_gpu_is_float32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load_config("quickstart", ["model.device=cuda"]).model.compute_dtype == "float32"


def test_frozen_dtype_bfloat16_under_float32_compute_stores_bf16_and_computes_float32(tmp_path):
    """model.frozen_dtype=bfloat16: half the frozen copies' memory; their log-probs are exactly a float32 pass over
    the bf16-rounded weights (not a bf16 pass), and close to the float32 copies'."""
    trainer = Trainer(_tiny_config(tmp_path, "model.dtype=float32", "model.frozen_dtype=bfloat16"))
    try:
        references = trainer.references
        assert references.upcast
        assert {p.dtype for p in references.reference.parameters()} == {torch.bfloat16}
        assert {p.dtype for p in references.lagged.parameters()} == {torch.bfloat16}
        assert {p.dtype for p in trainer.policy.parameters()} == {torch.float32}
        batch, _ = _fixed_batch()
        got = references.reference_logprobs(batch, 1.0, None)
        rounded = build_tiny_model(0).to(torch.bfloat16).float().eval()  # the policy's start, rounded to bf16
        with torch.no_grad():
            expected, _ = token_logprobs(rounded, batch, chunk_tokens=references.chunk_tokens)
            exact, _ = token_logprobs(build_tiny_model(0).eval(), batch, chunk_tokens=references.chunk_tokens)
            bf16_pass, _ = token_logprobs(build_tiny_model(0).to(torch.bfloat16).eval(), batch)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        assert (got - exact).abs().max() < 0.05  # bf16 rounding of the weights only
        assert (got - bf16_pass.float()).abs().max() > (got - expected).abs().max()  # not a bf16 computation
        record = trainer.train_step(1)
        assert record["optimizer_steps"] >= 1 and record["kl/base"] >= 0 and record["kl/precedent"] >= 0
        # reincarnation copies the float32 policy into the bf16 store
        references.reincarnate(trainer.policy)
        assert {p.dtype for p in references.reference.parameters()} == {torch.bfloat16}
        policy_weight = next(trainer.policy.parameters())
        assert torch.equal(next(references.reference.parameters()), policy_weight.detach().to(torch.bfloat16))
    finally:
        trainer.close()


def test_frozen_dtype_auto_follows_the_compute_dtype(tmp_path):
    model = _tiny_config(tmp_path, "model.dtype=float32").model
    assert model.frozen_dtype == "auto" and model.frozen_storage_dtype == "float32"
    assert load_config("quickstart", ["model.dtype=bfloat16"]).model.frozen_storage_dtype == "bfloat16"
    assert load_config("quickstart", ["model.dtype=bfloat16", "model.frozen_dtype=float32"]
                       ).model.frozen_storage_dtype == "float32"
    with pytest.raises(ValueError, match="model.frozen_dtype"):
        load_config("quickstart", ["model.frozen_dtype=float16"])


def test_proximal_precedent_keeps_no_copy_and_logs_no_precedent_kl(tmp_path):
    """remix.precedent=proximal: pi_k's log-probs stand in for pi_{k-1}'s, so there is no lagged copy and the
    precedent KL measured before the update (0 by construction) is not logged; the KL-Convex loss still has it."""
    trainer = Trainer(_tiny_config(tmp_path, "model.dtype=float32", "remix.precedent=proximal"))
    try:
        assert trainer.references.lagged is None and trainer.references.reference is not None
        record = trainer.train_step(1)
        assert "kl/precedent" not in record and record["kl/base"] >= 0 and record["kl_convex/weight"] < 1
        assert record["optimizer_steps"] >= 1
    finally:
        trainer.close()


def test_float32_weights_per_module_equals_a_float32_copy_and_upcasts_one_module_at_a_time():
    """The frozen bf16 copies' float32 passes: exactly a float32 copy's log-probs (lean and plain head paths), with
    float32 weights held by the running module (and the output embedding) only, and the bf16 storage restored."""
    from remix_rft.models import float32_weights_per_module, frozen_copy

    model = frozen_copy(build_tiny_model(0), torch.bfloat16)
    head = model.get_output_embeddings().weight
    float32_copy = frozen_copy(model, torch.float32)
    batch, _ = _fixed_batch()
    seen = []  # float32 parameter count (beyond the output embedding) inside each module's forward

    def count(module, args):
        seen.append(sum(p.dtype == torch.float32 for p in model.parameters() if p is not head))

    leaves = [m for m in model.modules() if list(m.parameters(recurse=False))]
    probes = [m.register_forward_pre_hook(count) for m in leaves]
    with torch.no_grad():
        for chunk in (64, None):
            expected = token_logprobs(float32_copy, batch, chunk_tokens=chunk, with_entropy=True)
            with float32_weights_per_module(model):
                got = token_logprobs(model, batch, chunk_tokens=chunk, with_entropy=True)
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    for probe in probes:
        probe.remove()
    # probes registered before the upcast hooks run first: nothing but the head is float32 then
    assert seen and max(seen) == 0
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_float32_weights_per_module_restores_the_storage_when_a_pass_raises():
    from remix_rft.models import float32_weights_per_module, frozen_copy

    model = frozen_copy(build_tiny_model(0), torch.bfloat16)
    with pytest.raises(IndexError), torch.no_grad(), float32_weights_per_module(model):
        model(input_ids=torch.tensor([[10**6]]))  # the embedding raises inside its forward
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("forced", ["float32", "bfloat16"])
def test_auto_dtype_env_overrides_the_cpu_choice_and_run_info_records_it(tmp_path, monkeypatch, forced):
    """REMIX_RFT_AUTO_DTYPE makes `auto` pick the other CPU kind's precision (how CI runs the bf16 path on AVX2);
    run_info.json says which precision a run computed in and why, next to the CPU's features."""
    monkeypatch.setenv("REMIX_RFT_AUTO_DTYPE", forced)
    model = load_config("quickstart", ["model.device=cpu"]).model
    assert model.compute_dtype == forced
    trainer = Trainer(_tiny_config(tmp_path, "model.dtype=auto"))
    try:
        info = json.loads((trainer.run_dir / "run_info.json").read_text())
    finally:
        trainer.close()
    precision = info["precision"]
    assert precision == {**precision, "requested": "auto", "compute_dtype": forced, "auto_dtype_env": forced}
    assert "REMIX_RFT_AUTO_DTYPE" in precision["why"]
    assert info["cpu"]["native_bf16"] == hardware.native_cpu_bf16()
    assert info["torch"] == torch.__version__ and info["world_size"] == 1
    assert set(info["cpu"]["flags"]) <= set(hardware.CPU_FLAGS)
    monkeypatch.setenv("REMIX_RFT_AUTO_DTYPE", "fp8")
    with pytest.raises(ValueError, match="REMIX_RFT_AUTO_DTYPE"):
        _ = load_config("quickstart", ["model.device=cpu"]).model.compute_dtype


def test_float32_lm_head_computes_the_head_in_float32_in_every_path():
    """model.lm_head_dtype=float32 under bf16 autocast: generation/plain forwards and the lean chunked path all
    compute the head's matmul in float32 (so they agree to float32 noise), and frozen copies carry the choice."""
    from remix_rft.logprobs import run_head_in_float32
    from remix_rft.models import frozen_copy

    batch, _ = _fixed_batch()
    model = build_tiny_model(0).eval()
    with torch.no_grad(), autocast_context("cpu", True):
        bf16_lean, _ = token_logprobs(model, batch, chunk_tokens=16)
        run_head_in_float32(model)
        head = model.get_output_embeddings()
        hidden = torch.randn(3, head.in_features).to(torch.bfloat16)
        logits = head(hidden)
        assert logits.dtype == torch.float32
        with torch.autocast("cpu", enabled=False):
            expected = hidden.float() @ head.weight.t()
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
        lean, _ = token_logprobs(model, batch, chunk_tokens=16)
        plain, _ = token_logprobs(model, batch, chunk_tokens=None)
        copy = frozen_copy(model, torch.bfloat16)
        assert copy.get_output_embeddings().forward.__self__ is copy.get_output_embeddings()
        copied, _ = token_logprobs(copy, batch, chunk_tokens=16)
    torch.testing.assert_close(lean, plain, rtol=0, atol=1e-4)  # the decoder still runs in bf16 in both
    assert not torch.equal(lean, bf16_lean)  # the mark reached the lean path
    assert (copied - lean).abs().max() < 0.1  # bf16-rounded weights, float32 head


def test_float32_lm_head_config_applies_to_the_trainer_policy_and_references(tmp_path):
    from remix_rft.logprobs import FLOAT32_HEAD_ATTR

    with pytest.raises(ValueError, match="model.lm_head_dtype"):
        load_config("quickstart", ["model.lm_head_dtype=bfloat16"])
    trainer = Trainer(_tiny_config(tmp_path, "model.dtype=bfloat16", "model.lm_head_dtype=float32"))
    try:
        for model in (trainer.policy, trainer.references.reference, trainer.references.lagged):
            assert getattr(model.get_output_embeddings(), FLOAT32_HEAD_ATTR, False)
        record = trainer.train_step(1)
        assert record["optimizer_steps"] >= 1 and record["logprob_mismatch/max"] < 0.5
    finally:
        trainer.close()
