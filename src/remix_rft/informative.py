"""Which rollout groups carry a learning signal, and the choices that spend rollouts on those (README, Spending
rollouts well; METHOD.md, "Spending rollouts well").

A GRPO group whose rewards are all equal (all right or all wrong) has advantage 0 on every response: it moves the
policy by nothing but the KL term, and replaying it trains on nothing. Three options act on that, each in its own
place: informative replay (buffer.py), prompt selection before generation (data/selection.py) and DAPO's dynamic
sampling (`choose_fresh` below, with the trainer's extra generation rounds). This module holds the group-level
choices and the metrics that measure the waste; it knows no model, engine or config.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from remix_rft.buffer import ReplayBuffer, RolloutGroup
from remix_rft.data.selection import PromptSelector


def group_informative(rewards: Sequence[float], group_size: int) -> list[bool]:
    """Per prompt group of `group_size` consecutive rewards: whether they are not all equal."""
    values = torch.as_tensor(list(rewards), dtype=torch.float64).view(-1, group_size)
    return (values.max(dim=1).values > values.min(dim=1).values).tolist()


def choose_fresh(groups: Sequence[RolloutGroup], target: int) -> tuple[list[RolloutGroup], list[RolloutGroup]]:
    """Dynamic sampling's batch: the first `target` informative groups in generation order, filled up to `target`
    with the first uninformative ones when too few were found; returns (trained, dropped). Dropped groups were
    generated (and are counted as rollouts) but are neither trained on nor stored for replay."""
    informative = [g for g in groups if g.informative]
    trained = informative[:target]
    if len(trained) < target:
        trained += [g for g in groups if not g.informative][:target - len(trained)]
    chosen = {id(g) for g in trained}
    trained = [g for g in groups if id(g) in chosen]  # generation order, so fresh rows keep their order
    return trained, [g for g in groups if id(g) not in chosen]


def replace_uninformative(fresh: Sequence[RolloutGroup], replacements: int) -> list[RolloutGroup]:
    """The fresh groups left in the batch when `replacements` buffered groups take the place of as many fresh
    groups with all-equal rewards (the first ones in generation order)."""
    dropped: set[int] = set()
    for group in fresh:
        if len(dropped) == replacements:
            break
        if not group.informative:
            dropped.add(id(group))
    return [g for g in fresh if id(g) not in dropped]


def draw_replay(buffer: ReplayBuffer, step: int, planned: int, fresh: list[RolloutGroup],
                replace: bool) -> tuple[list[RolloutGroup], list[RolloutGroup], int]:
    """Step 3, this rank's replayed groups: `planned` whole groups from the buffer and, with `replace` (informative
    replay), one more in the place of each fresh group whose rewards are all equal, as far as the buffer holds them.
    Returns (the fresh groups left, the replayed groups, the replacements made)."""
    wanted = planned + (sum(not g.informative for g in fresh) if replace else 0)
    count = min(wanted, buffer.drawable(step))
    replayed = buffer.sample(count, step) if count else []
    replacements = max(count - planned, 0)
    return replace_uninformative(fresh, replacements), replayed, replacements


def selection_metrics(selector: PromptSelector | None) -> dict[str, int]:
    """Prompts the selector skipped (cost nothing, generated nothing) since the last record, and in all."""
    if selector is None:
        return {}
    skipped, selector.reported_total = selector.skipped_total - selector.reported_total, selector.skipped_total
    return {"selection/skipped": skipped, "selection/skipped_total": selector.skipped_total}


def signal_metrics(generated: Sequence[RolloutGroup], trained: Sequence[RolloutGroup],
                   replayed: Sequence[RolloutGroup], advantages: torch.Tensor,
                   response_mask: torch.Tensor) -> dict[str, float]:
    """The step's waste, measured (issue 34):
    - `fresh/informative_share`: share of the generated groups whose rewards are not all equal;
    - `replay/informative_share`: the same for the replayed groups (0 when none were replayed);
    - `advantage/nonzero_token_share`: share of the update's response tokens with a non-zero advantage;
    - counts of generated / trained / informative fresh groups and of informative replayed groups (summed over
      ranks); the training success rate is `accuracy/train` (over every generated response)."""
    tokens = response_mask > 0
    nonzero = (advantages != 0) & tokens
    informative_fresh = sum(g.informative for g in generated)
    informative_replay = sum(g.informative for g in replayed)
    return {
        "fresh/groups": len(generated), "fresh/trained_groups": len(trained),
        "fresh/informative_groups": informative_fresh,
        "fresh/informative_share": informative_fresh / len(generated) if generated else 0.0,
        "replay/informative_groups": informative_replay,
        "replay/informative_share": informative_replay / len(replayed) if replayed else 0.0,
        "advantage/nonzero_token_share": float(nonzero.sum()) / max(float(tokens.sum()), 1.0),
    }
