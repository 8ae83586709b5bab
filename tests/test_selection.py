"""Prompt selection before generation (remix_rft.data.selection): skip rule, bounds, determinism, state."""

from __future__ import annotations

import math

import pytest
import torch

from remix_rft.data.selection import PromptSelector


class CountingSampler:
    """Yields 0, 1, 2, ... in order; records every request so tests can see how far it was advanced."""

    def __init__(self) -> None:
        self.position = 0
        self.requests: list[int] = []

    def next(self, count: int) -> list[int]:
        self.requests.append(count)
        out = list(range(self.position, self.position + count))
        self.position += count
        return out


class CyclingSampler:
    """Yields the given indices over and over (like epochs of a fixed order)."""

    def __init__(self, indices: list[int]) -> None:
        self.indices, self.position = indices, 0

    def next(self, count: int) -> list[int]:
        out = [self.indices[(self.position + k) % len(self.indices)] for k in range(count)]
        self.position += count
        return out


def uninformative(selector: PromptSelector, index: int, times: int) -> None:
    selector.observe([(index, False)] * times)


def test_skip_probability_follows_streak_and_cap():
    selector = PromptSelector(seed=0, skip_base=0.5, max_skip=0.9)
    # streak 0 (never seen), 1, 2, 3, 5: 0, 1 - 0.5, 1 - 0.25, 1 - 0.125, min(0.9, 1 - 1/32) = 0.9
    for index, streak in enumerate([0, 1, 2, 3, 5]):
        uninformative(selector, index, streak)
    expected = [0.0, 0.5, 0.75, 0.875, 0.9]
    assert [selector.skip_probability(i) for i in range(5)] == pytest.approx(expected, abs=1e-12)
    assert [selector.streak(i) for i in range(5)] == [0, 1, 2, 3, 5]


def test_informative_outcome_resets_streak():
    selector = PromptSelector(seed=0, skip_base=0.5, max_skip=0.9)
    uninformative(selector, 7, 3)
    assert selector.skip_probability(7) == pytest.approx(0.875)
    selector.observe([(7, True)])
    assert selector.streak(7) == 0 and selector.skip_probability(7) == 0.0
    # the streak restarts from 1, not from where it was
    selector.observe([(7, False)])
    assert selector.skip_probability(7) == pytest.approx(0.5)
    # outcomes are applied in order: the last group decides whether the streak is 0
    selector.observe([(7, False), (7, True), (8, True), (8, False)])
    assert (selector.streak(7), selector.streak(8)) == (0, 1)


def test_select_keeps_count_and_advances_sampler_only_over_decided_prompts():
    selector = PromptSelector(seed=3, skip_base=0.5, max_skip=0.9, revisit_after=4)
    for index in range(0, 60, 2):  # even prompts below 60: streak 5, p = 0.9; odd ones never seen, p = 0
        uninformative(selector, index, 5)
    sampler = CountingSampler()
    total_skipped = 0
    for _ in range(3):
        before = sampler.position
        kept, skipped = selector.select(sampler.next, 10)
        assert len(kept) == 10
        # every drawn index is kept or skipped exactly once: the sampler moved over exactly those
        assert sorted(kept + skipped) == list(range(before, sampler.position))
        assert kept == sorted(kept) and skipped == sorted(skipped)  # draw order (the sampler is ascending)
        assert all(i % 2 == 0 and i < 60 for i in skipped)  # never-seen prompts are never skipped
        total_skipped += len(skipped)
    # batches never ask for more than is still missing, so no index is drawn and thrown away
    assert all(1 <= n <= 10 for n in sampler.requests) and sum(sampler.requests) == sampler.position
    assert total_skipped > 0 and selector.skipped_total == total_skipped
    # count 0 draws nothing
    position = sampler.position
    assert selector.select(sampler.next, 0) == ([], []) and sampler.position == position


def test_select_makes_no_skip_test_for_zero_probability():
    selector = PromptSelector(seed=0)
    generator_state = selector.state_dict()["generator"].clone()
    selector.observe([(1, False), (1, True)])  # informative last: p = 0
    kept, skipped = selector.select(CountingSampler().next, 5)
    assert (kept, skipped) == ([0, 1, 2, 3, 4], [])
    assert torch.equal(selector.state_dict()["generator"], generator_state)  # no random number was used


def test_revisit_after_consecutive_skips():
    selector = PromptSelector(seed=1, skip_base=0.99, max_skip=0.99, revisit_after=3)
    uninformative(selector, 0, 1)  # p = 0.99
    sampler = CyclingSampler([0])
    runs = []
    for _ in range(50):
        kept, skipped = selector.select(sampler.next, 1)
        assert kept == [0]
        runs.append(len(skipped))
        assert selector.consecutive_skips(0) == 0  # reset when kept
    # skipped at most revisit_after times in a row; with p = 0.99 the full run of 3 is the usual case
    assert max(runs) == 3 and all(run <= 3 for run in runs)
    assert sum(runs) == selector.skipped_total
    # kept, generated and re-measured: an informative group makes it never skipped again
    selector.observe([(0, True)])
    assert selector.select(sampler.next, 1) == ([0], [])


def test_revisit_count_spans_calls_and_is_reset_by_observe():
    selector = PromptSelector(seed=0, skip_base=0.99, max_skip=0.99, revisit_after=2)
    uninformative(selector, 5, 1)
    # another (never-seen) prompt is drawn between draws of 5, so each call sees 5 at most once
    sampler = CyclingSampler([5, 6])
    selector.select(sampler.next, 1)
    counts = [selector.consecutive_skips(5)]
    while selector.consecutive_skips(5) < 2:
        selector.select(sampler.next, 1)
        counts.append(selector.consecutive_skips(5))
    assert counts[-1] == 2
    # third draw of 5 in a row: kept without a test, whatever the generator says
    kept, skipped = selector.select(sampler.next, 1)
    assert kept == [5] and skipped == []
    # observing a group of a prompt also resets its consecutive-skip count
    while selector.consecutive_skips(5) == 0:
        selector.select(sampler.next, 1)
    selector.observe([(5, False)])
    assert selector.consecutive_skips(5) == 0


def test_draw_bound_when_every_prompt_is_skippable():
    # revisit never triggers, every prompt has p = 0.99: only the 16 * count bound ends the call
    selector = PromptSelector(seed=2, skip_base=0.99, max_skip=0.99, revisit_after=10**9)
    for index in range(5):
        uninformative(selector, index, 10)
    sampler = CyclingSampler(list(range(5)))
    for count in (1, 4, 8):
        before = sampler.position
        kept, skipped = selector.select(sampler.next, count)
        drawn = sampler.position - before
        assert len(kept) == count and drawn == len(kept) + len(skipped)
        assert len(skipped) <= 16 * count and drawn <= 17 * count
    # P(keep) = 0.01 per test: almost every test skips, so the bound is what ended these calls
    assert selector.skipped_total >= 0.9 * 16 * (1 + 4 + 8)


def test_empirical_skip_frequency_matches_probability():
    selector = PromptSelector(seed=4, skip_base=0.2, max_skip=0.9, revisit_after=10**9)
    for index in range(50):
        uninformative(selector, index, 1)  # p = 1 - 0.8 = 0.2
    for index in range(50, 100):
        uninformative(selector, index, 3)  # p = 1 - 0.8 ** 3 = 0.488
    sampler = CyclingSampler(list(range(100)))
    drawn = {"low": 0, "high": 0}
    skips = {"low": 0, "high": 0}
    for _ in range(200):
        kept, skipped = selector.select(sampler.next, 100)
        for index in kept + skipped:
            drawn["low" if index < 50 else "high"] += 1
        for index in skipped:
            skips["low" if index < 50 else "high"] += 1
    for group, p in (("low", 0.2), ("high", 0.488)):
        n = drawn[group]
        assert n > 5000
        # every draw here is one independent Bernoulli(p) test: 5 standard deviations of the binomial
        assert abs(skips[group] / n - p) <= 5 * math.sqrt(p * (1 - p) / n)


def test_state_round_trip_through_torch_save(tmp_path):
    def setup() -> PromptSelector:
        selector = PromptSelector(seed=11, skip_base=0.4, max_skip=0.8, revisit_after=2)
        selector.observe([(i, i % 3 == 0) for i in range(30)] + [(i, False) for i in range(0, 30, 2)])
        return selector

    uninterrupted, resumed = setup(), setup()
    sampler_a, sampler_b = CyclingSampler(list(range(30))), CyclingSampler(list(range(30)))
    for _ in range(3):
        assert uninterrupted.select(sampler_a.next, 7) == resumed.select(sampler_b.next, 7)
    torch.save(resumed.state_dict(), tmp_path / "selector.pt")
    state = torch.load(tmp_path / "selector.pt", weights_only=True)
    restored = PromptSelector(seed=11, skip_base=0.4, max_skip=0.8, revisit_after=2)
    restored.load_state_dict(state)
    assert restored.skipped_total == uninterrupted.skipped_total > 0
    assert all(restored.skip_probability(i) == uninterrupted.skip_probability(i) for i in range(30))
    assert any(restored.consecutive_skips(i) > 0 for i in range(30))
    assert all(restored.consecutive_skips(i) == uninterrupted.consecutive_skips(i) for i in range(30))
    for step in range(10):
        outcomes = [(i, (i + step) % 4 == 0) for i in range(0, 30, 3)]
        uninterrupted.observe(outcomes)
        restored.observe(outcomes)
        assert restored.select(sampler_b.next, 7) == uninterrupted.select(sampler_a.next, 7)
    assert restored.skipped_total == uninterrupted.skipped_total
    assert torch.equal(restored.state_dict()["generator"], uninterrupted.state_dict()["generator"])


@pytest.mark.parametrize(("key", "value"), [("seed", 12), ("skip_base", 0.5), ("max_skip", 0.85),
                                            ("revisit_after", 3)])
def test_load_state_dict_rejects_other_parameters(key, value):
    state = PromptSelector(seed=11, skip_base=0.4, max_skip=0.8, revisit_after=2).state_dict()
    kwargs = {"seed": 11, "skip_base": 0.4, "max_skip": 0.8, "revisit_after": 2, key: value}
    with pytest.raises(ValueError, match=key):
        PromptSelector(**kwargs).load_state_dict(state)
    del state["generator"]
    with pytest.raises(ValueError, match="generator"):
        PromptSelector(seed=11, skip_base=0.4, max_skip=0.8, revisit_after=2).load_state_dict(state)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"skip_base": -0.1}, "skip_base"),
    ({"skip_base": 0.95, "max_skip": 0.9}, "skip_base"),
    ({"skip_base": float("nan")}, "skip_base"),
    ({"max_skip": 1.0}, "max_skip"),
    ({"skip_base": 0.0, "max_skip": -0.1}, "max_skip"),
    ({"revisit_after": 0}, "revisit_after"),
    ({"revisit_after": 2.5}, "revisit_after"),
])
def test_invalid_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PromptSelector(seed=0, **kwargs)


def test_invalid_count_and_draw_results():
    selector = PromptSelector(seed=0)
    with pytest.raises(ValueError, match="count"):
        selector.select(CountingSampler().next, -1)
    with pytest.raises(ValueError, match="draw"):
        selector.select(lambda n: [], 3)  # an exhausted draw must not loop forever
