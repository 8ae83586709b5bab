"""Pipelined (one-step-off) generation: the background job, its snapshot's log-probs, equality with synchronous
training at staleness 0, the behaviour correction at staleness 1, exact resume and the top-up after an adaptive
reincarnation."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import torch

from remix_rft.batching import collate, token_logprobs
from remix_rft.config import ConfigError, load_config
from remix_rft.models import load_model
from remix_rft.rollout.pipeline import RolloutPipeline, copy_weights
from remix_rft.trainer import Trainer, run_training

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import PRECISIONS, _comparable, read_lines, straight_and_resumed, tiny_config  # noqa: E402

REMIX = ["remix.offpolicy_fraction=0.5", "remix.reincarnate_at=2", "remix.kl_convex_start=0",
         "remix.kl_convex_interval=1", "eval.before_training=false", "eval.after_training=false"]
# the math reward gives the random model's responses 0 each, so no advantage and no update: reward their length
LENGTH_REWARD = """
def length(response, example):
    return len(response) / 50
"""


@pytest.fixture
def varied(tmp_path) -> str:
    (tmp_path / "length_reward.py").write_text(LENGTH_REWARD)
    return f"reward.custom={tmp_path / 'length_reward.py'}:length"


def test_the_job_runs_in_the_background_and_its_error_reaches_the_trainer():
    pipeline = RolloutPipeline()
    release, seen = threading.Event(), []

    def job():
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        release.wait(10)
        return "responses"

    pipeline.start(3, job)
    assert pipeline.busy and pipeline.step == 3
    with pytest.raises(RuntimeError, match="still pending"):
        pipeline.start(4, job)
    assert pipeline.take(2) is None  # not the step it was launched for
    release.set()
    assert pipeline.take(3) == "responses" and pipeline.step is None
    assert seen == [("remix-generate-step-3", torch.get_num_threads())]  # all the cores, as the training thread

    def failing():
        raise ValueError("engine out of memory")

    pipeline.start(5, failing)
    with pytest.raises(RuntimeError, match="pipelined generation failed: engine out of memory"):
        pipeline.take(5)
    assert pipeline.step is None


def test_copy_weights_fills_a_plain_snapshot():
    source, snapshot = load_model("tiny-random", dtype="float32"), load_model("tiny-random:7", dtype="float32")
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.5)
    copy_weights(source, snapshot)
    for (name, p), q in zip(source.state_dict().items(), snapshot.state_dict().values()):
        assert torch.equal(p, q), name


def test_config_bounds_the_staleness():
    assert load_config("remix-grpo", ["rollout.pipeline=true"]).rollout.max_staleness == 1
    with pytest.raises(ConfigError, match="rollout.max_staleness"):
        load_config("remix-grpo", ["rollout.pipeline=true", "rollout.max_staleness=2"])
    with pytest.raises(ConfigError, match="rollout.enable_sleep_mode"):
        load_config("remix-grpo", ["rollout.pipeline=true", "rollout.engine=vllm", "rollout.enable_sleep_mode=true"])
    from remix_rft.rollout import engine_options

    piped = load_config("remix-grpo", ["rollout.pipeline=true", "rollout.engine=vllm"])
    assert engine_options(piped)["enable_sleep_mode"] is False  # generates during updates: never asleep


@pytest.mark.parametrize("dtype", PRECISIONS)
def test_staleness_0_equals_synchronous_training(tmp_path, dtype, varied):
    overrides = ["train.steps=4", f"model.dtype={dtype}", *REMIX, varied]
    # the pipeline recomputes pi_k (its snapshot samples), so the synchronous run does too
    sync = run_training(tiny_config(tmp_path / "a", "remix-grpo", *overrides, "rollout.reuse_sampler_logprobs=false"))
    piped = run_training(tiny_config(tmp_path / "b", "remix-grpo", *overrides, "rollout.pipeline=true",
                                     "rollout.max_staleness=0"))
    a, b = read_lines(sync.run_dir, "train"), read_lines(piped.run_dir, "train")
    assert all(line["rollouts/staleness"] == 0 for line in b)

    def comparable(lines):
        # the sampler's own log-probs come from another module instance in another thread: equal to ~1e-7, and the
        # trained weights below show they never reach the update (recompute: the trainer's log-probs are used)
        # (sync/probe_gap: only the pipelined run copies weights into a snapshot, checked after each copy)
        return [{k: v for k, v in line.items()
                 if not k.startswith(("logprob_mismatch/", "rollouts/staleness", "sync/"))}
                for line in _comparable(lines)]

    assert comparable(a) == comparable(b)
    for x, y in zip(a, b):
        assert y["logprob_mismatch/mean"] == pytest.approx(x["logprob_mismatch/mean"], abs=1e-5)
    start = load_model("tiny-random", dtype="float32").state_dict()
    assert any(not torch.equal(start[name], p) for name, p in sync.policy.state_dict().items())  # it trained
    for (name, p), q in zip(sync.policy.state_dict().items(), piped.policy.state_dict().values()):
        assert torch.equal(p, q), name


def test_staleness_1_trains_on_the_previous_weights_responses(tmp_path, varied):
    """Step 2's responses are generated during step 1's update by the weights it started from; the job's log-probs
    are exactly the trainer's under those weights, and step 2 uses them as its behaviour policy."""
    config = tiny_config(tmp_path, "remix-grpo", "train.steps=3", *REMIX, "rollout.pipeline=true", varied)
    trainer = Trainer(config)
    try:
        start_weights = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
        plan = trainer.begin_step(1)
        trainer.learn(1, plan, trainer.generate(1, plan))
        assert any(not torch.equal(start_weights[k], v) for k, v in trainer.policy.state_dict().items())
        fresh = trainer.pipeline.take(2)
        assert fresh.versions == [1] * len(fresh.indices)  # generated by the weights step 1 started from
        before = load_model("tiny-random", dtype="float32")
        before.load_state_dict(start_weights)
        tokens = collate([r.prompt_ids for r in fresh.rollouts], [r.response_ids for r in fresh.rollouts],
                         trainer.pad_id)
        expected, _ = token_logprobs(before.eval(), tokens, config.rollout.temperature,
                                     max_tokens=config.train.micro_batch_tokens,
                                     chunk_tokens=config.train.logprob_chunk_tokens)
        for row, (rollout, logp) in enumerate(zip(fresh.rollouts, fresh.trainer_logprobs)):
            assert torch.equal(logp, expected[row, :len(rollout.response_ids)])
            assert logp == pytest.approx(torch.tensor(rollout.logprobs), abs=1e-4)  # the sampler's, same weights
        record = trainer.learn(2, trainer.begin_step(2), fresh)
        assert record["rollouts/staleness"] == 1.0
        # behaviour = the step-1 weights, pi_k = the step-2 weights: the first minibatch's ratio is not 1
        assert record["ratio/fresh_max"] > 1.0
    finally:
        trainer.close()


def test_resume_with_a_job_in_flight_is_exact(tmp_path, varied):
    overrides = ["train.steps=4", "checkpoint.every=2", *REMIX, "rollout.pipeline=true", varied]
    straight, resumed = straight_and_resumed(tmp_path, overrides)
    a, b = read_lines(straight.run_dir, "train"), read_lines(resumed.run_dir, "train")
    assert [line["rollouts/staleness"] for line in a] == [0.0, 1.0, 1.0, 1.0]
    assert _comparable(a) == _comparable(b)
    for (name, p), q in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert torch.equal(p, q), name


def test_an_adaptive_reincarnation_tops_up_the_responses_generated_ahead(tmp_path):
    # the plateau trigger fires at step 2, after step 3's job was launched with the mix phase's 2 prompts
    config = tiny_config(tmp_path, "remix-grpo", "train.steps=3", "remix.offpolicy_fraction=0.5",
                         "remix.reincarnate_at=auto", "remix.auto_reincarnation.min_step=2",
                         "remix.auto_reincarnation.window=1", "remix.auto_reincarnation.plateau_steps=1",
                         "remix.auto_reincarnation.plateau_min_gain=10", "eval.before_training=false",
                         "eval.after_training=false", "rollout.pipeline=true")
    trainer = run_training(config)
    train = read_lines(trainer.run_dir, "train")
    assert [line["phase"] for line in train] == ["mix", "mix", "on-policy"]
    prompts, group = config.train.prompts_per_step, config.train.samples_per_prompt
    assert train[2]["rollouts/step"] == prompts * group  # 2 prompts generated ahead + 2 generated at step 3
    assert train[2]["rollouts/staleness"] == 0.5


def test_the_top_up_samples_apart_from_the_job_generated_ahead(tmp_path, monkeypatch):
    """Issue 35: the top-up reused the pipelined job's sampling seed, so other prompts' responses shared 88% of their
    tokens with the job's (the same random draws at every position). Salted, they share what chance gives."""
    from remix_rft.trainer import Trainer

    seen = {}
    learn = Trainer.learn

    def capture(self, step, plan, fresh):
        seen[step] = fresh
        return learn(self, step, plan, fresh)

    monkeypatch.setattr(Trainer, "learn", capture)
    config = tiny_config(tmp_path, "remix-grpo", "train.steps=3", "remix.offpolicy_fraction=0.5",
                         "remix.reincarnate_at=auto", "remix.auto_reincarnation.min_step=2",
                         "remix.auto_reincarnation.window=1", "remix.auto_reincarnation.plateau_steps=1",
                         "remix.auto_reincarnation.plateau_min_gain=10", "eval.before_training=false",
                         "eval.after_training=false", "rollout.pipeline=true", "rollout.max_new_tokens=16",
                         "train.samples_per_prompt=4", "train.minibatch_size=8")
    run_training(config)
    rollouts = seen[3].rollouts
    ahead, topped = rollouts[:len(rollouts) // 2], rollouts[len(rollouts) // 2:]
    same = total = 0
    for a, b in zip(ahead, topped):
        n = min(len(a.response_ids), len(b.response_ids))
        same += sum(x == y for x, y in zip(a.response_ids[:n], b.response_ids[:n]))
        total += n
    assert total > 0 and same / total < 0.3, f"{same} of {total} tokens shared"


def test_a_lora_policy_reaches_the_snapshot_merged():
    from remix_rft import lora

    policy, snapshot = load_model("tiny-random", dtype="float32"), load_model("tiny-random", dtype="float32")
    lora.inject(policy, 4, 8.0, 0.0, "all-linear")
    with torch.no_grad():  # B starts at zero (the identity): move the adapters so the merge matters
        for name, p in policy.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.2)
    copy_weights(policy, snapshot)
    ids = torch.tensor([[5, 9, 3, 7, 2]])
    with torch.no_grad():
        adapted, merged = policy(input_ids=ids).logits, snapshot(input_ids=ids).logits
        plain = load_model("tiny-random", dtype="float32")(input_ids=ids).logits
    assert not torch.allclose(adapted, plain, atol=1e-3)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)


def test_a_lora_snapshot_with_the_same_adapters_computes_exactly_what_the_policy_does_in_bf16():
    """Issue 35 item 6: merged, W + BA is rounded to bf16 by autocast, which loses most of a small BA (at |BA|/|W|
    ~ 3e-3 many merged weights round to the base's own bf16 value), so the sampler ran another policy than the loss
    assumes. A snapshot holding the same adapters, copied unmerged, gives the policy's own logits bit for bit."""
    from remix_rft import lora
    from remix_rft.models import autocast_context

    policy = load_model("tiny-random", dtype="float32")
    lora.inject(policy, 4, 8.0, 0.0, "all-linear")
    with torch.no_grad():  # small adapters: the regime of a real run at a small learning rate
        for name, p in policy.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.02)
    merged = load_model("tiny-random", dtype="float32")
    adapted = load_model("tiny-random", dtype="float32")
    lora.inject(adapted, 4, 8.0, 0.0, "all-linear")
    copy_weights(policy, merged)
    copy_weights(policy, adapted)
    ids = torch.tensor([[5, 9, 3, 7, 2, 11, 4]])
    with torch.no_grad(), autocast_context("cpu", True):
        want = policy(input_ids=ids).logits.float()
        exact = adapted(input_ids=ids).logits.float()
        rounded = merged(input_ids=ids).logits.float()
    assert torch.equal(exact, want)
    assert not torch.equal(rounded, want)  # what the merged snapshot sampled: close, but another policy
