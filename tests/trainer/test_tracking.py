"""Experiment tracking (`trainer.tracking`): a round's run in TensorBoard and MLflow, written and read back
offline (TensorBoard's event files, an MLflow file store in the test's folder)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_worker import WORDS, AlternatingWebhook, episode, judged_by, webhook  # noqa: F401 - a fixture
from transformers import TrainerControl, TrainerState, TrainingArguments

from r3.settings import ConfigurationError, Settings, load_settings
from r3.store.store import open_store
from trainer import tracking
from trainer.tracking import RoundRun, round_metrics
from trainer.worker import TrainerWorker

# A round's report as the worker makes it (`trainer.worker.TrainerWorker._round`), every number exact in
# float32 (TensorBoard's scalars): two task families, a probe with its Wilson intervals.
SUMMARY = {
    "train": 6, "heldout": 4, "regression": 8, "set_aside": 0, "candidate": "r3-v3", "promoted": True,
    "reason": "mean second-attempt score higher (3 vs 0 held-out items, p = 0.125)", "canary": False,
    "gate": {"heldout": 4, "samples": 2, "temperature": 1.0, "candidate_second_attempt": 0.75,
             "active_second_attempt": 0.25, "measure": "mean score", "candidate_better": 3, "active_better": 0,
             "unjudged": 0, "p_value": 0.125, "alpha": 0.05, "first_attempt_drop": 0.0, "tolerance": 0.05,
             "families": {"regex": {"n": 4, "candidate": 1.0, "active": 1.0, "drop": 0.0, "p_adjusted": 1.0,
                                    "refused": False},
                          "webhook:math": {"n": 4, "candidate": 0.5, "active": 0.75, "drop": 0.25,
                                           "p_adjusted": 0.5, "refused": False},
                          "json_schema": {"n": 0, "candidate": None, "active": None, "drop": None,
                                          "refused": False}},
             "probe": {"n": 8, "candidate_acc": 0.625, "base_acc": 0.75, "drop": 0.125,
                       "candidate_ci95": (0.3125, 0.875), "base_ci95": (0.375, 0.9375),
                       "candidate": {"acc": 0.625, "acc_norm": 0.5, "acc_bytes": 0.5}}},
    "training": {"steps": 2, "failures": 6, "groups": 4, "skipped_groups": 1, "unjudged": 0,
                 "reward_mean": [0.5, 0.25], "kl": [None, 0.125], "adapter_path": "/tmp/adapter"},
}

# TRL's logs of the round's two steps, with R3's numbers of each (`SkipStepsWithoutSignal`).
STEP_LOGS = {1: {"loss": 0.5, "reward": 0.25, "r3/skipped_groups": 1.0, "r3/unjudged": 0.0},
             2: {"loss": 0.25, "reward": 0.75, "r3/skipped_groups": 0.0, "r3/unjudged": 1.0}}


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """An MLflow file store in the test's folder, as MLFLOW_TRACKING_URI names it to the trainer."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants a database unless told
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return MlflowClient()


def scalars(folder: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard run folder, read back from its event files: tag -> [(step, value)]."""
    events = EventAccumulator(folder, size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def texts(folder: str) -> dict[str, str]:
    """The text summaries of a TensorBoard run folder: tag -> its last text."""
    events = EventAccumulator(folder, size_guidance={"tensors": 0})
    events.Reload()
    return {tag.removesuffix("/text_summary"): events.Tensors(tag)[-1].tensor_proto.string_val[0].decode()
            for tag in events.Tags()["tensors"]}


def train(run: RoundRun, output_dir: Path) -> None:
    """What the trainer does with the run's callbacks during a round: begin, log each step, end (the
    arguments a GRPOTrainer gets from `trainer.grpo.grpo_config`)."""
    args = TrainingArguments(output_dir=str(output_dir), report_to="none", **run.trainer_args())
    state, control = TrainerState(), TrainerControl()
    callbacks = run.callbacks()
    with run.training():
        for callback in callbacks:
            callback.on_train_begin(args, state, control)
        for step, logs in STEP_LOGS.items():
            state.global_step = step
            for callback in callbacks:
                callback.on_log(args, state, control, logs=dict(logs))
        for callback in callbacks:
            callback.on_train_end(args, state, control)


def test_a_round_is_one_run_per_tracker_with_trls_steps_its_gate_numbers_and_its_version(
        tmp_path: Path, mlflow_store: MlflowClient) -> None:
    run = RoundRun(["tensorboard", "mlflow"], tmp_path / "runs", "default", 7)
    run.start()
    ids = run.ids()
    assert ids["name"] == "default-round-7" and ids["tensorboard"] == str(tmp_path / "runs" / "default-round-7")
    train(run, tmp_path / "scratch")
    run.link("r3-v3")
    run.finish(SUMMARY)
    assert run.ids() == ids and run.record() == {"tracking": ids}

    # TensorBoard: the steps under transformers' names, the round's numbers at its last step, in one folder.
    written = scalars(ids["tensorboard"])
    assert written["train/loss"] == [(1, 0.5), (2, 0.25)] and written["train/reward"] == [(1, 0.25), (2, 0.75)]
    assert written["train/r3/skipped_groups"] == [(1, 1.0), (2, 0.0)]
    assert written["train/r3/unjudged"] == [(1, 0.0), (2, 1.0)]
    expected = {"gate/candidate_second_attempt": 0.75, "gate/active_second_attempt": 0.25, "gate/p_value": 0.125,
                "round/promoted": 1.0, "round/canary": 0.0, "round/train": 6.0,
                "gate/families/regex/candidate": 1.0, "gate/families/webhook:math/candidate": 0.5,
                "gate/families/webhook:math/active": 0.75, "gate/families/webhook:math/drop": 0.25,
                "gate/probe/candidate_acc": 0.625, "gate/probe/base_acc": 0.75,
                "gate/probe/candidate_ci95/low": 0.3125, "gate/probe/candidate_ci95/high": 0.875,
                "gate/probe/candidate/acc_norm": 0.5, "training/skipped_groups": 1.0}
    assert {tag: written[tag] for tag in expected} == {tag: [(2, value)] for tag, value in expected.items()}
    # A family with no pairs has no numbers to plot, and the per-step lists are plotted per step.
    assert not any(tag.startswith(("gate/families/json_schema/candidate", "training/reward_mean")) for tag in written)
    assert texts(ids["tensorboard"]) | {"args": ""} == {
        "args": "", "r3/scenario": "default", "r3/round": "7", "r3/version": "r3-v3", "r3/decision": "promoted",
        "r3/reason": SUMMARY["reason"]}

    # MLflow: the same run, by the id the version's record keeps.
    found = mlflow_store.get_run(ids["mlflow"])
    assert found.info.run_name == "default-round-7" and found.info.status == "FINISHED"
    assert mlflow_store.get_experiment(found.info.experiment_id).name == "r3"
    assert {key: found.data.tags[key] for key in ("r3.scenario", "r3.round", "r3.version", "r3.decision")} == {
        "r3.scenario": "default", "r3.round": "7", "r3.version": "r3-v3", "r3.decision": "promoted"}
    assert found.data.tags["r3.reason"] == SUMMARY["reason"]
    # By step: MLflow's history of a metric comes in no set order.
    history = {name: sorted((m.step, m.value) for m in mlflow_store.get_metric_history(ids["mlflow"], name))
               for name in ("loss", "r3/unjudged", "gate/p_value")}
    assert history == {"loss": [(1, 0.5), (2, 0.25)], "r3/unjudged": [(1, 0.0), (2, 1.0)], "gate/p_value": [(2, 0.125)]}
    assert {name: found.data.metrics[name] for name in expected} == expected
    assert found.data.params["run_name"] == "default-round-7"  # MLflowCallback logged TRL's arguments into it


def test_a_round_that_fails_ends_its_mlflow_run_failed_and_one_that_never_trained_opens_none(
        tmp_path: Path, mlflow_store: MlflowClient) -> None:
    run = RoundRun(["mlflow"], tmp_path / "runs", "support", 3)
    run.start()
    run.fail()
    found = mlflow_store.get_run(run.ids()["mlflow"])
    assert (found.info.run_name, found.info.status) == ("support-round-3", "FAILED")

    skipped = RoundRun(["tensorboard", "mlflow"], tmp_path / "runs", "support", 4)
    skipped.fail()
    assert skipped.ids() == {} and skipped.record() == {} and not (tmp_path / "runs" / "support-round-4").exists()

    untracked = RoundRun([], tmp_path / "runs", "support", 5)
    untracked.start()
    assert untracked.record() == {} and untracked.callbacks() == []


def test_a_round_without_a_candidate_says_so_and_keeps_its_training_numbers(tmp_path: Path) -> None:
    run = RoundRun(["tensorboard"], tmp_path / "runs", "default", 2)
    run.start()
    run.finish({"train": 4, "heldout": 2, "training": {"steps": 1, "groups": 2, "skipped_groups": 2},
                "skipped": "no signal: in all 2 groups of 1 steps every retry failed"})
    folder = run.ids()["tensorboard"]
    assert scalars(folder)["training/skipped_groups"] == [(1, 2.0)] and "round/promoted" not in scalars(folder)
    assert texts(folder)["r3/decision"] == "no candidate" and texts(folder)["r3/reason"].startswith("no signal")


def test_round_metrics_flattens_the_report_and_decisions_are_zero_or_one() -> None:
    metrics = round_metrics({**SUMMARY, "canary": True})
    assert metrics["round/canary"] == 1.0 and metrics["gate/families/regex/refused"] == 0.0
    assert metrics["gate/probe/base_ci95/high"] == 0.9375 and "gate/probe/base_ci95" not in metrics
    assert not any(name.startswith(("round/reason", "round/candidate", "gate/measure", "training/kl"))
                   for name in metrics)


@pytest.mark.parametrize(("value", "trackers"), [("tensorboard,mlflow", ["tensorboard", "mlflow"]),
                                                 ('["wandb", "trackio"]', ["wandb", "trackio"]), ("none", [])])
def test_r3_train_report_to_takes_a_comma_list_or_json(value: str, trackers: list[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R3_TRAIN_REPORT_TO", value)
    assert load_settings().train_report_to == trackers


def test_an_unknown_tracker_is_a_configuration_error_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R3_TRAIN_REPORT_TO", "tensorboard,comet")
    with pytest.raises(ConfigurationError, match="R3_TRAIN_REPORT_TO.*'tensorboard', 'mlflow', 'wandb' or 'trackio'"):
        load_settings()


def test_tensorboard_runs_go_under_the_data_dir_unless_told(tmp_path: Path) -> None:
    assert Settings(_env_file=None, data_dir=tmp_path).tracking_path == tmp_path / "runs"
    told = Settings(_env_file=None, data_dir=tmp_path, train_tracking_dir=tmp_path / "tb")
    assert told.tracking_path == tmp_path / "tb"


async def test_a_tracker_whose_package_is_missing_stops_the_trainer_naming_the_setting_and_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # wandb as where it is not installed (tensorboard is, in the dev extra)
    monkeypatch.setitem(tracking.PACKAGES, "wandb", (("no-such-distribution-r3",), "wandb"))
    settings = Settings(_env_file=None, data_dir=tmp_path, train_report_to=["tensorboard", "wandb"])
    async with open_store(settings) as store:
        with pytest.raises(ConfigurationError, match=r"R3_TRAIN_REPORT_TO names wandb.*Fix: pip install wandb"):
            TrainerWorker(settings, store)


@pytest.mark.slow
async def test_a_real_round_reports_trls_steps_and_its_gate_into_the_run_its_version_keeps(
        model_path: Path, tmp_path: Path, webhook: AlternatingWebhook, mlflow_store: MlflowClient,
        monkeypatch: pytest.MonkeyPatch, all_cores) -> None:
    """One GRPO step whose every group carries signal (`AlternatingWebhook`), then the gate, with
    R3_TRAIN_REPORT_TO=tensorboard,mlflow: TRL's step metrics and R3's gate numbers are in the same run
    of each tracker, and the registered version's record holds the runs' ids."""
    monkeypatch.setenv("R3_TRAIN_REPORT_TO", "tensorboard,mlflow")
    settings = Settings(models_dir=model_path.parent, data_dir=tmp_path, train_num_generations=2, train_max_steps=1,
                        reflection_max_tokens=8, train_heldout_fraction=0.5, gate_regression_size=2, gate_samples=2,
                        webhook_allow_loopback=True, webhook_timeout_s=60)
    async with open_store(settings) as store:
        await store.episodes.write([judged_by(webhook, word) for word in WORDS]
                                   + [episode("hello", True), episode("yes", True)])
        worker = TrainerWorker(settings, store)
        try:
            outcome = await worker.run_round(requested_by="test")
        finally:
            await worker.close()
        version = await store.registry.get(outcome.candidate)
    gate, ids = version.metrics["gate"], version.metrics["tracking"]
    assert outcome.report["tracking"] == ids and ids["name"] == "default-round-1"
    assert ids["tensorboard"] == str(tmp_path / "runs" / "default-round-1")

    written = scalars(ids["tensorboard"])
    assert [step for step, _ in written["train/loss"]] == [1] and "train/reward" in written  # TRL's, by its callback
    assert written["train/r3/skipped_groups"] == [(1, 0.0)]  # R3's numbers of the step
    assert written["gate/p_value"] == [(1, pytest.approx(gate["p_value"]))]  # the gate's, at the round's last step
    assert written["round/promoted"] == [(1, float(outcome.promoted))]
    assert written["gate/candidate_second_attempt"] == [(1, pytest.approx(gate["candidate_second_attempt"]))]
    families = {tag for tag in written if tag.startswith("gate/families/")}
    assert families and all(tag.split("/")[2] in gate["families"] for tag in families)
    assert texts(ids["tensorboard"])["r3/version"] == version.name

    found = mlflow_store.get_run(ids["mlflow"])
    assert (found.info.run_name, found.info.status) == ("default-round-1", "FINISHED")
    assert found.data.tags["r3.version"] == version.name
    assert found.data.tags["r3.decision"] == ("promoted" if outcome.promoted else "rejected")
    assert [m.step for m in mlflow_store.get_metric_history(ids["mlflow"], "loss")] == [1]
    assert found.data.metrics["gate/p_value"] == gate["p_value"]
    assert found.data.metrics["gate/active_second_attempt"] == gate["active_second_attempt"]
