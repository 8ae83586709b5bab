"""The reward-hacking alarm: its pure signals on hand-computed cases, the monitor's tripping and resume, and
end to end on the tiny model with a deliberately lenient custom reward."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from remix_rft.config import load_config
from remix_rft.data.types import Example
from remix_rft.rewards import Score
from remix_rft.rewards.hacking import (
    HackingMonitor,
    audit_rates,
    copies_prompt_share,
    heldout_divergence,
    length_collapse,
    non_literal_share,
    rewarded_as_correct,
)
from remix_rft.trainer import run_training

Q = Example(problem="What is 73 - 6?", answer="67", id="q")
S = Example(problem="Simplify $\\sqrt{8}$.", answer="2\\sqrt{2}", id="s")


def test_rewarded_as_correct():
    assert rewarded_as_correct(Score(1.0, True), 1.0)
    assert rewarded_as_correct(Score(1.0, False), 1.0)  # paid like a correct answer by a custom term
    assert not rewarded_as_correct(Score(0.1, False), 1.0)  # a format bonus alone


def test_non_literal_share_counts_rewarded_answers_to_literal_truths():
    responses = ["\\boxed{67}", "73 - 6.", "garbage without an answer", "\\boxed{2\\sqrt{2}}", "\\boxed{66}"]
    examples = [Q, Q, Q, S, Q]
    rewarded = [True, True, True, True, False]
    share, count = non_literal_share(responses, examples, rewarded)
    assert (share, count) == (pytest.approx(2 / 3), 3)  # S has no literal truth; the last is not rewarded
    assert math.isnan(non_literal_share(responses, examples, [False] * 5)[0])
    # working shown before the result is not a non-literal answer: the answer is the equation's last side
    assert non_literal_share(["\\boxed{73 - 6 = 67}", "73 - 6 = 67"], [Q, Q], [True, True]) == (0.0, 2)
    assert copies_prompt_share(["\\boxed{73 - 6 = 67}"], [Q], [True]) == (0.0, 1)


def test_copies_prompt_share():
    responses = ["\\boxed{73 - 6}", "\\boxed{-6+73}", "\\boxed{67}", "\\boxed{\\sqrt{8}}", "\\boxed{2\\sqrt{2}}"]
    examples = [Q, Q, Q, S, S]
    assert copies_prompt_share(responses, examples, [True] * 5) == (pytest.approx(3 / 5), 5)


def test_audit_rates():
    agreement, false_positive, paid = audit_rates([True, True, True, False], [True, False, False, False])
    assert (agreement, false_positive, paid) == (0.5, pytest.approx(2 / 3), 3)


def test_length_collapse_and_divergence():
    lengths = [100, 100, 40, 40]
    rewards = [0.1, 0.1, 0.9, 0.7]
    assert length_collapse(lengths, rewards, 2) == (pytest.approx(0.4), pytest.approx(0.7))
    assert all(math.isnan(x) for x in length_collapse(lengths[:3], rewards[:3], 2))
    assert heldout_divergence(0.1, 0.9, 0.2, 0.1) == pytest.approx(0.9)


def monitor(**kwargs) -> HackingMonitor:
    return HackingMonitor(audit=None, min_responses=4, patience=2, length_window=2, **kwargs)


def step(m: HackingMonitor, number: int, responses, correct, rewards=None, lengths=None):
    rewards = rewards or [1.0] * len(responses)
    scores = [Score(r, c) for r, c in zip(rewards, correct)]
    return m.observe_step(number, responses, [Q] * len(responses), scores, lengths or [10.0] * len(responses))


def test_a_grader_that_pays_restated_answers_trips_after_patience_steps():
    m = monitor()
    restated = ["\\boxed{73 - 6}"] * 4
    first = step(m, 1, restated, [True] * 4)  # a lenient training grader calls them correct
    assert first["hacking/copies_prompt_share"] == 1.0 and first["hacking/non_literal_share"] == 1.0
    assert m.alarm is None and first["hacking/tripped"] == 0  # patience 2: not on the first step
    second = step(m, 2, restated, [True] * 4)
    assert m.alarm is not None and set(m.alarm.signals) == {"copies_prompt_share", "non_literal_share"}
    assert second["hacking/tripped"] == 2
    event = m.alarm.event()
    assert event["type"] == "event" and event["event"] == "reward_hacking" and event["step"] == 2
    step(m, 3, ["\\boxed{67}"] * 4, [True] * 4)  # honest answers: the streak resets
    assert m.alarm is None


def test_honest_training_does_not_trip():
    m = monitor()
    for number in range(1, 8):
        metrics = step(m, number, ["\\boxed{67}", "\\boxed{66}", "\\boxed{67}", "no idea"],
                       [True, False, True, False], rewards=[1.0, 0.0, 1.0, 0.0])
        assert m.alarm is None
    assert metrics["hacking/audit_agreement"] == 1.0 and metrics["hacking/non_literal_share"] == 0.0


def test_audit_disagreement_trips_when_the_reward_pays_what_the_grader_rejects():
    m = monitor()
    for number in (1, 2):
        metrics = step(m, number, ["blah"] * 4, [False] * 4, rewards=[1.0] * 4)  # a custom term pays garbage
    assert metrics["hacking/audit_false_positive"] == 1.0 and "audit_false_positive" in m.alarm.signals


def test_length_collapse_while_reward_rises_trips():
    m = monitor()
    for number, (length, reward) in enumerate([(100, 0.0), (100, 0.0), (20, 1.0), (20, 1.0), (20, 1.0)], 1):
        step(m, number, ["\\boxed{67}"] * 4, [reward > 0] * 4, rewards=[reward] * 4, lengths=[length] * 4)
    assert m.alarm is not None and set(m.alarm.signals) == {"length_ratio"}


def test_heldout_divergence_trips_and_monitor_state_round_trips():
    m = monitor()
    m.observe_eval(0, {"arithmetic": 0.5})
    for number in (1, 2):
        step(m, number, ["\\boxed{67}"] * 4, [False] * 4, rewards=[0.0] * 4)
    for number in (3, 4):
        step(m, number, ["\\boxed{67}"] * 4, [True] * 4)
    m.observe_eval(4, {"arithmetic": 0.1, "average": 0.1})
    clone = monitor()
    clone.load_state_dict(json.loads(json.dumps(m.state_dict())))  # JSON-safe, as checkpoints need
    for monitor_ in (m, clone):
        metrics = step(monitor_, 5, ["\\boxed{67}"] * 4, [True] * 4)
        assert metrics["hacking/heldout_divergence"] == pytest.approx((1.0 - 0.0) - (0.1 - 0.5))
    metrics6 = [step(x, 6, ["\\boxed{67}"] * 4, [True] * 4) for x in (m, clone)]
    assert metrics6[0] == metrics6[1] and "heldout_divergence" in m.alarm.signals


def test_unknown_threshold_is_named():
    with pytest.raises(ValueError, match="unknown signal"):
        HackingMonitor(thresholds={"typo": 1.0})


# ------------------------------------------------------------------------------------------ end to end

TINY = [
    "model.name=tiny-random", "train.prompts_per_step=4", "train.samples_per_prompt=2", "train.minibatch_size=4",
    "rollout.max_new_tokens=6", "eval.limit=4", "eval.max_new_tokens=4", "logging.tensorboard=false",
    "logging.progress=false", "train.lr=1e-3", "data.train_options={size: 64}", "checkpoint.every=0",
    "eval.before_training=false", "eval.after_training=false",
]


def lines(run_dir: Path, kind: str) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [record for record in records if record["type"] == kind]


def test_default_job_logs_the_hacking_metrics_without_alarm(tmp_path):
    config = load_config("remix-grpo", [*TINY, f"logging.output_dir={tmp_path}", "logging.run_name=run",
                                        "train.steps=2"])
    trainer = run_training(config)
    train = lines(trainer.run_dir, "train")
    for key in ("rewarded_share", "non_literal_share", "copies_prompt_share", "audit_agreement",
                "audit_false_positive", "length_ratio", "reward_gain", "heldout_divergence", "tripped"):
        assert all(f"hacking/{key}" in record for record in train), key
    assert trainer.stop_reason is None and not lines(trainer.run_dir, "event")


LENIENT = '''
def lenient(response, example):
    """A careless custom reward: 1.0 for any response (restated question, garbage, anything)."""
    return 1.0
'''


@pytest.mark.parametrize("stop", [True, False])
def test_lenient_custom_reward_trips_the_alarm_on_the_tiny_model(tmp_path, stop, capsys):
    (tmp_path / "lenient.py").write_text(LENIENT)
    config = load_config("remix-grpo", [
        *TINY, f"logging.output_dir={tmp_path}", "logging.run_name=run", "train.steps=4",
        f"reward.custom={tmp_path / 'lenient.py'}:lenient", f"reward.stop_on_hacking={str(stop).lower()}",
        "reward.hacking_min_responses=4",  # ReMix generates 2-3 fresh prompts x 2 responses a step here
    ])
    trainer = run_training(config)
    events = [e for e in lines(trainer.run_dir, "event") if e["event"] == "reward_hacking"]
    train = lines(trainer.run_dir, "train")
    # the math reward calls the random model's garbage wrong, the custom term pays it: the audit disagrees
    assert all(record["hacking/audit_false_positive"] == 1.0 for record in train)
    assert events and events[0]["step"] == 2 and "audit_false_positive" in events[0]["signals"]
    if stop:
        assert trainer.stop_reason is not None and "reward.stop_on_hacking" in trainer.stop_reason
        assert "possible reward hacking at step 2" in capsys.readouterr().err
        assert [record["step"] for record in train] == [1, 2]
        assert (trainer.run_dir / "checkpoints").is_dir() and trainer.state.step == 2
    else:
        assert trainer.stop_reason is None and len(train) == 4 and len(events) == 3  # warns on every step


def test_config_keys_are_validated():
    from remix_rft.config import ConfigError

    config = load_config("quickstart", ["reward.hacking_thresholds={length_ratio: 0.3}", "reward.grader=paper"])
    assert config.reward.hacking_thresholds == {"length_ratio": 0.3} and config.reward.grader == "paper"
    for override, key in (("reward.grader=lenient", "reward.grader"),
                          ("reward.hacking_thresholds={typo: 1}", "reward.hacking_thresholds"),
                          ("reward.hacking_patience=0", "reward.hacking_patience")):
        with pytest.raises(ConfigError, match=key):
            load_config("quickstart", [override])
