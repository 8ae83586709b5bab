"""The TRL GRPOTrainer baseline (benchmarks/trl_baseline.py): mapping, reward adapter, and a tiny end-to-end run."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import yaml

from remix_rft.config import ConfigError, config_from_dict, load_config
from remix_rft.data.types import Example
from remix_rft.rewards import GRADING_PROBLEMS, build_reward

pytest.importorskip("trl")

MODULE_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "trl_baseline.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("trl_baseline", MODULE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


trl_baseline = _load_module()

TINY = [
    "model.name=tiny-random", "train.steps=2", "train.prompts_per_step=2", "train.samples_per_prompt=2",
    "train.minibatch_size=2", "rollout.max_new_tokens=4", "eval.limit=2", "eval.max_new_tokens=4", "eval.every=0",
    "logging.tensorboard=false", "logging.progress=false", "data.train_options={size: 16}",
]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "auto"])
def test_quickstart_maps_to_trl_batch_shape(tmp_path, dtype):
    config = load_config("quickstart", [f"model.dtype={dtype}"])
    values = trl_baseline.grpo_config_values(config, tmp_path)
    batch = config.train.prompts_per_step * config.train.samples_per_prompt  # 32 responses a step
    assert values["num_generations"] == config.train.samples_per_prompt
    assert values["per_device_train_batch_size"] == config.train.minibatch_size
    assert values["gradient_accumulation_steps"] == 1
    assert values["steps_per_generation"] == batch // config.train.minibatch_size == 2
    assert values["max_steps"] == config.train.steps * 2
    assert values["num_iterations"] == 1
    assert values["loss_type"] == "bnpo" and values["scale_rewards"] == "group"
    assert values["beta"] == config.algorithm.kl_coef and values["epsilon"] == config.algorithm.clip_eps
    assert values["max_completion_length"] == config.rollout.max_new_tokens
    # TRL's bf16 flag is our compute dtype, whatever `auto` picked on this CPU
    assert values["bf16"] is config.model.bf16 is (config.model.compute_dtype == "bfloat16")
    assert values["use_cpu"] is True
    # auto (the default job's): TRL gets the decision our trainer makes on this machine; true / false pass through
    assert config.model.gradient_checkpointing == "auto"
    assert values["gradient_checkpointing"] is trl_baseline.trl_gradient_checkpointing(config)
    forced = load_config("quickstart", ["model.gradient_checkpointing=true"])
    assert trl_baseline.grpo_config_values(forced, tmp_path)["gradient_checkpointing"] is True
    assert values["shuffle_dataset"] is False


def test_unsupported_settings_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="algorithm.name"):
        trl_baseline.grpo_config_values(load_config("ppo"), tmp_path)
    with pytest.raises(ConfigError, match="kl_estimator"):
        trl_baseline.grpo_config_values(load_config("grpo", ["algorithm.kl_estimator=k1"]), tmp_path)


def test_dataset_follows_our_prompt_order():
    from remix_rft.data.sampler import PromptSampler
    from remix_rft.models import load_tokenizer

    config = load_config("grpo", [*TINY, "train.steps=3"])
    tokenizer = load_tokenizer(config.model.name)
    examples = trl_baseline.load_train_examples(config)
    dataset = trl_baseline.build_prompt_dataset(config, tokenizer, examples)
    sampler = PromptSampler(len(examples), config.train.seed)
    expected = [i for _ in range(3) for i in sampler.next(config.train.prompts_per_step)]
    assert dataset["example_index"] == expected
    first = examples[expected[0]]
    assert first.problem in dataset["prompt"][0] and dataset["prompt"][0].startswith("<|im_start|>")
    assert dataset["answer"][0] == str(first.answer)


def test_reward_adapter_grades_with_our_reward():
    reward = build_reward("math", timeout=5.0)
    try:
        examples = [Example(problem="2+3", answer=5, id="a"), Example(problem="7-1", answer="6", id="b")]
        adapter = trl_baseline.TRLReward(reward, examples)
        adapter.eos_token_ids = {2}
        rewards = adapter(prompts=["p", "q"], completions=["so \\boxed{5}", "it is \\boxed{7}"], answer=["5", "6"],
                          example_index=[0, 1], completion_ids=[[10, 11, 2], [12, 13]])
        assert rewards == [1.0, 0.0]
        batch = adapter.batches[-1]
        assert [s.correct for s in batch.scores] == [True, False]
        assert batch.lengths == [3, 2] and batch.truncated == [False, True]
        with pytest.raises(ValueError, match="does not match"):
            adapter(prompts=["p"], completions=["\\boxed{5}"], answer=["6"], example_index=[0],
                    completion_ids=[[2]])
    finally:
        reward.close()


def test_two_step_run_writes_our_metrics_format(tmp_path):
    config = load_config("grpo", TINY)
    run_dir = trl_baseline.run_trl_grpo(config, tmp_path / "trl-run")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [line for line in lines if line["type"] == "train"]
    evals = [line for line in lines if line["type"] == "eval"]

    assert [line["step"] for line in train] == [1, 2]
    assert [line["rollouts/step"] for line in train] == [4, 4]
    assert [line["rollouts/total"] for line in train] == [4, 8]
    tokens = 0
    for line in train:
        assert line["phase"] == "on-policy" and line["optimizer_steps"] == 2
        assert 1 <= line["tokens/step"] <= 4 * 4
        assert line["tokens/step"] == pytest.approx(4 * line["response_length/mean"])
        tokens += line["tokens/step"]
        assert line["tokens/total"] == tokens
        assert 0.0 <= line["accuracy/train"] <= 1.0
        for key in ("reward/mean", "kl/base", "entropy", "grad_norm", "time/step", "time/generation"):
            assert math.isfinite(line[key]), key
        assert line["kl/base"] >= 0 and line["time/step"] > 0
        # TRL's own completion-length log agrees with the lengths the reward function saw
        assert line["trl/completions/mean_length"] == pytest.approx(line["response_length/mean"])
        # the same grading-problem counts as our trainer logs
        assert all(0 <= line[f"verifier/{status}"] <= 4 for status in GRADING_PROBLEMS)
    assert train[-1]["memory/peak_rss_mb"] > 0

    assert [line["step"] for line in evals] == [0, 2]
    assert [line["rollouts/total"] for line in evals] == [0, 8]
    assert evals[-1]["tokens/total"] == tokens
    assert "eval/arithmetic/pass@1" in evals[0] and "eval/average/pass@1" in evals[-1]
    assert (run_dir / "eval" / "step_000002" / "results.json").exists()
    assert "arithmetic" in (run_dir / "eval_summary.md").read_text()

    written = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert written.remix.enabled is False and written.model.name == "tiny-random"
    grpo = yaml.safe_load((run_dir / "trl_config.yaml").read_text())["grpo_config"]
    assert grpo["steps_per_generation"] == 2 and grpo["max_steps"] == 4 and grpo["generation_batch_size"] == 4
