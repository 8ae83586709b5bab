"""The grading worker: a separate process that parses and compares answers with math-verify.

Run by `VerifierPool` as `python -m remix_rft.rewards.verify_worker`. It reads one JSON job a line on stdin
({"id", "gold": [str, ...], "pred": str}) and writes one JSON result a line ({"id", "status", "correct",
"extracted", "detail"}). Model output is only ever parsed (LaTeX / sympy expressions), never executed.

Two layers of timeout guard each job: here an interval timer (SIGALRM; this is the process's main thread, so
signals work) interrupts slow Python-level parsing or simplification; a hang inside one C call (a big-integer
power such as 9^{9^{9^9}}), which no signal can interrupt, is ended by the parent killing this process.
math-verify's own per-call alarms are switched off so that the whole job shares one budget and a timeout is
reported as "timeout" instead of being turned into a silent "wrong".

A verdict depends on the job alone, never on the worker's history: sympy draws from two unseeded random generators
(its assumption system shuffles the order of its handlers; `equals` samples points) and caches results and parsed
expressions across calls, so each job starts from the same state: both generators seeded, sympy's cache and
math-verify's parse caches cleared, the ground truth parsed afresh. The pool starts workers with a fixed
PYTHONHASHSEED, so set iteration inside sympy does not depend on the trainer's hash seed either.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from remix_rft.rewards.verifier import STATUS_ERROR, STATUS_NO_ANSWER, STATUS_OK, STATUS_TIMEOUT


class GradingTimeout(BaseException):
    """Raised by the alarm; a BaseException, so math-verify's and sympy's `except Exception` pass it on."""


_alarm_armed = False


def _on_alarm(signum: int, frame: Any) -> None:
    # Ignore an alarm that lands after the job finished but before the timer was cleared.
    if _alarm_armed:
        raise GradingTimeout


# One job per kind of object the grader meets: numbers, radicals, sets, intervals and relations, equations, matrices.
WARM_UP = [
    (["1"], "\\boxed{1}"),
    (["\\frac{\\sqrt{2}}{2}"], "\\boxed{\\frac{1}{\\sqrt{2}}}"),
    (["\\{1, 2\\}"], "\\boxed{2, 1}"),
    (["x \\in [-2, 7]"], "\\boxed{-2 \\le x \\le 7}"),
    (["y = 2x + 3"], "\\boxed{y - 3 = 2x}"),
    (["\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}"], "\\boxed{\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}}"),
]


@functools.cache
def _prediction_config() -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    # The last \boxed{} first, then "final answer is ..." anchors, then the final LaTeX / plain expression.
    return [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


JOB_SEED = 0  # the random state every job starts from


def reset_state() -> None:
    """Put sympy and math-verify back into the state every job starts from (module doc): seeded generators, empty
    caches. Costs a few milliseconds a job; what it buys is a verdict that is a function of (golds, prediction)."""
    import random

    from math_verify import parser
    from sympy.core.cache import clear_cache
    from sympy.core.random import seed

    random.seed(JOB_SEED)
    seed(JOB_SEED)
    clear_cache()
    for name in ("parse_latex_cached", "parse_expr_cached", "extract_latex"):  # math-verify's lru caches
        cached = getattr(parser, name, None)
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()


def _parse_gold(gold: str) -> tuple:
    """Parse a raw ground-truth answer ("204", "\\frac{1}{2}", "(3, \\frac{\\pi}{2})").

    Raw LaTeX has no `$...$` delimiters, which math-verify's LaTeX extraction needs, so it is boxed first;
    `$...$` and the bare text are fallbacks (for golds with unbalanced braces or already delimited).
    Parsed afresh in every job: a cached sympy object carries assumptions computed in earlier jobs.
    """
    from math_verify import parse

    gold = gold.strip()
    if "\\boxed" in gold:
        candidates = [gold]
    else:
        candidates = [f"\\boxed{{{gold}}}", f"${gold}$", gold]
    for candidate in candidates:
        parsed = parse(candidate, parsing_timeout=None)
        if parsed:
            return tuple(parsed)
    return ()


def grade_answer(golds: Sequence[str], prediction: str, *, relations: bool = False) -> dict[str, Any]:
    """Grade one prediction against any of `golds` (gold first: `verify(parse(gold), parse(pred))`).

    `relations` lets an interval equal the inequality that describes it (`x \\in [-2, 7]` and `-2 \\le x \\le 7`;
    math-verify's `allow_set_relation_comp`): the strict grader asks for it, the paper protocol does not.
    No timeout here; `grade_job` adds it.
    """
    from math_verify import parse, verify

    reset_state()
    parsed_prediction = parse(prediction, extraction_config=_prediction_config(), parsing_timeout=None)
    if not parsed_prediction:
        return {"status": STATUS_NO_ANSWER, "correct": False, "extracted": None, "detail": ""}
    # The matched text, not str(expr): printing a pathological sympy expression can itself hang.
    matched = [item for item in parsed_prediction if isinstance(item, str)]
    extracted = matched[-1] if matched else None

    parsed_golds = [_parse_gold(gold) for gold in golds]
    if not any(parsed_golds):
        return {
            "status": STATUS_ERROR,
            "correct": False,
            "extracted": extracted,
            "detail": f"could not parse the ground truth {list(golds)!r}",
        }
    correct = any(
        parsed
        and verify(list(parsed), parsed_prediction, timeout_seconds=None, allow_set_relation_comp=relations)
        for parsed in parsed_golds
    )
    return {"status": STATUS_OK, "correct": bool(correct), "extracted": extracted, "detail": ""}


def grade_job(golds: Sequence[str], prediction: str, timeout: float, *, relations: bool = False) -> dict[str, Any]:
    """`grade_answer` under an interval-timer deadline; timeouts and exceptions become statuses."""
    global _alarm_armed
    try:
        _alarm_armed = True
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            result = grade_answer(golds, prediction, relations=relations)
        finally:
            _alarm_armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    except GradingTimeout:
        return {
            "status": STATUS_TIMEOUT,
            "correct": False,
            "extracted": None,
            "detail": f"grading exceeded {timeout:g}s",
        }
    except Exception as error:  # noqa: BLE001 - any failure on one answer is that answer's "error", counted
        return {
            "status": STATUS_ERROR,
            "correct": False,
            "extracted": None,
            "detail": f"{type(error).__name__}: {error}"[:500],
        }
    return result


def _limit_memory(megabytes: int) -> None:
    # A pathological answer can build enormous integers; cap the address space so it fails with MemoryError
    # (graded "error"/"wrong") instead of swapping the training machine.
    if megabytes <= 0:
        return
    try:
        import resource

        limit = megabytes * 1024 * 1024
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):
        pass  # not supported here (e.g. macOS): the parent's kill still bounds the time


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="remix-rft math grading worker (speaks JSON lines on stdio)")
    parser.add_argument("--timeout", type=float, required=True, help="seconds per job")
    parser.add_argument("--memory-limit-mb", type=int, default=0)
    args = parser.parse_args(argv)

    # Keep the protocol channel private: anything a library prints goes to stderr, not into the results.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _limit_memory(args.memory_limit_mb)
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop

    # Warm up before saying ready: the first use of each kind of object imports sympy modules lazily, and a first
    # job that paid for those imports could time out where the same job in a warm worker would not.
    for golds, prediction in WARM_UP:
        grade_job(golds, prediction, timeout=max(args.timeout, 30.0), relations=True)
    protocol.write(json.dumps({"ready": os.getpid()}) + "\n")

    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        result = grade_job(job["gold"], job["pred"], args.timeout, relations=bool(job.get("relations")))
        protocol.write(json.dumps({"id": job["id"], **result}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
