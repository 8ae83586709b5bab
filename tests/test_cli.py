"""The `remix-rft` command line: config printing, clear errors, a tiny training run and `--resume`."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from remix_rft.cli import COMMON_OVERRIDES, main
from remix_rft.config import load_config

TINY = ["model.name=tiny-random", "train.prompts_per_step=2", "train.samples_per_prompt=2", "train.minibatch_size=2",
        "rollout.max_new_tokens=4", "eval.limit=2", "eval.max_new_tokens=4", "logging.tensorboard=false",
        "logging.progress=false", "data.train_options={size: 16}", "remix.reincarnate_at=1"]
TINY_ANY_DATA = [x for x in TINY if not x.startswith("data.train_options")]  # for data sources without options


def test_print_config_resolves_defaults_and_overrides(capsys):
    assert main(["train", "--print-config", "train.steps=7", "remix.offpolicy_fraction=0.5"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["train"]["steps"] == 7
    assert config["remix"]["offpolicy_fraction"] == 0.5
    assert config["model"]["name"] == "smollm2-135m-instruct"  # the quickstart default


def test_bad_key_fails_at_start_naming_it(capsys):
    assert main(["train", "remix.history_window=0"]) == 2
    assert "remix.history_window" in capsys.readouterr().err
    assert main(["train", "--config", "nope.yaml"]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_train_then_resume_latest(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", *TINY, "train.steps=2", f"logging.output_dir={out}", "logging.run_name=r"]) == 0
    printed = capsys.readouterr().out
    assert "pass@1 before" in printed and "run directory" in printed
    # continue the newest run with a checkpoint for two more steps
    assert main(["train", "--resume", *TINY, "train.steps=4", f"logging.output_dir={out}"]) == 0
    lines = [json.loads(x) for x in (out / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["type"] == "train"] == [1, 2, 3, 4]
    assert (out / "r" / "checkpoints" / "step_000004" / "policy").is_dir()


# ------------------------------------------------------------------------------------------ input errors
# Every mistake in the user's input is one line on stderr and exit status 2, without a traceback.


def _fails_cleanly(capsys, argv: list[str], *expected: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1, err
    assert error_lines[0].startswith(f"remix-rft {argv[0]}: error: ")
    for text in expected:
        assert text in error_lines[0], error_lines[0]
    return error_lines[0]


@pytest.fixture
def user_files(tmp_path: Path) -> Path:
    (tmp_path / "my.jsonl").write_text('{"problem": "1 + 1", "answer": "2"}\n{"problem": "2 + 2", "answer": "4"}\n')
    (tmp_path / "malformed.jsonl").write_text('{"problem": "1 + 1", "answer": "2"}\n{"problem": "2 + \n')
    (tmp_path / "noproblem.jsonl").write_text('{"text": "1 + 1", "answer": "2"}\n')
    (tmp_path / "noanswers.jsonl").write_text('{"problem": "1 + 1"}\n')
    (tmp_path / "bad.yaml").write_text("train:\n  steps: [3\nremix: {}\n")
    return tmp_path


def test_switching_the_data_source_drops_the_config_files_arithmetic_options(capsys, user_files):
    my = user_files / "my.jsonl"
    assert main(["train", "--print-config", f"data.train={my}"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)["data"]
    assert data["train"] == str(my) and data["train_options"] == {}
    # options given with the switch are the new source's; without a switch they merge with the file's
    assert main(["train", "--print-config", "data.train=hf:gsm8k", "data.train_options={config: main}"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["train_options"] == {"config": "main"}
    assert main(["train", "--print-config", "data.train=arithmetic", "data.train_options={size: 50}"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["train_options"] == {
        "digits": 1, "operations": "+-", "size": 50}
    _fails_cleanly(capsys, ["train", "--print-config", f"data.train={my}", "data.train_options={size: 5}"],
                   "data.train_options", "'size'", "data.train_options={}")
    _fails_cleanly(capsys, ["train", "--print-config", "data.train_options={digit: 2}"],
                   "data.train_options", "'digit'", "digits")


def test_training_on_a_jsonl_file_from_the_default_config(tmp_path, user_files, capsys):
    out = tmp_path / "runs"
    assert main(["train", *TINY_ANY_DATA, f"data.train={user_files / 'my.jsonl'}", "train.steps=1", "eval.benchmarks=[]",
                 f"logging.output_dir={out}", "logging.run_name=own-data"]) == 0
    rows = [json.loads(x) for x in (out / "own-data" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if row["type"] == "train"] == [1]


def test_config_mistakes_are_one_line(capsys, user_files):
    _fails_cleanly(capsys, ["train", "--config", str(user_files / "bad.yaml")], "bad.yaml:3:", "not valid YAML")
    _fails_cleanly(capsys, ["train", "--config", "nope.yaml"], "nope.yaml", "built-in config")
    _fails_cleanly(capsys, ["train", "remix.ofpolicy_fraction=0.3"], "remix.ofpolicy_fraction",
                   "did you mean 'remix.offpolicy_fraction'")
    _fails_cleanly(capsys, ["train", "train.steps=many"], "train.steps", "expected an integer")
    _fails_cleanly(capsys, ["train", "steps"], "'steps'", "key.sub=value")
    _fails_cleanly(capsys, ["train", "algorithm.policy_loss=nope"], "algorithm.policy_loss", "registered")
    _fails_cleanly(capsys, ["train", "reward.name=nope"], "reward.name")
    _fails_cleanly(capsys, ["train", "reward.timeout=0"], "reward.timeout", "must be > 0")
    _fails_cleanly(capsys, ["train", "data.limit=0"], "data.limit")


@pytest.mark.parametrize(("data_file", "expected"), [
    ("malformed.jsonl", ["malformed.jsonl:2: malformed JSON line"]),
    ("noproblem.jsonl", ["noproblem.jsonl, line 1: no problem field", "data.problem_key"]),
    ("noanswers.jsonl", ["gave no usable training example", "data.answer_key"]),
    ("missing.jsonl", ["missing.jsonl", "neither a built-in dataset"]),
])
def test_data_file_mistakes_are_one_line_and_write_no_run(tmp_path, capsys, user_files, data_file, expected):
    out = tmp_path / "runs"
    _fails_cleanly(capsys, ["train", *TINY_ANY_DATA, f"data.train={user_files / data_file}", f"logging.output_dir={out}"],
                   *expected)
    assert not out.exists()  # the data is checked before anything is written


def test_data_dir_model_device_and_benchmark_mistakes_are_one_line(tmp_path, capsys):
    out = f"logging.output_dir={tmp_path / 'runs'}"
    _fails_cleanly(capsys, ["train", *TINY_ANY_DATA, out, "data.train=aimemath", f"data.data_dir={tmp_path / 'nodata'}"],
                   "aimemath", "nodata", "data.data_dir")
    _fails_cleanly(capsys, ["train", *TINY, out, "eval.benchmarks=[aime99]"], "eval.benchmarks", "'aime99'")
    _fails_cleanly(capsys, ["train", *TINY, out, f"model.name={tmp_path / 'no-model'}"], "no-model", "no such folder")
    (tmp_path / "not-a-model").mkdir()
    _fails_cleanly(capsys, ["train", *TINY, out, f"model.name={tmp_path / 'not-a-model'}"], "not-a-model",
                   "cannot be loaded")
    _fails_cleanly(capsys, ["train", *TINY, out, "model.name=tiny-random:abc"], "tiny-random:abc")
    _fails_cleanly(capsys, ["train", *TINY, out, "model.device=gpu"], "model.device", "'gpu'")
    assert not (tmp_path / "runs").exists()


def test_resume_mistakes_are_one_line(tmp_path, capsys):
    _fails_cleanly(capsys, ["train", "--resume", str(tmp_path / "nope")], "no such run directory")
    _fails_cleanly(capsys, ["train", "--resume", *TINY, f"logging.output_dir={tmp_path}"],
                   "no run with a checkpoint", str(tmp_path))
    run = tmp_path / "run-without-checkpoint"
    run.mkdir()
    (run / "config.yaml").write_text("train: {steps: 2}\n")
    _fails_cleanly(capsys, ["train", "--resume", str(run)], "no complete checkpoint", "checkpoint.every")
    (run / "checkpoints" / "step_000001").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("step_000001")
    (run / "config.yaml").write_text("train: {stepz: 2}\n")
    _fails_cleanly(capsys, ["train", "--resume", str(run)], "config.yaml", "train.stepz")


def test_eval_and_plot_mistakes_are_one_line(tmp_path, capsys):
    _fails_cleanly(capsys, ["eval", "--model", "tiny-random", "--benchmarks", "aime99"], "'aime99'")
    _fails_cleanly(capsys, ["eval", "--model", "tiny-random", "--benchmarks", " , "], "--benchmarks is empty")
    _fails_cleanly(capsys, ["eval", "--model", "tiny-random", "--samples", "0"], "--samples must be >= 1")
    _fails_cleanly(capsys, ["eval", "--model", "tiny-random", "--top-p", "1.5"], "--top-p")
    _fails_cleanly(capsys, ["eval", "--model", "tiny-random", "--samples", "4", "--temperature", "0"],
                   "--temperature")
    _fails_cleanly(capsys, ["eval", "--data-dir", str(tmp_path / "nodata"), "--benchmarks", "aime24"], "nodata")
    _fails_cleanly(capsys, ["eval", "--model", str(tmp_path / "no-model"), "--benchmarks", "arithmetic",
                            "--limit", "1"], "no-model")
    _fails_cleanly(capsys, ["plot", str(tmp_path / "no-run")], "no-run", "metrics.jsonl")


def test_debug_shows_the_traceback(capsys, monkeypatch):
    assert main(["train", "--debug", "remix.history_window=0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "remix-rft train: error: config key 'remix.history_window'" in err
    monkeypatch.setenv("REMIX_DEBUG", "1")
    assert main(["train", "remix.history_window=0"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_bugs_keep_their_traceback(monkeypatch):
    import remix_rft.trainer

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the trainer")

    monkeypatch.setattr(remix_rft.trainer, "run_training", broken)
    with pytest.raises(RuntimeError, match="a bug in the trainer"):
        main(["train", "train.steps=1"])


def test_the_installed_command_exits_2_with_one_line(user_files):
    env = {**os.environ, "REMIX_DEBUG": ""}
    done = subprocess.run([sys.executable, "-m", "remix_rft.cli", "train", "model.name=tiny-random",
                           f"data.train={user_files / 'malformed.jsonl'}"],
                          capture_output=True, text=True, env=env, cwd=user_files, timeout=300)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("remix-rft train: error: ")
    assert "malformed.jsonl:2: malformed JSON line" in done.stderr


# ------------------------------------------------------------------------------------------ help


def test_train_help_lists_the_common_overrides_and_each_example_works(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "common overrides" in text
    for example, _meaning in COMMON_OVERRIDES:
        assert example in text
        load_config("quickstart", shlex.split(example))  # each example works on the default config, as typed


@pytest.mark.parametrize("command", ["eval", "plot"])
def test_eval_and_plot_help_have_examples(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and f"remix-rft {command} " in text
