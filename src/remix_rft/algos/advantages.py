"""Advantage estimators: GRPO group normalisation (and Dr.GRPO's unscaled variant) and masked GAE."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

GRPO_SCALES = ("std", "none")


def _group_index(
    group_ids: torch.Tensor | Sequence[Hashable], batch: int, device: torch.device
) -> torch.Tensor:
    """Map arbitrary group labels (ints, strings, a tensor) to contiguous indices 0..G-1."""
    if isinstance(group_ids, torch.Tensor):
        if group_ids.dim() != 1:
            raise ValueError(f"group_ids must be 1-D, got shape {tuple(group_ids.shape)}")
        labels = group_ids.tolist()
    else:
        labels = list(group_ids)
    if len(labels) != batch:
        raise ValueError(f"group_ids has {len(labels)} entries but rewards has {batch}")
    index_of: dict[Hashable, int] = {}
    index = [index_of.setdefault(label, len(index_of)) for label in labels]
    return torch.tensor(index, dtype=torch.long, device=device)


def grpo_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor | Sequence[Hashable],
    scale: str = "std",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Group-relative advantage per sequence: (r - group mean) / (group std + eps).

    std is torch's default unbiased (Bessel-corrected) std. scale="none" skips the division (Dr.GRPO).
    A group of one response gets advantage 0 (nothing to compare with), as does a group of equal rewards
    (exactly 0, also with eps=0).
    `group_ids` labels each response's prompt group: a 1-D tensor or any sequence of hashable labels.
    """
    if scale not in GRPO_SCALES:
        raise ValueError(f"unknown GRPO scale {scale!r}; allowed: {', '.join(GRPO_SCALES)}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [batch], got shape {tuple(rewards.shape)}")
    rewards = rewards.detach().float()
    index = _group_index(group_ids, rewards.shape[0], rewards.device)
    num_groups = int(index.max().item()) + 1 if index.numel() else 0
    zeros = torch.zeros(num_groups, dtype=rewards.dtype, device=rewards.device)
    counts = zeros.index_add(0, index, torch.ones_like(rewards))
    means = zeros.index_add(0, index, rewards) / counts.clamp(min=1.0)
    centred = rewards - means[index]
    # Groups of one, and groups of equal rewards (exactly 0 even when float noise in the mean would otherwise
    # be divided by a ~0 std), carry no learning signal.
    group_max = zeros.scatter_reduce(0, index, rewards, reduce="amax", include_self=False)
    group_min = zeros.scatter_reduce(0, index, rewards, reduce="amin", include_self=False)
    informative = (counts[index] > 1) & (group_max[index] > group_min[index])
    if scale == "none":
        return torch.where(informative, centred, torch.zeros_like(centred))
    sum_sq = zeros.index_add(0, index, centred**2)
    std = torch.sqrt(sum_sq / (counts - 1).clamp(min=1.0))
    advantages = centred / (std[index] + eps)
    return torch.where(informative, advantages, torch.zeros_like(advantages))


def sequence_rewards_to_tokens(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place each sequence's scalar reward on its last response token ([B] -> [B, T]).

    A fully masked row has no response token and gets all zeros (its reward is dropped).
    """
    if rewards.dim() != 1 or mask.dim() != 2 or rewards.shape[0] != mask.shape[0]:
        raise ValueError(
            f"expected rewards [B] and mask [B, T], got {tuple(rewards.shape)} and {tuple(mask.shape)}"
        )
    present = mask > 0
    num_tokens = mask.shape[-1]
    positions = torch.arange(num_tokens, device=mask.device).expand_as(mask)
    # Index of the last set position per row (-1 if none).
    last = torch.where(present, positions, torch.full_like(positions, -1)).max(dim=-1).values
    token_rewards = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    has_tokens = last >= 0
    rows = torch.arange(mask.shape[0], device=mask.device)[has_tokens]
    token_rewards[rows, last[has_tokens]] = rewards.detach().float().to(mask.device)[has_tokens]
    return token_rewards


@torch.no_grad()
def gae(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the masked tokens of each row; returns (advantages, returns).

    delta_t = r_t + gamma * V_next - V_t, A_t = delta_t + gamma * lam * A_next, where "next" is the next
    *masked* token: unmasked positions are skipped (so left padding or gaps in the mask are handled), and the
    value after the last response token is 0 (a finished response bootstraps nothing).
    returns = advantages + values. No whitening here. Both outputs are 0 at unmasked positions; inputs are
    treated as data (no gradient).
    """
    if not (token_rewards.shape == values.shape == mask.shape) or mask.dim() != 2:
        raise ValueError(
            "gae expects token_rewards, values and mask of one [B, T] shape, got "
            f"{tuple(token_rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    rewards = token_rewards.float()
    values = values.float()
    present = mask > 0
    batch, num_tokens = mask.shape
    next_value = torch.zeros(batch, dtype=torch.float32, device=values.device)
    next_advantage = torch.zeros_like(next_value)
    advantages = torch.zeros_like(values)
    for t in reversed(range(num_tokens)):
        here = present[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        # Unmasked positions leave the running "next" state untouched.
        next_advantage = torch.where(here, advantage, next_advantage)
        next_value = torch.where(here, values[:, t], next_value)
        advantages[:, t] = torch.where(here, advantage, torch.zeros_like(advantage))
    returns = torch.where(present, advantages + values, torch.zeros_like(values))
    return advantages, returns
