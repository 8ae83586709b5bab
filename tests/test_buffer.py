"""Replay buffer: validation, eviction window, uniform sampling without replacement, exact resume."""

from __future__ import annotations

import io
from collections import Counter

import pytest
import torch

from remix_rft.buffer import ReplayBuffer, RolloutGroup


def make_group(version: int, example_id: str = "ex", group_size: int = 2) -> RolloutGroup:
    responses = [[10 + i] * (i + 1) for i in range(group_size)]  # lengths 1, 2, ...
    return RolloutGroup(
        version=version,
        prompt_ids=[1, 2, 3],
        response_ids=responses,
        behaviour_logprobs=[torch.full((len(r),), -0.5 - i) for i, r in enumerate(responses)],
        rewards=torch.arange(group_size, dtype=torch.float32),
        advantages=torch.linspace(-1, 1, group_size),
        meta={"example_id": example_id, "texts": ["a"] * group_size},
    )


def ids(groups: list[RolloutGroup]) -> list[str]:
    return [group.meta["example_id"] for group in groups]


def test_rollout_group_converts_and_counts():
    group = RolloutGroup(
        version=3,
        prompt_ids=[1],
        response_ids=[[5, 6], [7]],
        behaviour_logprobs=[[-0.1, -0.2], torch.tensor([-0.3], dtype=torch.float64)],
        rewards=[1.0, 0.0],
        advantages=[0.7, -0.7],
        meta={},
    )
    assert all(lp.dtype == torch.float32 for lp in group.behaviour_logprobs)
    assert group.rewards.dtype == torch.float32 and group.advantages.dtype == torch.float32
    assert group.num_responses == 2 and group.num_response_tokens == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"behaviour_logprobs": [torch.zeros(1)]}, "2 responses but 1 behaviour_logprobs"),
        ({"behaviour_logprobs": [torch.zeros(1), torch.zeros(3)]}, "response 1 has 2 tokens but 3"),
        ({"rewards": torch.zeros(3)}, "2 responses but 3 rewards"),
        ({"advantages": torch.zeros(1)}, "2 responses but 1 advantages"),
        ({"rewards": torch.zeros(2, 1)}, "rewards must be 1-D"),
        ({"version": -1}, "version"),
        ({"version": 1.5}, "version"),
        ({"response_ids": [], "behaviour_logprobs": [], "rewards": [], "advantages": []}, "at least one"),
        ({"meta": {"when": object()}}, "meta\\['when'\\] is not JSON"),
    ],
)
def test_rollout_group_validation(change, message):
    fields = {
        "version": 0,
        "prompt_ids": [1],
        "response_ids": [[5], [6, 7]],
        "behaviour_logprobs": [torch.zeros(1), torch.zeros(2)],
        "rewards": torch.zeros(2),
        "advantages": torch.zeros(2),
        "meta": {},
    }
    fields.update(change)
    with pytest.raises(ValueError, match=message):
        RolloutGroup(**fields)


def test_history_window_validation():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="history_window"):
            ReplayBuffer(history_window=bad)


def test_evict_keeps_the_last_n_versions():
    buffer = ReplayBuffer(history_window=2)
    buffer.add([make_group(v, f"v{v}-{i}") for v in range(1, 6) for i in range(3)])
    assert len(buffer) == 15 and buffer.num_responses == 30
    assert buffer.evict(6) == 9  # versions 1, 2, 3 (< 6 - 2) go
    assert buffer.versions() == [4, 5]
    assert len(buffer) == 6
    assert buffer.evict(6) == 0


def test_trainer_protocol_holds_versions_k_minus_n_to_k_minus_1():
    window = 3
    buffer = ReplayBuffer(history_window=window)
    for step in range(1, 10):
        buffer.evict(step)
        assert buffer.versions() == list(range(max(1, step - window), step))
        buffer.add([make_group(step, f"s{step}")])


def test_sample_without_replacement_and_misuse():
    buffer = ReplayBuffer(history_window=1, seed=7)
    assert buffer.sample(0) == []
    with pytest.raises(ValueError, match="holds 0"):
        buffer.sample(1)
    buffer.add([make_group(1, f"g{i}") for i in range(5)])
    everything = buffer.sample(5)
    assert sorted(ids(everything)) == [f"g{i}" for i in range(5)]
    assert len({id(group) for group in everything}) == 5
    drawn = buffer.sample(3)
    assert len(set(ids(drawn))) == 3
    with pytest.raises(ValueError, match="cannot sample 6 groups: the replay buffer holds 5"):
        buffer.sample(6)
    with pytest.raises(ValueError, match="negative"):
        buffer.sample(-1)
    with pytest.raises(TypeError, match="item 0"):
        buffer.add(["not a group"])


def test_sampling_is_uniform_and_seeded():
    buffer = ReplayBuffer(history_window=1, seed=0)
    buffer.add([make_group(1, name) for name in "abcd"])
    counts = Counter(ids(buffer.sample(1))[0] for _ in range(800))
    assert set(counts) == set("abcd")
    assert all(140 <= count <= 260 for count in counts.values())  # expected 200 each

    same_a, same_b, other = (ReplayBuffer(1, seed=s) for s in (11, 11, 12))
    for buffer in (same_a, same_b, other):
        buffer.add([make_group(1, f"g{i}") for i in range(20)])
    draws_a = [ids(same_a.sample(4)) for _ in range(5)]
    assert draws_a == [ids(same_b.sample(4)) for _ in range(5)]
    assert draws_a != [ids(other.sample(4)) for _ in range(5)]


def test_state_dict_round_trip_continues_sampling_identically():
    original = ReplayBuffer(history_window=2, seed=3)
    original.add([make_group(1, f"a{i}", group_size=3) for i in range(6)])
    original.sample(2)  # advance the generator before saving
    original.add([make_group(2, f"b{i}") for i in range(4)])

    saved = io.BytesIO()
    torch.save(original.state_dict(), saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)  # plain tensors / lists / strings only

    resumed = ReplayBuffer(history_window=2, seed=999)  # a different seed: the saved generator state wins
    resumed.load_state_dict(state)
    assert len(resumed) == len(original) and resumed.versions() == original.versions()
    for mine, theirs in zip(resumed.sample(len(resumed)), original.sample(len(original))):
        assert mine.version == theirs.version and mine.meta == theirs.meta
        assert mine.prompt_ids == theirs.prompt_ids and mine.response_ids == theirs.response_ids
        assert torch.equal(mine.rewards, theirs.rewards) and torch.equal(mine.advantages, theirs.advantages)
        assert all(torch.equal(x, y) for x, y in zip(mine.behaviour_logprobs, theirs.behaviour_logprobs))
    for _ in range(5):
        assert ids(resumed.sample(3)) == ids(original.sample(3))
    assert resumed.evict(4) == original.evict(4) == 6  # version 1 (< 4 - 2) goes, version 2 stays
    assert len(resumed) == len(original) == 4


def test_load_state_dict_errors():
    buffer = ReplayBuffer(history_window=2)
    buffer.add([make_group(1)])
    state = buffer.state_dict()
    with pytest.raises(ValueError, match="history_window=2 but this buffer was built with history_window=3"):
        ReplayBuffer(history_window=3).load_state_dict(state)
    with pytest.raises(ValueError, match="missing keys \\['generator_state'\\]"):
        ReplayBuffer(history_window=2).load_state_dict(
            {k: v for k, v in state.items() if k != "generator_state"}
        )
    broken = dict(state, groups=[dict(state["groups"][0], rewards=torch.zeros(5))])
    with pytest.raises(ValueError, match="group 0: RolloutGroup has 2 responses but 5 rewards"):
        ReplayBuffer(history_window=2).load_state_dict(broken)
