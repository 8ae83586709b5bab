"""Writing a benchmark's table to a file with the machine and the command that made it (the `--out` of the small
benchmarks): a figure is only reported with both."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import torch


def write_table_file(out: Path, script: str, argv: list[str] | None, table: str, *notes: str,
                     device: str | None = None) -> None:
    """`table`, then each of `notes`, then the machine (CPU, cores, torch threads and version, load) and the command
    (`python benchmarks/<script> <argv>`; the process's own arguments when `argv` is None)."""
    cpu = platform.processor() or platform.machine()
    machine = (f"{platform.node()}: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
               f"torch {torch.__version__}, {f'device {device}, ' if device else ''}"
               f"1-minute load average {os.getloadavg()[0]:.1f}")
    command = f"python benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:])
    out.write_text("\n\n".join([table, *notes, f"machine: {machine}\ncommand: {command}"]) + "\n")
