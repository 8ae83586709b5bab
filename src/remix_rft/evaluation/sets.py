"""The held-out sets: benchmark names or data sources to problems, for `remix-rft eval` and for a training run's
`eval.benchmarks`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from remix_rft.data import Example, load_examples
from remix_rft.errors import DataError

# Sources with train/test splits: held-out evaluation reads their test split.
SPLIT_SOURCES = ("arithmetic", "gsm8k", "math")


def load_benchmarks(
    names: Sequence[str], data_dir: str | None, limit: int | None
) -> dict[str, list[Example]]:
    """Benchmark name or data source -> its problems (the test split where the source has splits)."""
    return {
        name: load_examples(
            name, data_dir=data_dir, limit=limit, split="test" if name in SPLIT_SOURCES else None
        )
        for name in names
    }


def build_eval_sets(config) -> dict[str, list[Example]]:
    """The held-out sets a training config names (`eval.benchmarks`), as the trainer and the baselines load them.

    `arithmetic` is the test split of the training distribution (same digits/operations), `eval.limit` problems.
    """
    sets: dict[str, list[Example]] = {}
    for name in config.eval.benchmarks:
        options: dict[str, Any] = {}
        if name == "arithmetic":
            if config.data.train == "arithmetic":
                options.update(config.data.train_options)
            options["split"] = "test"
            options["size"] = config.eval.limit or 200  # the training set's size says nothing of the test set
        options.update(config.eval.options.get(name, {}))
        try:
            sets[name] = load_examples(name, data_dir=config.data.data_dir, limit=config.eval.limit,
                                       seed=config.train.seed, **options)
        except DataError as error:  # name the config key: the benchmark may not be what the user typed last
            raise type(error)(f"config key 'eval.benchmarks' ({name!r}): {error}") from None
    return sets
