"""Invariants no peer checks (issue 35): every replayed row is a stored row of an allowed version, replayed with its
own behaviour log-probs (TRL's replay buffer once replayed one group; torchtune's one row x16)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from remix_rft import experience
from remix_rft.trainer import run_training

sys.path.insert(0, str(Path(__file__).parent))
from test_informative import MIXED_REWARD  # noqa: E402
from test_trainer import tiny_config  # noqa: E402


@pytest.mark.parametrize("replay", ["uniform", "informative"])
def test_every_replayed_row_is_a_stored_row_of_an_allowed_version_with_its_own_logprobs(tmp_path, monkeypatch,
                                                                                         replay):
    (tmp_path / "mixed_reward.py").write_text(MIXED_REWARD)
    window = 3
    stored: dict[int, tuple[int, list, list, list]] = {}  # id(group) -> (version, responses, behaviour log-probs)
    checked = []
    assemble = experience.assemble

    def watched(fresh, replay_groups, pad_id, device):
        batch = assemble(fresh, replay_groups, pad_id, device)
        step = max([g.version for g in fresh], default=0)
        assert len({id(g) for g in replay_groups}) == len(replay_groups), "a group drawn twice in one step"
        row = sum(g.num_responses for g in fresh)
        for group in replay_groups:
            assert id(group) in stored, "a replayed group that was never a fresh group"
            version, responses, logprobs = stored[id(group)]
            assert group.version == version and step - window <= version < step
            for i, response in enumerate(responses):
                assert batch.tokens.response_ids[row, :len(response)].tolist() == response
                assert bool(batch.is_replay[row]) and int(batch.versions[row]) == version
                assert torch.equal(batch.behaviour_logp[row, :len(response)].cpu(), logprobs[i])
                row += 1
            checked.append(step)
        return batch

    keep = experience.keep_logprobs

    def remember(config, groups, batch):  # what a fresh group carries when it is replayed later
        keep(config, groups, batch)
        for g in groups:
            stored[id(g)] = (g.version, [list(r) for r in g.response_ids], [t.clone() for t in g.behaviour_logprobs])

    monkeypatch.setattr(experience, "assemble", watched)
    monkeypatch.setattr(experience, "keep_logprobs", remember)
    run_training(tiny_config(tmp_path, "remix-grpo", f"reward.custom={tmp_path / 'mixed_reward.py'}:reward",
                             "train.steps=6", "remix.reincarnate_at=null", "remix.offpolicy_fraction=0.5",
                             f"remix.history_window={window}", f"remix.replay={replay}",
                             "eval.before_training=false", "eval.after_training=false"))
    assert len(set(checked)) >= 4  # replay from step 2 on
