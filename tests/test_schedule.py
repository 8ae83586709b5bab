"""ReMix schedule: phases, batch composition, reincarnation flag, KL-Convex weight, cost arithmetic."""

from __future__ import annotations

import dataclasses

import pytest

from remix_rft.schedule import ReMixSchedule, StepPlan


def test_default_mix_phase_then_reincarnation():
    schedule = ReMixSchedule(prompts_per_step=10)  # p = 0.4, m = 2, T = 50
    first = schedule.plan(1)
    assert first == StepPlan(
        step=1,
        phase="mix",
        offpolicy_fraction=0.4,
        updates_per_batch=2,
        kl_convex_weight=1.0,
        reincarnate=False,
        fresh_prompts=6,
        replay_prompts=4,
    )
    last_mix = schedule.plan(50)
    assert (last_mix.phase, last_mix.reincarnate, last_mix.replay_prompts) == ("mix", False, 4)

    switch = schedule.plan(51)
    assert switch.phase == "on-policy" and switch.reincarnate
    assert (switch.offpolicy_fraction, switch.updates_per_batch) == (0.0, 1)
    assert (switch.fresh_prompts, switch.replay_prompts) == (10, 0)
    assert switch.kl_convex_weight == pytest.approx(0.9)  # the lambda clock continues

    later = schedule.plan(52)
    assert later.phase == "on-policy" and not later.reincarnate
    assert [step for step in range(1, 300) if schedule.plan(step).reincarnate] == [51]


@pytest.mark.parametrize(
    ("step", "weight"), [(1, 1.0), (50, 1.0), (51, 0.9), (60, 0.9), (61, 0.8), (90, 0.6), (200, 0.5)]
)
def test_kl_convex_weight_follows_the_global_step(step, weight):
    assert ReMixSchedule(8).plan(step).kl_convex_weight == pytest.approx(weight)
    assert ReMixSchedule(8, kl_convex=False).plan(step).kl_convex_weight == 1.0


def test_custom_kl_convex_parameters():
    schedule = ReMixSchedule(
        8, kl_convex_start=0, kl_convex_interval=5, kl_convex_decrement=0.25, kl_convex_floor=0.2
    )
    # ceil(7 / 5) = 2 decrements -> 0.5; ceil(100 / 5) = 20 -> floor 0.2
    assert schedule.plan(7).kl_convex_weight == pytest.approx(0.5)
    assert schedule.plan(100).kl_convex_weight == pytest.approx(0.2)


def test_without_reincarnation_mixes_forever():
    schedule = ReMixSchedule(
        prompts_per_step=16, offpolicy_fraction=0.25, updates_per_batch=3, reincarnate_at=None
    )
    for step in (1, 51, 1000):
        plan = schedule.plan(step)
        assert plan.phase == "mix" and not plan.reincarnate
        assert (plan.replay_prompts, plan.fresh_prompts, plan.updates_per_batch) == (4, 12, 3)


def test_reincarnate_at_zero_is_on_policy_from_step_one():
    schedule = ReMixSchedule(4, reincarnate_at=0)
    assert schedule.plan(1).phase == "on-policy" and schedule.plan(1).reincarnate
    assert not schedule.plan(2).reincarnate


def test_on_policy_is_plain_ppo_grpo():
    schedule = ReMixSchedule.on_policy(32)
    for step in (1, 50, 51, 500):
        plan = schedule.plan(step)
        assert plan.phase == "on-policy" and not plan.reincarnate
        assert (plan.offpolicy_fraction, plan.updates_per_batch, plan.kl_convex_weight) == (0.0, 1, 1.0)
        assert (plan.fresh_prompts, plan.replay_prompts) == (32, 0)


@pytest.mark.parametrize(
    ("prompts", "fraction", "replay"),
    [(10, 0.4, 4), (256, 0.4, 102), (5, 0.5, 3), (3, 0.5, 2), (25, 0.1, 3), (8, 0.0, 0), (1, 0.4, 0)],
)
def test_replay_prompts_are_whole_groups_rounded_half_up(prompts, fraction, replay):
    # 0.4 * 256 = 102.4 -> 102; 0.5 * 5 = 2.5 -> 3 (Python's round gives 2); 0.1 * 25 = 2.5000000000000004
    plan = ReMixSchedule(prompts, offpolicy_fraction=fraction).plan(1)
    assert plan.replay_prompts == replay and plan.fresh_prompts == prompts - replay


def test_total_rollouts_cost_arithmetic():
    # METHOD.md example: ReMix-PPO, 256 prompts x 1 response, p = 0.4, T = 100, 350 steps. Whole-prompt replay
    # generates 154 a step in the mix phase: 100 * 154 + 250 * 256 = 79,400 (paper: 0.6 * 256 -> 79,360).
    ppo = ReMixSchedule(256, offpolicy_fraction=0.4, reincarnate_at=100)
    assert ppo.total_rollouts(350) == 100 * 154 + 250 * 256 == 79_400
    # With 250 prompts the fraction is exact: 100 * 150 + 250 * 250, times 8 samples per prompt (GRPO).
    grpo = ReMixSchedule(250, offpolicy_fraction=0.4, reincarnate_at=100)
    assert grpo.total_rollouts(350, samples_per_prompt=8) == (100 * 150 + 250 * 250) * 8
    assert ReMixSchedule.on_policy(256).total_rollouts(350) == 350 * 256
    assert ppo.total_rollouts(0) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts_per_step": 0}, "prompts_per_step"),
        ({"offpolicy_fraction": 1.0}, "offpolicy_fraction"),
        ({"offpolicy_fraction": -0.1}, "offpolicy_fraction"),
        ({"updates_per_batch": 0}, "updates_per_batch"),
        ({"reincarnate_at": -1}, "reincarnate_at"),
        ({"kl_convex_interval": 0}, "kl_convex_interval"),
        ({"kl_convex_decrement": -0.1}, "kl_convex_decrement"),
        ({"kl_convex_floor": 1.5}, "kl_convex_floor"),
        ({"prompts_per_step": 1, "offpolicy_fraction": 0.9}, "generates none"),
    ],
)
def test_validation_errors(kwargs, message):
    arguments = {"prompts_per_step": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        ReMixSchedule(**arguments)


def test_plan_rejects_bad_steps_and_is_frozen():
    schedule = ReMixSchedule(8)
    for bad in (0, -3, 1.5):
        with pytest.raises(ValueError, match="step"):
            schedule.plan(bad)
    with pytest.raises(ValueError, match="samples_per_prompt"):
        schedule.total_rollouts(10, samples_per_prompt=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.plan(1).step = 2
