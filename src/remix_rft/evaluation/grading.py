"""Grading a benchmark's responses into numbers: records, Pass@1 / avg@K / pass@K, the per-benchmark row and the
paper's unweighted average; plus the self-reflection words the paper counts."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from remix_rft.data import Example
from remix_rft.rewards.base import Score
from remix_rft.rollout.base import Rollout

# The words the paper counts to measure self-reflection (its collapse marks over-aggressive off-policy
# training). Inflections are listed explicitly because matching is on whole words.
# fmt: off
SELF_REFLECTION_WORDS: tuple[str, ...] = (
    "verify", "verifies", "verifying", "verified", "verification",
    "re-examine", "reexamine", "re-examining", "reexamining",
    "double-check", "double check", "double-checking", "double checking",
    "check", "checks", "checking", "checked",
    "recheck", "re-check", "rechecking", "re-checking",
    "wait",
    "confirm", "confirms", "confirming", "confirmed",
    "re-evaluate", "reevaluate", "re-evaluating", "reevaluating",
    "reconsider", "reconsidering",
    "let me verify", "let me check", "let me double-check", "let me re-examine",
    "hold on", "on second thought",
)
# fmt: on

_SELF_REFLECTION_PATTERN = re.compile(
    r"\b(?:"
    + "|".join(re.escape(word) for word in sorted(SELF_REFLECTION_WORDS, key=len, reverse=True))
    + r")\b",
    re.IGNORECASE,
)

AVERAGE_ROW = "average"


def has_self_reflection(text: str) -> bool:
    """True when `text` contains a self-reflection word or phrase (whole words, any case)."""
    return _SELF_REFLECTION_PATTERN.search(text) is not None


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k estimate from `num_samples` samples of which `num_correct` are correct
    (Chen et al. 2021): 1 - C(n - c, k) / C(n, k). With k = n it is simply "any sample correct"."""
    if not 1 <= k <= num_samples:
        raise ValueError(f"pass@k needs 1 <= k <= num_samples, got k={k}, num_samples={num_samples}")
    if not 0 <= num_correct <= num_samples:
        raise ValueError(f"num_correct must be in [0, {num_samples}], got {num_correct}")
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - math.comb(num_samples - num_correct, k) / math.comb(num_samples, k)


@dataclass
class EvalRecord:
    """One graded response."""

    benchmark: str
    problem_index: int
    problem_id: str
    sample_index: int
    prompt: str
    response: str
    extracted: str | None
    ground_truth: Any
    correct: bool
    reward: float
    verifier_status: str
    response_length: int
    finish_reason: str
    self_reflection: bool


@dataclass
class BenchmarkRow:
    """The summary of one benchmark (or of the average over benchmarks). Rates are fractions in [0, 1]."""

    benchmark: str
    problems: int
    samples: int
    pass_at_1: float  # greedy: accuracy of the one sample; sampled: mean over the K samples
    avg_at_k: float | None  # mean accuracy over K samples (= sampled Pass@1); None when samples == 1
    pass_at_k: float | None  # share of problems with at least one correct sample; None when samples == 1
    response_length: float  # mean tokens a response
    truncated: float  # share of responses cut at max_new_tokens
    self_reflection: float  # share of responses with a self-reflection word
    no_answer: float  # share of responses the grader found no answer in
    verifier_timeouts: int
    verifier_errors: int
    seconds: float  # generation + grading wall time

    def metrics(self) -> dict[str, float]:
        """Name -> value, with the paper's names (pass@1, avg@K, pass@K)."""
        values: dict[str, float] = {"pass@1": self.pass_at_1}
        if self.avg_at_k is not None and self.pass_at_k is not None:
            values[f"avg@{self.samples}"] = self.avg_at_k
            values[f"pass@{self.samples}"] = self.pass_at_k
        values.update(
            problems=float(self.problems),
            response_length=self.response_length,
            truncated=self.truncated,
            self_reflection=self.self_reflection,
            no_answer=self.no_answer,
            verifier_timeouts=float(self.verifier_timeouts),
            verifier_errors=float(self.verifier_errors),
            seconds=self.seconds,
        )
        return values


def summarise_benchmark(
    name: str, records: Sequence[EvalRecord], samples: int, seconds: float = 0.0
) -> BenchmarkRow:
    """Compute a benchmark's row from its graded responses (every problem has `samples` records)."""
    if not records:
        raise ValueError(f"benchmark {name!r} has no graded responses to summarise")
    correct_by_problem: dict[int, int] = {}
    for record in records:
        correct_by_problem[record.problem_index] = (
            correct_by_problem.get(record.problem_index, 0) + record.correct
        )
    for problem_index in correct_by_problem:
        count = sum(1 for r in records if r.problem_index == problem_index)
        if count != samples:
            raise ValueError(
                f"benchmark {name!r}: problem {problem_index} has {count} responses, expected {samples}"
            )
    problems = len(correct_by_problem)
    total = len(records)
    # Pass@1 is the mean of per-problem accuracy over its samples: the greedy accuracy when K = 1, the
    # unbiased sampled estimate otherwise (then identical to avg@K, which the paper reports under that name).
    pass_at_1 = sum(c / samples for c in correct_by_problem.values()) / problems
    multi = samples > 1
    return BenchmarkRow(
        benchmark=name,
        problems=problems,
        samples=samples,
        pass_at_1=pass_at_1,
        avg_at_k=pass_at_1 if multi else None,
        pass_at_k=(
            sum(pass_at_k(samples, c, samples) for c in correct_by_problem.values()) / problems
            if multi
            else None
        ),
        response_length=sum(r.response_length for r in records) / total,
        truncated=sum(r.finish_reason == "length" for r in records) / total,
        self_reflection=sum(r.self_reflection for r in records) / total,
        no_answer=sum(r.verifier_status == "no_answer" for r in records) / total,
        verifier_timeouts=sum(r.verifier_status == "timeout" for r in records),
        verifier_errors=sum(r.verifier_status == "error" for r in records),
        seconds=seconds,
    )


def average_row(rows: Sequence[BenchmarkRow]) -> BenchmarkRow:
    """The paper's "average": the unweighted mean of each rate over benchmarks (each benchmark counts once,
    whatever its size). Counts (problems, verifier failures, seconds) are summed."""
    if not rows:
        raise ValueError("no benchmark rows to average")
    count = len(rows)

    def mean(values: Sequence[float | None]) -> float | None:
        return None if any(v is None for v in values) else sum(values) / count  # type: ignore[arg-type]

    samples = rows[0].samples
    return BenchmarkRow(
        benchmark=AVERAGE_ROW,
        problems=sum(r.problems for r in rows),
        samples=samples,
        pass_at_1=sum(r.pass_at_1 for r in rows) / count,
        avg_at_k=mean([r.avg_at_k for r in rows]),
        pass_at_k=mean([r.pass_at_k for r in rows]),
        response_length=sum(r.response_length for r in rows) / count,
        truncated=sum(r.truncated for r in rows) / count,
        self_reflection=sum(r.self_reflection for r in rows) / count,
        no_answer=sum(r.no_answer for r in rows) / count,
        verifier_timeouts=sum(r.verifier_timeouts for r in rows),
        verifier_errors=sum(r.verifier_errors for r in rows),
        seconds=sum(r.seconds for r in rows),
    )


def grade_records(
    benchmark: str,
    examples: Sequence[Example],
    prompts: Sequence[str],
    rollouts: Sequence[Rollout],
    scores: Sequence[Score],
) -> list[EvalRecord]:
    return [
        EvalRecord(
            benchmark=benchmark,
            problem_index=rollout.prompt_index,
            problem_id=examples[rollout.prompt_index].id,
            sample_index=rollout.sample_index,
            prompt=prompts[rollout.prompt_index],
            response=rollout.text,
            extracted=score.extracted,
            ground_truth=examples[rollout.prompt_index].answer,
            correct=bool(score.correct),
            reward=float(score.reward),
            verifier_status=score.status,
            response_length=rollout.num_tokens,
            finish_reason=rollout.finish_reason,
            self_reflection=has_self_reflection(rollout.text),
        )
        for rollout, score in zip(rollouts, scores)
    ]
