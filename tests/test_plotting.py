"""`remix-rft plot` on synthetic run directories."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from remix_rft.cli import main
from remix_rft.plotting import add_plot_arguments, load_run, plot_command, plot_runs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(
    run_dir: Path,
    steps: int = 12,
    reincarnate_at: int | None = 6,
    replay: bool = True,
    with_eval: bool = True,
    log_event: bool = True,
) -> Path:
    """A run directory as the trainer writes it: mix phase up to `reincarnate_at`, then on-policy."""
    run_dir.mkdir(parents=True)
    t = "null" if reincarnate_at is None else str(reincarnate_at)
    (run_dir / "config.yaml").write_text(
        f"algorithm: grpo\nremix:\n  reincarnate_at: {t}\n  replay_fraction: 0.4\n"
    )
    lines: list[dict] = []
    total = 0
    for step in range(1, steps + 1):
        mixing = reincarnate_at is not None and step <= reincarnate_at
        per_step = 6 if mixing else 10
        if log_event and reincarnate_at is not None and step == reincarnate_at + 1:
            # Logged at the start of step T + 1, as the trainer does.
            lines.append({"type": "event", "event": "reincarnation", "step": step, "rollouts/total": total})
        total += per_step
        row = {
            "type": "train",
            "step": step,
            "phase": "mix" if mixing else "on-policy",
            "rollouts/step": per_step,
            "rollouts/total": total,
            "tokens/total": total * 40,
            "reward/mean": 0.1 + 0.05 * step,
            "accuracy/train": 0.1 + 0.05 * step,
            "response_length/mean": 200.0 - 5 * step,
            "ratio/mean": 1.01,
            "kl_convex/weight": 1.0,
            "kl/base": 0.001 * step,
            "entropy": 1.5 - 0.05 * step,
            "time/step": 2.0,
        }
        if replay and mixing:
            row["ratio/fresh_mean"] = 1.0
            row["ratio/replay_mean"] = 1.03
        lines.append(row)
        if with_eval and step % 4 == 0:
            lines.append(
                {
                    "type": "eval",
                    "step": step,
                    "rollouts/total": total,
                    "eval/aime24/pass@1": 0.02 * step,
                    "eval/math500/pass@1": 0.03 * step,
                    "eval/average/pass@1": 0.025 * step,
                    "eval/average/self_reflection": 0.9,
                }
            )
    with (run_dir / "metrics.jsonl").open("w") as handle:
        for row in lines:
            handle.write(json.dumps(row) + "\n")
    return run_dir


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    assert len(data) > 2000, f"{path} is suspiciously small ({len(data)} bytes)"


def test_two_runs_write_every_figure(tmp_path: Path) -> None:
    remix = write_run(tmp_path / "remix-grpo")
    grpo = write_run(tmp_path / "grpo", reincarnate_at=None, replay=False)
    written = plot_runs([remix, grpo], tmp_path / "plots")
    names = {path.name for path in written}
    assert {
        "accuracy_vs_rollouts.png",
        "accuracy_vs_step.png",
        "reward.png",
        "train_accuracy.png",
        "response_length.png",
        "importance_ratio.png",
        "kl_convex_weight.png",
        "kl_base.png",
        "entropy.png",
        "self_reflection.png",
        "accuracy_aime24.png",
        "accuracy_math500.png",
    } == names
    for path in written:
        assert path.parent == tmp_path / "plots"
        assert_png(path)


def test_only_the_named_figures(tmp_path: Path) -> None:
    remix = write_run(tmp_path / "remix-grpo")
    written = plot_runs([remix], tmp_path / "plots", only=["reward", "accuracy_math500"])
    assert sorted(path.name for path in written) == ["accuracy_math500.png", "reward.png"]
    assert sorted(path.name for path in (tmp_path / "plots").iterdir()) == ["accuracy_math500.png", "reward.png"]
    with pytest.raises(ValueError, match="unknown figure"):
        plot_runs([remix], tmp_path / "plots", only=["rewards"])


def test_reincarnation_step_from_event_config_or_absent(tmp_path: Path) -> None:
    from_event = load_run(write_run(tmp_path / "a", reincarnate_at=6))
    assert from_event.reincarnate_at == 6
    assert from_event.rollouts_at_step(6) == 36.0
    assert from_event.reincarnation_rollouts == 36.0
    from_config = load_run(write_run(tmp_path / "b", reincarnate_at=5, log_event=False))
    assert from_config.reincarnate_at == 5
    # Configured but never reached: no line is drawn.
    not_reached = load_run(write_run(tmp_path / "c", steps=4, reincarnate_at=10, log_event=False))
    assert not_reached.reincarnate_at is None
    assert load_run(write_run(tmp_path / "d", reincarnate_at=None)).reincarnate_at is None
    assert from_event.label == "a"


def test_missing_series_are_skipped_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "no-eval"
    run.mkdir()
    rows = [{"type": "train", "step": s, "reward/mean": 0.1 * s} for s in range(1, 5)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = plot_runs([run], tmp_path / "out")
    assert [path.name for path in written] == ["reward.png"]
    assert_png(written[0])
    err = capsys.readouterr().err
    assert "skipped accuracy_vs_rollouts.png" in err
    assert "skipped importance_ratio.png" in err


def test_importance_ratio_with_only_the_overall_mean(tmp_path: Path) -> None:
    run = write_run(tmp_path / "ppo", reincarnate_at=None, replay=False, with_eval=False)
    written = {path.name for path in plot_runs([run], tmp_path / "out", verbose=False)}
    assert "importance_ratio.png" in written
    assert "accuracy_vs_rollouts.png" not in written


def test_missing_metrics_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(FileNotFoundError, match="empty-run.*metrics.jsonl"):
        plot_runs([tmp_path / "empty-run"], tmp_path / "out")


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    run = write_run(tmp_path / "broken", steps=3, with_eval=False)
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"type": "train", "step": 4, \n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 4: not valid JSON"):
        load_run(run)
    (run / "metrics.jsonl").write_text('{"type": "train", "step": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match="line 2: expected a JSON object"):
        load_run(run)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ValueError, match='line 1: missing the "type" key'):
        load_run(run)


def test_bad_reincarnation_step_in_config(tmp_path: Path) -> None:
    run = write_run(tmp_path / "r", log_event=False)
    (run / "config.yaml").write_text("remix:\n  reincarnate_at: soon\n")
    with pytest.raises(ValueError, match="config.yaml: remix.reincarnate_at"):
        load_run(run)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_plot_arguments(parser)
    return parser.parse_args(argv)


def test_plot_command_default_out_and_labels(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    first = write_run(tmp_path / "run1")
    second = write_run(tmp_path / "run2", reincarnate_at=None)
    assert plot_command(parse([str(first), str(second), "--labels", "ReMix,GRPO"])) == 0
    printed = capsys.readouterr().out.split()
    assert printed and all(Path(p).parent == first / "plots" for p in printed)
    assert (first / "plots" / "reward.png").is_file()


def test_plot_command_errors_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = write_run(tmp_path / "run1")
    # input errors: one line and exit status 2 through the command line
    assert main(["plot", str(run), "--labels", "a,b"]) == 2
    assert "remix-rft plot: error: got 2 labels for 1 run" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err


def test_seed_band_by_hand(tmp_path):
    from remix_rft.plotting import RunLog, plot_seed_bands, seed_band

    def run(seed, accs):
        evals = [{"type": "eval", "step": 10 * i, "rollouts/total": 256 * 10 * i, "eval/average/pass@1": a}
                 for i, a in enumerate(accs)]
        return RunLog(f"s{seed}", tmp_path, evals=evals)

    seeds = [run(0, [0.2, 0.4]), run(1, [0.1, 0.6]), run(2, [0.3, 0.5])]
    points = seed_band(seeds, "eval", "rollouts/total", "eval/average/pass@1")
    assert [(p.x, p.seeds) for p in points] == [(0.0, 3), (2560.0, 3)]
    assert points[0].mean == pytest.approx(0.2) and (points[0].low, points[0].high) == (0.1, 0.3)
    assert points[1].mean == pytest.approx(0.5) and (points[1].low, points[1].high) == (0.4, 0.6)
    out = tmp_path / "bands.png"
    assert plot_seed_bands([("GRPO", seeds)], out, source="eval", x_key="rollouts/total",
                           y_key="eval/average/pass@1", title="t", x_label="x", y_label="y")
    assert out.stat().st_size > 1000
    assert not plot_seed_bands([("GRPO", seeds)], tmp_path / "none.png", source="train", x_key="step",
                               y_key="reward/mean", title="t", x_label="x", y_label="y")
    assert not (tmp_path / "none.png").exists()
