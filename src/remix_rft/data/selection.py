"""Prompt selection before generation: skip prompts whose recent groups were all uninformative.

A GRESO-like pre-rollout filter. A group whose rewards are all equal has zero advantage everywhere under a
group baseline, so it gives no policy gradient; a prompt that produced such groups recently is likely to do
so again, and skipping it spends generation where there is gradient.

Rule. A group is *informative* when its rewards are not all equal. For a training prompt i:

- `streak(i)` is the number of consecutive most recent generated groups of prompt i that were
  uninformative: an uninformative group adds 1, an informative group resets it to 0, and it is 0 for a
  prompt never seen.
- Skip probability: `p(i) = 0` if `streak(i) == 0`, else `p(i) = min(max_skip, 1 - (1 - skip_base) ** streak(i))`.
  Bounded: `0 <= skip_base <= max_skip < 1` is validated, so no prompt is ever skipped with certainty.
- Skip test: when prompt i is drawn and `p(i) > 0`, one uniform `u` in [0, 1) is drawn from the selector's
  own seeded CPU `torch.Generator`; the prompt is skipped iff `u < p(i)`. A prompt with `p(i) == 0` is kept
  without a test and uses no random number, so results are deterministic for a seed and identical on every
  rank that holds the same state.
- Revisited: `skips(i)` counts the consecutive times prompt i was skipped; it is reset to 0 when i is kept
  (that is, generated) or a group of i is observed. A prompt with `skips(i) >= revisit_after` is kept at its
  next draw without a skip test, so it is skipped at most `revisit_after` times in a row, is never starved,
  and its streak gets re-measured.
- Per call: `select(draw, count)` draws indices from the epoch-order sampler in batches of
  `count - len(kept)`, so every drawn index is either kept or skipped (none is drawn and discarded unseen),
  until `count` are kept. Once `16 * count` indices have been drawn in one call, every further drawn index is
  kept without a skip test, so a call draws at most `17 * count` indices even when every prompt is skippable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

DRAW_BOUND_FACTOR = 16  # after this many draws per requested prompt, a call keeps everything it draws
_PARAMETERS = ("seed", "skip_base", "max_skip", "revisit_after")


class PromptSelector:
    """Per-prompt history of recent group outcomes; skips prompts whose recent groups were all uninformative."""

    def __init__(self, seed: int, skip_base: float = 0.5, max_skip: float = 0.9, revisit_after: int = 4) -> None:
        # `not (a <= x < b)` also rejects NaN, which fails every comparison
        if isinstance(max_skip, bool) or not (0.0 <= max_skip < 1.0):
            raise ValueError(f"max_skip must be in [0, 1), got {max_skip!r}")
        if isinstance(skip_base, bool) or not (0.0 <= skip_base <= max_skip):
            raise ValueError(f"skip_base must be in [0, max_skip={max_skip}], got {skip_base!r}")
        if isinstance(revisit_after, bool) or not isinstance(revisit_after, int) or revisit_after < 1:
            raise ValueError(f"revisit_after must be an integer >= 1, got {revisit_after!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.seed, self.revisit_after = seed, revisit_after
        self.skip_base, self.max_skip = float(skip_base), float(max_skip)
        self.skipped_total = 0
        self.reported_total = 0  # skips already reported in a step's metrics (the trainer's `selection/skipped`)
        # only nonzero counts are stored, so memory grows with the prompts that were ever uninformative/skipped
        self._streaks: dict[int, int] = {}
        self._skips: dict[int, int] = {}
        self._generator = torch.Generator(device="cpu").manual_seed(seed)

    def skip_probability(self, index: int) -> float:
        """`min(max_skip, 1 - (1 - skip_base) ** streak)`, 0 for a prompt whose last group was informative."""
        streak = self._streaks.get(index, 0)
        if streak == 0:
            return 0.0
        return min(self.max_skip, 1.0 - (1.0 - self.skip_base) ** streak)

    def streak(self, index: int) -> int:
        """Consecutive most recent uninformative groups of prompt `index` (0 if never seen)."""
        return self._streaks.get(index, 0)

    def consecutive_skips(self, index: int) -> int:
        """Times prompt `index` was skipped since it was last kept or observed."""
        return self._skips.get(index, 0)

    def select(self, draw: Callable[[int], list[int]], count: int) -> tuple[list[int], list[int]]:
        """Draw from `draw(n)` until `count` prompts are kept; returns (kept, skipped), each in draw order."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be an integer >= 0, got {count!r}")
        kept: list[int] = []
        skipped: list[int] = []
        bound = DRAW_BOUND_FACTOR * count
        drawn = 0
        while len(kept) < count:
            # ask only for what is still missing: every index drawn is then decided, so the sampler's position
            # advances over exactly the kept and skipped prompts
            wanted = count - len(kept)
            batch = list(draw(wanted))
            if not 0 < len(batch) <= wanted:
                raise ValueError(f"draw({wanted}) returned {len(batch)} indices")
            for index in batch:
                index = int(index)
                forced = drawn >= bound or self._skips.get(index, 0) >= self.revisit_after
                drawn += 1
                if not forced and self._skip_test(index):
                    self._skips[index] = self._skips.get(index, 0) + 1
                    self.skipped_total += 1
                    skipped.append(index)
                else:
                    self._skips.pop(index, None)
                    kept.append(index)
        return kept, skipped

    def _skip_test(self, index: int) -> bool:
        probability = self.skip_probability(index)
        if probability == 0.0:
            return False  # no random number: never-seen and informative prompts cost no generator state
        return torch.rand((), generator=self._generator).item() < probability

    def observe(self, outcomes: Iterable[tuple[int, bool]]) -> None:
        """Record `(prompt index, informative)` for each generated group, in generation order."""
        for index, informative in outcomes:
            index = int(index)
            self._skips.pop(index, None)  # it was generated
            if informative:
                self._streaks.pop(index, None)
            else:
                self._streaks[index] = self._streaks.get(index, 0) + 1

    def state_dict(self) -> dict[str, Any]:
        # counts as sorted [index, count] pairs: plain lists of ints load with torch.load(weights_only=True)
        return {
            "seed": self.seed,
            "skip_base": self.skip_base,
            "max_skip": self.max_skip,
            "revisit_after": self.revisit_after,
            "streaks": [[index, n] for index, n in sorted(self._streaks.items())],
            "consecutive_skips": [[index, n] for index, n in sorted(self._skips.items())],
            "skipped_total": self.skipped_total,
            "reported_total": self.reported_total,
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore exactly; the seed and parameters must match this selector's (ValueError naming the key)."""
        for key in (*_PARAMETERS, "streaks", "consecutive_skips", "skipped_total", "generator"):
            if key not in state:
                raise ValueError(f"prompt selector state lacks {key!r}")
        for key in _PARAMETERS:
            saved, current = state[key], getattr(self, key)
            if saved != current:  # exact: the floats were saved as Python floats and round-trip exactly
                raise ValueError(f"prompt selector state has {key}={saved!r}, but this selector has {current!r}")
        streaks = {int(index): int(n) for index, n in state["streaks"]}
        skips = {int(index): int(n) for index, n in state["consecutive_skips"]}
        generator = state["generator"]
        if not isinstance(generator, torch.Tensor) or generator.dtype != torch.uint8:
            raise ValueError("prompt selector state has a 'generator' that is not a uint8 tensor")
        self._generator.set_state(generator.detach().cpu().clone())
        self._streaks = {index: n for index, n in streaks.items() if n > 0}
        self._skips = {index: n for index, n in skips.items() if n > 0}
        self.skipped_total = int(state["skipped_total"])
        self.reported_total = int(state.get("reported_total", self.skipped_total))
