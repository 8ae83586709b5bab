"""The correctness reward: 1 if the final answer states the ground truth, else 0, under one of two protocols.

"strict" (the default for training): the answer policy of `answer_policy.py` (docs/METHOD.md, Grading): the
final answer is extracted by rule, must be a literal when the truth is one, and may not restate the question;
only non-literal truths go to math-verify for equivalence (an interval may equal the inequality that describes it).
"paper": the paper's protocol, math-verify on the
last box (or its own extraction), which evaluates expressions, with the `restated_problem` guard against a
verbatim copy of the question. "auto": "paper" for the paper's five benchmarks (so their numbers compare with
the paper's), "strict" for everything else.

The answer is looked for in the text after the last `</think>` (the whole response when there is none);
math-verify runs gold first in killable worker processes (see `verifier.py`): a pathological response costs at
most `timeout` seconds and is reported as status "timeout", never as a silent "wrong".
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from decimal import Decimal

from remix_rft.data.loaders import BENCHMARKS, gsm8k_final_answer, last_boxed_content
from remix_rft.data.types import Example, GroundTruth
from remix_rft.rewards.answer_policy import STATUS_RESTATED, answer_region, judge
from remix_rft.rewards.base import Score
from remix_rft.rewards.verifier import DEFAULT_TIMEOUT, STATUS_NO_ANSWER, VerifierPool

GRADERS = ("strict", "paper", "auto")
INTEGER_TASKS = ("arithmetic",)  # built-in tasks whose answers are integers: graded as exact integer literals
# The final answer is at the end of a response; math-verify's extraction regexes run over the whole text and
# some scale worse than linearly, so megabytes of degenerate output (repetition loops) are cut to their tail
# before grading. 20k characters hold the last few pages of reasoning, far more than any final answer needs.
DEFAULT_MAX_RESPONSE_CHARS = 20_000
# math-verify evaluates expressions, so under the paper protocol an "answer" that restates the question
# ("\boxed{8 - 65}" for "What is 8 - 65?") grades as its value; a verbatim copy gets STATUS_RESTATED and no reward.
_LATEX_NOISE = re.compile(r"\\[,;:! ]|\\left|\\right|\$|\s+")
_PLAIN_NUMBER = re.compile(r"-?\d[\d,]*(\.\d+)?|-?\.\d+")
_BOXED = re.compile(r"^\\boxed\{(.*)\}$", re.DOTALL)


def _normalise(text: str) -> str:
    text = _LATEX_NOISE.sub("", text)
    boxed = _BOXED.match(text)
    return boxed.group(1) if boxed else text


def restates_problem(extracted: str | None, problem: str, golds: Sequence[str]) -> bool:
    """True when the graded answer is an expression copied from the problem rather than an answer to it.

    A plain number, or an answer written exactly as a gold answer, always counts as an answer.
    """
    if not extracted:
        return False
    answer = _normalise(extracted)
    if not answer or _PLAIN_NUMBER.fullmatch(answer) or any(answer == _normalise(g) for g in golds):
        return False
    return answer in _normalise(problem)


def gold_answers(answer: GroundTruth, example_id: str = "") -> list[str]:
    """A ground truth as the list of acceptable answer strings the worker parses.

    Numbers are written without float noise (142.0 -> "142", 0.5 -> "0.5", 1e-07 -> "0.0000001"); GSM8K
    worked answers ("... #### 1,234") become "1234"; a list means any of its answers counts.
    """
    where = f" of example {example_id!r}" if example_id else ""
    if isinstance(answer, bool) or answer is None:
        raise ValueError(f"unusable ground truth {answer!r}{where}")
    if isinstance(answer, int):
        return [str(answer)]
    if isinstance(answer, float):
        if not math.isfinite(answer):
            raise ValueError(f"unusable ground truth {answer!r}{where}")
        return [str(int(answer))] if answer.is_integer() else [format(Decimal(repr(answer)), "f")]
    if isinstance(answer, str):
        text = gsm8k_final_answer(answer) if "####" in answer else answer.strip()
        if not text:
            raise ValueError(f"empty ground truth {answer!r}{where}")
        return [text]
    if isinstance(answer, (list, tuple)):
        golds = [gold for item in answer if item is not None for gold in gold_answers(item, example_id)]
        if not golds:
            raise ValueError(f"empty list of ground truths{where}")
        return golds
    raise ValueError(f"ground truth{where} must be a string, a number or a list, got {type(answer).__name__}")


class MathReward:
    """Rule-based correctness reward; `grader` picks the protocol (module doc), math-verify runs in
    `num_workers` worker processes.

    The last `\\boxed{...}` is graded when there is one; otherwise the final statement ("strict") or
    math-verify's own extraction ("paper"), unless `require_boxed`, which makes that "no_answer".
    Owns its worker pool unless one is passed in; `close()` (or the context manager) stops the workers.
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        correct_reward: float = 1.0,
        incorrect_reward: float = 0.0,
        require_boxed: bool = False,
        num_workers: int = 1,
        max_response_chars: int = DEFAULT_MAX_RESPONSE_CHARS,
        pool: VerifierPool | None = None,
        grader: str = "strict",
    ):
        if grader not in GRADERS:
            raise ValueError(f"grader must be one of {', '.join(GRADERS)}, got {grader!r}")
        self.grader = grader
        if max_response_chars < 1:
            raise ValueError(f"max_response_chars must be >= 1, got {max_response_chars}")
        self.correct_reward = float(correct_reward)
        self.incorrect_reward = float(incorrect_reward)
        self.require_boxed = require_boxed
        self.max_response_chars = max_response_chars
        self._owns_pool = pool is None
        self.pool = pool if pool is not None else VerifierPool(num_workers=num_workers, timeout=timeout)

    def prediction_text(self, response: str) -> str | None:
        """What is sent to the grader for a response; None when there is nothing to grade.

        The last complete `\\boxed{...}` alone when there is one (the paper's protocol; math-verify by itself
        would join several boxes into one multi-part answer), else the answer region for math-verify's own
        extraction, unless `require_boxed`.
        """
        text = answer_region(response)[-self.max_response_chars :]
        boxed = last_boxed_content(text)
        if boxed is not None:
            # a final box left empty is a non-answer: falling back to extraction would grade the text before it,
            # e.g. the question restated ("8 - 65 = \\boxed{}")
            return f"\\boxed{{{boxed}}}" if boxed.strip() else None
        return None if self.require_boxed else text

    def score(self, responses: Sequence[str], examples: Sequence[Example]) -> list[Score]:
        if len(responses) != len(examples):
            raise ValueError(f"{len(responses)} responses but {len(examples)} examples")
        scores: list[Score | None] = [None] * len(responses)
        jobs: list[tuple[list[str], str, bool]] = []
        job_positions, job_golds = [], []
        strict_extracted: dict[int, str | None] = {}
        for position, (response, example) in enumerate(zip(responses, examples)):
            golds = gold_answers(example.answer, example.id)
            if self.protocol(example) == "strict":
                verdict = judge(response, example.problem, golds, require_boxed=self.require_boxed,
                                integer_only=example.source in INTEGER_TASKS, max_chars=self.max_response_chars)
                if verdict.correct is not None or verdict.prediction is None:
                    scores[position] = self._score(bool(verdict.correct), verdict.extracted, verdict.status)
                    continue
                prediction: str | None = verdict.prediction
                strict_extracted[position] = verdict.extracted
                golds = list(verdict.golds) if verdict.golds is not None else golds
            else:
                prediction = self.prediction_text(response)
            if prediction is None:
                scores[position] = Score(self.incorrect_reward, False, None, STATUS_NO_ANSWER)
                continue
            # strict: `x \in [a, b]` equals `a \le x \le b`; the paper protocol keeps math-verify's default
            jobs.append((golds, prediction, position in strict_extracted))
            job_positions.append(position)
            job_golds.append(golds)
        for position, golds, result in zip(job_positions, job_golds, self.pool.grade_batch(jobs)):
            if position in strict_extracted:  # the strict policy already ruled out restated answers
                extracted = strict_extracted[position] if result.status != "timeout" else None
                scores[position] = self._score(result.correct, extracted, result.status)
                continue
            if result.correct and restates_problem(result.extracted, examples[position].problem, golds):
                scores[position] = Score(self.incorrect_reward, False, result.extracted, STATUS_RESTATED)
                continue
            scores[position] = self._score(result.correct, result.extracted, result.status)
        return [score for score in scores if score is not None]

    def protocol(self, example: Example) -> str:
        """"strict" or "paper" for this example ("auto": the paper's protocol on the paper's benchmarks)."""
        if self.grader == "auto":
            return "paper" if example.source in BENCHMARKS else "strict"
        return self.grader

    def _score(self, correct: bool, extracted: str | None, status: str) -> Score:
        return Score(self.correct_reward if correct else self.incorrect_reward, correct, extracted, status)

    def close(self) -> None:
        if self._owns_pool:
            self.pool.close()

    def __enter__(self) -> MathReward:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
