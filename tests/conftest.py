"""Shared fixtures (the bundled model, pulled once into the user's cache; a test LoRA adapter) and the
suite's tiers.

Every test is marked by what it needs, from the fixtures it takes (`TIER_FIXTURES`) or its module's
`pytestmark`: `model` (the bundled model or an engine), `services` (Postgres or Redis), `browser`
(Chromium), `process` (starts `r3` or another Python process: seconds each), `slow` (minutes). A test
with none of these is `fast`: `make test-fast` runs those alone (`pytest -m fast`), `make test` runs
everything.
"""

from __future__ import annotations

import os
from pathlib import Path

# One torch thread per process (servers started by tests inherit it): the suite runs several model
# processes on a 2-core machine, where more threads mostly spin waiting on each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# vLLM on the CPU reads its KV cache size from the environment, 2 GB by R3's default. 1 GB holds any
# test's context (8,192 tokens of the bundled model: 0.4 GB); with 2 GB, two workers, each holding the
# session's vLLM engine beside a module's own vLLM server and the in-process trainer of test_learns,
# outgrew the machine's 24 GB and the kernel killed a worker.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import pytest
from support import make_lora

from r3 import bundled_model
from r3.settings import Settings


# A fixture a test takes (directly or through other fixtures) → the tier it puts the test in.
TIER_FIXTURES = {
    "model": {"model_path", "lora_path", "transformers_engine", "vllm_engine", "started_engine", "r3_process"},
    "services": {"shared_postgres", "fresh_pg_url", "module_pg_url", "private_postgres", "private_redis"},
}
TIERS = ("model", "services", "browser", "process", "slow")


def pytest_configure(config: pytest.Config) -> None:
    for tier, what in {"model": "loads the bundled model or starts an engine",
                       "services": "needs Postgres or Redis", "browser": "drives Chromium",
                       "process": "starts r3 or another Python process", "slow": "takes minutes",
                       "fast": "needs no model, no service, no browser, no process of its own"}.items():
        config.addinivalue_line("markers", f"{tier}: {what}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        for tier, names in TIER_FIXTURES.items():
            if fixtures & names:
                item.add_marker(tier)
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker("fast")


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
    """One vLLM engine (on the CPU, through the vllm-cpu package) for the whole session: it takes ~45 s to start.
    Two LoRA slots, and two adapters in memory: a third is read from its folder again when asked for."""
    from r3.engines.vllm_engine import VllmEngine

    engine = VllmEngine.start(str(model_path), "smol", max_batch_size=4, max_loras=2, max_resident_adapters=2,
                              max_lora_rank=16)
    yield engine
    await engine.close()


@pytest.fixture(scope="module", params=["transformers", "vllm"])
def started_engine(request: pytest.FixtureRequest):
    """Each engine in turn: the tests that take it run once on transformers, once on vLLM."""
    return request.getfixturevalue(f"{request.param}_engine")
