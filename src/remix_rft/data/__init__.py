"""Prompt sets: loaders (files, Hugging Face, built-in names), the arithmetic generator, prompt formatting."""

from remix_rft.data.arithmetic import generate_arithmetic
from remix_rft.data.loaders import (
    BENCHMARKS,
    DATA_DIR_ENV,
    available_datasets,
    clean_answer,
    gsm8k_final_answer,
    last_boxed_content,
    load_examples,
    load_train_examples,
)
from remix_rft.data.prompts import DEFAULT_INSTRUCTION, format_prompt, format_prompts, user_message
from remix_rft.data.types import Example, GroundTruth

__all__ = [
    "BENCHMARKS",
    "DATA_DIR_ENV",
    "DEFAULT_INSTRUCTION",
    "Example",
    "GroundTruth",
    "available_datasets",
    "clean_answer",
    "format_prompt",
    "format_prompts",
    "generate_arithmetic",
    "gsm8k_final_answer",
    "last_boxed_content",
    "load_examples",
    "load_train_examples",
    "user_message",
]
