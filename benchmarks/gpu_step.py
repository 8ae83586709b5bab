"""A few real training steps of a shipped config on one device: peak memory, tokens/s and MFU next to the plan.

Runs the trainer in this process with the config's own settings (dtype, gradient checkpointing, micro-batch tokens,
minibatch, KL-Convex, ...) overridden only in scale: the model, the number of steps, the response length and the
number of fresh prompts a step. Peak allocated device memory is measured per phase (generation, update) and
for the whole step (torch.cuda.max_memory_allocated; on CPU peak RSS), and printed next to `remix-rft plan`'s
estimate for the same settings.

    # the GPU check of issue 10 (a random 1.5B-architecture model at /tmp/q15), ~5 minutes on one H100:
    python benchmarks/gpu_step.py --config remix-grpo-1.5b --model /tmp/q15 --steps 2 --max-new-tokens 1024 --prompts 19
    # the same on CPU with the tiny random model (checks the script, not the numbers):
    python benchmarks/gpu_step.py --config remix-grpo-1.5b --model tiny-random --steps 2 --max-new-tokens 16 \
        --prompts 3 --device cpu
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from remix_rft.config import load_config  # noqa: E402
from remix_rft.metrics import peak_rss_mb, read_metrics  # noqa: E402
from remix_rft.plan import memory_estimate, resolve_architecture  # noqa: E402
from remix_rft.schedule import ReMixSchedule  # noqa: E402
from remix_rft.trainer import Trainer  # noqa: E402

GB = 1e9


def prompts_per_step_for(fresh: int, offpolicy_fraction: float, enabled: bool) -> int:
    """The smallest prompts_per_step whose mix phase generates for `fresh` prompts (replay rounds half up)."""
    if not enabled or offpolicy_fraction == 0:
        return fresh
    total = fresh
    while ReMixSchedule(total, offpolicy_fraction, 1, None).plan(1).fresh_prompts < fresh:
        total += 1
    return total


class PhasePeaks:
    """Wraps generation and the policy update to record the device's peak allocated memory during each phase."""

    def __init__(self, trainer: Trainer) -> None:
        self.device = trainer.device
        self.peaks: dict[str, float] = {"generation": 0.0, "update": 0.0}
        trainer.engine.generate = self._wrap(trainer.engine.generate, "generation")
        trainer.actor.update = self._wrap(trainer.actor.update, "update")

    def _wrap(self, function, phase: str):
        def wrapped(*args, **kwargs):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
            result = function(*args, **kwargs)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                self.peaks[phase] = max(self.peaks[phase], torch.cuda.max_memory_allocated(self.device))
            else:
                self.peaks[phase] = max(self.peaks[phase], peak_rss_mb() * 2**20)
            return result

        return wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="remix-grpo-1.5b")
    parser.add_argument("--model", required=True, help="model folder or name (e.g. /tmp/q15, tiny-random)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--prompts", type=int, default=19, help="fresh prompts generated for per mix-phase step")
    parser.add_argument("--max-batch-size", type=int, default=None,
                        help="sequences per generate call (default: all of a step's responses in one call)")
    parser.add_argument("--data", default="auto",
                        help="training set (default: the config's if $REMIX_DATA_DIR has it, else arithmetic)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--device-memory-gb", type=float, default=80.0)
    parser.add_argument("overrides", nargs="*", help="further key.sub=value overrides")
    args = parser.parse_args()

    base = load_config(args.config)
    prompts_per_step = prompts_per_step_for(args.prompts, base.remix.offpolicy_fraction, base.remix.enabled)
    batch = prompts_per_step * base.train.samples_per_prompt
    minibatch = base.train.minibatch_size if batch % base.train.minibatch_size == 0 else batch
    generated = args.prompts * base.train.samples_per_prompt
    data = args.data
    if data == "auto":
        data_dir = Path(os.environ.get("REMIX_DATA_DIR", "/nonexistent"))
        data = base.data.train if (data_dir / "train").is_dir() else "arithmetic"
    out_dir = Path(tempfile.mkdtemp(prefix="gpu_step-"))
    overrides = [f"model.name={args.model}", f"model.device={args.device}", f"train.steps={args.steps}",
                 f"train.prompts_per_step={prompts_per_step}", f"train.minibatch_size={minibatch}",
                 f"rollout.max_new_tokens={args.max_new_tokens}",
                 f"rollout.max_batch_size={args.max_batch_size or generated}", f"data.train={data}",
                 "eval.benchmarks=[]", "eval.before_training=false", "eval.after_training=false",
                 "checkpoint.every=0", "checkpoint.save_final=false", "logging.tensorboard=false",
                 "logging.progress=false", f"logging.output_dir={out_dir}", "logging.run_name=run", *args.overrides]
    config = load_config(args.config, overrides)
    print(f"{args.config} with {' '.join(overrides)}", flush=True)

    start = time.perf_counter()
    trainer = Trainer(config)
    peaks = PhasePeaks(trainer)
    print(f"device {trainer.device} ({torch.cuda.get_device_name(trainer.device) if trainer.device.type == 'cuda' else 'cpu'}), "
          f"set-up {time.perf_counter() - start:.0f} s", flush=True)
    try:
        trainer.train()
    finally:
        trainer.close()
    lines = read_metrics(trainer.run_dir / "metrics.jsonl")
    steps = [line for line in lines if line["type"] == "train"]
    if trainer.device.type == "cuda":
        measured_peak = torch.cuda.max_memory_allocated(trainer.device)
        device_type = "cuda"
    else:
        measured_peak = peak_rss_mb() * 2**20
        device_type = "cpu"

    columns = ["step", "generated", "trained tok", "gen s", "logp s", "update s", "step s", "gen tok/s",
               "update tok/s", "update MFU", "MFU", "peak GB"]
    print("\n" + " | ".join(columns))
    print(" | ".join("-" * len(c) for c in columns))
    for line in steps:
        peak = line.get("memory/peak_gpu_mb", line["memory/peak_rss_mb"]) * 2**20 / GB
        print(" | ".join([
            str(line["step"]), str(line["rollouts/step"]),
            f"{line['perf/update_tokens_per_s'] * line['time/update'] / line['updates_per_batch']:.0f}",
            f"{line['time/generation']:.1f}", f"{line['time/logprobs']:.1f}", f"{line['time/update']:.1f}",
            f"{line['time/step']:.1f}", f"{line['perf/generation_tokens_per_s']:.0f}",
            f"{line['perf/update_tokens_per_s']:.0f}", f"{100 * line['perf/update_mfu']:.1f}%",
            f"{100 * line['perf/mfu']:.1f}%", f"{peak:.1f}"]))
    print(f"(MFU over a peak of {steps[-1]['perf/peak_tflops']:.0f} TFLOP/s measured by a matmul benchmark; "
          f"set train.peak_tflops to use a data-sheet number)")

    sampled = min(32, len(trainer.prompts.examples))
    prompt_tokens = int(sum(len(trainer.tokenizer(trainer.prompts.prompt(i))["input_ids"])
                            for i in range(sampled)) / sampled)
    estimate = memory_estimate(config, resolve_architecture(args.model), prompt_tokens=prompt_tokens,
                               device_type=device_type)
    kind = "max_memory_allocated" if device_type == "cuda" else "peak RSS"
    print(f"\nmemory: measured ({kind}) vs `remix-rft plan` estimate (prompts ~{prompt_tokens} tokens)")
    print(f"  generation phase  {peaks.peaks['generation'] / GB:7.2f} GB measured   "
          f"{estimate['generation peak'] / GB:7.2f} GB estimated")
    print(f"  update phase      {peaks.peaks['update'] / GB:7.2f} GB measured   "
          f"{estimate['update peak'] / GB:7.2f} GB estimated")
    print(f"  whole run         {measured_peak / GB:7.2f} GB measured   {estimate['peak'] / GB:7.2f} GB estimated "
          f"(device {args.device_memory_gb:.0f} GB)")
    print(f"total wall time {time.perf_counter() - start:.0f} s; run directory {trainer.run_dir}")


if __name__ == "__main__":
    main()
