"""The `r3` command (the `cli` package): on a fresh data dir, as a new user runs it (each in its own
process), and its parts."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from r3.cli.train import GRPO_LOGGER, RoundProgress

import pytest

pytestmark = pytest.mark.process  # the suite's tiers: tests/conftest.py


def r3(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("R3_")}
    env["R3_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "r3", *args], env=env, capture_output=True, text=True, timeout=300)


def test_train_once_on_a_fresh_data_dir_says_in_words_why_the_round_was_skipped(tmp_path: Path) -> None:
    """Regression: it died with `no such table: training_rounds` (a 566-line traceback)."""
    result = r3(tmp_path, "train", "--once")
    assert result.returncode == 0, result.stderr[-2000:]
    said = " ".join(result.stderr.split())  # rich wraps the table's cells
    assert "skipped" in said and "too few failures: 0 new failures to train on, at least 1 needed" in said
    assert "Traceback" not in result.stderr
    assert "alembic" not in result.stderr.lower()  # the libraries' set-up lines are not shown by default

    as_json = r3(tmp_path, "train", "--once", "--json")
    assert as_json.returncode == 0, as_json.stderr[-2000:]
    report = json.loads(as_json.stdout)
    assert report["train"] == 0 and report["skipped"].startswith("too few failures")


def test_keys_create_migrates_the_embedded_database_and_refuses_a_name_twice(tmp_path: Path) -> None:
    first = r3(tmp_path, "keys", "create", "--name", "alice")
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.strip().startswith("r3-")
    second = r3(tmp_path, "keys", "create", "--name", "alice")
    assert second.returncode == 1
    assert "a key named 'alice' exists already" in second.stderr and second.stdout == ""
    assert r3(tmp_path, "keys", "create", "--name", "bob").returncode == 0


def test_the_scenario_commands_of_the_training_guide(tmp_path: Path) -> None:
    """The guide's `r3 scenarios` and `r3 keys ... --scenario` calls, and their refusals in a line."""
    created = r3(tmp_path, "scenarios", "create", "sql", "--description", "SQL writer",
                 "--set", "train_num_generations=8")
    assert created.returncode == 0, created.stderr[-2000:]
    listed = r3(tmp_path, "scenarios", "list")
    assert "sql" in listed.stdout and '{"train_num_generations": 8}' in listed.stdout
    assert r3(tmp_path, "keys", "create", "--name", "sql-team", "--scenario", "sql").returncode == 0
    row = next(line for line in r3(tmp_path, "keys", "list").stdout.splitlines() if "sql-team" in line)
    assert [cell.strip() for cell in row.split("│")][3] == "sql"  # name, tenant, scenario
    for args, said in ((("scenarios", "create", "sql-v2"), "ends like a version name"),
                       (("scenarios", "configure", "sql", "--set", "train_num_generations=1"),
                        "train_num_generations: Input should be greater than or equal to 2"),
                       (("scenarios", "configure", "nope"), "no scenario named 'nope'"),
                       (("keys", "create", "--name", "x", "--scenario", "nope"), "no scenario named 'nope'")):
        refused = r3(tmp_path, *args)
        assert refused.returncode == 1 and said in " ".join(refused.stderr.split()), refused.stderr[-2000:]
        assert "Traceback" not in refused.stderr


def test_help_loads_neither_torch_nor_the_server_nor_the_trainer() -> None:
    """Each command imports what it runs when it runs, so `r3 --help` answers at once."""
    code = ("import sys; from r3.cli.main import app; "
            "print([m for m in ('torch', 'trl', 'transformers', 'server', 'trainer', 'bench') if m in sys.modules])")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip() == "[]"


def grpo_record(message: str, **extra) -> logging.LogRecord:
    """A record as trainer.grpo's SkipStepsWithoutSignal logs it (its `extra` becomes the record's attributes)."""
    record = logging.LogRecord(GRPO_LOGGER, logging.INFO, __file__, 0, message, None, None)
    record.__dict__.update(extra)
    return record


def test_the_progress_bar_follows_a_round_from_the_grpo_log_records() -> None:
    from trainer.grpo import StepLog  # the real record type: the bar reads its fields

    def step(number: int, reward: float) -> StepLog:
        return StepLog(step=number, seconds=1.5, samples=8, reward_mean=reward, groups=2, skipped_groups=1, unjudged=0,
                       zero_variance_fraction=0.5, mean_reflection_tokens=20.0, kl=0.01, updated=True)

    bar = RoundProgress(Console(file=io.StringIO()))
    try:
        bar.handle(grpo_record("grpo step before any round"))  # nothing to draw yet
        assert bar.progress is None
        bar.handle(grpo_record("grpo round of 2 steps", grpo_round_steps=2))
        (task,) = bar.progress.tasks
        assert (task.total, task.completed) == (2, 0)
        # Within a step, the rollout's phases move the bar on (a step of minutes shows its samples).
        bar.handle(grpo_record("grpo rollout", grpo_rollout=0.25, grpo_rollout_phase="reflections sampled (8)"))
        (task,) = bar.progress.tasks
        assert task.completed == 0.25 and "step 1 · reflections sampled (8)" in task.description
        bar.handle(grpo_record("grpo step", grpo_step=step(1, 0.25)))
        (task,) = bar.progress.tasks
        assert (task.total, task.completed) == (2, 1) and "reward 0.25" in task.description
        bar.handle(grpo_record("grpo rollout", grpo_rollout=0.75, grpo_rollout_phase="retries judged (8)"))
        assert bar.progress.tasks[0].completed == 1.75
        bar.handle(grpo_record("some other message of the round"))
        assert bar.progress.tasks[0].completed == 1.75  # unmoved
        bar.handle(grpo_record("grpo step", grpo_step=step(2, 0.5)))
        assert bar.progress is None  # the round's last step removes the bar

        # The next round draws a new bar; one that ends early is removed when the handler closes.
        bar.handle(grpo_record("grpo round of 3 steps", grpo_round_steps=3))
        bar.handle(grpo_record("grpo step", grpo_step=step(1, 0.75)))
        (task,) = bar.progress.tasks
        assert (task.total, task.completed) == (3, 1) and "reward 0.75" in task.description
    finally:
        bar.close()
    assert bar.progress is None


def test_canary_status_and_abort_from_the_command_line(tmp_path: Path) -> None:
    import asyncio

    from r3.settings import Settings
    from r3.store.store import open_store

    files = tmp_path / "trained"
    files.mkdir()
    (files / "adapter_config.json").write_text("{}")

    async def start() -> str:
        async with open_store(Settings(data_dir=tmp_path, database_url=None, redis_url=None)) as store:
            version = await store.registry.register(files, None, {}, [])
            await store.canaries.start(version.name, 0.25)
            return version.name

    version = asyncio.run(start())
    status = r3(tmp_path, "canary", "status")
    assert status.returncode == 0, status.stderr[-2000:]
    said = " ".join((status.stderr + status.stdout).split())  # what it says on stderr, the table on stdout
    assert f"canary {version} vs base, 0.25 of unpinned requests, running" in said
    assert "first_attempt_score" in said and "decision: continue" in said
    assert r3(tmp_path, "canary", "abort").returncode == 0
    again = r3(tmp_path, "canary", "abort")
    assert again.returncode == 1 and "no canary runs in scenario 'default'" in again.stderr
    ended = r3(tmp_path, "canary", "status")
    assert "aborted (cli: aborted from the command line)" in " ".join((ended.stderr + ended.stdout).split())
