"""The math reward on real answer pairs, its safety (timeouts, huge inputs, dead workers), the other rewards.

Worker pools are started once per module (each worker imports math-verify, ~1 s).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from remix_rft.data.types import Example
from remix_rft.errors import RewardError
from remix_rft.rewards import (
    CombinedReward,
    CustomReward,
    FormatReward,
    MathReward,
    RewardFunction,
    Score,
    VerifierError,
    VerifierPool,
    answer_region,
    build_reward,
    gold_answers,
    load_callable,
    summarise_scores,
)
from remix_rft.rewards.answer_policy import equation_sides, final_answer

# (ground truth, response, graded correct?) — golds as the data sets store them (raw LaTeX, floats, lists).
ANSWER_PAIRS = [
    ("204", "The answer is \\boxed{204}", True),
    ("\\frac{1}{2}", "\\boxed{0.5}", True),
    ("\\frac{1}{2}", "So the probability is 1/2.", True),
    ("0.5", "\\boxed{\\frac{1}{2}}", True),
    ("1/2", "\\boxed{0.5}", True),
    ("\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}", True),
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}", False),
    ("9.6\n", "The speed is \\boxed{9.6}", True),
    ("1.5", "\\boxed{\\frac{3}{2}}", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\frac{\\pi}{2})}", True),
    ("(3, \\frac{\\pi}{2})", "\\boxed{(3, \\pi/2)}", True),
    ("(3, \\frac{\\pi}{2})", "\\boxed{(\\frac{\\pi}{2}, 3)}", False),
    (
        "\\left( 3, \\frac{\\pi}{2} \\right)",
        "\\boxed{3}",
        False,
    ),  # a raw (unwrapped) parse of the gold gives 3
    ("(-\\infty, 2]", "\\boxed{(-\\infty, 2]}", True),
    ("(-\\infty, 2]", "\\boxed{2}", False),  # a raw parse of the gold gives 2
    ("[1, 5)", "\\boxed{[1,5)}", True),
    ("(-\\infty, 2]", "\\boxed{(-\\infty, 2)}", False),
    ("18", "She makes \\boxed{18} dollars", True),
    ("18", "\\boxed{18 \\text{ dollars}}", True),
    ("18", "She makes 18 dollars every day.\n#### 18", True),
    ("5\\text{ cm}", "\\boxed{5}", True),
    ("5", "\\boxed{5\\text{ cm}}", True),
    ("50\\%", "\\boxed{50\\%}", True),
    ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}", True),
    ("\\sqrt{3}", "\\boxed{1.7320508}", True),
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{\\sqrt3}{2}}", True),
    ("\\pi", "\\boxed{\\pi}", True),
    ("2\\pi", "\\boxed{6.28}", False),
    ("-3", "\\boxed{-3}", True),
    ("-3", "\\boxed{3}", False),
    ("-\\frac{1}{3}", "\\boxed{-1/3}", True),
    ("10,080", "\\boxed{10080}", True),
    ("x^2+1", "\\boxed{1+x^2}", True),
    ("y = 2x + 3", "\\boxed{y=2x+3}", True),
    ("2x + 3", "\\boxed{y = 2x + 3}", True),  # an equation's last side answers a truth that is not one
    ("\\sqrt{3}", "\\boxed{\\frac{\\sqrt{12}}{2} = \\sqrt{3}}", True),
    ("\\{1, 2\\}", "\\boxed{\\{2, 1\\}}", True),
    ("\\text{(C)}", "\\boxed{C}", True),
    ("3", "\\boxed{4}", False),
    ("\\frac{14}{3}", "The final answer is $\\frac{14}{3}$.", True),
    ("1.6", "s = \\boxed{1.6} \\mathrm{~cm}", True),
    ("12", "\\boxed{3} then, correcting myself, \\boxed{12}", True),  # the last box counts
    ("3", "\\boxed{3} then, correcting myself, \\boxed{12}", False),
    ("6", "She has $6$ apples left.", True),
    ("The total is 1,000 + 234.\n#### 1,234", "\\boxed{1234}", True),  # a GSM8K worked answer as gold
    (["1", "2"], "\\boxed{2}", True),
    (["9.6\n", "9.60"], "\\boxed{9.6}", True),
    (["1", "2"], "\\boxed{3}", False),
    (142.0, "\\boxed{142}", True),  # AMC golds are floats
    (142.0, "\\boxed{143}", False),
    (0.5, "\\boxed{\\frac{1}{2}}", True),
    (42, "\\boxed{42}", True),
    ("7", "<think>is it \\boxed{5}?</think> The answer is \\boxed{7}", True),
    ("5", "<think>is it \\boxed{5}?</think> The answer is \\boxed{7}", False),
]

HUGE_POWER = "The answer is \\boxed{9^{9^{9^{9}}}}"
DEEP_NESTING = "\\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}"


def examples_for(answers) -> list[Example]:
    return [Example(problem="q", answer=answer, id=f"ex{i}") for i, answer in enumerate(answers)]


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def reward():
    with MathReward(num_workers=2, timeout=5.0) as math_reward:
        yield math_reward


@pytest.fixture(scope="module")
def quick_pool():
    """One worker with a tiny timeout, for the pathological inputs."""
    with VerifierPool(num_workers=1, timeout=0.5) as pool:
        pool.start()
        yield pool


# ------------------------------------------------------------------------------------- correctness


def test_answer_pairs_graded_end_to_end(reward):
    assert len(ANSWER_PAIRS) >= 40
    scores = reward.score(
        [response for _, response, _ in ANSWER_PAIRS], examples_for([gold for gold, _, _ in ANSWER_PAIRS])
    )
    wrong = [
        (gold, response, score)
        for (gold, response, expected), score in zip(ANSWER_PAIRS, scores)
        if score.correct != expected
    ]
    assert not wrong
    assert all(score.status == "ok" for score in scores)
    assert all(score.reward == (1.0 if score.correct else 0.0) for score in scores)


def test_extracted_answer_is_reported(reward):
    score = reward.score(["Thinking... so \\boxed{\\frac{3}{4}}."], examples_for(["0.75"]))[0]
    assert score.correct and score.extracted == "\\frac{3}{4}"


@pytest.mark.parametrize("response", ["I do not know.", "", "<think>\\boxed{5}</think> no idea"])
def test_no_answer(reward, response):
    score = reward.score([response], examples_for(["5"]))[0]
    assert (score.status, score.correct, score.reward, score.extracted) == ("no_answer", False, 0.0, None)


# The exploit a ReMix-GRPO run on arithmetic found within 8 steps (docs/results.md): restate the question.
RESTATED = [
    # (problem, gold, response, correct, status)
    ("What is 8 - 65?", "-57", "8 - 65 = \\boxed{}", False, "no_answer"),  # empty final box: no fallback
    ("What is 8 - 65?", "-57", "\\boxed{8 - 65}", False, "restated_problem"),
    ("What is 8 - 65?", "-57", "The answer is $8-65$.", False, "restated_problem"),
    ("Compute $\\frac{1}{2} + \\frac{1}{3}$.", "\\frac{5}{6}", "\\boxed{\\frac{1}{2} + \\frac{1}{3}}", False,
     "restated_problem"),
    # real answers are untouched, also when they appear in the question
    ("What is 8 - 65?", "-57", "8 - 65 = -57", True, "ok"),
    ("What is 8 - 65?", "-57", "So \\boxed{-57}.", True, "ok"),
    ("What is 45 + 0?", "45", "\\boxed{45}", True, "ok"),
    ("Compute $\\frac{1}{2} + \\frac{1}{3}$.", "\\frac{5}{6}", "\\boxed{\\frac{5}{6}}", True, "ok"),
    ("Which is larger, $2^{10}$ or $10^3$?", "2^{10}", "\\boxed{2^{10}}", True, "ok"),
]


@pytest.mark.parametrize("problem, gold, response, correct, status", RESTATED)
def test_restating_the_question_is_not_an_answer(reward, problem, gold, response, correct, status):
    score = reward.score([response], [Example(problem=problem, answer=gold, id="x")])[0]
    assert (score.correct, score.status, score.reward) == (correct, status, 1.0 if correct else 0.0)


def test_restated_answers_are_counted(reward):
    from remix_rft.rewards import summarise_scores

    examples = [Example(problem="What is 2 + 3?", answer="5", id=str(i)) for i in range(3)]
    scores = reward.score(["\\boxed{2 + 3}", "\\boxed{5}", "2 + 3 = \\boxed{}"], examples)
    summary = summarise_scores(scores)
    assert summary["restated_problem"] == 1 and summary["no_answer"] == 1 and summary["accuracy"] == pytest.approx(1 / 3)


def test_reward_values_are_configurable(reward):
    custom = MathReward(correct_reward=2.0, incorrect_reward=-1.0, pool=reward.pool)
    scores = custom.score(["\\boxed{4}", "\\boxed{5}", "nothing"], examples_for(["4", "4", "4"]))
    assert [s.reward for s in scores] == [2.0, -1.0, -1.0]
    custom.close()  # does not own the pool: the shared workers keep running
    assert reward.score(["\\boxed{1}"], examples_for(["1"]))[0].correct


def test_require_boxed(reward):
    strict = MathReward(require_boxed=True, pool=reward.pool)
    responses = ["The answer is 5.", "The answer is \\boxed{5}.", "\\boxed{}"]
    assert [s.status for s in strict.score(responses, examples_for(["5"] * 3))] == [
        "no_answer",
        "ok",
        "no_answer",
    ]
    assert reward.score(["The answer is 5."], examples_for(["5"]))[0].correct  # the default extracts it
    # the form a boxed-answers-only run converges to: working in the box, the result as its last side
    score = strict.score(["\\boxed{2 + 3 = 5}"], examples_for(["5"]))[0]
    assert (score.correct, score.extracted) == (True, "5")


@pytest.mark.parametrize("text, sides", [
    ("73 - 6 = 67", ["73 - 6", "67"]),
    ("x = 73 - 6 = 67", ["x", "73 - 6", "67"]),
    ("a == b", ["a", "b"]),
    ("67", ["67"]),
    ("x <= 3", ["x <= 3"]), ("x >= 3", ["x >= 3"]), ("a != b", ["a != b"]), ("a := 3", ["a := 3"]),
    ("p => q", ["p => q"]),
    ("f(x=1) = 3", ["f(x=1)", "3"]),  # inside brackets an "=" does not split
    ("\\frac{a=1}{2} = 4", ["\\frac{a=1}{2}", "4"]),
    ("73 - 6 =", ["73 - 6", ""]),
])
def test_equation_sides(text, sides):
    assert equation_sides(text) == sides


@pytest.mark.parametrize("response, text, hedged, written", [
    ("\\boxed{73 - 6 = 67}", "67", False, "73 - 6 = 67"),
    ("\\boxed{67 = 66}", "66", True, "67 = 66"),  # two different numbers said equal
    ("\\boxed{0.5 = \\frac{1}{2} = 50\\%}", "50\\%", False, "0.5 = \\frac{1}{2} = 50\\%"),  # one value
    ("The answer is 2 + 3 = 5.", "5", False, "2 + 3 = 5"),
    ("So 2 + 3 = 5", "5", False, "So 2 + 3 = 5"),
    ("2 + 3 = 4 = 5", "5", True, "2 + 3 = 4 = 5"),
    ("$2 + 3 = 5$", "5", False, "2 + 3 = 5"),
    ("x = not 5", "not 5", True, "x = not 5"),
    ("Either way, 2 + 3 = 5", "5", False, "Either way, 2 + 3 = 5"),  # a hedge word before the result is not one
])
def test_final_answer_of_an_equation(response, text, hedged, written):
    answer = final_answer(response)
    assert (answer.text, answer.hedged, answer.written) == (text, hedged, written)


@pytest.mark.parametrize("response", ["\\boxed{73 - 6 =}", "73 - 6 = .", "The answer is 73 - 6 = ."])
def test_an_equation_without_its_last_side_is_no_answer(response):
    assert final_answer(response) is None


def test_gold_answers_normalisation():
    assert gold_answers(142.0) == ["142"]
    assert gold_answers(0.5) == ["0.5"]
    assert gold_answers(1e-7) == ["0.0000001"]
    assert gold_answers(-3) == ["-3"]
    assert gold_answers("9.6\n") == ["9.6"]
    assert gold_answers("5 + 7 = 12\n#### 1,234") == ["1234"]
    assert gold_answers(["1", 2.0, ["\\pi"]]) == ["1", "2", "\\pi"]
    for bad in (None, "", "  ", [], [None], math.nan, True, {"a": 1}):
        with pytest.raises(ValueError):
            gold_answers(bad, "ex7")


def test_bad_gold_names_the_example(reward):
    with pytest.raises(ValueError, match="ex0"):
        reward.score(["\\boxed{1}"], examples_for([""]))


def test_answer_region_and_truncation(reward):
    assert answer_region("a</think>b</think> c") == " c"
    assert answer_region("no think") == "no think"
    long = "x" * 100_000 + " so the answer is 7"
    assert len(reward.prediction_text(long)) == reward.max_response_chars
    assert reward.prediction_text(long).endswith("answer is 7")


def test_grading_from_a_thread(reward):
    # math-verify's own SIGALRM timeouts fail off the main thread; grading in workers must not care.
    results = []
    thread = threading.Thread(
        target=lambda: results.extend(reward.score(["\\boxed{6}"], examples_for(["6"])))
    )
    thread.start()
    thread.join(30)
    assert results and results[0].correct and results[0].status == "ok"


# ------------------------------------------------------------------------------------------ safety


@pytest.mark.parametrize("response", [HUGE_POWER, DEEP_NESTING], ids=["huge_power", "deep_nesting"])
@pytest.mark.parametrize("grader, gold, status", [
    ("paper", "3", "timeout"),  # math-verify evaluates it: the worker is killed
    ("strict", "\\sqrt{3}", "timeout"),  # a non-literal truth: equivalence is math-verify's, under the same guard
    ("strict", "3", "not_literal"),  # a literal truth: rejected by rule, never evaluated
])
def test_pathological_answer_times_out_quickly(quick_pool, response, grader, gold, status):
    reward = MathReward(pool=quick_pool, grader=grader)
    started = time.monotonic()
    score = reward.score([response], examples_for([gold]))[0]
    assert time.monotonic() - started < 10
    assert (score.status, score.correct, score.reward) == (status, False, 0.0)
    assert reward.score(["\\boxed{3}"], examples_for(["3"]))[0].correct  # the pool still works


def test_huge_response_does_not_hang(reward):
    megabytes_of_text = "Let me recompute 1 + 2 = 3 and $x^2$. " * 150_000 + "Finally \\boxed{7}."
    no_box = "$1 + {2 * (3" * 300_000
    started = time.monotonic()
    scores = reward.score([megabytes_of_text, no_box], examples_for(["7", "7"]))
    assert time.monotonic() - started < 15
    assert scores[0].correct and scores[0].status == "ok"
    assert not scores[1].correct and scores[1].status in ("no_answer", "not_literal", "ok", "timeout")


def test_hung_worker_is_killed_and_restarted(quick_pool):
    # A stopped process models a hang inside one C call, which the worker's own alarm cannot interrupt.
    [pid] = quick_pool.worker_pids()
    restarts = quick_pool.restarts
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    result = quick_pool.grade(["1"], "\\boxed{1}")
    assert time.monotonic() - started < 5
    assert result.status == "timeout" and not result.correct and "killed" in result.detail
    assert quick_pool.restarts == restarts + 1
    assert process_gone(pid)  # killed and reaped
    assert quick_pool.worker_pids() != [pid]
    assert quick_pool.grade(["1"], "\\boxed{1}").correct


def test_worker_killed_mid_batch_is_restarted(quick_pool):
    [pid] = quick_pool.worker_pids()
    restarts = quick_pool.restarts
    # The first job runs until the 0.5 s timeout; the worker is killed while on it.
    killer = threading.Timer(0.2, os.kill, (pid, signal.SIGKILL))
    killer.start()
    results = quick_pool.grade_batch(
        [(["1"], DEEP_NESTING)] + [([str(n)], f"\\boxed{{{n}}}") for n in range(5)]
    )
    killer.join()
    assert results[0].status in ("timeout", "error")  # retried once on a fresh worker, where it times out
    assert all(r.correct and r.status == "ok" for r in results[1:])
    assert quick_pool.restarts >= restarts + 1
    assert process_gone(pid)


def test_workers_that_cannot_start_raise_a_clear_error():
    class BrokenPool(VerifierPool):
        def _command(self) -> list[str]:
            return [sys.executable, "-c", "import sys; sys.exit(3)"]

    pool = BrokenPool(num_workers=1, timeout=1.0)
    with pytest.raises(VerifierError, match="failed to start"):
        pool.grade(["1"], "\\boxed{1}")
    pool.close()


def test_close_stops_and_reaps_workers():
    pool = VerifierPool(num_workers=1, timeout=1.0)
    assert pool.worker_pids() == []  # lazy: nothing started yet
    with pool:
        assert pool.grade(["2"], "\\boxed{2}").correct
        pids = pool.worker_pids()
    assert pool.worker_pids() == []
    assert all(process_gone(pid) for pid in pids)
    with pytest.raises(VerifierError):
        pool.grade(["2"], "\\boxed{2}")


# ------------------------------------------------------------------------------- format, combined


def test_format_reward():
    fmt = FormatReward(0.5)
    responses = [
        "so \\boxed{3}",
        "no box",
        "\\boxed{}",
        "\\boxed{3",
        "<think>\\boxed{1}</think> done",
        "<think>hmm</think> \\boxed{2}",
    ]
    scores = fmt.score(responses, examples_for(["3"] * len(responses)))
    assert [s.reward for s in scores] == [0.5, 0.0, 0.0, 0.0, 0.0, 0.5]
    assert not any(s.correct for s in scores)
    assert scores[0].extracted == "3"
    strict = FormatReward(1.0, require_think=True)
    assert [
        s.reward for s in strict.score(["\\boxed{3}", "<think>a</think>\\boxed{3}"], examples_for([1, 1]))
    ] == [0.0, 1.0]


def test_combined_reward_sums_and_keeps_correctness(reward):
    combined = CombinedReward(MathReward(pool=reward.pool), FormatReward(0.1))
    scores = combined.score(["\\boxed{4}", "\\boxed{5}", "The answer is 4"], examples_for(["4"] * 3))
    assert [round(s.reward, 6) for s in scores] == [1.1, 0.1, 1.0]
    assert [s.correct for s in scores] == [True, False, True]
    assert [s.status for s in scores] == ["ok", "ok", "ok"]


def test_summarise_scores():
    scores = [
        Score(1.0, True, "1"),
        Score(0.0, False, None, "no_answer"),
        Score(0.0, False, None, "timeout"),
        Score(0.0, False, None, "error"),
        Score(0.5, False, "2"),
        Score(0.0, False, "2 + 3", "restated_problem"),
        Score(0.0, False, "4 + 1", "not_literal"),
        Score(0.0, False, "4", "hedged"),
    ]
    summary = summarise_scores(scores)
    assert summary == {
        "count": 8.0,
        "reward_mean": pytest.approx(1.5 / 8),
        "accuracy": pytest.approx(1 / 8),
        "no_answer": 1.0,
        "timeout": 1.0,
        "error": 1.0,
        "restated_problem": 1.0,
        "not_literal": 1.0,
        "hedged": 1.0,
    }
    assert summarise_scores([])["count"] == 0.0


# ---------------------------------------------------------------------------------------- custom


CUSTOM_MODULE = """
from remix_rft.rewards import Score

THRESHOLD = 3

def length_bonus(response, example):
    return min(len(response), 10) / 10

def exact(response, example):
    return response.strip() == str(example.answer)

def full_score(response, example):
    return Score(0.25, True, response, "ok")

def flaky(response, example):
    if "boom" in response:
        raise RuntimeError("boom")
    return 1.0

def bad_type(response, example):
    return "one"
"""


@pytest.fixture
def custom_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(CUSTOM_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield path
    sys.modules.pop("my_rewards", None)


def test_custom_reward_by_import_path(custom_module):
    examples = examples_for(["7", "7"])
    assert [
        s.reward for s in CustomReward("my_rewards:length_bonus").score(["abcde", "x" * 50], examples)
    ] == [0.5, 1]
    exact = CustomReward("my_rewards:exact").score(["7", "8"], examples)
    assert [(s.reward, s.correct) for s in exact] == [(1.0, True), (0.0, False)]
    assert CustomReward("my_rewards:full_score").score(["a"], examples[:1]) == [Score(0.25, True, "a", "ok")]
    by_file = CustomReward(f"{custom_module}:exact").score(["7"], examples[:1])
    assert by_file[0].correct


def test_custom_reward_errors(custom_module):
    flaky = CustomReward("my_rewards:flaky").score(["fine", "boom"], examples_for([1, 1]))
    assert [(s.reward, s.status) for s in flaky] == [(1.0, "ok"), (0.0, "error")]
    with pytest.raises(RewardError, match="my_rewards:bad_type returned 'one'"):  # a bug in the reward: named
        CustomReward("my_rewards:bad_type").score(["x"], examples_for([1]))


@pytest.mark.parametrize(
    ("path", "error", "message"),
    [
        ("my_rewards", ValueError, "expected 'package.module:function'"),
        ("no_such_module_xyz:fn", ImportError, "no_such_module_xyz:fn"),
        ("my_rewards:missing", AttributeError, "my_rewards:missing"),
        ("my_rewards:THRESHOLD", TypeError, "my_rewards:THRESHOLD"),
        ("/nonexistent/file.py:fn", ImportError, "not found"),
    ],
)
def test_bad_custom_path_is_named(custom_module, path, error, message):
    with pytest.raises(error, match=message):
        load_callable(path)


def test_build_reward(custom_module):
    plain = build_reward()
    assert isinstance(plain, MathReward) and isinstance(plain, RewardFunction)
    assert plain.pool.timeout == 5.0 and plain.pool.worker_pids() == []  # workers start on first use
    shaped = build_reward(
        "math",
        format_weight=0.2,
        custom="my_rewards:length_bonus",
        timeout=2.0,
        num_workers=2,
        correct_reward=3.0,
        incorrect_reward=-1.0,
        require_boxed=True,
    )
    assert isinstance(shaped, CombinedReward)
    math_part, custom_part, format_part = shaped.components
    assert (math_part.correct_reward, math_part.incorrect_reward, math_part.require_boxed) == (
        3.0,
        -1.0,
        True,
    )
    assert (math_part.pool.timeout, math_part.pool.num_workers) == (2.0, 2)
    assert isinstance(custom_part, CustomReward) and isinstance(format_part, FormatReward)
    assert format_part.weight == 0.2
    assert isinstance(build_reward("custom", custom="my_rewards:exact"), CustomReward)
    assert isinstance(build_reward("my_rewards:exact"), CustomReward)
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        build_reward("nope")
    with pytest.raises(ValueError, match="custom"):
        build_reward("custom")
    with pytest.raises(ImportError, match="missing_mod:f"):
        build_reward("math", custom="missing_mod:f")
    for built in (plain, shaped):
        built.close()
