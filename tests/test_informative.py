"""Spending rollouts well (issue 34): informative replay, its priority and cap, dynamic sampling, prompt selection in
the trainer, the waste metrics, exact resume with each option, and the same run on 2 ranks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from remix_rft.buffer import ReplayBuffer, RolloutGroup
from remix_rft.errors import ConfigError
from remix_rft.informative import choose_fresh, group_informative, replace_uninformative, signal_metrics
from remix_rft.trainer import run_training

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import _comparable, read_lines, straight_and_resumed, tiny_config  # noqa: E402

# prompts with an even answer never pay (every group of theirs has equal rewards); the others pay by the parity of
# the response's length, so their groups usually differ: a random tiny model then sees both kinds of group
MIXED_REWARD = """
def reward(response, example):
    if int(example.answer) % 2 == 0:
        return 0.0
    return float(len(response) % 2)
"""
REMIX = ["remix.offpolicy_fraction=0.5", "remix.kl_convex_start=0", "remix.kl_convex_interval=1",
         "eval.before_training=false", "eval.after_training=false"]


@pytest.fixture
def mixed(tmp_path) -> str:
    (tmp_path / "mixed_reward.py").write_text(MIXED_REWARD)
    return f"reward.custom={tmp_path / 'mixed_reward.py'}:reward"


def group(version: int, rewards: list[float], advantages: list[float] | None = None, replays: int = 0,
          index: int = 0) -> RolloutGroup:
    size = len(rewards)
    if advantages is None:  # GRPO's: (r - mean) / (std + eps)
        r = torch.tensor(rewards, dtype=torch.float32)
        advantages = ((r - r.mean()) / (r.std() + 1e-6)).tolist()
    return RolloutGroup(version=version, prompt_ids=[1, 2], response_ids=[[3, 4]] * size,
                        behaviour_logprobs=[[-0.5, -0.5]] * size, rewards=rewards, advantages=advantages,
                        meta={"index": index}, replays=replays)


# ------------------------------------------------------------------------------------------------ the buffer
def test_informative_replay_never_stores_or_replays_a_group_with_zero_advantage():
    buffer = ReplayBuffer(2, seed=0, mode="informative")
    stored = buffer.add([group(1, [0, 0, 0, 0], index=0), group(1, [1, 1, 1, 1], index=1),
                         group(1, [1, 0, 0, 0], index=2), group(1, [0, 1, 0, 1], index=3)])
    assert stored == 2 and len(buffer) == 2
    for _ in range(5):
        drawn = buffer.sample(min(2, buffer.drawable(2)), step=2) if buffer.drawable(2) else []
        assert all(g.informative and g.signal > 0 for g in drawn)
        assert {g.meta["index"] for g in drawn} <= {2, 3}
    # the paper's mode keeps them all
    uniform = ReplayBuffer(2, seed=0)
    assert uniform.add([group(1, [0, 0]), group(1, [1, 0])]) == 2


def test_priority_is_signal_times_recency_over_replays_as_documented():
    buffer = ReplayBuffer(8, seed=0, mode="informative", recency=0.5, max_replays=3)
    # signal = mean |advantage|: 1.0, 0.5, 2.0; ages at step 10: 1, 3, 2; replays 0, 1, 2
    buffer.add([group(9, [1, 0], [1.0, -1.0]), group(7, [1, 0], [0.5, -0.5], replays=1),
                group(8, [1, 0], [2.0, -2.0], replays=2)])
    assert buffer.priorities(10) == pytest.approx([1.0 * 1.0 / 1, 0.5 * 0.25 / 2, 2.0 * 0.5 / 3])
    buffer.sample(1, step=10)  # one draw: its group's replay count goes up
    assert sum(g.replays for g in buffer._groups) == 4


def test_a_draw_is_proportional_to_priority():
    """The first group drawn is group i with probability p_i / sum p (successive draws without replacement)."""
    counts = torch.zeros(3)
    for seed in range(3000):
        buffer = ReplayBuffer(4, seed=seed, mode="informative", recency=0.5, max_replays=5)
        buffer.add([group(9, [1, 0], [1.0, -1.0], index=0), group(8, [1, 0], [1.0, -1.0], index=1),
                    group(9, [1, 0], [0.25, -0.25], index=2)])
        counts[buffer.sample(1, step=10)[0].meta["index"]] += 1
    expected = torch.tensor([1.0, 0.5, 0.25]) / 1.75
    assert torch.allclose(counts / 3000, expected, atol=0.03), counts / 3000


def test_the_replay_cap_and_the_window():
    buffer = ReplayBuffer(8, seed=0, mode="informative", max_replays=2)
    buffer.add([group(v, [1, 0], index=v) for v in range(1, 11)])
    assert buffer.evict(11) == 2  # history_window 8: versions 3..10 stay
    assert buffer.versions() == list(range(3, 11))
    drawn = [g.meta["index"] for _ in range(8) for g in buffer.sample(2, step=11)]
    assert sorted(drawn) == sorted(list(range(3, 11)) * 2)  # every group twice, then none is drawable
    assert buffer.drawable(11) == 0
    with pytest.raises(ValueError, match="0 of them drawable"):
        buffer.sample(1, step=11)


def test_uniform_replay_draws_exactly_as_the_paper_mode_always_did():
    """One randperm of the held groups per draw from the buffer's seeded generator: the draws of the code before
    informative replay existed, whatever the groups' rewards."""
    buffer = ReplayBuffer(2, seed=7)
    groups = [group(1, [0, 0], index=i) if i % 2 else group(1, [1, 0], index=i) for i in range(6)]
    buffer.add(groups)
    reference = torch.Generator().manual_seed(7)
    for count in (3, 2, 6, 1):
        expected = [groups[i].meta["index"] for i in torch.randperm(6, generator=reference)[:count].tolist()]
        assert [g.meta["index"] for g in buffer.sample(count)] == expected


def test_buffer_state_keeps_replay_counts_and_refuses_another_mode():
    buffer = ReplayBuffer(4, seed=3, mode="informative")
    buffer.add([group(1, [1, 0], index=i) for i in range(4)])
    buffer.sample(2, step=2)
    restored = ReplayBuffer(4, seed=3, mode="informative")
    restored.load_state_dict(buffer.state_dict())
    assert [g.replays for g in restored._groups] == [g.replays for g in buffer._groups]
    assert [g.meta["index"] for g in restored.sample(2, step=3)] == [g.meta["index"] for g in buffer.sample(2, step=3)]
    with pytest.raises(ValueError, match="remix.replay=informative"):
        ReplayBuffer(4, seed=3).load_state_dict(buffer.state_dict())


def test_critic_advantages_store_every_group_and_weigh_by_recency_and_replays():
    """PPO: the stored advantages are 0 (GAE is recomputed with the current critic), so every group counts as signal
    1 and the priority is recency ** (age - 1) / (1 + replays)."""
    buffer = ReplayBuffer(4, seed=0, mode="informative", recency=0.5, advantage_signal=False)
    assert buffer.add([group(3, [0.0], [0.0]), group(2, [1.0], [0.0], replays=1)]) == 2
    assert buffer.priorities(4) == pytest.approx([1.0, 0.5 / 2])


# ------------------------------------------------------------------------------------ group-level choices
def test_group_informative_and_the_dynamic_sampling_choice():
    assert group_informative([0, 0, 1, 0, 1, 1, 0.5, 0.5], 2) == [False, True, False, False]
    groups = [group(1, r, index=i) for i, r in enumerate([[0, 0], [1, 0], [1, 1], [0, 1], [1, 0]])]
    trained, dropped = choose_fresh(groups, 2)
    assert [g.meta["index"] for g in trained] == [1, 3] and [g.meta["index"] for g in dropped] == [0, 2, 4]
    trained, dropped = choose_fresh(groups[:3], 3)  # too few informative: filled with the uninformative, in order
    assert [g.meta["index"] for g in trained] == [0, 1, 2] and dropped == []
    trained, _ = choose_fresh([groups[2], groups[0], groups[1]], 2)
    # the informative group 1 and the first uninformative one (2), in generation order: fresh rows stay aligned
    assert [g.meta["index"] for g in trained] == [2, 1]


def test_buffered_groups_take_the_place_of_uninformative_fresh_ones():
    fresh = [group(5, r, index=i) for i, r in enumerate([[0, 0], [1, 0], [1, 1], [0, 0]])]
    assert [g.meta["index"] for g in replace_uninformative(fresh, 2)] == [1, 3]
    assert [g.meta["index"] for g in replace_uninformative(fresh, 5)] == [1]
    assert replace_uninformative(fresh, 0) == fresh


def test_signal_metrics_by_hand():
    generated = [group(1, [0, 0]), group(1, [1, 0]), group(1, [1, 1]), group(1, [0, 1])]
    replayed = [group(0, [1, 0]), group(0, [0, 0])]
    advantages = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    out = signal_metrics(generated, generated[1:], replayed, advantages, mask)
    assert out["fresh/informative_share"] == 0.5 and out["fresh/informative_groups"] == 2
    assert out["fresh/groups"] == 4 and out["fresh/trained_groups"] == 3
    assert out["replay/informative_share"] == 0.5
    assert out["advantage/nonzero_token_share"] == pytest.approx(3 / 6)


def test_config_checks_the_new_options(tmp_path):
    for override, key in (("remix.replay=fifo", "remix.replay"), ("remix.replay_recency=0", "remix.replay_recency"),
                          ("remix.max_replays=0", "remix.max_replays"), ("data.selection=greso", "data.selection"),
                          ("remix.replay_m2_threshold=0", "remix.replay_m2_threshold"),
                          ("data.selection_max_skip=1.0", "data.selection_skip_base/max_skip"),
                          ("train.dynamic_sampling_max_rounds=0", "train.dynamic_sampling_max_rounds")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            tiny_config(tmp_path, "remix-grpo", override)
    with pytest.raises(ConfigError, match="samples_per_prompt >= 2"):
        tiny_config(tmp_path, "ppo", "train.dynamic_sampling=true", "train.samples_per_prompt=1",
                    "train.minibatch_size=4")


# ------------------------------------------------------------------------------------------ in the trainer
def test_informative_replay_in_training_replays_only_informative_groups_and_replaces_uninformative_fresh(tmp_path,
                                                                                                        mixed):
    # 4 samples a prompt and 4 replays a group: enough informative groups in the buffer that some step finds more
    # than its planned replay while its fresh groups have none to spare (the seed's draw; 3 of seeds 0-3 do)
    trainer = run_training(tiny_config(tmp_path, "remix-grpo", mixed, *REMIX, "train.steps=7",
                                       "remix.reincarnate_at=6", "remix.replay=informative",
                                       "remix.history_window=4", "train.samples_per_prompt=4",
                                       "remix.max_replays=4"))
    lines = read_lines(trainer.run_dir, "train")
    replayed = [line for line in lines if line["replay/groups"] > 0]
    assert replayed, "no step replayed"
    assert all(line["replay/informative_share"] == 1.0 for line in replayed)
    assert sum(line["replay/replacements"] for line in lines) > 0
    for line in lines:  # a replacement takes one fresh group's place: the batch keeps its number of prompt groups
        assert line["fresh/trained_groups"] + line["replay/groups"] <= 4
        assert line["fresh/trained_groups"] == line["fresh/groups"] - line["replay/replacements"]
    uniform = run_training(tiny_config(tmp_path / "u", "remix-grpo", mixed, *REMIX, "train.steps=5",
                                       "remix.reincarnate_at=4"))
    shares = [line["replay/informative_share"] for line in read_lines(uniform.run_dir, "train")
              if line["replay/groups"] > 0]
    assert min(shares) < 1.0  # the paper's uniform replay does replay groups with no signal: the waste measured


def test_dynamic_sampling_counts_every_generated_response(tmp_path, mixed):
    trainer = run_training(tiny_config(tmp_path, "grpo", mixed, "train.steps=3", "train.dynamic_sampling=true",
                                       "eval.before_training=false", "eval.after_training=false"))
    lines = read_lines(trainer.run_dir, "train")
    assert any(line["rollouts/step"] > 8 for line in lines)  # extra rounds ran
    assert all(line["fresh/trained_groups"] == 4 for line in lines)
    assert all(line["rollouts/step"] == 2 * line["fresh/groups"] for line in lines)
    assert lines[-1]["rollouts/total"] == sum(line["rollouts/step"] for line in lines) == trainer.state.rollouts_total
    # the trained groups are the informative ones whenever the rounds found enough
    assert all(line["advantage/nonzero_token_share"] == 1.0 for line in lines
               if line["fresh/informative_groups"] >= 4)


def test_prompt_selection_skips_prompts_that_gave_no_signal(tmp_path, mixed):
    # 8 training problems, 4 a step: every prompt comes back every other step, so the history acts from step 3 on
    trainer = run_training(tiny_config(tmp_path, "grpo", mixed, "train.steps=6", "data.train_options={size: 8}",
                                       "data.selection=skip_uninformative", "eval.before_training=false",
                                       "eval.after_training=false"))
    lines = read_lines(trainer.run_dir, "train")
    assert lines[-1]["selection/skipped_total"] == trainer.selector.skipped_total > 0
    assert sum(line["selection/skipped"] for line in lines) == trainer.selector.skipped_total
    assert all(line["rollouts/step"] == 8 for line in lines)  # skipped prompts cost nothing


@pytest.mark.parametrize("option", [
    ["remix.replay=informative", "remix.history_window=3"],
    ["train.dynamic_sampling=true"],
    ["data.selection=skip_uninformative", "data.train_options={size: 8}"],
])
def test_resume_is_exact_with_each_new_option(tmp_path, mixed, option):
    overrides = [mixed, *REMIX, "train.steps=5", "checkpoint.every=2", "remix.reincarnate_at=4", *option]
    straight, resumed = straight_and_resumed(tmp_path, overrides)
    a, b = read_lines(straight.run_dir, "train"), read_lines(resumed.run_dir, "train")
    assert [line["step"] for line in b] == [1, 2, 3, 4, 5]
    assert _comparable(a) == _comparable(b)
    for (name, p), q in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert torch.equal(p, q), name


def test_new_options_with_pipelining_masks_and_lora(tmp_path, mixed):
    """Every option at once beside the other features' ground: one-step-off generation, a mismatch mask, top-p and
    LoRA adapters."""
    trainer = run_training(tiny_config(tmp_path, "remix-grpo", mixed, *REMIX, "train.steps=4", "remix.reincarnate_at=3",
                                       "remix.replay=informative", "train.dynamic_sampling=true",
                                       "data.selection=skip_uninformative", "data.train_options={size: 8}",
                                       "rollout.pipeline=true", "rollout.behaviour_logprobs=engine",
                                       "rollout.mismatch_mask=icepop", "rollout.top_p=0.9", "model.lora.r=4"))
    lines = read_lines(trainer.run_dir, "train")
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    assert lines[-1]["rollouts/total"] == sum(line["rollouts/step"] for line in lines)
    assert all(line["fresh/trained_groups"] + line["replay/groups"] <= 4 for line in lines)


# ------------------------------------------------------------------------------ M2PO's second-moment mask
def test_second_moment_mask_leaves_out_the_fewest_outliers_by_hand():
    from remix_rft.algos import second_moment_mask

    log_ratio = torch.tensor([[0.1, 0.5, -0.3, 0.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])  # squares 0.01, 0.25, 0.09, 0 (and a padded position)
    # M2 = 0.35 / 4 = 0.0875: within 0.1 nothing leaves; for 0.04 the 0.25 leaves (0.10 / 3 = 0.033)
    assert second_moment_mask(log_ratio, mask, 0.1).tolist() == [[1, 1, 1, 1, 0]]
    assert second_moment_mask(log_ratio, mask, 0.04).tolist() == [[1, 0, 1, 1, 0]]
    # for 0.01 the 0.09 leaves too (0.01 / 2 = 0.005)
    assert second_moment_mask(log_ratio, mask, 0.01).tolist() == [[1, 0, 0, 1, 0]]
    with_inf = torch.tensor([[0.0, float("-inf"), 0.1, 0.0, 0.0]])
    assert second_moment_mask(with_inf, mask, 0.04).tolist() == [[1, 0, 1, 1, 0]]
    with pytest.raises(ValueError, match="> 0"):
        second_moment_mask(log_ratio, mask, 0.0)


def test_replay_m2_mask_in_training_weighs_out_stale_replayed_tokens(tmp_path, mixed):
    # 4 samples a prompt: the first steps have reward variance, so the policy moves away from the buffered groups'
    trainer = run_training(tiny_config(tmp_path, "remix-grpo", mixed, *REMIX, "train.steps=4", "remix.reincarnate_at=3",
                                       "remix.replay_m2_threshold=1e-6", "train.lr=1e-2",
                                       "train.samples_per_prompt=4"))
    lines = read_lines(trainer.run_dir, "train")
    replayed = [line for line in lines if line["replay/groups"] > 0]
    assert replayed and all("replay/m2" in line for line in lines if line["phase"] == "mix")
    # a large step moves pi_k away from the replayed groups' mu, and a tiny threshold leaves out their outliers
    assert max(line["replay/m2"] for line in replayed) > 1e-6
    assert all(0 < line["replay/m2_masked_share"] < 1 for line in replayed if line["replay/m2"] > 1e-6)
