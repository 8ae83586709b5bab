"""Adaptive reincarnation (`remix.reincarnate_at=auto`): each trigger against hand-computed signals, the patience,
min_step and max_step rules, an exact resume of the monitor, and the trainer switching on what fired."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from remix_rft.config import AutoReincarnation, load_config
from remix_rft.errors import ConfigError
from remix_rft.reincarnation import ReincarnationMonitor
from remix_rft.schedule import build_schedule
from remix_rft.trainer import run_training

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import _comparable, read_lines, straight_and_resumed, tiny_config  # noqa: E402

OFF = dict(ess_below=None, length_drop_above=None, kl_precedent_above=None, plateau_steps=None)


def monitor(**settings) -> ReincarnationMonitor:
    return ReincarnationMonitor(AutoReincarnation(**{"min_step": 0, "window": 2, "patience": 2, **OFF, **settings}))


def feed(mon: ReincarnationMonitor, records: list[dict]) -> list:
    return [mon.observe(step, record) for step, record in enumerate(records, start=1)]


def test_ess_fires_on_its_moving_mean_after_patience():
    mon = monitor(ess_below=0.8)
    # step 1 has no replay (no ess/replay); means over 2 replay steps: (0.9+0.75)/2 = 0.825, (0.75+0.8)/2 = 0.775,
    # (0.8+0.7)/2 = 0.75: past the threshold at steps 4 and 5, so with patience 2 it fires at step 5
    decisions = feed(mon, [{}, {"ess/replay": 0.9}, {"ess/replay": 0.75}, {"ess/replay": 0.8}, {"ess/replay": 0.7}])
    assert decisions[:4] == [None] * 4
    fired = decisions[4]
    assert (fired.step, fired.trigger, fired.value, fired.threshold) == (5, "ess", pytest.approx(0.75), 0.8)
    assert mon.signals()["reincarnation/ess_replay"] == pytest.approx(0.75)
    assert "ess 0.75 < 0.8" in fired.message


def test_a_streak_broken_by_one_good_step_starts_again():
    mon = monitor(ess_below=0.8, window=1)
    decisions = feed(mon, [{"ess/replay": 0.7}, {"ess/replay": 0.9}, {"ess/replay": 0.7}, {"ess/replay": 0.7}])
    assert [d is not None for d in decisions] == [False, False, False, True]
    assert decisions[3].step == 4


def test_length_drop_against_the_first_steps_baseline():
    mon = monitor(length_drop_above=0.3, baseline_steps=2)
    # baseline = (40 + 60) / 2 = 50; moving means: 50, 45, 32.5 (drop 0.35), 27.5 (drop 0.45): fires at step 5
    lengths = [40, 60, 30, 35, 20]
    decisions = feed(mon, [{"response_length/mean": n} for n in lengths])
    assert [d is not None for d in decisions] == [False, False, False, False, True]
    assert decisions[4].trigger == "length_drop"
    assert decisions[4].value == pytest.approx(1 - 27.5 / 50)
    assert mon.signals()["reincarnation/length_drop"] == pytest.approx(0.45)


def test_kl_precedent_needs_a_measured_precedent():
    records = [{"kl/precedent": 0.05}] * 3
    unmeasured = ReincarnationMonitor(AutoReincarnation(min_step=0, window=2, patience=2, **{
        **OFF, "kl_precedent_above": 0.03}), kl_measured=False)
    assert feed(unmeasured, records) == [None] * 3
    assert "kl_precedent" not in unmeasured.active_triggers


def test_kl_fires_at_the_patience_step():
    # window 2: the first mean exists at step 2 (past), step 3 (past): patience 2 -> fires at step 3
    decisions = feed(monitor(kl_precedent_above=0.03), [{"kl/precedent": 0.05}] * 3)
    assert [d is not None for d in decisions] == [False, False, True]
    assert decisions[2].trigger == "kl_precedent" and decisions[2].value == pytest.approx(0.05)


def test_reward_plateau_counts_steps_without_gain():
    mon = monitor(plateau_steps=3, plateau_min_gain=0.1)
    # moving means (window 2): -, 0.15 (best), 0.3 (gain 0.15: best), 0.35 (+0.05: 1), 0.35 (2), 0.3 (3 -> fires)
    rewards = [0.1, 0.2, 0.4, 0.3, 0.4, 0.2]
    decisions = feed(mon, [{"reward/mean": r} for r in rewards])
    assert [d is not None for d in decisions] == [False] * 5 + [True]
    assert decisions[5].trigger == "reward_plateau" and decisions[5].value == 3


def test_min_step_holds_a_trigger_and_max_step_is_the_fallback():
    held = feed(monitor(ess_below=0.8, window=1, patience=1, min_step=3), [{"ess/replay": 0.1}] * 3)
    assert [d is not None for d in held] == [False, False, True]
    fallback = feed(monitor(ess_below=0.8, max_step=3), [{"ess/replay": 0.95}] * 3)
    assert fallback[:2] == [None, None]
    assert (fallback[2].trigger, fallback[2].step) == ("max_step", 3)


def test_a_decision_stays_and_the_state_round_trips():
    records = [{"ess/replay": e, "response_length/mean": n, "reward/mean": r}
               for e, n, r in [(0.9, 40, 0.1), (0.85, 42, 0.2), (0.7, 30, 0.2), (0.72, 28, 0.2), (0.6, 25, 0.1)]]
    straight = monitor(ess_below=0.8, length_drop_above=0.3, plateau_steps=4)
    expected = feed(straight, records)
    first = monitor(ess_below=0.8, length_drop_above=0.3, plateau_steps=4)
    feed(first, records[:2])
    second = monitor(ess_below=0.8, length_drop_above=0.3, plateau_steps=4)
    second.load_state_dict(first.state_dict())
    resumed = [second.observe(step, record) for step, record in enumerate(records[2:], start=3)]
    assert resumed == expected[2:]
    assert expected[-1] is not None
    assert second.observe(9, {"ess/replay": 1.0}) == expected[-1]  # once fired, the decision stands


def test_config_accepts_auto_and_checks_the_triggers():
    config = load_config("remix-grpo", ["remix.reincarnate_at=auto", "remix.auto_reincarnation.max_step=30"])
    assert config.auto_reincarnation and config.remix.auto_reincarnation.max_step == 30
    assert build_schedule(config).reincarnate_at == 30  # the fallback until a trigger moves it
    assert not load_config("remix-grpo", ["remix.reincarnate_at=auto", "remix.enabled=false"]).auto_reincarnation
    for bad, key in [("remix.reincarnate_at=soon", "remix.reincarnate_at"),
                     ("remix.auto_reincarnation.ess_below=1.5", "ess_below"),
                     ("remix.auto_reincarnation.window=0", "window"),
                     ("remix.auto_reincarnation.max_step=1", "max_step"),
                     ("remix.auto_reincarnation.length_drop_above=1", "length_drop_above")]:
        with pytest.raises(ConfigError, match=key):
            load_config("remix-grpo", ["remix.reincarnate_at=auto", bad])


# ---------------------------------------------------------------------------------------------- in the trainer

def _auto(*overrides: str) -> list[str]:
    return ["remix.reincarnate_at=auto", "remix.offpolicy_fraction=0.5", "remix.auto_reincarnation.window=1",
            "remix.auto_reincarnation.patience=1", "remix.auto_reincarnation.plateau_min_gain=10",
            "remix.kl_convex_start=100", "eval.before_training=false", "eval.after_training=false", *overrides]


def test_trainer_reincarnates_when_a_trigger_fires(tmp_path):
    # a gain of 10 never happens: the plateau counts every step, so plateau_steps=1 fires at step min_step=2
    config = tiny_config(tmp_path, "remix-grpo", *_auto("train.steps=4", "remix.auto_reincarnation.min_step=2",
                                                        "remix.auto_reincarnation.plateau_steps=1"))
    trainer = run_training(config)
    train, events = read_lines(trainer.run_dir, "train"), read_lines(trainer.run_dir, "event")
    assert [line["phase"] for line in train] == ["mix", "mix", "on-policy", "on-policy"]
    assert train[1]["reincarnation/trigger"] == "reward_plateau"
    assert "reincarnation/trigger" not in train[0]
    assert [e["event"] for e in events] == ["reincarnation"]
    assert events[0]["step"] == 3 and events[0]["trigger"] == "reward_plateau"
    assert "has not gained" in events[0]["message"]
    # the KL trigger's signal is measured on every mix step, though the KL-Convex weight is still 1 (start 100)
    assert train[1]["kl_convex/weight"] == 1.0 and train[1]["kl/precedent"] >= 0
    assert "reincarnation/kl_precedent" in train[1]
    assert "reincarnation/kl_precedent" not in train[2]  # the monitor stops reading once it has decided


def test_resume_repeats_the_decision_of_the_uninterrupted_run(tmp_path):
    overrides = _auto("train.steps=5", "checkpoint.every=2", "remix.auto_reincarnation.min_step=1",
                      "remix.auto_reincarnation.plateau_steps=2")  # fires at step 3, after the step-2 checkpoint
    straight, resumed = straight_and_resumed(tmp_path, overrides)
    a, b = read_lines(straight.run_dir, "train"), read_lines(resumed.run_dir, "train")
    assert [line["phase"] for line in a] == ["mix"] * 3 + ["on-policy"] * 2
    assert _comparable(a) == _comparable(b)
    assert read_lines(resumed.run_dir, "event") == read_lines(straight.run_dir, "event")

    # resumed after the decision (the step-4 checkpoint): the run stays on-policy
    more = tiny_config(tmp_path / "b", "remix-grpo", *overrides, "train.steps=6")
    longer = run_training(more, resume=tmp_path / "b" / "run")
    assert read_lines(longer.run_dir, "train")[-1]["phase"] == "on-policy"
    assert len(read_lines(longer.run_dir, "event")) == 1
