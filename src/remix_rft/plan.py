"""`remix-rft plan`: a run's step arithmetic and peak memory per device, from the config alone (no weights loaded).

The architecture comes from the model's Hugging Face config (a local folder, the embedded model's converted copy,
the HF cache, `--model-config config.json`) or, for the shipped 1.5B configs' model, from `KNOWN_ARCHITECTURES`, so
`remix-rft plan --config remix-grpo-1.5b` works offline. Parameters are counted exactly by building the model on
PyTorch's meta device.

Memory model (bytes; N policy parameters, c = 2 under bf16 mixed precision else 4):
  policy: float32 weights 4N, float32 gradients 4N, AdamW moments 8N, and under bf16 autocast the bf16 weight copies
  autocast holds during a forward/backward (2N). Frozen copies (reference, lagged precedent): 2N each when stored in
  bf16 (model.frozen_dtype), else 4N; a bf16-stored copy under float32 compute is upcast one module at a time
  during its log-prob pass (one module's float32 weights and the output embedding), a transient below the update's.
  Critic (PPO): its trunk + head trained like the policy (16 bytes a parameter, +2 under bf16).
  LoRA (model.lora.r > 0, L adapter parameters: r x (in + out) of each adapted linear layer): the frozen base keeps
  its float32 weights (4N), the adapters train (4L weights, 4L gradients, 8L AdamW moments), and the frozen copies
  are adapter snapshots (4L each) instead of models; the critic keeps a frozen trunk (4N_c) with its own adapters
  and a full value head.
  Training activations of one micro-batch of T = train.micro_batch_tokens tokens, per token and layer
  (HF Llama/Qwen2 decoder layer, what autograd saves): 28·H + 6·KV + 8·I bytes under bf16 autocast,
  28·H + 12·KV + 16·I under float32 (H hidden, KV = kv heads x head dim, I intermediate). With gradient
  checkpointing only each layer's float32 input (4·H) is kept, plus one layer's activations during its recompute.
  Log-prob chunks: 3 float32 [chunk, vocab] buffers (logits, probabilities, gradient).
  Generation: KV cache of rollout.max_batch_size sequences of (prompt + max_new_tokens) tokens, 2·layers·KV·c
  bytes a token, plus the sampler's float32 [batch, vocab] logits (x3: logits, log-softmax, filtered).
  Gradients are freed after each optimizer step, so generation and the update peak separately:
    peak = static + max(generation extras, update extras).
  On CPU the estimate adds the Python/PyTorch runtime (RUNTIME_BYTES_CPU) to compare with peak RSS; on GPU it is
  what torch.cuda.max_memory_allocated measures (the CUDA context, ~0.5 GB, comes on top).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from remix_rft.config import Config, ConfigError, load_config
from remix_rft.schedule import ReMixSchedule

GIB = 2**30
RUNTIME_BYTES_CPU = 0.45 * GIB  # measured: python -c "import remix_rft.trainer" peaks at ~0.39 GiB RSS, + tokenizer

# Architectures of the shipped configs' models, for planning without the model's files (offline).
KNOWN_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": {
        "model_type": "qwen2", "hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12,
        "num_key_value_heads": 2, "intermediate_size": 8960, "vocab_size": 151936, "tie_word_embeddings": False,
        "max_position_embeddings": 131072,
    },
}


@dataclass(frozen=True)
class Architecture:
    name: str
    source: str  # where the numbers came from
    parameters: int
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tied_embeddings: bool

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def critic_parameters(self) -> int:
        """Trunk without the LM head (kept if tied: the input embedding) + a scalar value head."""
        head = 0 if self.tied_embeddings else self.vocab_size * self.hidden_size
        return self.parameters - head + self.hidden_size + 1


def _count_parameters(hf_config) -> int:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    return sum(p.numel() for p in model.parameters())  # tied weights are one Parameter, counted once


def architecture_from_hf_config(hf_config, name: str, source: str) -> Architecture:
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return Architecture(
        name=name, source=source, parameters=_count_parameters(hf_config), vocab_size=text.vocab_size,
        hidden_size=text.hidden_size, num_layers=text.num_hidden_layers, num_heads=heads,
        num_kv_heads=getattr(text, "num_key_value_heads", None) or heads, head_dim=head_dim,
        intermediate_size=text.intermediate_size, tied_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
    )


def resolve_architecture(model_name: str, model_config: str | None = None) -> Architecture:
    """The architecture of `model_name` without loading weights; `model_config` (a config.json or folder) wins."""
    from transformers import AutoConfig

    from remix_rft import models

    if model_config is not None:
        path = Path(model_config)
        if not path.exists():
            raise FileNotFoundError(f"--model-config {path} does not exist")
        hf_config = AutoConfig.from_pretrained(path.parent if path.is_file() else path)
        return architecture_from_hf_config(hf_config, model_name, str(path))
    if models._tiny_seed(model_name) is not None:
        config = models.tiny_model_config()
        return architecture_from_hf_config(config, model_name, "built-in tiny-random config")
    if model_name in models.EMBEDDED_MODELS:
        directory = models.cache_dir() / "models" / model_name
        if (directory / "config.json").is_file():
            return architecture_from_hf_config(AutoConfig.from_pretrained(directory), model_name, str(directory))
        gguf = models.embedded_gguf_path(model_name)  # reads the GGUF header's metadata, no tensors
        hf_config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        return architecture_from_hf_config(hf_config, model_name, str(gguf))
    if Path(model_name).is_dir():
        return architecture_from_hf_config(AutoConfig.from_pretrained(model_name), model_name, model_name)
    try:
        hf_config = AutoConfig.from_pretrained(model_name, local_files_only=True)
        return architecture_from_hf_config(hf_config, model_name, "Hugging Face cache")
    except OSError:
        pass
    if model_name in KNOWN_ARCHITECTURES:
        from transformers import CONFIG_MAPPING

        numbers = dict(KNOWN_ARCHITECTURES[model_name])
        hf_config = CONFIG_MAPPING[numbers.pop("model_type")](**numbers)
        return architecture_from_hf_config(hf_config, model_name, "remix_rft.plan.KNOWN_ARCHITECTURES")
    raise FileNotFoundError(
        f"no config for model {model_name!r} offline: not a local folder, not in the Hugging Face cache and not in "
        f"the built-in table ({', '.join(KNOWN_ARCHITECTURES)}). Pass --model-config path/to/config.json (the "
        f"model's config.json: hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, "
        f"intermediate_size, vocab_size, tie_word_embeddings)")


# ------------------------------------------------------------------------------------------------- step arithmetic


@dataclass(frozen=True)
class PhaseArithmetic:
    phase: str
    steps: int
    generated: int  # responses generated per step
    trained: int  # responses trained on per step (steady state; the first mix step replays nothing)
    optimizer_steps: int  # per training step


def step_arithmetic(config: Config) -> tuple[list[PhaseArithmetic], int]:
    """Per-phase arithmetic and total rollouts over train.steps (the paper's accounting)."""
    from remix_rft.schedule import build_schedule

    t = config.train
    schedule: ReMixSchedule = build_schedule(config)
    phases: list[PhaseArithmetic] = []
    for step in range(1, t.steps + 1):
        plan = schedule.plan(step)
        if phases and phases[-1].phase == plan.phase:
            phases[-1] = PhaseArithmetic(**{**phases[-1].__dict__, "steps": phases[-1].steps + 1})
            continue
        trained = (plan.fresh_prompts + plan.replay_prompts) * t.samples_per_prompt
        phases.append(PhaseArithmetic(
            phase=plan.phase, steps=1, generated=plan.fresh_prompts * t.samples_per_prompt, trained=trained,
            optimizer_steps=plan.updates_per_batch * -(-trained // t.minibatch_size)))
    return phases, schedule.total_rollouts(t.steps, t.samples_per_prompt)


# ------------------------------------------------------------------------------------------------- memory


def lora_parameters(arch: Architecture, r: int, target_modules: list[str] | str, critic: bool = False) -> int:
    """Adapter parameters of a Llama/Qwen2-style decoder: r x (in + out) of each adapted projection, every layer.
    "all-linear" adapts all seven (never the LM head, which the critic does not have anyway)."""
    h, kv, q, i = arch.hidden_size, arch.kv_dim, arch.num_heads * arch.head_dim, arch.intermediate_size
    shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h), "gate_proj": (h, i),
              "up_proj": (h, i), "down_proj": (i, h)}
    names = set(shapes) if target_modules == "all-linear" else {name.rsplit(".", 1)[-1] for name in target_modules}
    per_layer = sum(fan_in + fan_out for name, (fan_in, fan_out) in shapes.items() if name in names)
    return r * per_layer * arch.num_layers


def _activation_bytes_per_token_layer(arch: Architecture, bf16: bool) -> float:
    h, kv, i = arch.hidden_size, arch.kv_dim, arch.intermediate_size
    return 28 * h + 6 * kv + 8 * i if bf16 else 28 * h + 12 * kv + 16 * i


def memory_estimate(config: Config, arch: Architecture, prompt_tokens: int = 256,
                    device_type: str = "cuda", checkpointing: bool | None = None) -> dict[str, float]:
    """Peak memory components in bytes (see the module docstring); key 'peak' is the estimate. `checkpointing`:
    with or without activation checkpointing (default: the config's; `auto` counts as off, the larger estimate)."""
    m, t, ro = config.model, config.train, config.rollout
    if checkpointing is None:
        checkpointing = m.gradient_checkpointing is True
    bf16 = m.bf16
    c = 2 if bf16 else 4
    n = arch.parameters
    uses_kl = config.algorithm.kl_coef > 0
    lagged = config.lagged_precedent
    critic_n = arch.critic_parameters if config.algorithm.name == "ppo" else 0
    if m.lora.enabled:  # the base is frozen: weights only; the adapters train; snapshots instead of copies
        adapters = lora_parameters(arch, m.lora.r, m.lora.peft_target_modules)
        critic_adapters = adapters if critic_n else 0
        trained, critic_trained = adapters, critic_adapters + (arch.hidden_size + 1 if critic_n else 0)
        out: dict[str, float] = {
            "policy weights (fp32)": 4 * (n + adapters),
            "policy AdamW moments": 8 * adapters,
            "frozen copies": (int(uses_kl) + int(lagged)) * 4 * adapters,
            "critic weights + AdamW": 4 * critic_n + 12 * critic_trained,
        }
    else:
        trained, critic_trained = n, critic_n
        out = {
            "policy weights (fp32)": 4 * n,
            "policy AdamW moments": 8 * n,
            "frozen copies": (int(uses_kl) + int(lagged)) * (2 if m.frozen_storage_dtype == "bfloat16" else 4) * n,
            "critic weights + AdamW": 12 * critic_n,
        }
    if device_type == "cpu":
        out["runtime (python, torch)"] = RUNTIME_BYTES_CPU
    static = sum(out.values())
    cast_copies = 2 * n if bf16 else 0  # bf16 copies of the fp32 weights autocast keeps during a pass

    # generation
    sequences = min(ro.max_batch_size, t.prompts_per_step * t.samples_per_prompt)
    length = prompt_tokens + ro.max_new_tokens
    kv_cache = sequences * length * 2 * arch.num_layers * arch.kv_dim * c
    sampler_logits = 3 * sequences * arch.vocab_size * 4
    generation = {"generation KV cache": kv_cache, "generation logits": sampler_logits,
                  "autocast weight copies": cast_copies}

    # update: one micro-batch through the policy (the critic's is smaller: no LM head)
    tokens = min(t.micro_batch_tokens, t.minibatch_size * length)
    per_layer = _activation_bytes_per_token_layer(arch, bf16)
    if checkpointing:
        activations = tokens * (arch.num_layers * 4 * arch.hidden_size + per_layer)
    else:
        activations = tokens * arch.num_layers * per_layer
    activations += tokens * arch.hidden_size * 4 * 3  # embeddings, final norm, gathered response hidden states
    chunk = t.logprob_chunk_tokens
    head_chunk = 3 * (chunk if chunk else tokens) * arch.vocab_size * 4
    update = {"gradients (fp32)": 4 * (trained + critic_trained), "autocast weight copies": cast_copies,
              "activations (micro-batch)": activations, "log-prob chunk buffers": head_chunk}
    generation_total, update_total = sum(generation.values()), sum(update.values())
    phase = generation if generation_total >= update_total else update
    out.update({k: v for k, v in phase.items()})
    out["peak"] = static + max(generation_total, update_total)
    out["peak phase"] = "generation" if generation_total >= update_total else "update"
    out["generation peak"] = static + generation_total
    out["update peak"] = static + update_total
    return out


LEAN_MEMORY_SHARE = 0.8  # `gradient_checkpointing=auto` turns it on past this share of the memory at hand


def _forced_checkpointing(config: Config) -> tuple[bool, str] | None:
    setting = config.model.gradient_checkpointing
    if setting == "auto":
        return None
    return bool(setting), f"gradient checkpointing {'on' if setting else 'off'} (model.gradient_checkpointing=" \
                          f"{str(setting).lower()})"


def choose_gradient_checkpointing(config: Config, arch: Architecture, prompt_tokens: int, device_type: str,
                                  available_bytes: float) -> tuple[bool, str]:
    """Whether the run checkpoints activations, and why (one line for the log): the setting when it is true or
    false; under `auto`, on only when the estimated peak without it passes LEAN_MEMORY_SHARE of `available_bytes`,
    since recomputing every layer in backward costs about a third more update time."""
    forced = _forced_checkpointing(config)
    if forced is not None:
        return forced
    # the update's peak: checkpointing lowers only that one (a generation peak from a large KV cache stays)
    plain = memory_estimate(config, arch, prompt_tokens, device_type, checkpointing=False)["update peak"]
    lean = plain > LEAN_MEMORY_SHARE * available_bytes
    return lean, (f"gradient checkpointing {'on' if lean else 'off'} (model.gradient_checkpointing=auto): estimated "
                  f"update peak without it {plain / 1e9:.2f} GB, {'over' if lean else 'within'} "
                  f"{LEAN_MEMORY_SHARE:.0%} of the {available_bytes / 1e9:.1f} GB at hand; true or false forces it")


def gradient_checkpointing_for_run(config: Config, architecture: Callable[[], Architecture], prompt_tokens: Callable[[], int],
                                   available_bytes: float, device_type: str) -> tuple[bool, str]:
    """`choose_gradient_checkpointing` for a run about to train: the model's architecture and its longest prompt (both
    computed only under `auto`), and `available_bytes`, the memory at hand before the run loaded anything
    (memory.memory_at_hand). A model whose config the estimate cannot read keeps checkpointing off, as before
    `auto`, and says so."""
    forced = _forced_checkpointing(config)
    if forced is not None:
        return forced
    try:
        arch = architecture()
    except (AttributeError, KeyError, TypeError, ValueError) as error:  # e.g. GPT-2's config: no intermediate_size
        return False, (f"gradient checkpointing off (model.gradient_checkpointing=auto): no memory estimate for this "
                       f"model's config ({type(error).__name__}: {error}); true forces it on")
    return choose_gradient_checkpointing(config, arch, prompt_tokens(), device_type, available_bytes)


def default_device_memory_gb(device_type: str = "cuda") -> float:
    """The visible GPU's memory; for a CPU run this machine's RAM; else 80 (an 80 GB GPU, as the paper's)."""
    if device_type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        except (ValueError, OSError, AttributeError):  # no sysconf (Windows) or no such name
            return 80.0
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / 1e9
    return 80.0


def spending_lines(config: Config, total: int) -> list[str]:
    """What the rollout-spending options (README, Spending rollouts well) do to the count above."""
    lines = []
    if config.train.dynamic_sampling:
        rounds = config.train.dynamic_sampling_max_rounds
        lines.append(f"dynamic sampling: extra rounds until every fresh group has reward variance, so between {total:,} "
                     f"and {rounds * total:,} rollouts ({rounds} rounds at most); a share q of informative groups "
                     f"makes it about {total:,} / q")
    if config.data.selection != "none":
        lines.append("prompt selection: the count is unchanged (each step still generates its planned prompts); "
                     "skipped prompts, chosen from the outcomes, cost nothing (selection/skipped_total)")
    if config.remix.enabled and config.remix.replay == "informative" and config.remix.replace_uninformative:
        lines.append("informative replay: generation unchanged; fresh groups with equal rewards are replaced in the "
                     "batch by buffered ones (replay/replacements)")
    return lines


def format_plan(config: Config, arch: Architecture, prompt_tokens: int, device_memory_gb: float,
                device_type: str) -> tuple[str, bool]:
    """The printed plan and whether the estimate fits the device."""
    phases, total = step_arithmetic(config)
    t = config.train
    lora_line = ""
    if config.model.lora.enabled:
        lo = config.model.lora
        lora_line = (f"; LoRA r={lo.r} on {lo.peft_target_modules if isinstance(lo.peft_target_modules, str) else ','.join(lo.peft_target_modules)}: "
                     f"{lora_parameters(arch, lo.r, lo.peft_target_modules) / 1e6:.2f}M trained parameters")
    lines = [f"model: {arch.name} ({arch.parameters / 1e9:.3f}B parameters; architecture from {arch.source}{lora_line})",
             f"steps: {t.steps}, {t.prompts_per_step} prompts x {t.samples_per_prompt} samples a step, minibatch "
             f"{t.minibatch_size} responses, micro-batch {t.micro_batch_tokens} tokens", "",
             f"{'phase':<10} {'steps':>6} {'generated/step':>15} {'trained/step':>13} {'optimizer steps/step':>21}"]
    for p in phases:
        lines.append(f"{p.phase:<10} {p.steps:>6} {p.generated:>15,} {p.trained:>13,} {p.optimizer_steps:>21}")
    lines.append(f"total rollouts over {t.steps} steps: {total:,}")
    lines.extend(spending_lines(config, total))
    if config.auto_reincarnation:  # the step is decided during the run: the table is the latest switch
        from remix_rft.schedule import build_schedule

        auto = config.remix.auto_reincarnation
        earliest = build_schedule(config)
        earliest.reincarnate_after(auto.min_step)
        latest = f"after step {auto.max_step} (max_step)" if auto.max_step is not None else "never (max_step null)"
        lines.append(f"reincarnation: auto; the table assumes it comes {latest}; at the earliest (after step "
                     f"{auto.min_step}, min_step) the run generates "
                     f"{earliest.total_rollouts(t.steps, t.samples_per_prompt):,} rollouts")
    lines.append("")
    checkpointing, why = choose_gradient_checkpointing(config, arch, prompt_tokens, device_type,
                                                       device_memory_gb * 1e9)
    estimate = memory_estimate(config, arch, prompt_tokens, device_type, checkpointing)
    lines.append(f"peak memory per device (prompts ~{prompt_tokens} tokens, responses {config.rollout.max_new_tokens},"
                 f" {'bf16 mixed precision' if config.model.bf16 else 'float32'}, {why}; peak during "
                 f"{estimate['peak phase']}):")
    for key, value in estimate.items():
        if key in ("peak", "peak phase", "generation peak", "update peak") or not value:
            continue
        lines.append(f"  {key:<28} {value / 1e9:8.2f} GB")
    lines.append(f"  {'generation phase total':<28} {estimate['generation peak'] / 1e9:8.2f} GB")
    lines.append(f"  {'update phase total':<28} {estimate['update peak'] / 1e9:8.2f} GB")
    peak = estimate["peak"] / 1e9
    fits = peak <= device_memory_gb
    lines.append(f"  {'estimated peak':<28} {peak:8.2f} GB of {device_memory_gb:.0f} GB"
                 + ("" if fits else "  WARNING: over the device memory; lower train.micro_batch_tokens, "
                    "rollout.max_batch_size, or enable model.gradient_checkpointing"))
    return "\n".join(lines), fits


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None, help="YAML file or built-in config name (default: quickstart)")
    parser.add_argument("--model-config", default=None,
                        help="the model's config.json (or its folder), when the model's own files are not at hand")
    parser.add_argument("--device-memory-gb", type=float, default=None,
                        help="memory of one device (default: the visible GPU's; for cpu this machine's RAM; else 80)")
    parser.add_argument("--prompt-tokens", type=int, default=256, help="typical prompt length in tokens")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="estimate for this device type (default: from model.device / what is visible); cpu "
                             "adds the Python runtime, as peak RSS does")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON (bytes)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def plan_command(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config or "quickstart", args.overrides)
        arch = resolve_architecture(config.model.name, args.model_config)
    except (ConfigError, FileNotFoundError, OSError, ValueError) as err:
        print(f"remix-rft plan: {err}", file=sys.stderr)
        return 2
    device_type = args.device
    if device_type is None:
        wanted = config.model.device
        device_type = "cuda" if wanted.startswith("cuda") or (wanted == "auto" and torch.cuda.is_available()) \
            else "cpu"
    memory = args.device_memory_gb or default_device_memory_gb(device_type)
    if args.json:
        checkpointing, _ = choose_gradient_checkpointing(config, arch, args.prompt_tokens, device_type, memory * 1e9)
        estimate = memory_estimate(config, arch, args.prompt_tokens, device_type, checkpointing)
        phases, total = step_arithmetic(config)
        rounds = config.train.dynamic_sampling_max_rounds if config.train.dynamic_sampling else 1
        print(json.dumps({"parameters": arch.parameters, "total_rollouts": total, "max_total_rollouts": rounds * total,
                          "phases": [p.__dict__ for p in phases], "memory": estimate}, indent=2))
        return 0
    text, _ = format_plan(config, arch, args.prompt_tokens, memory, device_type)
    print(text)
    return 0
