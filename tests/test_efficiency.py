"""A reduced efficiency study (tiny random model, 2 steps) so benchmarks/efficiency.py cannot rot."""

import json
import sys

import pytest
import yaml


@pytest.fixture(scope="module")
def efficiency(load_benchmark):
    return load_benchmark("efficiency")


def test_cpu_preset_plans_todays_study(efficiency):
    preset = efficiency.load_preset("cpu")
    specs = efficiency.plan_study(preset, sweep=[0.5], ablations=["no-utd", "no-klconvex", "no-reincarnation"],
                                  runs=["grpo", "remix-grpo", "ppo", "remix-ppo", "trl-grpo"])
    names = [s.run_dir for s in specs]
    assert names == ["grpo", "remix-grpo", "ppo", "remix-ppo", "trl-grpo", "remix-grpo-no-utd",
                     "remix-grpo-no-klconvex", "remix-grpo-no-reincarnation", "sweep-p0.5"]
    by_name = {s.name: s for s in specs}
    shared = ["train.steps=12", "eval.every=4", "eval.limit=100", "checkpoint.save_final=false",
              "logging.progress=false", "remix.precedent=lagged", "model.frozen_dtype=auto",
              "model.gradient_checkpointing=false"]  # the study is METHOD's ReMix, not the default job's memory settings
    assert by_name["remix-grpo-no-utd"].overrides == [*shared, "remix.updates_per_batch=1", "train.seed=0"]
    assert by_name["sweep-p0.5"].overrides[-3:] == ["remix.offpolicy_fraction=0.5", "remix.reincarnate_at=null",
                                                    "train.seed=0"]
    assert by_name["trl-grpo"].engine == "trl" and all(s.config == "quickstart" for s in specs)
    with pytest.raises(SystemExit, match="unknown run"):
        efficiency.plan_study(preset, runs=["dpo"])
    with pytest.raises(SystemExit, match="unknown ablation"):
        efficiency.plan_study(preset, ablations=["no-critic"])


def test_quick_overrides_never_undo_what_a_run_is_about(efficiency):
    preset = efficiency.load_preset("cpu")
    specs = {s.name: s for s in efficiency.plan_study(preset, quick=True, user_overrides=["train.lr=1e-5"])}
    # the quick variant reincarnates at step 1, except in the runs that exist to go without reincarnation
    assert specs["remix-grpo"].overrides[-2:] == ["remix.reincarnate_at=1", "train.lr=1e-5"]
    assert "remix.reincarnate_at=1" not in specs["remix-grpo-no-reincarnation"].overrides
    assert "remix.reincarnate_at=1" not in specs["sweep-p0.75"].overrides
    assert specs["grpo"].overrides[:3] == ["train.steps=2", "eval.every=1", "eval.limit=4"]


def test_gpu_preset_plans_runs_per_seed(efficiency):
    preset = efficiency.load_preset("gpu")
    specs = efficiency.plan_study(preset)
    dirs = [s.run_dir for s in specs]
    assert dirs[:4] == ["grpo-s0", "grpo-s1", "grpo-s2", "grpo-s3"]
    assert {"ppo-s0", "ppo-s1", "remix-ppo-s1", "grpo-s2-boxed", "remix-grpo-s2-boxed", "mixppg-utd-200-s0",
            "sweep-p0.1-s0", "sweep-p0.6-s0"} <= set(dirs)
    by_dir = {s.run_dir: s for s in specs}
    ppo = by_dir["ppo-s1"]
    assert ppo.config == "ppo" and ppo.seed == 1 and ppo.overrides[-1] == "train.seed=1"
    # PPO's own batch shape comes after the common GRPO shape, so it wins
    assert ppo.overrides.index("train.prompts_per_step=256") > ppo.overrides.index("train.prompts_per_step=32")
    assert by_dir["mixppg-utd-200-s0"].steps == 200 and "train.steps=200" in by_dir["mixppg-utd-200-s0"].overrides
    sweep = by_dir["sweep-p0.25-s0"]
    assert sweep.value == 0.25 and "rollout.max_new_tokens=256" in sweep.overrides
    assert not any(o.startswith("data.instruction=") for o in sweep.overrides)  # the default "think step by step"
    assert by_dir["remix-grpo-s0"].baseline == "grpo"
    # issue 34's arms: the informative ReMix arm's options come after the common ReMix settings, so they win
    informative = by_dir["remix-grpo-informative-s3"]
    assert informative.config == "remix-grpo" and informative.baseline == "grpo"
    assert informative.overrides.index("remix.offpolicy_fraction=0.5") > informative.overrides.index(
        "remix.offpolicy_fraction=0.4")
    assert {"remix.replay=informative", "remix.history_window=4", "data.selection=skip_uninformative"} <= set(
        informative.overrides)
    assert "train.dynamic_sampling=true" in by_dir["grpo-dynamic-s2"].overrides and "grpo-dynamic-s3" not in by_dir
    assert informative.baselines == ("grpo", "grpo-dynamic")
    # --steps changes the study's length, not a run that sets its own
    longer = {s.run_dir: s for s in efficiency.plan_study(preset, steps=150)}
    assert longer["grpo-s0"].steps == 150 and longer["mixppg-utd-200-s0"].steps == 200
    quick = efficiency.plan_study(preset, quick=True)
    assert len(quick) == 9 and all(s.steps == 2 for s in quick)
    assert all(s.overrides.index("model.name=tiny-random") > s.overrides.index("train.seed=" + str(s.seed))
               for s in quick)


@pytest.mark.parametrize("name", ["cpu", "cpu-reincarnation", "cpu-reuse", "gpu"])
def test_every_planned_run_resolves_to_a_valid_config(efficiency, name):
    """Each run's full override list, as the study would launch it, passes the config's checks (no model loaded): a
    new arm's options fail here, not hours into a study."""
    from remix_rft.config import load_config

    specs = [s for s in efficiency.plan_study(efficiency.load_preset(name)) if s.engine == "remix"]
    assert specs
    for spec in specs:
        config = load_config(spec.config, spec.overrides)
        assert config.train.seed == spec.seed and config.train.steps == spec.steps, spec.run_dir


def test_preset_errors_name_the_file_and_key(efficiency, tmp_path):
    cpu = (efficiency.PRESET_DIR / "cpu.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(cpu + "\nconcurency: 3\n")
    with pytest.raises(efficiency.PresetError, match=r"bad.yaml: unknown key\(s\) \['concurency'\]"):
        efficiency.load_preset(str(bad))
    bad.write_text(cpu.replace("group: main, engine: trl", "group: baselines, engine: trl"))
    with pytest.raises(efficiency.PresetError, match=r"runs\[4\]: group 'baselines' is not under 'groups'"):
        efficiency.load_preset(str(bad))
    with pytest.raises(efficiency.PresetError, match=r"built-in presets: \['cpu', 'cpu-reincarnation', 'cpu-reuse', 'gpu'\]"):
        efficiency.load_preset("tpu")
    reuse = (efficiency.PRESET_DIR / "cpu-reuse.yaml").read_text()
    assert reuse.count("baseline: grpo,") == 3
    bad.write_text(reuse.replace("baseline: grpo,", "baseline: [grpo, grpo-dynamc],"))
    with pytest.raises(efficiency.PresetError, match=r"run 'grpo-dynamic' has baseline 'grpo-dynamc', which is no run"):
        efficiency.load_preset(str(bad))
    for wrong, message in (("[]", "must name one run or a list of distinct runs, got \\[\\]"),
                           ("[grpo, grpo]", "must name one run or a list of distinct runs"),
                           ("[grpo, {name: x}]", "must name one run or a list of distinct runs"),
                           ("[grpo, grpo-dynamic]", "run 'grpo-dynamic' names itself as its baseline")):
        bad.write_text(reuse.replace("baseline: grpo,", f"baseline: {wrong},", 1))
        with pytest.raises(efficiency.PresetError, match=message):
            efficiency.load_preset(str(bad))


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


def test_seconds_to_target_and_the_reincarnation_step(efficiency):
    summary = efficiency.RunSummary(
        efficiency.RunSpec("x", [], "main"),
        evals=[{"step": 0, "rollouts/total": 0, "eval/average/pass@1": 0.10},
               {"step": 2, "rollouts/total": 48, "eval/average/pass@1": 0.12},
               {"step": 4, "rollouts/total": 96, "eval/average/pass@1": 0.20}],
        train=[{"step": step, "time/step": seconds} for step, seconds in [(1, 10.0), (2, 11.0), (3, 12.5), (4, 9.5)]],
        events=[{"event": "reincarnation", "step": 3, "trigger": "ess"}])
    assert summary.seconds_to(0.12) == 21.0  # steps 1-2; evaluations are not training time
    assert summary.seconds_to(0.15) == 43.0 and summary.seconds_to(0.5) is None
    assert summary.reincarnation() == "3 (ess)"
    summary.events = [{"event": "reincarnation", "step": 9}]
    assert summary.reincarnation() == "9"


def test_wilson_interval_by_hand(efficiency):
    # 22/100: centre (0.22 + 1.96^2/200) / (1 + 1.96^2/100) = 0.2306..., half-width 0.0803...
    low, high = efficiency.wilson_interval(0.22, 100)
    assert low == pytest.approx(0.1500, abs=1e-4) and high == pytest.approx(0.3107, abs=1e-4)
    assert efficiency.wilson_interval(0.0, 100)[0] == 0.0 and efficiency.wilson_interval(1.0, 50)[1] == 1.0
    summary = efficiency.RunSummary(efficiency.RunSpec("x", [], "main"), evals=[
        {"rollouts/total": 0, "eval/average/pass@1": 0.22, "eval/average/problems": 100.0}])
    assert efficiency.interval_text(summary) == "15.0-31.1"


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


def _summary(efficiency, name, seed, curve, baseline=(), label=None, excluded=False, tokens_per_rollout=10):
    spec = efficiency.RunSpec(name, [], "main", label=label or name.upper(), seed=seed, run_dir=f"{name}-s{seed}",
                              baselines=baseline)
    evals = [{"type": "eval", "step": 10 * i, "rollouts/total": r, "tokens/total": r * tokens_per_rollout,
              "eval/average/pass@1": a} for i, (r, a) in enumerate(curve)]
    return efficiency.RunSummary(spec, evals=evals, excluded=excluded)


def test_seed_and_savings_tables_by_hand(efficiency):
    runs = [
        _summary(efficiency, "grpo", 0, [(0, 0.2), (100, 0.45), (200, 0.55)]),
        _summary(efficiency, "grpo", 1, [(0, 0.1), (100, 0.30), (200, 0.50)]),
        # dynamic sampling: seed 0 only, 100 rollouts to 50%
        _summary(efficiency, "dyn", 0, [(0, 0.2), (100, 0.50)]),
        # ReMix's responses are twice as long: its token savings are half its rollout savings
        _summary(efficiency, "remix", 0, [(0, 0.2), (50, 0.50), (150, 0.60)], baseline=("grpo", "dyn"),
                 tokens_per_rollout=20),
        _summary(efficiency, "remix", 1, [(0, 0.1), (50, 0.35), (150, 0.50)], baseline=("grpo", "dyn"),
                 tokens_per_rollout=20),
        _summary(efficiency, "remix", 2, [(0, 0.1), (50, 1.0), (150, 1.0)], baseline=("grpo",), excluded=True),
    ]
    seeds = efficiency.seed_table(runs, [0.5])
    # final 0.55 and 0.50: mean 52.5, sample sd sqrt(2 * 0.025^2) = 3.5 points; tokens to 50%: 200 x 10
    assert "| GRPO | 0 / 1 | 20.0 / 10.0 | 200 / 200 | 2.0k / 2.0k | 55.0 / 50.0 | 52.5 ± 3.5 | 200 |" in seeds
    assert "| REMIX | 0 / 1 | 20.0 / 10.0 | 50 / 150 | 1.0k / 3.0k | 60.0 / 50.0 | 55.0 ± 7.1 | 150 |" in seeds
    savings = efficiency.savings_table(runs, [0.5])
    # seed 0: GRPO needs 200 rollouts (2,000 tokens), ReMix 50 (1,000) -> 4x and 2x; seed 1: 200 / 150 and
    # 2,000 / 3,000; the excluded seed 2 is left out
    assert ("| REMIX | GRPO | 0 / 1 | 4.00x / 1.33x | 2.00x / 0.67x | 60.0 vs 55.0 / 50.0 vs 50.0 | 150 vs 200 |"
            in savings)
    # the second baseline gets its own row, over the seeds both have: 100 / 50 rollouts, 1,000 / 1,000 tokens
    assert "| REMIX | DYN | 0 | 2.00x | 1.00x | 60.0 vs 50.0 | 150 vs 100 |" in savings
    assert runs[3].spec.baseline == "grpo"


def test_savings_give_the_median_over_three_or_more_seeds(efficiency):
    runs = [_summary(efficiency, "grpo", seed, [(0, 0.1), (100, 0.3), (200, 0.5)]) for seed in range(3)]
    # ReMix reaches 50% at 50 and 100 rollouts; seed 2 never does in its 100: GRPO's 200 over all of those 100
    # bounds that seed's saving from above (< 2x), and it ranks low, not out
    runs += [_summary(efficiency, "remix", 0, [(0, 0.1), (50, 0.5)], baseline=("grpo",)),
             _summary(efficiency, "remix", 1, [(0, 0.1), (100, 0.5)], baseline=("grpo",)),
             _summary(efficiency, "remix", 2, [(0, 0.1), (100, 0.4)], baseline=("grpo",))]
    # the median lies between the medians of the lowest (4, 2, 0) and highest (4, 2, 2) values: 2 both
    assert "| 4.00x / 2.00x / <2.00x (median 2.00x) |" in efficiency.savings_table(runs, [0.5])
    # with two seeds only: no median
    assert "| 4.00x / 2.00x |" in efficiency.savings_table(runs[:2] + runs[3:5], [0.5])
    # seed 1 never reaches it either (< 2x): lows 4, 0, 0 and highs 4, 2, 2 leave the median at most 2x
    runs[4].evals[-1]["eval/average/pass@1"] = 0.4
    assert "| 4.00x / <2.00x / <2.00x (median <=2.00x) |" in efficiency.savings_table(runs, [0.5])
    # the baseline never reaching it bounds the saving from below: GRPO seed 0 tops out at 30% after 200 rollouts
    runs[0].evals[-1]["eval/average/pass@1"] = 0.3
    assert "| >4.00x / <2.00x / <2.00x (median <=2.00x) |" in efficiency.savings_table(runs, [0.5])
    runs[4].evals[-1]["eval/average/pass@1"] = 0.5  # seed 1 back at 2x: lows 4, 2, 0 -> 2; highs inf, 2, 2 -> 2
    assert "| >4.00x / 2.00x / <2.00x (median 2.00x) |" in efficiency.savings_table(runs, [0.5])
    # neither reaching it: '-', and that seed is no part of the median
    runs[5].spec.baselines = ("grpo",)
    runs[2].evals[-1]["eval/average/pass@1"] = 0.3
    assert "| >4.00x / 2.00x / - |" in efficiency.savings_table(runs, [0.5])
    # a target met at the first evaluation (before any rollout) gives no ratio, not a division by zero
    assert "| - / - / - |" in efficiency.savings_table(runs, [0.1])


def test_pairs_against_each_named_baseline_pool_the_seeds(efficiency, tmp_path):
    def run(name, seed, verdicts, baseline=()):
        folder = tmp_path / f"{name}-s{seed}" / "eval" / "step_000004"
        folder.mkdir(parents=True)
        folder.joinpath("samples.jsonl").write_text("".join(
            json.dumps({"benchmark": "arithmetic", "problem_id": f"p{i}", "sample_index": 0, "correct": v}) + "\n"
            for i, v in enumerate(verdicts)))
        return _summary(efficiency, name, seed, [(0, 0.1), (50, 0.5)], baseline=baseline)

    runs = [run("grpo", 0, [True, False, False, False, True]), run("dyn", 0, [True, True, True, True, True]),
            run("grpo", 1, [False, False, False, False, True]), run("dyn", 1, [True, True, True, False, True]),
            run("remix", 0, [False, False, False, False, False], baseline=("grpo", "dyn")),
            run("remix", 1, [True, True, True, True, True], baseline=("grpo", "dyn"))]
    table = efficiency.baseline_paired_table(runs, tmp_path, 4)
    # vs GRPO: seed 0 right only in GRPO twice (p = 2 x 1/4 = 0.50), seed 1 right only in ReMix 4 times
    # (2 x 1/16 = 0.125); pooled 4 vs 2 of 10 problems: 2 x (1 + 6 + 15)/64 = 0.6875
    assert "| REMIX | GRPO | 0 / 1 | 0 vs 2 / 4 vs 0 | 0.50 / 0.12 | 10 | 4 vs 2 | 0.69 |" in table
    # vs dynamic sampling: 0 vs 5 and 1 vs 0 -> pooled 1 vs 5: 2 x (1 + 6)/64 = 0.21875
    assert "| REMIX | DYN | 0 / 1 | 0 vs 5 / 1 vs 0 | 0.06 / 1.00 | 10 | 1 vs 5 | 0.22 |" in table
    assert table.count("\n") == 3  # header, rule, two rows: runs without baselines get none
    assert efficiency.baseline_paired_table(runs[:4], tmp_path, 4) == ""


def test_median_saving_is_a_range_where_bounds_point_both_ways(efficiency):
    from efficiency_report import _median_saving

    assert _median_saving([(">", 1.0), ("<", 2.0), ("=", 3.0)]) == " (median 1.00-3.00x)"
    assert _median_saving([("=", 1.0), ("=", 3.0), (">", 2.0)]) == " (median 2.00-3.00x)"
    assert _median_saving([("=", 1.0), ("=", 2.0), ("=", 6.0), ("=", 8.0)]) == " (median 4.00x)"
    assert _median_saving([(">", 3.0), (">", 5.0), ("=", 1.0)]) == " (median >=3.00x)"


def test_write_section_keeps_text_outside_its_markers(efficiency, tmp_path):
    doc = tmp_path / "results.md"
    efficiency.write_section(doc, "gpu", "# GPU v1")
    doc.write_text("intro\n\n" + doc.read_text() + "\nhand-written notes\n")
    efficiency.write_section(doc, "cpu", "# CPU v1")
    efficiency.write_section(doc, "gpu", "# GPU v2")
    text = doc.read_text()
    assert "GPU v1" not in text and text.index("intro") < text.index("GPU v2") < text.index("hand-written notes")
    assert text.index("hand-written notes") < text.index("CPU v1")


def _combined_metrics(path, runs):
    lines = []
    for run, (per_step, curve) in runs.items():
        for i, (rollouts, acc) in enumerate(curve):
            step = 2 * i
            if step:
                lines.append({"type": "train", "step": step, "rollouts/step": per_step, "rollouts/total": rollouts,
                              "response_length/mean": 40.0 - step, "phase": "mix", "offpolicy_fraction": 0.4,
                              "time/step": 4.0, "memory/peak_gpu_mb": 13 * 1024, "run": run})
            lines.append({"type": "eval", "step": step, "rollouts/total": rollouts, "eval/average/pass@1": acc,
                          "eval/average/problems": 300.0, "run": run})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_report_from_a_combined_metrics_file(efficiency, tmp_path):
    metrics = tmp_path / "study.metrics.jsonl"
    _combined_metrics(metrics, {
        "grpo-s0": (256, [(0, 0.17), (512, 0.42), (1024, 0.52)]),
        "grpo-s1": (256, [(0, 0.18), (512, 0.38), (1024, 0.51)]),
        "remix-grpo-s0": (152, [(0, 0.17), (304, 0.45), (608, 0.56)]),
        "remix-grpo-s1": (152, [(0, 0.18), (304, 0.41), (608, 0.50)]),
        "remix-grpo-s2": (152, [(0, 0.14), (304, 1.0), (608, 1.0)]),
        "stray": (1, [(0, 0.0)]),
    })
    docs = tmp_path / "docs" / "results.md"
    assert efficiency.main(["--preset", "gpu", "--figures-from", str(metrics), "--exclude", "remix-grpo-s2",
                            "--steps", "4", "--machine", "one H100", "--commit", "abc1234", "--docs", str(docs)]) == 0
    text = docs.read_text()
    assert "one H100" in text and "abc1234" in text and str(metrics) in text
    assert "| ReMix-GRPO | 0 / 1 | 17.0 / 18.0 | 304 / 304 | 608 / 608 |" in text  # to 40% / to 50%
    assert "ReMix-GRPO (excluded: see notes)" in text and "Excluded from the seed summaries" in text
    # to 40%: GRPO 512 / 304 (seed 0) and 1024 / 304 (seed 1: 38% at 512); to 50%: 1024 / 608 both
    assert "| ReMix-GRPO | GRPO | 0 / 1 | 1.68x / 3.37x | 1.68x / 1.68x |" in text
    assert "Not run (not in the metrics file): " in text and "ppo-s0" in text
    figure = docs.parent / "figures" / "gpu" / "accuracy_vs_rollouts.png"
    assert figure.stat().st_size > 1000 and "figures/gpu/accuracy_vs_rollouts.png" in text
    metrics.write_text('{"type": "eval", "step": 0}\n')
    with pytest.raises(ValueError, match="record 1: missing the 'run' field"):
        efficiency.main(["--preset", "gpu", "--figures-from", str(metrics)])


TINY = ["model.name=tiny-random", "model.autocast_bf16=false", "rollout.max_new_tokens=4", "eval.max_new_tokens=4",
        "train.prompts_per_step=2", "train.samples_per_prompt=2", "train.minibatch_size=2", "checkpoint.every=1"]


def test_interrupted_run_resumes_from_its_checkpoint(efficiency, tmp_path):
    preset = tmp_path / "one.yaml"
    preset.write_text(yaml.safe_dump({
        "config": "grpo", "steps": 1, "eval_every": 1, "eval_limit": 2, "target_gain": 0.05,
        "common": ["logging.progress=false", "checkpoint.save_final=false"], "groups": {"main": {}},
        "runs": [{"name": "grpo", "group": "main"}]}))
    out = tmp_path / "runs"
    args = ["--preset", str(preset), "--out", str(out), *TINY]
    assert efficiency.main(args) == 0  # finishes step 1 with a checkpoint
    run = out / "grpo"
    assert efficiency.next_action(efficiency.RunSpec("grpo", [], "main", steps=2), out) == "resume"
    # stopped at the time limit long before it can finish: its process group is gone, the run is resumable
    assert efficiency.main([*args, "--steps", "2", "--time-limit", "1"]) == 1
    assert efficiency.main([*args, "--steps", "2"]) == 0
    train_steps = [r["step"] for r in efficiency.run_records(run) if r["type"] == "train"]
    assert train_steps == [1, 2]  # step 1 was not trained again
    wall = json.loads((run / "wall.json").read_text())
    assert wall["resumed_from_step"] == 1 and "--resume" in wall["command"]


def test_gpu_preset_quick_end_to_end(efficiency, tmp_path):
    out, docs = tmp_path / "runs", tmp_path / "docs" / "results.md"
    assert efficiency.main(["--preset", "gpu", "--quick", "--out", str(out), "--docs", str(docs)]) == 0
    text = docs.read_text()
    for label in ("GRPO", "ReMix-GRPO", "ReMix-GRPO (informative)", "w/o raised UTD",
                  "boxed answers only", "Mix-PPG with UTD", "p = 0.1", "p = 0.6", "Per run over its seeds",
                  "Rollout saving against each baseline the run names", "rollouts to 50%",
                  "self-reflection (first -> last eval)", "Each run's config and overrides",
                  "Paired against each baseline the run names"):
        assert label in text, label
    for name in ("grpo-s0", "grpo-s1", "remix-grpo-s1", "remix-grpo-informative-s0",
                 "remix-grpo-no-utd-s0", "grpo-s2-boxed",
                 "mixppg-utd-200-s0", "sweep-p0.1-s0", "sweep-p0.6-s0"):
        records = efficiency.run_records(out / name)
        assert [x["step"] for x in records if x["type"] == "train"] == [1, 2], name
        assert (out / name / "wall.json").exists() and not (out / name / "checkpoints").exists()
    for figure in ("accuracy_vs_rollouts", "sweep_response_length", "sweep_self_reflection", "long_self_reflection"):
        path = docs.parent / "figures" / "gpu" / f"{figure}.png"
        assert path.stat().st_size > 1000 and f"figures/gpu/{figure}.png" in text
    # a finished study is not run again
    before = (out / "grpo-s0" / "wall.json").read_text()
    assert efficiency.main(["--preset", "gpu", "--quick", "--out", str(out), "--only", "grpo", "--seeds", "0"]) == 0
    assert (out / "grpo-s0" / "wall.json").read_text() == before


def test_study_runs_import_the_code_of_the_checkout_the_study_runs_from(efficiency):
    """A study launched from a git worktree pinned to a commit must run that commit's code, not the editable
    install's (a 2026-12-06 study found its runs importing the live working tree)."""
    import os
    import subprocess

    from efficiency_runner import (  # importable once the `efficiency` fixture loaded the script
        REPO,
        run_environment,
    )

    env = run_environment(1)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO / "src")
    out = subprocess.run([sys.executable, "-c", "import remix_rft; print(remix_rft.__file__)"], env=env, cwd="/",
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(REPO / "src" / "remix_rft" / "__init__.py")


def test_a_list_of_target_gains_reports_each_target_headline_first(efficiency):
    spec = efficiency.RunSpec("grpo", [], "main", steps=2)
    runs = [efficiency.RunSummary(spec=spec, evals=[{"rollouts/total": 0, "eval/average/pass@1": start}])
            for start in (0.18, 0.22)]
    targets, gains = efficiency.accuracy_targets({"target_gain": [0.10, 0.05]}, runs)
    assert gains == [0.10, 0.05] and targets == pytest.approx([0.30, 0.25])
    assert efficiency.accuracy_targets({"target_gain": 0.05}, runs) == (pytest.approx([0.25]), [0.05])
    assert efficiency.accuracy_targets({"target_gain": 0.05}, runs, 0.2)[1] == [0.2]  # --target-gain wins
