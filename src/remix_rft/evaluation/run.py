"""Running an evaluation: generate every response of each benchmark in one batched call, grade, summarise.

`evaluate` is shared by `remix-rft eval` and the trainer (`evaluate_during_training`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from remix_rft.data import DEFAULT_INSTRUCTION, Example, format_prompt
from remix_rft.evaluation.grading import (
    BenchmarkRow,
    EvalRecord,
    average_row,
    grade_records,
    summarise_benchmark,
)
from remix_rft.evaluation.report import EvalReport, percent
from remix_rft.rewards.base import RewardFunction
from remix_rft.rollout.base import RolloutEngine, SamplingParams


def evaluate(
    engine: RolloutEngine,
    tokenizer: Any,
    benchmarks: Mapping[str, Sequence[Example]],
    reward: RewardFunction,
    sampling: SamplingParams,
    samples: int = 1,
    instruction: str | None = DEFAULT_INSTRUCTION,
    progress: bool = True,
    system_prompt: str | None = None,
) -> EvalReport:
    """Generate `samples` responses per problem of each benchmark, grade them and summarise.

    Prompts are formatted as in training (`format_prompt` with `instruction` and `system_prompt`).

    Greedy decoding (`sampling.greedy`) requires samples == 1: K identical greedy responses say nothing more.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if sampling.greedy and samples > 1:
        raise ValueError(
            f"greedy decoding gives one response per problem; got samples={samples} "
            "(use sampling with a temperature for avg@K / pass@K)"
        )
    if not benchmarks:
        raise ValueError("no benchmarks to evaluate")
    rows: list[BenchmarkRow] = []
    records: list[EvalRecord] = []
    for name, examples in benchmarks.items():
        if not examples:
            raise ValueError(f"benchmark {name!r} has no problems")
        started = time.perf_counter()
        prompts = [format_prompt(tokenizer, ex.problem, instruction, system_prompt) for ex in examples]
        if progress:
            print(
                f"[eval] {name}: generating {len(prompts)} x {samples} responses ...",
                file=sys.stderr,
                flush=True,
            )
        rollouts = engine.generate(prompts, samples, sampling)
        if len(rollouts) != len(prompts) * samples:
            raise RuntimeError(
                f"engine returned {len(rollouts)} responses for {len(prompts)} prompts x {samples}"
            )
        scores = reward.score([r.text for r in rollouts], [examples[r.prompt_index] for r in rollouts])
        if len(scores) != len(rollouts):
            raise RuntimeError(f"reward returned {len(scores)} scores for {len(rollouts)} responses")
        benchmark_records = grade_records(name, examples, prompts, rollouts, scores)
        row = summarise_benchmark(name, benchmark_records, samples, seconds=time.perf_counter() - started)
        if progress:
            print(
                f"[eval] {name}: pass@1 {percent(row.pass_at_1)}%  ({row.seconds:.1f}s)",
                file=sys.stderr,
                flush=True,
            )
        rows.append(row)
        records.extend(benchmark_records)
    rows.append(average_row(rows))
    config = {
        "samples": samples,
        "instruction": instruction,
        "system_prompt": system_prompt,
        **{f"sampling.{k}": v for k, v in asdict(sampling).items()},
    }
    return EvalReport(rows=rows, records=records, config=config)


def evaluate_during_training(config, engine: RolloutEngine, tokenizer, eval_sets: dict[str, list[Example]],
                             reward: RewardFunction, step: int, run_dir: Path) -> EvalReport:
    """The held-out evaluation of a training run at `step` (config `eval` section), written under
    `<run_dir>/eval/step_<step>`."""
    cfg = config.eval
    sampling = SamplingParams(max_new_tokens=cfg.max_new_tokens or config.rollout.max_new_tokens,
                              temperature=cfg.temperature, greedy=cfg.greedy, seed=config.train.seed * 7919 + step)
    report = evaluate(engine, tokenizer, eval_sets, reward, sampling, samples=cfg.samples,
                      instruction=config.data.instruction, progress=False, system_prompt=config.data.system_prompt)
    report.write(Path(run_dir) / "eval" / f"step_{step:06d}")
    return report
