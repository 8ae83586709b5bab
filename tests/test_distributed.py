"""Data-parallel training with torchrun + FSDP2 on CPU (gloo, 2 processes) against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from remix_rft.config import load_config
from remix_rft.distributed import Distributed
from remix_rft.experience import FreshRollouts
from remix_rft.trainer import Trainer, run_training

WORKER = Path(__file__).with_name("distributed_worker.py")
sys.path.insert(0, str(WORKER.parent))
from distributed_worker import TINY  # noqa: E402

REPO_SRC = Path(__file__).resolve().parent.parent / "src"


def torchrun(*args: str, processes: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO_SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def read_lines(run_dir: Path, kind: str) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [line for line in lines if line["type"] == kind]


def test_share_splits_whole_groups_evenly():
    shares = [Distributed(rank, 3).share(8) for rank in range(3)]
    assert shares == [(0, 3), (3, 6), (6, 8)]


def learn_saved_step(trainer: Trainer, saved: dict) -> dict:
    """Step 1 in one process on the rollouts the 2 ranks generated (worker mode `step`), in the global batch's
    row order; returns its record."""
    indices, rollouts = [], []
    for share_indices, share_rollouts in saved["shares"]:  # rank-major: the global batch's row order
        for rollout in share_rollouts:
            rollout.prompt_index += len(indices)
        indices += share_indices
        rollouts += share_rollouts
    examples = [trainer.prompts.examples[indices[r.prompt_index]] for r in rollouts]
    scores = trainer.reward.score([r.text for r in rollouts], examples)
    plan = trainer.begin_step(1)
    return trainer.learn(1, plan, FreshRollouts(indices, rollouts, examples, scores))


@pytest.mark.parametrize("name, chunk_tokens", [("grpo", "3"), ("grpo", "null"), ("ppo", "3")])
def test_two_processes_make_the_same_update_as_one(tmp_path, name, chunk_tokens):
    """(a) One step on 2 ranks (FSDP2, gloo) = one process on the same global batch with the same rollouts, with
    the chunked LM head (run as an FSDP forward method: it reads the gathered head weight) and the plain one.
    PPO whitens its GAE advantages over the global batch (statistics summed over ranks) and trains a critic."""
    overrides = [name, "train.prompts_per_step=4", "train.samples_per_prompt=2", "train.minibatch_size=4",
                 "eval.before_training=false", "checkpoint.every=0", "algorithm.kl_coef=0.01",
                 "algorithm.entropy_coef=0.01",  # random tiny model: all rewards 0, the entropy term moves it
                 f"train.logprob_chunk_tokens={chunk_tokens}"]
    torchrun(str(WORKER), "step", str(tmp_path / "two"), *overrides)
    saved = torch.load(tmp_path / "two" / "step.pt", weights_only=False)
    config = load_config(overrides[0], [*TINY, f"logging.output_dir={tmp_path / 'one'}", *overrides[1:]])
    trainer = Trainer(config)
    try:
        record = learn_saved_step(trainer, saved)
        assert record["rollouts/step"] == 8 and record["optimizer_steps"] == 2
        one = trainer.policy.state_dict()
        changed = 0
        for name, value in saved["weights"].items():
            assert torch.allclose(value, one[name], atol=1e-5, rtol=0), name
            changed += int(not torch.equal(value, trainer.references.reference.state_dict()[name]))
        assert changed > 0  # the step did update the weights
        if trainer.critic is not None:
            critic = trainer.critic.model.state_dict()
            for name, value in saved["critic"].items():
                assert torch.allclose(value, critic[name], atol=1e-5, rtol=0), name
    finally:
        trainer.close()


def test_ppo_whitening_uses_the_global_batch_statistics(tmp_path):
    """PPO's advantage whitening on 2 ranks (gloo) equals whitening the whole batch in one process: the mean and
    variance are summed over ranks. Each rank's own statistics (the old behaviour) give other advantages."""
    from remix_rft.algos import masked_whiten

    torchrun(str(WORKER), "whiten", str(tmp_path))
    saved = torch.load(tmp_path / "whiten.pt", weights_only=False)
    whole = masked_whiten(saved["x"], saved["mask"])
    torch.testing.assert_close(torch.cat(saved["shares"]), whole, atol=1e-6, rtol=0)
    own = torch.cat([masked_whiten(saved["x"][:4], saved["mask"][:4]), masked_whiten(saved["x"][4:], saved["mask"][4:])])
    assert (own - whole).abs().max() > 0.1


def _comparable(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if not k.startswith(("time/", "memory/", "perf/"))} for line in lines]


def test_remix_grpo_kill_and_resume_matches_uninterrupted_two_process_run(tmp_path):
    """(b) ReMix-GRPO through reincarnation with replay; a run killed after step 3 and resumed from its step-2
    checkpoint logs the same metrics as an uninterrupted 2-process run."""
    overrides = ["remix-grpo", "train.steps=4", "train.prompts_per_step=4", "train.samples_per_prompt=2",
                 "train.minibatch_size=4", "checkpoint.every=2", "remix.offpolicy_fraction=0.5",
                 "remix.reincarnate_at=2", "remix.kl_convex_start=0", "remix.kl_convex_interval=1",
                 "eval.before_training=false", "eval.after_training=false"]
    torchrun(str(WORKER), "train", str(tmp_path / "a"), *overrides)
    torchrun(str(WORKER), "crash", str(tmp_path / "b"), *overrides)
    run_dir = tmp_path / "b" / "run"
    assert [line["step"] for line in read_lines(run_dir, "train")] == [1, 2, 3]
    torchrun(str(WORKER), "resume", str(tmp_path / "b"), *overrides)
    straight, resumed = read_lines(tmp_path / "a" / "run", "train"), read_lines(run_dir, "train")
    assert [line["step"] for line in resumed] == [1, 2, 3, 4]
    assert _comparable(straight) == _comparable(resumed)
    assert straight[1]["replay/groups"] == 2 and straight[2]["replay/groups"] == 0
    assert read_lines(run_dir, "event") == read_lines(tmp_path / "a" / "run", "event")
    checkpoint = run_dir / "checkpoints" / "step_000004"
    assert (checkpoint / "policy" / "model.safetensors").exists()  # the Hugging Face export of the full policy
    assert json.loads((checkpoint / "trainer_state.json").read_text())["world_size"] == 2
    one_process = load_config(overrides[0], [*TINY, f"logging.output_dir={tmp_path / 'b'}", *overrides[1:]])
    with pytest.raises(ValueError, match="written by 2 ranks and this run has 1"):
        run_training(one_process, resume=run_dir)


def test_torchrun_cli_logs_world_size_and_global_rollouts(tmp_path):
    """(c) The CLI under torchrun: 8 prompts x 4 samples a step over 2 ranks count as 32 rollouts."""
    torchrun("-m", "remix_rft.cli", "train", "--config", "remix-grpo", "model.name=tiny-random", "train.steps=4",
             "remix.reincarnate_at=2", "rollout.max_new_tokens=4", "eval.limit=4", "eval.max_new_tokens=4",
             "data.train_options={size: 64}", "logging.progress=false", "checkpoint.every=0",
             "checkpoint.save_final=false", f"logging.output_dir={tmp_path}", "logging.run_name=cli")
    train = read_lines(tmp_path / "cli", "train")
    assert [line["distributed/world_size"] for line in train] == [2, 2, 2, 2]
    assert [line["rollouts/step"] for line in train] == [24, 24, 32, 32]  # 6 fresh prompts x 4 while mixing
    assert train[-1]["rollouts/total"] == 112
    assert [e["step"] for e in read_lines(tmp_path / "cli", "eval")] == [0, 4]


def test_bf16_mixed_precision_under_fsdp2_keeps_float32_masters(tmp_path):
    """model.dtype=bfloat16 on 2 ranks: FSDP2 computes in bf16 with fp32 sharded masters (the policy and its
    optimizer), the frozen reference is stored in bf16, and the hacking monitor's state is in each rank's file."""
    overrides = ["grpo", "train.steps=2", "train.prompts_per_step=2", "train.samples_per_prompt=2",
                 "train.minibatch_size=4", "checkpoint.every=2", "model.dtype=bfloat16", "algorithm.kl_coef=0.01",
                 "train.logprob_chunk_tokens=5", "eval.before_training=false", "eval.after_training=false"]
    torchrun(str(WORKER), "step", str(tmp_path / "step"), *overrides)
    assert torch.load(tmp_path / "step" / "step.pt", weights_only=False)["dtypes"] == {
        "policy": {"torch.float32"}, "reference": {"torch.bfloat16"}}
    torchrun(str(WORKER), "train", str(tmp_path), *overrides)
    train = read_lines(tmp_path / "run", "train")
    assert [line["step"] for line in train] == [1, 2]
    assert all(torch.isfinite(torch.tensor(line["entropy"])) for line in train)
    checkpoint = tmp_path / "run" / "checkpoints" / "step_000002"
    from safetensors.torch import load_file

    exported = load_file(str(checkpoint / "policy" / "model.safetensors"))
    assert {value.dtype for value in exported.values()} == {torch.float32}
    for rank in range(2):
        own = torch.load(checkpoint / f"rank_{rank:05d}.pt", weights_only=False)
        assert "hacking" in own


def test_pipelined_generation_on_two_processes_resumes_exactly(tmp_path):
    """One-step-off generation under torchrun: every rank's job samples its share of the next step's prompts with a
    snapshot gathered from the FSDP2 shards; a run killed after step 3 resumes with the saved jobs' responses and
    logs what the uninterrupted run logs."""
    overrides = ["remix-grpo", "train.steps=4", "train.prompts_per_step=4", "train.samples_per_prompt=2",
                 "train.minibatch_size=4", "checkpoint.every=2", "remix.offpolicy_fraction=0.5",
                 "remix.reincarnate_at=2", "remix.kl_convex_start=0", "remix.kl_convex_interval=1",
                 "algorithm.entropy_coef=0.01",  # random tiny model: all rewards 0, the entropy term moves it
                 "eval.before_training=false", "eval.after_training=false", "rollout.pipeline=true"]
    torchrun(str(WORKER), "train", str(tmp_path / "a"), *overrides)
    torchrun(str(WORKER), "crash", str(tmp_path / "b"), *overrides)
    torchrun(str(WORKER), "resume", str(tmp_path / "b"), *overrides)
    straight, resumed = read_lines(tmp_path / "a" / "run", "train"), read_lines(tmp_path / "b" / "run", "train")
    assert [line["rollouts/staleness"] for line in straight] == [0.0, 1.0, 1.0, 1.0]
    assert [line["rollouts/step"] for line in straight] == [4, 4, 8, 8]
    assert _comparable(straight) == _comparable(resumed)


def test_new_rollout_options_on_two_processes_resume_exactly_and_agree_across_ranks(tmp_path):
    """Informative replay, dynamic sampling and prompt selection (issue 34) on 2 ranks: every rank draws the same
    prompts (one selection history, fed by every rank's outcomes), dynamic sampling's extra rounds split the missing
    prompts over the ranks, and a run killed after step 3 and resumed logs the same metrics as an uninterrupted one."""
    (tmp_path / "mixed_reward.py").write_text(
        "def reward(response, example):\n"
        "    return 0.0 if int(example.answer) % 2 == 0 else float(len(response) % 2)\n")
    overrides = ["remix-grpo", "train.steps=5", "train.prompts_per_step=4", "train.samples_per_prompt=2",
                 "train.minibatch_size=4", "checkpoint.every=2", "remix.offpolicy_fraction=0.5",
                 "remix.reincarnate_at=4", "remix.kl_convex_start=0", "remix.kl_convex_interval=1",
                 "eval.before_training=false", "eval.after_training=false", "remix.replay=informative",
                 "train.dynamic_sampling=true", "data.selection=skip_uninformative", "data.train_options={size: 8}",
                 f"reward.custom={tmp_path / 'mixed_reward.py'}:reward"]
    torchrun(str(WORKER), "train", str(tmp_path / "a"), *overrides)
    torchrun(str(WORKER), "crash", str(tmp_path / "b"), *overrides)
    torchrun(str(WORKER), "resume", str(tmp_path / "b"), *overrides)
    straight, resumed = read_lines(tmp_path / "a" / "run", "train"), read_lines(tmp_path / "b" / "run", "train")
    assert [line["step"] for line in resumed] == [1, 2, 3, 4, 5]
    assert _comparable(straight) == _comparable(resumed)
    assert straight[-1]["selection/skipped_total"] > 0
    # each rank trains on its share of the step's fresh prompts, less the ones buffered groups replaced
    assert all(line["fresh/trained_groups"] + line["replay/replacements"] == (2 if line["phase"] == "mix" else 4)
               for line in straight)
    assert straight[-1]["rollouts/total"] == sum(line["rollouts/step"] for line in straight)
    checkpoint = tmp_path / "a" / "run" / "checkpoints" / "step_000004"
    ranks = [torch.load(checkpoint / f"rank_{r:05d}.pt", weights_only=True)["components"]["selection"]
             for r in (0, 1)]
    assert {k: v for k, v in ranks[0].items() if k != "generator"} == \
        {k: v for k, v in ranks[1].items() if k != "generator"}
    assert torch.equal(ranks[0]["generator"], ranks[1]["generator"])


def test_top_p_with_replay_on_one_rank_only_runs_and_logs_the_replay_statistics(tmp_path):
    """Issue 35: 4 prompts a step with p = 0.25 replays one group, so only rank 0 has replayed rows; with top-p its
    `truncation/replay_*` keys used to make the ranks all-reduce lists of different lengths (gloo: "Received data
    size doesn't match expected size" at step 2)."""
    overrides = ["remix-grpo", "train.steps=3", "train.prompts_per_step=4", "train.samples_per_prompt=2",
                 "train.minibatch_size=4", "remix.offpolicy_fraction=0.25", "rollout.top_p=0.9",
                 "remix.reincarnate_at=null", "eval.before_training=false", "eval.after_training=false",
                 "checkpoint.save_final=false"]
    torchrun(str(WORKER), "train", str(tmp_path), *overrides)
    lines = read_lines(tmp_path / "run", "train")
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert all(line["replay/groups"] == 1 and "truncation/replay_masked_share" in line for line in lines[1:])
