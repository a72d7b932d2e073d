"""Experiment tracking: each training round is one run in every tracker `R3_TRAIN_REPORT_TO` names.

A round's run is named `<scenario>-round-<id>` when its training starts and holds, on one step axis:

- TRL's step metrics (`train/loss`, `train/reward`, `train/kl`, ...), through transformers' own
  reporting callbacks (`transformers.integrations`), and R3's numbers of each step beside them
  (`train/r3/reward_mean` over the judged retries, `train/r3/skipped_groups`, `train/r3/unjudged`, ...:
  `trainer.grpo.StepLog`, added to the step's logs by `SkipStepsWithoutSignal`);
- once the candidate is registered, the version's name (a tag where the tracker has tags);
- after the gate, the round's and the gate's numbers at the round's last step (`round_metrics`:
  `gate/candidate_second_attempt` and `gate/active_second_attempt`, the held-out mean scores; `gate/p_value`;
  `round/promoted` 0/1; `gate/families/<family>/candidate`, `/active`, `/drop`; `gate/probe/candidate_acc`
  with its interval `gate/probe/candidate_ci95/low` and `/high`; ...), and the decision as text
  (`promoted`, `canary`, `rejected`, or `no candidate`) with the gate's reason.

The run's ids (`RoundRun.ids`) go into the registered version's record (`metrics["tracking"]`) and the
round's report, so a version leads to its run and a run, by its version tag, to the version.

The trackers:

- tensorboard: a folder per round, `<R3_TRAIN_TRACKING_DIR>/<scenario>-round-<id>` (default
  `<R3_DATA_DIR>/runs`), written by transformers' `TensorBoardCallback` with a writer on that folder; the
  version and the decision are text summaries (`r3/version`, `r3/decision`, `r3/reason`).
- mlflow: a run made with `MlflowClient.create_run` in the experiment `MLFLOW_EXPERIMENT_NAME` (default
  `r3`, created if missing) on `MLFLOW_TRACKING_URI` (MLflow's default if unset), made the active run of
  the training thread so that `MLflowCallback` logs TRL's params and metrics into it; the rest by run id
  (`MlflowClient.log_batch`, tags `r3.scenario`, `r3.round`, `r3.version`, `r3.decision`, `r3.reason`).
  The run ends FINISHED with the round, FAILED with a round that fails.
- wandb: `wandb.init` (project `WANDB_PROJECT`, default `r3`; `WANDB_MODE=offline` keeps it local) opens
  the run when training starts, `WandbCallback` logs into it, and it stays open in the trainer until the
  round ends: the version is added to its tags, the round's numbers are logged at the last
  `train/global_step`, the decision goes to its summary.
- trackio: `TrackioCallback` makes the run (project `r3`, the round's name) and finishes it when
  training ends; the round's numbers are logged into it afterwards by resuming it by name
  (`trackio.init(resume="must")`), with the version, decision and reason in its config. Trackio has no
  tags: the version's record is what links the two.

Logging the version and the round's numbers is best effort: the decision is R3's and is already
recorded, so a tracker that fails then is logged as a warning, not raised. A tracker that fails when the
run starts or during training fails the round, before anything is registered.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any, ContextManager

from r3.settings import ConfigurationError

log = logging.getLogger(__name__)

# The experiment (MLflow) or project (wandb, trackio) a run goes to where the tracker's own variable names none.
PROJECT = "r3"

# tracker -> (the distributions that provide it, what to pip install)
PACKAGES = {"tensorboard": (("tensorboard",), "tensorboard"), "mlflow": (("mlflow", "mlflow-skinny"), "mlflow-skinny"),
            "wandb": (("wandb",), "wandb"), "trackio": (("trackio",), "trackio")}


def require(report_to: Sequence[str]) -> None:
    """Check that every tracker in `report_to` (`R3_TRAIN_REPORT_TO`) is installed (by its distribution's
    metadata: nothing is imported by a computed name). Raises `ConfigurationError` naming the setting and
    the pip command for the first that is not."""
    for tracker in report_to:
        distributions, package = PACKAGES[tracker]
        if not any(_installed(name) for name in distributions):
            raise ConfigurationError(
                f"R3_TRAIN_REPORT_TO names {tracker}, but it is not installed. Fix: pip install {package}, "
                f"or take {tracker} out of R3_TRAIN_REPORT_TO")


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


# MLflow's rule for a metric's name (transformers' MLflowCallback cleans TRL's the same way); every tracker
# gets the same names.
_NOT_IN_A_NAME = re.compile(r"[^0-9A-Za-z_\-. :/]")


def round_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The numbers of a round's report (`trainer.worker`'s summary: its counts, `promoted`, `canary`,
    `gate`: `trainer.gate.decide`'s numbers, `training`: the `RoundReport` without its step logs) as flat
    metric names: a number at the top level is `round/<key>`, one in a mapping `<key>/<key>/...`
    (`gate/families/<family>/drop`), an interval (a pair named `*_ci95`, as `trainer.probe` names its
    Wilson intervals) `<key>/low` and `<key>/high`, a bool 1.0 or 0.0. Text, None and lists (the per-step
    lists, logged at each step) are left out."""
    metrics: dict[str, float] = {}

    def add(name: str, value: Any) -> None:
        if isinstance(value, bool | int | float):
            metrics[_NOT_IN_A_NAME.sub("_", name)] = float(value)
        elif isinstance(value, dict):
            for key, inner in value.items():
                add(f"{name}/{key}", inner)
        elif name.endswith("_ci95") and value is not None:
            add(f"{name}/low", value[0])
            add(f"{name}/high", value[1])

    for key, value in summary.items():
        add(key if isinstance(value, dict) else f"round/{key}", value)
    return metrics


def decision_of(summary: dict[str, Any]) -> tuple[str, str]:
    """The round's decision as a tag (`promoted`, `canary`, `rejected`, `no candidate`) and its reason."""
    if "candidate" not in summary:
        return "no candidate", summary.get("skipped", "")
    tag = "canary" if summary.get("canary") else "promoted" if summary["promoted"] else "rejected"
    return tag, summary["reason"]


class RoundRun:
    """One round's run in each tracker of `report_to`. Made before the round has anything to track
    (nothing is opened); `start` opens the runs, `train_round` trains inside `training()` with
    `callbacks()` and `trainer_args()`, then `link`, and `finish` or `fail`. Blocking (network and file
    I/O): call it from a worker thread."""

    def __init__(self, report_to: Sequence[str], tracking_dir: Path, scenario: str, round_id: int) -> None:
        self.name = f"{scenario}-round-{round_id}"
        self.scenario, self.round_id = scenario, round_id
        makers: dict[str, Callable[[], _Tracker]] = {
            "tensorboard": lambda: _TensorBoard(tracking_dir / self.name), "mlflow": _MLflow,
            "wandb": _Wandb, "trackio": _Trackio}
        self.trackers = [makers[tracker]() for tracker in dict.fromkeys(report_to)]
        self.opened: list[_Tracker] = []  # those whose run `start` opened

    def start(self) -> None:
        """Open the round's run in every tracker. Raises `ConfigurationError` for a tracker whose
        package is missing (a scenario's own R3_TRAIN_REPORT_TO), and whatever a tracker raises (`fail`
        then closes those already open)."""
        require([tracker.key for tracker in self.trackers])
        for tracker in self.trackers:
            tracker.start(self)
            self.opened.append(tracker)

    def ids(self) -> dict[str, str]:
        """{"name": the run's name, tracker: its run's id} (TensorBoard: the run's folder; MLflow,
        wandb: the run id; trackio: project/name); {} when nothing is tracked."""
        if not self.opened:
            return {}
        return {"name": self.name, **{tracker.key: tracker.id for tracker in self.opened}}

    def record(self) -> dict[str, Any]:
        """What a version's record and a round's report keep of the run: {"tracking": `ids()`}, or {}."""
        return {"tracking": self.ids()} if self.opened else {}

    def trainer_args(self) -> dict[str, Any]:
        """TrainingArguments for the trackers' callbacks: the run's name, and trackio's project."""
        return {"run_name": self.name, "project": PROJECT}

    def callbacks(self) -> list[Any]:
        """transformers' reporting callbacks bound to this run, for the trainer of the round."""
        return [callback for tracker in self.trackers for callback in tracker.callbacks()]

    @contextmanager
    def training(self) -> Iterator[None]:
        """Around `trainer.train()`, in the thread that trains (MLflow's active run is per thread)."""
        with ExitStack() as stack:
            for tracker in self.trackers:
                stack.enter_context(tracker.training())
            yield

    def link(self, version: str) -> None:
        """Tag the run with the version registered from it (best effort)."""
        self._each("tag the run with its version", lambda tracker: tracker.link(version))

    def finish(self, summary: dict[str, Any]) -> None:
        """Log the round's and the gate's numbers (`round_metrics(summary)`) and its decision at the
        round's last step, and close the run (best effort)."""
        metrics, (decision, reason) = round_metrics(summary), decision_of(summary)
        texts = {"decision": decision, "reason": reason}
        if "candidate" in summary:
            texts["version"] = summary["candidate"]
        step = summary.get("training", {}).get("steps", 0)
        self._each("log the round's numbers", lambda tracker: tracker.log(metrics, texts, step))
        self._each("close the run", lambda tracker: tracker.close(failed=False))

    def fail(self) -> None:
        """Close the run of a round that failed (best effort)."""
        self._each("close the failed run", lambda tracker: tracker.close(failed=True))

    def _each(self, what: str, action: Callable[[_Tracker], None]) -> None:
        for tracker in self.opened:
            try:
                action(tracker)
            except Exception:  # the decision is R3's and already recorded; a tracker only mirrors it
                log.warning("%s: %s could not %s", self.name, tracker.key, what, exc_info=True)


class _Tracker(ABC):
    """One tracker's side of a round's run; `id`: its run's id, once started."""

    key = ""
    id = ""

    @abstractmethod
    def start(self, run: RoundRun) -> None: ...

    @abstractmethod
    def callbacks(self) -> list[Any]: ...

    def training(self) -> ContextManager[Any]:
        return nullcontext()

    @abstractmethod
    def link(self, version: str) -> None: ...

    @abstractmethod
    def log(self, metrics: dict[str, float], texts: dict[str, str], step: int) -> None: ...

    @abstractmethod
    def close(self, failed: bool) -> None: ...


class _TensorBoard(_Tracker):
    key = "tensorboard"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.id = str(folder)
        self.writer: Any = None

    def start(self, run: RoundRun) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder.mkdir(parents=True, exist_ok=True)
        # One writer for the run. TensorBoardCallback closes it when training ends; writing again then
        # opens a new event file in the same folder, which TensorBoard reads as the same run.
        self.writer = SummaryWriter(log_dir=str(self.folder))
        self.writer.add_text("r3/scenario", run.scenario)
        self.writer.add_text("r3/round", str(run.round_id))

    def callbacks(self) -> list[Any]:
        from transformers.integrations import TensorBoardCallback

        return [TensorBoardCallback(tb_writer=self.writer)]

    def link(self, version: str) -> None:
        self.writer.add_text("r3/version", version)
        self.writer.flush()

    def log(self, metrics: dict[str, float], texts: dict[str, str], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        for name, text in texts.items():
            self.writer.add_text(f"r3/{name}", text, step)

    def close(self, failed: bool) -> None:
        self.writer.close()


class _MLflow(_Tracker):
    key = "mlflow"

    def start(self, run: RoundRun) -> None:
        from mlflow import MlflowClient

        client = MlflowClient()  # MLFLOW_TRACKING_URI, or MLflow's default
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or PROJECT
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(name)
        self.id = client.create_run(experiment_id, run_name=run.name,
                                    tags={"r3.scenario": run.scenario, "r3.round": str(run.round_id)}).info.run_id

    def callbacks(self) -> list[Any]:
        from transformers.integrations import MLflowCallback

        return [MLflowCallback()]

    def training(self) -> ContextManager[Any]:
        import mlflow

        # MLflowCallback logs into the active run when there is one (and then leaves it open), else starts
        # its own. Leaving the block marks the run FINISHED, or FAILED on an error; `close` marks it again
        # when the round ends.
        return mlflow.start_run(run_id=self.id)

    def link(self, version: str) -> None:
        from mlflow import MlflowClient

        MlflowClient().set_tag(self.id, "r3.version", version)

    def log(self, metrics: dict[str, float], texts: dict[str, str], step: int) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, RunTag
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_TAG_VAL_LENGTH

        client, now = MlflowClient(), int(time.time() * 1000)
        rows = [Metric(name, value, now, step) for name, value in metrics.items()]
        for first in range(0, len(rows), MAX_METRICS_PER_BATCH):
            client.log_batch(self.id, metrics=rows[first:first + MAX_METRICS_PER_BATCH])
        tags = [RunTag(f"r3.{name}", text[:MAX_TAG_VAL_LENGTH]) for name, text in texts.items()]
        client.log_batch(self.id, tags=tags)

    def close(self, failed: bool) -> None:
        from mlflow import MlflowClient

        MlflowClient().set_terminated(self.id, "FAILED" if failed else "FINISHED")


class _Wandb(_Tracker):
    key = "wandb"

    def start(self, run: RoundRun) -> None:
        import wandb

        # WandbCallback logs into the process's current run (`wandb.run`) when there is one.
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or PROJECT, name=run.name,
                              config={"r3/scenario": run.scenario, "r3/round": run.round_id})
        self.id = self.run.id

    def callbacks(self) -> list[Any]:
        from transformers.integrations import WandbCallback

        return [WandbCallback()]

    def link(self, version: str) -> None:
        self.run.tags = (*self.run.tags, version)
        self.run.config.update({"r3/version": version}, allow_val_change=True)

    def log(self, metrics: dict[str, float], texts: dict[str, str], step: int) -> None:
        # WandbCallback makes train/global_step every metric's x axis.
        self.run.log({**metrics, "train/global_step": step})
        self.run.summary.update({f"r3/{name}": text for name, text in texts.items()})

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class _Trackio(_Tracker):
    key = "trackio"

    def start(self, run: RoundRun) -> None:
        # TrackioCallback makes the run when training begins (TrainingArguments' project and run_name).
        self.name = run.name
        self.id = f"{PROJECT}/{run.name}"

    def callbacks(self) -> list[Any]:
        from transformers.integrations import TrackioCallback

        return [TrackioCallback()]

    def link(self, version: str) -> None:
        """Trackio has no tags: the version goes into the run's config with the round's numbers (`log`)."""

    def log(self, metrics: dict[str, float], texts: dict[str, str], step: int) -> None:
        import trackio

        # Resuming replaces the run's stored config: keep TRL's arguments (TrackioCallback's), where the project
        # is stored on this machine, beside the round's texts.
        try:
            stored = next((run.config for run in trackio.Api().runs(PROJECT) if run.name == self.name), None) or {}
        except ValueError:  # no local copy of the project (it lives in a Space)
            stored = {}
        kept = {key: value for key, value in stored.items() if not key.startswith("_")}  # "_...": trackio's own
        trackio.init(project=PROJECT, name=self.name, resume="must",
                     config={**kept, **{f"r3/{name}": text for name, text in texts.items()}})
        trackio.log(metrics, step=step)
        trackio.finish()

    def close(self, failed: bool) -> None:
        """TrackioCallback finished the run when training ended, and `log` its resumption."""
