"""Sampler vs trainer log-prob gap by precision: float32, bf16 autocast, and bf16 with a float32 LM head.

The rollout engine samples a token with one computation (KV-cached, one position at a time) and the trainer scores
it with another (a full forward): in float32 they agree to float noise, under bf16 autocast they round differently,
and at theta = pi_k a token whose two log-probs differ by more than log(1 + clip_eps) is already outside PPO's clip
range before any update. Each variant runs the default job's first steps (`remix-rft train --config quickstart`,
evaluation off) in its own process and reads the gap the trainer logs for the fresh rollouts of every step
(`logprob_mismatch/mean`, `/max`, `/outside_clip_share`) with the step's time and peak RSS.

    python benchmarks/precision.py                              # embedded model, 2 steps per variant (~10 min)
    python benchmarks/precision.py --steps 3 --model tiny-random

Prints a table; nothing is asserted (the README's Precision section holds the figures).
"""

from __future__ import annotations

import argparse
import os

from soak import run_job  # the same subprocess launcher

VARIANTS = {
    "float32": ["model.dtype=float32"],
    "bfloat16": ["model.dtype=bfloat16", "model.lm_head_dtype=auto"],
    "bfloat16 + fp32 head": ["model.dtype=bfloat16", "model.lm_head_dtype=float32"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--overrides", nargs="*", default=[], help="more key=value overrides of the quickstart job")
    args = parser.parse_args()

    from remix_rft.hardware import cpu_model_name, native_cpu_bf16

    print(f"precision: quickstart on {args.model}, {args.steps} steps per variant; CPU {cpu_model_name()} "
          f"({os.cpu_count()} cores, native bf16: {native_cpu_bf16()})", flush=True)
    header = (f"{'variant':<22} {'tokens':>7} {'gap mean':>9} {'gap max':>8} {'outside clip':>13} {'s/step':>7} "
              f"{'gen s':>6} {'update s':>9} {'peak RSS MiB':>13}")
    rows = []
    for name in args.variants:
        # every step's pass measures the gap (in float32 auto would take pi_k from the sampler after step 1)
        train, _, _ = run_job([f"model.name={args.model}", f"train.steps={args.steps}", *VARIANTS[name],
                               "rollout.reuse_sampler_logprobs=false", *args.overrides])
        # fresh response tokens per step (the gap's denominator) come from the step's own count
        tokens = sum(line["tokens/step"] for line in train)
        weight = [line["tokens/step"] / tokens for line in train]
        rows.append(
            f"{name:<22} {tokens:>7} "
            f"{sum(w * line['logprob_mismatch/mean'] for w, line in zip(weight, train)):>9.4f} "
            f"{max(line['logprob_mismatch/max'] for line in train):>8.3f} "
            f"{100 * sum(w * line['logprob_mismatch/outside_clip_share'] for w, line in zip(weight, train)):>12.2f}% "
            f"{sum(line['time/step'] for line in train) / len(train):>7.1f} "
            f"{sum(line['time/generation'] for line in train) / len(train):>6.1f} "
            f"{sum(line['time/update'] for line in train) / len(train):>9.1f} "
            f"{max(line['memory/peak_rss_mb'] for line in train):>13.0f}")
        print(f"done: {name}", flush=True)
    print("\n" + header + "\n" + "-" * len(header) + "\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
