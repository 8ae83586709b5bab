"""Procedurally generated arithmetic problems: a small, verifiable task for CPU-sized models and tests.

Train and test are disjoint by construction: every problem text hashes (SHA-256, stable across runs and
machines) into one of the two splits, so a problem can only ever be generated for its own split, whatever
the seeds. Within a split the seed picks which problems, and in which order.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from remix_rft.data.types import Example

SPLITS = ("train", "test")
OPERATIONS = "+-*"
DEFAULT_TEST_FRACTION = 0.1
_HASH_BUCKETS = 10_000
_MAX_DRAWS_PER_EXAMPLE = (
    50  # rejection sampling gives up (problem space too small) after this many draws per example
)


def generate_arithmetic(
    size: int = 1000,
    *,
    digits: int | Sequence[int] | str = (1, 3),
    operations: str | Sequence[str] = OPERATIONS,
    num_operands: int = 2,
    split: str = "train",
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> list[Example]:
    """`size` distinct problems like "What is 47 + 318?" with integer answers ("365"), deterministic per seed.

    `digits`: operand digit counts, an int or an inclusive (low, high) range (also "1-3" / "1,3" as text);
    a d-digit operand is uniform over the d-digit numbers (0-9 for d = 1). `operations`: a subset of "+-*",
    mixed per problem; answers follow the usual precedence. `test_fraction` of the problem space is test.
    """
    low, high = _digit_range(digits)
    ops = _operations(operations)
    if split not in SPLITS:
        raise ValueError(f"arithmetic split must be one of {SPLITS}, got {split!r}")
    if num_operands < 2:
        raise ValueError(f"num_operands must be >= 2, got {num_operands}")
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")

    # Distinct seeds per split: the two splits draw different problem sequences even before the hash filter.
    rng = random.Random(f"remix-arithmetic/{split}/{seed}")
    seen: set[str] = set()
    examples: list[Example] = []
    draws = 0
    while len(examples) < size:
        draws += 1
        if draws > _MAX_DRAWS_PER_EXAMPLE * size + 1000:
            raise ValueError(
                f"could only generate {len(examples)} of {size} distinct {split} problems with digits "
                f"{low}-{high}, "
                f"operations {''.join(ops)!r}, {num_operands} operands: the problem space is too small"
            )
        operands = [_operand(rng, low, high) for _ in range(num_operands)]
        operators = [rng.choice(ops) for _ in range(num_operands - 1)]
        expression = _render(operands, operators)
        if expression in seen or split_of(expression, test_fraction) != split:
            continue
        seen.add(expression)
        examples.append(
            Example(
                problem=f"What is {expression}?",
                answer=str(evaluate(operands, operators)),
                id=f"arithmetic-{split}-{len(examples)}",
                source="arithmetic",
                meta={"split": split, "expression": expression},
            )
        )
    return examples


def split_of(expression: str, test_fraction: float = DEFAULT_TEST_FRACTION) -> str:
    """The split a problem belongs to, from a stable hash of its text."""
    bucket = int.from_bytes(hashlib.sha256(expression.encode()).digest()[:8], "big") % _HASH_BUCKETS
    return "test" if bucket < test_fraction * _HASH_BUCKETS else "train"


def evaluate(operands: Sequence[int], operators: Sequence[str]) -> int:
    """The value of operands joined by operators, `*` binding tighter than `+`/`-` (no eval of text)."""
    terms = [operands[0]]  # products are folded as they come; +/- start a new signed term
    for operator, operand in zip(operators, operands[1:]):
        if operator == "*":
            terms[-1] *= operand
        elif operator == "+":
            terms.append(operand)
        elif operator == "-":
            terms.append(-operand)
        else:
            raise ValueError(f"unsupported operation {operator!r}")
    return sum(terms)


def _render(operands: Sequence[int], operators: Sequence[str]) -> str:
    parts = [str(operands[0])]
    for operator, operand in zip(operators, operands[1:]):
        parts += [operator, str(operand)]
    return " ".join(parts)


def _operand(rng: random.Random, low: int, high: int) -> int:
    digit_count = rng.randint(low, high)
    if digit_count == 1:
        return rng.randint(0, 9)
    return rng.randint(10 ** (digit_count - 1), 10**digit_count - 1)


def _digit_range(digits: int | Sequence[int] | str) -> tuple[int, int]:
    if isinstance(digits, str):
        parts = digits.replace("-", ",").split(",")
        try:
            values = [int(part) for part in parts if part.strip()]
        except ValueError:
            raise ValueError(f"digits must look like '3' or '1-3', got {digits!r}") from None
    elif isinstance(digits, int):
        values = [digits]
    else:
        values = [int(value) for value in digits]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not 1 <= values[0] <= values[1]:
        raise ValueError(f"digits must be a positive int or an increasing (low, high) pair, got {digits!r}")
    return values[0], values[1]


def _operations(operations: str | Sequence[str]) -> list[str]:
    ops = sorted(set(operations))
    unknown = [op for op in ops if op not in OPERATIONS]
    if not ops or unknown:
        raise ValueError(f"operations must be a non-empty subset of {OPERATIONS!r}, got {operations!r}")
    return ops
