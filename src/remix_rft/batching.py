"""Token batches and teacher-forced log-probs / values: the trainer's hot loop.

Layout: prompts left-padded to P columns, responses right-padded to R columns, ``input_ids`` is [B, P+R].
The logits predicting response token h (0-based) come from position P-1+h, so the response's logits are positions
P-1 .. P+R-2 and the last input token is never needed as input. position_ids = cumsum(attention_mask) - 1 (0 on
left padding), which is what HF ``generate`` and our sampler use, so teacher-forced and sampled log-probs agree.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from remix_rft.logprobs import (
    DEFAULT_CHUNK_TOKENS,
    Truncation,
    chunked_logprobs,
    lean_head,
    truncation_keep_mask,
)

logger = logging.getLogger(__name__)


@dataclass
class TokenBatch:
    input_ids: torch.LongTensor  # [B, P+R]
    attention_mask: torch.LongTensor  # [B, P+R]
    position_ids: torch.LongTensor  # [B, P+R]
    response_ids: torch.LongTensor  # [B, R]
    response_mask: torch.Tensor  # [B, R] float 0/1
    prompt_length: int  # P

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def response_length(self) -> int:
        return self.response_ids.shape[1]

    def select(self, index: Sequence[int] | Tensor) -> TokenBatch:
        """The rows in `index`, without the columns that are padding in every selected row (both sides)."""
        rows = torch.as_tensor(index, dtype=torch.long, device=self.input_ids.device)
        if rows.numel() == 0:
            raise ValueError("select() needs at least one row")
        attention = self.attention_mask[rows]
        prompt_length = self.prompt_length
        used_prompt_columns = attention[:, :prompt_length].any(dim=0).nonzero()
        first = int(used_prompt_columns[0]) if len(used_prompt_columns) else prompt_length
        used_response_columns = attention[:, prompt_length:].any(dim=0).nonzero()
        response_length = int(used_response_columns[-1]) + 1 if len(used_response_columns) else 0
        end = prompt_length + response_length
        return TokenBatch(
            input_ids=self.input_ids[rows, first:end],
            attention_mask=attention[:, first:end],
            position_ids=self.position_ids[rows, first:end],
            response_ids=self.response_ids[rows, :response_length],
            response_mask=self.response_mask[rows, :response_length],
            prompt_length=prompt_length - first,
        )

    def to(self, device: str | torch.device) -> TokenBatch:
        return TokenBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            position_ids=self.position_ids.to(device),
            response_ids=self.response_ids.to(device),
            response_mask=self.response_mask.to(device),
            prompt_length=self.prompt_length,
        )


def collate(
    prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_token_id: int
) -> TokenBatch:
    """Left-pad the prompts and right-pad the responses into one batch. Every prompt needs at least one token."""
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"collate: {len(prompt_ids)} prompts but {len(response_ids)} responses")
    if not prompt_ids:
        raise ValueError("collate: empty batch")
    for row, prompt in enumerate(prompt_ids):
        if len(prompt) == 0:
            raise ValueError(
                f"collate: prompt of row {row} is empty (the first response token needs a context)"
            )
    batch_size = len(prompt_ids)
    prompt_length = max(len(p) for p in prompt_ids)
    response_length = max(len(r) for r in response_ids)
    input_ids = torch.full((batch_size, prompt_length + response_length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    responses = torch.full((batch_size, response_length), pad_token_id, dtype=torch.long)
    response_mask = torch.zeros((batch_size, response_length), dtype=torch.float32)
    for row, (prompt, response) in enumerate(zip(prompt_ids, response_ids)):
        start, end = prompt_length - len(prompt), prompt_length + len(response)
        input_ids[row, start:prompt_length] = torch.as_tensor(prompt, dtype=torch.long)
        input_ids[row, prompt_length:end] = torch.as_tensor(response, dtype=torch.long)
        attention_mask[row, start:end] = 1
        responses[row, : len(response)] = input_ids[row, prompt_length:end]
        response_mask[row, : len(response)] = 1.0
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp_(min=0)
    return TokenBatch(input_ids, attention_mask, position_ids, responses, response_mask, prompt_length)


def split_by_token_budget(batch: TokenBatch, max_tokens: int | None) -> list[list[int]]:
    """Row groups whose padded size after `select` (rows x (longest prompt + longest response)) fits max_tokens.

    Rows are packed longest first so similar lengths share a group (less padding); a row longer than the budget
    gets a group of its own. Indices inside a group are ascending. ``None`` -> one group with every row.
    """
    batch_size = len(batch)
    if max_tokens is None:
        return [list(range(batch_size))]
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    prompt_lengths = batch.attention_mask[:, : batch.prompt_length].sum(dim=1).tolist()
    response_lengths = batch.attention_mask[:, batch.prompt_length :].sum(dim=1).tolist()
    order = sorted(range(batch_size), key=lambda i: prompt_lengths[i] + response_lengths[i], reverse=True)
    groups: list[list[int]] = []
    current: list[int] = []
    longest_prompt = longest_response = 0
    for row in order:
        prompt_max = max(longest_prompt, prompt_lengths[row])
        response_max = max(longest_response, response_lengths[row])
        if current and (len(current) + 1) * (prompt_max + response_max) > max_tokens:
            groups.append(sorted(current))
            current, prompt_max, response_max = [], prompt_lengths[row], response_lengths[row]
        current.append(row)
        longest_prompt, longest_response = prompt_max, response_max
    groups.append(sorted(current))
    return groups


def _response_logits(model: torch.nn.Module, batch: TokenBatch) -> Tensor:
    """[b, R, V] logits at positions P-1 .. P+R-2, computing the LM head on those positions only."""
    DECODER_TOKENS.add(batch.attention_mask[:, :-1])
    return model(
        input_ids=batch.input_ids[:, :-1],
        attention_mask=batch.attention_mask[:, :-1],
        position_ids=batch.position_ids[:, :-1],
        logits_to_keep=batch.response_length,
        use_cache=False,
    ).logits


def shared_prompt_rows(batch: TokenBatch) -> tuple[Tensor, Tensor] | None:
    """(first, inverse) for a batch whose rows repeat a prompt (a GRPO group's samples): `first` [u] holds one row
    per distinct prompt prefix (the prompt without its last token, padding included), `inverse` [B] each row's index
    into `first`. None when no two rows share one, or the prompts have a single column (nothing to share)."""
    cut = batch.prompt_length - 1
    if cut < 1:
        return None
    return distinct_rows(batch.input_ids[:, :cut], batch.attention_mask[:, :cut])


def distinct_rows(input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor] | None:
    """(first, inverse) of the distinct rows of left-padded `input_ids` [B, L] (padding per `attention_mask`):
    `first` [u] the first row of each, `inverse` [B] each row's index into `first`; None when all B differ."""
    if input_ids.shape[0] < 2:
        return None
    # left padding and positions follow from the mask, so equal (tokens, mask) rows give equal keys / values
    key = input_ids.masked_fill(attention_mask == 0, -1)
    unique, inverse = torch.unique(key, dim=0, return_inverse=True)
    if len(unique) == len(key):
        return None
    rows = torch.arange(len(key), device=inverse.device)
    first = torch.full((len(unique),), len(key), dtype=torch.long, device=inverse.device)
    return first.scatter_reduce(0, inverse, rows, reduce="amin"), inverse


def repeat_kv_rows(cache, length: int, inverse: Tensor) -> bool:
    """Give every row its prompt's keys / values (`cache`'s row `inverse[row]`) in place; False, leaving it
    untouched, where `cache` is not plain per-layer keys / values of `length` positions (`_plain_kv_cache`)."""
    if not _plain_kv_cache(cache, length):
        return False
    for layer in cache.layers:  # index_select: in backward, the rows' gradients sum into their one prompt
        layer.keys = layer.keys.index_select(0, inverse)
        layer.values = layer.values.index_select(0, inverse)
    return True


class DecoderTokens(threading.local):
    """Real (unpadded) tokens this thread's log-prob forwards ran through a decoder, with and without autograd.
    perf.py counts a phase's model FLOPs from the difference over it: a shared prompt forward runs a group's prompt
    once, so the batch's token count would credit MFU with work never done. Per thread: a pipelined job's snapshot
    scores its rollouts in its own thread, outside the trainer's phases. The counts stay on the device until read
    (no host sync per forward)."""

    def __init__(self) -> None:
        self.grad = 0
        self.no_grad = 0
        self._pending: list[tuple[bool, Tensor]] = []
        self._excluded = 0

    def add(self, attention_mask: Tensor) -> None:
        if not self._excluded:
            self._pending.append((torch.is_grad_enabled(), attention_mask.sum()))
            if len(self._pending) >= 1024:  # a thread that never reads them (a pipelined job's) keeps them bounded
                self._settle()

    def _settle(self) -> None:
        for grad, count in self._pending:
            if grad:
                self.grad += int(count)
            else:
                self.no_grad += int(count)
        self._pending.clear()

    def snapshot(self) -> tuple[int, int]:
        self._settle()
        return self.no_grad, self.grad

    def since(self, snapshot: tuple[int, int]) -> tuple[int, int]:
        """(no-grad, grad) tokens since `snapshot`."""
        self._settle()
        return self.no_grad - snapshot[0], self.grad - snapshot[1]

    @contextlib.contextmanager
    def excluded(self):
        """Forwards inside are not the step's training work (the weight-sync check's probe): not counted."""
        self._excluded += 1
        try:
            yield
        finally:
            self._excluded -= 1


DECODER_TOKENS = DecoderTokens()


# set on a decoder whose cache is not plain per-layer keys / values (sliding-window, recurrent or a model's own
# cache class): the shared prompt forward falls back to the plain one for it, once told
NO_SHARED_PROMPT_ATTR = "remix_no_shared_prompt_forward"


def _plain_kv_cache(cache, length: int) -> bool:
    """Whether `cache` is transformers' `DynamicCache` of full-attention `DynamicLayer`s, each holding `length`
    positions: the only cache whose rows can be repeated by indexing its keys / values."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer
    except ImportError:  # transformers 4.x: a different cache API
        return False
    layers = getattr(cache, "layers", None)
    return (type(cache) is DynamicCache and bool(layers)
            and all(type(layer) is DynamicLayer and layer.get_seq_length() == length for layer in layers))


def _fsdp_sharded(module: torch.nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return any(isinstance(m, FSDPModule) for m in module.modules())


def can_share_prompt_forward(decoder: torch.nn.Module) -> bool:
    """Whether the shared prompt forward may run on `decoder`: not where activation checkpointing recomputes its
    layers in training mode (transformers then drops the cache inside each layer), not where its cache has shown
    not to be plain keys / values, and not in an FSDP2-sharded forward with autograd (the update): each layer's call
    all-gathers its shards there, so ranks that share (two calls a layer) and ranks that do not (one) would pair up
    their collectives wrongly, and the prefix call's layers would run backward on resharded weights. The no-grad
    passes run on gathered parameters (`Distributed.gathered`, no collectives), so they share on any rank."""
    if getattr(decoder, NO_SHARED_PROMPT_ATTR, False):
        return False
    if torch.is_grad_enabled():
        sharded = getattr(decoder, "_remix_fsdp_sharded", None)
        if sharded is None:
            sharded = _fsdp_sharded(decoder)
            decoder._remix_fsdp_sharded = sharded  # sharding happens once, before any forward
        if sharded:
            return False
    checkpointed = getattr(decoder, "is_activation_checkpointing", None)  # transformers >= 5.2x; before: gradient_
    if checkpointed is None:
        checkpointed = getattr(decoder, "is_gradient_checkpointing", False)
    return not (decoder.training and checkpointed)


def cache_argument_name(module: torch.nn.Module) -> str:
    # recent transformers name the KV-cache argument and output `cache`; older ones `past_key_values`
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _response_hidden(decoder: torch.nn.Module, batch: TokenBatch, share_prompts: bool = False) -> Tensor:
    """[b, R, H] final hidden states at positions P-1 .. P+R-2 (those that predict the response tokens).

    `share_prompts` (`train.shared_prompt_forward`): rows that repeat a prompt (a group's samples) run its prefix
    once. The decoder runs over each distinct prefix (positions 0 .. P-2) with its KV cache kept, autograd
    included; the cache's rows are repeated for the rows sharing each prefix (index_select: backward sums their
    gradients into the one prefix), and a second forward runs the rows' own positions P-1 .. P+R-2 over it. The
    same attention, positions and masks as the plain forward, so the same hidden states up to the order of float
    additions (tests/test_shared_prompt.py); a group of G samples costs one prompt instead of G (Prefix Grouper's
    idea, arXiv 2506.05433, done here with the model's own KV cache instead of a patched attention)."""
    shared = shared_prompt_rows(batch) if share_prompts and can_share_prompt_forward(decoder) else None
    if shared is not None:
        first, inverse = shared
        cut, name = batch.prompt_length - 1, cache_argument_name(decoder)
        cache = getattr(decoder(
            input_ids=batch.input_ids[first, :cut],
            attention_mask=batch.attention_mask[first, :cut],
            position_ids=batch.position_ids[first, :cut],
            use_cache=True,
        ), name, None)
        DECODER_TOKENS.add(batch.attention_mask[first, :cut])
        if repeat_kv_rows(cache, cut, inverse):
            DECODER_TOKENS.add(batch.attention_mask[:, cut:-1])
            hidden = decoder(
                input_ids=batch.input_ids[:, cut:-1],
                attention_mask=batch.attention_mask[:, :-1],
                position_ids=batch.position_ids[:, cut:-1],
                use_cache=True,
                **{name: cache},
            ).last_hidden_state
            # every layer must have attended to the prefix and appended the rows' own positions: a layer that
            # dropped the cache would have computed the responses without their prompt, silently
            if any(layer.get_seq_length() != cut + hidden.shape[1] for layer in cache.layers):
                raise RuntimeError("shared prompt forward: a decoder layer did not use the prompt's KV cache; set "
                                   "train.shared_prompt_forward=false")
            return hidden
        setattr(decoder, NO_SHARED_PROMPT_ATTR, True)
        logger.warning("train.shared_prompt_forward: %s's KV cache is not plain per-layer keys / values (%s); its "
                       "log-prob passes run every prompt in full", type(decoder).__name__, type(cache).__name__)
    DECODER_TOKENS.add(batch.attention_mask[:, :-1])
    hidden = decoder(
        input_ids=batch.input_ids[:, :-1],
        attention_mask=batch.attention_mask[:, :-1],
        position_ids=batch.position_ids[:, :-1],
        use_cache=False,
    ).last_hidden_state
    return hidden[:, batch.prompt_length - 1 :]


# the attribute of an FSDP2-sharded model holding `lean_logprobs` bound to it as an FSDP forward method
LEAN_LOGPROBS_METHOD = "remix_lean_logprobs"


def lean_logprobs(model: torch.nn.Module, batch: TokenBatch, temperature: float, chunk_tokens: int,
                  with_entropy: bool, truncation: Truncation | None = None,
                  share_prompts: bool = False) -> tuple[Tensor, Tensor | None]:
    """The lean path's flat log-probs (and entropy) of the real response tokens: the LM head runs on them only,
    chunk by chunk (see logprobs.py). The model's head is read here, so under FSDP2 this must run as a forward."""
    keep = batch.response_mask.bool()
    hidden = _response_hidden(model.get_decoder(), batch, share_prompts)[keep]
    return chunked_logprobs(hidden, lean_head(model), batch.response_ids[keep], temperature, chunk_tokens,
                            with_entropy, truncation)


def _logprobs_one(
    model: torch.nn.Module, batch: TokenBatch, temperature: float, with_entropy: bool, chunk_tokens: int | None,
    truncation: Truncation | None = None, share_prompts: bool = False,
) -> tuple[Tensor, Tensor | None]:
    if batch.response_length == 0:  # logits_to_keep=0 would mean "all positions" to HF
        empty = batch.response_mask.new_zeros(batch.response_mask.shape)
        return empty, (empty.clone() if with_entropy else None)
    keep = batch.response_mask.bool()
    head = lean_head(model) if chunk_tokens is not None else None
    if head is not None:
        # an FSDP2 model runs the lean path as a registered forward method (Distributed.shard): its root's
        # parameters, the LM head's included, are gathered around it and its gradients reduce-scattered after
        lean = getattr(model, LEAN_LOGPROBS_METHOD, None) or functools.partial(lean_logprobs, model)
        flat_logprobs, flat_entropy = lean(batch, temperature, chunk_tokens, with_entropy, truncation, share_prompts)
        logprobs = batch.response_mask.new_zeros(batch.response_mask.shape).masked_scatter(keep, flat_logprobs)
        if not with_entropy:
            return logprobs, None
        return logprobs, batch.response_mask.new_zeros(batch.response_mask.shape).masked_scatter(keep, flat_entropy)
    logits = _response_logits(model, batch).float()
    if temperature != 1.0:
        logits = logits / temperature
    kept = None
    if truncation is not None:  # the sampler's truncated distribution: -inf off its kept set (logprobs.py)
        kept = truncation_keep_mask(logits, truncation.top_k, truncation.top_p)
        logits = logits.masked_fill(~kept, float("-inf"))
    # log p(token) = logit(token) - logsumexp(logits): no full [b, R, V] log-softmax tensor is kept for backward.
    log_normaliser = torch.logsumexp(logits, dim=-1)
    logprobs = logits.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1) - log_normaliser
    logprobs = torch.where(keep, logprobs, torch.zeros_like(logprobs))
    if kept is not None:  # a target off the kept set: -inf as a constant, no gradient through the normaliser
        target_kept = kept.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
        logprobs = torch.where(target_kept | ~keep, logprobs, float("-inf"))
    if not with_entropy:
        return logprobs, None
    # off the kept set p = 0 and the logit -inf: read it as 0 there (before the product, so backward has no NaN)
    finite_logits = logits if kept is None else torch.where(kept, logits, 0.0)
    entropy = log_normaliser - (torch.softmax(logits, dim=-1) * finite_logits).sum(dim=-1)
    return logprobs, torch.where(keep, entropy, torch.zeros_like(entropy))


def _per_group(batch: TokenBatch, max_tokens: int | None, compute) -> list[Tensor | None]:
    """Run `compute(sub_batch) -> tuple of [b, R_sub] tensors` per micro-batch and reassemble [B, R] outputs."""
    groups = split_by_token_budget(batch, max_tokens)
    if len(groups) == 1:
        return list(compute(batch))
    response_length = batch.response_length
    pieces: list[list[Tensor | None]] = []
    for group in groups:
        outputs = compute(batch.select(group))
        pieces.append([None if o is None else F.pad(o, (0, response_length - o.shape[1])) for o in outputs])
    order = torch.tensor([row for group in groups for row in group], device=batch.input_ids.device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    results: list[Tensor | None] = []
    for position in range(len(pieces[0])):
        if pieces[0][position] is None:
            results.append(None)
        else:
            results.append(torch.cat([piece[position] for piece in pieces])[inverse])
    return results


def token_logprobs(
    model: torch.nn.Module,
    batch: TokenBatch,
    temperature: float = 1.0,
    with_entropy: bool = False,
    max_tokens: int | None = None,
    chunk_tokens: int | None = DEFAULT_CHUNK_TOKENS,
    truncation: Truncation | None = None,
    share_prompts: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """[B, R] float32 log-probs of the response tokens under log_softmax(logits / temperature), 0 where masked.

    With `truncation` (the sampler's top-k / top-p, see `logprobs.sampling_truncation`) they are those of the
    truncated, renormalised distribution the sampler drew from, and the entropy is that distribution's; a token
    outside it gets -inf (no gradient), which the caller masks out of the loss.

    Also the per-token entropy of that distribution when `with_entropy`. Autograd is kept when grad is enabled.
    Micro-batches of at most `max_tokens` padded tokens bound the decoder's activations. With `chunk_tokens` set
    (and a model whose logits are a plain linear head on the decoder), the head and log-softmax run on the real
    response tokens only, `chunk_tokens` at a time, forward and backward: no [tokens, vocabulary] logits tensor
    exists for the micro-batch. `chunk_tokens=None` is the plain path (the head on all response columns at once).
    `share_prompts` (lean path only): the rows of a micro-batch that repeat a prompt run it once (`_response_hidden`).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return tuple(_per_group(batch, max_tokens, lambda sub: _logprobs_one(
        model, sub, temperature, with_entropy, chunk_tokens, truncation, share_prompts)))


def _values_one(value_model: torch.nn.Module, batch: TokenBatch) -> tuple[Tensor]:
    if batch.response_length == 0:
        return (batch.response_mask.new_zeros(batch.response_mask.shape),)
    values = value_model(
        input_ids=batch.input_ids[:, :-1],
        attention_mask=batch.attention_mask[:, :-1],
        position_ids=batch.position_ids[:, :-1],
    )[:, batch.prompt_length - 1 :].float()
    return (torch.where(batch.response_mask.bool(), values, torch.zeros_like(values)),)


def token_values(value_model: torch.nn.Module, batch: TokenBatch, max_tokens: int | None = None) -> Tensor:
    """[B, R]: the value of state (x, y_<h), read from the value head at position P-1+h; 0 where masked."""
    (values,) = _per_group(batch, max_tokens, lambda sub: _values_one(value_model, sub))
    return values
