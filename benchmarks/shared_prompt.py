"""The shared prompt forward (`train.shared_prompt_forward`) against the plain one, on the model's own samples.

One GRPO batch of the default job's shape is sampled once (`--prompts` held-out-style arithmetic prompts x
`--samples`, the HF engine at T = 0.7, 48 new tokens); then, alternating the two forwards `--repeats` times, each
precision times a no-grad log-prob pass over the whole batch (pi_k's / the reference's) and a forward + backward over
a `--minibatch` rows of it (the update's), and reads how far the shared forward's log-probs, entropies and gradients
are from the plain forward's. Prints a markdown table (best time of the repeats); nothing is asserted:
tests/test_shared_prompt.py holds the equivalence bounds.

    python benchmarks/shared_prompt.py                    # embedded SmolLM2-135M, float32 and bf16 (~5 min, 2 cores)
    python benchmarks/shared_prompt.py --model tiny-random --repeats 1
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from remix_rft.batching import collate, token_logprobs
from remix_rft.data import format_prompt, load_examples
from remix_rft.evaluation import markdown_table
from remix_rft.hardware import cpu_model_name
from remix_rft.models import DEFAULT_MODEL, autocast_context, load_model, load_tokenizer
from remix_rft.rollout import SamplingParams, build_engine


def _batch(model, tokenizer, prompts: int, samples: int, seed: int):
    examples = load_examples("arithmetic", seed=seed, size=max(prompts, 8), digits=[1], operations="+-")
    texts = [format_prompt(tokenizer, e.problem, instruction="Put the final answer within \\boxed{}.")
             for e in examples[:prompts]]
    engine = build_engine("hf", model, tokenizer)
    rollouts = engine.generate(texts, samples, SamplingParams(max_new_tokens=48, temperature=0.7, seed=seed))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return collate([r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts], pad)


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _measure(model, batch, minibatch: int, share: bool, bf16: bool):
    """(no-grad pass seconds, fwd+bwd seconds, log-probs, entropies, gradient vector) for one forward kind."""
    model.eval()
    with torch.no_grad(), autocast_context("cpu", bf16):
        nograd_s, (logp, entropy) = _timed(lambda: token_logprobs(model, batch, 0.7, with_entropy=True,
                                                                  share_prompts=share))
    rows = batch.select(torch.arange(minibatch))
    model.train()
    model.zero_grad(set_to_none=True)

    def update():
        with autocast_context("cpu", bf16):
            lp, ent = token_logprobs(model, rows, 0.7, with_entropy=True, share_prompts=share)
        # a GRPO-like loss: advantages of +-1 by row, an entropy bonus; what matters is that every path gets gradient
        signs = (torch.arange(len(rows)) % 2 * 2 - 1).float()[:, None]
        ((lp * signs).sum() + 1e-3 * ent.sum()).backward()

    update_s, _ = _timed(update)
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return nograd_s, update_s, logp.float(), entropy.float(), grads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--minibatch", type=int, default=16, help="rows of the forward + backward (train.minibatch_size)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, dtype="float32")
    batch = _batch(model, tokenizer, args.prompts, args.samples, args.seed)
    # a minibatch is a random draw of rows (updates.minibatch_rows), so a group's samples land in it partly
    batch = batch.select(torch.randperm(len(batch), generator=torch.Generator().manual_seed(args.seed)))
    minibatch = min(args.minibatch, len(batch))
    prompt_tokens = int(batch.attention_mask[:, :batch.prompt_length].sum())
    response_tokens = int(batch.response_mask.sum())
    rows = []
    _, _, truth_logp, _, truth_grad = _measure(model, batch, min(args.minibatch, len(batch)), False, False)
    mask = batch.response_mask.bool()

    def error(logp, grad) -> str:  # against the plain float32 forward (the control for bf16's own rounding)
        d = (logp - truth_logp)[mask].abs()
        return f"{d.mean():.1e} / {d.max():.1e} / {((grad - truth_grad).norm() / truth_grad.norm()):.1e}"

    for precision in args.precisions.split(","):
        bf16 = precision == "bfloat16"
        best = {False: [float("inf"), float("inf")], True: [float("inf"), float("inf")]}
        out = {}
        for _ in range(args.repeats):
            for share in (False, True):
                nograd_s, update_s, *values = _measure(model, batch, minibatch, share, bf16)
                best[share] = [min(best[share][0], nograd_s), min(best[share][1], update_s)]
                out[share] = values
        (lp0, e0, g0), (lp1, e1, g1) = out[False], out[True]
        diff = (lp1 - lp0)[mask].abs()
        rows.append([precision, f"{best[False][0]:.2f}", f"{best[True][0]:.2f}",
                     f"{best[False][0] / best[True][0]:.2f}x", f"{best[False][1]:.2f}", f"{best[True][1]:.2f}",
                     f"{best[False][1] / best[True][1]:.2f}x", f"{diff.mean():.1e}", f"{diff.max():.1e}",
                     f"{(e1 - e0)[mask].abs().max():.1e}", f"{((g1 - g0).norm() / g0.norm()):.1e}",
                     error(lp0, g0) if bf16 else "-", error(lp1, g1) if bf16 else "-"])
        print(f"{precision}: done", file=sys.stderr, flush=True)

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    print(f"## Shared prompt forward vs plain: {args.model}, {len(batch)} rows ({args.prompts} prompts x "
          f"{args.samples} samples), {prompt_tokens} prompt + {response_tokens} response tokens; fwd+bwd over "
          f"{minibatch} rows; best of {args.repeats}\n")
    print(f"- machine: {cpu_model_name()}, {os.cpu_count()} cores; torch {torch.__version__}; {platform.platform()}")
    print(f"- commit {commit}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; command: python "
          f"benchmarks/shared_prompt.py {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    print(markdown_table(["precision", "no-grad pass s (plain)", "(shared)", "speed-up", "fwd+bwd s (plain)",
                          "(shared)", "speed-up", "mean abs d logp", "max abs d logp", "max abs d entropy",
                          "grad rel diff", "plain vs float32 (mean / max d logp, grad)", "shared vs float32"], rows))
    print("\nThe d columns are the shared forward's against the plain one at the same precision. In bf16 the last two "
          "are each forward's error against the plain float32 forward: the rounding bf16 brings either way.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
