"""Run by torchrun (or plainly) from tests/test_distributed.py: distributed training scenarios on the tiny model.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_worker.py MODE OUT [overrides]

MODE `step`: one training step; rank 0 saves the step's global rollouts and the full policy weights to OUT.
MODE `train` / `crash` / `resume`: `run_training` under OUT/run; `crash` raises after step 3 (its metrics are
logged, its checkpoint is not), `resume` continues OUT/run from its latest checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from remix_rft.config import load_config
from remix_rft.trainer import Trainer, run_training

TINY = [
    "model.name=tiny-random", "rollout.max_new_tokens=6", "eval.limit=4", "eval.max_new_tokens=4",
    "logging.tensorboard=false", "logging.progress=false", "train.lr=1e-3", "data.train_options={size: 64}",
    "train.micro_batch_tokens=64", "logging.run_name=run",
]


class Crash(RuntimeError):
    pass


def crash_after_step_3(trainer: Trainer, record: dict) -> None:
    if record["step"] == 3:
        raise Crash("simulated kill after step 3")


def whiten_shares(out: Path) -> None:
    """MODE `whiten`: each rank whitens its half of a fixed batch with statistics summed over ranks (gloo)."""
    from remix_rft import algos
    from remix_rft.distributed import Distributed

    dist = Distributed.from_environment("cpu")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, generator=generator) * 3 + torch.arange(8.0)[:, None]  # the halves differ in mean
    mask = (torch.rand(8, 5, generator=generator) > 0.3).float()
    start, stop = dist.share(8)
    mine = algos.masked_whiten(x[start:stop], mask[start:stop], reduce_sum=dist.sum_over_ranks)
    shares = dist.all_gather_object(mine)
    if dist.is_main:
        torch.save({"x": x, "mask": mask, "shares": shares}, out / "whiten.pt")
    dist.close()


def main(mode: str, out: Path, overrides: list[str]) -> None:
    torch.set_num_threads(1)
    if mode == "whiten":
        whiten_shares(out)
        return
    config = load_config(overrides[0], [*TINY, f"logging.output_dir={out}", *overrides[1:]])
    if mode == "step":
        trainer = Trainer(config)
        plan = trainer.begin_step(1)
        fresh = trainer.generate(1, plan)
        shares = trainer.dist.all_gather_object((fresh.indices, fresh.rollouts))
        trainer.learn(1, plan, fresh)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(trainer.policy, options=full)
        critic = get_model_state_dict(trainer.critic.model, options=full) if trainer.critic is not None else {}
        references = trainer.references.reference
        dtypes = {"policy": {str(p.dtype) for p in trainer.policy.parameters()},
                  "reference": {str(p.dtype) for p in references.parameters()} if references is not None else set()}
        if trainer.dist.is_main:
            torch.save({"shares": shares, "weights": weights, "critic": critic, "dtypes": dtypes}, out / "step.pt")
        trainer.close()
        return
    if mode == "crash":
        try:
            run_training(config, on_step_end=crash_after_step_3)
        except Crash:
            return
        raise AssertionError("the crash did not happen")
    run_training(config, resume=out / "run" if mode == "resume" else None)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:])
