"""Config loading, overrides and validation: bad values fail at start with the key named."""

from pathlib import Path

import pytest
import yaml

from remix_rft.config import BUILTIN_CONFIG_DIR, Config, ConfigError, load_config, parse_override


def test_defaults_validate():
    config = load_config()
    assert isinstance(config, Config)
    assert config.remix.offpolicy_fraction == 0.4
    assert config.remix.history_window == 2
    assert config.remix.updates_per_batch == 2
    assert config.remix.reincarnate_at == 50
    assert config.algorithm.kl_coef == 0.001


@pytest.mark.parametrize("path", sorted(BUILTIN_CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_builtin_configs_load(path: Path):
    config = load_config(str(path))
    assert config.train.steps >= 1
    # the name resolves too, without the directory
    assert load_config(path.stem).to_dict() == config.to_dict()


def test_builtin_config_names_cover_all_algorithms():
    names = {p.stem for p in BUILTIN_CONFIG_DIR.glob("*.yaml")}
    assert {"quickstart", "grpo", "ppo", "remix-grpo", "remix-ppo", "remix-grpo-1.5b", "remix-ppo-1.5b"} <= names
    assert load_config("grpo").remix.enabled is False
    assert load_config("ppo").algorithm.name == "ppo"
    assert load_config("remix-ppo").advantage_estimator == "gae"
    assert load_config("remix-grpo").advantage_estimator == "grpo"


def test_overrides_are_typed():
    config = load_config("remix-grpo", ["remix.offpolicy_fraction=0.5", "train.steps=3", "remix.reincarnate_at=null",
                                        "eval.benchmarks=aime24,amc23", "model.autocast_bf16=true", "train.lr=1e-5"])
    assert config.remix.offpolicy_fraction == 0.5
    assert config.train.steps == 3
    assert config.remix.reincarnate_at is None
    assert config.eval.benchmarks == ["aime24", "amc23"]
    assert config.model.autocast_bf16 is True
    assert config.train.lr == pytest.approx(1e-5)


def test_parse_override_nesting_and_yaml_values():
    assert parse_override("a.b.c=3") == {"a": {"b": {"c": 3}}}
    assert parse_override("x=[1, 2]") == {"x": [1, 2]}
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("novalue")


@pytest.mark.parametrize("override, key", [
    ("remix.offpolicy_fraction=1.0", "remix.offpolicy_fraction"),
    ("remix.offpolicy_fraction=-0.1", "remix.offpolicy_fraction"),
    ("remix.history_window=0", "remix.history_window"),
    ("remix.updates_per_batch=0", "remix.updates_per_batch"),
    ("train.minibatch_size=7", "train.minibatch_size"),
    ("train.steps=abc", "train.steps"),
    ("train.steps=1.5", "train.steps"),
    ("algorithm.name=dpo", "algorithm.name"),
    ("algorithm.kl_estimator=k9", "algorithm.kl_estimator"),
    ("rollout.temperature=0", "rollout.temperature"),
    ("model.autocast_bf16=maybe", "model.autocast_bf16"),
    ("train.samples_per_prompt=1", "train.samples_per_prompt"),
])
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("remix-grpo", [override])


def test_unknown_keys_are_rejected():
    with pytest.raises(ConfigError, match=r"unknown config key 'remix\.offpolicy'"):
        load_config(None, ["remix.offpolicy=0.3"])
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        load_config(None, ["trian.steps=3"])


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"train": {"step": 3}}))
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.step"):
        load_config(str(path))


def test_missing_config_file_lists_builtins():
    with pytest.raises(ConfigError, match="remix-grpo"):
        load_config("does-not-exist.yaml")


def test_yaml_round_trip(tmp_path):
    config = load_config("remix-ppo", ["train.steps=7"])
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    assert load_config(str(path)).to_dict() == config.to_dict()


def test_gae_requires_ppo():
    with pytest.raises(ConfigError, match="algorithm.advantage_estimator"):
        load_config("remix-grpo", ["algorithm.advantage_estimator=gae"])


def test_ppo_needs_gae_advantages():
    with pytest.raises(ConfigError, match="algorithm.name=ppo trains a critic"):
        load_config("remix-ppo", ["algorithm.advantage_estimator=grpo"])


def test_kl_in_reward_needs_token_level_returns():
    with pytest.raises(ConfigError, match="algorithm.kl_in_reward"):
        load_config("remix-grpo", ["algorithm.kl_in_reward=true"])
    load_config("remix-grpo", ["algorithm.kl_in_reward=true", "algorithm.kl_coef=0"])  # no KL at all: harmless
    assert load_config("remix-ppo", ["algorithm.kl_in_reward=true"]).algorithm.kl_in_reward
