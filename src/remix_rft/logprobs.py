"""Memory-lean token log-probs and entropy: the LM head applied in chunks of tokens, recomputed in backward.

A naive pass materialises [tokens, vocabulary] float32 logits for a whole micro-batch (17 GiB for 32k tokens of a
152k vocabulary), keeps them for backward and adds a softmax of the same size for the entropy. Here the decoder's
final hidden states of the *response* positions only are gathered into [N, H], and `ChunkedLogProbs` applies the
LM head + log-softmax to `chunk_tokens` rows at a time: the forward keeps only per-token scalars (log-prob,
log-normaliser, entropy), and the backward recomputes each chunk's logits to form its gradient. Peak extra memory is
~3 x chunk_tokens x vocabulary x 4 bytes whatever the micro-batch size (the Liger / verl "fused linear cross-entropy"
idea, written here in plain PyTorch so it runs on CPU and GPU alike).

Gradients (z = logits / T, p = softmax(z), t = the token, H = entropy):
  d log p_t / dz = onehot(t) - p
  d H / dz       = p * (E_p[z] - z)          with E_p[z] = logsumexp(z) - H
and d/d logits = (d/dz) / T; the hidden states and the head weight get the usual matmul gradients.

Sampling truncation (`Truncation`: the sampler's top-k / top-p): the distribution is the renormalised one over the
kept set S = `truncation_keep_mask(z)`, p~ = softmax(z restricted to S). The same formulas hold with p -> p~ (0 off
S) and logsumexp over S; S is piecewise constant in z, so it has no gradient of its own. A target outside S has
log-prob -inf and no gradient. The sampler (rollout/hf.py) draws from the same mask of the same function.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_CHUNK_TOKENS = 512
HEAD_VOCAB_SLICE = 8192  # vocabulary rows per head matmul below float32 and in the backward (memory; see uses)

# config attributes of architectures whose forward transforms the head's output (soft-capping, scaling): the lean
# path would skip that transform, so those models use the plain path.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def lean_head(model: nn.Module) -> nn.Linear | None:
    """The model's output projection when logits are exactly `head(decoder(x))`; None for any other model."""
    get_decoder = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return None
    head = get_head()
    if type(head) is not nn.Linear:
        return None
    config = getattr(model, "config", None)
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    return head


# set on an output projection whose matmul runs in float32 under bf16 autocast (model.lm_head_dtype=float32)
FLOAT32_HEAD_ATTR = "remix_float32_head"


def _float32_linear_forward(self: nn.Linear, hidden: Tensor) -> Tensor:
    with torch.autocast(hidden.device.type, enabled=False):
        bias = None if self.bias is None else self.bias.float()
        return F.linear(hidden.float(), self.weight.float(), bias)


def run_head_in_float32(model: nn.Module) -> None:
    """Make `model`'s LM head compute in float32 under bf16 autocast, in every path: generation and plain
    forwards call its forward, the lean path reads the mark. The forward is bound as a method, so copies of the
    model (frozen references) carry it, bound to their own head. Float32 logits cost one [tokens, vocabulary]
    float32 matmul instead of a bf16 one; they remove the head's rounding from the sampler/trainer log-prob gap."""
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"model.lm_head_dtype=float32 needs an nn.Linear output projection, got {type(head)}")
    head.forward = types.MethodType(_float32_linear_forward, head)
    setattr(head, FLOAT32_HEAD_ATTR, True)


# set on a trained LM head tied to the input embedding (accumulate_tied_grad_in_place): the lean path's backward adds
# the head's weight gradient straight into the shared parameter's `.grad`
TIED_GRAD_IN_PLACE_ATTR = "remix_tied_grad_in_place"


def accumulate_tied_grad_in_place(model: nn.Module) -> bool:
    """One [vocabulary, hidden] gradient buffer, not two or three, for a trained LM head tied to the input embedding;
    True when `model` has such a pair (else nothing changes).

    autograd makes the tied weight's two gradients, the head's and the embedding's dense one (113 MiB each for
    SmolLM2-135M), and sums them at the very end of the backward, when every other gradient is already resident
    (and adds the sum into an existing `.grad` from a minibatch's second micro-batch on): the training step's memory
    peak. A sparse embedding gradient alone does not help: autograd adds dense + sparse out of place. Here the lean
    path's backward adds the
    head's gradient straight into the parameter's `.grad`, and the embedding hands back sparse rows (the batch's
    tokens only) that autograd adds into that `.grad` in place: `.grad` ends dense, equal to the usual sum up to
    the order of float additions. For a model whose every backward passes through the head (the policy's loss
    does), not a critic's trunk: an embedding gradient alone would stay sparse, which AdamW rejects."""
    get_input, get_output = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    if get_input is None or get_output is None:
        return False
    embedding, head = get_input(), get_output()
    if (not isinstance(embedding, nn.Embedding) or not isinstance(head, nn.Linear)
            or embedding.weight is not head.weight or not head.weight.requires_grad):
        return False
    embedding.sparse = True
    setattr(head, TIED_GRAD_IN_PLACE_ATTR, True)
    return True


@dataclass(frozen=True)
class Truncation:
    """The sampler's top-k / top-p truncation, applied to the trainer's temperature-scaled logits so that the
    optimised policy is the distribution the samples were drawn from (README, Sampler/trainer mismatch)."""

    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off


def sampling_truncation(top_k: int, top_p: float) -> Truncation | None:
    """The truncation of a sampler's settings; None when it cuts nothing, so the default path pays no sort."""
    if top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(f"top_k must be >= 0 and top_p in (0, 1], got top_k={top_k}, top_p={top_p}")
    return Truncation(top_k, top_p) if (top_k > 0 or top_p < 1.0) else None


@torch.no_grad()  # the kept set is piecewise constant: no gradient, and no graph over the sort
def truncation_keep_mask(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Bool mask of the tokens kept by top-k, then top-p over the top-k-renormalised distribution (the smallest
    prefix of the sorted tokens holding probability >= top_p; the most likely token always stays).

    Ties at a cut are all kept (a threshold on the value, not a position in the sort), so the sampler's [rows, V]
    and the trainer's [chunk, V] calls decide alike whatever order a sort gives equal values."""
    keep = torch.ones_like(logits, dtype=torch.bool)
    if 0 < top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        keep = logits >= kth_largest
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p < 1.0:
        sorted_logits = logits.sort(dim=-1, descending=True).values
        probs = sorted_logits.softmax(dim=-1)
        # exclusive prefix sums, so the mass before each token is monotone in float arithmetic too
        mass_before = F.pad(probs.cumsum(dim=-1)[..., :-1], (1, 0))
        del probs
        kept_count = (mass_before < top_p).sum(dim=-1, keepdim=True).clamp_(min=1)
        threshold = sorted_logits.gather(-1, kept_count - 1)
        keep &= logits >= threshold
    return keep


def _compute_dtype(device: torch.device, fallback: torch.dtype) -> torch.dtype:
    """The dtype autocast would run a matmul in on `device` right now (fallback: the weights' dtype)."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return fallback


class ChunkedLogProbs(torch.autograd.Function):
    """(hidden [N, H], weight [V, H], bias [V] | None, targets [N]) -> log p(target) [N], entropy [N] in float32."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, temperature: float,
                chunk_tokens: int, with_entropy: bool, float32_head: bool = False,
                truncation: Truncation | None = None, grad_into_param: bool = False) -> tuple[Tensor, Tensor]:
        # the weight's gradient goes straight into its `.grad` (accumulate_tied_grad_in_place) for a float32 leaf
        # parameter: FSDP's bf16 unsharded copy, or anything else, gets it returned through autograd as usual
        ctx.param = weight if (grad_into_param and weight.is_leaf and weight.requires_grad
                               and weight.dtype == torch.float32) else None
        compute_dtype = torch.float32 if float32_head else _compute_dtype(hidden.device, weight.dtype)
        weight_c = weight.to(compute_dtype)
        bias_c = None if bias is None else bias.to(compute_dtype)
        count = hidden.shape[0]
        logprobs = hidden.new_empty(count, dtype=torch.float32)
        log_normaliser = hidden.new_empty(count, dtype=torch.float32)
        entropy = hidden.new_zeros(count if with_entropy else 0, dtype=torch.float32)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, count, chunk_tokens):
                end = min(start + chunk_tokens, count)
                z = _scaled_logits(hidden[start:end], weight_c, bias_c, compute_dtype, temperature)
                if truncation is not None:
                    # off S: -inf, so logsumexp, the target's log-prob and exp() see the truncated distribution
                    dropped = ~truncation_keep_mask(z, truncation.top_k, truncation.top_p)
                    z.masked_fill_(dropped, float("-inf"))
                lse = torch.logsumexp(z, dim=-1)
                log_normaliser[start:end] = lse
                logprobs[start:end] = z.gather(-1, targets[start:end, None]).squeeze(-1) - lse
                if with_entropy:
                    z.sub_(lse[:, None])  # z <- log p; H = -sum p log p as a batched dot (no third [K, V] buffer)
                    probs = z.exp()
                    if truncation is not None:
                        z.masked_fill_(dropped, 0.0)  # p log p = 0 off S, not 0 * -inf
                    entropy[start:end] = -torch.bmm(probs.unsqueeze(1), z.unsqueeze(2)).flatten()
                    del probs
                del z
        ctx.save_for_backward(hidden, weight, bias, targets, log_normaliser, entropy,
                              torch.isfinite(logprobs) if truncation is not None else None)
        ctx.settings = (temperature, chunk_tokens, with_entropy, compute_dtype, truncation)
        ctx.mark_non_differentiable(log_normaliser)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs: Tensor, grad_entropy: Tensor):
        hidden, weight, bias, targets, log_normaliser, entropy, target_kept = ctx.saved_tensors
        temperature, chunk_tokens, with_entropy, compute_dtype, truncation = ctx.settings
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        weight_c = weight.to(compute_dtype)
        bias_c = None if bias is None else bias.to(compute_dtype)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        param = ctx.param if need_weight else None
        if param is not None:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            grad_weight = param.grad
        else:
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if (need_bias and bias is not None) else None
        grad_logprobs = grad_logprobs.float()
        if target_kept is not None:  # a target outside the truncation has log-prob -inf, a constant
            grad_logprobs = torch.where(target_kept, grad_logprobs, 0.0)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk_tokens):
                end = min(start + chunk_tokens, hidden.shape[0])
                h_c = hidden[start:end].to(compute_dtype)
                z = _scaled_logits(h_c, weight_c, bias_c, compute_dtype, temperature)
                lse = log_normaliser[start:end, None]
                # z is read again only for the entropy's gradient and the truncation mask: else p overwrites it
                probs = (z - lse).exp_() if (with_entropy or truncation is not None) else z.sub_(lse).exp_()
                if truncation is not None:  # z stays finite here, so grad_z below is finite x 0 off S
                    probs.masked_fill_(~truncation_keep_mask(z, truncation.top_k, truncation.top_p), 0.0)
                g_logp = grad_logprobs[start:end, None]
                if with_entropy:
                    # dH/dz = p * (E[z] - z), E[z] = lse - H; together with -g_logp * p:
                    mean_z = lse - entropy[start:end, None]
                    grad_z = z.neg_().add_(mean_z).mul_(grad_entropy[start:end, None].float()).sub_(g_logp)
                    grad_z.mul_(probs)
                else:
                    grad_z = probs.mul_(-g_logp)
                # free the [chunk, V] buffers before the matmuls (grad_z is one of them, or both when p overwrote z)
                del probs, z
                grad_z.scatter_add_(-1, targets[start:end, None], g_logp)
                if temperature != 1.0:
                    grad_z.div_(temperature)
                if grad_bias is not None:
                    grad_bias.add_(grad_z.sum(dim=0))
                if grad_hidden is not None or grad_weight is not None:
                    grad_h = _head_input_and_weight_grads(grad_z, h_c, weight_c, grad_weight, grad_hidden is not None)
                    if grad_hidden is not None:
                        grad_hidden[start:end] = grad_h.to(hidden.dtype)
                del grad_z
        grad_weight = None if (grad_weight is None or param is not None) else grad_weight.to(weight.dtype)
        grad_bias = None if grad_bias is None else grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None, None


def _head_input_and_weight_grads(grad_z: Tensor, h_c: Tensor, weight_c: Tensor, grad_weight: Tensor | None,
                                 need_hidden: bool) -> Tensor | None:
    """grad_z [K, V] float32 -> grad_z @ W [K, H] in float32 (when need_hidden), and grad_weight += grad_z^T h.

    Slice by slice of the vocabulary, with the matmuls in h_c's dtype. Unsliced, a bf16 copy of the whole [K, V]
    gradient (48 MiB at K=512, V=49k) beside the float32 one, then the [V, H] weight-gradient product beside that
    copy (57 MiB in bf16, 113 in float32), made the head backward the update's memory peak. A slice's buffers are
    8-9 MiB, and slicing measured faster too (the [V, H] add stays in cache): 0.22 against 0.29 s a chunk, bf16,
    2-core EPYC, the same error against a float32 reference."""
    grad_h = grad_z.new_zeros(grad_z.shape[0], h_c.shape[1]) if need_hidden else None
    for v0 in range(0, grad_z.shape[1], HEAD_VOCAB_SLICE):
        v1 = v0 + HEAD_VOCAB_SLICE
        if h_c.dtype == torch.float32:  # grad_weight is float32 too: accumulate in place, no product buffer
            g = grad_z[:, v0:v1]
            if grad_h is not None:
                grad_h.addmm_(g, weight_c[v0:v1])
            if grad_weight is not None:
                grad_weight[v0:v1].addmm_(g.t(), h_c)
        else:  # add_ casts each bf16 product to float32 first (a slice-sized copy) and adds it into the sums
            g = grad_z[:, v0:v1].to(h_c.dtype)
            if grad_h is not None:
                grad_h.add_(g @ weight_c[v0:v1])
            if grad_weight is not None:
                grad_weight[v0:v1].add_(g.t() @ h_c)
    return grad_h


def _scaled_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, compute_dtype: torch.dtype,
                   temperature: float) -> Tensor:
    """float32 logits / temperature of one chunk, the matmul in the compute dtype (as autocast would run it).

    Below float32, slice by slice of the vocabulary into the float32 buffer: a whole bf16 [K, V] product (48 MiB
    at K=512, V=49k) beside the float32 one was the head backward's peak once the weight gradient was sliced. The
    values are bit-identical, and it measured faster (0.11 against 0.14 s a chunk, 2-core EPYC)."""
    hidden = hidden.to(compute_dtype)
    if compute_dtype == torch.float32:
        logits = hidden @ weight.t()
        if bias is not None:
            logits = logits + bias
    else:
        logits = hidden.new_empty(hidden.shape[0], weight.shape[0], dtype=torch.float32)
        for v0 in range(0, weight.shape[0], HEAD_VOCAB_SLICE):
            v1 = v0 + HEAD_VOCAB_SLICE
            part = hidden @ weight[v0:v1].t()
            logits[:, v0:v1] = part if bias is None else part + bias[v0:v1]
    if temperature != 1.0:
        logits.div_(temperature)
    return logits


def chunked_logprobs(hidden: Tensor, head: nn.Linear, targets: Tensor, temperature: float = 1.0,
                     chunk_tokens: int = DEFAULT_CHUNK_TOKENS, with_entropy: bool = False,
                     truncation: Truncation | None = None) -> tuple[Tensor, Tensor | None]:
    """log softmax(head(hidden) / T)[target] and (optionally) the entropy per row of hidden [N, H], in float32.

    With `truncation`, of the top-k / top-p truncated distribution: -inf (no gradient) for a target outside it.
    Each chunk then also sorts its [chunk, V] logits (about 4 more chunk x V buffers at the peak)."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if hidden.shape[0] == 0:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, (empty.clone() if with_entropy else None)
    logprobs, entropy = ChunkedLogProbs.apply(hidden, head.weight, head.bias, targets, float(temperature),
                                              int(chunk_tokens), bool(with_entropy),
                                              bool(getattr(head, FLOAT32_HEAD_ATTR, False)), truncation,
                                              bool(getattr(head, TIED_GRAD_IN_PLACE_ATTR, False)))
    return logprobs, (entropy if with_entropy else None)
