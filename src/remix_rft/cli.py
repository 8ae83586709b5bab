"""`remix-rft` command line: train, eval, plot."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

TRAIN_EPILOG = """\
examples:
  remix-rft train                                   # short ReMix-GRPO run on the embedded SmolLM2-135M
  remix-rft train --config grpo train.steps=50      # a built-in config with overrides
  remix-rft train --config my.yaml remix.offpolicy_fraction=0.5 rollout.max_new_tokens=512
  remix-rft train --resume runs/remix-grpo-20260101-120000 train.steps=100
built-in configs: quickstart (the default), grpo, ppo, remix-grpo, remix-ppo, remix-grpo-1.5b, remix-ppo-1.5b
"""


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None,
                        help="YAML file or built-in config name (default: quickstart)")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN_DIR",
                        help="continue a run from its latest checkpoint (no value: the newest run under "
                             "logging.output_dir that has a checkpoint)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def _newest_resumable_run(output_dir: Path) -> Path:
    from remix_rft.checkpoint import latest_checkpoint

    candidates = [d for d in output_dir.iterdir() if d.is_dir() and latest_checkpoint(d) is not None] \
        if output_dir.exists() else []
    if not candidates:
        raise SystemExit(f"remix-rft: --resume found no run with a checkpoint under {output_dir}")
    return max(candidates, key=lambda d: latest_checkpoint(d).stat().st_mtime)


def train_command(args: argparse.Namespace) -> int:
    from remix_rft.config import ConfigError, config_from_dict, deep_merge, load_config, parse_override
    from remix_rft.trainer import config_for_resume, run_training

    if args.resume not in (None, "latest") and "=" in args.resume and not Path(args.resume).exists():
        # `--resume key=value ...`: argparse gave the first override to --resume's optional value
        args.overrides.insert(0, args.resume)
        args.resume = "latest"
    try:
        resume_dir = None
        if args.resume is not None:
            if args.resume == "latest":
                base = load_config(args.config or "quickstart", args.overrides)
                resume_dir = _newest_resumable_run(Path(base.logging.output_dir))
            else:
                resume_dir = Path(args.resume)
            data = config_for_resume(resume_dir)
            for text in args.overrides:
                data = deep_merge(data, parse_override(text))
            config = config_from_dict(data)
        else:
            config = load_config(args.config or "quickstart", args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"remix-rft train: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(config.to_yaml())
        return 0
    run_training(config, resume=resume_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    from remix_rft.evaluation import add_eval_arguments, eval_command
    from remix_rft.plotting import add_plot_arguments, plot_command

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "transformers", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor "Loading weights" bars would bury the training progress bar

    parser = argparse.ArgumentParser(prog="remix-rft", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="reinforcement finetuning (GRPO, PPO, ReMix-GRPO, ReMix-PPO)",
                           epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_train_arguments(train)
    add_eval_arguments(sub.add_parser("eval", help="evaluate a model on math benchmarks"))
    add_plot_arguments(sub.add_parser("plot", help="plot metrics of one or more runs"))
    args = parser.parse_args(argv)
    if args.command == "train":
        return train_command(args)
    if args.command == "eval":
        return eval_command(args)
    return plot_command(args)


if __name__ == "__main__":
    sys.exit(main())
