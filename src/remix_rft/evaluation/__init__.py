"""Held-out evaluation (`remix-rft eval`): Pass@1 / avg@K / pass@K on math benchmarks, as the paper reports.

By role: `sets` (benchmark names and a config's `eval.benchmarks` to problems), `run` (generate and grade: `evaluate`,
shared by the CLI and the trainer), `grading` (records, pass@k, per-benchmark rows and the paper's unweighted
average; self-reflection words), `report` (tables, result files, the before/after comparison), `command` (the
`remix-rft eval` arguments and command). Besides accuracy a report records what the paper's analyses look at:
response length, the share cut at the token limit, and the share of responses with self-reflection words.
"""

from remix_rft.evaluation.command import (
    DEFAULT_EVAL_MODEL,
    POLICY_SUBDIR,
    add_eval_arguments,
    eval_command,
    resolve_model_argument,
)
from remix_rft.evaluation.grading import (
    AVERAGE_ROW,
    SELF_REFLECTION_WORDS,
    BenchmarkRow,
    EvalRecord,
    average_row,
    grade_records,
    has_self_reflection,
    pass_at_k,
    summarise_benchmark,
)
from remix_rft.evaluation.report import (
    EvalReport,
    comparison_table,
    markdown_table,
    pass_at_1_by_benchmark,
    report_before_after,
)
from remix_rft.evaluation.run import evaluate, evaluate_during_training
from remix_rft.evaluation.sets import SPLIT_SOURCES, build_eval_sets, load_benchmarks

__all__ = [
    "AVERAGE_ROW",
    "DEFAULT_EVAL_MODEL",
    "POLICY_SUBDIR",
    "SELF_REFLECTION_WORDS",
    "SPLIT_SOURCES",
    "BenchmarkRow",
    "EvalRecord",
    "EvalReport",
    "add_eval_arguments",
    "average_row",
    "build_eval_sets",
    "comparison_table",
    "eval_command",
    "evaluate",
    "evaluate_during_training",
    "grade_records",
    "has_self_reflection",
    "load_benchmarks",
    "markdown_table",
    "pass_at_1_by_benchmark",
    "pass_at_k",
    "report_before_after",
    "resolve_model_argument",
    "summarise_benchmark",
]
