"""R3_DEVICE, R3_DTYPE and vLLM's parallelism settings: resolved per machine and handed to the engines.

A CPU cannot run CUDA; what it can check is the resolution (with torch's view of the GPU patched),
that the engines put the model where the settings say, and what reaches vLLM's engine arguments.
`scripts/gpu-check.sh` runs the same paths on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from r3.engines import create_engine
from r3.engines.base import EngineError
from r3.engines.device import Placement, placement
from r3.settings import Settings


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch):
    """torch reports a GPU; `gpu(bf16=False)` makes it one older than Ampere."""
    def set_gpu(bf16: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_, **__: bf16)
    return set_gpu


def test_auto_is_the_cpu_in_float32_without_a_gpu() -> None:
    assert not torch.cuda.is_available()  # the test machines have none
    assert placement() == Placement("cpu", "float32")
    assert placement("cpu", "bfloat16") == Placement("cpu", "bfloat16")
    with pytest.raises(ValueError, match="sees no CUDA device"):
        placement("cuda")


def test_auto_is_cuda_in_bfloat16_with_a_gpu(gpu) -> None:
    gpu()
    assert placement() == Placement("cuda", "bfloat16")
    assert placement("cpu") == Placement("cpu", "float32")
    assert placement("cuda", "float32") == Placement("cuda", "float32")
    gpu(bf16=False)
    assert placement("auto") == Placement("cuda", "float16")


def test_settings_read_device_dtype_and_parallelism(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings(_env_file=None)
    assert (defaults.device, defaults.dtype) == ("auto", "auto")
    assert (defaults.tensor_parallel_size, defaults.pipeline_parallel_size) == (1, 1)
    assert defaults.distributed_executor_backend is None and not defaults.train_use_vllm
    monkeypatch.setenv("R3_DEVICE", "cuda")
    monkeypatch.setenv("R3_DTYPE", "bfloat16")
    monkeypatch.setenv("R3_TENSOR_PARALLEL_SIZE", "4")
    monkeypatch.setenv("R3_DISTRIBUTED_EXECUTOR_BACKEND", "ray")
    monkeypatch.setenv("R3_TRAIN_VLLM_MODE", "server")
    settings = Settings(_env_file=None)
    assert (settings.device, settings.dtype, settings.tensor_parallel_size) == ("cuda", "bfloat16", 4)
    assert (settings.distributed_executor_backend, settings.train_vllm_mode) == ("ray", "server")
    for name, value in [("R3_DEVICE", "tpu"), ("R3_TENSOR_PARALLEL_SIZE", "0"), ("R3_TRAIN_VLLM_MODE", "remote")]:
        monkeypatch.setenv(name, value)
        with pytest.raises(ValidationError):
            Settings(_env_file=None)
        monkeypatch.delenv(name)


@pytest.mark.parametrize(("dtype", "expected"), [("auto", torch.float32), ("bfloat16", torch.bfloat16)])
async def test_the_transformers_engine_loads_the_model_where_the_settings_say(
        model_path: Path, dtype: str, expected: torch.dtype) -> None:
    engine = await create_engine(Settings(_env_file=None, models_dir=model_path.parent, dtype=dtype))
    try:
        assert engine.device == torch.device("cpu") and engine.dtype is expected
    finally:
        await engine.close()


async def test_parallelism_settings_reach_vllm(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `AsyncLLM` is started with, caught before vLLM starts (a CPU has no GPUs to split a model over)."""
    from vllm.v1.engine.async_llm import AsyncLLM

    class Started(Exception):
        pass

    def catch(args, **_):
        raise Started(args)

    monkeypatch.setattr(AsyncLLM, "from_engine_args", catch)
    settings = Settings(_env_file=None, models_dir=model_path.parent, engine="vllm", tensor_parallel_size=2,
                        pipeline_parallel_size=3, distributed_executor_backend="mp")
    with pytest.raises(Started) as started:
        await create_engine(settings)
    args = started.value.args[0]
    assert (args.tensor_parallel_size, args.pipeline_parallel_size) == (2, 3)
    assert (args.distributed_executor_backend, args.dtype) == ("mp", "float32")


async def test_vllm_refuses_a_device_its_build_does_not_run_on(model_path: Path, gpu) -> None:
    gpu()  # R3_DEVICE resolves to cuda, but this vLLM is the CPU build
    with pytest.raises(EngineError, match="runs on cpu"):
        await create_engine(Settings(_env_file=None, models_dir=model_path.parent, engine="vllm"))
