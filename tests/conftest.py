"""Shared fixtures: the bundled model (pulled once into the user's cache) and a test LoRA adapter."""

from __future__ import annotations

import os
from pathlib import Path

# One torch thread per process (servers started by tests inherit it): the suite runs several model
# processes on a 2-core machine, where more threads mostly spin waiting on each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from r3 import bundled_model
from r3.settings import Settings


@pytest.fixture(scope="session")
def model_path() -> Path:
    return bundled_model.pull(Settings().models_dir, show_progress=False)


@pytest.fixture(scope="session")
def lora_path(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real peft LoRA adapter with random, non-zero weights (so it changes the output)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1234)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    path = tmp_path_factory.mktemp("lora") / "test-lora"
    get_peft_model(base, config).save_pretrained(path)
    return path
