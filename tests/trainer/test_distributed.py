"""`r3 train` under `accelerate launch`: two processes (gloo, on the CPU) train one round together.

The main process selects the failures, trains with the other, registers the one candidate, gates
it and records the decision; the other only trains. Slow (45–70 s on two cores): two processes
load the bundled model and run one GRPO step, then the main process runs the gate.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from peft import get_peft_model
from safetensors import safe_open
from sqlalchemy import select
from support import free_port
from test_worker import WORDS, AlternatingWebhook, episode, judged_by, webhook  # noqa: F401 - a fixture
from transformers import AutoModelForCausalLM

from r3.engines.adapter_check import WEIGHTS_FILE, AdapterChecker
from r3.settings import Settings
from r3.store.models import TrainingRound
from r3.store.store import open_store
from trainer.grpo import GRPOSettings, lora_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "deploy" / "accelerate"
DDP_CONFIG = CONFIGS / "ddp.yaml"
SETTINGS = {"R3_DEVICE": "cpu", "R3_TRAIN_NUM_GENERATIONS": "2", "R3_TRAIN_MAX_STEPS": "1",
            "R3_REFLECTION_MAX_TOKENS": "8", "R3_TRAIN_HELDOUT_FRACTION": "0.5", "R3_GATE_REGRESSION_SIZE": "2",
            "R3_WEBHOOK_ALLOW_LOOPBACK": "true", "R3_WEBHOOK_TIMEOUT_S": "60"}


def tensor_shapes(adapter: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    with safe_open(adapter / WEIGHTS_FILE, "pt") as weights:
        return {name: (tuple(weights.get_slice(name).get_shape()), weights.get_slice(name).get_dtype())
                for name in weights.keys()}  # noqa: SIM118 - safe_open is not a mapping


@pytest.fixture
async def store(model_path: Path, tmp_path: Path, webhook: AlternatingWebhook) -> Settings:
    """The embedded database with eight failures and two first-attempt successes."""
    settings = Settings(models_dir=model_path.parent, data_dir=tmp_path / "data")
    async with open_store(settings) as opened:  # the embedded SQLite migrates itself
        await opened.episodes.write(
            [judged_by(webhook, word) for word in WORDS] + [episode("hello", True), episode("yes", True)])
    return settings


@pytest.mark.slow
async def test_two_processes_train_one_round_and_only_the_main_process_touches_the_store(
        store: Settings, model_path: Path, tmp_path: Path) -> None:
    untouched = tmp_path / "follower-adapters"
    env = {**os.environ, **SETTINGS, "R3_DATA_DIR": str(store.data_dir), "R3_MODELS_DIR": str(store.models_dir),
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [str(accelerate), "launch", "--config_file", str(DDP_CONFIG), "--num_processes", "2",
               "--main_process_port", str(free_port()), str(Path(__file__).parent / "train_once.py"), str(untouched)]
    result = await asyncio.to_thread(subprocess.run, command, env=env, cwd=tmp_path, capture_output=True, text=True,
                                     timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "process 0: r3-v1" in result.stdout and "process 1: follower" in result.stdout
    assert not untouched.exists()

    async with open_store(store) as opened:
        versions = await opened.registry.versions()
        async with opened.database.sessions() as session:
            rounds = list(await session.scalars(select(TrainingRound)))
    assert [v.name for v in versions] == ["r3-v1"] and len(rounds) == 1
    assert (rounds[0].status, rounds[0].candidate) == ("finished", "r3-v1")
    training = versions[0].metrics["training"]
    # Both processes' rollouts count: each trained min(2, train // 2) failures, one group of G each.
    assert training["processes"] == 2 and training["steps"] == 1
    assert training["groups"] == 2 * min(2, rounds[0].report["train"] // 2), json.dumps(training)

    # The adapter is the one a single process saves: same files, same tensors, and it fits the model.
    reference = tmp_path / "reference"
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    get_peft_model(base, lora_config(GRPOSettings(), None)).save_pretrained(reference)
    adapter = versions[0].path
    assert sorted(p.name for p in adapter.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert tensor_shapes(adapter) == tensor_shapes(reference)
    AdapterChecker(str(model_path)).check("r3-v1", adapter)


def test_the_accelerate_configs_are_ones_accelerate_reads() -> None:
    ddp = load_config_from_file(str(DDP_CONFIG))
    assert ddp.distributed_type == "MULTI_GPU" and ddp.mixed_precision == "no"  # R3_DTYPE decides precision
    zero3 = load_config_from_file(str(CONFIGS / "deepspeed-zero3.yaml"))
    assert zero3.distributed_type == "DEEPSPEED" and zero3.deepspeed_config["zero_stage"] == 3
    # trainer.grpo.save_adapter gathers the sharded weights, which ZeRO-3 allows only with this.
    assert zero3.deepspeed_config["zero3_save_16bit_model"] and zero3.mixed_precision == "bf16"
