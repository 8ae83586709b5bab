"""The strict grader's answer policy: what a response's final answer is, and when it counts (docs/METHOD.md, Grading).

Pure string functions; no model output is ever evaluated:

* The final answer is the content of the last closed `\\boxed{}` in the answer region (after the last `</think>`,
  before an end-of-turn token such as `<|im_start|>`), unless an explicit final statement follows that box. Boxes
  joined only by connectives (`\\boxed{2} and \\boxed{5}`) are one list answer. Without a box (and unless boxes are
  required) it is the last explicit final statement ("the answer is X", "answer: X", "#### X", "X is the answer"),
  else the last line holding a number or math (a display block counts as one line; closing prose after it is
  skipped): in its last such sentence, what follows the subject ("The volume of the box is 60"), else its last
  `$...$`, else its one number ("there are 12 ways"). Of a chain of equalities the last side is the answer
  (`\\boxed{73 - 6 = 67}` answers 67), of `A \\approx B` the exact side; a truth that is itself an equation or a
  list is compared with the whole answer.
* A box left open is no final answer: a response that stops inside an unclosed `\\boxed{` ("... so the answer is
  \\boxed{12") has none ("no_answer"), whatever it wrote before that box; it was cut off while stating its answer.
* Answer first, explanation after: without a box (and unless boxes are required), a bare answer alone on the first
  line ("42", "$42$", "x = 42") followed by a line that explains it ("Because ...", "Since ...", "Explanation:",
  "Reason:", "Proof:") is the answer, unless the explanation states an answer of its own ("... the answer is 43":
  the rules above read the response) or ends with a different bare number (hedged); "probably" or "maybe" in the
  explanation hedges it.
* Hedged or negated answers are wrong: several different answers to a single-valued truth (`\\boxed{66} or
  \\boxed{67}`, "66 or 67", `\\boxed{66} \\text{or} 67`, two bare numbers on the last two lines), "maybe", "not 67",
  `\\neq 67`, a chain equating different numbers ("66 = 67"). A list is the answer when the truth is a list, and
  `\\neq` is a relation when the truth is one.
* When the ground truth is a literal (integer, decimal, fraction, mixed number, percentage), the answer must be a
  literal too and equal in value. An expression that evaluates to the truth (`73 - 6`, `8 \\times 7`,
  `\\dbinom{5}{2}`, `\\frac{134}{2}`, `67+0`) is not an answer, whatever its spelling. Integers must be written as
  integers, fractions in lowest terms (unless written exactly as the ground truth); a decimal, a percentage, a
  mixed number (`3 1/2`) or exact scientific notation (`1.2 \\times 10^{6}`) equal in value counts. A number of the
  question restated in another form when the question asks for a conversion ("Express 3/8 as a decimal": `3/8`) is
  "restated_problem". The arithmetic task (`integer_only`) accepts integer literals only.
* Percentages: a percent sign (`%`, `\\%`, "percent", "pct", "per cent") applies to the whole number before it, in
  every number form ("1 1/2%" is (1 1/2)/100, never 1 + 1/2%). When the question asks for a percentage ("What
  percent ...", "the percentage increase", "(in %)"; "What is 25% of 80?" does not) or the truth is written as
  one, a number and the same number with the sign state the same percentage: 25 and 25% both answer 25 or 25%
  (and 50% answers 0.5). Otherwise the sign means "of 100": "25%" is 0.25, right for 0.25 and wrong for 25.
* Exact forms: an integer power written out (`10^3`, `2^{10}`, `10^{-3}`) counts for an integer or decimal truth
  of equal value (a fraction in lowest terms already counts for a decimal truth: `\\frac{1}{2}` for 0.5), unless
  the question is about powers ("10 cubed", "to the 10th power", any `^`), asks for the number written out ("as an
  integer", "as a decimal", "simplify", "evaluate"), or has the power's base among its numbers ("32^2" for "What
  is 32 * 32?"): then it restates the computation ("not_literal", or "restated_problem" when it copies the
  question's power). An identity power (`67^1`) or a bracketed base (`(-2)^3`) is never one.
* Word choices: a truth that is a yes/no-style word ("Yes", "No", "True", "neither", "No solution") or a word the
  question offers with "or" ("even, odd, or neither", "Alice or Bob") is compared as words, ignoring case,
  `\\text{}` and a final period: `\\boxed{No}` and "The answer is no." answer a yes-or-no question (the word "No"
  is the choice, not a negation); "not no", "Yes or no" and "maybe yes" stay hedged.
* Tuples as named assignments: for a tuple truth `(3, 2)`, an answer assigning one value to each of as many
  distinct variables (`x = 3, y = 2`, "$x = 3$ and $y = 2$", joined boxes) is the tuple of those values, ordered as
  the question names the variables (a tuple "the ordered pair $(b, a)$" or a list "solve for $x$ and $y$"), else
  alphabetically (x before y, x_2 before x_10); the order the answer writes them in does not matter. A truth
  written as assignments (`x = 3, y = 2`) accepts the tuple `(3, 2)` the same way.
* Otherwise (expressions, intervals, tuples, sets, letters) math-verify decides equivalence, but an answer that
  still contains an operation of the question on the question's operands (and the ground truth does not) is
  "restated_problem".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from fractions import Fraction

THINK_END = "</think>"

# Score.status values of the strict grader (besides ok / no_answer / timeout / error of the verifier)
STATUS_RESTATED = "restated_problem"  # the answer still contains the question's operation on its operands
STATUS_NOT_LITERAL = "not_literal"  # the ground truth is a literal; the answer is an expression
STATUS_HEDGED = "hedged"  # several candidates, or a negated statement

# Why an answer is hedged (FinalAnswer.hedges). The first and the last depend on the truth, so `judge` rules on them.
HEDGE_ALTERNATIVES = "alternatives"  # several answers ("66 or 67", joined boxes): an answer when the truth is a list
HEDGE_SEVERAL = "several"  # boxes joined by "and" / commas: a list, or the parts of one tuple ("x = 3", "y = 2")
HEDGE_UNCERTAIN = "uncertain"  # "maybe", "perhaps"
HEDGE_NEGATION = "negation"  # "not 67", "isn't"
HEDGE_CONTRADICTION = "contradiction"  # a chain equating different numbers ("66 = 67")
HEDGE_NOT_EQUAL = "not_equal"  # "\\neq 67": a negation, unless the truth is itself a "\\neq" relation

_MINUS_SIGNS = "\u2212\u2012\u2013\u2014\ufe63\uff0d"
_TIMES_SIGNS = "\u00d7\u22c5\u00b7\u2217\u2715\u2716"
_THIN_SPACES = "\u00a0\u2007\u2009\u200a\u202f"
# Every pattern here runs on model output: they are linear, or run on bounded text (no catastrophic backtracking).
MAX_STATEMENT_CHARS = 500  # an explicit final statement is read this far after its anchor
MAX_LINE_CHARS = 2_000  # the tail of the last line that is read for a final answer
MAX_LITERAL_CHARS = 300  # longer answers are never literals
MAX_PROSE_SKIPPED = 3  # closing lines / sentences without a number skipped to reach the answer above them
MAX_TUPLE_CHARS = 1_000  # longer answers or truths are never read as tuples or named assignments
MAX_EXPONENT = 100  # scientific notation beyond 10^100 is not read as a literal (no huge integers from a bomb)

# a chat template's end-of-turn marker: what follows is a hallucinated next turn, not this answer
_END_OF_TURN_RE = re.compile(r"<\|(?:im_end|im_start|endoftext|eot_id|end_of_text|end|user|assistant|system)\|>|</s>")
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANCHOR_RE = re.compile(
    r"(?:final\s+answer|the\s+answer|answer|result)\s*(?:is|:|=|equals|would\s+be|will\s+be)(?:\s*:)?\s*"
    r"|(?:final\s+answer|answer|result)\s+is\s*n[o']?t\b|answer\s+isn't\b|####\s*",
    re.IGNORECASE,
)
_NEGATED_ANCHOR_RE = re.compile(r"n[o']?t\b|isn't\b", re.IGNORECASE)
# a final statement strong enough to overrule an earlier box ("... \\boxed{255} ... The final answer is $10,455$.")
_FINAL_ANCHOR_RE = re.compile(r"final\s+answer\s*(?:is|:)|the\s+(?:final\s+)?answer\s+is|####", re.IGNORECASE)
# "12 is the answer.", "$x \\geq 5$ is the solution."
_IS_THE_ANSWER_RE = re.compile(
    r"\s+(?:is|was|would\s+be|will\s+be)\s+(?:the|our|my)\s+(?:final\s+|correct\s+|required\s+)?(?:answer|solution)\b",
    re.IGNORECASE,
)
# the verb between a final statement's subject and its value: "the smallest k is 12", "there are 12 ways"
_COPULA_RE = re.compile(
    r"(?:^|\s)(?:is|are|was|were|equals|equal\s+to|gives|yields|becomes|comes\s+to|totals|will\s+be|would\s+be)\s+"
    r"|\b(?:it|that|there|here|which)'s\s+|\bwe\s+(?:get|have|obtain|find)\s+",
    re.IGNORECASE,
)
# markdown emphasis around words ("**Answer:** **67**"), not a Python-style power ("2**10")
_EMPHASIS_RE = re.compile(r"(?<![\w)])(\*\*|__)(?=\S)(.{1,200}?)(?<=\S)\1(?![\w(])")
_ALTERNATIVE_RE = re.compile(r"\bor\b|\beither\b|\\lor\b|\\vee\b", re.IGNORECASE)
_UNCERTAIN_RE = re.compile(r"\b(?:maybe|perhaps|possibly|probably|might)\b", re.IGNORECASE)
_NEGATION_RE = re.compile(r"\b(?:not|never|cannot)\b|n't\b|^no\b", re.IGNORECASE)
# "\neq", "\ne", "≠", "!=" (not the factorial in "5!=120"), "\notin"
_NOT_EQUAL_RE = re.compile(r"\\neq?(?![A-Za-z])|\\not(?:in)?(?![A-Za-z])|\u2260|\u2209|(?<![\d)!])!=")
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)|\n|;\s|,\s+(?=[A-Za-z]{2,}\b)(?![^()\[\]{}]*[)\]}])")
_INLINE_MATH_RE = re.compile(r"\$\$(.+?)\$\$|(?<![\\$])\$((?:[^$\\]|\\.)+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_DISPLAY_TOKEN_RE = re.compile(r"\$\$|\\\[|\\\]")
_CONTENT_RE = re.compile(r"[\d\\$]")  # a number or math: what a line stating an answer holds
# a sentence boundary in prose ("... conditions. I hope it is correct."), looked for outside math only
_SENTENCE_BREAK_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\\$])|(?<=\$\$|\\\])\s+(?=[A-Z][a-z])")
_CLAUSE_BREAK_RE = re.compile(r"[,;:]\s+")
# a trailing remark after the answer: "12 (since 3 * 4 = 12)", "12 because ...", "1/3 (approximately 0.33)";
# "which" / "where" start one only when no number follows ("12, which is prime"; not "10 which is 1,000.99")
_REMARK_RE = re.compile(
    r"\s*\((?:since|because|as|from|by|using|via|which|where|that|i\.e\.|e\.g\.|note|see|check|rounded|approx\.?|"
    r"approximately|about|roughly|or\s+equivalently|in\s+lowest\s+terms|simplified)\b[^()]*\)\s*[.!]?\s*$"
    r"|,?\s+(?:since|because|given\s+that)\s|,?\s+(?:which|where)\s(?=\D*$)",
    re.IGNORECASE,
)
# joins boxes into one list answer: only connectives, punctuation, spacing and math delimiters between them
_BOX_JOINER_RE = re.compile(
    r"(?:[\s,;/|&.$]|\\quad|\\qquad|\\[,;:! ]|\\&|\\\[|\\\]|\\\(|\\\)|\\text\s*\{\s*(?:and|or|also|,)?\s*\}"
    r"|\band\b|\bor\b|\balso\b|\\lor\b|\\vee\b|\\land\b|\\wedge\b)*",
    re.IGNORECASE,
)
# "\\boxed{67} \\text{or} 66": a candidate after the last box
_TAIL_ALTERNATIVE_RE = re.compile(
    r"(?:[\s,;.$(]|\\quad|\\qquad|\\[,;:! ]|\\\)|\\\]|\\text\s*\{)*(?:or|either|\\lor|\\vee)\b", re.IGNORECASE
)
_LIST_CONNECTIVE_RE = re.compile(
    r"\\text\s*\{\s*(?:and|or|,)\s*\}|\\quad|\\qquad|;|\s+(?:and|or)\s+|,\s*(?:and|or)\s+", re.IGNORECASE
)
_EQUALS_RE = re.compile(r"(?<![<>!:=\\])==?(?![=>])")  # a bare "=" or "==", not "<=", ">=", "!=", ":=", "=>"
_APPROX_RE = re.compile(r"\\approx(?![A-Za-z])|\u2248")
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`"}
_SPACING_RE = re.compile(
    r"\\[,;: ]|\\quad\b|\\qquad\b|~|\\left\b|\\right\b|\\displaystyle\b|\\mathrm\{\s*\}|[" + _THIN_SPACES + "]"
)
_FRAC_VARIANT_RE = re.compile(r"\\[dtc]frac(?![A-Za-z])")
_WRAPPER_RE = re.compile(
    r"\\(?:boxed|fbox|text|textbf|textnormal|textrm|textit|textsf|texttt|mathrm|mathbf|mathit|mathsf|mathnormal"
    r"|mbox|hbox|operatorname|emph|underline)\s*\{"
)
_MATH_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_VARIABLE_PREFIX_RE = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*(?:=|:)\s*")
_SQUARED = r"(?:\s?(?:\^\s*\{?\s*[23]\s*\}?|[\u00b2\u00b3]))?"
_UNIT_TEXT_RE = re.compile(
    r"\\(?:text|textnormal|textrm|textbf|textit|textsf|mbox|hbox|mathrm|mathit|mathbf|operatorname)\s*"
    r"\{\s*(?!(?:percent|percentage|pct)\b)[A-Za-z][A-Za-z .'/-]*\}" + _SQUARED + "$"
)
_DEGREE_RE = re.compile(
    r"(?:\^\s*\{?\s*\\circ\s*\}?|\u00b0|\\degree\b|\\circ\b)\s*(?:[CF]|\\(?:text|mathrm)\s*\{\s*[CF]\s*\})?$"
)
# units written right after a number ("12m²", "5 km/h"); words of two letters or more are handled as unit words
_UNIT_SUFFIX_RE = re.compile(
    r"(?<=[\d}])\s?(?:km/h|m/s|cm/s|ft/s|mph|kph|mm|cm|km|mi|ft|yd|in|mg|kg|lbs?|oz|ms|sec|min|hrs?|mL|ml|kJ|kW|kHz"
    r"|MHz|GHz|Hz|kPa|Pa|atm|mol|kcal|cal|KB|MB|GB|TB|px|m|g|s|h|L|l|K|N|J|W|V)" + _SQUARED + "$"
)
# a unit word glued to a number ("10weeks"): four letters or more with a vowel, so that a product of variables
# ("2xy", "6ab") or a function name ("2sinh") is never taken for a unit
_GLUED_WORD_RE = re.compile(r"(?<=\d)([A-Za-z]{4,})$")
_MATH_WORDS = frozenset({"sinh", "cosh", "tanh", "coth", "sech", "csch", "arcsin", "arccos", "arctan", "sqrt", "frac",
                         "cdot", "times", "infty", "text"})
_UNIT_WORDS_RE = re.compile(r"\s+([A-Za-z]+\.?(?:\s+[A-Za-z]+\.?){0,2})$")
_SINGLE_LETTER_UNITS = frozenset("mgshlLKNJWV")
# words after a number that change its value or make it an expression: never dropped as units
_NOT_UNITS = frozenset({
    "or", "and", "not", "maybe", "perhaps", "probably", "possibly", "either", "plus", "minus", "times", "over",
    "divided", "by", "squared", "cubed", "percent", "percentage", "pct", "to", "power", "root", "roots", "factorial",
    "choose", "mod", "modulo", "inverse", "pi", "e", "i", "hundred", "hundreds", "thousand", "thousands", "million",
    "millions", "billion", "billions", "trillion", "dozen", "dozens", "half", "halves", "third", "thirds", "quarter",
    "quarters", "fourth", "fourths", "fifth", "fifths", "sixth", "sixths", "seventh", "sevenths", "eighth",
    "eighths", "ninth", "ninths", "tenth", "tenths", "hundredth", "hundredths", "thousandth", "thousandths",
    "less", "more", "than", "least", "most", "about", "approximately", "roughly", "nearly", "almost", "under",
    "is", "are", "was", "were", "wrong", "incorrect", "false", "none", "if", "when", "unless", "then",
})
# a word right before a lone number that makes the statement something other than "the value is that number"
_QUALIFIERS = frozenset({
    "not", "no", "than", "about", "around", "roughly", "approximately", "nearly", "almost", "over", "under", "least",
    "most", "maybe", "perhaps", "between", "from", "to", "except", "without", "minus", "plus", "times", "above",
    "below", "exceeds", "exceed", "within", "up",
})
_CURRENCY_RE = re.compile(r"^(?:\\\$|\$|\u20ac|\u00a3|\u00a5|\u20b9|USD\s*|EUR\s*|US\\?\$)")
_TRAILING_CURRENCY_RE = re.compile(r"(?<=[\d}])\s?(?:\\\$|\$|\u20ac|\u00a3|\u00a5|USD|EUR)$")
_PERCENT_RE = re.compile(
    r"(.*?)\s*(?:\\%|%|\\text\{\s*\\?%\s*\}|\\text\{\s*(?:percent|percentage|pct|per\s+cent)\s*\}"
    r"|(?:percent|percentage|pct|per\s+cent)\.?)$",
    re.DOTALL | re.IGNORECASE,
)
_WHOLE = r"(?:[1-9]\d{0,2}(?:,\d{3})+|[1-9]\d{0,2}(?: \d{3})+|\d+)"  # an unsigned integer, thousands marked or not
_INTEGER_RE = re.compile(rf"[+-]?{_WHOLE}")
_DECIMAL_RE = re.compile(rf"[+-]?{_WHOLE}?\.\d+")
_DECIMAL_COMMA_RE = re.compile(r"[+-]?\d+,\d+")  # "1,22" and "0,111": a decimal comma (answers only)
_FRAC_ARG = r"(?:\{ ?([+-]?\d+) ?\}|(\d))"
_LATEX_FRACTION_RE = re.compile(rf"([+-]?)\\frac ?{_FRAC_ARG} ?{_FRAC_ARG}")
_SLASH_FRACTION_RE = re.compile(r"([+-]?)(\d+) ?/ ?(\d+)")
_MIXED_SLASH_RE = re.compile(rf"([+-]?)({_WHOLE}) (\d+) ?/ ?(\d+)")  # "3 1/2": the space is required ("31/2")
_MIXED_LATEX_RE = re.compile(rf"([+-]?)({_WHOLE}) ?\\frac ?{_FRAC_ARG} ?{_FRAC_ARG}")
_SCIENTIFIC_RE = re.compile(
    r"([+-]?)(\d+(?:\.\d+)?) ?(?:\\times|\\cdot|\*|x) ?10 ?\^ ?(?:\{ ?([+-]?\d+) ?\}|([+-]?\d+))"
    r"|([+-]?)(\d+(?:\.\d+)?)[eE]([+-]?\d+)"
)
# one number in a sentence of prose, with the letters glued to it ("12cm"; "AZYUK2A" is no number); a space
# continues it only before more digits ("12 345", "3 1/2")
_NUMBER_CHUNK_RE = re.compile(
    r"(?:(?<![\w)])[-+])?(?:\\\$|[$\u20ac\u00a3])?(?<![A-Za-z])\d(?:[\d,./]|\{,\}| (?=\d))*[A-Za-z\u00b2\u00b3]*"
)
_PERCENT_AFTER_RE = re.compile(r"\s?(?:\\%|%|percent\b|percentage\b|pct\b|per\s+cent\b)", re.IGNORECASE)
_OPERATOR_RE = re.compile(r"[=+*/^<>\u00f7]|\\(?:times|cdot|div|frac|sqrt|pm|le|ge|lt|gt)\b|\s-\s")
_CHOICE_RE = re.compile(r"^\(?\s*([A-E])\s*\)?$")
# "C. x = 42", "(C) 42": a choice letter followed by its option's text
_CHOICE_WITH_TEXT_RE = re.compile(r"^\(?([A-E])(?:\)|\.|:|\)\.)\s+(\S.*)$", re.DOTALL)
_OPTION_RE = re.compile(r"\(([A-E])\)")
# a question asking for a number in another form ("Express 3/8 as a decimal", "as a common fraction")
_ASKS_FORM_RE = re.compile(
    r"\b(?:as|to|into|in)\s+(?:an?\s+)?(?:(?:common|simple|proper|improper|reduced|mixed)\s+)?"
    r"(?:fraction|decimal|percent(?:age)?|mixed\s+number)s?\b|\bin\s+(?:decimal|fraction(?:al)?|percent(?:age)?)\s+form\b",
    re.IGNORECASE,
)
_ASKS_DECIMAL_RE = re.compile(
    r"\bas\s+a\s+decimal\b|\bin\s+decimal\s+form\b|\bdecimal\s+(?:form|notation|representation|expansion)\b"
    r"|\bto\s+the\s+nearest\s+(?:tenth|hundredth|thousandth|ten-thousandth)s?\b|\bdecimal\s+places?\b",
    re.IGNORECASE,
)
# a question asking for a percentage: "percent" / "percentage" that is not an operand's ("What is 25 percent of 80?"
# does not ask for one; "What percent of 80 is 20?" does), or "(in %)"
_PERCENT_WORD_RE = re.compile(r"\bper\s*cent(?:age)?s?\b|\(\s*(?:in\s+)?\\?%\s*\)|\bin\s+\\?%", re.IGNORECASE)
_OPERAND_BEFORE_RE = re.compile(r"[\d}]\s*\$?\s*$")
# an integer power written out ("10^3", "2^{10}", "10^{-3}"): an exact value, not evaluated
_POWER_LITERAL_RE = re.compile(r"([+-]?)([1-9]\d{0,5}) ?\^ ?(?:\{ ?([+-]?\d{1,3}) ?\}|(\d))")
# a question about powers ("10 cubed", "2 to the 10th power", "x^3"): a power answer restates it
_MENTIONS_POWER_RE = re.compile(
    r"\^|\*\*|\b(?:squared|cubed|powers?|exponents?|exponential|raised)\b"
    r"|\bto\s+the\s+(?:\w+(?:th|st|nd|rd)|second|third)\b",
    re.IGNORECASE,
)
# a question asking for the number written out ("Express your answer as an integer", "Simplify", "Evaluate")
_ASKS_LITERAL_RE = re.compile(
    r"\b(?:as|in|into)\s+(?:an?\s+)?(?:integer|whole\s+number|decimal|standard\s+form|expanded\s+form|simplest\s+form"
    r"|numerals?|digits)\b|\b(?:simplify|evaluate|decimal)\b",
    re.IGNORECASE,
)
# a named choice as the answer ("Yes", "\\text{neither}", "No solution"): words, no math
_WORD_ANSWER_RE = re.compile(r"[A-Za-z]{2,}(?:[ -][A-Za-z]+){0,3}")
# choices that need no question to name them (a yes/no or true/false truth); "No" among them is a choice, not a
# negation
_CHOICE_WORDS = frozenset({
    "yes", "no", "true", "false", "none", "neither", "both", "always", "never", "sometimes", "impossible",
    "possible", "not possible", "no solution", "no solutions", "no real solutions", "undefined", "does not exist",
    "dne", "even", "odd", "increasing", "decreasing", "convergent", "divergent", "converges", "diverges",
})
_WORD_MATH = frozenset({"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "pi", "infty", "inf", "sqrt",
                        "frac", "cdot", "times", "mod", "gcd", "lcm", "max", "min"})
_VARIABLE_NAME = r"[A-Za-z](?:_\{?\w+\}?)?"
_ASSIGNMENT_RE = re.compile(rf"({_VARIABLE_NAME})\s*=\s*(\S.*)", re.DOTALL)
# variables named in a list in the question: "x and y", "a, b, and c" (the order of a tuple's assignments)
_NAME_LIST_RE = re.compile(
    rf"(?<![\w\\]){_VARIABLE_NAME}(?:(?:\s*,\s*(?:and\s+)?|\s+and\s+){_VARIABLE_NAME})+(?![\w(])"
)
_NAME_SEPARATOR_RE = re.compile(r"\s*,\s*(?:and\s+)?|\s+and\s+")
# a line that starts an explanation of the answer on the line before it ("42\nBecause 6 * 7 = 42.")
_HEDGE_WORDS_RE = re.compile(r"\b(?:maybe|perhaps|possibly|probably|either|not)\b", re.IGNORECASE)
_UNSURE_RE = re.compile(
    r"\b(?:not\s+(?:sure|certain)|unsure|uncertain|(?:don't|do\s+not|cannot|can't)\s+(?:know|be\s+sure)"
    r"|guess(?:ed)?)\b",
    re.IGNORECASE,
)
_EXPLANATION_RE = re.compile(
    r"#*\s*(?:because|since|(?:(?:the|my|a)\s+)?(?:explanation|reason(?:ing)?|justification|proof)|why"
    r"|this\s+is\s+because|that(?:'s|\s+is)\s+because|here(?:'s|\s+is)\s+(?:why|how)|to\s+see\s+(?:this|why)"
    r"|check|verification)\b|#*\s*(?:solution|working|work)\s*:",
    re.IGNORECASE,
)
_QUESTION_NUMBER_RE = re.compile(
    r"[+-]?(?:\d+ ?)?\\frac ?(?:\{[^{}]{1,20}\}|\d) ?(?:\{[^{}]{1,20}\}|\d)(?: ?\\?%)?"
    r"|[+-]?\d+(?: \d+)? ?/ ?\d+(?: ?\\?%)?|[+-]?\d*\.\d+(?: ?\\?%)?|[+-]?\d+ ?\\?%"
)


@dataclass(frozen=True)
class FinalAnswer:
    text: str  # the final answer: the last side of a chain of equalities in what was written, else all of it
    boxed: bool
    hedges: tuple[str, ...] = ()  # why the answer is hedged (HEDGE_*), in the order found
    written: str = ""  # the box content or the final statement as written (for equation and list truths)
    parts: tuple[str, ...] = ()  # the contents of boxes joined into one list answer, when there are several

    def __post_init__(self) -> None:
        if not self.written:
            object.__setattr__(self, "written", self.text)

    @property
    def hedged(self) -> bool:
        """Hedged for a single-valued truth (a list truth excuses alternatives, a `\\neq` truth `\\neq`)."""
        return bool(self.hedges)


@dataclass(frozen=True)
class Literal:
    value: Fraction
    kind: str  # "integer" | "decimal" | "fraction" | "mixed" | "scientific" | "percent"
    canonical: bool  # integer as integer, fraction in lowest terms with a denominator > 1, any decimal / percent
    text: str  # the normalised spelling
    inner: str = ""  # for a percentage, the kind of the number before the sign ("1 1/2%": "mixed")


def answer_region(response: str) -> str:
    """The part of a response that holds the final answer: the text after the last `</think>` when present."""
    index = response.rfind(THINK_END)
    return response[index + len(THINK_END) :] if index >= 0 else response


def _this_turn(region: str) -> str:
    """The region up to the first end-of-turn marker that follows some text (a model that keeps generating past
    its turn writes a made-up next turn, "<|im_start|>user ...", which holds no answer of its own)."""
    for marker in _END_OF_TURN_RE.finditer(region):
        if region[: marker.start()].strip():
            return region[: marker.start()]
    return region


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


def ends_inside_box(text: str) -> bool:
    """Whether a `\\boxed{` / `\\fbox{` of the text is never closed: the text stops inside that box (one linear pass;
    braces are counted as `boxed_spans` counts them)."""
    openings = {match.end() - 1 for match in _BOX_RE.finditer(text)}
    if not openings:
        return False
    stack: list[bool] = []  # per open brace: whether it opens a box
    for index, char in enumerate(text):
        if char == "{":
            stack.append(index in openings)
        elif char == "}" and stack:
            stack.pop()
    return any(stack)


def _bracket_depths(text: str) -> list[int]:
    """The bracket depth at each character (an opening bracket counts from the next character on)."""
    depth, depths = 0, []
    for char in text:
        depth = max(depth - 1, 0) if char in ")]}" else depth
        depths.append(depth)
        depth += 1 if char in "([{" else 0
    return depths


def equation_sides(text: str) -> list[str]:
    """The sides of a chain of equalities outside any brackets ("73 - 6 = 67" -> ["73 - 6", "67"]); [text] when
    there is no "=" (`\\frac{a=1}{2}`, "<=", "!=" do not split)."""
    if "=" not in text:
        return [text]
    depths = _bracket_depths(text)
    cuts = [match for match in _EQUALS_RE.finditer(text) if depths[match.start()] == 0]
    if not cuts:
        return [text]
    bounds = [0, *(point for match in cuts for point in (match.start(), match.end())), len(text)]
    return [text[bounds[i] : bounds[i + 1]].strip() for i in range(0, len(bounds), 2)]


def _top_level_split(text: str, separator: str = ",") -> list[str]:
    """`text` split at each `separator` outside brackets, parts stripped and empty ones dropped."""
    depths = _bracket_depths(text)
    parts, start = [], 0
    for index, char in enumerate(text):
        if char == separator and depths[index] == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def _same_value(a: Literal, b: Literal) -> bool:
    return literals_equal(a, b) or literals_equal(b, a)


def _hedges_in(scope: str) -> tuple[str, ...]:
    """The hedges stated in the text an answer stands in (HEDGE_* constants, in a fixed order)."""
    found = []
    if _ALTERNATIVE_RE.search(scope):
        found.append(HEDGE_ALTERNATIVES)
    if _UNCERTAIN_RE.search(scope):
        found.append(HEDGE_UNCERTAIN)
    if _NEGATION_RE.search(scope.strip()):
        found.append(HEDGE_NEGATION)
    if _NOT_EQUAL_RE.search(scope):
        found.append(HEDGE_NOT_EQUAL)
    return tuple(found)


def _merge(*groups: Sequence[str]) -> tuple[str, ...]:
    merged: list[str] = []
    for group in groups:
        merged.extend(reason for reason in group if reason not in merged)
    return tuple(merged)


def _is_variable(text: str) -> bool:
    return bool(re.fullmatch(r"\s*\$?[A-Za-z](?:_\{?\w+\}?)?\$?\s*", text))


def _answer_of(written: str, *, boxed: bool, hedges: Sequence[str] = ()) -> FinalAnswer | None:
    """The final answer of a box's content or a final statement: the last side of a chain of equalities ("shown
    working" before it is fine; hedged when two sides are different numbers, "66 = 67"), of an approximation the
    exact side ("1/3 \\approx 0.33"; "x \\approx 11" answers 11); None when the last side is empty ("73 - 6 =")."""
    sides = equation_sides(written)
    answer = sides[-1].strip()
    approximations = _APPROX_RE.split(answer)
    if len(approximations) > 1:
        exact = approximations[0].strip()
        answer = approximations[1].strip() if not exact or _is_variable(exact) else exact
    if not answer.rstrip(".,;").strip():
        return None
    found = list(hedges)
    if len(sides) > 1:
        literal = parse_literal(answer)
        others = [parse_literal(_APPROX_RE.split(side)[0]) for side in sides[:-1]]
        if literal is not None and any(other is not None and not _same_value(other, literal) for other in others):
            found.append(HEDGE_CONTRADICTION)
    return FinalAnswer(answer, boxed=boxed, hedges=_merge(found), written=written)


def _math_mask(text: str) -> str:
    """`text` with the inside of each math span blanked, so that prose patterns never match inside math."""
    chars = list(text)
    for match in _INLINE_MATH_RE.finditer(text):
        group = next(index for index in range(1, 5) if match.group(index) is not None)
        for index in range(*match.span(group)):  # the content only: the delimiters stay visible
            chars[index] = "\x00" if chars[index] != "\n" else "\n"
    return "".join(chars)


def _without_remark(text: str) -> str:
    """A final statement without a trailing remark: "12 (since 3 * 4 = 12)" -> "12", "12 because ..." -> "12"."""
    masked = _math_mask(text)
    remark = _REMARK_RE.search(masked)
    return text[: remark.start()] if remark and text[: remark.start()].strip() else text


def _lone_number(text: str, masked: str) -> str | None:
    """The one number of a sentence of prose ("there are 12 ways", "Jane started 3 hours ago") with a percent sign
    or word after it; None when there are several, an operator, or a word that changes the value ("at least 12",
    "12 thousand")."""
    chunks = list(_NUMBER_CHUNK_RE.finditer(masked))
    if len(chunks) != 1 or "\x00" in masked:
        return None
    chunk = chunks[0]
    before, after = masked[: chunk.start()], masked[chunk.end() :]
    if _OPERATOR_RE.search(before) or _OPERATOR_RE.search(after) or not re.search(r"[A-Za-z]{2,}", before + after):
        return None
    previous = re.findall(r"[A-Za-z]+", before)
    following = re.match(r"\s*([A-Za-z]+)", after)
    if (previous and previous[-1].lower() in _QUALIFIERS) or (following and following.group(1).lower() in _NOT_UNITS
                                                             and not _PERCENT_AFTER_RE.match(after)):
        return None
    percent = _PERCENT_AFTER_RE.match(after)
    return text[chunk.start() : chunk.end()] + ("%" if percent else "")


def _joined_maths(text: str, maths: list[re.Match]) -> str:
    """The last `$...$` of a statement, or the last run of them joined by connectives, written out as one answer
    ("$x = 2$ and $y = 5$" -> "x = 2 and y = 5"; "$1$, $2$, $3$" is a list, not the answer 3)."""
    first = len(maths) - 1
    while first > 0:
        between = text[maths[first - 1].end() : maths[first].start()]
        if not (_BOX_JOINER_RE.fullmatch(between) and re.search(r"[,;]|\b(?:and|or)\b", between)):
            break
        first -= 1
    pieces = []
    for index in range(first, len(maths)):
        pieces.append(next(group for group in maths[index].groups() if group is not None).strip())
        if index + 1 < len(maths):
            pieces.append(text[maths[index].end() : maths[index + 1].start()].strip())
    return " ".join(pieces)


def _statement_value(statement: str) -> str:
    """The answer of a final statement or of the last sentence of the last line: X of "X is the answer", the value
    after its subject ("The volume of the box is 60"), its last `$...$` (with a percent sign after it), or its one
    number ("there are 12 ways"); else the statement itself."""
    text = _without_remark(statement).strip()
    masked = _math_mask(text)
    said = _IS_THE_ANSWER_RE.search(masked)
    if said:
        clauses = list(_CLAUSE_BREAK_RE.finditer(masked[: said.start()]))
        start = clauses[-1].end() if clauses else 0
        text, masked = text[start : said.start()], masked[start : said.start()]
    else:
        copulas = list(_COPULA_RE.finditer(masked))
        if copulas:
            text, masked = text[copulas[-1].end() :], masked[copulas[-1].end() :]
    maths = list(_INLINE_MATH_RE.finditer(text))
    if maths:
        after = text[maths[-1].end() :]
        if re.search(r"\d", after):
            return text  # "$x$ = 5": the value is outside the math
        return _joined_maths(text, maths) + ("%" if _PERCENT_AFTER_RE.match(after) else "")
    lone = _lone_number(text, masked)
    return lone if lone is not None else text


def _clause_of(text: str) -> str:
    """The clause that holds the last number or math of a sentence: "Either way, 2 + 3 = 5" -> "2 + 3 = 5" (words
    before a shown result do not hedge it), "67, maybe" stays whole."""
    masked = _math_mask(text)
    last = max((match.start() for match in re.finditer(r"[\d\x00]", masked)), default=len(masked))
    breaks = [match.end() for match in _CLAUSE_BREAK_RE.finditer(masked[:last])]
    return text[breaks[-1] :] if breaks else text


def _flatten_display_math(text: str) -> str:
    """Each display block (`$$...$$`, `\\[...\\]`) on one line, so that "Answer\\n$$\\n9\\n$$" ends with the line
    "$$ 9 $$". One linear pass; an unclosed block is left as it is."""
    pieces, position, opened, closer = [], 0, -1, ""
    for token in _DISPLAY_TOKEN_RE.finditer(text):
        mark = token.group(0)
        if opened < 0 and mark in ("$$", "\\["):
            opened, closer = token.end(), "$$" if mark == "$$" else "\\]"
        elif opened >= 0 and mark == closer:
            pieces += [text[position:opened], text[opened : token.start()].replace("\n", " ")]
            position, opened = token.start(), -1
    pieces.append(text[position:])
    return "".join(pieces)


def _sentences(line: str) -> list[str]:
    """The sentences of a line, split outside math only."""
    masked = _math_mask(line)
    bounds = [0, *(match.end() for match in _SENTENCE_BREAK_RE.finditer(masked)), len(line)]
    pieces = (line[bounds[i] : bounds[i + 1]].strip() for i in range(len(bounds) - 1))
    return [piece for piece in pieces if piece]


def _bare_value(line: str) -> tuple[str, Literal] | None:
    """(variable, value) of a line that is nothing but an answer ("67", "$x = 67$", "\\[ 67 \\]")."""
    literal = parse_literal(line)
    if literal is None:
        return None
    unwrapped = re.sub(r"^(?:\$\$|\$|\\\[|\\\()\s*", "", normalise_symbols(line).strip())
    prefix = re.match(r"([A-Za-z])\s*=", unwrapped)
    return (prefix.group(1) if prefix else ""), literal


def _last_line_answer(region: str) -> FinalAnswer | None:
    """The answer stated by the end of a response without a box or an explicit final statement (module doc)."""
    lines = [line.strip() for line in _flatten_display_math(region).split("\n") if line.strip()]
    skipped: list[str] = []
    index = len(lines) - 1
    while index >= 0 and not _CONTENT_RE.search(lines[index][-MAX_LINE_CHARS:]) and len(skipped) < MAX_PROSE_SKIPPED:
        skipped.append(lines[index])
        index -= 1
    if index < 0 or not _CONTENT_RE.search(lines[index][-MAX_LINE_CHARS:]):
        return None  # prose without a number or LaTeX states no answer ("I do not know.")
    sentences = _sentences(lines[index][-MAX_LINE_CHARS:])
    while len(sentences) > 1 and not _CONTENT_RE.search(sentences[-1]):
        skipped.append(sentences.pop())
    if len(skipped) > MAX_PROSE_SKIPPED or any(_NEGATION_RE.search(text) or _UNCERTAIN_RE.search(text) for text in skipped):
        return None  # "... 12 apples. I cannot solve it.": the closing words take the number back
    sentence = sentences[-1]
    hedges = _hedges_in(_clause_of(_without_remark(sentence)))
    answer = _answer_of(_statement_value(sentence).rstrip(".,;").strip(), boxed=False, hedges=hedges)
    if answer is None:
        return None
    # "66\n67": two bare answers on the last two lines are candidates, not a correction
    here = _bare_value(lines[index]) if len(sentences) == 1 else None
    above = _bare_value(lines[index - 1]) if here is not None and index > 0 else None
    if here is not None and above is not None and above[0] == here[0] and not _same_value(above[1], here[1]):
        answer = replace(answer, hedges=_merge(answer.hedges, [HEDGE_ALTERNATIVES]))
    return answer


def _first_line_answer(region: str) -> FinalAnswer | None:
    """The answer stated alone on the first line when the next line explains it ("42\\nBecause 6 * 7 = 42."); None
    when the response does not have that shape, or when the explanation states a final answer of its own."""
    lines = [line.strip() for line in _flatten_display_math(region[: 4 * MAX_LINE_CHARS]).split("\n") if line.strip()]
    if len(lines) < 2 or len(lines[0]) > MAX_LITERAL_CHARS or not _EXPLANATION_RE.match(lines[1]):
        return None
    first = lines[0]
    one_math = _INLINE_MATH_RE.fullmatch(first) and len(_INLINE_MATH_RE.findall(first)) == 1
    if _bare_value(first) is None and not one_math:
        # "42 or 43", "maybe 42", "not 42" before an explanation: a hedged answer; anything else is working or prose
        pieces = [piece for piece in re.split(r"\bor\b|,\s", _HEDGE_WORDS_RE.sub(" ", first)) if piece.strip()]
        if pieces and all(_bare_value(piece) is not None for piece in pieces) and _hedges_in(first):
            return FinalAnswer(first, boxed=False, hedges=_hedges_in(first))
        return None
    explanation = "\n".join(lines[1:])
    if _ANCHOR_RE.search(explanation) or _IS_THE_ANSWER_RE.search(explanation):
        return None  # "42\\nBecause ..., the final answer is 43.": the later word decides (or hedges)
    unsure = _UNCERTAIN_RE.search(explanation) or _UNSURE_RE.search(explanation)
    hedges = _merge(_hedges_in(first), [HEDGE_UNCERTAIN] * bool(unsure))
    answer = _answer_of(_statement_value(first).rstrip(".,;").strip(), boxed=False, hedges=hedges)
    stated, last = parse_literal(answer.text) if answer else None, _bare_value(lines[-1]) if len(lines) > 2 else None
    if answer is not None and last is not None and not (stated is not None and _same_value(stated, last[1])):
        answer = replace(answer, hedges=_merge(answer.hedges, [HEDGE_ALTERNATIVES]))  # "42\\nBecause ...\\n43"
    return answer


def _statement_answer(region: str, anchor_re: re.Pattern[str] = _ANCHOR_RE) -> FinalAnswer | None:
    """The answer of the last explicit final statement in the region ("the answer is X", "#### X"); a statement
    without a number or math defers to the last line after it ("The answer is below.\n67")."""
    anchors = list(anchor_re.finditer(region))
    if not anchors:
        return None
    anchor = anchors[-1]
    tail = region[anchor.end() : anchor.end() + MAX_STATEMENT_CHARS]
    end = _SENTENCE_END_RE.search(tail)
    statement = (tail[: end.start()] if end else tail).strip()
    negated = bool(_NEGATED_ANCHOR_RE.search(anchor.group(0)))
    if not negated and not _CONTENT_RE.search(statement) and _CONTENT_RE.search(region[anchor.end() :]):
        return _last_line_answer(region[anchor.end() :])
    if not statement:
        return None
    hedges = _merge(_hedges_in(_without_remark(statement)), [HEDGE_NEGATION] * negated)
    return _answer_of(_statement_value(statement).rstrip(".,;").strip(), boxed=False, hedges=hedges)


def _box_answer(region: str, spans: list[tuple[int, int, str]]) -> FinalAnswer | None:
    """The answer of the last box, with the boxes joined to it by connectives ("\\boxed{2} and \\boxed{5}")."""
    start, end, content = spans[-1]
    if not content.strip():
        return None  # an empty final box is a non-answer (no fallback to the text before it)
    run = [content.strip()]
    for previous, following in zip(reversed(spans[:-1]), reversed(spans[1:])):
        between = region[previous[1] : following[0]]
        if len(between) > 200 or not _BOX_JOINER_RE.fullmatch(between):
            break
        run.insert(0, previous[2].strip())
    hedges: list[str] = []
    if len(set(run)) > 1:  # several different boxes joined by a bare connective: "or" offers alternatives
        pairs = zip(spans[-len(run) : -1], spans[-len(run) + 1 :])
        offers = any(_ALTERNATIVE_RE.search(region[previous[1] : following[0]]) for previous, following in pairs)
        hedges.append(HEDGE_ALTERNATIVES if offers else HEDGE_SEVERAL)
    tail = region[end : end + 200].split("\n", 1)[0]
    if _TAIL_ALTERNATIVE_RE.match(tail) and re.search(r"[\w\\]", tail[_TAIL_ALTERNATIVE_RE.match(tail).end() :]):
        hedges.append(HEDGE_ALTERNATIVES)  # "\\boxed{67} \\text{or} 66"
    answer = _answer_of(content.strip(), boxed=True, hedges=_merge(hedges, _hedges_in(content)))
    if answer is None:
        return None
    return replace(answer, parts=tuple(run) if len(run) > 1 else ())


def final_answer(response: str, *, require_boxed: bool = False, max_chars: int = 20_000) -> FinalAnswer | None:
    """The final answer of a response under the answer policy (module doc); None when there is none."""
    region = _this_turn(answer_region(response)[-max_chars:])
    if ends_inside_box(region):
        return None  # "... so the answer is \\boxed{12": the response stops inside its final box, which states nothing
    spans = boxed_spans(region)
    if spans:
        # an explicit final statement after the last box is the later word ("... \\boxed{255} ... Final Answer:
        # The final answer is $10,455$.")
        after = _EMPHASIS_RE.sub(r"\2", region[spans[-1][1] :])
        later = None if require_boxed else _statement_answer(after, _FINAL_ANCHOR_RE)
        if later is not None and _CONTENT_RE.search(later.written):
            return later
        return _box_answer(region, spans)
    if require_boxed:
        return None
    region = _EMPHASIS_RE.sub(r"\2", region)
    first = _first_line_answer(region)
    if first is not None:
        return first
    if _ANCHOR_RE.search(region):
        return _statement_answer(region)
    return _last_line_answer(region)


def normalise_symbols(text: str) -> str:
    """Unicode minus and times signs as ASCII, LaTeX spacing (and thin spaces) as a space, `\\!` and the braces of
    `{,}` removed, `\\dfrac` / `\\tfrac` / `\\cfrac` as `\\frac`."""
    for sign in _MINUS_SIGNS:
        text = text.replace(sign, "-")
    for sign in _TIMES_SIGNS:
        text = text.replace(sign, "*")
    text = _SPACING_RE.sub(" ", text.replace("\\!", "")).replace("{,}", ",")
    return _FRAC_VARIANT_RE.sub(r"\\frac", text)


def _unwrap(text: str) -> str:
    """`\\boxed{...}`, `\\text{...}`, `\\textbf{...}`, ..., or bare braces around the whole text removed (only when
    the wrapper's brace closes at the very end: `\\text{73} - \\text{6}` is not one wrapper)."""
    wrapper = _WRAPPER_RE.match(text)
    opening = wrapper.end() if wrapper else 1 if text.startswith("{") else 0
    if not opening:
        return text
    depth, position = 1, opening
    while position < len(text) and depth:
        depth += 1 if text[position] == "{" else -1 if text[position] == "}" else 0
        position += 1
    return text[opening : position - 1].strip() if depth == 0 and position == len(text) else text


def _unit_words(words: str) -> bool:
    """Whether trailing words are a unit ("apples", "cm", "miles per hour"), not a word that changes the value."""
    parts = [word.rstrip(".") for word in words.split()]
    if [word.lower() for word in parts[-2:]] == ["per", "cent"]:
        return False  # "per cent" is a percent sign
    return all(word.lower() not in _NOT_UNITS and (len(word) > 1 or word in _SINGLE_LETTER_UNITS) for word in parts)


def strip_answer(text: str) -> str:
    """An answer without its dressing: `$`, quotes, wrappers (`\\boxed`, `\\text`, `\\textbf`), `x =`, a currency
    sign before or after, units (`\\text{ cm}^2`, `m²`, "miles per hour"), degrees, trailing punctuation."""
    text = normalise_symbols(text).strip()
    for _ in range(6):  # a few layers: "$\\boxed{x = 3}$."
        before = text
        text = text.strip().rstrip(".,;").strip()
        if text.endswith("!") and not re.search(r"[\d)}]!$", text):  # "67!" is a factorial, not an exclamation
            text = text[:-1].strip()
        for opening, closing in _MATH_WRAPPERS:
            if text.startswith(opening) and text.endswith(closing) and len(text) > len(opening) + len(closing):
                text = text[len(opening) : -len(closing)].strip()
                break
        if len(text) > 1 and _QUOTES.get(text[0]) == text[-1]:
            text = text[1:-1].strip()  # quotes are dressing too: 'The answer is "67".'
        text = _unwrap(text)
        text = _VARIABLE_PREFIX_RE.sub("", text, count=1)
        text = _CURRENCY_RE.sub("", text).strip()
        text = _TRAILING_CURRENCY_RE.sub("", text).strip()
        unit = _UNIT_TEXT_RE.search(text)
        if unit and re.search(r"[\d}]\s*$", text[: unit.start()]):
            text = text[: unit.start()].strip()
        text = _DEGREE_RE.sub("", text).strip()
        text = _UNIT_SUFFIX_RE.sub("", text).strip()
        glued = _GLUED_WORD_RE.search(text)
        if glued and _unit_words(glued.group(1)) and glued.group(1).lower() not in _MATH_WORDS and re.search(
            "[aeiouy]", glued.group(1).lower()
        ):
            text = text[: glued.start()].strip()
        words = _UNIT_WORDS_RE.search(text)
        if words and text[: words.start()].strip() and _unit_words(words.group(1)):
            text = text[: words.start()].strip()
        if text == before:
            break
    return text


def _fraction_literal(sign: str, numerator: int, denominator: int) -> Literal | None:
    if denominator == 0:
        return None
    value = Fraction(numerator, denominator) * (-1 if sign == "-" else 1)
    reduced = numerator != 0 and denominator > 1 and Fraction(abs(numerator), abs(denominator)).denominator == abs(denominator)
    spelling = f"{'-' if value < 0 else ''}{abs(numerator)}/{abs(denominator)}"  # as written, not reduced
    return Literal(value, "fraction", reduced, spelling)


def _mixed_literal(sign: str, whole: str, numerator: int, denominator: int) -> Literal | None:
    """"3 1/2" = 7/2 (the sign applies to the whole number); only a proper fraction makes a mixed number."""
    if not 0 < numerator < denominator:
        return None
    integer = int(whole.replace(",", "").replace(" ", ""))
    value = (integer + Fraction(numerator, denominator)) * (-1 if sign == "-" else 1)
    canonical = integer > 0 and Fraction(numerator, denominator).denominator == denominator
    return Literal(value, "mixed", canonical, f"{sign if sign == '-' else ''}{integer} {numerator}/{denominator}")


def _scientific_literal(sign: str, mantissa: str, exponent: str) -> Literal | None:
    """"1.2 \\times 10^{6}": exact; canonical with one nonzero digit before the point."""
    power = int(exponent)
    if abs(power) > MAX_EXPONENT:
        return None
    value = Fraction(mantissa) * Fraction(10) ** power * (-1 if sign == "-" else 1)
    canonical = 1 <= Fraction(mantissa) < 10
    return Literal(value, "scientific", canonical, f"{'-' if sign == '-' else ''}{mantissa}e{power}")


def parse_literal(text: str, *, decimal_comma: bool = False) -> Literal | None:
    """A number written as a literal (integer, decimal, fraction, mixed number, scientific notation, percentage;
    possibly negative, thousands marked with commas, `{,}` or thin spaces), or None for anything else, an expression
    with an operator or a list ("12, 345") in particular. Never evaluates. `decimal_comma` reads "1,22" as 1.22
    (for answers: a list is never a literal answer, so that reading cannot grade a hedge as correct)."""
    if len(text) > MAX_LITERAL_CHARS:
        return None
    text = strip_answer(text)
    if text.startswith("(") and text.endswith(")") and text.count("(") == 1:
        text = text[1:-1].strip()  # "(67)" but not a tuple or "(73 - 6)", which fail below
    percent = _PERCENT_RE.fullmatch(text)
    if percent and percent.group(1).strip():
        inner = parse_literal(percent.group(1), decimal_comma=decimal_comma)
        if inner is None or inner.kind == "percent":
            return None
        return Literal(inner.value, "percent", inner.canonical, inner.text + "%", inner.kind)
    number = re.sub(r"^([+-]) (?=[\d\\])", r"\1", " ".join(text.split()))
    if _INTEGER_RE.fullmatch(number):
        value = int(number.replace(",", "").replace(" ", ""))
        return Literal(Fraction(value), "integer", True, str(value))
    if _DECIMAL_RE.fullmatch(number) or (decimal_comma and _DECIMAL_COMMA_RE.fullmatch(number)):
        compact = number.replace(" ", "")
        compact = compact.replace(",", "") if "." in compact else compact.replace(",", ".")
        return Literal(Fraction(compact), "decimal", True, compact)
    match = _LATEX_FRACTION_RE.fullmatch(number)
    if match:
        sign, num_braced, num_digit, den_braced, den_digit = match.groups()
        return _fraction_literal(sign, int(num_braced or num_digit), int(den_braced or den_digit))
    match = _SLASH_FRACTION_RE.fullmatch(number)
    if match:
        return _fraction_literal(match.group(1), int(match.group(2)), int(match.group(3)))
    match = _MIXED_SLASH_RE.fullmatch(number)
    if match:
        return _mixed_literal(match.group(1), match.group(2), int(match.group(3)), int(match.group(4)))
    match = _MIXED_LATEX_RE.fullmatch(number)
    if match:
        sign, whole, num_braced, num_digit, den_braced, den_digit = match.groups()
        if "-" in (num_braced or "") + (den_braced or ""):
            return None
        return _mixed_literal(sign, whole, int(num_braced or num_digit), int(den_braced or den_digit))
    match = _SCIENTIFIC_RE.fullmatch(number)
    if match:
        groups = match.groups()
        if groups[1] is not None:
            return _scientific_literal(groups[0], groups[1], groups[2] or groups[3])
        return _scientific_literal(groups[4], groups[5], groups[6])
    return None


def _per_hundred(literal: Literal) -> Literal:
    """A percentage as the number it stands for ("25%" -> 0.25, "1 1/2%" -> 3/200): the sign applies to the whole."""
    if literal.kind != "percent":
        return literal
    value = literal.value / 100
    if literal.inner in ("integer", "decimal"):
        return Literal(value, "decimal", literal.canonical, format(Decimal(literal.text[:-1]).scaleb(-2), "f"))
    return Literal(value, literal.inner or "fraction", literal.canonical, literal.text)


def asks_for_percent(problem: str) -> bool:
    """Whether a question asks for a percentage ("What percent of 80 is 20?", "the percentage increase", "(in %)");
    a percent that is an operand ("What is 25% of 80?", "a 20 percent discount") does not ask for one."""
    for match in _PERCENT_WORD_RE.finditer(problem):
        before = problem[max(0, match.start() - 12) : match.start()]
        if not match.group(0)[0].isalpha() or not _OPERAND_BEFORE_RE.search(before):
            return True
    return False


def literals_equal(answer: Literal, gold: Literal, *, integer_only: bool = False, percent_asked: bool = True) -> bool:
    """Whether a literal answer states the literal ground truth (module doc: the literal rules). `percent_asked`:
    the question asks for a percentage (or the truth is one), so that a number and the same number with a percent
    sign state the same percentage; otherwise a percent sign means "of 100" ("25%" is 0.25), in every number form."""
    if integer_only and answer.kind != "integer":
        return False
    if answer.text == gold.text and answer.kind == gold.kind:
        return True  # written exactly as the ground truth (e.g. an unreduced fraction the data set keeps)
    if not answer.canonical:
        return False
    if (answer.kind == "percent" or gold.kind == "percent") and percent_asked:
        # "50%" states 50% whether the truth is written 50, 50% or 0.5
        candidates = {answer.value, answer.value / 100} if answer.kind == "percent" else {answer.value}
        golds = {gold.value, gold.value / 100} if gold.kind == "percent" else {gold.value}
        return bool(candidates & golds)
    answer, gold = _per_hundred(answer), _per_hundred(gold)
    if answer.value == gold.value:
        return True
    if gold.kind == "decimal" and answer.kind in ("fraction", "mixed"):
        # a fraction whose decimal the truth rounds ("1/3" for "0.333")
        places = len(gold.text.split(".")[1])
        return round(answer.value, places) == gold.value
    if gold.kind in ("fraction", "mixed") and answer.kind == "decimal":
        # the truth's decimal expansion written to 6 places or more ("0.0833333" for 1/12), rounded or cut
        places = len(answer.text.split(".")[1])
        return places >= 6 and abs(answer.value - gold.value) < Fraction(1, 10**places)
    return False


def is_list_truth(gold: str) -> bool:
    """Whether a ground truth is a list of answers ("2, 5", "\\{1, 2\\}", "k = 45, n = 2", "12 \\text{ and } 13"),
    not a number or one tuple / interval ("(3, \\frac{\\pi}{2})", "[1, 5)")."""
    if parse_literal(gold) is not None:
        return False
    text = normalise_symbols(gold).strip()
    for _ in range(2):
        for opening, closing in _MATH_WRAPPERS:
            if text.startswith(opening) and text.endswith(closing) and len(text) > len(opening) + len(closing):
                text = text[len(opening) : -len(closing)].strip()
        text = _unwrap(text)
    if text.startswith("\\{") and text.endswith("\\}"):
        text = text[2:-2]
    return len(_top_level_split(_LIST_CONNECTIVE_RE.sub(",", text))) > 1


def _as_list(answer: FinalAnswer) -> str:
    """A list answer in one spelling for math-verify: joined boxes, or what was written with its connectives as
    commas ("x = 2 or x = 5" -> "x = 2, x = 5")."""
    if answer.parts:
        return ", ".join(answer.parts)
    text = _LIST_CONNECTIVE_RE.sub(",", answer.written.replace("$", " "))
    return re.sub(r"\s*(?:,\s*)+", ", ", text).strip(" ,")


# --------------------------------------------------------------------------------- copying the question


_OP_CANON = [
    (re.compile(r"\\(?:times|cdot|ast)\b"), "*"),
    (re.compile(r"\\div\b"), "/"),
    (re.compile(r"\\[dtc]frac\b"), r"\\frac"),
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
    for operation in sorted(problem_operations(problem)):  # sorted: the verdict never depends on set order
        if any(operation in gold for gold in gold_texts):
            continue
        for match in re.finditer(re.escape(operation), text):
            before = text[match.start() - 1] if match.start() else ""
            after = text[match.end()] if match.end() < len(text) else ""
            if not (before.isalnum() or before == ".") and not (after.isalnum() or after == "."):
                return True
    return False


def question_numbers(problem: str) -> list[Literal]:
    """The fractions, decimals, mixed numbers and percentages written in a question."""
    found = [parse_literal(match.group(0)) for match in _QUESTION_NUMBER_RE.finditer(normalise_symbols(problem))]
    return [literal for literal in found if literal is not None]


def restates_question_number(literal: Literal, problem: str, gold_literals: Sequence[Literal]) -> bool:
    """A literal answer that is one of the question's own numbers in a form no ground truth has, where the question
    asks for a form ("Express 3/8 as a decimal": 3/8; "Write 0.5 as a percent": 0.5): the question restated."""
    if literal.kind == "integer" or any(gold.kind == literal.kind for gold in gold_literals):
        return False
    if not _ASKS_FORM_RE.search(problem):
        return False
    return any(number.kind == literal.kind and number.value == literal.value for number in question_numbers(problem))


# --------------------------------------------------------------------------------- multiple choice


def choice_letter(answer: str) -> str | None:
    """"C", "(C)", "\\text{(C)}", "\\textbf{(C)}", "C. x = 42" -> "C"; None when the answer is not one choice
    letter."""
    text = strip_answer(answer)
    match = _CHOICE_RE.fullmatch(text.replace(" ", ""))
    if match:
        return match.group(1)
    with_text = _CHOICE_WITH_TEXT_RE.fullmatch(text)
    # the text after the letter must not be another letter ("A. B" names two options: no answer)
    if with_text and not _CHOICE_RE.fullmatch(with_text.group(2).rstrip(".").replace(" ", "")):
        return with_text.group(1)
    return None


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


# --------------------------------------------------------------------------------- exact forms, words, tuples


def parse_power(text: str) -> Literal | None:
    """An integer power written out ("10^3", "2^{10}", "10^{-3}", "-2^{5}"): its exact value, kind "power"; None for
    anything else, an identity power ("67^1", "5^0") or a bracketed base ("(67)^1") in particular."""
    if len(text) > MAX_LITERAL_CHARS:
        return None
    match = _POWER_LITERAL_RE.fullmatch(" ".join(strip_answer(text).split()))
    if not match:
        return None
    sign, base, braced, digit = match.groups()
    exponent = int(braced or digit)
    if int(base) < 2 or exponent in (0, 1) or abs(exponent) > MAX_EXPONENT:
        return None
    value = Fraction(int(base)) ** exponent * (-1 if sign == "-" else 1)
    return Literal(value, "power", True, f"{'-' if sign == '-' else ''}{base}^{exponent}")


def _words(text: str) -> str | None:
    """A word answer in one spelling ("\\text{Yes}." -> "yes", "\\textbf{No solution}" -> "no solution"); None when
    the text is not words alone (math, numbers, a single letter)."""
    if len(text) > 200:
        return None
    text = normalise_symbols(text).strip()
    for _ in range(4):
        text = text.strip().rstrip(".!,;").strip()
        for opening, closing in _MATH_WRAPPERS:
            if text.startswith(opening) and text.endswith(closing) and len(text) > len(opening) + len(closing):
                text = text[len(opening) : -len(closing)].strip()
        if len(text) > 1 and _QUOTES.get(text[0]) == text[-1]:
            text = text[1:-1]
        text = _unwrap(text)
    text = " ".join(text.split())
    if len(text) > 60 or not _WORD_ANSWER_RE.fullmatch(text) or text.lower() in _WORD_MATH:
        return None
    return text.lower()


def _named_choices(problem: str) -> set[str]:
    """The words a question offers as its choices: those joined by "or" ("even, odd, or neither", "Alice or Bob")."""
    choices: set[str] = set()
    for sentence in re.split(r"[.?!:;\n]", problem):
        if not re.search(r"\bor\b", sentence, re.IGNORECASE):
            continue
        for item in re.split(r",|\bor\b|/", re.sub(r"\$|\\text\s*\{([^{}]*)\}", r"\1", sentence), flags=re.IGNORECASE):
            words = item.strip().split()
            if words:
                choices.add(words[-1].strip("\"'()").lower())  # "Is the function even" -> "even"
                choices.add(" ".join(words).strip("\"'()").lower())
    return choices


def word_choice_truth(gold: str, problem: str) -> str | None:
    """The choice a truth names ("Yes", "\\text{neither}", "No solution"), in one spelling; None unless the truth is
    a yes/no-style word or a word the question offers as a choice."""
    words = _words(gold)
    if words is None:
        return None
    return words if words in _CHOICE_WORDS or words in _named_choices(problem) else None


def _tuple_items(text: str) -> list[str] | None:
    """The items of one tuple "(3, 2)" / "\\left(3, 2\\right)"; None for anything else."""
    if len(text) > MAX_TUPLE_CHARS:
        return None
    text = strip_answer(text)
    if not (text.startswith("(") and text.endswith(")")) or _bracket_depths(text)[1:-1].count(0):
        return None
    items = _top_level_split(text[1:-1])
    return items if len(items) > 1 else None


def _assignments(text: str) -> list[tuple[str, str]] | None:
    """[(name, value)] when every item of a list is one assignment to a distinct variable ("x = 3, y = 2",
    "x = 3 and y = 2"); None otherwise."""
    if len(text) > MAX_TUPLE_CHARS:
        return None
    parts = _top_level_split(_LIST_CONNECTIVE_RE.sub(",", normalise_symbols(text).replace("$", " ")))
    pairs = []
    for part in parts:
        match = _ASSIGNMENT_RE.fullmatch(part.strip().rstrip(".,;").strip() if part.count("=") == 1 else "")
        if not match or len(equation_sides(match.group(2))) > 1:
            return None
        pairs.append((match.group(1).replace("{", "").replace("}", ""), match.group(2).strip()))
    names = [name for name, _ in pairs]
    return pairs if len(pairs) > 1 and len(set(names)) == len(names) else None


def variable_order(problem: str, names: Sequence[str]) -> list[str]:
    """The order of a tuple's variables: as the question names them, in a tuple ("the ordered pair $(b, a)$") or a
    list ("solve for $x$ and $y$"), else alphabetical."""
    wanted = sorted(names)
    text = normalise_symbols(problem).replace("$", "")
    for match in re.finditer(r"\(([^()]{1,80})\)", text):
        items = [item.strip().replace("{", "").replace("}", "") for item in match.group(1).split(",")]
        if sorted(items) == wanted:
            return items
    for match in _NAME_LIST_RE.finditer(text):
        items = [item.strip().replace("{", "").replace("}", "") for item in _NAME_SEPARATOR_RE.split(match.group(0))]
        if sorted(items) == wanted:
            return items
    return sorted(names, key=lambda name: [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)])


def _integers_in(problem: str) -> set[str]:
    """The integers written in a question, as digits ("What is 32 * 32?" -> {"32"})."""
    return set(re.findall(r"(?<![\d.])\d+(?![\d.])", normalise_symbols(problem).replace(",", "")))


def _as_tuple(pairs: Sequence[tuple[str, str]], problem: str) -> str:
    values = dict(pairs)
    return "(" + ", ".join(values[name] for name in variable_order(problem, list(values))) + ")"


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
    golds: tuple[str, ...] | None = None  # the truths math-verify compares `prediction` with, when not the raw ones


def _literal_judgement(
    text: str, problem: str, gold_literals: Sequence[Literal], *, integer_only: bool
) -> Judgement:
    # a percent sign is "of 100" unless the question asks for a percentage (or the truth is one): module doc
    percent_asked = asks_for_percent(problem) or any(gold.kind == "percent" for gold in gold_literals)
    literal = parse_literal(text, decimal_comma=True)
    if literal is None:
        letter = choice_letter(text)
        if letter is not None:  # a choice letter naming the option that holds the truth
            option = choice_options(problem).get(letter)
            option_literal = parse_literal(option) if option else None
            if option_literal is not None:
                return Judgement("ok", any(literals_equal(option_literal, gold, percent_asked=percent_asked)
                                           for gold in gold_literals), text)
        status = STATUS_RESTATED if copies_problem_operation(text, problem) else STATUS_NOT_LITERAL
        power = None if integer_only or status == STATUS_RESTATED else parse_power(text)
        if power is None or _MENTIONS_POWER_RE.search(problem) or _ASKS_LITERAL_RE.search(problem) \
                or _ASKS_FORM_RE.search(problem) or power.text.lstrip("-").split("^")[0] in _integers_in(problem):
            # "10^3" for "What is 10 cubed?", "32^2" for "What is 32 * 32?": the question's computation restated
            return Judgement(status, False, text)
        # an exact power for an integer or decimal truth ("10^3" for 1000) when nothing asks for the number written out
        return Judgement("ok", any(literals_equal(power, gold, percent_asked=percent_asked)
                                   for gold in gold_literals), text)
    if restates_question_number(literal, problem, gold_literals) or (
        literal.kind == "scientific" and copies_problem_operation(text, problem)
    ):
        return Judgement(STATUS_RESTATED, False, text)
    if (literal.kind in ("fraction", "mixed") and _ASKS_DECIMAL_RE.search(problem)
            and all(gold.kind == "decimal" for gold in gold_literals)):
        return Judgement("ok", False, text)  # "Express ... as a decimal" answered with a fraction: not what was asked
    correct = any(literals_equal(literal, gold, integer_only=integer_only, percent_asked=percent_asked)
                  for gold in gold_literals)
    return Judgement("ok", correct, text)


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
    list_truth = any(is_list_truth(gold) for gold in golds)
    excused = (HEDGE_ALTERNATIVES, HEDGE_SEVERAL) * list_truth + (HEDGE_NOT_EQUAL,) * any(
        _NOT_EQUAL_RE.search(g) for g in golds)
    tuple_sizes = {len(items) if (items := _tuple_items(gold)) else 0 for gold in golds}
    gold_pairs = [_assignments(gold) for gold in golds]
    if list_truth and all(gold_pairs) and _tuple_items(answer.written):
        # "(3, 2)" for the truth "x = 3, y = 2": the truth as a tuple, its variables ordered (variable_order)
        golds = [_as_tuple(pairs, problem) for pairs in gold_pairs]
        text, excused = answer.written, tuple(reason for reason in excused if reason not in (HEDGE_ALTERNATIVES,
                                                                                               HEDGE_SEVERAL))
    elif list_truth:
        text = _as_list(answer)
    elif (len(tuple_sizes) == 1 and 0 not in tuple_sizes
          and (pairs := _assignments(_as_list(answer) if answer.parts else answer.written)) is not None
          and len(pairs) in tuple_sizes):
        # "x = 3, y = 2" for the truth "(3, 2)": the values as a tuple, in the order of variable_order; boxes joined
        # by "and" or commas ("\\boxed{x = 3}, \\boxed{y = 2}") are its parts
        text, excused = _as_tuple(pairs, problem), (*excused, HEDGE_SEVERAL)
    elif any(len(equation_sides(gold)) > 1 and parse_literal(gold) is None for gold in golds):
        text = answer.written  # an equation as the truth ("y = 2x + 3") is compared with the whole answer
        named = _named_function_sides(golds, text)
        if named is not None:  # "y = 2x + 3" for "f(x) = 2x + 3": the name of the function is not the answer
            golds, text = named
    else:
        text = answer.text
    choices = [word_choice_truth(gold, problem) for gold in golds]
    words = _words(text) if all(choices) else None
    if words is not None and (words in choices or words in _CHOICE_WORDS or words in _named_choices(problem)):
        # a bare choice ("\\boxed{No}" to a yes-or-no question) is the answer, not a negation; other hedges count
        own_negation = (HEDGE_NEGATION,) * bool(_NEGATION_RE.search(words))
        if any(reason not in (*excused, *own_negation) for reason in answer.hedges):
            return Judgement(STATUS_HEDGED, False, text)
        return Judgement("ok", words in choices, text)
    if any(reason not in excused for reason in answer.hedges):
        return Judgement(STATUS_HEDGED, False, text)
    gold_literals = [parse_literal(gold) for gold in golds]
    if gold_literals and all(literal is not None for literal in gold_literals):
        return _literal_judgement(text, problem, gold_literals, integer_only=integer_only)
    if integer_only:
        raise ValueError(f"integer_only grading needs integer ground truths, got {list(golds)!r}")
    if copies_problem_operation(text, problem, golds):
        return Judgement(STATUS_RESTATED, False, text)
    gold_letters = {choice_letter(gold) for gold in golds} - {None}
    letter = choice_letter(text) or choice_letter(answer.written)  # "\\boxed{C. x = 42}" names option C
    if gold_letters and letter is not None:
        return Judgement("ok", letter in gold_letters, text)
    return Judgement("ok", None, text, prediction=f"\\boxed{{{text}}}", golds=tuple(golds))


_FUNCTION_NAME_RE = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?(?:\s*\(\s*[A-Za-z]\s*\))?")


def _named_function_sides(golds: Sequence[str], text: str) -> tuple[list[str], str] | None:
    """(right sides of the truths, right side of the answer) when every truth and the answer each define one function
    by name ("f(x) = 2x + 3", "y = 2x + 3"): the name is notation, the right side is the answer. None otherwise."""
    pairs = [equation_sides(normalise_symbols(item).strip().strip("$").strip()) for item in (*golds, text)]
    for sides in pairs:
        if len(sides) != 2 or not _FUNCTION_NAME_RE.fullmatch(sides[0].strip()):
            return None
        name = sides[0].strip()[0]
        if re.search(rf"(?<![A-Za-z\\]){name}(?![A-Za-z])", sides[1]):
            return None  # "x = 2x + 3" is an equation in x, not a function named x
    return [sides[1].strip() for sides in pairs[:-1]], pairs[-1][1].strip()


def is_literal_answer(text: str | None) -> bool:
    """Whether an extracted answer is a number literal, an integer power ("10^3") included."""
    return text is not None and (parse_literal(text) is not None or parse_power(text) is not None)
