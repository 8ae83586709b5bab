"""remix-rft: efficient off-policy reinforcement finetuning of LLMs with ReMix."""

__version__ = "0.1.0"
