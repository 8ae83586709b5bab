"""The training prompts of a run: the examples, their formatted prompts, and the seeded order they are drawn in."""

from __future__ import annotations

from typing import Any

import torch

from remix_rft.config import Config
from remix_rft.data.loaders import load_train_examples
from remix_rft.data.prompts import format_prompt
from remix_rft.data.types import Example


class PromptSampler:
    """Walks the training set in seeded random order, epoch after epoch; its state is two integers."""

    def __init__(self, size: int, seed: int):
        if size == 0:
            raise ValueError("the training set is empty")
        self.size, self.seed = size, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def next(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            take = min(count - len(out), self.size - self.position)
            out.extend(self._order[self.position:self.position + take])
            self.position += take
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()


class TrainingPrompts:
    """The training set of a config, drawn by a `PromptSampler`; prompts are chat-formatted once and cached."""

    def __init__(self, config: Config, tokenizer):
        data = config.data
        self.examples: list[Example] = load_train_examples(config)
        self.sampler = PromptSampler(len(self.examples), config.train.seed)
        self._tokenizer, self._data = tokenizer, data
        self._cache: dict[int, str] = {}

    def next(self, count: int) -> list[int]:
        """Indices of the next `count` training examples."""
        return self.sampler.next(count)

    def prompt(self, index: int) -> str:
        if index not in self._cache:
            self._cache[index] = format_prompt(self._tokenizer, self.examples[index].problem,
                                               instruction=self._data.instruction,
                                               system_prompt=self._data.system_prompt)
        return self._cache[index]

    def longest_prompt_tokens(self, sample: int = 256) -> int:
        """The longest prompt, in tokens, among up to `sample` examples spread evenly over the set: a memory plan's
        prompt length without tokenizing a large set."""
        stride = max(len(self.examples) // sample, 1)
        return max(len(self._tokenizer(self.prompt(i), add_special_tokens=False)["input_ids"])
                   for i in range(0, len(self.examples), stride))

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
