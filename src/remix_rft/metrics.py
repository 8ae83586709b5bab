"""Run-directory logging: `metrics.jsonl` (always), TensorBoard and Weights & Biases (when enabled)."""

from __future__ import annotations

import json
import logging
import math
import resource
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from remix_rft import hardware
from remix_rft.errors import DataError, DataNotFoundError, MissingPackageError
from remix_rft.memory import heap_allocated_mb

logger = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    """Peak resident memory of this process image so far, in MiB.

    Linux: VmHWM, the high-water mark of this address space. Not ru_maxrss: the kernel carries that across execve,
    so a process spawned by a 2 GB parent (vfork + exec, as Python's subprocess does) or one that re-executes
    itself (the jemalloc relaunch) would report the parent's or the old image's peak. ru_maxrss elsewhere (KiB on
    Linux, bytes on macOS)."""
    status = _proc_status_kb("VmHWM:")
    if status is not None:
        return status / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _proc_status_kb(field: str) -> int | None:
    """A `/proc/self/status` field in KiB (e.g. "VmRSS:"), or None where there is no such file or field."""
    try:
        with open("/proc/self/status") as status:
            return next((int(line.split()[1]) for line in status if line.startswith(field)), None)
    except OSError:
        return None


def rss_mb() -> float:
    """Resident memory of this process now, in MiB (Linux's /proc; NaN where there is none)."""
    current = _proc_status_kb("VmRSS:")
    return current / 1024 if current is not None else float("nan")


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak and current resident memory of this process, the bytes it holds allocated on the C heap (and peak
    allocated GPU memory on CUDA), in MiB. The current RSS and heap at each step's end are what a leak shows in
    (benchmarks/soak.py fits their slopes)."""
    out = {"memory/peak_rss_mb": peak_rss_mb(), "memory/rss_mb": rss_mb(), "memory/heap_mb": heap_allocated_mb()}
    if device.type == "cuda":
        out["memory/peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; null keeps the line parseable by every reader
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


def new_run_dir(config) -> Path:
    """`<logging.output_dir>/<logging.run_name>`, by default named after the algorithm and the start time."""
    name = config.logging.run_name
    if not name:
        kind = ("remix-" if config.remix.enabled else "") + config.algorithm.name
        name = f"{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return Path(config.logging.output_dir) / name


def create_run_dir(config, run_dir: Path | None, dist) -> Path:
    """The run directory (given, else rank 0's `new_run_dir`, shared with every rank); rank 0 creates it and
    writes the resolved config and `run_info.json` (versions, CPU features, the precision `auto` chose) there."""
    run_dir = Path(dist.broadcast_object(str(run_dir or new_run_dir(config))))
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config.to_yaml())
        info = hardware.run_info(config)
        info["world_size"] = dist.world_size
        (run_dir / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
        logger.info(hardware.precision_summary(info))
    return run_dir


def add_run_info(run_dir: Path, dist, **facts: Any) -> None:
    """Add facts decided after the run directory was made (e.g. the memory-lean choice) to its run_info.json."""
    if dist.is_main:
        path = run_dir / "run_info.json"
        info = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**info, **facts}, indent=2) + "\n")


# How a step metric measured on one rank's share combines over data-parallel ranks; a key in none of these is
# the same on every rank (the schedule, counters, and what the actor and critic already reduced).
# The sampler/trainer mismatch statistics (experience.mismatch_correction) come for all rows and by kind of row.
_BY_KIND = ("", "fresh_", "replay_")
SUM_METRICS = ("rollouts/step", "rollouts/replayed", "replay/groups", "tokens/step", "buffer/groups", "fresh/groups",
               "fresh/trained_groups", "fresh/informative_groups", "replay/informative_groups", "replay/replacements")
# the prompt selector's counters are global (every rank holds the same history)
MAX_METRICS = ("selection/skipped", "selection/skipped_total", "sync/probe_gap", "response_length/max",
               "logprob_mismatch/max",
               "logprob_mismatch/fresh_max", "logprob_mismatch/replay_max",
               *(f"is_correction/{k}raw_ratio_max" for k in _BY_KIND))
MIN_METRICS = tuple(f"is_correction/{k}weight_min" for k in _BY_KIND)
ROLLOUT_MEANS = ("reward/mean", "accuracy/train", "fresh/informative_share", "response_length/mean",
                 "response_length/truncated_share", *(f"mismatch_mask/{k}sequence_share" for k in _BY_KIND))
TOKEN_MEANS = ("entropy", "advantage/nonzero_token_share", "kl/base", "kl/precedent", "replay/m2",
               "replay/m2_masked_share", "logprob_mismatch/mean",
               "logprob_mismatch/outside_clip_share", "logprob_mismatch/fresh_mean", "logprob_mismatch/replay_mean",
               *(f"is_correction/{k}{name}" for k in _BY_KIND for name in ("raw_ratio_mean", "weight_mean",
                                                                             "capped_fraction")),
               *(f"mismatch_mask/{k}token_share" for k in _BY_KIND),
               *(f"truncation/{k}masked_share" for k in _BY_KIND))
# means over the replayed groups or responses: weighted by this rank's count of them
_REPLAY_MEANS = {"replay/mean_age": "replay/groups", "replay/informative_share": "replay/groups"}
# token means over one kind of row whose names do not say it
_KIND_OF = {"logprob_mismatch/mean": "fresh", "logprob_mismatch/outside_clip_share": "fresh", "replay/m2": "replay",
            "replay/m2_masked_share": "replay"}
_KIND_FAMILIES = ("truncation", "mismatch_mask", "is_correction", "logprob_mismatch")


def row_kind(key: str) -> str | None:
    """"fresh" / "replay" for a statistic measured over that kind of row only (`truncation/replay_masked_share`)."""
    if key in _KIND_OF:
        return _KIND_OF[key]
    family, _, name = key.partition("/")
    if family in _KIND_FAMILIES:
        for kind in ("fresh", "replay"):
            if name.startswith(f"{kind}_"):
                return kind
    return None


def reduce_over_ranks(record: dict[str, Any], dist, rollouts: int, tokens: float,
                      kind_tokens: dict[str, float] | None = None,
                      kind_rows: dict[str, float] | None = None) -> dict[str, Any]:
    """Combine a step record over ranks: counts add up, maxima and wall times take the maximum, means are
    weighted by each rank's rollouts (or response tokens; replay ages by replayed groups). A statistic of one kind
    of row (`row_kind`) is weighted by that kind's response tokens (`kind_tokens`) or rows (`kind_rows`).

    Every rank reduces the union of the ranks' keys, in one order: a rank without replayed rows has no
    `*/replay_*` statistics, and enters them with weight 0 (a sum's 0, a maximum's -inf, a minimum's +inf). Lists
    of different lengths would fail on gloo and hang or read garbage on NCCL."""
    if not dist.active:
        return record
    keys = sorted(set().union(*dist.all_gather_object(sorted(record))))
    out = dict(record)
    kind_tokens, kind_rows = kind_tokens or {}, kind_rows or {}

    def value(key: str) -> float:
        return float(record[key]) if key in record else 0.0

    def weight(key: str, base: float, by_kind: dict[str, float]) -> float:
        if key not in record:
            return 0.0
        kind = row_kind(key)
        return float(by_kind.get(kind, base)) if kind else float(base)

    sums = [k for k in keys if k in SUM_METRICS or k.startswith("verifier/")]
    maxima = [k for k in keys if k in MAX_METRICS or k.startswith(("time/", "memory/"))]
    minima = [k for k in keys if k in MIN_METRICS]
    weighted = [(k, weight(k, rollouts, kind_rows)) for k in keys if k in ROLLOUT_MEANS]
    weighted += [(k, weight(k, tokens, kind_tokens)) for k in keys if k in TOKEN_MEANS]
    weighted += [(k, value(count) if k in record else 0.0) for k, count in _REPLAY_MEANS.items() if k in keys]
    values = [value(k) for k in sums] + [value(k) * w for k, w in weighted] + [w for _, w in weighted]
    reduced = dist.all_reduce(values)
    out.update((k, int(v) if isinstance(record.get(k, 0), int) else v) for k, v in zip(sums, reduced))
    products, weights = reduced[len(sums):len(sums) + len(weighted)], reduced[len(sums) + len(weighted):]
    out.update({k: (p / w if w else 0.0) for (k, _), p, w in zip(weighted, products, weights)})
    out.update(zip(maxima, dist.all_reduce([value(k) if k in record else -math.inf for k in maxima], op="max")))
    out.update(zip(minima, dist.all_reduce([value(k) if k in record else math.inf for k in minima], op="min")))
    # anything else is the same on every rank; a key only some ranks have comes from the first that has it (the
    # list is built from `keys`, the same on every rank, so every rank joins the gather or none does)
    reduced_keys = {*sums, *maxima, *minima, *(k for k, _ in weighted)}
    others = [k for k in keys if k not in reduced_keys]
    if others:
        for held in dist.all_gather_object({k: record[k] for k in others if k in record}):
            out.update({k: v for k, v in held.items() if k not in out})
    memory = [k for k in record if k.startswith("memory/")]
    for rank, values in enumerate(dist.all_gather_object([record[k] for k in memory])):
        out.update({f"{k}/rank{rank}": v for k, v in zip(memory, values)})
    return out


def reduce_step_record(record: dict[str, Any], dist, batch, rollouts: int, step: int,
                       fresh_groups: list | None = None) -> dict[str, Any]:
    """A train step's record combined over ranks (`reduce_over_ranks`; fresh and replayed rows' statistics weighted
    by their own tokens and rows), with the world size and, given the step's fresh groups (pipelined generation),
    `rollouts/staleness`: the policy versions they lag behind (0 synchronous, 1 one-step-off)."""
    mask, replay = batch.tokens.response_mask, batch.is_replay
    record = reduce_over_ranks(
        record, dist, rollouts, float(mask.sum()),
        kind_tokens={"fresh": float(mask[~replay].sum()), "replay": float(mask[replay].sum())},
        kind_rows={"fresh": float((~replay).sum()), "replay": float(replay.sum())})
    record["distributed/world_size"] = dist.world_size
    if fresh_groups is not None:
        lag, groups = dist.all_reduce([float(sum(step - g.version for g in fresh_groups)), float(len(fresh_groups))])
        record["rollouts/staleness"] = lag / max(groups, 1.0)
    return record


def prompt_ledger(step: int, generated: list, trained: list, replayed: list, dist) -> dict[str, Any]:
    """The step's line of the prompt ledger (metrics.jsonl, type "ledger"): the training-set indices it generated
    for, trained on fresh, and replayed (with the version that generated them), every rank's in rank order. A
    resumed run must write the same lines as an uninterrupted one (tests/test_invariants.py)."""
    mine = {"generated": [g.meta["index"] for g in generated], "trained": [g.meta["index"] for g in trained],
            "replayed": [[g.meta["index"], g.version] for g in replayed]}
    ranks = dist.all_gather_object(mine)
    return {"type": "ledger", "step": step, **{key: [x for rank in ranks for x in rank[key]] for key in mine}}


def step_summary(record: dict[str, Any], total_steps: int) -> str:
    """One human-readable line about a training step, for the progress log."""
    return (f"step {record['step']}/{total_steps} [{record['phase']}] reward {record['reward/mean']:.3f} "
            f"acc {record['accuracy/train']:.3f} len {record['response_length/mean']:.0f} "
            f"rollouts {record['rollouts/total']} ratio {record.get('ratio/mean', float('nan')):.3f} "
            f"kl {record.get('kl/base', 0.0):.4f} {record['time/step']:.1f}s"
            + (f"  -> reincarnation next step: {record['reincarnation/message']}"
               if "reincarnation/message" in record else ""))


def report_step(record: dict[str, Any], total_steps: int, progress=None, alarm=None) -> None:
    """Print a step's summary line above the tqdm bar `progress`, or log it when there is no bar; a reward-hacking
    `alarm` is appended as a warning."""
    summary = step_summary(record, total_steps)
    if alarm is not None:
        summary += f"  WARNING {alarm.message}"
    if progress is None:
        (logger.info if alarm is None else logger.warning)(summary)
        return
    progress.set_postfix(reward=f"{record['reward/mean']:.3f}", rollouts=record["rollouts/total"])
    progress.write(summary)


class MetricsLogger:
    """Appends one JSON object per line to `<run_dir>/metrics.jsonl`, mirrored to TensorBoard / W&B.

    Lines carry a "type": "train" (one per step), "eval" (held-out evaluations) or "event" (e.g. reincarnation).
    """

    def __init__(self, run_dir: Path, tensorboard: bool = False, wandb_project: str | None = None,
                 run_name: str | None = None, config: dict | None = None, resume: bool = False):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = None
        self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
            except ImportError:
                logger.warning("tensorboard is not installed (pip install tensorboard): TensorBoard logging is off")
        if wandb_project:
            try:
                import wandb
            except ImportError:
                self._file.close()
                raise MissingPackageError("logging.wandb=true needs the wandb package: pip install wandb "
                                          "(or set logging.wandb=false)") from None
            self._wandb = wandb.init(project=wandb_project, name=run_name, config=config, dir=str(run_dir),
                                     resume="allow" if resume else None, id=run_name if resume else None)

    @classmethod
    def for_run(cls, config, run_dir: Path, resume_step: int | None = None) -> MetricsLogger:
        """The logger a training run's config asks for; resuming from the checkpoint of `resume_step` first drops
        the lines logged after it."""
        if resume_step is not None:
            dropped = truncate_metrics_after(Path(run_dir) / "metrics.jsonl", resume_step)
            if dropped:
                logger.info("dropped %d metric lines logged after the checkpoint at step %d", dropped, resume_step)
        log = config.logging
        return cls(run_dir, tensorboard=log.tensorboard, wandb_project=log.wandb_project if log.wandb else None,
                   run_name=Path(run_dir).name, config=config.to_dict(), resume=resume_step is not None)

    def log(self, record: dict[str, Any]) -> None:
        clean = {k: _jsonable(v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        step = int(clean.get("step", 0))
        numeric = {k: v for k, v in clean.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Parse a run's metrics.jsonl into its records, in order.

    Every line must be a JSON object with a "type"; anything else raises ValueError naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path}: no such metrics file (is this a `remix-rft train` run directory?)")
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {line_number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {line_number}: expected a JSON object, got {type(row).__name__}")
            if "type" not in row:
                raise DataError(f'{path}, line {line_number}: missing the "type" key')
            records.append(row)
    return records


def truncate_metrics_after(path: Path, step: int) -> int:
    """Drop records logged after `step` (a crash after the last checkpoint); returns how many were dropped.

    The file is rewritten atomically so a crash here loses nothing that was kept.
    """
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record_step = json.loads(line).get("step", 0)
        except json.JSONDecodeError:
            dropped += 1  # a line cut by the crash
            continue
        if record_step is not None and record_step > step:
            dropped += 1
        else:
            kept.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    tmp.replace(path)
    return dropped
