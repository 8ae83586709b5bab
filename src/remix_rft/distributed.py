"""Data-parallel training over torch.distributed ranks (launched by torchrun), with FSDP2 sharding.

A plain process (no torchrun environment) gets `Distributed()`: world size 1, every collective a no-op, models
left unsharded: exactly the single-process trainer. Under torchrun every model is sharded with
`fully_shard` (each decoder layer, then the root); NCCL on CUDA (one GPU per LOCAL_RANK), gloo on CPU.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from remix_rft.batching import LEAN_LOGPROBS_METHOD, lean_logprobs
from remix_rft.errors import ConfigError
from remix_rft.logprobs import lean_head

# long enough for rank 0's held-out evaluation while the other ranks wait at a barrier
COLLECTIVE_TIMEOUT = timedelta(hours=2)


def resolve_device(name: str) -> torch.device:
    """`model.device` of a plain process: auto (CUDA when visible), cpu, cuda, cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"config key 'model.device': unknown device {name!r} (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key 'model.device': {name!r} but no CUDA GPU is visible; use model.device=auto or cpu")
    return device


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


class Distributed:
    """The process's place among the ranks and the few collectives the trainer needs."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, active: bool = False,
                 device: torch.device | None = None):
        self.rank, self.world_size, self.local_rank, self.active = rank, world_size, local_rank, active
        self.device = device or torch.device("cpu")
        self.mesh = None
        if active:
            from torch.distributed.device_mesh import init_device_mesh

            self.mesh = init_device_mesh(self.device.type, (world_size,))

    @classmethod
    def from_environment(cls, device_name: str) -> Distributed:
        """Join the process group torchrun set up (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)."""
        if not launched_by_torchrun():
            return cls(device=resolve_device(device_name))
        rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
        use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
        if device_name not in ("auto", "cuda", "cpu"):
            raise ConfigError(f"config key 'model.device': {device_name!r} under torchrun; use auto, cuda or cpu (each "
                              f"rank takes the GPU of its LOCAL_RANK)")
        if use_cuda:
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
        return cls(rank, world, local, active=True, device=device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, count: int) -> tuple[int, int]:
        """This rank's contiguous [start, stop) slice of `count` items split as evenly as possible."""
        base, extra = divmod(count, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    # ------------------------------------------------------------------------------------------- collectives
    def all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        """Element-wise sum / max / min of a list of floats over ranks (float64 on the collective's device)."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                                    "min": dist.ReduceOp.MIN}[op])
        return tensor.tolist()

    def sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `tensor` over ranks (a new tensor; float64 on the wire), e.g. statistics that
        must be those of the global batch."""
        if not self.active:
            return tensor.clone()
        total = tensor.detach().to(device=self.device, dtype=torch.float64).clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.to(device=tensor.device, dtype=tensor.dtype)

    def all_gather_object(self, value: Any) -> list[Any]:
        if not self.active:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's value, on every rank."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    # ------------------------------------------------------------------------------------------- FSDP2
    def shard(self, model: nn.Module, bf16: bool) -> nn.Module:
        """FSDP2-shard `model` over all ranks (no-op in a plain process): each transformer block, then the root.

        bf16 asks for bfloat16 compute with float32 gradient reduction; the sharded master weights keep the
        model's dtype."""
        if not self.active:
            return model
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
            else MixedPrecisionPolicy()
        block_names = set(getattr(_hf_model(model), "_no_split_modules", None) or [])
        for module in list(model.modules())[1:]:
            if type(module).__name__ in block_names:
                fully_shard(module, mesh=self.mesh, mp_policy=policy)
        fully_shard(model, mesh=self.mesh, mp_policy=policy)
        if lean_head(model) is not None:
            # the chunked log-prob path calls the decoder and reads the LM head weight outside `forward`: run it as
            # an FSDP forward so the root's parameters are gathered (and their gradients reduced) around it
            setattr(model, LEAN_LOGPROBS_METHOD, functools.partial(lean_logprobs, model))
            register_fsdp_forward_method(model, LEAN_LOGPROBS_METHOD)
        return model

    @contextlib.contextmanager
    def gathered(self, model: nn.Module | None) -> Iterator[None]:
        """Full parameters on every rank for the block: forwards inside it run no collectives, so ranks may run
        different numbers of them (generation that stops early, log-prob passes of different sizes).

        Every rank must enter and leave it together; the parameters are resharded on exit."""
        modules = _fsdp_modules(model) if self.active and model is not None else []
        for module in modules:
            module.set_reshard_after_forward(False, recurse=False)
        for module in modules:
            module.unshard()
        try:
            yield
        finally:
            for module in modules:
                module.reshard()
                # FSDP2's default: blocks reshard after forward, the root keeps its parameters for the backward
                module.set_reshard_after_forward(module is not model, recurse=False)


def _hf_model(model: nn.Module) -> nn.Module:
    # the critic wraps a transformers trunk
    return getattr(model, "trunk", model)


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [module for module in model.modules() if isinstance(module, FSDPModule)]


def grad_norm_value(norm: torch.Tensor) -> float:
    """The total gradient norm as a float (a DTensor when the gradients are sharded)."""
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)
