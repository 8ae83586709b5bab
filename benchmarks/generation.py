"""Generation throughput: the HF engine vs the colocated vLLM engine, on the same model, prompts and sampling.

Both engines sample `--max-new-tokens` tokens per response at temperature 1 (behaviour log-probs included, as in
training) for each batch size; tokens/s = generated tokens / wall time of the generate() call, best of
`--repeats` after one warm-up call. Prints a markdown table (and writes it with the machine and command to
`--out`). Run it with the python that has vLLM (on CPU: the .venv-vllm venv of scripts/setup_vllm.sh):

    .venv-vllm/bin/python benchmarks/generation.py                        # embedded SmolLM2-135M, batches 24, 128
    .venv-vllm/bin/python benchmarks/generation.py --batches 32 --model tiny-random-dir --repeats 1
    python benchmarks/generation.py --device cuda --batches 152 --max-new-tokens 1024  # a GPU machine
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from remix_rft.data import format_prompt, load_examples
from remix_rft.evaluation import markdown_table
from remix_rft.models import DEFAULT_MODEL, load_model, load_tokenizer
from remix_rft.rollout import SamplingParams, build_engine
from table_file import write_table_file

# the default job (quickstart): 6 fresh prompts x 4 samples in the mix phase, 48 new tokens, arithmetic problems
DEFAULT_BATCHES = (24, 128)
SAMPLES_PER_PROMPT = 4


def _prompts(tokenizer, count: int) -> list[str]:
    examples = load_examples("arithmetic", seed=0, size=max(count, 8), digits=[1, 2], operations="+-")
    return [format_prompt(tokenizer, e.problem, instruction="Put the final answer within \\boxed{}.")
            for e in examples[:count]]


def _measure(engine, prompts: list[str], sampling: SamplingParams, repeats: int) -> tuple[float, int, float]:
    """(best tokens/s, tokens of that call, its seconds) over `repeats` timed calls after a warm-up call."""
    engine.generate(prompts[:1], SAMPLES_PER_PROMPT, sampling)
    best = (0.0, 0, 0.0)
    for _ in range(repeats):
        start = time.perf_counter()
        rollouts = engine.generate(prompts, SAMPLES_PER_PROMPT, sampling)
        seconds = time.perf_counter() - start
        tokens = sum(len(r.response_ids) for r in rollouts)
        if tokens / seconds > best[0]:
            best = (tokens / seconds, tokens, seconds)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="embedded model name or a local HF folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)),
                        help=f"responses per generate() call, comma-separated (multiples of {SAMPLES_PER_PROMPT})")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--hf-max-batch-size", type=int, default=64, help="the HF engine's rollout.max_batch_size")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--engines", default="hf,vllm", help="hf, hf-plain (the HF engine decoding finished rows "
                        "to the batch's end, as before compaction), hf-dynamic (the HF engine on transformers' "
                        "growing DynamicCache, as before its preallocated cache), hf-unshared (the HF engine "
                        "prefilling every sample's prompt, as before shared prefill), vllm")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (HF) / bf16 weights (vLLM)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's); 1 on a machine other processes keep busy")
    parser.add_argument("--out", type=Path, default=None, help="also write the table, machine and command here")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if any(b < 1 or b % SAMPLES_PER_PROMPT for b in batches):
        parser.error(f"--batches must be positive multiples of {SAMPLES_PER_PROMPT}, got {args.batches}")

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, dtype="float32", device=args.device)
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=0)
    results: dict[str, dict[int, tuple[float, int, float]]] = {}
    starts: dict[str, float] = {}
    for name in [e.strip() for e in args.engines.split(",") if e.strip()]:
        start = time.perf_counter()
        if name.startswith("hf"):  # hf-plain: every row decoded to the batch's end (no compaction)
            options = {"max_batch_size": args.hf_max_batch_size, "autocast_bf16": args.bf16,
                       "compact": name != "hf-plain", "preallocate": name != "hf-dynamic",
                       "share_prompts": name != "hf-unshared"}
        else:
            options = {"seed": 0, **({"dtype": "bfloat16"} if args.bf16 else {})}
        engine = build_engine("hf" if name.startswith("hf") else name, model, tokenizer, **options)
        starts[name] = time.perf_counter() - start
        results[name] = {}
        for batch in batches:
            results[name][batch] = _measure(engine, _prompts(tokenizer, batch // SAMPLES_PER_PROMPT), sampling,
                                            args.repeats)
            rate, tokens, seconds = results[name][batch]
            print(f"[generation] {name} batch {batch}: {tokens} tokens in {seconds:.1f} s = {rate:.1f} tokens/s",
                  file=sys.stderr)
        close = getattr(engine, "close", None)
        if close is not None:
            close()

    header = ["batch (responses)"] + [f"{name} tokens/s" for name in results]
    ratios = [(a, b) for a, b in (("vllm", "hf"), ("hf", "hf-plain"), ("hf", "hf-dynamic"), ("hf", "hf-unshared"))
              if {a, b} <= set(results)]
    header += [f"{a} / {b}" for a, b in ratios]
    rows = []
    for batch in batches:
        row = [str(batch)] + [f"{results[name][batch][0]:.1f}" for name in results]
        row += [f"{results[a][batch][0] / results[b][batch][0]:.2f}x" for a, b in ratios]
        rows.append(row)
    rows.append(["engine start (s)"] + [f"{starts[name]:.1f}" for name in results] + [""] * len(ratios))
    table = markdown_table(header, rows)
    print(table)
    if args.out is not None:
        write_table_file(args.out, "generation.py", argv, table, device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
