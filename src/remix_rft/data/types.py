"""The prompt-set record every loader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GroundTruth = str | int | float | list  # a list means: any of these answers counts


@dataclass
class Example:
    problem: str
    answer: GroundTruth
    id: str = ""
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
