"""TRL and vLLM take seconds to import (and vLLM may not be installed at all): the trainer loads them
only for a round that has something to train (`trainer.worker` imports `trainer.grpo` inside the
round). Each check runs in a fresh interpreter, so nothing another test imported counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process  # the suite's tiers: tests/conftest.py

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("trl", "vllm")


def run_python(code: str, env: dict[str, str] | None = None) -> dict:
    """Run `code` in a fresh interpreter at the repo root; it prints one JSON object last."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("R3_")} | (env or {})
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=environment, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_worker_loads_neither_trl_nor_vllm() -> None:
    loaded = run_python(f"import json, sys\nimport trainer.worker\n"
                        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    assert loaded == []


def test_a_round_that_is_skipped_loads_neither_trl_nor_vllm(tmp_path: Path) -> None:
    """`r3 train --once` on an empty embedded database: the round is recorded, skipped (no failures
    to train on), and neither TRL nor vLLM was imported for it."""
    result = run_python(
        "import json, sys\n"
        "from r3.settings import Settings\n"
        "from trainer.worker import run_trainer\n"
        "outcome = run_trainer(Settings(), once=True)\n"
        f"print(json.dumps({{'report': outcome.report, 'candidate': outcome.candidate,\n"
        f"                  'loaded': [m for m in {HEAVY!r} if m in sys.modules]}}))",
        env={"R3_DATA_DIR": str(tmp_path), "R3_DEVICE": "cpu"})
    assert result["candidate"] is None and "too few failures" in result["report"]["skipped"]
    assert result["loaded"] == []
