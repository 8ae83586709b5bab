"""Checkpoints of a training run: atomic publication, and the I/O of the whole training state.

Layout: <run_dir>/checkpoints/step_000010/ written first as a temp dir (`.tmp_step_...`), every file and folder in
it fsynced, then renamed into place; the file <run_dir>/checkpoints/latest names the newest complete checkpoint and
is replaced atomically. So a crash, kill -9 or power loss mid-save leaves the previous checkpoint usable: resume reads
only `step_` dirs, which exist only complete, and the next save removes the dead temp dir. A checkpoint holds the policy (a Hugging Face model with its
tokenizer), the reference (after reincarnation), the lagged precedent, the critic, the optimizers, the replay
buffer, the prompt sampler's position, the counters and every RNG.

With LoRA (`model.lora.r > 0`) the checkpoint holds the adapter instead of the model: `adapter/` (a PEFT adapter
folder, which resume reads), `policy/` (the merged model, a plain Hugging Face export that `transformers` loads),
`references.pt` (the reference and precedent adapter snapshots), and for PPO `critic.pt` (the critic's adapter and
value head); the frozen base is the model the config names, loaded again on resume.

Under torchrun (N ranks) the models and optimizers are written sharded with torch.distributed.checkpoint into
`sharded/` (all ranks write into the same directory: a file system shared by the nodes), each rank's own state
(replay buffer, RNG, lr schedule) into `rank_<r>.pt`, and rank 0 exports the full policy as a Hugging Face
model under `policy/`. Such a checkpoint resumes with N ranks.

Resume runs no code from a checkpoint (a folder someone shared may have been crafted): the `.pt` files hold only
tensors, numbers, strings, containers and a few plain dataclasses, and are read with weights_only loads; the sharded
folder's pickles likewise (safe_load.py). A file holding anything else fails with one line naming it.
"""

from __future__ import annotations

import errno
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

from remix_rft import lora
from remix_rft.distributed import Distributed
from remix_rft.errors import DiskFullError, PathNotFoundError, UsageError, one_line
from remix_rft.models import ValueModel, load_model
from remix_rft.references import AdapterReferences
from remix_rft.safe_load import NUMPY_ARRAYS, SafeGlobal, load_file, load_sharded

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

    def finish_step(self, step: int, rollouts: float, tokens: float) -> None:
        """Count a completed step's rollouts and generated tokens (all ranks')."""
        self.step = step
        self.rollouts_total += int(rollouts)
        self.tokens_total += int(tokens)


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: Path, step: int, write: Callable[[Path], None], keep: int = 2,
                    dist: Distributed | None = None) -> Path:
    """Call `write(tmp_dir)` to fill a temp dir, then publish it as step_<step> and prune old ones.

    With several ranks every rank writes into rank 0's temp dir; rank 0 publishes it once all are done."""
    dist = dist or Distributed()
    root = checkpoint_root(run_dir)
    final = root / f"step_{step:06d}"
    tmp = root / f"{TEMP_PREFIX}{step:06d}_{dist.broadcast_object(os.getpid())}"
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        remove_dead_temp_dirs(run_dir)  # left by a save that was killed
        tmp.mkdir()
    dist.barrier()
    try:
        write(tmp)
    except Exception as err:
        if not out_of_space(err, root):
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # frees what this save wrote; the last complete checkpoint stays
        # the run adds the checkpoint to resume from and the command (run.resume_hint, which knows the launcher)
        raise DiskFullError(f"no space left on the device of {root} while saving the checkpoint of step {step} "
                            f"({one_line(err)}): the half-written checkpoint was removed; free space (or lower "
                            f"checkpoint.keep)") from err
    dist.barrier()
    if not dist.is_main:
        dist.barrier()
        return final
    _fsync_tree(tmp)  # the data is on disk before the rename makes it a checkpoint
    if final.exists():  # re-saving the same step (e.g. final save right after a periodic one)
        old = root / f"{OLD_PREFIX}{step:06d}_{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    _fsync_dir(root)
    pointer_tmp = root / f".latest.{os.getpid()}"
    with pointer_tmp.open("w") as handle:
        handle.write(final.name + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(pointer_tmp, root / "latest")
    _fsync_dir(root)
    for stale in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    dist.barrier()
    return final


def out_of_space(error: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of disk space: errno ENOSPC, or a library's own error that says so
    (safetensors: "No space left on device (os error 28)"; torch.save: "file write failed" on a full disk)."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    text = str(error)
    if "No space left on device" in text or "os error 28" in text:
        return True
    try:
        return "write failed" in text and shutil.disk_usage(folder).free < 64 * 2**20
    except OSError:
        return False


TEMP_PREFIX = ".tmp_step_"  # a checkpoint being written; never read by resume
OLD_PREFIX = ".old_step_"  # a checkpoint being replaced by a re-save of its step


def remove_dead_temp_dirs(run_dir: Path) -> list[Path]:
    """Delete the temp dirs of saves that never finished (the process was killed); returns what was removed.

    Only one process (rank 0 of the run) saves into a run dir at a time, so any temp dir present at a save's start is
    dead."""
    root = checkpoint_root(run_dir)
    dead = [p for p in root.iterdir() if p.is_dir() and p.name.startswith((TEMP_PREFIX, OLD_PREFIX))] \
        if root.is_dir() else []
    dead += [p for p in root.glob(".latest.*") if p.is_file()] if root.is_dir() else []
    for path in dead:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return dead


def _fsync_dir(path: Path) -> None:
    """Persist a directory's entries (a rename or a new file in it); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not fsync directories; the rename is still atomic there
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    """fsync every file under `directory`, then every folder (deepest first), then `directory` itself."""
    folders = []
    for dirpath, _, filenames in os.walk(directory):
        folders.append(Path(dirpath))
        for name in filenames:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for folder in reversed(folders):
        _fsync_dir(folder)


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
        name = pointer.read_text(errors="replace").strip()
        candidate = root / name
        if name.startswith("step_") and "/" not in name and candidate.is_dir():
            return candidate
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


@dataclass
class TrainingState:
    """Everything a checkpoint saves and restores, by role."""

    state: TrainState
    actor: Actor
    critic: Critic | None
    references: FrozenReferences | AdapterReferences
    buffer: ReplayBuffer
    prompts: TrainingPrompts
    tokenizer: Any
    dist: Distributed = field(default_factory=Distributed)
    hacking: Any = None  # the reward-hacking monitor (rewards/hacking.py): its history and streaks
    base_model: str = ""  # model.name: what a LoRA adapter's config names as its base
    # further roles with state_dict / load_state_dict, saved by name (the adaptive reincarnation monitor, the
    # responses a pipelined run generated ahead); a checkpoint without one leaves it as built
    components: dict[str, Any] = field(default_factory=dict)


def _components_state(training: TrainingState) -> dict[str, Any]:
    return {name: component.state_dict() for name, component in training.components.items()}


def _load_components(training: TrainingState, saved: dict[str, Any]) -> None:
    for name, component in training.components.items():
        if name in saved:
            component.load_state_dict(saved[name])


def checkpoint_to_resume(run_dir: Path) -> Path:
    """The checkpoint `--resume <run_dir>` continues from; a clear error when the run has none."""
    found = latest_checkpoint(run_dir)
    if found is None:
        raise PathNotFoundError(f"no complete checkpoint under {checkpoint_root(run_dir)} to resume from")
    return found


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators at a run's start (a resume restores their states)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors, tuples, lists and numbers, so that a weights_only load reads it."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, key.tolist(), int(pos), int(has_gauss), float(gauss))  # the MT19937 key as a list
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state,
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    kind, key, *rest = rng["numpy"]  # key: a list, or an ndarray in checkpoints written before
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), *rest))
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _state_globals() -> list[SafeGlobal]:
    """The classes `trainer_state.pt` and `rank_*.pt` may hold beyond plain data (tensors, numbers, str, containers).

    The pipeline component (rollout/pipeline.py) saves the responses generated ahead as these dataclasses: rebuilt
    as the class's empty instance with its attributes set, which runs none of the file's code. Older checkpoints
    also hold numpy's RNG key as an array."""
    # imported here, not at the top: experience.py imports most of the trainer
    from remix_rft.data.types import Example
    from remix_rft.experience import FreshRollouts
    from remix_rft.rewards.base import Score
    from remix_rft.rollout.base import Rollout

    return [FreshRollouts, Rollout, Example, Score, *NUMPY_ARRAYS]


def write_training_state(directory: Path, training: TrainingState, phase: str) -> None:
    """Fill a (temp) checkpoint directory with the whole training state."""
    if training.dist.active:
        return _write_sharded(directory, training, phase)
    state, references, policy = training.state, training.references, training.actor.model
    if isinstance(references, AdapterReferences):
        _write_adapters(directory, training)
    else:
        policy.save_pretrained(directory / "policy", safe_serialization=True)
        if references.reference is not None and state.reincarnated:
            references.reference.save_pretrained(directory / "reference", safe_serialization=True)
        if references.lagged is not None:
            references.lagged.save_pretrained(directory / "precedent", safe_serialization=True)
        if training.critic is not None:
            training.critic.model.save_pretrained(directory / "critic")
    training.tokenizer.save_pretrained(directory / "policy")
    torch.save({**training.actor.state_dict(),
                "critic_optimizer": training.critic.state_dict()["optimizer"] if training.critic else None},
               directory / "optimizer.pt")
    torch.save(training.buffer.state_dict(), directory / "buffer.pt")
    counters = {"step": state.step, "rollouts_total": state.rollouts_total, "tokens_total": state.tokens_total,
                "reincarnated": state.reincarnated}
    hacking = training.hacking.state_dict() if training.hacking is not None else {}
    torch.save({**counters, "sampler": training.prompts.state_dict(), "rng": rng_state(), "hacking": hacking,
                "components": _components_state(training)}, directory / "trainer_state.pt")
    (directory / "trainer_state.json").write_text(json.dumps({**counters, "phase": phase, "world_size": 1}, indent=2))


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def _write_adapters(directory: Path, training: TrainingState) -> None:
    """A LoRA run's models: the adapter (PEFT folder), the merged export, the adapter snapshots, the critic's
    trainable part."""
    policy = training.actor.model
    lora.save_adapter(policy, directory / "adapter", base_model=training.base_model)
    policy.save_pretrained(directory / "policy", state_dict=lora.merged_state_dict(policy), safe_serialization=True)
    torch.save(training.references.state_dict(), directory / "references.pt")
    if training.critic is not None:
        torch.save(_trainable_state(training.critic.model), directory / "critic.pt")


def _read_adapters(directory: Path, training: TrainingState) -> None:
    lora.load_adapter(training.actor.model, directory / "adapter")
    training.references.load_state_dict(load_file(directory / "references.pt"))
    if training.critic is not None:
        trainable = load_file(directory / "critic.pt")
        foreign = set(trainable) - {name for name, _ in training.critic.model.named_parameters()}
        if foreign:
            raise UsageError(f"{directory / 'critic.pt'} does not fit this run's critic: {sorted(foreign)[:3]}")
        training.critic.model.load_state_dict(trainable, strict=False)  # the frozen trunk is the config's model


def check_world_size(directory: Path, world_size: int) -> None:
    """A checkpoint resumes with the number of ranks that wrote it (1: a plain process)."""
    info = json.loads((Path(directory) / "trainer_state.json").read_text())
    written_by = int(info.get("world_size", 1))
    if written_by != world_size:
        how = "a plain `remix-rft train --resume`" if written_by == 1 else \
            f"torchrun with {written_by} processes in all (--nnodes x --nproc-per-node)"
        raise UsageError(f"{directory} was written by {written_by} ranks and this run has {world_size}: resume it "
                         f"with {how}")


def read_training_state(directory: Path, training: TrainingState, dtype: str) -> TrainState:
    """Load a checkpoint into the components of `training` (built from the run's config); returns the counters."""
    directory = Path(directory)
    logger.info("resuming from %s", directory)
    check_world_size(directory, training.dist.world_size)
    if training.dist.active:
        return _read_sharded(directory, training)
    references = training.references
    # every file is read before any of it is applied: a refused one leaves the run's components as built
    trainer_state = load_file(directory / "trainer_state.pt", _state_globals())
    optim = load_file(directory / "optimizer.pt")
    buffer = load_file(directory / "buffer.pt")
    _check_lora_checkpoint(directory, isinstance(references, AdapterReferences))
    if isinstance(references, AdapterReferences):
        _read_adapters(directory, training)
    else:
        # the policy's float32 master weights; the frozen copies in their storage dtype `dtype` (model.frozen_dtype)
        training.actor.model.load_state_dict(load_model(str(directory / "policy"), dtype="float32").state_dict())
        if trainer_state["reincarnated"] and references.reference is not None:
            references.reference.load_state_dict(load_model(str(directory / "reference"), dtype=dtype).state_dict())
        if references.lagged is not None:
            references.lagged.load_state_dict(load_model(str(directory / "precedent"), dtype=dtype).state_dict())
        if training.critic is not None:
            training.critic.model.load_state_dict(ValueModel.load(directory / "critic").state_dict())
    training.actor.load_state_dict(optim)
    if training.critic is not None and optim["critic_optimizer"] is not None:
        training.critic.load_state_dict({"optimizer": optim["critic_optimizer"]})
    training.buffer.load_state_dict(buffer)
    training.prompts.load_state_dict(trainer_state["sampler"])
    if training.hacking is not None:
        training.hacking.load_state_dict(trainer_state.get("hacking", {}))
    _load_components(training, trainer_state.get("components", {}))
    restore_rng_state(trainer_state["rng"])
    return TrainState(step=trainer_state["step"], rollouts_total=trainer_state["rollouts_total"],
                      tokens_total=trainer_state["tokens_total"], reincarnated=trainer_state["reincarnated"])


def _check_lora_checkpoint(directory: Path, lora_run: bool) -> None:
    """A LoRA checkpoint resumes a LoRA run and a full one a full run (model.lora.r must be as it was)."""
    written_with_lora = (directory / "adapter").is_dir() or (directory / "lora_references.json").is_file()
    if written_with_lora != lora_run:
        raise UsageError(f"{directory} was written by a run {'with' if written_with_lora else 'without'} LoRA adapters "
                         f"and this run has model.lora.r {'> 0' if lora_run else '= 0'}: resume with the run's "
                         "own config.yaml (model.lora as it was)")


def _sharded_models(training: TrainingState) -> dict[str, tuple[torch.nn.Module, torch.optim.Optimizer | None]]:
    models = {"policy": (training.actor.model, training.actor.optimizer)}
    references = training.references
    if isinstance(references, AdapterReferences):  # no copies: the snapshots go with `_sharded_state`
        if training.critic is not None:
            models["critic"] = (training.critic.model, training.critic.optimizer)
        return models
    if references.reference is not None and training.state.reincarnated:
        models["reference"] = (references.reference, None)
    if references.lagged is not None:
        models["precedent"] = (references.lagged, None)
    if training.critic is not None:
        models["critic"] = (training.critic.model, training.critic.optimizer)
    return models


def _sharded_state(training: TrainingState) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    out: dict[str, Any] = {}
    for name, (model, optimizer) in _sharded_models(training).items():
        out[name] = get_model_state_dict(model)
        if optimizer is not None:
            out[f"{name}_optimizer"] = get_optimizer_state_dict(model, optimizer)
    references = training.references
    if isinstance(references, AdapterReferences):  # adapter snapshots: DTensor shards, saved and loaded in place
        for key, snapshot in references.state_dict().items():
            if snapshot is not None:
                out[key] = snapshot
    return out


def _adapter_snapshot_names(training: TrainingState) -> list[str]:
    references = training.references
    if not isinstance(references, AdapterReferences):
        return []
    return [key for key, snapshot in references.state_dict().items() if snapshot is not None]


def _rank_state(training: TrainingState) -> dict[str, Any]:
    state = training.state
    return {"step": state.step, "rollouts_total": state.rollouts_total, "tokens_total": state.tokens_total,
            "reincarnated": state.reincarnated}


def _write_sharded(directory: Path, training: TrainingState, phase: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    dist, policy = training.dist, training.actor.model
    dcp.save(_sharded_state(training), checkpoint_id=directory / "sharded")
    full = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    adapters = isinstance(training.references, AdapterReferences)
    if adapters:
        full = lora.merge_state_dict(full, lora.lora_scaling(policy))
        lora.save_adapter(policy, directory / "adapter", base_model=training.base_model, write=dist.is_main)
    if dist.is_main:  # a Hugging Face export of the full policy, loadable by any tool
        if adapters:
            (directory / "lora_references.json").write_text(json.dumps(_adapter_snapshot_names(training)))
        policy.save_pretrained(directory / "policy", state_dict=full, safe_serialization=True)
        training.tokenizer.save_pretrained(directory / "policy")
        (directory / "trainer_state.json").write_text(json.dumps(
            {**_rank_state(training), "phase": phase, "world_size": dist.world_size}, indent=2))
    torch.save({**_rank_state(training), "sampler": training.prompts.state_dict(), "rng": rng_state(),
                "lr_scheduler": training.actor.lr_scheduler.state_dict(), "buffer": training.buffer.state_dict(),
                "hacking": training.hacking.state_dict() if training.hacking is not None else {},
                "components": _components_state(training)}, directory / f"rank_{dist.rank:05d}.pt")


def _read_sharded(directory: Path, training: TrainingState) -> TrainState:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    own = load_file(directory / f"rank_{training.dist.rank:05d}.pt", _state_globals())
    training.state.reincarnated = own["reincarnated"]  # decides whether the checkpoint holds a reference
    references = training.references
    _check_lora_checkpoint(directory, isinstance(references, AdapterReferences))
    if isinstance(references, AdapterReferences):  # placeholders of the saved snapshots, filled in place by dcp.load
        saved = json.loads((directory / "lora_references.json").read_text())
        references.load_state_dict({key: lora.adapter_snapshot(training.actor.model) for key in saved})
    state = _sharded_state(training)
    load_sharded(state, directory / "sharded")  # dcp.load, reading its pickles without running code
    for name, (model, optimizer) in _sharded_models(training).items():
        set_model_state_dict(model, state[name])
        if optimizer is not None:
            set_optimizer_state_dict(model, optimizer, state[f"{name}_optimizer"])
    training.actor.lr_scheduler.load_state_dict(own["lr_scheduler"])
    training.buffer.load_state_dict(own["buffer"])
    training.prompts.load_state_dict(own["sampler"])
    if training.hacking is not None:
        training.hacking.load_state_dict(own.get("hacking", {}))
    _load_components(training, own.get("components", {}))
    restore_rng_state(own["rng"])
    return TrainState(step=own["step"], rollouts_total=own["rollouts_total"], tokens_total=own["tokens_total"],
                      reincarnated=own["reincarnated"])
