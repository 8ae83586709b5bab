"""A reduced efficiency study (tiny random model, 2 steps) so benchmarks/efficiency.py cannot rot."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "efficiency.py"


@pytest.fixture(scope="module")
def efficiency():
    spec = importlib.util.spec_from_file_location("efficiency_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_plan_covers_algorithms_ablations_and_sweep(efficiency):
    specs = efficiency.plan_runs([0.5], ["no-utd", "no-klconvex", "no-reincarnation"],
                                 ["grpo", "remix-grpo", "ppo", "remix-ppo", "trl-grpo"])
    names = [s.name for s in specs]
    assert names[:5] == ["grpo", "remix-grpo", "ppo", "remix-ppo", "trl-grpo"]
    by_name = {s.name: s for s in specs}
    assert by_name["remix-grpo-no-utd"].overrides == ["remix.updates_per_batch=1"]
    assert by_name["remix-grpo-no-klconvex"].overrides == ["remix.kl_convex=false"]
    assert by_name["remix-grpo-no-reincarnation"].overrides == ["remix.reincarnate_at=null"]
    assert by_name["sweep-p0.5"].overrides == ["remix.offpolicy_fraction=0.5", "remix.reincarnate_at=null"]
    assert by_name["trl-grpo"].engine == "trl"
    with pytest.raises(SystemExit, match="unknown run"):
        efficiency.plan_runs([], [], ["dpo"])


def test_budget_and_target_arithmetic(efficiency):
    summary = efficiency.RunSummary(efficiency.RunSpec("x", [], "main"), evals=[
        {"rollouts/total": 0, "eval/average/pass@1": 0.10},
        {"rollouts/total": 96, "eval/average/pass@1": 0.12},
        {"rollouts/total": 192, "eval/average/pass@1": 0.20},
    ])
    assert summary.accuracy_at(100) == 0.12
    assert summary.accuracy_at(192) == 0.20
    assert summary.rollouts_to(0.15) == 192
    assert summary.rollouts_to(0.5) is None


def test_wilson_interval_by_hand(efficiency):
    # 22/100: centre (0.22 + 1.96^2/200) / (1 + 1.96^2/100) = 0.2306..., half-width 0.0803...
    low, high = efficiency.wilson_interval(0.22, 100)
    assert low == pytest.approx(0.1500, abs=1e-4) and high == pytest.approx(0.3107, abs=1e-4)
    assert efficiency.wilson_interval(0.0, 100)[0] == 0.0 and efficiency.wilson_interval(1.0, 50)[1] == 1.0
    summary = efficiency.RunSummary(efficiency.RunSpec("x", [], "main"), evals=[
        {"rollouts/total": 0, "eval/average/pass@1": 0.22, "eval/average/problems": 100.0}])
    assert efficiency._interval(summary) == "15.0-31.1"


def test_reported_command_leaves_out_the_notes(efficiency):
    argv = ["--out", "x", "--notes", "long text", "--steps", "3", "--notes=more"]
    assert efficiency._without_notes(argv) == ["--out", "x", "--steps", "3"]


def test_mcnemar_exact_by_hand(efficiency):
    # 5 discordant problems split 0/5: 2 * (1/32) = 0.0625; split 1/4: 2 * (1 + 5)/32 = 0.375
    assert efficiency.mcnemar_exact(0, 5) == pytest.approx(0.0625)
    assert efficiency.mcnemar_exact(4, 1) == pytest.approx(0.375)
    assert efficiency.mcnemar_exact(0, 0) == 1.0 and efficiency.mcnemar_exact(3, 3) == 1.0


def test_paired_table_counts_discordant_problems(efficiency, tmp_path):
    def write(name, verdicts):
        folder = tmp_path / name / "eval" / "step_000004"
        folder.mkdir(parents=True)
        folder.joinpath("samples.jsonl").write_text("".join(
            json.dumps({"benchmark": "arithmetic", "problem_id": f"p{i}", "sample_index": 0, "correct": v}) + "\n"
            for i, v in enumerate(verdicts)))
        return efficiency.RunSummary(efficiency.RunSpec(name, [], "main", label=name.upper()))

    base = write("grpo", [True, True, False, False, False])
    other = write("remix", [True, False, True, True, False])
    table = efficiency.paired_table([base, other], base, tmp_path, 4)
    assert "| REMIX | 5 | 1 | 2 | 1 | 1.00 |" in table and "| GRPO |" not in table.split("\n", 2)[2]


def test_quick_study_end_to_end(efficiency, tmp_path):
    pytest.importorskip("trl")
    out, docs = tmp_path / "runs", tmp_path / "docs" / "results.md"
    assert efficiency.main(["--quick", "--out", str(out), "--runs", "grpo,remix-grpo,trl-grpo",
                            "--ablations", "no-utd", "--sweep", "0.5", "--docs", str(docs)]) == 0
    text = docs.read_text()
    for label in ("GRPO", "ReMix-GRPO", "TRL GRPOTrainer", "w/o raised UTD", "p = 0.5", "rollouts to", "95% CI",
                  "Paired against GRPO"):
        assert label in text
    for name in ("grpo", "remix-grpo", "trl-grpo", "remix-grpo-no-utd", "sweep-p0.5"):
        lines = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in lines if x["type"] == "train"] == [1, 2]
        assert (out / name / "wall.json").exists()
    figure = docs.parent / "figures" / "main" / "accuracy_vs_rollouts.png"
    assert figure.stat().st_size > 1000 and "accuracy_vs_rollouts.png" in text
    # a finished study is not run again
    before = (out / "grpo" / "wall.json").read_text()
    efficiency.main(["--quick", "--out", str(out), "--runs", "grpo", "--ablations", "", "--sweep", ""])
    assert (out / "grpo" / "wall.json").read_text() == before
