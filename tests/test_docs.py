"""The documentation cannot rot: the generated references match the source, every config key is documented, the
README and the site's navigation hold together, and the commands the README and the guides show run (on the tiny
random model, with overrides that make them take seconds)."""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from remix_rft import config as config_module
from remix_rft import docs_reference
from remix_rft.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"

# the overrides that make a documented `remix-rft train` take seconds: appended after the documented ones, so they win
TINY = ["model.name=tiny-random", "train.prompts_per_step=2", "train.samples_per_prompt=2", "train.minibatch_size=2",
        "rollout.max_new_tokens=4", "eval.limit=2", "eval.max_new_tokens=4", "logging.tensorboard=false",
        "logging.progress=false", "remix.reincarnate_at=1", "train.steps=1"]
TINY_ARITHMETIC = [*TINY, "data.train_options={size: 16}"]
NO_EVAL = ["eval.before_training=false", "eval.after_training=false"]


def text(page: str) -> str:
    return (ROOT / page).read_text()


def documented(page: str, command: str) -> list[str]:
    """The command as the page shows it (it must be there verbatim), split into `remix-rft`'s arguments."""
    assert command in text(page), f"{page} no longer shows `{command}`: update tests/test_docs.py with the page"
    words = shlex.split(command)
    assert words[0] == "remix-rft"
    return words[1:]


def config_keys(cls: type = config_module.Config, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls, vars(config_module))
    for spec in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[spec.name]):
            keys += config_keys(hints[spec.name], f"{prefix}{spec.name}.")
        else:
            keys.append(f"{prefix}{spec.name}")
    return keys


# ------------------------------------------------------------------------------------------ generated references


@pytest.mark.parametrize("name", sorted(docs_reference.PAGES))
def test_the_committed_reference_is_a_fresh_render(name):
    committed = (DOCS / "reference" / name).read_text()
    assert committed == docs_reference.PAGES[name](), (
        f"docs/reference/{name} is stale: run `python -m remix_rft.docs_reference` and commit the result")


def test_every_config_key_is_in_the_reference_with_type_default_and_help():
    page = (DOCS / "reference" / "config.md").read_text()
    rows = {}
    for line in page.splitlines():
        match = re.match(r"\| `([a-z0-9_.]+)` \| (.+?) \| (.+?) \| (.*) \|$", line)
        if match:
            rows[match.group(1)] = match.groups()[1:]
    keys = config_keys()
    assert len(keys) > 100
    for key in keys:
        assert key in rows, f"config key {key} is missing from docs/reference/config.md"
        type_text, default, help_text = rows[key]
        assert type_text.strip("`") and default.strip("`") and help_text.strip(), key


def test_fallback_help_is_only_for_keys_the_source_does_not_comment():
    """A key that gained a comment in config.py must leave docs_reference.FALLBACK_HELP (the comment wins)."""
    keys = set(config_keys())
    for key in docs_reference.FALLBACK_HELP:
        assert key in keys, f"FALLBACK_HELP names {key}, which is no config key"
    commented = {doc.key for doc in docs_reference.collect() if doc.help != docs_reference.FALLBACK_HELP.get(doc.key)}
    assert not commented & set(docs_reference.FALLBACK_HELP), "drop these from FALLBACK_HELP: they have a comment"


def test_help_comes_from_the_comment_beside_or_above_the_field():
    docs = {doc.key: doc for doc in docs_reference.collect()}
    assert docs["train.micro_batch_tokens"].help.startswith("padded tokens per forward/backward")  # beside
    assert docs["remix.replay"].help.startswith("which buffered groups are replayed")  # the block above
    assert docs["model.lora.r"].default == "0" and docs["model.lora.r"].type == "int"
    assert docs["data.selection"].default == "none" and docs["logging.run_name"].default == "null"


def test_the_spending_rollouts_options_are_documented_everywhere():
    reference = (DOCS / "reference" / "config.md").read_text()
    guide = (DOCS / "guides" / "spending-rollouts.md").read_text()
    readme = README.read_text()
    section = readme.split("## Spending rollouts well", 1)[1].split("\n## ", 1)[0]
    for key in ("remix.replay", "train.dynamic_sampling", "data.selection"):
        assert f"| `{key}` |" in reference
        assert f"| `{key}`" in guide  # the configuration table's rows
        assert f"`{key}=" in section and f"`{key}=" in guide  # the options table


def _table_keys(cell: str) -> list[str]:
    """`a.b`, `c` -> a.b, a.c; `a.{b, c}` and `a.b_{c,d}` expand."""
    names = re.findall(r"`([^`]+)`", cell)
    keys, prefix = [], ""
    for name in names:
        if "." in name:
            prefix = name.rsplit(".", 1)[0] + "." if "{" not in name else name.split("{")[0].rsplit(".", 1)[0] + "."
        else:
            name = prefix + name
        brace = re.match(r"(.*)\{(.*)\}(.*)", name)
        parts = [brace.group(1) + p.strip() + brace.group(3) for p in brace.group(2).split(",")] if brace else [name]
        keys += parts
    return keys


def test_the_hand_written_configuration_table_names_real_keys():
    keys = set(config_keys())
    rows = [line for line in (DOCS / "guides" / "configuration.md").read_text().splitlines()
            if line.startswith("| `")]
    assert len(rows) > 60
    for row in rows:
        for key in _table_keys(row.split(" | ")[0]):
            assert key in keys, f"docs/guides/configuration.md names {key}, which is no config key ({row[:60]})"


# ------------------------------------------------------------------------------------------ README and site


def test_the_readme_is_a_front_door():
    readme = README.read_text()
    assert len(readme.splitlines()) <= 300
    # the two set-up commands, exactly, with their comments
    for command in ("bash scripts/setup.sh && remix-rft train      # the main job: short ReMix-GRPO run + evaluation "
                    "table (5-7 min on 2 CPU cores)",
                    "bash scripts/setup.sh && python -m pytest -q  # the tests"):
        assert f"\n{command}\n" in readme
        assert f"\n{command}\n" in (DOCS / "getting-started.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def _nav_pages(nav) -> list[str]:
    pages = []
    for item in nav:
        for value in (item.values() if isinstance(item, dict) else [item]):
            pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_page_is_in_the_nav_and_in_llms_txt():
    site = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_pages(site["nav"])
    on_disk = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == on_disk
    llms = (DOCS / "llms.txt").read_text()
    assert llms.startswith("# remix-rft\n\n> ")
    linked = re.findall(r"^- \[[^\]]+\]\(([^)]+)\)", llms, flags=re.M)
    assert sorted(linked) == on_disk


def test_the_pages_moved_out_of_the_readme_stay_at_their_paths():
    """Code, presets and tests cite these paths."""
    for path in ("METHOD.md", "results.md", "gpu.md", "generation.md", "figures/gpu/accuracy_vs_rollouts.png"):
        assert (DOCS / path).is_file()


# ------------------------------------------------------------------------------------------ documented commands


def test_version_and_docs(capsys, monkeypatch, tmp_path):
    out = subprocess.run([sys.executable, "-m", "remix_rft.cli", *documented("README.md", "remix-rft --version")],
                         capture_output=True, text=True, check=True).stdout
    assert re.fullmatch(r"remix-rft \d+\.\d+\.\d+\S*\n", out)
    assert main(documented("README.md", "remix-rft docs")) == 0  # this checkout: its docs/ exist
    first, *_, last = capsys.readouterr().out.splitlines()
    assert Path(first.split(": ", 1)[1]).exists()
    assert all(Path(path).is_file() for path in re.findall(r"(/\S+?\.(?:md|txt))", last)), last
    # a checkout without a built site, then with one, then an installed wheel (no docs beside the package)
    monkeypatch.setattr("remix_rft.cli.SOURCE_ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# docs\n")
    (tmp_path / "mkdocs.yml").write_text("site_name: x\n")
    assert main(["docs"]) == 0
    printed = capsys.readouterr().out
    assert f"(Markdown sources, not built): {tmp_path / 'docs'}" in printed and "mkdocs build --strict" in printed
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<html></html>")
    assert main(["docs"]) == 0
    assert f"(built site): {tmp_path / 'site' / 'index.html'}" in capsys.readouterr().out
    (tmp_path / "mkdocs.yml").unlink()
    assert main(["docs"]) == 0
    assert "not installed with the package" in capsys.readouterr().out


def test_train_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(documented("README.md", "remix-rft train --help"))
    assert exit_info.value.code == 0
    assert "common overrides" in capsys.readouterr().out


def test_the_plan_output_shown_in_the_guide(capsys, monkeypatch):
    monkeypatch.setattr("remix_rft.plan.default_device_memory_gb", lambda device_type="cuda": 80.0)  # no GPU visible
    page = "docs/guides/planning.md"
    assert main(documented(page, "remix-rft plan --config remix-grpo-1.5b --device cuda")) == 0
    shown = text(page).split("$ remix-rft plan --config remix-grpo-1.5b --device cuda\n", 1)[1].split("```", 1)[0]
    def same(output: str) -> str:  # where the architecture was read from depends on the machine's HF cache
        return re.sub(r"; architecture from [^)]*\)", ")", output.strip())

    assert same(capsys.readouterr().out) == same(shown)


@pytest.mark.parametrize("page, command", [
    ("README.md", "remix-rft plan --config remix-grpo-1.5b"),
    ("docs/guides/lora.md", "remix-rft plan --config remix-grpo-1.5b model.lora.r=16"),
    ("docs/guides/spending-rollouts.md", "remix-rft plan --config grpo train.dynamic_sampling=true"),
    ("docs/guides/reincarnation.md", "remix-rft plan --config remix-grpo remix.reincarnate_at=auto"),
])
def test_documented_plans(page, command, capsys):
    assert main(documented(page, command)) == 0
    assert "total rollouts" in capsys.readouterr().out


@pytest.mark.parametrize("page, command, extra", [
    ("docs/guides/lora.md", "remix-rft train --config quickstart-lora", TINY_ARITHMETIC),
    ("docs/guides/spending-rollouts.md", "remix-rft train remix.replay=informative remix.history_window=4",
     TINY_ARITHMETIC),
    ("docs/guides/spending-rollouts.md", "remix-rft train data.selection=skip_uninformative", TINY_ARITHMETIC),
    ("docs/guides/spending-rollouts.md", "remix-rft train --config grpo train.dynamic_sampling=true",
     TINY_ARITHMETIC),
    ("docs/guides/reincarnation.md", "remix-rft train --config remix-grpo remix.reincarnate_at=auto remix.precedent="
     "lagged remix.auto_reincarnation.ess_below=0.9 remix.auto_reincarnation.max_step=30",
     [*TINY_ARITHMETIC, "remix.reincarnate_at=auto", "train.steps=2"]),
    ("docs/guides/pipeline.md", "remix-rft train rollout.pipeline=true rollout.max_staleness=0", TINY_ARITHMETIC),
    ("docs/guides/pipeline.md", "remix-rft train rollout.pipeline=true", [*TINY_ARITHMETIC, "train.steps=2"]),
    ("docs/guides/mismatch.md", "remix-rft train --config quickstart rollout.behaviour_logprobs=engine "
     "rollout.mismatch_mask=geo_mean", TINY_ARITHMETIC),
])
def test_documented_training_commands(page, command, extra, tmp_path):
    argv = [*documented(page, command), *extra, *NO_EVAL, f"logging.output_dir={tmp_path}", "logging.run_name=r"]
    assert main(argv) == 0
    assert (tmp_path / "r" / "metrics.jsonl").is_file()


def test_the_quickstart_commands(tmp_path, capsys):
    """README's quickstart on the tiny model: train, resume, plot, eval, in that order."""
    runs = tmp_path / "runs"
    out = [f"logging.output_dir={runs}"]
    assert main([*documented("README.md", "remix-rft train --config remix-grpo train.steps=100 "
                             "remix.offpolicy_fraction=0.4"), *TINY_ARITHMETIC, *out, "logging.run_name=remix"]) == 0
    assert main([*documented("README.md", "remix-rft train --config ppo"), *TINY_ARITHMETIC, *out,
                 "logging.run_name=ppo"]) == 0
    # `--resume RUN_DIR`, then `--resume` alone (the newest run with a checkpoint): one more step each
    argv = documented("README.md", "remix-rft train --resume runs/remix-grpo-20261124-120000")
    assert main([*argv[:-1], str(runs / "remix"), *TINY_ARITHMETIC, "train.steps=2"]) == 0
    argv = documented("docs/guides/resuming.md", "remix-rft train --resume train.steps=100")
    assert main([*argv, *TINY_ARITHMETIC, "train.steps=3", *out]) == 0
    steps = [line for line in (runs / "remix" / "metrics.jsonl").read_text().splitlines() if '"type": "train"' in line]
    assert len(steps) == 3
    # plot the two runs; evaluate the checkpoint
    argv = documented("README.md", "remix-rft plot runs/grpo-* runs/remix-grpo-*")
    assert main([argv[0], str(runs / "ppo"), str(runs / "remix"), "--out", str(tmp_path / "plots")]) == 0
    assert list((tmp_path / "plots").glob("*.png"))
    argv = documented("README.md", "remix-rft eval --model runs/<run>/checkpoints/step_000060/policy "
                      "--benchmarks math500,minerva --limit 50")
    policy = runs / "remix" / "checkpoints" / "step_000003" / "policy"
    argv[argv.index("--model") + 1] = str(policy)
    assert main([*argv, "--benchmarks", "arithmetic", "--limit", "2", "--max-new-tokens", "4", "--device", "cpu",
                 "--output-dir", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "results.json").is_file()
    capsys.readouterr()


def test_your_own_data_and_reward(tmp_path, monkeypatch):
    """docs/guides/custom-data.md: the data file its printf writes, the reward its code block defines."""
    page = "docs/guides/custom-data.md"
    monkeypatch.chdir(tmp_path)
    printf = next(line for line in text(page).splitlines() if line.startswith("printf "))
    subprocess.run(["bash", "-c", printf], check=True)
    assert len((tmp_path / "my.jsonl").read_text().splitlines()) == 2
    reward = text(page).split("```python\n# my_reward.py\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my_reward.py").write_text(reward)
    out = [f"logging.output_dir={tmp_path / 'runs'}"]
    assert main([*documented(page, "remix-rft train data.train=my.jsonl 'eval.benchmarks=[]'"), *TINY, *out,
                 "logging.run_name=data"]) == 0
    assert main([*documented(page, "remix-rft train data.train=my.jsonl 'eval.benchmarks=[]' "
                             "reward.name=my_reward.py:score"), *TINY, *out, "logging.run_name=reward"]) == 0
    assert (tmp_path / "runs" / "reward" / "metrics.jsonl").is_file()


def test_the_python_quickstart(tmp_path, monkeypatch):
    """README's Python blocks, as written, with the tiny overrides added to `load_config`'s."""
    readme = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    training = next(block for block in blocks if "run_training(config)" in block)
    algo = next(block for block in blocks if "algos.policy_loss" in block)
    load_config = config_module.load_config
    extra = [*TINY_ARITHMETIC, f"logging.output_dir={tmp_path}", "logging.run_name=py", *NO_EVAL]
    monkeypatch.setattr(config_module, "load_config", lambda name, overrides=(): load_config(name, [*overrides,
                                                                                                    *extra]))
    namespace: dict = {}
    exec(compile(training, "README.md", "exec"), namespace)
    assert namespace["trainer"].config.model.name == "tiny-random"
    assert (tmp_path / "py" / "metrics.jsonl").is_file()

    import torch

    torch.manual_seed(0)
    logp = torch.randn(2, 5)
    namespace = {"logp": logp, "behaviour_logp": logp.detach() + 0.01, "proximal_logp": logp.detach(),
                 "advantages": torch.randn(2, 5), "mask": torch.ones(2, 5)}
    exec(compile(algo, "README.md", "exec"), namespace)
    assert torch.isfinite(namespace["loss"]) and isinstance(namespace["metrics"], dict)
