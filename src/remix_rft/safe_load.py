"""Reading checkpoint files without running code from them.

A `.pt` file is a pickle, and unpickling calls whatever functions the file names: a checkpoint folder someone shares
would run their code on `--resume`. So every checkpoint file is read with `torch.load(weights_only=True)`, which builds
only tensors, numbers, strings and containers, plus the few plain data classes the caller allow-lists for that file
(with `torch.serialization.safe_globals` as a context, so nothing else in the process starts trusting them). A file
that holds anything else fails with one line naming it, before anything in it runs.

A torchrun checkpoint's `sharded/` folder (torch.distributed.checkpoint) has the same hole twice over: DCP reads its
`.metadata` with plain `pickle.load` and the non-tensor values (optimizer hyper-parameters) with
`torch.load(weights_only=False)`. `load_sharded` reads the first restricted to DCP's own metadata classes and vets
the second with a weights_only load.
"""

from __future__ import annotations

import io
import pickle
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from remix_rft.errors import UserError

# what `torch.serialization.safe_globals` takes: a class or function, or one with the name a pickle gives it
SafeGlobal = Callable[..., Any] | tuple[Callable[..., Any], str]


class UnsafeCheckpointError(UserError, pickle.UnpicklingError):
    """A checkpoint file holds objects whose unpickling could run code; it was not loaded."""


def _numpy_array_globals() -> list[SafeGlobal]:
    """What a pickled numpy array names: checkpoints written before RNG states were stored as plain lists hold
    numpy's MT19937 key as a uint32 array. Rebuilding an array runs no code of the file's choosing."""
    reconstruct = np.ndarray(0).__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct, whatever numpy's version
    return [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"),  # the name numpy 1.x pickles
            np.ndarray, np.dtype, type(np.dtype(np.uint32))]


NUMPY_ARRAYS: list[SafeGlobal] = _numpy_array_globals()


def _refusal(path: Path | str, what: str, detail: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{path}{what} holds objects a checkpoint may not hold ({detail}): refused to load it, since unpickling "
        "them could run code (nothing in it was run); resume only from checkpoints written by remix-rft")


def _torch_reason(error: BaseException) -> str:
    """The weights_only unpickler's own reason, without torch's advice to load the file unsafely instead."""
    message = str(error)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", message) \
        or re.search(r"WeightsUnpickler error: (.*)", message)
    reason = found.group(1) if found else next(iter(message.splitlines()), "") or type(error).__name__
    return reason[:200]


def load_file(path: Path, allowed: Sequence[SafeGlobal] = ()) -> Any:
    """`torch.load(path)` that builds only plain data and the `allowed` classes; else an `UnsafeCheckpointError`."""
    with torch.serialization.safe_globals(list(allowed)):
        try:
            return torch.load(path, weights_only=True)
        except pickle.UnpicklingError as error:
            try:  # names what the file wanted to build; reads the pickle's opcodes, calls nothing
                forbidden = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
            except Exception:  # only the message's detail is lost
                forbidden = []
            detail = ", ".join(forbidden[:3]) + (", ..." if len(forbidden) > 3 else "") if forbidden \
                else _torch_reason(error)
            raise _refusal(path, "", detail) from None


# ------------------------------------------------------------------------------ torch.distributed.checkpoint

_DCP_CLASSES = {  # the dataclasses and enum a DCP `.metadata` file is made of
    "torch.distributed.checkpoint.metadata": {"Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                                              "TensorStorageMetadata", "ChunkStorageMetadata",
                                              "BytesStorageMetadata", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # a lookup of torch.strided & co. by name
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},  # StorageMeta.checkpoint_id
    "pathlib._local": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},  # their module on 3.13+
}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata classes, torch.Size and torch's dtype / layout / memory-format constants only."""

    def find_class(self, module: str, name: str) -> Any:
        # looked up in modules already imported, never imported here (an import runs the module's code)
        if module == "torch":
            value = torch.__dict__.get(name)
            if name == "Size" or isinstance(value, torch.dtype | torch.layout | torch.memory_format):
                return value
        elif name in _DCP_CLASSES.get(module, ()) and module in sys.modules:
            return getattr(sys.modules[module], name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def read_dcp_metadata(directory: Path) -> Any:
    """A sharded checkpoint's DCP metadata (`<directory>/.metadata`), read without running code from it."""
    path = Path(directory) / ".metadata"
    try:
        with path.open("rb") as handle:
            return _MetadataUnpickler(handle).load()
    except pickle.UnpicklingError as error:
        raise _refusal(path, "", str(error)) from None


def load_sharded(state: dict[str, Any], directory: Path) -> None:
    """`torch.distributed.checkpoint.load(state, checkpoint_id=directory)`, fed the metadata read here (never
    DCP's `pickle.load`) and refusing a non-tensor value that a weights_only load would not build."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import StorageMeta

    metadata = read_dcp_metadata(directory)  # every rank reads the same file: all fail here, before any collective

    class Reader(dcp.FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("rank") is not None:  # rank-local metadata files: this project never writes them
                raise FileNotFoundError(f"{directory}: no rank-local metadata")
            if getattr(metadata, "storage_meta", None) is None:  # as FileSystemReader.read_metadata does
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = getattr(self, "load_id", None)
            return metadata

    class Planner(DefaultLoadPlanner):
        def __init__(self) -> None:
            super().__init__()
            self.refused: list[tuple[str, str]] = []  # (the value's name, why)

        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            try:
                torch.load(value, weights_only=True)
            except pickle.UnpicklingError as error:
                # raised after dcp.load: inside it an error becomes a multi-rank CheckpointException
                self.refused.append((read_item.dest_index.fqn, _torch_reason(error)))
                return
            value.seek(0)
            super().load_bytes(read_item, value)  # DCP's own (unrestricted) load of the bytes just vetted

    planner = Planner()
    dcp.load(state, storage_reader=Reader(directory), planner=planner)
    if planner.refused:
        name, reason = planner.refused[0]
        raise _refusal(directory, f" (its value {name})", reason)
