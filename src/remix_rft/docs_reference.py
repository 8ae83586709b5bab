"""Generate the config reference (docs/reference/config.md) from the config dataclasses in `remix_rft/config.py`,
and the command-line reference (docs/reference/cli.md) from the `remix-rft` parser.

Every key of `Config`, with its type and default, and as its help the comment beside the field or the comment
block right above it in the source (read with `tokenize`, matched to fields with `ast`). A field without a comment
takes its help from `FALLBACK_HELP` below; a field with neither fails the generation, so a new key cannot go
undocumented. The built-in configs (`remix_rft/configs/*.yaml`) follow, each with its header comment and the keys
it sets. The CLI page lists each subcommand's options from the parser's own actions (not argparse's formatted
help, whose layout changes between Python versions) and its examples.

    python -m remix_rft.docs_reference            # rewrite docs/reference/config.md and cli.md
    python -m remix_rft.docs_reference --check    # exit 1 if a committed page differs from a fresh render

tests/test_docs.py compares the committed pages with `render()` / `render_cli()`, so they cannot drift.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import sys
import tokenize
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from remix_rft import config as config_module

CONFIG_SOURCE = Path(config_module.__file__)
REPO_ROOT = Path(__file__).resolve().parents[2]  # src/remix_rft/docs_reference.py -> the checkout
REFERENCE_DIR = REPO_ROOT / "docs" / "reference"

# Help for the fields whose source line carries no comment (the name alone does not say enough). Prefer adding a
# comment in config.py: it then wins over this table.
FALLBACK_HELP: dict[str, str] = {
    "algorithm.clip_eps": "clip range around the clip centre",
    "algorithm.entropy_coef": "entropy bonus weight (0: none)",
    "algorithm.grpo_eps": "added to the group's reward standard deviation when GRPO scales advantages",
    "remix.auto_reincarnation.baseline_steps": "steps whose mean fresh response length is the length_drop baseline",
    "remix.auto_reincarnation.plateau_min_gain": "reward plateau: the gain over the best moving mean that resets the "
                                                 "plateau count",
    "remix.kl_convex_start": "KL-Convex: step after which the weight on the base reference starts to fall",
    "remix.kl_convex_interval": "KL-Convex: steps between two decrements of the weight",
    "remix.kl_convex_decrement": "KL-Convex: weight removed at each interval; weight = max(1 - decrement * "
                                 "ceil(max(t - start, 0) / interval), floor)",
    "remix.kl_convex_floor": "KL-Convex: lowest weight on the base reference (the rest goes to the precedent)",
    "train.steps": "training steps",
    "train.prompts_per_step": "B, prompts per step (global: across all ranks under torchrun)",
    "train.samples_per_prompt": "G, responses per prompt (GRPO needs >= 2)",
    "train.lr": "policy learning rate (AdamW)",
    "train.critic_lr": "critic learning rate (AdamW, PPO)",
    "train.weight_decay": "AdamW weight decay",
    "train.max_grad_norm": "gradient-norm clip",
    "train.warmup_steps": "linear learning-rate warm-up, in optimizer steps",
    "train.seed": "seeds data order, sampling, replay and minibatch shuffles",
    "train.dynamic_sampling_max_rounds": "dynamic sampling: most generation rounds a step may take",
    "rollout.engine": "rollout engine: hf (the trained model's own sampling loop, shared weights) or vllm (a "
                      "colocated vLLM engine, weights pushed every step)",
    "rollout.max_new_tokens": "response length cap",
    "rollout.temperature": "sampling temperature (the trainer's log-probs use the same)",
    "rollout.top_k": "keep the k most likely tokens (0: off); as top_p, the trainer uses the same truncation",
    "rollout.mismatch_mask_high": "the upper end of the band the mask keeps (null: the mask's default, see "
                                  "mismatch_mask_low)",
    "rollout.tensor_parallel_size": "vllm: tensor parallelism of the engine",
    "data.problem_key": "the problem's field in a custom file (default: problem, question or prompt)",
    "data.answer_key": "the answer's field in a custom file (default: answer, else a solution's last \\boxed{})",
    "data.limit": "use the first N training examples (null: all)",
    "data.instruction": "appended to each problem (null: nothing)",
    "data.system_prompt": "optional system message",
    "data.selection_skip_base": "skip_uninformative: skip probability base (1 - (1 - base) ** streak)",
    "data.selection_max_skip": "skip_uninformative: highest skip probability (a prompt is never skipped for sure)",
    "data.selection_revisit_after": "skip_uninformative: skips in a row after which the prompt is generated again",
    "reward.name": "math (final-answer correctness, graded by reward.grader), custom (reward.custom is the reward), "
                   "or a package.module:function path",
    "reward.format_weight": "bonus for a \\boxed{} answer (0: none)",
    "reward.timeout": "seconds per grading, in a killable worker process; timeouts score 0 and are counted",
    "reward.correct_reward": "reward of a correct answer",
    "reward.incorrect_reward": "reward of a wrong answer",
    "reward.require_boxed": "only a \\boxed{} counts as a final answer",
    "reward.num_workers": "grading worker processes",
    "eval.benchmarks": "held-out sets evaluated before and after training (and every eval.every steps)",
    "eval.before_training": "evaluate before the first step",
    "eval.after_training": "evaluate after the last step",
    "eval.limit": "problems per held-out set (null: all)",
    "eval.greedy": "greedy decoding (the paper's Pass@1); false: sample eval.samples at eval.temperature",
    "eval.samples": "samples per problem when not greedy (avg@K, pass@K)",
    "eval.temperature": "sampling temperature when not greedy",
    "logging.output_dir": "folder the run directories go in",
    "logging.tensorboard": "also write TensorBoard event files (tensorboard/)",
    "logging.wandb": "also log to Weights & Biases",
    "logging.wandb_project": "the Weights & Biases project",
    "logging.progress": "print a progress line per step",
    "checkpoint.save_final": "save a checkpoint after the last step",
}

SECTION_TITLES = {
    "model": "Model, precision and LoRA",
    "algorithm": "Algorithm: losses, KL, advantages",
    "remix": "ReMix: replay, update passes, KL-Convex, reincarnation",
    "train": "Training loop and optimizer",
    "rollout": "Rollouts: engine, sampling, mismatch corrections, pipeline",
    "data": "Training data and prompt selection",
    "reward": "Reward and the reward-hacking alarm",
    "eval": "Held-out evaluation",
    "logging": "Logging",
    "checkpoint": "Checkpoints",
}

HEADER = """\
# Config reference

<!-- Generated by `python -m remix_rft.docs_reference` from src/remix_rft/config.py and
src/remix_rft/configs/*.yaml. Do not edit by hand: tests/test_docs.py fails when this file differs from a fresh
render. To change a help text, edit the comment beside (or above) the field in config.py, then regenerate. -->

Every key of the run configuration, with its type, its default (the dataclass default: a built-in config or your
YAML file may set another value, and `remix-rft train --config NAME --print-config` prints the resolved one) and
its help text, which is the comment beside the field in `src/remix_rft/config.py`. Set a key in YAML
(`section: {key: value}`) or on the command line as `section.key=value` (nested: `model.lora.r=16`); a list also
as `a,b`. How overrides merge, and the reasoning behind the main defaults:
[Configuration](../guides/configuration.md).
"""


@dataclass
class FieldDoc:
    key: str
    type: str
    default: str
    help: str


def _comments(source: str) -> dict[int, str]:
    """Line number -> the text of the comment on that line (without `#`)."""
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found[token.start[0]] = token.string.lstrip("#").strip()
    return found


def _class_nodes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def _field_help(node: ast.AnnAssign, lines: list[str], comments: dict[int, str]) -> str:
    """The comment block right above the field (contiguous comment-only lines) and the comment on its own line."""
    above = []
    line = node.lineno - 1
    while line >= 1 and lines[line - 1].strip().startswith("#"):
        above.append(comments[line])
        line -= 1
    parts = [" ".join(reversed(above))] if above else []
    inline = comments.get(node.end_lineno)
    if inline and not lines[node.end_lineno - 1].strip().startswith("#"):
        parts.append(inline)
    return "; ".join(part for part in parts if part)


def _yaml_value(value: Any) -> str:
    """A default as it is written in YAML / on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return repr(value)


def _default(spec: dataclasses.Field) -> Any:
    if spec.default is not dataclasses.MISSING:
        return spec.default
    return spec.default_factory()  # type: ignore[misc]


def collect(cls: type = config_module.Config, prefix: str = "") -> list[FieldDoc]:
    """Every leaf key under `cls`, in source order, with type, default and help."""
    source = CONFIG_SOURCE.read_text()
    tree, lines, comments = ast.parse(source), source.splitlines(), _comments(source)
    classes = _class_nodes(tree)
    return _collect(cls, prefix, classes, lines, comments, source)


def _collect(cls: type, prefix: str, classes: dict[str, ast.ClassDef], lines: list[str], comments: dict[int, str],
             source: str) -> list[FieldDoc]:
    hints = typing.get_type_hints(cls, vars(config_module))
    nodes = {node.target.id: node for node in classes[cls.__name__].body
             if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}
    docs: list[FieldDoc] = []
    for spec in dataclasses.fields(cls):
        key = f"{prefix}{spec.name}"
        hint = hints[spec.name]
        if dataclasses.is_dataclass(hint):
            docs.extend(_collect(hint, f"{key}.", classes, lines, comments, source))
            continue
        node = nodes[spec.name]
        help_text = _field_help(node, lines, comments) or FALLBACK_HELP.get(key, "")
        if not help_text:
            raise SystemExit(f"config key {key} has no help: add a comment beside it in {CONFIG_SOURCE} "
                             f"(or an entry in FALLBACK_HELP of {__file__})")
        type_text = ast.get_source_segment(source, node.annotation) or str(hint)
        docs.append(FieldDoc(key, type_text, _yaml_value(_default(spec)), help_text))
    return docs


def _nested_sections(cls: type = config_module.Config, prefix: str = "") -> dict[str, type]:
    """Dotted section name -> its dataclass, for every section and sub-section."""
    found: dict[str, type] = {}
    hints = typing.get_type_hints(cls, vars(config_module))
    for spec in dataclasses.fields(cls):
        hint = hints[spec.name]
        if dataclasses.is_dataclass(hint):
            found[f"{prefix}{spec.name}"] = hint
            found.update(_nested_sections(hint, f"{prefix}{spec.name}."))
    return found


def _cell(text: str) -> str:
    """Text inside a table cell: a pipe would end the cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _prose(text: str) -> str:
    """Help text as Markdown prose: `<name>` would be an HTML tag and `a * b ... c * d` emphasis."""
    return _cell(text).replace("<", "&lt;").replace("*", "\\*")


def _code(text: str) -> str:
    text = _cell(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _table(docs: list[FieldDoc]) -> list[str]:
    rows = ["| key | type | default | help |", "|---|---|---|---|"]
    rows += [f"| {_code(d.key)} | {_code(d.type)} | {_code(d.default)} | {_prose(d.help)} |" for d in docs]
    return rows


def _class_doc(cls: type) -> str | None:
    doc = cls.__doc__ or ""
    # dataclasses give a class without a docstring a generated signature, which is no help
    if not doc or doc.startswith(f"{cls.__name__}("):
        return None
    return " ".join(doc.split())


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict) and key != "train_options" and key != "hacking_thresholds" and value:
            items.extend(_flatten(value, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items


def _builtin_configs() -> list[str]:
    out = ["## Built-in configs", "",
           "`--config NAME` loads `src/remix_rft/configs/NAME.yaml`; each sets the keys below and keeps every other "
           "key's default. `quickstart` is the default job (`remix-rft train` with no `--config`).", ""]
    for path in sorted(config_module.BUILTIN_CONFIG_DIR.glob("*.yaml")):
        text = path.read_text()
        header = []
        for line in text.splitlines():
            if not line.startswith("#"):
                break
            header.append(line.lstrip("#").strip())
        out += [f"### `{path.stem}`", ""]
        if header:
            out += [" ".join(header), ""]
        out += ["| key | value |", "|---|---|"]
        out += [f"| {_code(key)} | {_code(_yaml_value(value))} |" for key, value in _flatten(yaml.safe_load(text))]
        out.append("")
    return out


def render() -> str:
    """The whole page, as committed at docs/reference/config.md."""
    docs = collect()
    sections = _nested_sections()
    out = [HEADER]
    for top in (spec.name for spec in dataclasses.fields(config_module.Config)):
        out += [f"## `{top}`: {SECTION_TITLES.get(top, top)}", ""]
        groups = [top] + [name for name in sections if name.startswith(f"{top}.")]
        for group in groups:
            rows = [d for d in docs if d.key.rsplit(".", 1)[0] == group]
            if group != top:
                out += [f"### `{group}`", ""]
            doc = _class_doc(sections[group])
            if doc:
                out += [_prose(doc), ""]
            out += _table(rows) + [""]
    out += _builtin_configs()
    return "\n".join(out).rstrip("\n") + "\n"


CLI_HEADER = """\
# CLI reference

<!-- Generated by `python -m remix_rft.docs_reference` from the parser in src/remix_rft/cli.py. Do not edit by
hand: tests/test_docs.py fails when this file differs from a fresh render. -->

`remix-rft COMMAND --help` prints the same. Every command takes `--debug` (or `REMIX_DEBUG=1`): input errors then
show their traceback too. An input error is one line on stderr and exit status 2
([Troubleshooting](../guides/troubleshooting.md)). Under torchrun the same commands run as
`python -m remix_rft.cli COMMAND ...` ([Multi-GPU and multi-node](../guides/distributed.md)).
"""


def _option_row(action: argparse.Action) -> str:
    if action.option_strings:
        names = ", ".join(sorted(action.option_strings, key=lambda name: (not name.startswith("--"), name)))
        if action.nargs != 0:
            metavar = action.metavar or action.dest.upper()
            names += f" [{metavar}]" if action.nargs == "?" else f" {metavar}"
    else:
        names = str(action.metavar or action.dest) + (" ..." if action.nargs in ("*", "+") else "")
    default = action.default
    shown = "" if default in (None, False, argparse.SUPPRESS) or not action.option_strings else _yaml_value(default)
    help_text = (action.help or "") % {**vars(action), "default": default}  # argparse's %(default)s and the like
    return f"| {_code(names)} | {_code(shown) if shown else ''} | {_prose(help_text)} |"


def render_cli() -> str:
    """The whole CLI page, as committed at docs/reference/cli.md."""
    from remix_rft.cli import build_parser

    parser = build_parser()
    out = [CLI_HEADER, "`remix-rft --version` prints the version; `remix-rft --help` lists the commands.", ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help for choice in sub._choices_actions}
    for name, command in sub.choices.items():
        out += [f"## `remix-rft {name}`", "", _prose(summaries.get(name) or ""), ""]
        rows = [a for a in command._actions if not isinstance(a, argparse._HelpAction)]
        out += ["| argument | default | help |", "|---|---|---|", *(_option_row(a) for a in rows), ""]
        if command.epilog:
            out += ["```text", command.epilog.rstrip("\n"), "```", ""]
    return "\n".join(out).rstrip("\n") + "\n"


PAGES = {"config.md": render, "cli.md": render_cli}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m remix_rft.docs_reference", description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=REFERENCE_DIR, help=f"default: {REFERENCE_DIR}")
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed pages instead of writing them; exit 1 when one differs")
    args = parser.parse_args(argv)
    if args.out_dir == REFERENCE_DIR and not (REPO_ROOT / "mkdocs.yml").is_file():
        parser.error(f"{REPO_ROOT} is not a remix-rft checkout (no mkdocs.yml): run this from an editable install, "
                     "or pass --out-dir")
    stale = []
    for name, render_page in PAGES.items():
        path, text = args.out_dir / name, render_page()
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    if stale:
        print(f"stale: {', '.join(map(str, stale))}: run `python -m remix_rft.docs_reference`", file=sys.stderr)
        return 1
    if args.check:
        print(f"{args.out_dir}: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
