"""Rollouts with a Hugging Face causal LM in the same process (CPU or one GPU).

A small sampling loop of our own over the model's KV cache rather than ``model.generate``: generate can only give
back behaviour log-probs by keeping the raw logits of every step ([rows, steps, vocab] float32, gigabytes for long
responses), while this loop keeps one float per sampled token, and its seeded ``torch.Generator`` leaves the global
RNG untouched. Positions follow HF's convention for left padding (cumsum(attention_mask) - 1), which is also what
``batching.collate`` builds, so the trainer's teacher-forced log-probs reproduce the behaviour log-probs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

try:
    from transformers.cache_utils import DynamicCache, DynamicLayer
except ImportError:  # transformers < 4.56: caches without layers, which preallocate_cache leaves alone
    DynamicCache, DynamicLayer = None, object

from ..batching import cache_argument_name, distinct_rows, repeat_kv_rows
from ..logprobs import truncation_keep_mask
from ..models import autocast_context
from .base import Rollout, SamplingParams


def validate_sampling(sampling: SamplingParams) -> None:
    if sampling.max_new_tokens < 1:
        raise ValueError(f"sampling.max_new_tokens must be >= 1, got {sampling.max_new_tokens}")
    if sampling.greedy:
        return
    if sampling.temperature <= 0:
        raise ValueError(
            f"sampling.temperature must be > 0 (use greedy=True for argmax), got {sampling.temperature}"
        )
    if not 0 < sampling.top_p <= 1:
        raise ValueError(f"sampling.top_p must be in (0, 1], got {sampling.top_p}")
    if sampling.top_k < 0:
        raise ValueError(f"sampling.top_k must be >= 0 (0 disables it), got {sampling.top_k}")


def prompt_token_ids(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], samples_per_prompt: int, sampling: SamplingParams
) -> list[list[int]]:
    """Every engine's checks of a generate() call, then the prompts' token ids (no special tokens: the chat
    template already wrote them); an empty list for no prompts."""
    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be >= 1, got {samples_per_prompt}")
    validate_sampling(sampling)
    if isinstance(prompts, str):
        raise TypeError("generate() takes a list of prompts, got a single string")
    if not prompts:
        return []
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    for index, ids in enumerate(prompt_ids):
        if not ids:
            raise ValueError(f"prompt {index} is empty after tokenization")
    return prompt_ids


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to -inf the logits outside the top-k and outside the smallest set holding probability >= top_p.

    The kept set is `logprobs.truncation_keep_mask`'s, the one the trainer's log-probs are computed over."""
    if not (0 < top_k < logits.shape[-1] or top_p < 1.0):
        return logits
    return logits.masked_fill(~truncation_keep_mask(logits, top_k, top_p), float("-inf"))


def rows_can_leave(cache) -> bool:
    """Whether finished rows can be dropped from `cache`: only a cache made of attention key/value layers. A
    hybrid model's linear-attention or Mamba layer keeps conv / recurrent states that `batch_select_indices` leaves
    whole (transformers 5.x gives such layers the method anyway), and an older cache without `layers` is not known."""
    layers = getattr(cache, "layers", None)
    if not layers or not hasattr(cache, "batch_select_indices"):
        return False
    try:
        from transformers.cache_utils import LinearAttentionCacheLayerMixin as recurrent  # transformers >= 5
    except ImportError:
        recurrent = ()
    return all(hasattr(layer, "batch_select_indices") and not isinstance(layer, recurrent)
               and not hasattr(layer, "conv_states") and not hasattr(layer, "recurrent_states") for layer in layers)


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys / values are views of the filled part of buffers allocated once for the whole
    generation: a decode step writes its key / value in place, where `DynamicLayer.update`'s torch.cat copies the
    layer's whole cache every step. Attention, masks and `get_seq_length` read the same shapes and values as from a
    `DynamicLayer` (and `crop` still works: it shortens the view). Rows are selected or reordered on the buffers, so
    the views stay views."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        super().__init__()
        self.key_buffer = keys.new_empty((*keys.shape[:2], capacity, keys.shape[-1]))
        self.value_buffer = values.new_empty((*values.shape[:2], capacity, values.shape[-1]))
        self.update(keys, values)
        self.device, self.is_initialized = keys.device, True

    def _view(self, length: int) -> None:
        self.keys, self.values = self.key_buffer[:, :, :length], self.value_buffer[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        start = 0 if self.keys is None else self.keys.shape[-2]
        end = start + key_states.shape[-2]
        if end > self.key_buffer.shape[-2]:
            raise RuntimeError(f"{end} cached positions overflow the preallocated {self.key_buffer.shape[-2]}")
        self.key_buffer[:, :, start:end] = key_states
        self.value_buffer[:, :, start:end] = value_states
        self._view(end)
        return self.keys, self.values

    def _map_rows(self, rows: Callable[[torch.Tensor], torch.Tensor]) -> None:
        length = self.keys.shape[-2]
        self.key_buffer, self.value_buffer = rows(self.key_buffer), rows(self.value_buffer)
        self._view(length)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_rows(lambda buffer: buffer[indices])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_rows(lambda buffer: buffer.index_select(0, beam_idx.to(buffer.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_rows(lambda buffer: buffer.repeat_interleave(repeats, dim=0))


def preallocate_cache(cache, capacity: int) -> bool:
    """Give `cache`, as a prefill left it, `PreallocatedLayer`s of `capacity` positions in place of its layers;
    whether it did. Only a plain `DynamicCache` whose layers all hold full-attention keys / values: sliding-window,
    linear-attention / recurrent, KV-sharing layers and a model's own cache class keep their own update rules."""
    layers = getattr(cache, "layers", None)
    if type(cache) is not DynamicCache or not layers or any(
        type(layer) is not DynamicLayer or layer.get_seq_length() == 0 for layer in layers
    ):
        return False
    cache.layers = [PreallocatedLayer(layer.keys, layer.values, capacity) for layer in layers]
    return True


def sample_from_logits(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One token per row of `logits` [rows, vocab] by inverse transform sampling with the row's `uniform` in [0, 1):
    the first token whose cumulative probability passes it. A token with probability 0 (outside top-k / top-p) is
    never drawn; float64 keeps the cumulative sum exact enough over a large vocabulary."""
    cumulative = logits.softmax(dim=-1).double().cumsum(dim=-1)
    if not bool(torch.isfinite(cumulative[:, -1]).all()):  # as torch.multinomial refuses: a NaN model, not a sample
        raise ValueError("the sampling distribution has non-finite probabilities (NaN or inf logits)")
    threshold = (uniform * cumulative[:, -1]).unsqueeze(-1)
    tokens = torch.searchsorted(cumulative, threshold, right=True).squeeze(-1)
    return tokens.clamp_(max=logits.shape[-1] - 1)


def _eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(config_eos, int):
        ids.add(config_eos)
    elif config_eos is not None:
        ids.update(int(i) for i in config_eos)
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation_config defines an EOS token")
    return sorted(ids)


class HFRolloutEngine:
    """Batched sampling from a transformers causal LM that the trainer also trains (weights are shared).

    Prompts are tokenized without adding special tokens: they are already chat-formatted, and a chat template
    writes its own BOS where the model wants one.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_batch_size: int = 64,
        autocast_bf16: bool = False,
        compact: bool = True,
        preallocate: bool = True,
        with_entropy: bool = False,
        share_prompts: bool = True,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.autocast_bf16 = autocast_bf16
        self.compact = compact  # finished rows leave the decode batch (see _sample)
        self.preallocate = preallocate  # False: transformers' DynamicCache as the model made it (see _sample)
        self.with_entropy = with_entropy  # each token's distribution's entropy in Rollout.entropies
        self.share_prompts = share_prompts  # a prompt's samples share its prefill (train.shared_prompt_forward)
        self.eos_token_ids = _eos_token_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else self.eos_token_ids[0]

    def update_weights(self, model: torch.nn.Module) -> None:
        """Nothing to copy: this engine samples from the very module the trainer updates (a different module
        passed here simply becomes the one sampled from).

        An engine with its own copy of the weights (vLLM, a server) would load `model`'s state dict here.
        """
        self.model = model

    def generate(
        self, prompts: Sequence[str], samples_per_prompt: int, sampling: SamplingParams
    ) -> list[Rollout]:
        """`samples_per_prompt` responses per prompt, grouped by prompt (all of prompt 0's first)."""
        prompt_ids = prompt_token_ids(self.tokenizer, prompts, samples_per_prompt, sampling)
        if not prompt_ids:
            return []
        rows = [(p, s) for p in range(len(prompts)) for s in range(samples_per_prompt)]
        device = next(self.model.parameters()).device
        generator = None
        if sampling.seed is not None and not sampling.greedy:
            generator = torch.Generator(device=device)
            generator.manual_seed(sampling.seed)

        was_training = self.model.training
        self.model.eval()
        rollouts: list[Rollout] = []
        try:
            with torch.no_grad(), autocast_context(device, self.autocast_bf16):
                for start in range(0, len(rows), self.max_batch_size):
                    chunk = rows[start : start + self.max_batch_size]
                    tokens, logprobs, entropies, finished = self._sample(
                        [prompt_ids[p] for p, _ in chunk], sampling, generator
                    )
                    texts = self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
                    for (p, s), response, lps, entropy, done, text in zip(chunk, tokens, logprobs, entropies,
                                                                         finished, texts):
                        rollouts.append(
                            Rollout(
                                prompt_index=p,
                                sample_index=s,
                                prompt_ids=list(prompt_ids[p]),
                                response_ids=response,
                                text=text,
                                finish_reason="eos" if done else "length",
                                logprobs=lps,
                                entropies=entropy,
                            )
                        )
        finally:
            self.model.train(was_training)
        return rollouts

    def _sample(
        self, prompts: list[list[int]], sampling: SamplingParams, generator: torch.Generator | None
    ) -> tuple[list[list[int]], list[list[float]], list[list[float] | None], list[bool]]:
        """Sample one response per prompt row; returns token ids, behaviour log-probs, their distributions'
        entropies (None per row unless `with_entropy`) and whether EOS ended it.

        Rows that have stopped leave the decode batch (their KV cache rows with them) once a quarter of it has
        stopped: a batch whose answers are mostly short otherwise decodes every finished row to the longest one's
        end. Each step draws one uniform per row of the whole batch, finished or not, so a row's tokens do not
        depend on which others are still decoding (`compact=False` gives the same tokens, tests/test_rollout.py).

        The KV cache and the attention mask are allocated once for the whole response (`preallocate_cache`): a
        growing cache's torch.cat copied every layer's keys and values each step, a fifth of a CPU decode step."""
        device = next(self.model.parameters()).device
        batch_size, prompt_length = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((batch_size, prompt_length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(prompts):
            input_ids[row, prompt_length - len(ids) :] = torch.as_tensor(ids)
            attention_mask[row, prompt_length - len(ids) :] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp_(min=0)
        eos_ids = torch.tensor(self.eos_token_ids, device=device)
        temperature = sampling.logprob_temperature
        cache_name = cache_argument_name(self.model)  # `cache` in recent transformers, else `past_key_values`

        steps = sampling.max_new_tokens
        all_tokens = torch.full((batch_size, steps), self.pad_token_id, dtype=torch.long, device=device)
        all_logprobs = torch.zeros((batch_size, steps), dtype=torch.float32, device=device)
        all_entropies = torch.zeros((batch_size, steps), dtype=torch.float32, device=device) if self.with_entropy \
            else None
        rows = torch.arange(batch_size, device=device)  # the full-batch row of each row still decoding
        finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
        # a prompt's samples share its prefill (share_prompts): each distinct prompt runs once and its KV cache rows
        # and last logits are repeated for its samples; the full batch's prefill where the cache is not plain
        shared = distinct_rows(input_ids, attention_mask) if self.share_prompts else None
        prefill = slice(None) if shared is None else shared[0]
        outputs = self.model(
            input_ids=input_ids[prefill],
            attention_mask=attention_mask[prefill],
            position_ids=position_ids[prefill],
            use_cache=True,
            logits_to_keep=1,
        )
        cache = getattr(outputs, cache_name)
        if shared is not None:
            if repeat_kv_rows(cache, prompt_length, shared[1]):
                outputs.logits = outputs.logits.index_select(0, shared[1])
            else:  # not plain keys / values: this engine prefills every row from now on
                self.share_prompts = False
                outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                     use_cache=True, logits_to_keep=1)
                cache = getattr(outputs, cache_name)
        compact = self.compact and rows_can_leave(cache)
        if self.preallocate and steps > 1:  # the last step samples without a forward: prompt_length + steps - 1
            preallocate_cache(cache, prompt_length + steps - 1)
        # each step's mask is a view of one mask with all the new positions attended
        full_mask = torch.cat([attention_mask, attention_mask.new_ones(batch_size, steps - 1)], dim=1)
        length = 0
        for step in range(steps):
            logits = outputs.logits[:, -1, :].float() / temperature
            if sampling.greedy:
                tokens = logits.argmax(dim=-1)
            else:
                # the behaviour log-probs are those of the distribution drawn from: truncated and renormalised
                logits = filter_top_k_top_p(logits, sampling.top_k, sampling.top_p)
                uniform = torch.rand(batch_size, generator=generator, device=device, dtype=torch.float64)
                tokens = sample_from_logits(logits, uniform[rows])
            logprobs = torch.log_softmax(logits, dim=-1)
            all_tokens[rows, step] = tokens
            all_logprobs[rows, step] = logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
            if all_entropies is not None:  # p log p read as 0 off a top-k / top-p set (log p = -inf there)
                probabilities = logprobs.exp()
                all_entropies[rows, step] = -(probabilities * logprobs.masked_fill(probabilities == 0, 0.0)).sum(-1)
            length = step + 1
            finished[rows] |= torch.isin(tokens, eos_ids)
            done = finished[rows]  # stopped now or at an earlier step since the last compaction
            if bool(finished.all()) or step + 1 == steps:
                break
            cache = getattr(outputs, cache_name)
            position_ids = position_ids[:, -1:] + 1
            if compact and int(done.sum()) * 4 >= len(rows):
                keep = (~done).nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                rows, tokens = rows[keep], tokens[keep]
                full_mask, position_ids = full_mask[keep], position_ids[keep]
            outputs = self.model(
                input_ids=tokens.unsqueeze(-1),
                attention_mask=full_mask[:, : prompt_length + step + 1],
                position_ids=position_ids,
                use_cache=True,
                **{cache_name: cache},
            )

        all_tokens, all_logprobs = all_tokens[:, :length].cpu(), all_logprobs[:, :length].cpu()
        entropies = None if all_entropies is None else all_entropies[:, :length].cpu()
        is_eos = torch.isin(all_tokens, eos_ids.cpu())
        token_lists, logprob_lists, entropy_lists, ended = [], [], [], []
        for row in range(batch_size):
            eos_positions = is_eos[row].nonzero()
            row_length = int(eos_positions[0]) + 1 if len(eos_positions) else all_tokens.shape[1]
            token_lists.append(all_tokens[row, :row_length].tolist())
            logprob_lists.append(all_logprobs[row, :row_length].tolist())
            entropy_lists.append(None if entropies is None else entropies[row, :row_length].tolist())
            ended.append(bool(len(eos_positions)))
        return token_lists, logprob_lists, entropy_lists, ended
