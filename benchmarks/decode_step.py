"""Where a decode step's time goes: the HF engine's one-token forward against the two limits a CPU puts on it.

A decode step reads every weight once (the model's bytes over the memory bandwidth: the streaming floor) and does
2 x parameters FLOPs per row (over the matmul peak: the compute floor). This times a one-token forward over a KV
cache of `--context` positions for each number of rows still decoding, with and without the LM head, and prints
both floors beside it, so a goal for generation speed can be checked against what the machine allows. Median of
`--repeats` steps after two warm-up steps; nothing is asserted.

    python benchmarks/decode_step.py                          # embedded SmolLM2-135M, float32, rows 32,16,8,2,1
    python benchmarks/decode_step.py --rows 64,32 --bf16      # bf16 autocast, as model.dtype=auto on an AMX CPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from remix_rft.batching import cache_argument_name
from remix_rft.evaluation import markdown_table
from remix_rft.models import DEFAULT_MODEL, autocast_context, load_model
from remix_rft.perf import measure_matmul_flops
from remix_rft.rollout.hf import preallocate_cache
from table_file import write_table_file


def memory_bandwidth(size_bytes: int, repeats: int = 10) -> float:
    """Best bytes/s of a sum over a float32 tensor of `size_bytes`: one streaming read, as a decode step's weights."""
    data = torch.ones(size_bytes // 4)
    data.sum()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        best = max(best, size_bytes / (time.perf_counter() - start))
    return best


def step_seconds(forward, rows: int, context: int, vocab: int, repeats: int) -> float:
    """Median seconds of a one-token forward for `rows` rows over a cache of `context` positions (and the steps')."""
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, min(vocab, 10_000), (rows, context), generator=generator)
    cache = forward(prompt, None)
    preallocate_cache(cache, context + repeats + 2)  # as the HF engine: each step writes in place, no torch.cat
    token = torch.randint(100, min(vocab, 10_000), (rows, 1), generator=generator)
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        forward(token, cache)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def _ms(seconds: float) -> str:
    """Milliseconds to 0.1, or to 3 significant digits below 10 ms (a small model's floors)."""
    value = 1e3 * seconds
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="embedded model name or a local HF folder")
    parser.add_argument("--rows", default="32,16,8,2,1", help="rows still decoding, comma-separated")
    parser.add_argument("--context", type=int, default=64, help="cached positions (prompt + tokens so far)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (float32 weights), as the trainer's")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table, machine and command here")
    args = parser.parse_args(argv)
    rows_list = [int(r) for r in args.rows.split(",") if r.strip()]
    if not rows_list or min(rows_list) < 1:
        parser.error(f"--rows must be positive integers, got {args.rows!r}")

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, dtype="float32").eval()
    vocab = model.config.vocab_size
    # what a step reads whole and multiplies by: every weight (a tied head once) but an untied input embedding, of
    # which a step looks up a few rows
    embedding = model.get_input_embeddings().weight
    tied = model.get_output_embeddings().weight is embedding
    read = [p for p in model.parameters() if tied or p is not embedding]
    weight_bytes = sum(p.numel() * p.element_size() for p in read)
    parameters = sum(p.numel() for p in read)
    bandwidth = memory_bandwidth(weight_bytes)
    peak = measure_matmul_flops(torch.device("cpu"), torch.bfloat16 if args.bf16 else torch.float32)
    head = model.get_output_embeddings()
    head_parameters = head.weight.numel()

    cache_name = cache_argument_name(model)  # `cache` in recent transformers, else `past_key_values`

    def full(ids, cache):
        return getattr(model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_name: cache}), cache_name)

    def body(ids, cache):  # the decoder without the LM head
        return getattr(model.model(input_ids=ids, use_cache=True, **{cache_name: cache}), cache_name)

    stream_floor = weight_bytes / bandwidth
    header = ["rows", "step ms", "without LM head ms", "tokens/s", "streaming floor ms", "compute floor ms",
              "step / max(floors)"]
    table_rows = []
    with torch.no_grad(), autocast_context("cpu", args.bf16):
        for rows in rows_list:
            step = step_seconds(full, rows, args.context, vocab, args.repeats)
            without_head = step_seconds(body, rows, args.context, vocab, args.repeats)
            compute_floor = 2 * parameters * rows / peak
            table_rows.append([str(rows), _ms(step), _ms(without_head), f"{rows / step:.0f}",
                               _ms(stream_floor), _ms(compute_floor),
                               f"{step / max(stream_floor, compute_floor):.1f}x"])
            print(f"[decode] {rows} rows: {1e3 * step:.1f} ms a step", file=sys.stderr)
    table = markdown_table(header, table_rows)
    summary = (f"{parameters / 1e6:.0f}M parameters ({head_parameters / 1e6:.0f}M in the LM head), "
               f"{weight_bytes / 2**20:.0f} MiB of weights read per step; memory bandwidth {bandwidth / 1e9:.1f} GB/s "
               f"(a sum over as many bytes), matmul peak {peak / 1e12:.2f} TFLOPS "
               f"({'bf16' if args.bf16 else 'float32'}, 1024^2 matmuls); cache of {args.context} positions")
    print(table)
    print(summary)
    if args.out is not None:
        write_table_file(args.out, "decode_step.py", argv, table, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
