"""A bad reward in the middle of a run: raises, hangs, returns NaN or the wrong number of scores. Each is either a
clear error naming the reward and the sample, or (one response raising) reward 0 with a counted status; never a
silent wrong step. And a custom reward that cannot be imported fails before the model loads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from remix_rft.cli import main
from remix_rft.data.types import Example
from remix_rft.errors import RewardError
from remix_rft.rewards import CustomReward, MathReward, Score, check_scores
from remix_rft.rewards.custom import CustomRewardImportError, load_callable

TINY = ["model.name=tiny-random", "train.prompts_per_step=2", "train.samples_per_prompt=2", "train.minibatch_size=2",
        "rollout.max_new_tokens=4", "logging.tensorboard=false", "logging.progress=false",
        "data.train_options={size: 16}", "eval.benchmarks=[]", "train.steps=2"]


def examples(count: int) -> list[Example]:
    return [Example(problem=f"{i} + 1", answer=str(i + 1), id=f"ex-{i}") for i in range(count)]


def test_one_raising_response_scores_zero_and_is_counted():
    def flaky(response: str, example: Example) -> float:
        if response == "boom":
            raise ValueError("cannot parse")
        return 1.0

    scores = CustomReward(flaky).score(["ok", "boom", "ok"], examples(3))
    assert [(s.reward, s.status) for s in scores] == [(1.0, "ok"), (0.0, "error"), (1.0, "ok")]


def test_raising_on_every_response_is_an_error_naming_the_sample():
    def broken(response: str, example: Example) -> float:
        raise KeyError("answer")

    with pytest.raises(RewardError, match=r"broken raised on every response.*sample 0 of the batch "
                                          r"\(example 'ex-0'\): KeyError"):
        CustomReward(broken).score(["a", "b"], examples(2))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "1.0", None])
def test_nan_inf_or_a_non_number_names_the_reward_and_the_sample(value):
    def bad(response: str, example: Example):
        return value if example.id == "ex-1" else 0.5

    with pytest.raises(RewardError, match=r"custom reward .*bad returned .* on sample 1 of the batch "
                                          r"\(example 'ex-1'\); expected a finite float"):
        CustomReward(bad).score(["a", "b", "c"], examples(3))
    with pytest.raises(RewardError, match="sample 0"):  # a Score carrying NaN too
        CustomReward(lambda r, e: Score(float("nan"), False)).score(["a"], examples(1))


def test_a_hang_past_the_timeout_names_the_reward_and_the_sample():
    release = threading.Event()

    def hangs(response: str, example: Example) -> float:
        if example.id == "ex-1":
            release.wait(60)  # a blocking call: the watchdog's signal interrupts it
        return 1.0

    started = time.monotonic()
    try:
        with pytest.raises(RewardError, match=r"hangs gave no result within 0.5 s on sample 1 of the batch "
                                              r"\(example 'ex-1'\).*reward.custom_timeout"):
            CustomReward(hangs, timeout=0.5).score(["a", "b"], examples(2))
    finally:
        release.set()
    assert time.monotonic() - started < 10
    # the watchdog is idle again: the next calls are not interrupted
    assert [s.reward for s in CustomReward(hangs, timeout=0.5).score(["a", "b"], examples(2))] == [1.0, 1.0]


def test_a_busy_loop_past_the_timeout_is_interrupted_too():
    def spins(response: str, example: Example) -> float:
        try:
            while True:
                pass
        except Exception:  # noqa: BLE001 - the user's own catch-all must not swallow the timeout
            return 0.0

    with pytest.raises(RewardError, match="within 0.3 s on sample 0"):
        CustomReward(spins, timeout=0.3).score(["a"], examples(1))


class BatchReward:
    """A batch-scoring object, as `reward.custom` may name."""

    def __init__(self, drop: int = 0):
        self.drop = drop

    def score(self, responses, examples):
        return [1.0] * (len(responses) - self.drop)


def test_a_batch_reward_of_the_wrong_length_is_an_error():
    assert [s.reward for s in CustomReward(BatchReward()).score(["a", "b"], examples(2))] == [1.0, 1.0]
    with pytest.raises(RewardError, match=r"returned 1 scores for 2 responses \(first sample: sample 0"):
        CustomReward(BatchReward(drop=1)).score(["a", "b"], examples(2))


def test_check_scores_guards_any_reward_object():
    reward = MathReward()
    assert check_scores(reward, [Score(1.0, True)], examples(1)) == [Score(1.0, True)]
    with pytest.raises(RewardError, match="reward MathReward returned 1 scores for 2 responses"):
        check_scores(reward, [Score(1.0, True)], examples(2))
    with pytest.raises(RewardError, match=r"for sample 1 of the batch \(example 'ex-1'\)"):
        check_scores(reward, [Score(1.0, True), Score(float("nan"), False)], examples(2))
    reward.close()


def test_a_syntax_or_import_time_error_in_the_reward_file_names_file_and_line(tmp_path):
    broken = tmp_path / "broken_reward.py"
    broken.write_text("def reward(response, example):\n    return 1.0\n\nx = (\n")
    with pytest.raises(CustomRewardImportError, match=r"broken_reward.py:4.*SyntaxError"):
        load_callable(f"{broken}:reward")
    raising = tmp_path / "raising_reward.py"
    raising.write_text("import json\n\nTABLE = json.loads('{not json')\n")
    with pytest.raises(CustomRewardImportError, match=r"raising_reward.py:3: JSONDecodeError"):
        load_callable(f"{raising}:reward")


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def test_a_custom_reward_that_fails_to_import_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import remix_rft.trainer

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the custom reward was checked")

    monkeypatch.setattr(remix_rft.trainer, "load_model", no_model)
    monkeypatch.setattr(remix_rft.trainer, "load_tokenizer", no_model)
    (tmp_path / "needs_missing.py").write_text("import package_that_is_not_installed_xyz\n\n"
                                               "def reward(response, example):\n    return 1.0\n")
    out = tmp_path / "runs"
    argv = ["train", *TINY, f"logging.output_dir={out}"]
    assert main([*argv, f"reward.custom={tmp_path / 'needs_missing.py'}:reward"]) == 2
    line = _one_error_line(capsys)
    assert "needs_missing.py:1" in line and "package_that_is_not_installed_xyz" in line
    assert main([*argv, "reward.name=no_such_package_xyz.rewards:score"]) == 2
    assert "cannot import module 'no_such_package_xyz.rewards'" in _one_error_line(capsys)
    assert not out.exists()


def test_an_output_folder_that_cannot_be_written_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import remix_rft.preflight
    import remix_rft.trainer

    monkeypatch.setattr(remix_rft.trainer, "load_tokenizer", lambda *a, **k: pytest.fail("loaded the tokenizer"))
    (tmp_path / "a-file").write_text("")
    assert main(["train", *TINY, f"logging.output_dir={tmp_path / 'a-file' / 'runs'}"]) == 2
    assert "logging.output_dir" in (line := _one_error_line(capsys)) and "is a file, not a folder" in line
    locked = tmp_path / "locked"
    locked.mkdir()
    # root may write anywhere, so the permission is simulated where the check asks for it
    monkeypatch.setattr(remix_rft.preflight.os, "access", lambda path, mode: Path(path) != locked)
    assert main(["train", *TINY, f"logging.output_dir={locked / 'runs'}"]) == 2
    line = _one_error_line(capsys)
    assert f"logging.output_dir {locked / 'runs'}: not writable (its parent {locked} exists" in line


def test_a_nan_reward_mid_run_stops_with_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "nan_reward.py").write_text("def reward(response, example):\n    return float('nan')\n")
    out = tmp_path / "runs"
    assert main(["train", *TINY, f"logging.output_dir={out}", "logging.run_name=r",
                 f"reward.custom={tmp_path / 'nan_reward.py'}:reward"]) == 2
    line = _one_error_line(capsys)
    assert "nan_reward.py:reward returned nan" in line and "sample 0 of the batch" in line
    assert not (out / "r" / "checkpoints").exists()  # no step trained on it
