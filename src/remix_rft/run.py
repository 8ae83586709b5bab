"""A training run around the trainer's steps: the loop, held-out evaluations, checkpoints, stop requests, closing.

`Trainer` (trainer.py) builds the roles and defines one step (`train_step`, then `end_step`); it is a
`TrainingRun`, the base class here, which loops over the remaining steps and does what a run does between them:
log the step's lines (metrics.jsonl), report progress, evaluate every `eval.every` steps, save every
`checkpoint.every` steps, stop on the reward-hacking alarm (`reward.stop_on_hacking`) or on a stop request (Ctrl-C,
interrupt.py; every rank agrees at step boundaries), all under the watchdog (watchdog.py). `resume_hint` and
`report` are what the command line prints after a run (`trainer.run_training`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from remix_rft import checkpoint, evaluation, metrics
from remix_rft.checkpoint import TrainingState
from remix_rft.distributed import launched_by_torchrun
from remix_rft.errors import DiskFullError
from remix_rft.evaluation import pass_at_1_by_benchmark, report_before_after
from remix_rft.interrupt import StopRequest
from remix_rft.watchdog import stopping_on_stall, watched

__all__ = ["TrainingRun", "report", "resume_hint"]

logger = logging.getLogger(__name__)


class TrainingRun:
    """The run around the steps of a `Trainer` (its subclass, which sets the roles read here: `config`, `dist`,
    `state`, `metrics`, `watchdog`, `generator`, ...; and defines `train_step` and `end_step`)."""

    def __init__(self, announce_stop: bool) -> None:
        self.stop_reason: str | None = None  # set when the reward-hacking alarm ends the run
        # Ctrl-C (interrupt.py): stop at the next step boundary; under torchrun the launcher relays the terminal's signal
        self._stop = StopRequest(ignore_duplicates=launched_by_torchrun(), announce=announce_stop)
        self._stop_agreed = False
        self.interrupted = False  # the run ended early on a stop request, with a checkpoint of its last step
        self._saved_step: int | None = None  # the step of this process's last checkpoint
        self.eval_history: list[tuple[int, Any]] = []

    def train(self) -> dict[str, Any]:
        """Run the remaining steps; the first Ctrl-C ends the run after the current step with a checkpoint
        (`interrupted`), a second raises KeyboardInterrupt at once (interrupt.py)."""
        with self._stop, stopping_on_stall(self, lambda line: resume_hint(self, line)):
            return self._train()

    def _train(self) -> dict[str, Any]:
        cfg = self.config
        start_step = self.state.step + 1
        if start_step == 1 and cfg.eval.before_training and cfg.eval.benchmarks:
            self.evaluate(0)
        progress = tqdm(range(start_step, cfg.train.steps + 1), initial=start_step - 1, total=cfg.train.steps,
                        desc="train", disable=not (cfg.logging.progress and self.dist.is_main), dynamic_ncols=True)
        record: dict[str, Any] = {}
        for step in progress:
            if self.stop_requested():
                break
            record = self.train_step(step)
            self.end_step(step, record)
            self._log(record)
            self._log(self.ledger)
            alarm = self.dist.broadcast_object(self.hacking.alarm)  # rank 0's monitor decides for every rank
            if self.dist.is_main:
                if alarm is not None:
                    self._log(alarm.event())
                metrics.report_step(record, cfg.train.steps, progress if cfg.logging.progress else None, alarm)
            if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.train.steps and not self.stop_requested():
                self.evaluate(step)
            if cfg.checkpoint.every and step % cfg.checkpoint.every == 0:
                self.save()
            if self.on_step_end is not None:
                self.on_step_end(self, record)
            if alarm is not None and cfg.reward.stop_on_hacking:
                self.stop_reason = f"stopped (reward.stop_on_hacking): {alarm.message}"
                logger.error("%s; checkpoint saved in %s", self.stop_reason, self.save())
                break
        progress.close()
        if self.stop_reason is not None:
            return record
        if self.stop_requested():  # Ctrl-C: keep the finished steps, skip the final evaluation
            self.interrupted = True
            if self.state.step > 0 and self._saved_step != self.state.step:
                self.save()
            return record
        if cfg.checkpoint.save_final:
            self.save()
        if cfg.eval.after_training and cfg.eval.benchmarks:
            self.evaluate(self.state.step)
        return record

    def _log(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.log(record)

    @watched("evaluation")
    def evaluate(self, step: int):
        """Held-out evaluation on rank 0 (the other ranks lend it their parameter shards meanwhile)."""
        if self.pipeline is not None:
            self.pipeline.wait()  # the reward's graders and a vLLM engine serve one caller at a time
        self.generator.sync_engine()  # an engine with its own weights (vLLM) evaluates the current policy
        with self.dist.gathered(self.policy):
            if not self.dist.is_main:
                return None
            self._eval_sets = self._eval_sets or evaluation.build_eval_sets(self.config)
            report = evaluation.evaluate_during_training(self.config, self.engine, self.tokenizer, self._eval_sets,
                                                         self.reward, step, self.run_dir)
        self._log({"type": "eval", "step": step, "rollouts/total": self.state.rollouts_total,
                   "tokens/total": self.state.tokens_total, **report.metrics(prefix="eval")})
        self.eval_history.append((step, report))
        self.hacking.observe_eval(step, pass_at_1_by_benchmark(report))
        return report

    def _training_state(self) -> TrainingState:
        return TrainingState(state=self.state, actor=self.actor, critic=self.critic, references=self.references,
                             buffer=self.buffer, prompts=self.prompts, tokenizer=self.tokenizer, dist=self.dist,
                             hacking=self.hacking, base_model=self.config.model.name,
                             components={name: component for name, component in
                                         (("reincarnation", self.reincarnation), ("pipeline", self.pipeline),
                                          ("selection", self.selector), ("sampler_logprobs", self.sampler_pi_k))
                                         if component is not None})

    @watched("checkpoint")
    def save(self) -> Path:
        phase = self.schedule.plan(max(self.state.step, 1)).phase
        training = self._training_state()
        try:
            path = checkpoint.save_checkpoint(
                self.run_dir, self.state.step,
                lambda directory: checkpoint.write_training_state(directory, training, phase),
                keep=self.config.checkpoint.keep, dist=self.dist)
        except DiskFullError as err:  # one line: what happened, the checkpoint kept and the resume command
            raise DiskFullError(resume_hint(self, str(err))) from err.__cause__
        self._saved_step = self.state.step
        return path

    def request_stop(self) -> None:
        """Stop at the next step boundary with a checkpoint, as the first Ctrl-C does (e.g. from `on_step_end`)."""
        self._stop.request()

    @watched("collective")
    def stop_requested(self) -> bool:
        """Whether any rank was asked to stop (a collective: every rank calls it at the same points); once true it
        stays true without further collectives."""
        if not self._stop_agreed:
            self._stop_agreed = self.dist.all_reduce([float(self._stop.requested)], op="max")[0] > 0
        return self._stop_agreed

    def close(self) -> None:
        with self.watchdog.watch("shutdown"):  # a close stuck in a collective or a grader is watched too
            self._close()

    def _close(self) -> None:
        # the metrics file, the audit grader's and the reward's verifier processes, a vLLM engine's memory
        self.generator.close()  # first: a job still generating must not outlive the engine and the graders
        for owner in (self.metrics, self.hacking, self.reward, self.engine):
            getattr(owner, "close", lambda: None)()
        self.dist.close()


def resume_hint(trainer: Any, what: str) -> str:
    """One line: what happened, the checkpoint a resume continues from, and the command that does it."""
    latest = checkpoint.latest_checkpoint(trainer.run_dir)
    if latest is None:
        return f"{what}: no checkpoint was saved, so there is nothing to resume; start again with `remix-rft train`"
    launcher = "torchrun <same options> -m remix_rft.cli train" if trainer.dist.active else "remix-rft train"
    return f"{what}: checkpoint {latest}; resume with: {launcher} --resume {trainer.run_dir}"


def report(trainer: Any) -> None:
    """What rank 0 prints after a run: the resume command of a stopped one; else the before/after evaluation table,
    why the run stopped early (the reward-hacking alarm) and the run directory."""
    if not trainer.dist.is_main:
        return
    if trainer.interrupted:
        done = f"stopped after step {trainer.state.step} of {trainer.config.train.steps}"
        print(f"\n{resume_hint(trainer, done)}", file=sys.stderr)
        return
    report_before_after(trainer.eval_history, trainer.run_dir, trainer.state.rollouts_total)
    if trainer.stop_reason is not None:
        print(f"\n{trainer.stop_reason}", file=sys.stderr)
    print(f"run directory: {trainer.run_dir}")
