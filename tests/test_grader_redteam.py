"""Red team for the strict grader (README, 'Grading'): adversarial answers that must score 0 and legitimate forms
that must score 1, table-driven from tests/data/grader_redteam.jsonl, plus bombs that must end at reward 0 fast.

Each row: class (restated | evaluates_to_truth | hedged | negated | legitimate | choice), problem, gold, response,
correct and, where it matters, the expected status.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from remix_rft.data.loaders import read_jsonl
from remix_rft.data.types import Example
from remix_rft.rewards import MathReward, summarise_scores

CASES_FILE = Path(__file__).parent / "data" / "grader_redteam.jsonl"
CLASSES = ("restated", "evaluates_to_truth", "hedged", "negated", "legitimate", "choice")
REQUIRED = ("class", "problem", "gold", "response", "correct")


def load_cases(path: Path) -> list[dict]:
    cases = []
    for location, row in read_jsonl(path):
        missing = [key for key in REQUIRED if key not in row]
        if missing or row["class"] not in CLASSES:
            raise ValueError(f"{path}, {location}: missing {missing} or unknown class {row.get('class')!r}")
        cases.append(row)
    return cases


CASES = load_cases(CASES_FILE)


def case_id(row: dict) -> str:
    return f"{row['class']}:{row['gold']}:{row['response'][:40]}"


@pytest.fixture(scope="module")
def strict():
    with MathReward(num_workers=2, timeout=3.0, grader="strict") as reward:
        yield reward


@pytest.fixture(scope="module")
def graded(strict):
    """All cases graded in one batch (as the trainer grades a step), by case index."""
    examples = [Example(problem=row["problem"], answer=row["gold"], id=str(i)) for i, row in enumerate(CASES)]
    return strict.score([row["response"] for row in CASES], examples)


def test_the_table_covers_every_class():
    assert len(CASES) >= 150
    counts = {name: sum(row["class"] == name for row in CASES) for name in CLASSES}
    assert all(count >= 5 for count in counts.values()), counts
    responses = {row["response"] for row in CASES}
    issue_examples = ["73 - 6.", "(73 - 6)", "-6 + 73", "x = 73 - 6.", "\\boxed{73-6+0}", "\\boxed{\\frac{73-6}{1}}",
                      "\\boxed{73 \u2212 6}", "\\boxed{8 \\times 7}", "\\boxed{\\dbinom{5}{2}}", "\\boxed{5 + 21}",
                      "66 or 67", "The answer is not 67.", "\\boxed{67}", "The answer is 67.", "$67$",
                      "\\boxed{x = 3}", "73 - 6 = 67, so the answer is 67"]
    assert not [text for text in issue_examples if text not in responses]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[case_id(row) for row in CASES])
def test_case(graded, index):
    row, score = CASES[index], graded[index]
    assert score.correct == row["correct"], (row, score)
    assert score.reward == (1.0 if row["correct"] else 0.0)
    if "status" in row:
        assert score.status == row["status"], (row, score)
    if row["class"] in ("restated", "evaluates_to_truth", "hedged", "negated"):
        assert score.status != "timeout"  # rejected by rule, not by luck


def test_every_adversarial_case_of_the_issue_is_accepted_by_plain_math_verify(strict):
    """The loopholes are real: the paper protocol (math-verify, which evaluates) takes these; the strict one not."""
    paper = MathReward(pool=strict.pool, grader="paper")
    rows = [("What is 73 - 6?", "67", r) for r in ("-6 + 73", "\\boxed{73-6+0}", "\\boxed{\\frac{73-6}{1}}")]
    rows += [("What is 8 * 7?", "56", "\\boxed{8 \\times 7}"), ("What is 5 + 3 * 7?", "26", "\\boxed{5 + 21}"),
             ("What is 10 cubed?", "1000", "\\boxed{10^3}")]
    examples = [Example(problem=p, answer=g, id=str(i)) for i, (p, g, _) in enumerate(rows)]
    responses = [r for _, _, r in rows]
    assert all(score.correct for score in paper.score(responses, examples))
    assert not any(score.correct for score in strict.score(responses, examples))


def test_auto_grader_uses_the_paper_protocol_on_the_paper_benchmarks(strict):
    auto = MathReward(pool=strict.pool, grader="auto")
    response = "\\boxed{10^3}"
    benchmark = Example(problem="What is 10 cubed?", answer="1000", id="m", source="math500")
    training = Example(problem="What is 10 cubed?", answer="1000", id="t", source="aimemath")
    assert [auto.protocol(benchmark), auto.protocol(training)] == ["paper", "strict"]
    assert [score.correct for score in auto.score([response, response], [benchmark, training])] == [True, False]


@pytest.mark.parametrize("response, correct", [
    ("\\boxed{67}", True), ("The answer is 67.", True), ("\\boxed{67.0}", False), ("\\boxed{\\frac{134}{2}}", False),
    ("\\boxed{6.7 \\times 10}", False), ("\\boxed{67\\%}", False), ("\\boxed{1,067}", False),
])
def test_arithmetic_task_compares_an_integer_literal(strict, response, correct):
    example = Example(problem="What is 73 - 6?", answer="67", id="a", source="arithmetic")
    assert strict.score([response], [example])[0].correct is correct


BOMBS = [
    "The answer is \\boxed{9^{9^{9^{9}}}}",
    "\\boxed{9^{9^{9^9}}}",
    "\\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}",
    "\\boxed{" + "\\frac{1}{" * 400 + "2" + "}" * 400 + "}",
    "\\boxed{" + "\\sqrt{" * 500 + "2" + "}" * 500 + "}",
    "\\boxed{10^{10^{10^{10}}} - 10^{10^{10^{10}}} + 3}",
    "\\boxed{" + "{" * 20000,
    "$1 + {2 * (3" * 50_000,
    # regex bombs for the answer extraction itself (each would be quadratic with a naive pattern)
    "it is " * 4000,
    "**a " * 6000,
    "\\boxed{" + " " * 20000 + "x}",
    "The answer is " + "a, bb " * 3000 + ")",
    "$" + "\\(" * 5000,
]


@pytest.mark.parametrize("gold", ["3", "\\sqrt{3}"], ids=["literal_truth", "expression_truth"])
def test_bombs_end_at_reward_zero_without_blocking_the_batch(gold):
    """A batch of bombs and ordinary answers: every bomb scores 0 (rejected by rule when the truth is a literal,
    killed at the timeout otherwise) and the ordinary answers in the same batch are graded normally."""
    timeout = 1.0
    with MathReward(num_workers=2, timeout=timeout, grader="strict") as reward:
        reward.pool.start()
        good = "\\boxed{3}" if gold == "3" else "\\boxed{\\sqrt{3}}"
        responses = [good, *BOMBS, good]
        examples = [Example(problem="Find it.", answer=gold, id=str(i)) for i in range(len(responses))]
        started = time.monotonic()
        scores = reward.score(responses, examples)
        elapsed = time.monotonic() - started
    assert scores[0].correct and scores[-1].correct
    assert all(score.reward == 0.0 and not score.correct for score in scores[1:-1])
    summary = summarise_scores(scores[1:-1])
    if gold == "3":
        assert summary["timeout"] == 0  # never evaluated
    # every bomb costs at most its timeout (+ the kill and a worker restart), shared by 2 workers
    assert elapsed < len(BOMBS) * (timeout + 5)


def test_regrade_script_audits_eval_samples(tmp_path, capsys, load_benchmark):
    """benchmarks/regrade.py: the audit tool docs/results.md uses on held-out answers."""
    module = load_benchmark("regrade")
    samples = tmp_path / "samples.jsonl"
    rows = [("<|user|>What is 73 - 6?", "67", "73 - 6 = \\boxed{-6 + 73}", True),
            ("<|user|>What is 73 - 6?", "67", "\\boxed{67}", True),
            ("<|user|>What is 2 + 2?", "4", "\\boxed{5}", False)]
    samples.write_text("".join(json.dumps({"benchmark": "arithmetic", "prompt": p, "ground_truth": g,
                                           "response": r, "correct": c}) + "\n" for p, g, r, c in rows))
    assert module.main([str(samples), "--timeout", "3"]) == 0
    out = capsys.readouterr().out
    # logged by an older grader: 2 of 3; today's default (strict on arithmetic) takes one back, and says which
    assert "| 3 | 66.7 | 33.3 | +0 / -1 | 66.7 | 33.3 | restated_problem 1 |" in out
    assert "lost: truth '67' answer '73 - 6 = \\\\boxed{-6 + 73}': now False (restated_problem" in out
    assert "paper True (ok), strict False (restated_problem)" in out
