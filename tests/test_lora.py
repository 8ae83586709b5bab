"""LoRA (model.lora): adapters on the policy and the critic, references without copies, checkpoints, exports,
the memory plan, and the FSDP2 path on 2 ranks (gloo)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from remix_rft import lora
from remix_rft.config import ConfigError, load_config
from remix_rft.models import load_model
from remix_rft.references import AdapterReferences
from remix_rft.trainer import Trainer, run_training

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed import WORKER, learn_saved_step, torchrun  # noqa: E402
from test_distributed import read_lines as read_run_lines  # noqa: E402
from test_trainer import PRECISIONS, _comparable, read_lines, tiny_config  # noqa: E402

# all rewards are 0 on the random tiny model: the entropy term gives the adapters a gradient
LORA = ["model.lora.r=4", "model.lora.alpha=8", "algorithm.entropy_coef=0.01"]
REMIX = ["remix.offpolicy_fraction=0.5", "remix.reincarnate_at=2", "remix.kl_convex_start=0",
         "remix.kl_convex_interval=1", "remix.precedent=lagged"]


def algorithm_overrides(name: str) -> list[str]:
    overrides = list(REMIX) if name.startswith("remix") else []
    if name.endswith("ppo"):
        overrides += ["train.samples_per_prompt=1", "train.minibatch_size=2"]
    return overrides


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero adapters (fresh ones are the identity: B = 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in lora.adapter_parameters(model):
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


def tiny_lora_model(r: int = 4, alpha: float = 8.0) -> torch.nn.Module:
    return lora.inject(load_model("tiny-random", dtype="float32"), r, alpha, 0.0, "all-linear")


INPUT = torch.tensor([[5, 17, 42, 8, 99, 3, 60]])


# ------------------------------------------------------------------------------------------------ adapters


def test_injected_adapters_start_as_the_identity_and_only_they_train():
    base, model = load_model("tiny-random", dtype="float32"), tiny_lora_model()
    assert torch.equal(model(INPUT).logits, base(INPUT).logits)  # B = 0
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(lora.is_adapter_parameter(name) for name in trainable)
    assert len(trainable) == 2 * 7 * base.config.num_hidden_layers  # A and B of all seven projections a layer


def test_adapter_disabled_model_equals_the_base():
    base, model = load_model("tiny-random", dtype="float32"), perturbed(tiny_lora_model())
    assert not torch.allclose(model(INPUT).logits, base(INPUT).logits)
    with lora.adapters_disabled(model):
        assert torch.equal(model(INPUT).logits, base(INPUT).logits)
    assert all(p.requires_grad for _, p in lora.adapter_parameters(model))  # trainable again afterwards


def test_adapter_snapshot_swaps_in_and_back_exactly():
    model = perturbed(tiny_lora_model())
    snapshot, logits = lora.adapter_snapshot(model), model(INPUT).logits
    perturbed(model, seed=1)
    moved = model(INPUT).logits
    with lora.adapter_swapped_in(model, snapshot):
        assert torch.equal(model(INPUT).logits, logits)
    assert torch.equal(model(INPUT).logits, moved)


def test_merge_state_dict_against_hand_computed_values():
    weight, a, b = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0], [-1.0]])
    state = {"layer.base_layer.weight": weight, "layer.base_layer.bias": torch.tensor([0.5, 0.5]),
             "layer.lora_A.default.weight": a, "layer.lora_B.default.weight": b, "norm.weight": torch.ones(2)}
    merged = lora.merge_state_dict(state, scaling=0.5)
    # W + (B @ A) * 0.5 = [[1, 2], [3, 4]] + [[2, 0], [-1, 0]] * 0.5
    assert torch.equal(merged["layer.weight"], torch.tensor([[2.0, 2.0], [2.5, 4.0]]))
    assert torch.equal(merged["layer.bias"], torch.tensor([0.5, 0.5]))
    assert set(merged) == {"layer.weight", "layer.bias", "norm.weight"}


def test_merged_weights_and_the_peft_adapter_folder_reproduce_the_adapted_model(tmp_path):
    from peft import PeftModel

    model = perturbed(tiny_lora_model())
    expected = model(INPUT).logits
    plain = load_model("tiny-random", dtype="float32")
    plain.load_state_dict(lora.merged_state_dict(model))
    torch.testing.assert_close(plain(INPUT).logits, expected, atol=1e-5, rtol=0)
    streamed = dict(lora.merged_named_tensors(model))  # what the vLLM engine is sent
    merged = lora.merged_state_dict(model)
    assert all(torch.equal(tensor, merged[name]) for name, tensor in streamed.items())
    lora.save_adapter(model, tmp_path / "adapter", base_model="tiny-random")
    assert lora.read_adapter_config(tmp_path / "adapter")["r"] == 4
    peft_model = PeftModel.from_pretrained(load_model("tiny-random", dtype="float32"), tmp_path / "adapter")
    assert torch.equal(peft_model(INPUT).logits, expected)
    reloaded = tiny_lora_model()
    lora.load_adapter(reloaded, tmp_path / "adapter")
    assert torch.equal(reloaded(INPUT).logits, expected)


# ------------------------------------------------------------------------------------------------ config and plan


def test_config_keys_and_the_lora_learning_rate():
    config = load_config("quickstart", ["model.lora.r=16", "model.lora.target_modules=q_proj,v_proj"])
    assert config.model.lora.enabled and config.model.lora.peft_target_modules == ["q_proj", "v_proj"]
    assert config.policy_lr == pytest.approx(10 * config.train.lr)  # raised unless set
    assert load_config("quickstart", ["model.lora.r=16", "model.lora.lr=3e-5"]).policy_lr == 3e-5
    assert load_config("quickstart").policy_lr == load_config("quickstart").train.lr  # full finetuning: as set
    assert load_config("quickstart", ["model.lora.r=16"]).model.lora.peft_target_modules == "all-linear"
    for override, key in (("model.lora.r=-1", "model.lora.r"), ("model.lora.dropout=1", "model.lora.dropout"),
                          ("model.lora.alpha=0", "model.lora.alpha"), ("model.lora.lr=0", "model.lora.lr")):
        with pytest.raises(ConfigError, match=key):
            load_config("quickstart", ["model.lora.r=8", override])


def test_plan_counts_the_adapters_exactly_and_drops_the_copies():
    from remix_rft.plan import lora_parameters, memory_estimate, resolve_architecture

    arch = resolve_architecture("tiny-random")
    model = lora.inject(load_model("tiny-random", dtype="float32"), 8, 16, 0.0, "all-linear")
    assert lora_parameters(arch, 8, "all-linear") == sum(p.numel() for _, p in lora.adapter_parameters(model))
    only_q = lora.inject(load_model("tiny-random", dtype="float32"), 8, 16, 0.0, ["q_proj"])
    assert lora_parameters(arch, 8, ["q_proj"]) == sum(p.numel() for _, p in lora.adapter_parameters(only_q))
    full = memory_estimate(load_config("remix-ppo", ["model.name=tiny-random"]), arch, device_type="cuda")
    adapted = memory_estimate(load_config("remix-ppo", ["model.name=tiny-random", "model.lora.r=8"]), arch,
                              device_type="cuda")
    adapters = lora_parameters(arch, 8, "all-linear")
    assert adapted["policy AdamW moments"] == 8 * adapters and full["policy AdamW moments"] == 8 * arch.parameters
    assert adapted["frozen copies"] == 2 * 4 * adapters  # reference and lagged precedent: adapter snapshots
    assert adapted["peak"] < full["peak"]


# ------------------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("name", ["grpo", "remix-grpo", "ppo", "remix-ppo"])
def test_every_algorithm_trains_only_the_adapters(tmp_path, name):
    config = tiny_config(tmp_path, name, *LORA, *algorithm_overrides(name), "train.steps=3", "model.dtype=float32",
                         "eval.before_training=false")
    trainer = run_training(config)
    policy = trainer.policy
    base = load_model("tiny-random", dtype="float32").state_dict()
    for key, value in policy.state_dict().items():
        if ".base_layer." in key or not lora.is_adapter_parameter(key):
            assert torch.equal(value, base[key.replace(".base_layer.", ".")]), key  # the base stays frozen
    assert any(p.abs().sum() > 0 for key, p in lora.adapter_parameters(policy) if ".lora_B." in key)  # B moved
    optimized = {id(p) for group in trainer.actor.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for _, p in lora.adapter_parameters(policy)}
    assert trainer.actor.lr == pytest.approx(10 * config.train.lr)
    assert isinstance(trainer.references, AdapterReferences)
    train = read_lines(trainer.run_dir, "train")
    assert [line["step"] for line in train] == [1, 2, 3]
    assert train[0]["kl/base"] == 0.0 and train[1]["kl/base"] > 0  # pi_1 moved away from the base
    checkpoint = trainer.run_dir / "checkpoints" / "step_000003"
    assert (checkpoint / "adapter" / "adapter_model.safetensors").exists()
    assert (checkpoint / "policy" / "model.safetensors").exists()
    assert not (checkpoint / "reference").exists() and not (checkpoint / "precedent").exists()  # no model copies
    if name.endswith("ppo"):
        critic = trainer.critic.model
        trained = {key for key, p in critic.named_parameters() if p.requires_grad}
        assert trained and all(lora.is_adapter_parameter(k) or k.startswith("value_head.") for k in trained)
        assert (checkpoint / "critic.pt").exists()
    if name.startswith("remix"):
        # step 3 follows reincarnation: the reference is the policy's adapter of then, so the KL starts from 0
        assert train[2]["kl/base"] == 0.0 and train[2]["phase"] == "on-policy"
        assert train[1]["kl/precedent"] == pytest.approx(train[1]["kl/base"])  # pi_0 (the base) as precedent


@pytest.mark.parametrize("name", ["remix-grpo", "remix-ppo"])
def test_lora_resume_after_crash_matches_uninterrupted_run(tmp_path, name):
    overrides = [*LORA, *algorithm_overrides(name), "model.dtype=float32", "train.steps=4", "checkpoint.every=2",
                 "eval.before_training=false", "eval.after_training=false"]
    straight = run_training(tiny_config(tmp_path / "a", name, *overrides))

    class Crash(RuntimeError):
        pass

    def crash_after_step_3(trainer, record):
        if record["step"] == 3:
            raise Crash("simulated kill after step 3")

    config = tiny_config(tmp_path / "b", name, *overrides)
    with pytest.raises(Crash):
        run_training(config, on_step_end=crash_after_step_3)
    resumed = run_training(config, resume=tmp_path / "b" / "run")
    assert _comparable(read_lines(straight.run_dir, "train")) == _comparable(read_lines(resumed.run_dir, "train"))
    for (key, p), q in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert torch.equal(p, q), key
    if name.endswith("ppo"):
        for (key, p), q in zip(straight.critic.model.state_dict().items(), resumed.critic.model.state_dict().values()):
            assert torch.equal(p, q), key


def test_a_lora_checkpoint_does_not_resume_a_full_run(tmp_path):
    config = tiny_config(tmp_path, "grpo", *LORA, "train.steps=1", "eval.before_training=false",
                         "eval.after_training=false")
    trainer = run_training(config)
    full = tiny_config(tmp_path, "grpo", "train.steps=2")
    with pytest.raises(ValueError, match="with LoRA adapters"):
        run_training(full, resume=trainer.run_dir)


@pytest.mark.parametrize("dtype", PRECISIONS)
def test_exported_policy_loads_in_transformers_and_matches_the_adapted_model(tmp_path, dtype):
    from transformers import AutoModelForCausalLM

    config = tiny_config(tmp_path, "grpo", *LORA, "train.steps=2", f"model.dtype={dtype}",
                         "eval.before_training=false", "eval.after_training=false")
    trainer = run_training(config)
    exported = AutoModelForCausalLM.from_pretrained(trainer.run_dir / "checkpoints" / "step_000002" / "policy")
    trainer.policy.eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(INPUT).logits, trainer.policy(INPUT).logits, atol=1e-5, rtol=0)


def test_hf_engine_samples_from_the_live_adapted_policy(tmp_path):
    config = tiny_config(tmp_path, "grpo", *LORA, "train.steps=1", "eval.before_training=false",
                         "eval.after_training=false", "model.dtype=float32")
    trainer = Trainer(config)
    try:
        assert trainer.engine.model is trainer.policy
        perturbed(trainer.policy)
        from remix_rft.rollout import SamplingParams

        greedy = SamplingParams(max_new_tokens=5, greedy=True)
        adapted = trainer.engine.generate(["What is 2 + 2?"], 1, greedy)[0].response_ids
        with lora.adapters_disabled(trainer.policy):
            plain = trainer.engine.generate(["What is 2 + 2?"], 1, greedy)[0].response_ids
        assert adapted != plain  # the engine samples what the adapters make of the base
    finally:
        trainer.close()


# ------------------------------------------------------------------------------------------------ FSDP2, 2 ranks


def test_two_processes_make_the_same_lora_update_as_one(tmp_path):
    """FSDP2 + LoRA (gloo): the adapters are sharded with the frozen base (no mixed Tensor/DTensor parameters), and
    one step on 2 ranks moves them exactly as one process does on the same global batch."""
    from test_distributed import TINY as WORKER_TINY

    overrides = ["remix-ppo", *LORA, "train.prompts_per_step=4", "train.samples_per_prompt=1",
                 "train.minibatch_size=2", "eval.before_training=false", "checkpoint.every=0",
                 "algorithm.kl_coef=0.01", "train.logprob_chunk_tokens=3"]
    torchrun(str(WORKER), "step", str(tmp_path / "two"), *overrides)
    saved = torch.load(tmp_path / "two" / "step.pt", weights_only=False)
    config = load_config(overrides[0], [*WORKER_TINY, f"logging.output_dir={tmp_path / 'one'}", *overrides[1:]])
    trainer = Trainer(config)
    try:
        learn_saved_step(trainer, saved)
        one = trainer.policy.state_dict()
        moved = 0
        for key, value in saved["weights"].items():
            assert torch.allclose(value, one[key], atol=1e-5, rtol=0), key
            moved += int(".lora_B." in key and bool(value.abs().sum() > 0))
        assert moved > 0
        critic = trainer.critic.model.state_dict()
        for key, value in saved["critic"].items():
            assert torch.allclose(value, critic[key], atol=1e-5, rtol=0), key
    finally:
        trainer.close()


def test_lora_kill_and_resume_on_two_processes_matches_uninterrupted_run(tmp_path):
    overrides = ["remix-grpo", *LORA, *REMIX, "train.steps=4", "train.prompts_per_step=4",
                 "train.samples_per_prompt=2", "train.minibatch_size=4", "checkpoint.every=2",
                 "eval.before_training=false", "eval.after_training=false"]
    torchrun(str(WORKER), "train", str(tmp_path / "a"), *overrides)
    torchrun(str(WORKER), "crash", str(tmp_path / "b"), *overrides)
    torchrun(str(WORKER), "resume", str(tmp_path / "b"), *overrides)
    straight, resumed = read_run_lines(tmp_path / "a" / "run", "train"), read_run_lines(tmp_path / "b" / "run", "train")
    assert [line["step"] for line in resumed] == [1, 2, 3, 4]
    assert _comparable(straight) == _comparable(resumed)
    assert straight[1]["kl/base"] > 0 and straight[2]["kl/base"] == 0.0  # reincarnated onto the adapter snapshot
    checkpoint = tmp_path / "b" / "run" / "checkpoints" / "step_000004"
    assert (checkpoint / "adapter" / "adapter_model.safetensors").exists()
    assert (checkpoint / "policy" / "model.safetensors").exists()


def test_the_critics_value_head_trains_at_the_full_finetuning_rate_and_its_adapters_at_loras():
    """Issue 35 item 7: under LoRA the value head is trained in full, so it takes train.critic_lr, not the adapters'
    10x rate (config.critic_lr)."""
    from remix_rft.critic import Critic

    config = load_config("ppo", ["model.name=tiny-random", "model.lora.r=4", "train.critic_lr=2e-5"])
    policy = load_model("tiny-random", dtype="float32")
    critic = Critic(policy, config, torch.device("cpu"))
    names = {id(p): name for name, p in critic.model.named_parameters()}
    groups = [(group["lr"], {names[id(p)] for p in group["params"]}) for group in critic.optimizer.param_groups]
    assert len(groups) == 2
    (adapter_lr, adapters), (head_lr, head) = groups
    assert adapter_lr == pytest.approx(2e-4) and all("lora_" in name for name in adapters)
    assert head_lr == pytest.approx(2e-5) and head == {"value_head.weight", "value_head.bias"}
