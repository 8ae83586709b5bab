"""`remix-rft eval`: its arguments, and the command that loads a model (a run, a checkpoint or a model dir) and the
benchmarks, evaluates, prints the table and writes the result files."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from pathlib import Path

from remix_rft.data import BENCHMARKS, DEFAULT_INSTRUCTION
from remix_rft.errors import DataError, PathNotFoundError, UsageError
from remix_rft.evaluation.run import evaluate
from remix_rft.evaluation.sets import load_benchmarks
from remix_rft.rollout.base import SamplingParams

DEFAULT_EVAL_MODEL = "smollm2-135m-instruct"
POLICY_SUBDIR = "policy"  # where `remix-rft train` checkpoints keep the policy as a Hugging Face model dir


def resolve_model_argument(model: str) -> str:
    """Let `--model` name a training run or one of its checkpoints, not only a model dir.

    A run dir -> its latest checkpoint's policy; a checkpoint dir -> its policy; anything else unchanged
    (a model name, or a Hugging Face model dir, which `load_model` reads).
    """
    from remix_rft.checkpoint import latest_checkpoint

    path = Path(model)
    if not path.is_dir() or (path / "config.json").is_file():
        return model
    checkpoint = latest_checkpoint(path)
    if checkpoint is not None:
        path = checkpoint
    if (path / POLICY_SUBDIR / "config.json").is_file():
        return str(path / POLICY_SUBDIR)
    return model


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_EVAL_MODEL,
        help="a model name known to remix-rft, a `remix-rft train` checkpoint dir or any HF model "
        f"dir (default: {DEFAULT_EVAL_MODEL}, the embedded model)",
    )
    parser.add_argument(
        "--benchmarks",
        default=",".join(BENCHMARKS),
        help="comma-separated benchmark names or data sources (e.g. arithmetic, a .jsonl path); "
        "default: %(default)s",
    )
    parser.add_argument(
        "--data-dir", default=None, help="folder with the paper's benchmark files (default: $REMIX_DATA_DIR)"
    )
    decoding = parser.add_mutually_exclusive_group()
    decoding.add_argument(
        "--greedy", action="store_true", help="greedy decoding, one response per problem (the default)"
    )
    decoding.add_argument(
        "--samples",
        type=int,
        default=None,
        help="K sampled responses per problem: reports Pass@1 (mean), avg@K and pass@K",
    )
    parser.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default 0.6)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default 0.95)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=1024, help="response token limit (default 1024)"
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems of each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output-dir", type=Path, default=None, help="where results go (default: runs/eval-<timestamp>)"
    )
    parser.add_argument(
        "--grader",
        choices=("auto", "strict", "paper"),
        default="auto",
        help="answer grading: the paper's protocol (math-verify) or the strict answer policy; auto (default): "
        "paper on the paper's five benchmarks, strict elsewhere (README, 'Grading')",
    )
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--device", default="auto", help='"cpu", "cuda", ... (default: cuda when available)')
    parser.add_argument("--batch-size", type=int, default=16, help="sequences generated at once (engine hf)")
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                        help="rollout engine: hf (transformers, in-process) or vllm (needs vLLM, see README)")
    parser.add_argument(
        "--instruction",
        default=DEFAULT_INSTRUCTION,
        help="text appended to each problem (default: the paper's \"Let's think step by step ...\")",
    )
    parser.add_argument(
        "--system-prompt",
        default=None,
        help="system turn of the chat (default: whatever the chat template adds)",
    )


def eval_command(args: argparse.Namespace) -> int:
    """`remix-rft eval`: load the model and benchmarks, evaluate, print the table, write the result files."""
    # Imported here: transformers is slow to import, and `remix-rft plot` / `--help` need none of it.
    import torch

    from remix_rft.models import load_model, load_tokenizer
    from remix_rft.rewards import build_reward
    from remix_rft.rollout import build_engine

    samples = 1 if args.samples is None else args.samples
    for name, value, low in (
        ("--samples", samples, 1),
        ("--max-new-tokens", args.max_new_tokens, 1),
        ("--batch-size", args.batch_size, 1),
        ("--limit", 1 if args.limit is None else args.limit, 1),
    ):
        if value < low:
            raise UsageError(f"{name} must be >= {low}, got {value}")
    if args.samples is not None and args.temperature <= 0:
        raise UsageError(f"--temperature must be > 0 when sampling (--samples), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    names = [name.strip() for name in args.benchmarks.split(",") if name.strip()]
    if not names:
        raise UsageError("--benchmarks is empty: give comma-separated names, e.g. --benchmarks math500,minerva")
    data_dir = args.data_dir or os.environ.get("REMIX_DATA_DIR")
    if data_dir is not None and not Path(data_dir).is_dir():
        source = "--data-dir" if args.data_dir else "$REMIX_DATA_DIR"
        raise PathNotFoundError(f"{source} {data_dir}: no such directory")
    benchmarks = load_benchmarks(names, data_dir, args.limit)
    empty = [name for name, examples in benchmarks.items() if not examples]
    if empty:
        raise DataError(f"no problems loaded for {', '.join(empty)} (rows need a problem and an answer field)")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    torch.manual_seed(args.seed)
    model_path = resolve_model_argument(str(args.model))
    if model_path != str(args.model):
        print(f"[eval] {args.model}: evaluating the policy in {model_path}", file=sys.stderr)
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path, dtype=args.dtype, device=device)
    engine = build_engine(args.engine, model, tokenizer, max_batch_size=args.batch_size,
                          **({"seed": args.seed} if args.engine == "vllm" else {}))
    greedy = args.samples is None  # --samples K (even K = 1) asks for sampling at --temperature / --top-p
    sampling = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        greedy=greedy,
        seed=args.seed,
    )
    reward = build_reward(grader=args.grader)
    try:
        report = evaluate(
            engine,
            tokenizer,
            benchmarks,
            reward,
            sampling,
            samples=samples,
            instruction=args.instruction,
            system_prompt=args.system_prompt,
        )
    finally:
        for owner in (reward, engine):  # the math reward owns verifier worker processes; vLLM its memory
            close = getattr(owner, "close", None)
            if close is not None:
                close()
    report.config = {
        "model": str(args.model),
        "model_path": model_path,
        "benchmarks": ",".join(names),
        "engine": args.engine,
        "data_dir": data_dir,
        "limit": args.limit,
        "seed": args.seed,
        "grader": args.grader,
        "dtype": args.dtype,
        "device": device,
        **report.config,
    }
    out_dir = args.output_dir or Path("runs") / f"eval-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    written = report.write(out_dir)
    print(report.to_table("text"), end="")
    print("wrote " + ", ".join(str(path) for path in written))
    return 0
