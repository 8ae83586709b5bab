"""The ReMix step schedule: what each global training step does (METHOD.md sections 1-3).

Arithmetic (LESSONS.md #3), per step:
  - prompts in the training batch  = prompts_per_step = fresh_prompts + replay_prompts
  - responses generated            = fresh_prompts * samples_per_prompt   (the cost metric)
  - passes over the mixed batch    = updates_per_batch (the trainer's minibatching decides optimizer steps)
Mix phase (step <= reincarnate_at): replay_prompts = round_half_up(p * prompts_per_step) whole prompt groups,
updates_per_batch = m. On-policy phase (step > reincarnate_at): no replay, one pass, all prompts fresh.

Cost example (METHOD.md): ReMix-PPO, 256 prompts x 1 response, p = 0.4, T = 100, 350 steps. Replay is whole
prompts, so round(0.4 * 256) = 102 are replayed and 154 generated a step: 100 * 154 + 250 * 256 = 79,400
rollouts (the paper's 79,360 counts the fractional 0.6 * 256 = 153.6). See `ReMixSchedule.total_rollouts`.
"""

from __future__ import annotations

from dataclasses import dataclass

from remix_rft.algos.core import kl_convex_weight
from remix_rft.config import Config, replayed_prompts

PHASE_MIX = "mix"
PHASE_ON_POLICY = "on-policy"


@dataclass(frozen=True)
class StepPlan:
    step: int  # 1-based global training step
    phase: str  # "mix" or "on-policy"
    offpolicy_fraction: float
    updates_per_batch: int
    kl_convex_weight: float
    reincarnate: (
        bool  # True exactly at step reincarnate_at + 1: before generating, reference <- current policy
    )
    fresh_prompts: int  # prompts to generate for
    replay_prompts: int  # groups to draw from the buffer (the trainer caps it at what the buffer holds)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


class ReMixSchedule:
    """Per-step plan of ReMix: Mix-PPG with raised UTD, then policy reincarnation into on-policy PPO/GRPO.

    reincarnate_at=None never switches (the "without reincarnation" ablation). kl_convex=False keeps the
    KL-Convex weight at 1.0 (plain KL to the base reference); otherwise the weight follows
    `kl_convex_weight` of the global step, whose clock continues after reincarnation.
    A schedule with no replay and one update per batch (p = 0, m = 1) is plain on-policy training and its
    steps are labelled "on-policy" even before `reincarnate_at`.
    """

    def __init__(
        self,
        prompts_per_step: int,
        offpolicy_fraction: float = 0.4,
        updates_per_batch: int = 2,
        reincarnate_at: int | None = 50,
        kl_convex: bool = True,
        kl_convex_start: int = 50,
        kl_convex_interval: int = 10,
        kl_convex_decrement: float = 0.1,
        kl_convex_floor: float = 0.5,
    ) -> None:
        _check_int("prompts_per_step", prompts_per_step, 1)
        _check_int("updates_per_batch", updates_per_batch, 1)
        if reincarnate_at is not None:
            _check_int("reincarnate_at", reincarnate_at, 0)
        if not 0.0 <= offpolicy_fraction < 1.0:
            raise ValueError(f"offpolicy_fraction must be in [0, 1), got {offpolicy_fraction}")
        _check_int("kl_convex_interval", kl_convex_interval, 1)
        if kl_convex_decrement < 0:
            raise ValueError(f"kl_convex_decrement must be >= 0, got {kl_convex_decrement}")
        if not 0.0 <= kl_convex_floor <= 1.0:
            raise ValueError(f"kl_convex_floor must be in [0, 1], got {kl_convex_floor}")
        self.prompts_per_step = prompts_per_step
        self.offpolicy_fraction = float(offpolicy_fraction)
        self.updates_per_batch = updates_per_batch
        self.reincarnate_at = reincarnate_at
        self.kl_convex = kl_convex
        self.kl_convex_start = kl_convex_start
        self.kl_convex_interval = kl_convex_interval
        self.kl_convex_decrement = kl_convex_decrement
        self.kl_convex_floor = kl_convex_floor
        self.mix_replay_prompts = replayed_prompts(prompts_per_step, self.offpolicy_fraction)  # half-up rounding
        if self.mix_replay_prompts >= prompts_per_step:
            raise ValueError(
                f"offpolicy_fraction={offpolicy_fraction} with prompts_per_step={prompts_per_step} replays "
                f"{self.mix_replay_prompts} prompts and generates none; the buffer would never be refilled"
            )

    @classmethod
    def on_policy(cls, prompts_per_step: int) -> ReMixSchedule:
        """Plain PPO/GRPO: no replay, one pass per batch, no reincarnation, plain KL to the base reference."""
        return cls(
            prompts_per_step,
            offpolicy_fraction=0.0,
            updates_per_batch=1,
            reincarnate_at=None,
            kl_convex=False,
        )

    def reincarnate_after(self, step: int) -> None:
        """Move T to `step` (adaptive reincarnation decided it at the end of that step): step + 1 reincarnates."""
        _check_int("step", step, 0)
        self.reincarnate_at = step

    def is_mix_phase(self, step: int) -> bool:
        return self.reincarnate_at is None or step <= self.reincarnate_at

    def plan(self, step: int) -> StepPlan:
        _check_int("step", step, 1)
        weight = (
            kl_convex_weight(
                step,
                start=self.kl_convex_start,
                interval=self.kl_convex_interval,
                decrement=self.kl_convex_decrement,
                floor=self.kl_convex_floor,
            )
            if self.kl_convex
            else 1.0
        )
        reincarnate = self.reincarnate_at is not None and step == self.reincarnate_at + 1
        if self.is_mix_phase(step):
            plain = self.mix_replay_prompts == 0 and self.updates_per_batch == 1
            return StepPlan(
                step=step,
                phase=PHASE_ON_POLICY if plain else PHASE_MIX,
                offpolicy_fraction=self.offpolicy_fraction,
                updates_per_batch=self.updates_per_batch,
                kl_convex_weight=weight,
                reincarnate=reincarnate,
                fresh_prompts=self.prompts_per_step - self.mix_replay_prompts,
                replay_prompts=self.mix_replay_prompts,
            )
        return StepPlan(
            step=step,
            phase=PHASE_ON_POLICY,
            offpolicy_fraction=0.0,
            updates_per_batch=1,
            kl_convex_weight=weight,
            reincarnate=reincarnate,
            fresh_prompts=self.prompts_per_step,
            replay_prompts=0,
        )

    def total_rollouts(self, num_steps: int, samples_per_prompt: int = 1) -> int:
        """Responses generated over steps 1..num_steps (the paper's cost metric; buffer-independent)."""
        _check_int("num_steps", num_steps, 0)
        _check_int("samples_per_prompt", samples_per_prompt, 1)
        return sum(self.plan(step).fresh_prompts for step in range(1, num_steps + 1)) * samples_per_prompt


def build_schedule(config: Config) -> ReMixSchedule:
    """The schedule a config asks for: ReMix's phases, or plain on-policy training when ReMix is disabled."""
    r, prompts = config.remix, config.train.prompts_per_step
    if not r.enabled:
        return ReMixSchedule.on_policy(prompts)
    # auto: the fallback max_step until a trigger moves T earlier (`reincarnate_after`; trainer + reincarnation.py)
    reincarnate_at = r.auto_reincarnation.max_step if config.auto_reincarnation else r.reincarnate_at
    return ReMixSchedule(
        prompts_per_step=prompts, offpolicy_fraction=r.offpolicy_fraction, updates_per_batch=r.updates_per_batch,
        reincarnate_at=reincarnate_at, kl_convex=r.kl_convex, kl_convex_start=r.kl_convex_start,
        kl_convex_interval=r.kl_convex_interval, kl_convex_decrement=r.kl_convex_decrement,
        kl_convex_floor=r.kl_convex_floor,
    )
