"""The `r3` command on a fresh data dir, as a new user runs it (each in its own process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def r3(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("R3_")}
    env["R3_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "r3", *args], env=env, capture_output=True, text=True, timeout=300)


def test_train_once_on_a_fresh_data_dir_says_in_words_why_the_round_was_skipped(tmp_path: Path) -> None:
    """Regression: it died with `no such table: training_rounds` (a 566-line traceback)."""
    result = r3(tmp_path, "train", "--once")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped" in result.stderr and "too few failures: 0 to train on" in result.stderr
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
