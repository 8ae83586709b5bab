"""Replay buffer of past rollout groups for Mix-PPG (METHOD.md section 1).

Data is stored at prompt-group granularity so GRPO groups stay whole, and every group carries the version
(training step) of the policy that generated it plus its behaviour log-probs (LESSONS.md #2).

Trainer protocol at step k: `evict(k)` (keeps versions k-N..k-1, the last N policies), then `sample(...)` the
replayed groups, update, then `add` the fresh groups of step k with version=k.

Two replay modes (`remix.replay`, METHOD.md section 1 and "Spending rollouts well"):
  uniform      the paper's: every held group equally likely, drawn without replacement (exactly as before the
               informative mode existed: one `randperm` of the held groups per draw).
  informative  a group whose advantages are all 0 (GRPO: all rewards equal) is never stored, so never replayed; the
               rest are drawn without replacement with probability proportional to
                   priority(g) = signal(g) * recency ** (age(g) - 1) / (1 + replays(g)),
               signal = mean |advantage| over the group's responses (1 for critic-based advantages, which the
               buffer does not hold), age = step - version (>= 1), replays = times the group was already replayed;
               a group replayed `max_replays` times is no longer drawn (the cap).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

_GROUP_FIELDS = (
    "version",
    "prompt_ids",
    "response_ids",
    "behaviour_logprobs",
    "rewards",
    "advantages",
    "meta",
)


def _as_float_vector(value: Any, what: str) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
    if tensor.dim() != 1:
        raise ValueError(f"{what} must be 1-D, got shape {tuple(tensor.shape)}")
    return tensor


@dataclass
class RolloutGroup:
    """All responses sampled for one prompt at one training step.

    Tensors are stored as float32 on the CPU (lists of floats are accepted and converted).
    """

    version: int  # training step whose policy generated it
    prompt_ids: list[int]
    response_ids: list[list[int]]  # one per sample
    behaviour_logprobs: list[torch.Tensor]  # float32, len == len(response_ids[i])
    rewards: torch.Tensor  # [G] sequence rewards
    advantages: torch.Tensor  # [G] per-sequence advantage computed at generation time
    meta: dict = field(default_factory=dict)  # JSON-serialisable extras (example id, answer, texts, ...)
    # the trainer's own log-probs of the responses under the generating policy, when the behaviour log-probs
    # came from a separate engine (vLLM): the reference point of the sampler-trainer mismatch correction
    trainer_logprobs: list[torch.Tensor] | None = None
    replays: int = 0  # how often the group has been drawn for replay (informative replay's priority and cap)
    # per response, its tokens that were outside the generating policy's own top-p / top-k set as the trainer computes
    # it (bool): they stay out of the loss and the mismatch corrections when the group is replayed (None: none)
    cut_tokens: list[torch.Tensor] | None = None
    # per response, the sampler's entropy at each token (rollout.reuse_sampler_logprobs: the step's pi_k entropy
    # metric without a pass). Not saved: only the step that generated the group reads it
    sampler_entropies: list[torch.Tensor] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 0:
            raise ValueError(f"RolloutGroup.version must be an int >= 0, got {self.version!r}")
        self.prompt_ids = [int(token) for token in self.prompt_ids]
        self.response_ids = [[int(token) for token in response] for response in self.response_ids]
        group_size = len(self.response_ids)
        if group_size == 0:
            raise ValueError("RolloutGroup needs at least one response")
        if len(self.behaviour_logprobs) != group_size:
            raise ValueError(
                f"RolloutGroup has {group_size} responses but "
                f"{len(self.behaviour_logprobs)} behaviour_logprobs"
            )
        self.behaviour_logprobs = [
            _as_float_vector(logprobs, f"behaviour_logprobs[{i}]")
            for i, logprobs in enumerate(self.behaviour_logprobs)
        ]
        for i, (response, logprobs) in enumerate(zip(self.response_ids, self.behaviour_logprobs)):
            if logprobs.numel() != len(response):
                raise ValueError(
                    f"RolloutGroup response {i} has {len(response)} tokens but "
                    f"{logprobs.numel()} behaviour_logprobs"
                )
        if self.trainer_logprobs is not None:
            self.trainer_logprobs = [
                _as_float_vector(logprobs, f"trainer_logprobs[{i}]") for i, logprobs in enumerate(self.trainer_logprobs)
            ]
            if [t.numel() for t in self.trainer_logprobs] != [len(r) for r in self.response_ids]:
                raise ValueError("RolloutGroup trainer_logprobs must have one value per response token")
        if self.cut_tokens is not None:
            self.cut_tokens = [torch.as_tensor(flags, dtype=torch.bool).detach().cpu().reshape(-1)
                               for flags in self.cut_tokens]
            if [t.numel() for t in self.cut_tokens] != [len(r) for r in self.response_ids]:
                raise ValueError("RolloutGroup cut_tokens must have one flag per response token")
        if self.sampler_entropies is not None:
            self.sampler_entropies = [_as_float_vector(values, f"sampler_entropies[{i}]")
                                      for i, values in enumerate(self.sampler_entropies)]
            if [t.numel() for t in self.sampler_entropies] != [len(r) for r in self.response_ids]:
                raise ValueError("RolloutGroup sampler_entropies must have one value per response token")
        self.rewards = _as_float_vector(self.rewards, "rewards")
        self.advantages = _as_float_vector(self.advantages, "advantages")
        if self.rewards.numel() != group_size:
            raise ValueError(f"RolloutGroup has {group_size} responses but {self.rewards.numel()} rewards")
        if self.advantages.numel() != group_size:
            raise ValueError(
                f"RolloutGroup has {group_size} responses but {self.advantages.numel()} advantages"
            )
        if not isinstance(self.meta, dict):
            raise ValueError(f"RolloutGroup.meta must be a dict, got {type(self.meta).__name__}")
        for key, value in self.meta.items():
            try:
                json.dumps(value)
            except (TypeError, ValueError) as error:
                raise ValueError(f"RolloutGroup.meta[{key!r}] is not JSON-serialisable: {error}") from None

    @property
    def num_responses(self) -> int:
        return len(self.response_ids)

    @property
    def informative(self) -> bool:
        """Whether the group can move a policy: its rewards are not all equal (GRPO gives such a group advantage 0)."""
        return bool(self.rewards.max() > self.rewards.min())

    @property
    def signal(self) -> float:
        """Mean |advantage| over the responses: what replaying the group can contribute to a policy gradient."""
        return float(self.advantages.abs().mean())

    @property
    def num_response_tokens(self) -> int:
        return sum(len(response) for response in self.response_ids)

    def to_state(self) -> dict[str, Any]:
        """Plain dict of lists/tensors/JSON values (loadable with torch.load(weights_only=True))."""
        return {
            "version": self.version,
            "prompt_ids": list(self.prompt_ids),
            "response_ids": [list(response) for response in self.response_ids],
            "behaviour_logprobs": [logprobs.clone() for logprobs in self.behaviour_logprobs],
            "rewards": self.rewards.clone(),
            "advantages": self.advantages.clone(),
            "meta_json": json.dumps(self.meta),
            "trainer_logprobs": (None if self.trainer_logprobs is None
                                 else [logprobs.clone() for logprobs in self.trainer_logprobs]),
            "replays": self.replays,
            "cut_tokens": None if self.cut_tokens is None else [flags.clone() for flags in self.cut_tokens],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RolloutGroup:
        missing = [key for key in (*_GROUP_FIELDS[:-1], "meta_json") if key not in state]
        if missing:
            raise ValueError(f"RolloutGroup state is missing keys {missing}")
        return cls(
            version=state["version"],
            prompt_ids=state["prompt_ids"],
            response_ids=state["response_ids"],
            behaviour_logprobs=state["behaviour_logprobs"],
            rewards=state["rewards"],
            advantages=state["advantages"],
            meta=json.loads(state["meta_json"]),
            trainer_logprobs=state.get("trainer_logprobs"),  # absent in buffers saved before it existed
            replays=int(state.get("replays", 0)),
            cut_tokens=state.get("cut_tokens"),
        )


REPLAY_MODES = ("uniform", "informative")


class ReplayBuffer:
    """Rollout groups of the last `history_window` policies, drawn without replacement: uniformly (`uniform`, the
    paper's) or by priority (`informative`, see the module docstring).

    Sampling uses its own seeded torch.Generator, which `state_dict` saves (with each group's replay count), so a
    resumed run draws exactly the same groups as an uninterrupted one (LESSONS.md #8). `sample` returns the stored
    group objects themselves, not copies.
    `advantage_signal=False` (critic-based advantages, recomputed at every use, so the stored ones are 0): every group
    is stored and its signal counts as 1, so the priority is recency and replay count alone.
    """

    def __init__(self, history_window: int, seed: int = 0, mode: str = "uniform", recency: float = 0.5,
                 max_replays: int = 2, advantage_signal: bool = True) -> None:
        if isinstance(history_window, bool) or not isinstance(history_window, int) or history_window < 1:
            raise ValueError(f"history_window must be an int >= 1, got {history_window!r}")
        if mode not in REPLAY_MODES:
            raise ValueError(f"replay mode must be one of {REPLAY_MODES}, got {mode!r}")
        if not 0.0 < recency <= 1.0:
            raise ValueError(f"replay recency must be in (0, 1], got {recency!r}")
        if isinstance(max_replays, bool) or not isinstance(max_replays, int) or max_replays < 1:
            raise ValueError(f"max_replays must be an int >= 1, got {max_replays!r}")
        self.history_window = history_window
        self.seed = seed
        self.mode, self.recency, self.max_replays = mode, float(recency), max_replays
        self.advantage_signal = advantage_signal
        self._groups: list[RolloutGroup] = []
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(seed)

    def add(self, groups: Sequence[RolloutGroup]) -> int:
        """Store the groups (informative mode: only those with a non-zero advantage); returns how many were stored."""
        for i, group in enumerate(groups):
            if not isinstance(group, RolloutGroup):
                raise TypeError(f"ReplayBuffer.add: item {i} is a {type(group).__name__}, not a RolloutGroup")
        kept = [g for g in groups if self.mode == "uniform" or not self.advantage_signal or g.signal > 0]
        self._groups.extend(kept)
        return len(kept)

    def _signal(self, group: RolloutGroup) -> float:
        return group.signal if self.advantage_signal else 1.0

    def priorities(self, step: int) -> list[float]:
        """Each held group's informative-mode priority at `step` (0: not drawable), in storage order."""
        return [0.0 if g.replays >= self.max_replays else
                self._signal(g) * self.recency ** max(step - g.version - 1, 0) / (1 + g.replays)
                for g in self._groups]

    def drawable(self, step: int | None = None) -> int:
        """How many groups a draw at `step` can return (uniform: all held; informative: positive priority)."""
        if self.mode == "uniform":
            return len(self._groups)
        if step is None:
            raise ValueError("informative replay needs the current step to weigh groups by age")
        return sum(p > 0 for p in self.priorities(step))

    def evict(self, current_version: int) -> int:
        """Drop groups with version < current_version - history_window; return how many were dropped."""
        oldest_kept = current_version - self.history_window
        kept = [group for group in self._groups if group.version >= oldest_kept]
        dropped = len(self._groups) - len(kept)
        self._groups = kept
        return dropped

    def sample(self, num_groups: int, step: int | None = None) -> list[RolloutGroup]:
        """`num_groups` distinct held groups (order is the draw order): uniformly at random, or by priority at
        `step` (informative mode). Each drawn group's replay count goes up by one."""
        if num_groups < 0:
            raise ValueError(f"cannot sample a negative number of groups ({num_groups})")
        available = self.drawable(step)
        if num_groups > available:
            raise ValueError(f"cannot sample {num_groups} groups: the replay buffer holds {len(self._groups)}"
                             + (f", {available} of them drawable" if self.mode != "uniform" else ""))
        if num_groups == 0:
            return []
        if self.mode == "uniform":
            order = torch.randperm(len(self._groups), generator=self._generator)[:num_groups]
        else:  # successive draws, each proportional to priority among the groups not yet drawn
            weights = torch.tensor(self.priorities(step), dtype=torch.float64)
            order = torch.multinomial(weights, num_groups, replacement=False, generator=self._generator)
        drawn = [self._groups[i] for i in order.tolist()]
        for group in drawn:
            group.replays += 1
        return drawn

    def __len__(self) -> int:
        return len(self._groups)

    def versions(self) -> list[int]:
        """Distinct policy versions held, ascending."""
        return sorted({group.version for group in self._groups})

    @property
    def num_responses(self) -> int:
        return sum(group.num_responses for group in self._groups)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: groups (in order), window, seed and the generator state."""
        return {
            "history_window": self.history_window,
            "mode": self.mode,
            "seed": self.seed,
            "generator_state": self._generator.get_state(),
            "groups": [group.to_state() for group in self._groups],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = [key for key in ("history_window", "seed", "generator_state", "groups") if key not in state]
        if missing:
            raise ValueError(f"replay buffer state is missing keys {missing}")
        if state["history_window"] != self.history_window:
            raise ValueError(
                f"replay buffer state has history_window={state['history_window']} but this buffer was built "
                f"with history_window={self.history_window}"
            )
        if state.get("mode", "uniform") != self.mode:
            raise ValueError(f"replay buffer state was saved with remix.replay={state.get('mode', 'uniform')} but this "
                             f"run uses remix.replay={self.mode}")
        groups = []
        for i, group_state in enumerate(state["groups"]):
            try:
                groups.append(RolloutGroup.from_state(group_state))
            except ValueError as error:
                raise ValueError(f"replay buffer state, group {i}: {error}") from None
        self._generator.set_state(state["generator_state"])
        self.seed = state["seed"]
        self._groups = groups
