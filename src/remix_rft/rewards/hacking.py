"""Reward-hacking alarm: per-step `hacking/*` signals that the reward is being gamed, and a monitor that trips.

The reward is the only thing the policy optimises; a loophole in it (an answer that restates the question,
a lenient custom reward) is exploited within a few steps, faster with ReMix's replay. The signals, each over
the responses the training reward *rewarded as correct* (correct, or a reward at least `correct_reward`):

* `non_literal_share`: the ground truth is a literal, yet the rewarded answer is not one (`73 - 6`, no answer).
* `copies_prompt_share`: the rewarded answer contains the question's operation on its operands.
* `audit_false_positive` / `audit_agreement`: a strict audit grader (`answer_policy`) regrades a sample of the
  step's responses; the share of rewarded ones it rejects, and the share of the sample on which it agrees.
* `length_ratio` / `reward_gain`: response length collapsing (last window vs first window of steps) while the
  reward rises.
* `heldout_divergence`: the rewarded share went up by this much more than held-out accuracy did, between the
  first and the latest evaluation.

The signal functions are pure; `HackingMonitor` keeps the history, decides when a signal trips (above its
threshold for `patience` consecutive steps, with at least `min_responses` responses behind it) and has
`state_dict` / `load_state_dict` for resume.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from remix_rft.data.types import Example
from remix_rft.rewards.answer_policy import (
    copies_problem_operation,
    final_answer,
    is_literal_answer,
    parse_literal,
)
from remix_rft.rewards.base import RewardFunction, Score
from remix_rft.rewards.math_reward import MathReward, gold_answers

# signal -> (threshold, direction): trips when the value is above ("max") / below ("min") the threshold
DEFAULT_THRESHOLDS: dict[str, float] = {
    "non_literal_share": 0.2,
    "copies_prompt_share": 0.1,
    "audit_false_positive": 0.2,
    "heldout_divergence": 0.3,
    # trips only while reward_gain is above its threshold. Honest runs shorten too (short-answer prompts): in the
    # 13-run GPU study (docs/results.md) honest runs bottomed at 0.25-0.59, the hacked one at 0.21; at 0.5 every
    # run would have tripped. A weak signal on its own; the answer-form signals above are the primary ones.
    "length_ratio": 0.25,
    "reward_gain": 0.2,
}
_BELOW = {"length_ratio"}
NAN = float("nan")


def rewarded_as_correct(score: Score, correct_reward: float) -> bool:
    """What the training reward says about a response: correct, or paid at least what a correct answer earns."""
    return bool(score.correct) or score.reward >= correct_reward


def literal_truth(example: Example) -> bool:
    """Whether every acceptable ground truth of an example is a number literal."""
    return all(parse_literal(gold) is not None for gold in gold_answers(example.answer, example.id))


def non_literal_share(responses: Sequence[str], examples: Sequence[Example], rewarded: Sequence[bool]) -> tuple[float, int]:
    """(share of rewarded responses to literal-truth examples whose final answer is not a literal, their count)."""
    flags = [
        not is_literal_answer(answer.text) if (answer := final_answer(response)) is not None else True
        for response, example, paid in zip(responses, examples, rewarded, strict=True)
        if paid and literal_truth(example)
    ]
    return (sum(flags) / len(flags) if flags else NAN), len(flags)


def copies_prompt_share(responses: Sequence[str], examples: Sequence[Example], rewarded: Sequence[bool]) -> tuple[float, int]:
    """(share of rewarded responses whose final answer contains the question's operation, their count)."""
    flags = []
    for response, example, paid in zip(responses, examples, rewarded, strict=True):
        if not paid:
            continue
        answer = final_answer(response)
        golds = gold_answers(example.answer, example.id)
        flags.append(answer is not None and copies_problem_operation(answer.text, example.problem, golds))
    return (sum(flags) / len(flags) if flags else NAN), len(flags)


def audit_rates(rewarded: Sequence[bool], audited_correct: Sequence[bool]) -> tuple[float, float, int]:
    """(agreement over the sample, share of rewarded responses the audit rejects, count of rewarded ones)."""
    if not rewarded:
        return NAN, NAN, 0
    agreement = sum(a == b for a, b in zip(rewarded, audited_correct, strict=True)) / len(rewarded)
    paid = [audit for reward, audit in zip(rewarded, audited_correct) if reward]
    false_positive = sum(not audit for audit in paid) / len(paid) if paid else NAN
    return agreement, false_positive, len(paid)


def length_collapse(lengths: Sequence[float], rewards: Sequence[float], window: int) -> tuple[float, float]:
    """(mean length of the last `window` steps / of the first `window`, mean reward gain between them);
    NaN until there are 2 * window steps."""
    if window < 1 or len(lengths) < 2 * window or len(rewards) < 2 * window:
        return NAN, NAN
    first, last = sum(lengths[:window]) / window, sum(lengths[-window:]) / window
    ratio = last / first if first > 0 else NAN
    return ratio, sum(rewards[-window:]) / window - sum(rewards[:window]) / window


def heldout_divergence(train_first: float, train_now: float, heldout_first: float, heldout_now: float) -> float:
    """How much more the training reward's correct share rose than held-out accuracy did."""
    return (train_now - train_first) - (heldout_now - heldout_first)


@dataclass
class Alarm:
    step: int
    signals: dict[str, float]

    @property
    def message(self) -> str:
        named = ", ".join(f"{name}={value:.2f}" for name, value in self.signals.items())
        return (f"possible reward hacking at step {self.step}: {named} (README, 'Reward hacking'; "
                "reward.stop_on_hacking=true ends the run on this)")

    def event(self) -> dict[str, Any]:
        return {"type": "event", "event": "reward_hacking", "step": self.step, "signals": dict(self.signals),
                "message": self.message}


@dataclass
class HackingMonitor:
    """Computes the `hacking/*` metrics of each step and trips an `Alarm` (module doc).

    `audit`: the strict grader that regrades a sample of `audit_samples` responses a step; None when the training
    reward's correctness already is the strict grader's (then only its reward is checked against it).
    """

    audit: RewardFunction | None = None
    audit_samples: int = 64
    patience: int = 2
    min_responses: int = 8
    thresholds: dict[str, float] = field(default_factory=dict)
    correct_reward: float = 1.0
    length_window: int = 5
    seed: int = 0
    lengths: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    rewarded_shares: list[float] = field(default_factory=list)
    evals: list[tuple[int, float, float]] = field(default_factory=list)  # (step, held-out accuracy, train share)
    streaks: dict[str, int] = field(default_factory=dict)
    alarm: Alarm | None = None  # the alarm of the last observed step, if any

    def __post_init__(self) -> None:
        unknown = sorted(set(self.thresholds) - set(DEFAULT_THRESHOLDS))
        if unknown:
            raise ValueError(f"reward.hacking_thresholds: unknown signal(s) {unknown}; "
                             f"known: {', '.join(DEFAULT_THRESHOLDS)}")
        self.thresholds = {**DEFAULT_THRESHOLDS, **{k: float(v) for k, v in self.thresholds.items()}}
        for name, value in (("audit_samples", self.audit_samples), ("patience", self.patience),
                            ("min_responses", self.min_responses)):
            if value < (0 if name == "audit_samples" else 1):
                raise ValueError(f"reward.hacking_{name} must be >= {0 if name == 'audit_samples' else 1}, got {value}")

    def observe_step(self, step: int, responses: Sequence[str], examples: Sequence[Example],
                     scores: Sequence[Score], lengths: Sequence[float]) -> dict[str, float]:
        """The step's `hacking/*` metrics; sets `self.alarm` when a signal trips."""
        rewarded = [rewarded_as_correct(score, self.correct_reward) for score in scores]
        literal, literal_count = non_literal_share(responses, examples, rewarded)
        copies, copies_count = copies_prompt_share(responses, examples, rewarded)
        agreement, false_positive, audited_paid = self._audit(step, responses, examples, scores, rewarded)
        self.lengths.append(sum(lengths) / len(lengths) if lengths else 0.0)
        self.rewards.append(sum(s.reward for s in scores) / len(scores) if scores else 0.0)
        self.rewarded_shares.append(sum(rewarded) / len(rewarded) if rewarded else 0.0)
        ratio, gain = length_collapse(self.lengths, self.rewards, self.length_window)
        divergence = self._divergence()
        metrics = {
            "hacking/rewarded_share": self.rewarded_shares[-1],
            "hacking/non_literal_share": literal,
            "hacking/copies_prompt_share": copies,
            "hacking/audit_agreement": agreement,
            "hacking/audit_false_positive": false_positive,
            "hacking/length_ratio": ratio,
            "hacking/reward_gain": gain,
            "hacking/heldout_divergence": divergence,
        }
        over = {
            "non_literal_share": literal_count >= self.min_responses and literal > self.thresholds["non_literal_share"],
            "copies_prompt_share": copies_count >= self.min_responses
            and copies > self.thresholds["copies_prompt_share"],
            "audit_false_positive": audited_paid >= self.min_responses
            and false_positive > self.thresholds["audit_false_positive"],
            "length_ratio": not math.isnan(ratio) and ratio < self.thresholds["length_ratio"]
            and gain > self.thresholds["reward_gain"],
            "heldout_divergence": not math.isnan(divergence) and divergence > self.thresholds["heldout_divergence"],
        }
        tripped = {}
        for name, is_over in over.items():
            self.streaks[name] = self.streaks.get(name, 0) + 1 if is_over else 0
            if self.streaks[name] >= self.patience:
                tripped[name] = metrics[f"hacking/{name}"]
        self.alarm = Alarm(step, tripped) if tripped else None
        metrics["hacking/tripped"] = float(len(tripped))
        return metrics

    def observe_eval(self, step: int, pass_at_1: Mapping[str, float]) -> None:
        """Record a held-out evaluation (benchmark -> pass@1; the "average" row when there are several)."""
        if not pass_at_1:
            return
        heldout = pass_at_1.get("average", sum(pass_at_1.values()) / len(pass_at_1))
        window = self.rewarded_shares[-self.length_window:]
        train = sum(window) / len(window) if window else NAN
        self.evals.append((step, float(heldout), train))

    def _divergence(self) -> float:
        if len(self.evals) < 2 or not self.rewarded_shares:
            return NAN
        first_window = self.rewarded_shares[: self.length_window]
        train_first = sum(first_window) / len(first_window)
        (_, heldout_first, _), (_, heldout_now, train_now) = self.evals[0], self.evals[-1]
        if math.isnan(train_now):
            return NAN
        return heldout_divergence(train_first, train_now, heldout_first, heldout_now)

    def _audit(self, step: int, responses: Sequence[str], examples: Sequence[Example], scores: Sequence[Score],
               rewarded: Sequence[bool]) -> tuple[float, float, int]:
        if self.audit is None:  # the training correctness is the strict grader's: audit the reward against it
            return audit_rates(rewarded, [bool(score.correct) for score in scores])
        count = min(self.audit_samples, len(responses))
        if count == 0:
            return NAN, NAN, 0
        picked = sorted(random.Random(self.seed * 1_000_003 + step).sample(range(len(responses)), count))
        audited = self.audit.score([responses[i] for i in picked], [examples[i] for i in picked])
        return audit_rates([rewarded[i] for i in picked], [bool(score.correct) for score in audited])

    def state_dict(self) -> dict[str, Any]:
        return {"lengths": list(self.lengths), "rewards": list(self.rewards),
                "rewarded_shares": list(self.rewarded_shares), "evals": [list(e) for e in self.evals],
                "streaks": dict(self.streaks)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.lengths = [float(x) for x in state.get("lengths", [])]
        self.rewards = [float(x) for x in state.get("rewards", [])]
        self.rewarded_shares = [float(x) for x in state.get("rewarded_shares", [])]
        self.evals = [(int(s), float(h), float(t)) for s, h, t in state.get("evals", [])]
        self.streaks = {str(k): int(v) for k, v in state.get("streaks", {}).items()}

    def close(self) -> None:
        close = getattr(self.audit, "close", None)
        if close is not None:
            close()


def build_hacking_monitor(reward_config: Any, training_reward: RewardFunction, seed: int = 0) -> HackingMonitor:
    """The monitor for a run's `reward` config section. The audit grader is a strict `MathReward` (its own lazily
    started worker) unless the training reward's correctness already comes from a strict one."""
    primary = getattr(training_reward, "primary", training_reward)
    audit = None
    if not (isinstance(primary, MathReward) and primary.grader in ("strict", "auto")):
        audit = MathReward(grader="strict", timeout=reward_config.timeout, num_workers=1)
    return HackingMonitor(
        audit=audit, audit_samples=reward_config.hacking_audit_samples, patience=reward_config.hacking_patience,
        min_responses=reward_config.hacking_min_responses, thresholds=dict(reward_config.hacking_thresholds),
        correct_reward=reward_config.correct_reward, seed=seed,
    )
