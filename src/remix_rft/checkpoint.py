"""Checkpoints of a training run: atomic publication, and the I/O of the whole training state.

Layout: <run_dir>/checkpoints/step_000010/ written first as a temp dir and renamed into place; the file
<run_dir>/checkpoints/latest names the newest complete checkpoint and is replaced atomically, so a crash
mid-save leaves the previous checkpoint usable. A checkpoint holds the policy (a Hugging Face model with its
tokenizer), the reference (after reincarnation), the lagged precedent, the critic, the optimizers, the replay
buffer, the prompt sampler's position, the counters and every RNG.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from remix_rft.models import ValueModel, load_model

if TYPE_CHECKING:
    from remix_rft.actor import Actor
    from remix_rft.buffer import ReplayBuffer
    from remix_rft.critic import Critic
    from remix_rft.data.sampler import TrainingPrompts
    from remix_rft.references import FrozenReferences

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """The run's counters."""

    step: int = 0  # last completed step
    rollouts_total: int = 0
    tokens_total: int = 0
    reincarnated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: Path, step: int, write: Callable[[Path], None], keep: int = 2) -> Path:
    """Call `write(tmp_dir)` to fill a temp dir, then publish it as step_<step> and prune old ones."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write(tmp)
    if final.exists():  # re-saving the same step (e.g. final save right after a periodic one)
        old = root / f".old_step_{step:06d}_{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    pointer_tmp = root / f".latest.{os.getpid()}"
    pointer_tmp.write_text(final.name + "\n")
    os.replace(pointer_tmp, root / "latest")
    for stale in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = checkpoint_root(run_dir)
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint named by `latest`, else the newest complete step_ dir (temp dirs are never complete)."""
    root = checkpoint_root(run_dir)
    pointer = root / "latest"
    if pointer.exists():
        candidate = root / pointer.read_text().strip()
        if candidate.is_dir():
            return candidate
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


@dataclass
class TrainingState:
    """Everything a checkpoint saves and restores, by role."""

    state: TrainState
    actor: Actor
    critic: Critic | None
    references: FrozenReferences
    buffer: ReplayBuffer
    prompts: TrainingPrompts
    tokenizer: Any
    hacking: Any = None  # the reward-hacking monitor (rewards/hacking.py): its history and streaks


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def write_training_state(directory: Path, training: TrainingState, phase: str) -> None:
    """Fill a (temp) checkpoint directory with the whole training state."""
    state, references = training.state, training.references
    training.actor.model.save_pretrained(directory / "policy", safe_serialization=True)
    training.tokenizer.save_pretrained(directory / "policy")
    if references.reference is not None and state.reincarnated:
        references.reference.save_pretrained(directory / "reference", safe_serialization=True)
    if references.lagged is not None:
        references.lagged.save_pretrained(directory / "precedent", safe_serialization=True)
    if training.critic is not None:
        training.critic.model.save_pretrained(directory / "critic")
    torch.save({**training.actor.state_dict(),
                "critic_optimizer": training.critic.state_dict()["optimizer"] if training.critic else None},
               directory / "optimizer.pt")
    torch.save(training.buffer.state_dict(), directory / "buffer.pt")
    counters = {"step": state.step, "rollouts_total": state.rollouts_total, "tokens_total": state.tokens_total,
                "reincarnated": state.reincarnated}
    hacking = training.hacking.state_dict() if training.hacking is not None else {}
    torch.save({**counters, "sampler": training.prompts.state_dict(), "rng": rng_state(), "hacking": hacking},
               directory / "trainer_state.pt")
    (directory / "trainer_state.json").write_text(json.dumps({**counters, "phase": phase}, indent=2))


def read_training_state(directory: Path, training: TrainingState, dtype: str) -> TrainState:
    """Load a checkpoint into the components of `training` (built from the run's config); returns the counters."""
    directory = Path(directory)
    logger.info("resuming from %s", directory)
    references = training.references
    # the policy's float32 master weights; the frozen copies in the compute dtype `dtype`
    training.actor.model.load_state_dict(load_model(str(directory / "policy"), dtype="float32").state_dict())
    trainer_state = torch.load(directory / "trainer_state.pt", weights_only=False)
    if trainer_state["reincarnated"] and references.reference is not None:
        references.reference.load_state_dict(load_model(str(directory / "reference"), dtype=dtype).state_dict())
    if references.lagged is not None:
        references.lagged.load_state_dict(load_model(str(directory / "precedent"), dtype=dtype).state_dict())
    if training.critic is not None:
        training.critic.model.load_state_dict(ValueModel.load(directory / "critic").state_dict())
    optim = torch.load(directory / "optimizer.pt", weights_only=False)
    training.actor.load_state_dict(optim)
    if training.critic is not None and optim["critic_optimizer"] is not None:
        training.critic.load_state_dict({"optimizer": optim["critic_optimizer"]})
    training.buffer.load_state_dict(torch.load(directory / "buffer.pt", weights_only=False))
    training.prompts.load_state_dict(trainer_state["sampler"])
    if training.hacking is not None:
        training.hacking.load_state_dict(trainer_state.get("hacking", {}))
    restore_rng_state(trainer_state["rng"])
    return TrainState(step=trainer_state["step"], rollouts_total=trainer_state["rollouts_total"],
                      tokens_total=trainer_state["tokens_total"], reincarnated=trainer_state["reincarnated"])
