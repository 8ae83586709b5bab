"""rollout.reuse_sampler_logprobs (issue 36): the HF sampler's log-probs and entropies of this step's fresh responses
stand in for pi_k's no-grad pass. Where it switches on, what it equals (the pass, to float32 precision), the first
step's check that turns auto off when the sampler disagrees, and resume keeping the decision."""

from __future__ import annotations

import pytest
import torch

from remix_rft import experience
from remix_rft.batching import collate, token_logprobs
from remix_rft.config import load_config, reuses_sampler_logprobs
from remix_rft.errors import ConfigError
from remix_rft.experience import SamplerPiK, assemble, logprob_passes, make_groups
from remix_rft.models import build_tiny_model
from remix_rft.references import FrozenReferences
from remix_rft.rewards import Score
from remix_rft.rollout import HFRolloutEngine, SamplingParams, build_engine, engine_options
from remix_rft.schedule import StepPlan
from remix_rft.trainer import run_training
from test_trainer import _comparable, read_lines, straight_and_resumed, tiny_config

ON_POLICY = ["remix.enabled=false", "model.dtype=float32"]


@pytest.mark.parametrize("overrides, on", [
    (["model.dtype=float32"], True),
    (["model.dtype=bfloat16"], False),  # the sampler's bf16 kernels round differently: auto leaves it off
    (["model.dtype=bfloat16", "rollout.reuse_sampler_logprobs=true"], True),  # as verl's bypass mode
    (["model.dtype=float32", "rollout.reuse_sampler_logprobs=false"], False),
    (["model.dtype=float32", "rollout.top_p=0.9"], False),
    (["model.dtype=float32", "rollout.pipeline=true"], False),
    (["model.dtype=float32", "rollout.behaviour_logprobs=engine"], False),
])
def test_auto_is_on_only_where_the_sampler_computes_pi_k(overrides, on):
    config = load_config("quickstart", ["model.device=cpu", *overrides])
    assert reuses_sampler_logprobs(config)[0] is on
    assert engine_options(config).get("with_entropy", False) is on


@pytest.mark.parametrize("override, reason", [("rollout.top_p=0.9", "top-p"), ("rollout.engine=vllm", "own kernels"),
                                              ("rollout.pipeline=true", "snapshot")])
def test_true_where_the_sampler_is_not_pi_k_is_a_config_error_naming_why(override, reason):
    with pytest.raises(ConfigError, match=f"rollout.reuse_sampler_logprobs.*{reason}"):
        load_config("quickstart", ["rollout.reuse_sampler_logprobs=true", override])
    with pytest.raises(ConfigError, match="true, false or auto"):
        load_config("quickstart", ["rollout.reuse_sampler_logprobs=sometimes"])


def test_the_engines_entropies_and_log_probs_are_the_trainers_in_float32(tokenizer):
    model = build_tiny_model(seed=3)
    engine = HFRolloutEngine(model, tokenizer, with_entropy=True)
    sampling = SamplingParams(max_new_tokens=12, temperature=0.7, seed=5)
    rollouts = engine.generate(["1 + 2 =", "The capital of", "x"], 3, sampling)
    assert all(len(r.entropies) == len(r.response_ids) for r in rollouts)
    tokens = collate([r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts], engine.pad_token_id)
    with torch.no_grad():
        logp, entropy = token_logprobs(model, tokens, 0.7, with_entropy=True)
    for row, r in enumerate(rollouts):
        n = len(r.response_ids)
        assert torch.allclose(logp[row, :n], torch.tensor(r.logprobs), atol=1e-5, rtol=0)
        # the random model's distributions are near uniform: an entropy of ~10.8 summed over 49k float32 terms in
        # two orders carries ~2e-4 of rounding (sqrt(49152) x 1.2e-7 x 10.8)
        assert torch.allclose(entropy[row, :n], torch.tensor(r.entropies), atol=5e-4, rtol=0)
    # without the option nothing is recorded, and the same seed samples the same tokens
    plain = HFRolloutEngine(model, tokenizer).generate(["1 + 2 =", "The capital of", "x"], 3, sampling)
    assert [r.entropies for r in plain] == [None] * 9
    assert [r.response_ids for r in plain] == [r.response_ids for r in rollouts]


def _mixed_batch(tokenizer, model, config):
    """Two fresh groups sampled now (step 3) by the HF engine, one replayed group from step 2."""
    engine = build_engine("hf", model, tokenizer, **engine_options(config))
    sampling = SamplingParams(max_new_tokens=8, temperature=config.rollout.temperature, seed=1)
    rollouts = engine.generate(["2 + 2 =", "3 - 1 ="], 2, sampling)
    examples = [type("E", (), {"id": f"e{i}"})() for i in range(2)]
    scores = [Score(reward=float(i % 2), correct=bool(i % 2)) for i in range(len(rollouts))]
    fresh = make_groups(config, 3, [0, 1], examples, rollouts, scores)
    old = engine.generate(["5 + 1 ="], 2, SamplingParams(max_new_tokens=8, temperature=0.7, seed=2))
    replay = make_groups(config, 2, [0], examples, old, scores[:2])
    for group in replay:
        group.sampler_entropies = None  # as after a resume: a replayed group has none
    return assemble(fresh, replay, tokenizer.pad_token_id, torch.device("cpu"))


def test_fresh_rows_take_the_samplers_values_and_replayed_rows_the_pass(tokenizer):
    config = load_config("remix-grpo", ["model.name=tiny-random", "model.dtype=float32", "rollout.temperature=0.7",
                                        "train.samples_per_prompt=2"])
    model = build_tiny_model(seed=1)
    plan = StepPlan(step=3, phase="mix", offpolicy_fraction=0.33, updates_per_batch=1, kl_convex_weight=1.0,
                    reincarnate=False, fresh_prompts=2, replay_prompts=1)
    recomputed, reused = _mixed_batch(tokenizer, model, config), _mixed_batch(tokenizer, model, config)
    references = FrozenReferences(model, config)
    full = logprob_passes(config, recomputed, plan, model, references, None)
    calls = []
    real = experience.token_logprobs

    def spy(model, tokens, *args, **kwargs):
        calls.append(len(tokens))
        return real(model, tokens, *args, **kwargs)

    experience.token_logprobs = spy
    try:
        fast = logprob_passes(config, reused, plan, model, references, None, sampler_pi_k=True)
    finally:
        experience.token_logprobs = real
    assert calls == [2]  # pi_k's pass ran on the replayed group's 2 rows only
    fresh = ~reused.is_replay
    assert torch.equal(reused.proximal_logp[fresh], reused.behaviour_logp[fresh])  # the sampler's, as they are
    assert torch.allclose(reused.proximal_logp, recomputed.proximal_logp, atol=1e-5, rtol=0)
    # the replayed rows' own pass: its shared prompt forward groups rows otherwise than the full pass's, so float
    # rounding may differ (train.shared_prompt_forward), not more
    assert torch.allclose(reused.proximal_logp[~fresh], recomputed.proximal_logp[~fresh], atol=1e-6, rtol=0)
    assert fast["entropy"] == pytest.approx(full["entropy"], abs=1e-5)
    assert fast["logprob/pi_k_from_sampler"] == 1.0 and full["logprob/pi_k_from_sampler"] == 0.0
    assert "logprob_mismatch/mean" in full and "logprob_mismatch/mean" not in fast  # no gap to measure
    assert fast["kl/base"] == pytest.approx(full["kl/base"], abs=1e-5)


def test_the_first_steps_check_decides_by_the_bound():
    auto = SamplerPiK(load_config("quickstart", ["model.dtype=float32"]))
    assert auto.enabled and not auto.active and auto.bound == 1e-3
    assert "no pi_k pass" in auto.check(2e-6, 3e-5) and auto.active
    auto = SamplerPiK(load_config("quickstart", ["model.dtype=float32"]))
    assert "turned off" in auto.check(0.02, 0.4) and not auto.enabled and not auto.active
    forced = SamplerPiK(load_config("quickstart", ["model.dtype=bfloat16", "rollout.reuse_sampler_logprobs=true"]))
    assert forced.bound == 0.15 and "exceeds" in forced.check(0.2, 0.9) and forced.active
    off = SamplerPiK(load_config("quickstart", ["model.dtype=bfloat16"]))
    off.load_state_dict({"enabled": True, "checked": True, "why": "saved"})  # a saved decision cannot turn it on
    assert not off.active


def test_on_policy_run_skips_pi_ks_pass_after_checking_step_one(tmp_path, caplog):
    caplog.set_level("INFO")
    trainer = run_training(tiny_config(tmp_path / "a", "grpo", *ON_POLICY, "train.steps=3"))
    lines = read_lines(trainer.run_dir, "train")
    assert [line["logprob/pi_k_from_sampler"] for line in lines] == [0.0, 1.0, 1.0]
    assert lines[0]["logprob_mismatch/mean"] < 1e-4 and "logprob_mismatch/mean" not in lines[1]
    assert "no pi_k pass for this step's fresh responses" in caplog.text
    # the update is that of the recomputing run, to float32 precision
    plain = run_training(tiny_config(tmp_path / "b", "grpo", *ON_POLICY, "train.steps=3",
                                     "rollout.reuse_sampler_logprobs=false"))
    for line, other in zip(lines, read_lines(plain.run_dir, "train")):
        assert line["rollouts/total"] == other["rollouts/total"] and line["reward/mean"] == other["reward/mean"]
        assert line["entropy"] == pytest.approx(other["entropy"], abs=1e-5)
    for (name, p), q in zip(trainer.policy.state_dict().items(), plain.policy.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), name


def test_a_sampler_that_disagrees_turns_auto_off_on_step_one(tmp_path, monkeypatch, caplog):
    real = HFRolloutEngine.generate

    def skewed(self, *args, **kwargs):  # an engine whose log-probs are not the trainer's (e.g. other kernels)
        rollouts = real(self, *args, **kwargs)
        for r in rollouts:
            r.logprobs = [value - 0.05 for value in r.logprobs]
        return rollouts

    monkeypatch.setattr(HFRolloutEngine, "generate", skewed)
    trainer = run_training(tiny_config(tmp_path, "grpo", *ON_POLICY, "train.steps=2"))
    lines = read_lines(trainer.run_dir, "train")
    assert [line["logprob/pi_k_from_sampler"] for line in lines] == [0.0, 0.0]
    assert lines[1]["logprob_mismatch/mean"] == pytest.approx(0.05, abs=1e-4)
    assert "rollout.reuse_sampler_logprobs=auto turned off" in caplog.text


def test_resume_keeps_the_first_steps_decision_and_is_exact(tmp_path):
    overrides = ["model.dtype=float32", "train.steps=4", "checkpoint.every=2", "remix.offpolicy_fraction=0.5",
                 "remix.reincarnate_at=3", "eval.before_training=false", "eval.after_training=false"]
    straight, resumed = straight_and_resumed(tmp_path, overrides)
    a, b = read_lines(straight.run_dir, "train"), read_lines(resumed.run_dir, "train")
    assert [line["logprob/pi_k_from_sampler"] for line in b] == [0.0, 1.0, 1.0, 1.0]
    assert _comparable(a) == _comparable(b)
    for (name, p), q in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert torch.equal(p, q), name

