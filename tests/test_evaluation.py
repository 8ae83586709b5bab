"""The evaluation harness: hand-computed metrics, tables and files, and `evaluate` / `remix-rft eval` end to
end on the tiny random model over small slices of the five paper benchmarks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from remix_rft.errors import DataNotFoundError, UsageError
from remix_rft.evaluation import (
    AVERAGE_ROW,
    EvalRecord,
    EvalReport,
    add_eval_arguments,
    average_row,
    eval_command,
    has_self_reflection,
    pass_at_k,
    summarise_benchmark,
)

FIVE = ("aime24", "amc23", "math500", "minerva", "olympiadbench")


def record(
    problem: int,
    sample: int,
    correct: bool,
    length: int = 10,
    finish: str = "eos",
    text: str = "The answer is \\boxed{1}.",
    status: str = "ok",
    benchmark: str = "toy",
) -> EvalRecord:
    return EvalRecord(
        benchmark=benchmark,
        problem_index=problem,
        problem_id=f"p{problem}",
        sample_index=sample,
        prompt=f"problem {problem}",
        response=text,
        extracted="1",
        ground_truth="1",
        correct=correct,
        reward=float(correct),
        verifier_status=status,
        response_length=length,
        finish_reason=finish,
        self_reflection=has_self_reflection(text),
    )


# --- self-reflection ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "So x = 4. Wait, that contradicts the constraint.",
        "Let me verify: 2 + 2 = 4.",
        "We can DOUBLE-CHECK this by substitution.",
        "Let's re-examine the second case.",
        "To confirm, plug in x = 3.",
        "Checking the boundary gives the same value.",
        "I should reconsider the sign.",
        "Let me recheck the arithmetic.",
    ],
)
def test_self_reflection_words_are_found(text: str) -> None:
    assert has_self_reflection(text)


@pytest.mark.parametrize(
    "text",
    [
        "The answer is \\boxed{42}.",
        "A checkerboard has 64 squares.",  # "check" only as a whole word
        "The waiter brought 3 plates.",  # "wait" inside another word
        "Unverifiable claims are ignored here.",
        "",
    ],
)
def test_no_self_reflection(text: str) -> None:
    assert not has_self_reflection(text)


# --- metrics --------------------------------------------------------------------------------------------


def test_pass_at_k_estimator() -> None:
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(4, 0, 4) == 0.0
    # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="k <= num_samples"):
        pass_at_k(2, 1, 3)
    with pytest.raises(ValueError, match="num_correct"):
        pass_at_k(2, 3, 1)


def test_sampled_benchmark_row_by_hand() -> None:
    # 3 problems x 2 samples: both right, one right, none right.
    records = [
        record(0, 0, True, length=10),
        record(0, 1, True, length=20, text="wait, check it"),
        record(1, 0, True, length=30, finish="length"),
        record(1, 1, False, length=40, status="no_answer"),
        record(2, 0, False, length=50, finish="length", status="timeout"),
        record(2, 1, False, length=60, status="error", text="Let me verify."),
    ]
    row = summarise_benchmark("toy", records, samples=2, seconds=1.5)
    assert row.problems == 3
    assert row.pass_at_1 == pytest.approx((1 + 0.5 + 0) / 3)
    assert row.avg_at_k == pytest.approx(0.5)
    assert row.pass_at_k == pytest.approx(2 / 3)
    assert row.response_length == pytest.approx(35.0)
    assert row.truncated == pytest.approx(2 / 6)
    assert row.self_reflection == pytest.approx(2 / 6)
    assert row.no_answer == pytest.approx(1 / 6)
    assert (row.verifier_timeouts, row.verifier_errors) == (1, 1)
    assert row.metrics()["avg@2"] == pytest.approx(0.5)
    assert row.metrics()["pass@2"] == pytest.approx(2 / 3)


def test_greedy_benchmark_row_has_no_avg_or_pass_at_k() -> None:
    row = summarise_benchmark(
        "toy", [record(0, 0, True), record(1, 0, False), record(2, 0, False), record(3, 0, True)], samples=1
    )
    assert row.pass_at_1 == pytest.approx(0.5)
    assert row.avg_at_k is None and row.pass_at_k is None
    assert "avg@1" not in row.metrics() and "pass@1" in row.metrics()


def test_uneven_samples_are_rejected() -> None:
    with pytest.raises(ValueError, match="problem 1 has 1 responses, expected 2"):
        summarise_benchmark("toy", [record(0, 0, True), record(0, 1, True), record(1, 0, True)], samples=2)


def test_average_is_unweighted_over_benchmarks() -> None:
    small = summarise_benchmark("small", [record(0, 0, True, length=100)], samples=1)  # 100 %
    big = summarise_benchmark("big", [record(i, 0, i == 0, length=10) for i in range(4)], samples=1)  # 25 %
    avg = average_row([small, big])
    assert avg.benchmark == AVERAGE_ROW
    assert avg.pass_at_1 == pytest.approx((1.0 + 0.25) / 2)  # not 2/5, the problem-weighted mean
    assert avg.response_length == pytest.approx(55.0)
    assert avg.problems == 5


def toy_report(samples: int = 1) -> EvalReport:
    first = [record(p, s, (p + s) % 2 == 0, benchmark="first") for p in range(2) for s in range(samples)]
    second = [
        record(p, s, p == 0, benchmark="second", finish="length") for p in range(3) for s in range(samples)
    ]
    rows = [summarise_benchmark("first", first, samples), summarise_benchmark("second", second, samples)]
    return EvalReport(rows=rows + [average_row(rows)], records=first + second, config={"model": "toy"})


def test_table_formats() -> None:
    text = toy_report().to_table()
    lines = text.splitlines()
    assert lines[0].split() == [
        "benchmark",
        "problems",
        "pass@1",
        "length",
        "truncated",
        "self-refl",
        "no-answer",
        "timeouts",
        "errors",
    ]
    assert [line.split()[0] for line in lines if not line.startswith("-")][1:] == [
        "first",
        "second",
        "average",
    ]
    assert lines[-1].split()[:3] == ["average", "5", "41.67"]  # (50 + 33.33) / 2
    markdown = toy_report(samples=2).to_table("markdown").splitlines()
    assert markdown[0].startswith("| benchmark | problems | pass@1 | avg@2 | pass@2 |")
    assert markdown[1].startswith("|---|---:|")
    assert len(markdown) == 2 + 3
    with pytest.raises(ValueError, match="markdown"):
        toy_report().to_table("html")


def test_metrics_keys_and_files(tmp_path: Path) -> None:
    report = toy_report(samples=2)
    metrics = report.metrics()
    assert metrics["eval/first/pass@1"] == pytest.approx(0.5)
    assert metrics["eval/average/pass@1"] == pytest.approx((0.5 + 1 / 3) / 2)
    for key in (
        "eval/second/avg@2",
        "eval/second/pass@2",
        "eval/average/response_length",
        "eval/average/truncated",
        "eval/average/self_reflection",
        "eval/first/verifier_timeouts",
    ):
        assert key in metrics
    assert set(report.metrics(prefix="heldout")) == {k.replace("eval/", "heldout/", 1) for k in metrics}
    paths = report.write(tmp_path / "out")
    assert [p.name for p in paths] == ["results.json", "results.md", "samples.jsonl"]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results) == {"config", "benchmarks", "average", "metrics"}
    assert set(results["benchmarks"]) == {"first", "second"}
    assert results["average"]["pass@1"] == pytest.approx(metrics["eval/average/pass@1"])
    samples = (tmp_path / "out" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == (2 + 3) * 2
    assert {
        "prompt",
        "response",
        "extracted",
        "ground_truth",
        "correct",
        "response_length",
        "finish_reason",
        "benchmark",
        "sample_index",
    } <= set(json.loads(samples[0]))
    assert "| average |" in (tmp_path / "out" / "results.md").read_text()


# --- end to end on the tiny random model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def benchmarks(data_dir: Path):
    """The first 2 problems of each of the paper's five benchmarks (`data_dir` comes from conftest)."""
    from remix_rft.data import load_examples

    return {name: load_examples(name, data_dir=str(data_dir), limit=2) for name in FIVE}


def test_evaluate_greedy_on_the_five_benchmarks(tiny_model, tokenizer, benchmarks) -> None:
    from remix_rft.evaluation import evaluate
    from remix_rft.rewards import build_reward
    from remix_rft.rollout import HFRolloutEngine
    from remix_rft.rollout.base import SamplingParams

    model = tiny_model
    reward = build_reward()
    try:
        report = evaluate(
            HFRolloutEngine(model, tokenizer, max_batch_size=4),
            tokenizer,
            benchmarks,
            reward,
            SamplingParams(max_new_tokens=8, greedy=True),
            progress=False,
        )
    finally:
        reward.close()
    assert [row.benchmark for row in report.rows] == [*FIVE, AVERAGE_ROW]
    assert all(row.problems == 2 and row.samples == 1 for row in report.rows[:-1])
    assert len(report.records) == 5 * 2
    for row in report.rows:
        assert 0.0 <= row.pass_at_1 <= 1.0
        assert 0 < row.response_length <= 8
    for rec in report.records:
        assert rec.finish_reason in ("eos", "length")
        assert rec.response_length <= 8
        assert rec.prompt.count(benchmarks[rec.benchmark][rec.problem_index].problem.strip()) == 1
        assert rec.ground_truth == benchmarks[rec.benchmark][rec.problem_index].answer
    for row in report.rows[:-1]:  # each row agrees with its graded records
        graded = [rec for rec in report.records if rec.benchmark == row.benchmark]
        assert row.pass_at_1 == pytest.approx(sum(rec.correct for rec in graded) / len(graded))
        assert row.truncated == pytest.approx(
            sum(rec.finish_reason == "length" for rec in graded) / len(graded)
        )
    assert report.row(AVERAGE_ROW).pass_at_1 == pytest.approx(
        sum(row.pass_at_1 for row in report.rows[:-1]) / 5
    )
    assert report.metrics()["eval/average/pass@1"] == report.row(AVERAGE_ROW).pass_at_1


def test_evaluate_rejects_greedy_with_several_samples(tiny_model, tokenizer) -> None:
    from remix_rft.data import Example
    from remix_rft.evaluation import evaluate
    from remix_rft.rewards import build_reward
    from remix_rft.rollout import HFRolloutEngine
    from remix_rft.rollout.base import SamplingParams

    reward = build_reward()
    try:
        with pytest.raises(ValueError, match="greedy"):
            evaluate(
                HFRolloutEngine(tiny_model, tokenizer),
                tokenizer,
                {"toy": [Example(problem="What is 1 + 1?", answer="2")]},
                reward,
                SamplingParams(max_new_tokens=4, greedy=True),
                samples=2,
                progress=False,
            )
    finally:
        reward.close()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    return parser.parse_args(argv)


def test_eval_command_sampled_writes_files(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "eval"
    args = parse(
        [
            "--model",
            "tiny-random",
            "--data-dir",
            str(data_dir),
            "--limit",
            "2",
            "--samples",
            "2",
            "--temperature",
            "1.0",
            "--max-new-tokens",
            "8",
            "--seed",
            "3",
            "--output-dir",
            str(out),
            "--batch-size",
            "8",
        ]
    )
    assert eval_command(args) == 0
    printed = capsys.readouterr().out
    header = printed.splitlines()[0].split()
    assert header[:5] == ["benchmark", "problems", "pass@1", "avg@2", "pass@2"]
    assert [
        line.split()[0]
        for line in printed.splitlines()
        if line.split() and line.split()[0] in (*FIVE, AVERAGE_ROW)
    ] == [*FIVE, AVERAGE_ROW]
    results = json.loads((out / "results.json").read_text())
    assert set(results["benchmarks"]) == set(FIVE)
    assert {"pass@1", "avg@2", "pass@2", "response_length", "truncated", "self_reflection"} <= set(
        results["average"]
    )
    assert results["config"]["model"] == "tiny-random" and results["config"]["samples"] == 2
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 5 * 2 * 2  # benchmarks x problems x samples
    assert sorted({json.loads(line)["sample_index"] for line in lines}) == [0, 1]
    assert "| average |" in (out / "results.md").read_text()


def test_eval_command_other_sources_and_greedy_default(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    problems = tmp_path / "mine.jsonl"
    problems.write_text(
        "".join(json.dumps({"problem": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(3))
    )
    out = tmp_path / "eval"
    args = parse(
        [
            "--model",
            "tiny-random",
            "--benchmarks",
            f"arithmetic,{problems}",
            "--limit",
            "2",
            "--max-new-tokens",
            "4",
            "--output-dir",
            str(out),
        ]
    )
    assert eval_command(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["benchmarks"]) == ["arithmetic", str(problems)]
    assert results["config"]["sampling.greedy"] is True
    assert "avg@" not in capsys.readouterr().out
    assert len((out / "samples.jsonl").read_text().splitlines()) == 2 + 2


def test_eval_command_reports_bad_arguments() -> None:
    # input errors are UserErrors: `remix-rft eval` prints them as one line and exits 2 (tests/test_cli.py)
    with pytest.raises(UsageError, match="--samples must be >= 1"):
        eval_command(parse(["--model", "tiny-random", "--samples", "0"]))
    with pytest.raises(DataNotFoundError, match="/no/such/file.jsonl"):
        eval_command(parse(["--model", "tiny-random", "--benchmarks", "/no/such/file.jsonl"]))
    with pytest.raises(SystemExit):
        parse(["--greedy", "--samples", "4"])


@pytest.mark.slow
def test_embedded_model_scores_some_arithmetic_right(tmp_path: Path) -> None:
    """The real SmolLM2-135M solves some easy sums greedily: correct verdicts must reach the report."""
    out = tmp_path / "eval"
    args = parse(
        [
            "--benchmarks",
            "arithmetic",
            "--limit",
            "12",
            "--max-new-tokens",
            "48",
            "--greedy",
            "--output-dir",
            str(out),
        ]
    )
    assert eval_command(args) == 0
    results = json.loads((out / "results.json").read_text())
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert results["config"]["model"] == "smollm2-135m-instruct"
    correct = [r for r in records if r["correct"]]
    assert correct, "greedy SmolLM2 got none of 12 one-to-three-digit sums right"
    assert results["benchmarks"]["arithmetic"]["pass@1"] == pytest.approx(len(correct) / 12)
    assert all(r["extracted"] is not None for r in correct)


def test_eval_command_accepts_a_training_run_dir(tmp_path: Path, tokenizer) -> None:
    """`--model RUN_DIR` and `--model RUN_DIR/checkpoints/step_N` evaluate the checkpoint's policy."""
    from remix_rft.checkpoint import save_checkpoint
    from remix_rft.evaluation import resolve_model_argument
    from remix_rft.models import build_tiny_model

    run_dir = tmp_path / "run"
    model = build_tiny_model(seed=1)

    def write(directory: Path) -> None:
        model.save_pretrained(directory / "policy")
        tokenizer.save_pretrained(directory / "policy")

    checkpoint = save_checkpoint(run_dir, 3, write)
    policy = str(checkpoint / "policy")
    assert resolve_model_argument(str(run_dir)) == policy
    assert resolve_model_argument(str(checkpoint)) == policy
    assert resolve_model_argument(policy) == policy
    assert resolve_model_argument("tiny-random") == "tiny-random"
    out = tmp_path / "eval"
    args = parse(
        [
            "--model",
            str(run_dir),
            "--benchmarks",
            "arithmetic",
            "--limit",
            "2",
            "--max-new-tokens",
            "4",
            "--output-dir",
            str(out),
        ]
    )
    assert eval_command(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["model_path"] == policy
    assert results["benchmarks"]["arithmetic"]["problems"] == 2


def test_eval_command_rejects_a_bad_sampling_setting(tmp_path: Path) -> None:
    args = parse(
        [
            "--model",
            "tiny-random",
            "--benchmarks",
            "arithmetic",
            "--limit",
            "1",
            "--samples",
            "2",
            "--temperature",
            "-1",
            "--max-new-tokens",
            "2",
            "--output-dir",
            str(tmp_path / "eval"),
        ]
    )
    with pytest.raises(UsageError, match="temperature"):  # before the model loads
        eval_command(args)
    assert not (tmp_path / "eval").exists()
