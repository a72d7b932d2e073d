"""`r3 train`: the trainer worker, a progress bar over each round's GRPO steps, and the round's report."""

from __future__ import annotations

import json
import logging
import os

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from r3.cli.console import console, log_quietly
from r3.settings import get_settings

# trainer.grpo's SkipStepsWithoutSignal logs here: `grpo_round_steps` on a round's first record, `grpo_step` on each step's.
GRPO_LOGGER = "trainer.grpo"


def train(once: bool = typer.Option(False, "--once", help="Run one round now and exit."),
          as_json: bool = typer.Option(False, "--json", help="With --once: print the round's whole report as "
                                       "JSON (it is also kept in the database: GET /admin/train)."),
          verbose: bool = typer.Option(False, "--verbose", help="Log the libraries' messages too.")) -> None:
    """Run the trainer: GRPO rounds on recorded failures, gated, promoted or rejected."""
    log_quietly(verbose)
    # After log_quietly (TRL warns as it is imported), and here: the trainer loads torch and TRL.
    from trainer.worker import run_trainer

    # The bar goes to a person at a terminal: not into --json's output, a log file, or each of the
    # processes `accelerate launch` started (only the first, RANK 0, draws it).
    bar = None if as_json or not console.is_terminal or os.environ.get("RANK", "0") != "0" else RoundProgress(console)
    grpo_log = logging.getLogger(GRPO_LOGGER)
    if bar is not None:
        grpo_log.addHandler(bar)
    try:
        # Alone, or as one of the processes `accelerate launch` started (the main one leads, the others train with it).
        outcome = run_trainer(get_settings(), once=once)
    finally:
        if bar is not None:
            grpo_log.removeHandler(bar)
            bar.close()
    if outcome is None:
        return
    if as_json:
        print(json.dumps(outcome.report, default=str))
    else:
        console.print(round_summary(outcome.report))


class RoundProgress(logging.Handler):
    """A progress bar over a GRPO round's steps, drawn from `trainer.grpo`'s log records.

    A round's first record (`grpo_round_steps`: the planned steps) starts it; each step's record
    (`grpo_step`: a `trainer.grpo.StepLog`) advances it and shows that step's mean reward; within a
    step, the rollout's records (`grpo_rollout`: the share of the step done, `grpo_rollout_phase`:
    what) move it on, so a long step shows its samples' progress. The bar is removed after the
    round's last step, when the next round starts, or when the handler closes.
    """

    def __init__(self, console: Console) -> None:
        super().__init__(logging.INFO)
        self.console = console
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.steps_done = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            planned = getattr(record, "grpo_round_steps", None)
            step = getattr(record, "grpo_step", None)
            share = getattr(record, "grpo_rollout", None)
            if planned is not None:
                self._start(int(planned))
            elif self.progress is None or self.task is None:
                return
            elif step is not None:
                self.steps_done = step.step
                self.progress.update(self.task, completed=step.step,
                                     description=f"GRPO round · reward {step.reward_mean:.2f}")
                if self.progress.finished:
                    self._stop()
            elif share is not None:
                self.progress.update(self.task, completed=self.steps_done + float(share),
                                     description=f"GRPO step {self.steps_done + 1} · {record.grpo_rollout_phase}")
        except Exception:  # noqa: BLE001 - logging's contract: a display must not break the training round
            self.handleError(record)

    def close(self) -> None:
        self._stop()
        super().close()

    def _start(self, planned: int) -> None:
        self._stop()  # a round that ended early (an error) leaves its bar behind
        self.steps_done = 0
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True)
        self.task = self.progress.add_task("GRPO round", total=planned)
        self.progress.start()

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        self.progress, self.task = None, None


def round_summary(report: dict) -> Table:
    """A training round's report (`trainer.worker`'s summary) as a table a person reads."""
    table = Table(title="training round", show_header=False, title_justify="left")
    table.add_row("failures", f"{report.get('train', 0)} to train on, {report.get('heldout', 0)} held out, "
                              f"{report.get('regression', 0)} first-attempt successes for the regression check")
    if report.get("set_aside"):
        table.add_row("set aside", f"{report['set_aside']} episodes that cannot be run again as tasks "
                                   "(GET /admin/train/set-aside says why)")
    if "skipped" in report:
        table.add_row("skipped", str(report["skipped"]))
        return table
    training = report.get("training") or {}
    rewards = ", ".join(f"{r:.2f}" for r in training.get("reward_mean", []))
    table.add_row("training", f"{training.get('steps', 0)} steps ({training.get('seconds_per_step', 0):.1f} s each); "
                              f"reward per step: {rewards or '-'}")
    groups, skipped = training.get("groups", 0), training.get("skipped_groups", 0)
    table.add_row("groups", f"{groups - skipped} of {groups} carried signal (the rest had equal rewards)")
    gate = report.get("gate") or {}
    if gate:
        table.add_row("gate", f"held-out second attempts: candidate {gate.get('candidate_second_attempt', 0):.2f} vs "
                              f"active {gate.get('active_second_attempt', 0):.2f} (p = {gate.get('p_value', 1):.3g})")
    verdict = "[green]promoted[/green]" if report.get("promoted") else "[yellow]rejected[/yellow]"
    table.add_row("decision", f"{report.get('candidate')}: {verdict} ({report.get('reason', '')})")
    return table
