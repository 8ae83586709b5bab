"""Answer equivalence under the strict grader (docs/METHOD.md, Grading): the common ways of writing a correct answer
are accepted and their near misses rejected, class by class, and no verdict depends on the hash seed or on which
worker graded it.

The table holds our own examples of the classes that other projects' grader tests exercise (mixed numbers, several
boxes, final statements with a subject, display math, LaTeX variants, locale marks, scientific notation, trailing
remarks, hedges), and of the policy decisions of answer_policy.py's module doc: a box left open, the percent sign,
yes/no and named choices, tuples answered as named assignments, the answer first with an explanation after, and
exact powers. Every class has cases in both directions: a grader that accepts everything passes no class, and
one that rejects everything passes none either. Adversarial forms (restatements, evaluations) live in
tests/test_grader_redteam.py.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter

import pytest

from remix_rft.data.types import Example
from remix_rft.rewards import MathReward
from remix_rft.rewards.verifier import WORKER_HASH_SEED, VerifierPool

PROBLEM = "Find the value."
AS_DECIMAL = "Express $\\frac{3}{8}$ as a decimal."
AS_FRACTION = "Express 0.375 as a common fraction."
NEAREST = "What is $\\frac{1}{3}$ rounded to the nearest thousandth?"
WHAT_PERCENT = "What percent of 200 is 50?"
YES_NO = "Is 221 a prime number? Answer yes or no."
PARITY = "Is the function $f(x) = x^3 + x$ even, odd, or neither?"
NAMED = "Solve for $x$ and $y$: $x + y = 5$ and $x - y = 1$."
UNNAMED = "Solve the system $y + x = 5$, $y - x = -1$."
ORDERED = "Find the ordered pair $(b, a)$ such that $a + b = 5$ and $a - b = 1$."
CUBED = "What is 10 cubed?"
POWER = "What is $2^{10}$?"
AS_INTEGER = "How many grams are in a kilogram? Express your answer as an integer."

# (class, ground truth, response, correct?[, problem]); the problem is PROBLEM unless given.
CASES = [
    # Mixed numbers: a space (or a \frac) between the whole part and the fraction; "31/2" has none.
    ("mixed", "7/2", "\\boxed{3 1/2}", True),
    ("mixed", "\\frac{7}{2}", "\\boxed{3\\frac{1}{2}}", True),
    ("mixed", "\\frac{7}{2}", "\\boxed{3 \\frac12}", True),
    ("mixed", "-7/2", "\\boxed{-3 1/2}", True),
    ("mixed", "3.5\\%", "\\boxed{3 1/2\\%}", True),
    ("mixed", "3.5\\%", "The rate is 3 1/2 percent.", True),
    ("mixed", "-3.5\\%", "\\boxed{-3 1/2 \\%}", True),
    ("mixed", "3\\frac{1}{2}", "\\boxed{\\frac{7}{2}}", True),
    ("mixed", "3\\frac{1}{2}", "\\boxed{3.5}", True),
    ("mixed", "31/2", "\\boxed{31/2}", True),
    ("mixed", "31/2", "\\boxed{3 1/2}", False),
    ("mixed", "7/2", "\\boxed{31/2}", False),
    ("mixed", "-5/2", "\\boxed{-3 1/2}", False),  # -(3 + 1/2), not -3 + 1/2
    ("mixed", "3/2", "\\boxed{3 1/2}", False),
    ("mixed", "3 1/2", "\\boxed{31/2}", False),
    # Several boxes joined by connectives are one list answer: right for a list truth, a hedge for a single one.
    ("boxes", "\\{2, 5\\}", "\\boxed{2} and \\boxed{5}", True),
    ("boxes", "2, 5", "\\boxed{5} and \\boxed{2}", True),
    ("boxes", "\\{(1,2), (2,1)\\}", "\\boxed{(1,2)}, \\boxed{(2,1)}", True),
    ("boxes", "a=3, b=4", "\\boxed{a=3} and \\boxed{b=4}", True),
    ("boxes", "5", "\\boxed{2} and \\boxed{5}", False),
    ("boxes", "\\{2, 5\\}", "\\boxed{2} and \\boxed{6}", False),
    ("boxes", "\\{2, 5\\}", "\\boxed{5}", False),
    ("boxes", "\\{(1,2), (2,1)\\}", "\\boxed{(1,2)}, \\boxed{(2,2)}", False),
    ("boxes", "a=3, b=4", "\\boxed{a=3} and \\boxed{b=5}", False),
    ("boxes", "4", "\\boxed{a=3} and \\boxed{b=4}", False),
    ("boxes", "67", "\\boxed{66} or \\boxed{67}", False),
    # A final statement with a subject: the value follows the verb.
    ("statement", "12", "Final Answer: The smallest k is 12.", True),
    ("statement", "60", "The volume of the box is 60", True),
    ("statement", "12", "Therefore, the smallest possible value of k is 12.", True),
    ("statement", "60", "So the box holds 60 cubic units.", True),
    ("statement", "60", "The volume of the box is 61", False),
    ("statement", "12", "Final Answer: The smallest k is not 12.", False),
    ("statement", "60", "The volume of the box is more than 60.", False),
    # Display math after an anchor or on its own lines; a percent sign outside the math.
    ("display", "9", "Answer \\[ 9 \\]", True),
    ("display", "9", "So we get\n$$\n9\n$$", True),
    ("display", "9", "So we get\n$$\n9\n$$\nI hope it is correct.", True),
    ("display", "28\\%", "$28$ %", True),
    ("display", "28\\%", "$28$ percent", True),
    ("display", "0.28", "$28$ %", True),
    ("display", "9", "Answer \\[ 8 \\]", False),
    ("display", "0.82", "$28$ %", False),
    ("display", "28\\%", "$82$ percent", False),
    # LaTeX variants: fraction commands, text wrappers and units, \ne as a relation, intervals as inequalities.
    ("latex", "\\frac{3}{4}", "\\boxed{\\cfrac{3}{4}}", True),
    ("latex", "\\frac{3}{4}", "\\boxed{\\tfrac{3}{4}}", True),
    ("latex", "\\frac{3}{4}", "\\boxed{\\frac34}", True),
    ("latex", "5", "\\boxed{\\textbf{5}}", True),
    ("latex", "5", "\\boxed{5\\textnormal{ miles}}", True),
    ("latex", "5", "\\boxed{5\\mbox{ miles}}", True),
    ("latex", "x \\neq 3", "\\boxed{x \\ne 3}", True),
    ("latex", "x \\ne 3", "\\boxed{x \\neq 3}", True),
    ("latex", "x \\in [2, 5]", "\\boxed{2 \\le x \\le 5}", True),
    ("latex", "[2, 5]", "\\boxed{x \\in [2, 5]}", True),
    ("latex", "\\frac{3}{4}", "\\boxed{\\frac43}", False),
    ("latex", "5", "\\boxed{\\textbf{6}}", False),
    ("latex", "x \\neq 3", "\\boxed{x \\neq 4}", False),
    ("latex", "3", "\\boxed{x \\neq 3}", False),  # "not 3" for a truth of 3
    ("latex", "x \\in [2, 5]", "\\boxed{2 < x < 5}", False),
    ("latex", "x \\in [2, 5]", "\\boxed{2 \\leq x \\leq 6}", False),
    # Locale marks: currency before or after, glued units, thousands marks; a comma and a space make a list.
    ("locale", "12", "\\boxed{\\$12}", True),
    ("locale", "12", "\\boxed{12\\$}", True),
    ("locale", "12", "\\boxed{12\u20ac}", True),
    ("locale", "12", "\\boxed{\u20ac12}", True),
    ("locale", "12", "\\boxed{12 m\u00b2}", True),
    ("locale", "12", "\\boxed{12m\u00b2}", True),
    ("locale", "12345", "\\boxed{12{,}345}", True),
    ("locale", "12345", "\\boxed{12\\,345}", True),
    ("locale", "12345", "\\boxed{12\u2009345}", True),
    ("locale", "1234567", "The total is \\$1,234,567.", True),
    ("locale", "12345", "\\boxed{12, 345}", False),
    ("locale", "12345", "\\boxed{12{,}346}", False),
    ("locale", "13", "\\boxed{12\u20ac}", False),
    ("locale", "10", "\\boxed{10weeks}", True),
    ("locale", "2", "\\boxed{2xyz}", False),  # a product of variables, not a unit
    ("locale", "10", "\\boxed{10thousand}", False),
    # Exact integers in scientific notation, "N is the answer.", trailing remarks, prose after an equation.
    ("forms", "1200000", "\\boxed{1.2 \\times 10^{6}}", True),
    ("forms", "1200000", "\\boxed{1.2e6}", True),
    ("forms", "12", "12 is the answer.", True),
    ("forms", "12", "Answer: 12 (since 3 * 4 = 12)", True),
    ("forms", "12", "x = 12\nWe can check this by substituting back.", True),
    ("forms", "1200001", "\\boxed{1.2 \\times 10^{6}}", False),
    ("forms", "1234567", "\\boxed{1.23 \\times 10^6}", False),  # not all digits: an approximation
    ("forms", "13", "12 is the answer.", False),
    ("forms", "12", "Answer: 11 (since 3 * 4 = 12)", False),
    ("forms", "12", "x = 11\nWe can check this by substituting back.", False),
    ("forms", "f(x) = 2x + 3", "\\boxed{y = 2x + 3}", True),  # the function's name is notation
    ("forms", "y = 2x + 3", "\\boxed{f(x) = 2x + 3}", True),
    ("forms", "f(x) = 2x + 3", "\\boxed{y = 2x + 4}", False),
    ("forms", "y = 2x + 3", "\\boxed{x = 2x + 3}", False),  # an equation in x, not a function named x
    ("forms", "C", "\\boxed{C. x = 42}", True),  # a choice letter with its option's text
    ("forms", "C. x = 42", "\\boxed{C}", True),
    ("forms", "C", "\\boxed{D. x = 42}", False),
    ("forms", "A", "\\boxed{A. B}", False),
    # Hedges: two candidates, in any layout, are wrong for a single-valued truth.
    ("hedge", "67", "\\boxed{67}", True),
    ("hedge", "67", "The answer is 67.", True),
    ("hedge", "67", "66\n67", False),
    ("hedge", "67", "\\boxed{67} \\text{or} 66", False),
    ("hedge", "67", "The answer is 67 or 68.", False),
    ("hedge", "67", "The answer is maybe 67.", False),
    # A number of the question restated when the question asks for another form is no answer.
    ("conversion", "0.375", "\\boxed{0.375}", True, AS_DECIMAL),
    ("conversion", "0.375", "\\boxed{.375}", True, AS_DECIMAL),
    ("conversion", "\\frac{3}{8}", "\\boxed{\\frac{3}{8}}", True, AS_FRACTION),
    ("conversion", "0.375", "\\boxed{\\frac{3}{8}}", False, AS_DECIMAL),
    ("conversion", "\\frac{3}{8}", "\\boxed{0.375}", False, AS_FRACTION),
    ("conversion", "0.333", "\\boxed{1/3}", False, NEAREST),
    # A box left open at the end is no final answer: the response stops inside it, whatever came before.
    ("unclosed", "12", "so the answer is \\boxed{12}", True),
    ("unclosed", "\\{1, 2\\}", "The set is \\boxed{\\{1, 2\\}}.", True),
    ("unclosed", "12", "so the answer is \\boxed{12", False),
    ("unclosed", "12", "A first guess is \\boxed{12}, so the answer is \\boxed{12", False),
    ("unclosed", "12", "\\boxed{\\frac{24}{2} = 12", False),
    # A percent sign means "of 100" and applies to the whole number, in every number form, unless the question asks
    # for a percent (or the truth is one): then 25 and 25% are both the percentage asked for.
    ("percent", "2/45", "\\boxed{4 4/9\\%}", True),
    ("percent", "0.015", "The rate is $1\\frac{1}{2}$\\%.", True),
    ("percent", "0.25", "\\boxed{25\\%}", True),
    ("percent", "0.125", "\\boxed{12.5\\%}", True),
    ("percent", "25", "\\boxed{25\\%}", True, WHAT_PERCENT),
    ("percent", "25", "\\boxed{25}", True, WHAT_PERCENT),
    ("percent", "25\\%", "\\boxed{25}", True),
    ("percent", "1.5", "\\boxed{1 1/2\\%}", True, WHAT_PERCENT),
    ("percent", "40/9", "\\boxed{4 4/9\\%}", False),
    ("percent", "40/9", "4 4/9 percent", False),
    ("percent", "1.5", "The rate is $1\\frac{1}{2}$\\%.", False),
    ("percent", "1.5", "\\boxed{1\\frac{1}{2} per cent}", False),
    ("percent", "25", "\\boxed{25\\%}", False),
    ("percent", "12.5", "\\boxed{12.5\\%}", False),
    ("percent", "\\frac{1}{2}", "\\boxed{\\frac{1}{2}\\%}", False),
    ("percent", "25", "\\boxed{0.25}", False, WHAT_PERCENT),
    # A yes/no or named-choice question answered with the bare choice: a "No" is the choice, not a negation.
    ("choice_word", "No", "\\boxed{No}", True, YES_NO),
    ("choice_word", "No", "The answer is no.", True, YES_NO),
    ("choice_word", "\\text{No}", "\\boxed{no}", True, YES_NO),
    ("choice_word", "Yes", "\\boxed{YES}", True, YES_NO),
    ("choice_word", "Yes", "\\boxed{\\text{Yes}}", True, YES_NO),
    ("choice_word", "\\text{neither}", "\\boxed{Neither.}", True, PARITY),
    ("choice_word", "No", "\\boxed{Yes}", False, YES_NO),
    ("choice_word", "Yes", "\\boxed{No}", False, YES_NO),
    ("choice_word", "No", "The answer is not no.", False, YES_NO),
    ("choice_word", "No", "\\boxed{Yes or no}", False, YES_NO),
    ("choice_word", "Yes", "\\boxed{Maybe yes}", False, YES_NO),
    ("choice_word", "\\text{odd}", "\\boxed{\\text{even}}", False, PARITY),
    # A tuple answered as named assignments: ordered as the question names the variables, else alphabetically.
    ("tuple", "(3, 2)", "\\boxed{x = 3, y = 2}", True, NAMED),
    ("tuple", "(3, 2)", "\\boxed{y = 2, x = 3}", True, NAMED),
    ("tuple", "(3, 2)", "So $x = 3$ and $y = 2$.", True, NAMED),
    ("tuple", "(3, 2)", "\\boxed{y = 2, x = 3}", True, UNNAMED),
    ("tuple", "(2, 3)", "\\boxed{a = 3, b = 2}", True, ORDERED),
    ("tuple", "(3, 2)", "\\boxed{x = 3}, \\boxed{y = 2}", True, NAMED),
    ("tuple", "(3, 2)", "\\boxed{x = 2, y = 3}", False, NAMED),
    ("tuple", "(3, 2)", "\\boxed{x = 3}", False, NAMED),
    ("tuple", "(3, 2)", "\\boxed{x = 3} or \\boxed{y = 2}", False, NAMED),
    ("tuple", "(3, 2)", "\\boxed{x = 3, x = 2}", False, NAMED),
    ("tuple", "(3, 2)", "\\boxed{x = 3 \\text{ or } y = 2}", False, NAMED),
    ("tuple", "(2, 3)", "\\boxed{a = 2, b = 3}", False, ORDERED),
    ("tuple", "x = 3, y = 2", "\\boxed{(3, 2)}", True, NAMED),  # and a tuple for named assignments
    ("tuple", "x = 3, y = 2", "\\boxed{(2, 3)}", False, NAMED),
    # The answer on the first line, then an explanation (unboxed answers are read when boxes are not required).
    ("first_line", "42", "42\nExplanation: multiply 6 by 7.", True),
    ("first_line", "42", "$42$\nBecause 6 times 7 is 42, and 7 is prime.", True),
    ("first_line", "42", "x = 42\nSince 6 * 7 = 42.", True),
    ("first_line", "42", "**42**\n\n### Explanation\nMultiply 6 by 7 to get the product.", True),
    ("first_line", "42", "41\nBecause 6 times 7 is 42.", False),
    ("first_line", "7", "7\nThen 6 * 7 = 42.", False),  # a step followed by more working: the last line answers
    ("first_line", "42", "42\nBecause it is probably 6 * 7.", False),
    ("first_line", "42", "42 or 43\nBecause 6 * 7 = 42.", False),
    ("first_line", "42", "42\nBecause 6 * 7 = 42.\n43", False),
    ("first_line", "42", "42\nBecause 6 * 7 = 42, the final answer is 43.", False),
    # An exact value or a power for a decimal or integer truth, unless the question is about that power or asks for
    # the literal form.
    ("exact", "1000", "\\boxed{10^3}", True),
    ("exact", "1024", "\\boxed{2^{10}}", True),
    ("exact", "0.001", "\\boxed{10^{-3}}", True),
    ("exact", "0.5", "\\boxed{\\frac{1}{2}}", True),
    ("exact", "1000000", "The answer is $10^6$.", True),
    ("exact", "1000", "\\boxed{10^3}", False, CUBED),
    ("exact", "1024", "\\boxed{2^{10}}", False, POWER),
    ("exact", "1000", "\\boxed{10^3}", False, AS_INTEGER),
    ("exact", "100", "\\boxed{10^3}", False),
    ("exact", "67", "\\boxed{67^1}", False),
    ("exact", "1000", "\\boxed{10^3 + 0}", False),
    ("exact", "1024", "\\boxed{32^2}", False, "What is 32 * 32?"),
]
CLASSES = ("mixed", "boxes", "statement", "display", "latex", "locale", "forms", "hedge", "conversion", "unclosed",
           "percent", "choice_word", "tuple", "first_line", "exact")


def case_id(case: tuple) -> str:
    return f"{case[0]}:{case[1]}:{case[2][:40]}"


def examples_of(cases: list[tuple]) -> list[Example]:
    return [Example(problem=case[4] if len(case) > 4 else PROBLEM, answer=case[1], id=str(i))
            for i, case in enumerate(cases)]


@pytest.fixture(scope="module")
def graded():
    """All cases graded in one batch, as the trainer grades a step."""
    with MathReward(num_workers=2, timeout=5.0, grader="strict") as strict:
        return strict.score([case[2] for case in CASES], examples_of(CASES))


def test_every_class_is_tested_in_both_directions():
    assert {case[0] for case in CASES} == set(CLASSES)
    directions = Counter((case[0], case[3]) for case in CASES)
    assert all(directions[(name, True)] and directions[(name, False)] for name in CLASSES), directions


@pytest.mark.parametrize("index", range(len(CASES)), ids=[case_id(case) for case in CASES])
def test_case(graded, index):
    case, score = CASES[index], graded[index]
    assert score.correct == case[3], (case, score)
    assert score.status != "timeout"  # decided by rule or by math-verify, not by the clock


# Verdicts that go through math-verify (sympy): sets, intervals, radicals, trigonometry, symbolic expressions,
# equations. Sympy iterates sets in hash order and draws from unseeded generators, and caches across calls.
SYMBOLIC_GOLDS = ["\\{x, y, 2x\\}", "\\{\\pi, e, \\sqrt{2}, i\\}", "(-\\infty, 2) \\cup (3, \\infty)", "\\frac{\\sqrt{2}}{2}",
                  "\\frac{\\sqrt{6}+\\sqrt{2}}{4}", "2\\sin(x)\\cos(x)", "(x+1)^3", "y = 2x + 3", "\\ln 6"]
SYMBOLIC_ANSWERS = ["\\{2x, y, x\\}", "\\{i, \\sqrt{2}, e, \\pi\\}", "x<2 \\text{ or } x>3", "\\frac{1}{\\sqrt{2}}",
                    "\\cos(\\pi/12)", "\\sin(2x)", "x^3+3x^2+3x+1", "y - 3 = 2x", "\\ln(2)+\\ln(3)", "0.7071"]
SYMBOLIC = [(gold, f"The answer is $\\boxed{{{answer}}}$.") for gold in SYMBOLIC_GOLDS for answer in SYMBOLIC_ANSWERS]
VERDICTS_SCRIPT = """
import json, sys
from remix_rft.data.types import Example
from remix_rft.rewards import MathReward
cases = json.loads(sys.stdin.read())
examples = [Example(problem="", answer=gold, id=str(i)) for i, (gold, _) in enumerate(cases)]
verdicts = {}
with MathReward(grader="paper", num_workers=1, timeout=10.0) as paper:
    verdicts["paper"] = [s.correct for s in paper.score([r for _, r in cases], examples)]
    verdicts["strict"] = [s.correct for s in MathReward(grader="strict", pool=paper.pool).score(
        [r for _, r in cases], examples)]
print(json.dumps(verdicts))
"""


def verdicts_under_hash_seed(seed: str) -> dict[str, list[bool]]:
    env = dict(os.environ, PYTHONHASHSEED=seed)
    done = subprocess.run([sys.executable, "-c", VERDICTS_SCRIPT], input=json.dumps(SYMBOLIC), env=env,
                          capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_verdicts_do_not_depend_on_the_hash_seed():
    """The trainer's hash seed (random per process unless set) changes neither protocol's verdicts."""
    first, second = verdicts_under_hash_seed("1"), verdicts_under_hash_seed("2")
    assert first == second
    assert 0 < sum(first["paper"]) < len(SYMBOLIC)  # the table holds both verdicts, so it can show a change


def test_workers_grade_under_one_fixed_hash_seed(monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "random")
    assert VerifierPool(num_workers=1)._env()["PYTHONHASHSEED"] == WORKER_HASH_SEED


def test_verdicts_do_not_depend_on_worker_history():
    """One long-running worker grading the cases in two orders, and a fresh worker per case, agree."""
    golds, responses = [gold for gold, _ in SYMBOLIC], [response for _, response in SYMBOLIC]
    examples = [Example(problem="", answer=gold, id=str(i)) for i, gold in enumerate(golds)]
    order = list(range(len(SYMBOLIC)))
    random.Random(0).shuffle(order)
    with MathReward(grader="paper", num_workers=1, timeout=10.0) as paper:
        in_order = [s.correct for s in paper.score(responses, examples)]
        shuffled = paper.score([responses[i] for i in order], [examples[i] for i in order])
    reordered = [None] * len(order)
    for position, index in enumerate(order):
        reordered[index] = shuffled[position].correct
    assert reordered == in_order
    for index in random.Random(1).sample(range(len(SYMBOLIC)), 8):  # fresh workers: a sample keeps this short
        with MathReward(grader="paper", num_workers=1, timeout=10.0) as fresh:
            assert fresh.score([responses[index]], [examples[index]])[0].correct == in_order[index], SYMBOLIC[index]
