"""`remix-rft plan`: step arithmetic, architecture lookup without weights, and the memory estimate vs a measurement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from remix_rft.cli import main
from remix_rft.config import load_config
from remix_rft.models import load_tokenizer
from remix_rft.plan import memory_estimate, resolve_architecture, step_arithmetic

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_paper_grpo_plan_counts_676000_rollouts_and_fits_80_gb(capsys):
    assert main(["plan", "--config", "remix-grpo-1.5b", "--device", "cuda", "--device-memory-gb", "80"]) == 0
    out = capsys.readouterr().out
    assert "total rollouts over 350 steps: 676,000" in out
    assert "1.777B parameters" in out and "WARNING" not in out
    phases, total = step_arithmetic(load_config("remix-grpo-1.5b"))
    assert total == 676_000
    assert [(p.phase, p.steps, p.generated, p.trained, p.optimizer_steps) for p in phases] == [
        ("mix", 50, 154 * 8, 2048, 16), ("on-policy", 300, 2048, 2048, 8)]


def test_paper_ppo_plan_counts_whole_prompts():
    # 100 x 154 + 250 x 256: the paper's 79,360 counts the fractional 0.6 x 256 = 153.6 fresh prompts (schedule.py)
    assert step_arithmetic(load_config("remix-ppo-1.5b"))[1] == 79_400


def test_plan_warns_when_over_the_device(capsys):
    assert main(["plan", "--config", "remix-grpo-1.5b", "--device", "cuda", "--device-memory-gb", "24"]) == 0
    assert "WARNING: over the device memory" in capsys.readouterr().out


def test_known_architecture_matches_the_qwen2_1_5b_numbers():
    arch = resolve_architecture("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    assert (arch.hidden_size, arch.num_layers, arch.num_heads, arch.num_kv_heads, arch.intermediate_size,
            arch.vocab_size, arch.tied_embeddings) == (1536, 28, 12, 2, 8960, 151936, False)
    # 2 x 151936 x 1536 embeddings/head + 28 layers x (q,k,v,o with qkv bias + 3 MLP matrices + 2 norms) + norm
    layer = 1536 * 1536 + 1536 + 2 * (1536 * 256 + 256) + 1536 * 1536 + 3 * 1536 * 8960 + 2 * 1536
    assert arch.parameters == 2 * 151936 * 1536 + 28 * layer + 1536


def test_unknown_hub_model_says_what_is_needed(capsys, tmp_path):
    code = main(["plan", "--config", "remix-grpo", "model.name=nobody/no-such-model"])
    assert code == 2 and "--model-config" in capsys.readouterr().err
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                                  "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 1000}))
    arch = resolve_architecture("nobody/no-such-model", str(config))
    assert arch.hidden_size == 64 and arch.parameters > 0


def test_bf16_halves_frozen_copies_and_checkpointing_cuts_activations():
    arch = resolve_architecture("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    bf16 = memory_estimate(load_config("remix-grpo-1.5b"), arch)
    fp32 = memory_estimate(load_config("remix-grpo-1.5b", ["model.dtype=float32"]), arch)
    assert fp32["frozen copies"] == 2 * bf16["frozen copies"] == 4 * arch.parameters * 2
    plain = memory_estimate(load_config("remix-grpo-1.5b", ["model.gradient_checkpointing=false"]), arch)
    assert plain["update peak"] > bf16["update peak"] + 50e9  # 32k tokens x 28 layers without checkpointing


def test_estimate_within_30_percent_of_measured_peak_rss_on_cpu(tmp_path):
    """A ~30M-parameter random Llama (so the model, not the Python runtime, dominates) trains one step in a fresh
    process; its peak RSS (VmHWM, logged as memory/peak_rss_mb) is compared with the plan's CPU estimate."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer("tiny-random")
    model_dir = tmp_path / "model"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
                         num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    overrides = [f"model.name={model_dir}", "model.device=cpu", "train.steps=1", "train.prompts_per_step=4",
                 "train.samples_per_prompt=4", "train.minibatch_size=16", "train.micro_batch_tokens=512",
                 "rollout.max_new_tokens=16", "rollout.temperature=1.0", "eval.benchmarks=[]",
                 "remix.offpolicy_fraction=0.25", "remix.kl_convex_start=0", "checkpoint.save_final=false",
                 "logging.tensorboard=false", "logging.progress=false", f"logging.output_dir={tmp_path}",
                 "logging.run_name=run", "data.train_options={size: 64}"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "remix_rft.cli", "train", "--config", "remix-grpo", *overrides],
                   check=True, env=env, cwd=tmp_path, capture_output=True)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    measured = max(line["memory/peak_rss_mb"] for line in lines if line["type"] == "train") * 2**20
    estimate = memory_estimate(load_config("remix-grpo", overrides), resolve_architecture(str(model_dir)),
                               prompt_tokens=64, device_type="cpu")["peak"]
    assert estimate == pytest.approx(measured, rel=0.3), (estimate / 2**20, measured / 2**20)


def test_cpu_plan_compares_with_this_machines_ram(capsys):
    assert main(["plan", "--device", "cpu"]) == 0  # the default job
    ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    out = capsys.readouterr().out
    assert f"GB of {ram_gb:.0f} GB" in out and "runtime (python, torch)" in out


def test_plan_counts_what_dynamic_sampling_may_spend_and_names_the_other_options(capsys):
    overrides = ["train.dynamic_sampling=true", "train.dynamic_sampling_max_rounds=3", "data.selection=skip_uninformative",
                 "remix.replay=informative"]
    # quickstart: 8 steps of 6 fresh prompts and 8 of 8, 4 samples each = 448 rollouts; dynamic sampling up to 3x
    assert main(["plan", "--config", "quickstart", *overrides]) == 0
    out = capsys.readouterr().out
    assert "total rollouts over 16 steps: 448" in out
    assert "between 448 and 1,344 rollouts (3 rounds at most)" in out
    assert "prompt selection: the count is unchanged" in out and "informative replay: generation unchanged" in out
    assert main(["plan", "--config", "quickstart", "--json", *overrides]) == 0
    assert json.loads(capsys.readouterr().out)["max_total_rollouts"] == 1344


def test_auto_checkpointing_turns_on_only_past_80_percent_of_the_memory_at_hand():
    """The update's peak is compared: checkpointing lowers that one only."""
    from remix_rft.plan import LEAN_MEMORY_SHARE, choose_gradient_checkpointing

    config = load_config("quickstart", ["model.gradient_checkpointing=auto", "model.dtype=float32"])
    arch = resolve_architecture(config.model.name)
    plain = memory_estimate(config, arch, 64, "cpu", checkpointing=False)["update peak"]
    lean = memory_estimate(config, arch, 64, "cpu", checkpointing=True)["update peak"]
    assert lean < plain  # what checkpointing buys, by the same memory model
    # the boundary: on exactly when the estimate without it passes 80% of what the run has
    assert choose_gradient_checkpointing(config, arch, 64, "cpu", plain / LEAN_MEMORY_SHARE * 1.01)[0] is False
    on, why = choose_gradient_checkpointing(config, arch, 64, "cpu", plain / LEAN_MEMORY_SHARE * 0.99)
    assert on is True and "auto" in why and f"{plain / 1e9:.2f} GB" in why
    # true / false force it whatever the memory, and say so
    forced = load_config("quickstart", ["model.gradient_checkpointing=false"])
    assert choose_gradient_checkpointing(forced, arch, 64, "cpu", 1.0) == (
        False, "gradient checkpointing off (model.gradient_checkpointing=false)")
    forced = load_config("quickstart", ["model.gradient_checkpointing=true"])
    assert choose_gradient_checkpointing(forced, arch, 64, "cpu", 1e15)[0] is True


def test_memory_at_hand_reads_memavailable_shared_by_the_hosts_ranks(tmp_path):
    from remix_rft.memory import memory_at_hand

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n")
    none = str(tmp_path / "no-cgroup")
    assert memory_at_hand("cpu", meminfo=str(meminfo), environ={}, cgroup=none) == 20_000_000 * 1024
    assert memory_at_hand("cpu", meminfo=str(meminfo), environ={"LOCAL_WORLD_SIZE": "2"},
                          cgroup=none) == 10_000_000 * 1024
    # a container's limit leaves less than the host's MemAvailable: the limit wins
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text("8000000000\n")
    (cgroup / "memory.current").write_text("3000000000\n")
    assert memory_at_hand("cpu", meminfo=str(meminfo), environ={}, cgroup=str(cgroup)) == 5e9
    (cgroup / "memory.max").write_text("max\n")
    assert memory_at_hand("cpu", meminfo=str(meminfo), environ={}, cgroup=str(cgroup)) == 20_000_000 * 1024


def test_plan_prints_what_auto_checkpointing_decides(capsys):
    assert main(["plan", "--config", "quickstart", "--device", "cpu", "--device-memory-gb", "1000",
                 "model.gradient_checkpointing=auto"]) == 0
    assert "gradient checkpointing off (model.gradient_checkpointing=auto)" in capsys.readouterr().out
    assert main(["plan", "--config", "quickstart", "--device", "cpu", "--device-memory-gb", "2",
                 "model.gradient_checkpointing=auto"]) == 0
    out = capsys.readouterr().out
    assert "gradient checkpointing on (model.gradient_checkpointing=auto)" in out
    assert "activations (micro-batch)" in out


def test_auto_checkpointing_stays_off_for_a_config_it_cannot_estimate():
    from remix_rft.plan import gradient_checkpointing_for_run

    def unreadable():
        raise AttributeError("'GPT2Config' object has no attribute 'intermediate_size'")

    on, why = gradient_checkpointing_for_run(load_config("grpo"), unreadable, lambda: 64, 1e6, "cpu")
    assert on is False and "no memory estimate" in why and "intermediate_size" in why
