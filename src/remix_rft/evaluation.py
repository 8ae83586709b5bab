"""Held-out evaluation (`remix-rft eval`): Pass@1 / avg@K / pass@K on math benchmarks, as the paper reports.

`evaluate` is shared by the CLI and the trainer: it generates every response of a benchmark in one batched
call (the engine batches internally), grades them, and summarises each benchmark plus the paper's "average"
row (the unweighted mean over benchmarks). Besides accuracy it records what the paper's analyses look at:
response length, the share cut at the token limit, and the share of responses with self-reflection words.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from remix_rft.data import BENCHMARKS, DEFAULT_INSTRUCTION, Example, format_prompt, load_examples
from remix_rft.errors import DataError, PathNotFoundError, UsageError
from remix_rft.rewards.base import RewardFunction, Score
from remix_rft.rollout.base import Rollout, RolloutEngine, SamplingParams

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


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], right_align_numbers: bool = False) -> str:
    """A GitHub markdown table, no trailing newline; `right_align_numbers` right-aligns all columns but the first."""
    rule = ["---"] + ["---:" if right_align_numbers else "---"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


@dataclass
class EvalReport:
    """Per-benchmark rows (the last one is the average), every graded response, and the settings used."""

    rows: list[BenchmarkRow]
    records: list[EvalRecord]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return self.rows[0].samples

    def row(self, benchmark: str) -> BenchmarkRow:
        for row in self.rows:
            if row.benchmark == benchmark:
                return row
        raise KeyError(
            f"no benchmark {benchmark!r} in this report (have: {[r.benchmark for r in self.rows]})"
        )

    def _table_cells(self) -> tuple[list[str], list[list[str]]]:
        k = self.samples
        header = ["benchmark", "problems", "pass@1"]
        if k > 1:
            header += [f"avg@{k}", f"pass@{k}"]
        header += ["length", "truncated", "self-refl", "no-answer", "timeouts", "errors"]
        body = []
        for row in self.rows:
            cells = [row.benchmark, str(row.problems), _percent(row.pass_at_1)]
            if k > 1:
                cells += [_percent(row.avg_at_k), _percent(row.pass_at_k)]
            cells += [
                f"{row.response_length:.1f}",
                _percent(row.truncated),
                _percent(row.self_reflection),
                _percent(row.no_answer),
                str(row.verifier_timeouts),
                str(row.verifier_errors),
            ]
            body.append(cells)
        return header, body

    def to_table(self, fmt: str = "text") -> str:
        """The results table; rates in percent, length in tokens. `fmt`: "text" (aligned) or "markdown"."""
        header, body = self._table_cells()
        if fmt == "markdown":
            return markdown_table(header, body, right_align_numbers=True) + "\n"
        if fmt != "text":
            raise ValueError(f'table format must be "text" or "markdown", got {fmt!r}')
        widths = [max(len(cells[i]) for cells in [header, *body]) for i in range(len(header))]

        def line(cells: list[str]) -> str:
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
            )

        rule = "-" * len(line(header))
        lines = [line(header), rule] + [line(cells) for cells in body[:-1]] + [rule, line(body[-1])]
        return "\n".join(lines) + "\n"

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        """Flat `<prefix>/<benchmark>/<metric>` dict (e.g. eval/average/pass@1) for the training logs."""
        return {
            f"{prefix}/{row.benchmark}/{name}": value
            for row in self.rows
            for name, value in row.metrics().items()
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "benchmarks": {row.benchmark: row.metrics() for row in self.rows if row.benchmark != AVERAGE_ROW},
            "average": self.row(AVERAGE_ROW).metrics(),
            "metrics": self.metrics(),
        }

    def write(self, out_dir: Path) -> list[Path]:
        """Write results.json, results.md and samples.jsonl (one line per graded response) under `out_dir`."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        results_json = out_dir / "results.json"
        results_json.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
        results_md = out_dir / "results.md"
        settings = "\n".join(f"- {key}: `{value}`" for key, value in self.config.items())
        results_md.write_text(
            "# Evaluation results\n\n"
            + (settings + "\n\n" if settings else "")
            + self.to_table("markdown")
            + "\nRates in percent; length = mean response tokens; "
            "truncated = share stopped at max_new_tokens.\n",
            encoding="utf-8",
        )
        samples_jsonl = out_dir / "samples.jsonl"
        with samples_jsonl.open("w", encoding="utf-8") as handle:
            for record in self.records:
                handle.write(json.dumps(asdict(record), default=str) + "\n")
        return [results_json, results_md, samples_jsonl]


def _grade(
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
        benchmark_records = _grade(name, examples, prompts, rollouts, scores)
        row = summarise_benchmark(name, benchmark_records, samples, seconds=time.perf_counter() - started)
        if progress:
            print(
                f"[eval] {name}: pass@1 {_percent(row.pass_at_1)}%  ({row.seconds:.1f}s)",
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


DEFAULT_EVAL_MODEL = "smollm2-135m-instruct"
POLICY_SUBDIR = "policy"  # where `remix-rft train` checkpoints keep the policy as a Hugging Face model dir


def resolve_model_argument(model: str) -> str:
    """Let `--model` name a training run or one of its checkpoints, not only a model dir.

    A run dir -> its latest checkpoint's policy; a checkpoint dir -> its policy; anything else unchanged
    (a model name, or a Hugging Face model dir, which `load_model` reads).
    """
    from remix_rft.checkpoint import latest_checkpoint

    path = Path(model)
    if not path.is_dir() or (path / "config.json").is_file():
        return model
    checkpoint = latest_checkpoint(path)
    if checkpoint is not None:
        path = checkpoint
    if (path / POLICY_SUBDIR / "config.json").is_file():
        return str(path / POLICY_SUBDIR)
    return model


# Sources with train/test splits: held-out evaluation reads their test split.
SPLIT_SOURCES = ("arithmetic", "gsm8k", "math")


def load_benchmarks(
    names: Sequence[str], data_dir: str | None, limit: int | None
) -> dict[str, list[Example]]:
    """Benchmark name or data source -> its problems (the test split where the source has splits)."""
    return {
        name: load_examples(
            name, data_dir=data_dir, limit=limit, split="test" if name in SPLIT_SOURCES else None
        )
        for name in names
    }


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_EVAL_MODEL,
        help="a model name known to remix-rft, a `remix-rft train` checkpoint dir or any HF model "
        f"dir (default: {DEFAULT_EVAL_MODEL}, the embedded model)",
    )
    parser.add_argument(
        "--benchmarks",
        default=",".join(BENCHMARKS),
        help="comma-separated benchmark names or data sources (e.g. arithmetic, a .jsonl path); "
        "default: %(default)s",
    )
    parser.add_argument(
        "--data-dir", default=None, help="folder with the paper's benchmark files (default: $REMIX_DATA_DIR)"
    )
    decoding = parser.add_mutually_exclusive_group()
    decoding.add_argument(
        "--greedy", action="store_true", help="greedy decoding, one response per problem (the default)"
    )
    decoding.add_argument(
        "--samples",
        type=int,
        default=None,
        help="K sampled responses per problem: reports Pass@1 (mean), avg@K and pass@K",
    )
    parser.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default 0.6)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default 0.95)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=1024, help="response token limit (default 1024)"
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems of each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output-dir", type=Path, default=None, help="where results go (default: runs/eval-<timestamp>)"
    )
    parser.add_argument(
        "--grader",
        choices=("auto", "strict", "paper"),
        default="auto",
        help="answer grading: the paper's protocol (math-verify) or the strict answer policy; auto (default): "
        "paper on the paper's five benchmarks, strict elsewhere (README, 'Grading')",
    )
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--device", default="auto", help='"cpu", "cuda", ... (default: cuda when available)')
    parser.add_argument("--batch-size", type=int, default=16, help="sequences generated at once (engine hf)")
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                        help="rollout engine: hf (transformers, in-process) or vllm (needs vLLM, see README)")
    parser.add_argument(
        "--instruction",
        default=DEFAULT_INSTRUCTION,
        help="text appended to each problem (default: the paper's \"Let's think step by step ...\")",
    )
    parser.add_argument(
        "--system-prompt",
        default=None,
        help="system turn of the chat (default: whatever the chat template adds)",
    )


def eval_command(args: argparse.Namespace) -> int:
    """`remix-rft eval`: load the model and benchmarks, evaluate, print the table, write the result files."""
    # Imported here: transformers is slow to import, and `remix-rft plot` / `--help` need none of it.
    import torch

    from remix_rft.models import load_model, load_tokenizer
    from remix_rft.rewards import build_reward
    from remix_rft.rollout import build_engine

    samples = 1 if args.samples is None else args.samples
    for name, value, low in (
        ("--samples", samples, 1),
        ("--max-new-tokens", args.max_new_tokens, 1),
        ("--batch-size", args.batch_size, 1),
        ("--limit", 1 if args.limit is None else args.limit, 1),
    ):
        if value < low:
            raise UsageError(f"{name} must be >= {low}, got {value}")
    if args.samples is not None and args.temperature <= 0:
        raise UsageError(f"--temperature must be > 0 when sampling (--samples), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    names = [name.strip() for name in args.benchmarks.split(",") if name.strip()]
    if not names:
        raise UsageError("--benchmarks is empty: give comma-separated names, e.g. --benchmarks math500,minerva")
    data_dir = args.data_dir or os.environ.get("REMIX_DATA_DIR")
    if data_dir is not None and not Path(data_dir).is_dir():
        source = "--data-dir" if args.data_dir else "$REMIX_DATA_DIR"
        raise PathNotFoundError(f"{source} {data_dir}: no such directory")
    benchmarks = load_benchmarks(names, data_dir, args.limit)
    empty = [name for name, examples in benchmarks.items() if not examples]
    if empty:
        raise DataError(f"no problems loaded for {', '.join(empty)} (rows need a problem and an answer field)")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    torch.manual_seed(args.seed)
    model_path = resolve_model_argument(str(args.model))
    if model_path != str(args.model):
        print(f"[eval] {args.model}: evaluating the policy in {model_path}", file=sys.stderr)
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path, dtype=args.dtype, device=device)
    engine = build_engine(args.engine, model, tokenizer, max_batch_size=args.batch_size,
                          **({"seed": args.seed} if args.engine == "vllm" else {}))
    greedy = args.samples is None  # --samples K (even K = 1) asks for sampling at --temperature / --top-p
    sampling = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        greedy=greedy,
        seed=args.seed,
    )
    reward = build_reward(grader=args.grader)
    try:
        report = evaluate(
            engine,
            tokenizer,
            benchmarks,
            reward,
            sampling,
            samples=samples,
            instruction=args.instruction,
            system_prompt=args.system_prompt,
        )
    finally:
        for owner in (reward, engine):  # the math reward owns verifier worker processes; vLLM its memory
            close = getattr(owner, "close", None)
            if close is not None:
                close()
    report.config = {
        "model": str(args.model),
        "model_path": model_path,
        "benchmarks": ",".join(names),
        "engine": args.engine,
        "data_dir": data_dir,
        "limit": args.limit,
        "seed": args.seed,
        "grader": args.grader,
        "dtype": args.dtype,
        "device": device,
        **report.config,
    }
    out_dir = args.output_dir or Path("runs") / f"eval-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    written = report.write(out_dir)
    print(report.to_table("text"), end="")
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


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


def comparison_table(before, after, fmt: str = "text") -> str:
    """Held-out Pass@1 before vs after training, per benchmark and averaged."""
    before_rows, after_rows = pass_at_1_by_benchmark(before), pass_at_1_by_benchmark(after)
    header = ["benchmark", "pass@1 before", "pass@1 after", "change"]
    rows = []
    for name in after_rows:
        b, a = before_rows.get(name), after_rows[name]
        rows.append([name, "-" if b is None else f"{100 * b:.1f}", f"{100 * a:.1f}",
                     "-" if b is None else f"{100 * (a - b):+.1f}"])
    if fmt == "markdown":
        return markdown_table(header, rows)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt_row = "  ".join(f"{{:<{w}}}" for w in widths).format
    return "\n".join([fmt_row(*header), fmt_row(*["-" * w for w in widths])] + [fmt_row(*row) for row in rows])


def pass_at_1_by_benchmark(report) -> dict[str, float]:
    """Benchmark name (and "average") -> Pass@1 of an `EvalReport`; {} for None."""
    if report is None:
        return {}
    metrics = report.metrics(prefix="eval")
    out = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "pass@1":
            out[parts[1]] = value
    return out


def report_before_after(eval_history: list[tuple[int, Any]], run_dir: Path, rollouts_total: int) -> None:
    """Print the held-out before/after table of a finished run and write it to `eval_summary.md`."""
    if not eval_history:
        return
    before = eval_history[0][1] if eval_history[0][0] == 0 else None
    after = eval_history[-1][1]
    print(f"\nHeld-out evaluation ({rollouts_total} rollouts generated in training):\n"
          f"{comparison_table(before, after)}")
    (Path(run_dir) / "eval_summary.md").write_text(comparison_table(before, after, fmt="markdown") + "\n")


def build_eval_sets(config) -> dict[str, list[Example]]:
    """The held-out sets a training config names (`eval.benchmarks`), as the trainer and the baselines load them.

    `arithmetic` is the test split of the training distribution (same digits/operations), `eval.limit` problems.
    """
    sets: dict[str, list[Example]] = {}
    for name in config.eval.benchmarks:
        options: dict[str, Any] = {}
        if name == "arithmetic":
            if config.data.train == "arithmetic":
                options.update(config.data.train_options)
            options["split"] = "test"
            options["size"] = config.eval.limit or 200  # the training set's size says nothing of the test set
        options.update(config.eval.options.get(name, {}))
        try:
            sets[name] = load_examples(name, data_dir=config.data.data_dir, limit=config.eval.limit,
                                       seed=config.train.seed, **options)
        except DataError as error:  # name the config key: the benchmark may not be what the user typed last
            raise type(error)(f"config key 'eval.benchmarks' ({name!r}): {error}") from None
    return sets
