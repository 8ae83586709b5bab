"""An evaluation's report: the results table (text or markdown), result files, training-log metrics, and the
before/after comparison a training run prints at its end."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from remix_rft.evaluation.grading import AVERAGE_ROW, BenchmarkRow, EvalRecord


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], right_align_numbers: bool = False) -> str:
    """A GitHub markdown table, no trailing newline; `right_align_numbers` right-aligns all columns but the first."""
    rule = ["---"] + ["---:" if right_align_numbers else "---"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


@dataclass
class EvalReport:
    """Per-benchmark rows (the last one is the average), every graded response, and the settings used."""

    rows: list[BenchmarkRow]
    records: list[EvalRecord]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return self.rows[0].samples

    def row(self, benchmark: str) -> BenchmarkRow:
        for row in self.rows:
            if row.benchmark == benchmark:
                return row
        raise KeyError(
            f"no benchmark {benchmark!r} in this report (have: {[r.benchmark for r in self.rows]})"
        )

    def _table_cells(self) -> tuple[list[str], list[list[str]]]:
        k = self.samples
        header = ["benchmark", "problems", "pass@1"]
        if k > 1:
            header += [f"avg@{k}", f"pass@{k}"]
        header += ["length", "truncated", "self-refl", "no-answer", "timeouts", "errors"]
        body = []
        for row in self.rows:
            cells = [row.benchmark, str(row.problems), percent(row.pass_at_1)]
            if k > 1:
                cells += [percent(row.avg_at_k), percent(row.pass_at_k)]
            cells += [
                f"{row.response_length:.1f}",
                percent(row.truncated),
                percent(row.self_reflection),
                percent(row.no_answer),
                str(row.verifier_timeouts),
                str(row.verifier_errors),
            ]
            body.append(cells)
        return header, body

    def to_table(self, fmt: str = "text") -> str:
        """The results table; rates in percent, length in tokens. `fmt`: "text" (aligned) or "markdown"."""
        header, body = self._table_cells()
        if fmt == "markdown":
            return markdown_table(header, body, right_align_numbers=True) + "\n"
        if fmt != "text":
            raise ValueError(f'table format must be "text" or "markdown", got {fmt!r}')
        widths = [max(len(cells[i]) for cells in [header, *body]) for i in range(len(header))]

        def line(cells: list[str]) -> str:
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
            )

        rule = "-" * len(line(header))
        lines = [line(header), rule] + [line(cells) for cells in body[:-1]] + [rule, line(body[-1])]
        return "\n".join(lines) + "\n"

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        """Flat `<prefix>/<benchmark>/<metric>` dict (e.g. eval/average/pass@1) for the training logs."""
        return {
            f"{prefix}/{row.benchmark}/{name}": value
            for row in self.rows
            for name, value in row.metrics().items()
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "benchmarks": {row.benchmark: row.metrics() for row in self.rows if row.benchmark != AVERAGE_ROW},
            "average": self.row(AVERAGE_ROW).metrics(),
            "metrics": self.metrics(),
        }

    def write(self, out_dir: Path) -> list[Path]:
        """Write results.json, results.md and samples.jsonl (one line per graded response) under `out_dir`."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        results_json = out_dir / "results.json"
        results_json.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
        results_md = out_dir / "results.md"
        settings = "\n".join(f"- {key}: `{value}`" for key, value in self.config.items())
        results_md.write_text(
            "# Evaluation results\n\n"
            + (settings + "\n\n" if settings else "")
            + self.to_table("markdown")
            + "\nRates in percent; length = mean response tokens; "
            "truncated = share stopped at max_new_tokens.\n",
            encoding="utf-8",
        )
        samples_jsonl = out_dir / "samples.jsonl"
        with samples_jsonl.open("w", encoding="utf-8") as handle:
            for record in self.records:
                handle.write(json.dumps(asdict(record), default=str) + "\n")
        return [results_json, results_md, samples_jsonl]


def comparison_table(before, after, fmt: str = "text") -> str:
    """Held-out Pass@1 before vs after training, per benchmark and averaged."""
    before_rows, after_rows = pass_at_1_by_benchmark(before), pass_at_1_by_benchmark(after)
    header = ["benchmark", "pass@1 before", "pass@1 after", "change"]
    rows = []
    for name in after_rows:
        b, a = before_rows.get(name), after_rows[name]
        rows.append([name, "-" if b is None else f"{100 * b:.1f}", f"{100 * a:.1f}",
                     "-" if b is None else f"{100 * (a - b):+.1f}"])
    if fmt == "markdown":
        return markdown_table(header, rows)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt_row = "  ".join(f"{{:<{w}}}" for w in widths).format
    return "\n".join([fmt_row(*header), fmt_row(*["-" * w for w in widths])] + [fmt_row(*row) for row in rows])


def pass_at_1_by_benchmark(report) -> dict[str, float]:
    """Benchmark name (and "average") -> Pass@1 of an `EvalReport`; {} for None."""
    if report is None:
        return {}
    metrics = report.metrics(prefix="eval")
    out = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "pass@1":
            out[parts[1]] = value
    return out


def report_before_after(eval_history: list[tuple[int, Any]], run_dir: Path, rollouts_total: int) -> None:
    """Print the held-out before/after table of a finished run and write it to `eval_summary.md`."""
    if not eval_history:
        return
    before = eval_history[0][1] if eval_history[0][0] == 0 else None
    after = eval_history[-1][1]
    print(f"\nHeld-out evaluation ({rollouts_total} rollouts generated in training):\n"
          f"{comparison_table(before, after)}")
    (Path(run_dir) / "eval_summary.md").write_text(comparison_table(before, after, fmt="markdown") + "\n")
