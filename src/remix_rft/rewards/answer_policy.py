"""The strict grader's answer policy: what a response's final answer is, and when it counts (docs/METHOD.md, Grading).

Pure string functions, no model output is ever evaluated:

* The final answer is the content of the last closed `\\boxed{}` in the answer region (after the last `</think>`).
  Without a box (and unless boxes are required) it is an explicit final statement: the last "answer is X" /
  "answer: X" / "#### X", else the end of the last line (its last `$...$`, or what follows its last "is").
  Of a chain of equalities the last side is the answer, boxed or not (`\\boxed{73 - 6 = 67}` answers 67, as the
  line "73 - 6 = 67" does); unless the ground truth is itself an equation, which is compared whole.
* Hedged or negated answers are wrong: several different boxes in the final line, "66 or 67", "not 67", a chain
  of equalities between different numbers ("66 = 67").
* When the ground truth is a literal (integer, decimal, fraction, percentage), the answer must be a literal too
  and equal in value. An expression that evaluates to the truth (`73 - 6`, `8 \\times 7`, `\\dbinom{5}{2}`,
  `\\frac{134}{2}`, `67+0`) is not an answer, whatever its spelling. Integers must be written as integers,
  fractions in lowest terms (unless written exactly as the ground truth); a decimal or a percentage equal in
  value counts. The arithmetic task (`integer_only`) accepts integer literals only.
* Otherwise (expressions, intervals, tuples, sets, letters) math-verify decides equivalence, but an answer
  that still contains an operation of the question on the question's operands (and the ground truth does not)
  is "restated_problem".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction

THINK_END = "</think>"

# Score.status values of the strict grader (besides ok / no_answer / timeout / error of the verifier)
STATUS_RESTATED = "restated_problem"  # the answer still contains the question's operation on its operands
STATUS_NOT_LITERAL = "not_literal"  # the ground truth is a literal; the answer is an expression
STATUS_HEDGED = "hedged"  # several candidates, or a negated statement

_MINUS_SIGNS = "\u2212\u2012\u2013\u2014\ufe63\uff0d"
_TIMES_SIGNS = "\u00d7\u22c5\u00b7\u2217\u2715\u2716"
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANCHOR_RE = re.compile(
    r"(?:final\s+answer|the\s+answer|answer|result)\s*(?:is|:|=|equals|would\s+be|will\s+be)(?:\s*:)?\s*"
    r"|(?:final\s+answer|answer|result)\s+is\s*n[o']?t\b|answer\s+isn't\b|####\s*",
    re.IGNORECASE,
)
# markdown emphasis around words ("**Answer:** **67**"), not a Python-style power ("2**10")
_EMPHASIS_RE = re.compile(r"(?<![\w)])(\*\*|__)(?=\S)(.{1,200}?)(?<=\S)\1(?![\w(])")
_NEGATED_ANCHOR_RE = re.compile(r"n[o']?t\b|isn't\b", re.IGNORECASE)
_NEGATION_RE = re.compile(r"^(?:not|never|n't|no)\b|\\neq|\\ne\b|\u2260|\\not", re.IGNORECASE)
_CONNECTIVE_RE = re.compile(r"[\s$.,;/|]*(?:(?:or|and|,|/|\\lor|\\text\{\s*or\s*\})[\s$.,;]*)?", re.IGNORECASE)
_HEDGE_RE = re.compile(r"\bor\b|\beither\b|\\lor\b|\bmaybe\b|\bperhaps\b", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)|\n|;\s|,\s+(?=[A-Za-z]{2,}\b)(?![^()\[\]{}]*[)\]}])")
_INLINE_MATH_RE = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_IS_RE = re.compile(r"(?:^|\s)(?:is|equals|are|gives)\s+")
# Every pattern here runs on model output: they are linear, or run on bounded text (no catastrophic backtracking).
MAX_STATEMENT_CHARS = 500  # an explicit final statement is read this far after its anchor
MAX_LINE_CHARS = 2_000  # the tail of the last line that is read for a final answer
MAX_LITERAL_CHARS = 300  # longer answers are never literals
# a bare "=" or "==", not part of "<=", ">=", "!=", ":=" or an arrow "=>"
_EQUALS_RE = re.compile(r"(?<![<>!:=\\])==?(?![=>])")
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`"}
_SPACING_RE = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~|\\left|\\right|\\displaystyle|\\mathrm\{\s*\}")
_WRAPPER_RE = re.compile(r"^\\(?:boxed|fbox|text|textbf|mathrm|mathbf|mbox)\s*\{(.*)\}$", re.DOTALL)
_VARIABLE_PREFIX_RE = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*(?:=|:)\s*")
_UNIT_TEXT_RE = re.compile(r"\\(?:text|mbox|mathrm|textrm|operatorname)\s*\{\s*[A-Za-z][A-Za-z .]*\}$")
_DEGREE_RE = re.compile(r"(?:\^\s*\{?\\circ\}?|\u00b0|\\degree)$")
_UNIT_WORDS_RE = re.compile(r"\s+([A-Za-z]+\.?(?:\s+[A-Za-z]+\.?)?)$")
_NOT_UNITS = {"or", "and", "not", "maybe", "perhaps", "probably", "possibly", "either", "plus", "minus", "times",
              "over", "divided", "by", "squared", "cubed", "percent"}
_CURRENCY_RE = re.compile(r"^(?:\\\$|\$|\u20ac|\u00a3|USD\s*)")
_INTEGER_RE = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)")
_DECIMAL_RE = re.compile(r"[+-]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)\.\d+|\.\d+)")
_LATEX_FRACTION_RE = re.compile(r"([+-]?)\\[dt]?frac\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))")
_SLASH_FRACTION_RE = re.compile(r"([+-]?\d+)\s*/\s*(\d+)")
_PERCENT_RE = re.compile(r"(.*?)\s*(?:\\%|%|\\text\{\s*percent\s*\}|\s+percent)$", re.DOTALL)
_CHOICE_RE = re.compile(r"^\(?\s*([A-E])\s*\)?$")
_OPTION_RE = re.compile(r"\(([A-E])\)")


@dataclass(frozen=True)
class FinalAnswer:
    text: str  # the final answer: the last side of a chain of equalities in what was written, else all of it
    boxed: bool
    hedged: bool = False  # several candidates, a negation or a contradictory chain: wrong whatever the text
    written: str = ""  # the box content or the end of the final statement as written (for equation truths)

    def __post_init__(self) -> None:
        if not self.written:
            object.__setattr__(self, "written", self.text)


@dataclass(frozen=True)
class Literal:
    value: Fraction
    kind: str  # "integer" | "decimal" | "fraction" | "percent"
    canonical: bool  # integer as integer, fraction in lowest terms with a denominator > 1, any decimal / percent
    text: str  # the normalised spelling


def answer_region(response: str) -> str:
    """The part of a response that holds the final answer: the text after the last `</think>` when present."""
    index = response.rfind(THINK_END)
    return response[index + len(THINK_END) :] if index >= 0 else response


def boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every closed `\\boxed{...}` / `\\fbox{...}`, in one linear pass over the text."""
    spans = []
    for match in _BOX_RE.finditer(text):
        depth, position = 1, match.end()
        while position < len(text) and depth:
            char = text[position]
            depth += 1 if char == "{" else -1 if char == "}" else 0
            position += 1
        if depth == 0:
            spans.append((match.start(), position, text[match.end() : position - 1]))
    return spans


def equation_sides(text: str) -> list[str]:
    """The sides of a chain of equalities outside any brackets ("73 - 6 = 67" -> ["73 - 6", "67"]); [text] when
    there is no "=" (`\\frac{a=1}{2}`, "<=", "!=" do not split)."""
    if "=" not in text:
        return [text]
    depth, depths = 0, []
    for char in text:
        depth = max(depth - 1, 0) if char in ")]}" else depth
        depths.append(depth)
        depth += 1 if char in "([{" else 0
    cuts = [match for match in _EQUALS_RE.finditer(text) if depths[match.start()] == 0]
    if not cuts:
        return [text]
    bounds = [0, *(point for match in cuts for point in (match.start(), match.end())), len(text)]
    return [text[bounds[i] : bounds[i + 1]].strip() for i in range(0, len(bounds), 2)]


def _same_value(a: Literal, b: Literal) -> bool:
    return literals_equal(a, b) or literals_equal(b, a)


def _answer_of(written: str, *, boxed: bool, hedged: bool) -> FinalAnswer | None:
    """The final answer of a box's content or a final statement: the last side of a chain of equalities ("shown
    working" before it is fine), hedged when two sides are different numbers ("66 = 67"); None when the last side
    is empty ("73 - 6 =")."""
    sides = equation_sides(written)
    answer = sides[-1].strip()
    if not answer.rstrip(".,;").strip():
        return None
    if len(sides) > 1:
        literal = parse_literal(answer)
        others = [parse_literal(side) for side in sides[:-1]]
        if literal is not None and any(other is not None and not _same_value(other, literal) for other in others):
            hedged = True
    return FinalAnswer(answer, boxed=boxed, hedged=hedged, written=written)


def _statement_end(text: str) -> str:
    """The text up to the end of its first sentence (a period before whitespace, a newline, "; ", ", so")."""
    end = _SENTENCE_END_RE.search(text)
    return text[: end.start()] if end else text


def final_answer(response: str, *, require_boxed: bool = False, max_chars: int = 20_000) -> FinalAnswer | None:
    """The final answer of a response under the answer policy (module doc); None when there is none."""
    region = answer_region(response)[-max_chars:]
    spans = boxed_spans(region)
    if spans:
        start, end, content = spans[-1]
        if not content.strip():
            return None  # an empty final box is a non-answer (no fallback to the text before it)
        # "\\boxed{66} or \\boxed{67}": boxes joined by a bare connective are candidates, not a correction
        joined = len(spans) > 1 and bool(_CONNECTIVE_RE.fullmatch(region[spans[-2][1] : start]))
        hedged = (joined and spans[-2][2].strip() != content.strip()) or bool(_HEDGE_RE.search(content))
        return _answer_of(content.strip(), boxed=True, hedged=hedged)
    if require_boxed:
        return None
    region = _EMPHASIS_RE.sub(r"\2", region)
    anchors = list(_ANCHOR_RE.finditer(region))
    if anchors:
        anchor = anchors[-1]
        statement = _statement_end(region[anchor.end() : anchor.end() + MAX_STATEMENT_CHARS]).strip()
        negated = bool(_NEGATED_ANCHOR_RE.search(anchor.group(0))) or bool(_NEGATION_RE.search(statement))
        if not statement:
            return None
        return _answer_of(statement, boxed=False, hedged=negated or bool(_HEDGE_RE.search(statement)))
    lines = [line.strip() for line in region.strip().splitlines() if line.strip()]
    if not lines:
        return None
    line = lines[-1][-MAX_LINE_CHARS:]
    maths = list(_INLINE_MATH_RE.finditer(line))
    if maths:
        candidate = next(group for group in maths[-1].groups() if group is not None)
    said = None
    if not maths:
        candidate = line
        said = next(reversed(list(_IS_RE.finditer(candidate))), None)  # the last "is" of the line
        if said:
            candidate = candidate[said.end() :]
    candidate = candidate.strip()
    stated = maths or said or len(equation_sides(candidate)) > 1
    if not stated and not re.search(r"[\d\\]", candidate) and len(candidate.split()) > 1:
        return None  # a last line of prose without a number or LaTeX states no answer ("I do not know.")
    answer = _answer_of(candidate.rstrip(".,;").strip(), boxed=False, hedged=False)
    # a hedge or negation in the answer itself; words before a shown result are not one ("Either way, 2 + 3 = 5")
    if answer is not None and (_HEDGE_RE.search(answer.text) or _NEGATION_RE.search(answer.text)):
        answer = replace(answer, hedged=True)
    return answer


def normalise_symbols(text: str) -> str:
    """Unicode minus and times signs as ASCII, LaTeX spacing removed."""
    for sign in _MINUS_SIGNS:
        text = text.replace(sign, "-")
    for sign in _TIMES_SIGNS:
        text = text.replace(sign, "*")
    return _SPACING_RE.sub(" ", text).replace("{,}", ",")


def strip_answer(text: str) -> str:
    """An answer without its dressing: `$`, quotes, wrappers (`\\boxed`, `\\text`), `x =`, units, trailing
    punctuation."""
    text = normalise_symbols(text).strip()
    for _ in range(4):  # a few layers: "$\\boxed{x = 3}$."
        before = text
        text = text.strip().rstrip(".,;").strip()
        if text.endswith("!") and not re.search(r"[\d)}]!$", text):  # "67!" is a factorial, not an exclamation
            text = text[:-1].strip()
        if text.startswith("$") and text.endswith("$") and len(text) > 1:
            text = text.strip("$").strip()
        if len(text) > 1 and _QUOTES.get(text[0]) == text[-1]:
            text = text[1:-1].strip()  # quotes are dressing too: 'The answer is "67".'
        wrapped = _WRAPPER_RE.match(text)
        if wrapped:
            text = wrapped.group(1).strip()
        text = _VARIABLE_PREFIX_RE.sub("", text, count=1)
        text = _CURRENCY_RE.sub("", text).strip()
        text = _UNIT_TEXT_RE.sub("", text).strip()
        text = _DEGREE_RE.sub("", text).strip()
        words = _UNIT_WORDS_RE.search(text)
        if words and not any(word.rstrip(".").lower() in _NOT_UNITS for word in words.group(1).split()):
            text = text[: words.start()].strip()
        if text == before:
            break
    return text


def parse_literal(text: str) -> Literal | None:
    """A number written as a literal (integer, decimal, fraction, percentage; possibly negative, with thousands
    separators), or None for anything else, an expression with an operator in particular. Never evaluates."""
    if len(text) > MAX_LITERAL_CHARS:
        return None
    text = strip_answer(text)
    if text.startswith("(") and text.endswith(")") and text.count("(") == 1:
        text = text[1:-1].strip()  # "(67)" but not a tuple or "(73 - 6)", which fail below
    percent = _PERCENT_RE.fullmatch(text)
    if percent and percent.group(1).strip():
        inner = parse_literal(percent.group(1))
        if inner is None or inner.kind == "percent":
            return None
        return Literal(inner.value, "percent", True, inner.text + "%")
    compact = text.replace(" ", "")
    if _INTEGER_RE.fullmatch(compact):
        value = int(compact.replace(",", ""))
        return Literal(Fraction(value), "integer", True, str(value))
    if _DECIMAL_RE.fullmatch(compact):
        value = Fraction(compact.replace(",", ""))
        return Literal(value, "decimal", True, compact.replace(",", ""))
    fraction = _LATEX_FRACTION_RE.fullmatch(compact) or _SLASH_FRACTION_RE.fullmatch(compact)
    if fraction:
        if fraction.re is _LATEX_FRACTION_RE:
            sign, num_braced, num_digit, den_braced, den_digit = fraction.groups()
            numerator, denominator = int(num_braced or num_digit), int(den_braced or den_digit)
        else:
            sign, numerator, denominator = "", int(fraction.group(1)), int(fraction.group(2))
        if denominator == 0:
            return None
        value = Fraction(numerator, denominator) * (-1 if sign == "-" else 1)
        reduced = abs(numerator) != 0 and denominator > 1 and Fraction(abs(numerator), abs(denominator)).denominator == abs(denominator)
        spelling = f"{'-' if value < 0 else ''}{abs(numerator)}/{abs(denominator)}"  # as written, not reduced
        return Literal(value, "fraction", reduced, spelling)
    return None


def literals_equal(answer: Literal, gold: Literal, *, integer_only: bool = False) -> bool:
    """Whether a literal answer states the literal ground truth (module doc: the literal rules)."""
    if integer_only and answer.kind != "integer":
        return False
    if answer.text == gold.text and answer.kind == gold.kind:
        return True  # written exactly as the ground truth (e.g. an unreduced fraction the data set keeps)
    if not answer.canonical:
        return False
    if answer.kind == "percent" or gold.kind == "percent":
        # "50%" states 50% whether the truth is written 50, 50% or 0.5
        candidates = {answer.value, answer.value / 100} if answer.kind == "percent" else {answer.value}
        golds = {gold.value, gold.value / 100} if gold.kind == "percent" else {gold.value}
        return bool(candidates & golds)
    if answer.value == gold.value:
        return True
    if gold.kind == "decimal" and answer.kind == "fraction":
        # a fraction whose decimal the truth rounds ("1/3" for "0.333")
        places = len(gold.text.split(".")[1])
        return round(answer.value, places) == gold.value
    return False


# --------------------------------------------------------------------------------- copying the question


_OP_CANON = [
    (re.compile(r"\\(?:times|cdot|ast)\b"), "*"),
    (re.compile(r"\\div\b"), "/"),
    (re.compile(r"\\[dt]frac\b"), r"\\frac"),
    (re.compile(r"\\[dt]binom\b"), r"\\binom"),
    (re.compile(r"\\(?:left|right|displaystyle)\b|\$|\\[,;:! ]"), " "),
    (re.compile(r"(?<!\w)\s+|\s+(?!\w)"), ""),  # spaces go, except between two words ("is 73")
]
_OPERAND = r"(?:\d+(?:\.\d+)?|[A-Za-z])"
_BINARY_RE = re.compile(rf"(?<![\w.]){_OPERAND}[-+*/^]{_OPERAND}(?![\w.])")
_MACRO_RE = re.compile(r"\\(?:frac|binom|sqrt)(?:\[[^\]]*\])?\{[^{}]*\}(?:\{[^{}]*\})?")
_POWER_RE = re.compile(rf"{_OPERAND}\^\{{[^{{}}]*\}}|{_OPERAND}!")
# a function applied to a number, however bracketed: "\\sin 45^\\circ", "\\sin(45^{\\circ})", "\\log_2 64", "\\log_{2}(64)"
_FUNCTION_RE = re.compile(
    r"\\(sin|cos|tan|cot|sec|csc|arcsin|arccos|arctan|log|ln|exp)(?:_\{?(\w+)\}?)?[\s({]*(\d+(?:\.\d+)?)(?!\d)"
)


def function_applications(text: str) -> set[tuple[str, str, str]]:
    """(function, base, argument) of every elementary function applied to a number in the text."""
    return {(name, base or "", argument) for name, base, argument in _FUNCTION_RE.findall(normalise_symbols(text))}


def canonical_math(text: str) -> str:
    """Spacing, `$`, operator spellings (unicode, `\\times`, `\\cdot`, `\\div`) and macro variants unified."""
    text = normalise_symbols(text)
    for pattern, replacement in _OP_CANON:
        text = pattern.sub(replacement, text)
    return text


def problem_operations(problem: str) -> set[str]:
    """The question's operations on its operands, canonical: `73-6`, `\\binom{5}{2}`, `2^{10}`, `5!`, and the
    reordered forms of each binary one (`-6+73` for `73-6`, `6*8` for `8*6`)."""
    text = canonical_math(problem)
    operations: set[str] = set()
    for pattern in (_MACRO_RE, _POWER_RE):
        operations.update(match.group(0) for match in pattern.finditer(text))
    # overlapping pairs of a chain: "5+3*7" gives "5+3" and "3*7"
    for start in range(len(text)):
        match = _BINARY_RE.match(text, start)
        if match and (start == 0 or not (text[start - 1].isalnum() or text[start - 1] == ".")):
            pair = match.group(0)
            operations.add(pair)
            left, operator, right = re.fullmatch(rf"({_OPERAND})([-+*/^])({_OPERAND})", pair).groups()
            if operator in "+*":
                operations.add(f"{right}{operator}{left}")
            if operator == "-":
                operations.add(f"-{right}+{left}")
            if operator == "+":
                operations.add(f"{left}-(-{right})")
    return {operation for operation in operations if any(char.isdigit() for char in operation)}


def copies_problem_operation(answer: str, problem: str, golds: Sequence[str] = ()) -> bool:
    """True when the answer contains one of the question's operations (`problem_operations`, or a function applied
    to one of its numbers, `function_applications`) that no ground truth contains: it restates the question."""
    text = canonical_math(answer)
    gold_texts = [canonical_math(gold) for gold in golds]
    gold_functions = set().union(*(function_applications(gold) for gold in golds)) if golds else set()
    if (function_applications(problem) - gold_functions) & function_applications(answer):
        return True
    for operation in problem_operations(problem):
        if any(operation in gold for gold in gold_texts):
            continue
        for match in re.finditer(re.escape(operation), text):
            before = text[match.start() - 1] if match.start() else ""
            after = text[match.end()] if match.end() < len(text) else ""
            if not (before.isalnum() or before == ".") and not (after.isalnum() or after == "."):
                return True
    return False


# --------------------------------------------------------------------------------- multiple choice


def choice_letter(answer: str) -> str | None:
    """"C", "(C)", "\\text{(C)}", "\\textbf{(C)}" -> "C"; None when the answer is not one choice letter."""
    match = _CHOICE_RE.fullmatch(strip_answer(answer).replace(" ", ""))
    return match.group(1) if match else None


def choice_options(problem: str) -> dict[str, str]:
    """The options of a multiple-choice question, letter -> option text ("(A) 12 \\qquad (B) 15" style)."""
    matches = list(_OPTION_RE.finditer(problem))
    options = {}
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(problem)
        text = problem[match.end() : end]
        text = re.sub(r"\\(?:qquad|quad|textbf|mathrm|text)\b|[{}$]", " ", text).strip()
        options.setdefault(match.group(1), text)
    return options


# --------------------------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class Judgement:
    """The strict grader's decision on one response, before any math-verify call.

    `correct` is None when equivalence must be decided by math-verify on `prediction` (a non-literal truth).
    """

    status: str
    correct: bool | None
    extracted: str | None
    prediction: str | None = None


def judge(
    response: str,
    problem: str,
    golds: Sequence[str],
    *,
    require_boxed: bool = False,
    integer_only: bool = False,
    max_chars: int = 20_000,
) -> Judgement:
    """Apply the answer policy (module doc) to one response. Statuses: ok, no_answer, hedged, not_literal,
    restated_problem; an "ok" with `correct=None` asks math-verify whether `prediction` equals a gold."""
    answer = final_answer(response, require_boxed=require_boxed, max_chars=max_chars)
    if answer is None:
        return Judgement("no_answer", False, None)
    # an equation as the truth ("y = 2x + 3") is compared with the whole answer as written, not its last side
    text = answer.written if any(len(equation_sides(gold)) > 1 for gold in golds) else answer.text
    if answer.hedged:
        return Judgement(STATUS_HEDGED, False, text)
    gold_literals = [parse_literal(gold) for gold in golds]
    if gold_literals and all(literal is not None for literal in gold_literals):
        literal = parse_literal(text)
        if literal is None:
            letter = choice_letter(text)
            if letter is not None:  # a choice letter naming the option that holds the truth
                option = choice_options(problem).get(letter)
                option_literal = parse_literal(option) if option else None
                if option_literal is not None:
                    correct = any(literals_equal(option_literal, gold) for gold in gold_literals)
                    return Judgement("ok", correct, text)
            status = STATUS_RESTATED if copies_problem_operation(text, problem) else STATUS_NOT_LITERAL
            return Judgement(status, False, text)
        correct = any(literals_equal(literal, gold, integer_only=integer_only) for gold in gold_literals)
        return Judgement("ok", correct, text)
    if integer_only:
        raise ValueError(f"integer_only grading needs integer ground truths, got {list(golds)!r}")
    if copies_problem_operation(text, problem, golds):
        return Judgement(STATUS_RESTATED, False, text)
    gold_letters = {choice_letter(gold) for gold in golds} - {None}
    letter = choice_letter(text)
    if gold_letters and letter is not None:
        return Judgement("ok", letter in gold_letters, text)
    return Judgement("ok", None, text, prediction=f"\\boxed{{{text}}}")


def is_literal_answer(text: str | None) -> bool:
    """Whether an extracted answer is a number literal (for the hacking monitor)."""
    return text is not None and parse_literal(text) is not None
