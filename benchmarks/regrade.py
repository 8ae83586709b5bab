"""Audit held-out answers: regrade evaluation samples (`eval/step_*/samples.jsonl`) with the strict and the paper
grader and print, per file, the accuracy as the run logged it (its commit's grader), under today's default
(`reward.grader=auto`: paper for the five paper benchmarks, strict otherwise), how many verdicts moved between the two
(gained / lost, each listed), the accuracy under each protocol, the strict status counts, and the answers whose
verdict differs between the protocols.

    python benchmarks/regrade.py runs/efficiency/remix-grpo/eval/step_*/samples.jsonl
    python benchmarks/regrade.py --show 20 runs/my-run/eval/step_000012/samples.jsonl

The problem text is taken from the stored prompt (the chat-formatted problem), which is what the restated-question
check needs; the benchmark name is the example's source (so "auto" would pick the paper protocol for the five
paper benchmarks). Every verdict is recomputed, nothing is read from the file's own `correct` field except for the
"as logged" column.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from remix_rft.data.loaders import read_jsonl
from remix_rft.data.types import Example
from remix_rft.evaluation import markdown_table
from remix_rft.rewards import MathReward


def load_samples(path: Path) -> list[dict]:
    records = []
    for location, record in read_jsonl(path):
        missing = [key for key in ("prompt", "response", "ground_truth") if key not in record]
        if missing:
            raise ValueError(f"{path}, {location}: not an eval sample (missing {missing})")
        records.append(record)
    return records


def regrade(records: list[dict], graders: dict[str, MathReward]) -> dict[str, list]:
    examples = [Example(problem=r["prompt"], answer=r["ground_truth"], id=str(r.get("problem_id", i)),
                        source=r.get("benchmark", "")) for i, r in enumerate(records)]
    responses = [r["response"] for r in records]
    return {name: grader.score(responses, examples) for name, grader in graders.items()}


def moved(records: list[dict], scores: list) -> tuple[list[int], list[int]]:
    """Indices whose verdict moved from the one logged by the run (the grader of its commit) to the current default
    (`reward.grader=auto`): (gained, lost)."""
    gained = [i for i, (r, s) in enumerate(zip(records, scores)) if s.correct and not r.get("correct")]
    lost = [i for i, (r, s) in enumerate(zip(records, scores)) if r.get("correct") and not s.correct]
    return gained, lost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="samples.jsonl files written by an evaluation")
    parser.add_argument("--show", type=int, default=10, help="answers to print per file and kind (default 10)")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    rows = []
    with MathReward(grader="strict", timeout=args.timeout) as strict:
        graders = {"strict": strict, "paper": MathReward(grader="paper", pool=strict.pool),
                   "auto": MathReward(grader="auto", pool=strict.pool)}
        for path in args.files:
            records = load_samples(path)
            scores = regrade(records, graders)
            count = len(records)
            logged = sum(bool(r.get("correct")) for r in records)
            accuracy = {name: sum(s.correct for s in found) for name, found in scores.items()}
            statuses = Counter(s.status for s in scores["strict"] if s.status != "ok")
            gained, lost = moved(records, scores["auto"])
            rows.append([str(path), str(count), f"{100 * logged / count:.1f}", f"{100 * accuracy['auto'] / count:.1f}",
                         f"+{len(gained)} / -{len(lost)}", f"{100 * accuracy['paper'] / count:.1f}",
                         f"{100 * accuracy['strict'] / count:.1f}",
                         ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())) or "-"])
            for kind, indices in (("gained", gained), ("lost", lost)):
                for index in indices[: args.show]:
                    record, now = records[index], scores["auto"][index]
                    print(f"{path}: {kind}: truth {record['ground_truth']!r} answer {record['response'][-80:]!r}: "
                          f"now {now.correct} ({now.status}, {now.extracted!r})")
            differing = [(r, p, s) for r, p, s in zip(records, scores["paper"], scores["strict"])
                         if p.correct != s.correct]
            for record, paper, strict_score in differing[: args.show]:
                print(f"{path}: truth {record['ground_truth']!r} answer {record['response'][-80:]!r}: "
                      f"paper {paper.correct} ({paper.status}), strict {strict_score.correct} ({strict_score.status})")
    print(markdown_table(["file", "answers", "as logged %", "now %", "moved", "paper %", "strict %",
                          "strict statuses"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
