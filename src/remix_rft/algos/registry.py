"""Name -> function registries for policy losses and advantage estimators (verl style, LESSONS.md #1).

A new algorithm is a new entry, not a new branch in the trainer:

    @register_policy_loss("my_loss")
    def my_loss(logp, behaviour_logp, proximal_logp, advantages, mask, clip_eps=0.2, agg="token-mean",
                norm_len=None, **kwargs) -> tuple[torch.Tensor, dict[str, float]]: ...

Every policy loss shares `policy_loss`'s signature and returns (loss, metrics). Every advantage estimator
takes keyword-only arguments (rewards [B], mask [B, T], group_ids, values, token_rewards, gamma, lam,
**kwargs) and returns (advantages [B, T], returns [B, T]), both 0 on unmasked positions.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import torch

from remix_rft.algos.advantages import gae, grpo_advantages, sequence_rewards_to_tokens
from remix_rft.algos.core import policy_loss

PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]
AdvantageFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
Fn = TypeVar("Fn", bound=Callable[..., Any])

POLICY_LOSSES: dict[str, PolicyLossFn] = {}
ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {}


class UnknownNameError(KeyError, ValueError):
    """An unregistered name; catchable as KeyError or ValueError."""

    def __str__(self) -> str:  # KeyError would otherwise print the message inside quotes
        return str(self.args[0]) if self.args else ""


def _register(registry: dict[str, Any], kind: str, names: tuple[str, ...]) -> Callable[[Fn], Fn]:
    if not names:
        raise ValueError(f"register a {kind} under at least one name")

    def decorator(fn: Fn) -> Fn:
        for name in names:
            if name in registry and registry[name] is not fn:
                raise ValueError(f"{kind} {name!r} is already registered to {registry[name].__name__}")
        for name in names:
            registry[name] = fn
        return fn

    return decorator


def _lookup(registry: dict[str, Any], kind: str, name: str) -> Any:
    try:
        return registry[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown {kind} {name!r}; registered: {', '.join(sorted(registry))}"
        ) from None


def register_policy_loss(name: str, *aliases: str) -> Callable[[Fn], Fn]:
    """Decorator registering a policy loss under `name` (and optional aliases)."""
    return _register(POLICY_LOSSES, "policy loss", (name, *aliases))


def get_policy_loss(name: str) -> PolicyLossFn:
    return _lookup(POLICY_LOSSES, "policy loss", name)


def register_advantage_estimator(name: str, *aliases: str) -> Callable[[Fn], Fn]:
    """Decorator registering an advantage estimator under `name` (and optional aliases)."""
    return _register(ADVANTAGE_ESTIMATORS, "advantage estimator", (name, *aliases))


def get_advantage_estimator(name: str) -> AdvantageFn:
    return _lookup(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


# Mix-PPG reduces to PPO/GRPO's clipped loss when proximal == behaviour, so one entry serves all three names.
register_policy_loss("mix_ppg", "ppo", "clipped")(policy_loss)


def _group_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor | Sequence[Hashable] | None,
    scale: str,
    eps: float,
    estimator: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if group_ids is None:
        raise ValueError(
            f"advantage estimator {estimator!r} needs group_ids (one prompt-group label per response)"
        )
    if mask.dim() != 2 or mask.shape[0] != rewards.shape[0]:
        raise ValueError(f"expected mask [B, T] with B = {rewards.shape[0]}, got {tuple(mask.shape)}")
    per_sequence = grpo_advantages(rewards, group_ids, scale=scale, eps=eps)
    advantages = per_sequence.unsqueeze(-1) * (mask > 0).float()
    return advantages, advantages.clone()


@register_advantage_estimator("grpo")
def grpo_estimator(
    *,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor | Sequence[Hashable] | None = None,
    values: torch.Tensor | None = None,
    token_rewards: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    eps: float = 1e-6,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO: group-normalised sequence advantage broadcast over the response tokens; returns = advantages."""
    return _group_advantages(rewards, mask, group_ids, "std", eps, "grpo")


@register_advantage_estimator("drgrpo", "dr_grpo")
def drgrpo_estimator(
    *,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor | Sequence[Hashable] | None = None,
    values: torch.Tensor | None = None,
    token_rewards: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    eps: float = 1e-6,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dr.GRPO: like GRPO but only mean-centred (no division by the group std)."""
    return _group_advantages(rewards, mask, group_ids, "none", eps, "drgrpo")


@register_advantage_estimator("gae")
def gae_estimator(
    *,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor | Sequence[Hashable] | None = None,
    values: torch.Tensor | None = None,
    token_rewards: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's GAE with the critic's values; the sequence reward goes on the last response token unless
    `token_rewards` is given (e.g. with a k1 KL penalty already folded in)."""
    if values is None:
        raise ValueError("advantage estimator 'gae' needs values [B, T] from the critic")
    if token_rewards is None:
        token_rewards = sequence_rewards_to_tokens(rewards, mask)
    return gae(token_rewards, values, mask, gamma=gamma, lam=lam)
