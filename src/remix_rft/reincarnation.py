"""Adaptive policy reincarnation (`remix.reincarnate_at=auto`): when replaying past rollouts stops paying, go back
to on-policy training (METHOD.md, "Adaptive reincarnation").

The paper switches at a fixed step T. Its own findings say when reuse stops paying, and each step already measures
the signals; this monitor reads them from the step's metrics record and decides:

  trigger       signal (moving mean over `window` steps)                  fires when
  ess           ess/replay: (sum w)^2 / (n sum w^2) of the replayed          below `ess_below`
                tokens' ratios w = pi_theta / mu
  length_drop   1 - fresh response length / its mean over the first          above `length_drop_above`
                `baseline_steps` steps (the Whipping effect)
  kl_precedent  kl/precedent: k3 KL(pi_k || pi_{k-1})                       above `kl_precedent_above`
  reward_plateau steps since the moving mean of the fresh reward last       reaches `plateau_steps`
                gained `plateau_min_gain` over its best
  max_step      the step count                                              at `max_step` (the fixed fallback)

A moving-mean trigger fires after `patience` consecutive steps past its threshold, and none fires before
`min_step`. It is plain Python over floats (no model, no I/O), with its whole state in `state_dict` so a resumed run
decides as the uninterrupted one would.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from remix_rft.config import AutoReincarnation

if TYPE_CHECKING:  # the trainer's plumbing below only calls them; the monitor stays plain Python
    from remix_rft.distributed import Distributed
    from remix_rft.schedule import ReMixSchedule

TRIGGERS = ("ess", "length_drop", "kl_precedent", "reward_plateau", "max_step")
# the step record's key each moving-mean signal reads
SIGNAL_KEYS = {"ess": "ess/replay", "length": "response_length/mean", "kl_precedent": "kl/precedent",
               "reward": "reward/mean"}


@dataclass(frozen=True)
class Decision:
    """A trigger fired at the end of `step`: reincarnate before step + 1."""

    step: int
    trigger: str
    value: float
    threshold: float

    @property
    def message(self) -> str:
        if self.trigger == "max_step":
            return f"no trigger fired by step {self.step} (remix.auto_reincarnation.max_step)"
        if self.trigger == "reward_plateau":
            return f"the fresh reward has not gained for {self.value:g} steps (plateau_steps {self.threshold:g})"
        relation = "<" if self.trigger == "ess" else ">"
        return f"{self.trigger} {self.value:.4g} {relation} {self.threshold:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"trigger": self.trigger, "trigger_value": self.value, "trigger_threshold": self.threshold}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class ReincarnationMonitor:
    """Reads each mix-phase step's metrics (`observe`) and returns a `Decision` when a trigger fires."""

    def __init__(self, settings: AutoReincarnation, kl_measured: bool = True):
        self.settings = settings
        # without a lagged precedent there is no KL(pi_k || pi_{k-1}) to read; the trigger is off (trainer logs it)
        self.kl_measured = kl_measured
        self.history: dict[str, deque[float]] = {name: deque(maxlen=settings.window) for name in SIGNAL_KEYS}
        self.baseline_lengths: list[float] = []
        self.streaks: dict[str, int] = {name: 0 for name in ("ess", "length_drop", "kl_precedent")}
        self.best_reward: float | None = None
        self.steps_since_gain = 0
        self.decision: Decision | None = None

    @property
    def active_triggers(self) -> list[str]:
        s = self.settings
        on = {"ess": s.ess_below is not None, "length_drop": s.length_drop_above is not None,
              "kl_precedent": s.kl_precedent_above is not None and self.kl_measured,
              "reward_plateau": s.plateau_steps is not None, "max_step": s.max_step is not None}
        return [name for name in TRIGGERS if on[name]]

    def _mean(self, name: str) -> float | None:
        values = self.history[name]
        return sum(values) / len(values) if len(values) == self.settings.window else None

    def signals(self) -> dict[str, float]:
        """The current moving means and counters, as `reincarnation/*` metrics."""
        out: dict[str, float] = {}
        ess, kl, length = self._mean("ess"), self._mean("kl_precedent"), self._mean("length")
        if ess is not None:
            out["reincarnation/ess_replay"] = ess
        if kl is not None:
            out["reincarnation/kl_precedent"] = kl
        baseline = self.length_baseline
        if length is not None and baseline:
            out["reincarnation/length_drop"] = 1.0 - length / baseline
        if self.best_reward is not None:
            out["reincarnation/steps_since_reward_gain"] = float(self.steps_since_gain)
        return out

    @property
    def length_baseline(self) -> float | None:
        if len(self.baseline_lengths) < self.settings.baseline_steps:
            return None
        return sum(self.baseline_lengths) / len(self.baseline_lengths)

    def observe(self, step: int, record: dict[str, Any]) -> Decision | None:
        """Take step `step`'s metrics; return the decision once a trigger fires (and the same one after that)."""
        if self.decision is not None:
            return self.decision
        s = self.settings
        for name, key in SIGNAL_KEYS.items():
            if _finite(record.get(key)):
                self.history[name].append(float(record[key]))
        if _finite(record.get(SIGNAL_KEYS["length"])) and len(self.baseline_lengths) < s.baseline_steps:
            self.baseline_lengths.append(float(record[SIGNAL_KEYS["length"]]))
        self._update_plateau()

        checks: list[tuple[str, float | None, float | None, bool]] = []
        ess = self._mean("ess")
        checks.append(("ess", ess, s.ess_below, ess is not None and s.ess_below is not None and ess < s.ess_below))
        length, baseline = self._mean("length"), self.length_baseline
        drop = 1.0 - length / baseline if length is not None and baseline else None
        checks.append(("length_drop", drop, s.length_drop_above,
                       drop is not None and s.length_drop_above is not None and drop > s.length_drop_above))
        kl = self._mean("kl_precedent") if self.kl_measured else None
        checks.append(("kl_precedent", kl, s.kl_precedent_above,
                       kl is not None and s.kl_precedent_above is not None and kl > s.kl_precedent_above))
        fired: Decision | None = None
        for name, value, threshold, past in checks:
            self.streaks[name] = self.streaks[name] + 1 if past else 0
            if fired is None and self.streaks[name] >= s.patience and step >= s.min_step:
                fired = Decision(step, name, float(value), float(threshold))
        if fired is None and s.plateau_steps is not None and self.steps_since_gain >= s.plateau_steps \
                and step >= s.min_step:
            fired = Decision(step, "reward_plateau", float(self.steps_since_gain), float(s.plateau_steps))
        if fired is None and s.max_step is not None and step >= s.max_step:
            fired = Decision(step, "max_step", float(step), float(s.max_step))
        self.decision = fired
        return fired

    def _update_plateau(self) -> None:
        reward = self._mean("reward")
        if reward is None:
            return
        if self.best_reward is None or reward >= self.best_reward + self.settings.plateau_min_gain:
            self.best_reward, self.steps_since_gain = reward, 0
        else:
            self.steps_since_gain += 1

    def state_dict(self) -> dict[str, Any]:
        return {"history": {name: list(values) for name, values in self.history.items()},
                "baseline_lengths": list(self.baseline_lengths), "streaks": dict(self.streaks),
                "best_reward": self.best_reward, "steps_since_gain": self.steps_since_gain,
                "decision": None if self.decision is None else vars(self.decision)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, values in state["history"].items():
            self.history[name] = deque(values, maxlen=self.settings.window)
        self.baseline_lengths = list(state["baseline_lengths"])
        self.streaks = dict(state["streaks"])
        self.best_reward, self.steps_since_gain = state["best_reward"], state["steps_since_gain"]
        self.decision = None if state["decision"] is None else Decision(**state["decision"])


# ---------------------------------------------------------------------------------------------------- the trainer's
def watch_step(monitor: ReincarnationMonitor, step: int, record: dict[str, Any], dist: Distributed,
               schedule: ReMixSchedule) -> None:
    """After a mix-phase step (before any reincarnation): rank 0's monitor reads the step's metrics; when a trigger
    fires, T moves to this step (every rank follows rank 0) and the step's record says which trigger fired."""
    decision = monitor.observe(step, record) if dist.is_main else None
    record.update(monitor.signals())
    decision = dist.broadcast_object(decision)
    if decision is not None:
        monitor.decision = decision
        schedule.reincarnate_after(decision.step)
        record.update({"reincarnation/trigger": decision.trigger, "reincarnation/message": decision.message})


def reincarnation_event(step: int, monitor: ReincarnationMonitor | None, rollouts_total: int) -> dict[str, Any]:
    """The metrics.jsonl event of the reincarnation before `step`, with the trigger that decided it (if adaptive)."""
    decision = monitor.decision if monitor is not None else None
    why = f" ({decision.message})" if decision is not None else ""
    return {"type": "event", "event": "reincarnation", "step": step, "rollouts/total": rollouts_total,
            **(decision.to_dict() if decision is not None else {}),
            "message": f"reference <- policy after step {step - 1}; on-policy from step {step}{why}"}
