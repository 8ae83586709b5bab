"""The `remix-rft` command line: config printing, clear errors, a tiny training run and `--resume`."""

import json

import pytest
import yaml

from remix_rft.cli import main

TINY = ["model.name=tiny-random", "train.prompts_per_step=2", "train.samples_per_prompt=2", "train.minibatch_size=2",
        "rollout.max_new_tokens=4", "eval.limit=2", "eval.max_new_tokens=4", "logging.tensorboard=false",
        "logging.progress=false", "data.train_options={size: 16}", "remix.reincarnate_at=1"]


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


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="no run with a checkpoint"):
        main(["train", "--resume", *TINY, f"logging.output_dir={tmp_path}"])
