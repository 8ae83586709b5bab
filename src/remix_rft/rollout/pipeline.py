"""One-step-off (pipelined) generation: the next step's fresh responses are generated while this step updates.

`rollout.pipeline=true` (README, Pipelined generation). With `rollout.max_staleness=1`, step k+1's prompts are
drawn and handed to a background thread at the start of step k's update, together with a frozen snapshot of the
weights the update starts from (pi_k). The thread samples them, scores them and computes the trainer's own log-probs
of the sampled tokens under that snapshot. Step k+1 then trains on responses one policy version old: they are
tagged with version k, and the behaviour ratio pi_theta / pi_k, the same one ReMix uses for replayed rollouts,
corrects them (Mix-PPG's clip centre pi_{k+1} / pi_k). With `max_staleness=0` the job starts after the update, from
the updated weights, so a pipelined run equals a synchronous one; that is the check of the machinery.

This module holds the thread and the snapshot's weight copy; what a job does is rollout/generator.py's. A job's
result is saved in checkpoints (`state_dict` waits for it), so a resumed run trains on the very responses the
uninterrupted one would have.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from remix_rft import lora
from remix_rft.rollout.weights import iter_full_tensors, unmerged_full_tensors

MAX_STALENESS = 1  # one-step-off: one job in flight at a time


@torch.no_grad()
def copy_weights(source: torch.nn.Module, snapshot: torch.nn.Module) -> None:
    """Copy `source`'s current weights into `snapshot`, a model of the same architecture: a sharded tensor is
    gathered alone. A LoRA policy arrives merged into a plain snapshot (as the vLLM engine gets it), and as it is,
    adapters apart, into a snapshot with the same adapters: then the snapshot computes exactly what the policy does
    in any precision (merged, W + BA rounded to bf16 loses most of a small BA). Every rank must call it together."""
    targets = dict(snapshot.named_parameters())
    copied = set()
    tensors = unmerged_full_tensors(source) if lora.has_adapters(snapshot) else iter_full_tensors(source)
    for name, tensor in tensors:
        if name not in targets:
            raise KeyError(f"the generation snapshot has no parameter {name!r} (is it the policy's architecture?)")
        targets[name].copy_(tensor.to(targets[name].device, targets[name].dtype))
        copied.add(name)
    missing = sorted(set(targets) - copied)
    if missing:
        raise KeyError(f"the policy has no parameter for the snapshot's {missing[:3]}")


class RolloutPipeline:
    """At most one generation job in flight, run in a background thread; `take(step)` returns its result."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._result: Any = None
        self._error: BaseException | None = None
        self.step: int | None = None  # the training step the pending (or finished) job's responses are for

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, step: int, job: Callable[[], Any]) -> None:
        """Run `job()` in the background for training step `step`."""
        if self.step is not None:
            raise RuntimeError(f"a generation job for step {self.step} is still pending; take it first")
        self.step, self._result, self._error = step, None, None
        threads = torch.get_num_threads()

        def run() -> None:
            try:
                # OpenMP's thread count is per thread and a new thread may start with another (after vLLM's CPU
                # worker binds the training thread's, a new one has 1, which its attention kernel rejects). The
                # binding itself: vLLM replaces torch.set_num_threads with a no-op once it has bound its threads
                torch._C.set_num_threads(threads)
                self._result = job()
            except BaseException as error:  # re-raised in the training thread by wait()
                self._error = error

        self._thread = threading.Thread(target=run, name=f"remix-generate-step-{step}", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the pending job (if any) has finished; its error, if it failed, is raised here."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error, self.step = self._error, None, None
            raise RuntimeError(f"pipelined generation failed: {error}") from error

    def take(self, step: int) -> Any:
        """The pending job's result when it is for `step` (waiting for it), else None."""
        if self.step != step:
            return None
        self.wait()
        result, self._result, self.step = self._result, None, None
        return result

    def state_dict(self) -> dict[str, Any]:
        self.wait()
        return {"step": self.step, "result": self._result}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wait()
        self.step, self._result = state["step"], state["result"]
