"""Prompt formatting: the paper's protocol, problem + instruction as the user turn of the chat template."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from remix_rft.data.types import Example

DEFAULT_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."


def user_message(problem: str, instruction: str | None = DEFAULT_INSTRUCTION) -> str:
    """The user turn: the problem, a space, the instruction (the problem alone without an instruction)."""
    problem = problem.strip()
    return f"{problem} {instruction}" if instruction else problem


def format_prompt(
    tokenizer: Any,
    problem: str,
    instruction: str | None = DEFAULT_INSTRUCTION,
    system_prompt: str | None = None,
) -> str:
    """The prompt text the policy continues: through the tokenizer's chat template with the generation prompt
    appended; plain text ("system\\n\\nuser") when the tokenizer has no chat template (base models)."""
    message = user_message(problem, instruction)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": message}]
        if system_prompt is not None:
            messages.insert(0, {"role": "system", "content": system_prompt})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system_prompt}\n\n{message}" if system_prompt else message


def format_prompts(
    tokenizer: Any,
    examples: Sequence[Example],
    instruction: str | None = DEFAULT_INSTRUCTION,
    system_prompt: str | None = None,
) -> list[str]:
    """`format_prompt` for each example's problem."""
    return [format_prompt(tokenizer, example.problem, instruction, system_prompt) for example in examples]
