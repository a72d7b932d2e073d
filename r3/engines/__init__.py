"""Inference engines behind one interface (`r3.engines.base.Engine`)."""

from __future__ import annotations

from pathlib import Path

from r3 import bundled_model
from r3.engines.base import Engine
from r3.settings import Settings


async def create_engine(settings: Settings) -> Engine:
    """The engine `R3_ENGINE` names, with the model `R3_MODEL` names and `R3_LORA_MODULES` loaded, on
    `R3_DEVICE` in `R3_DTYPE` (`r3.engines.device.placement`; ValueError if that device is missing), holding
    at most `R3_MAX_RESIDENT_ADAPTERS` adapters in memory (vllm: ValueError if that is under `R3_MAX_LORAS`), with
    prefix caching as `R3_ENABLE_PREFIX_CACHING` says (transformers: at most `R3_PREFIX_CACHE_MEMORY_BYTES`)."""
    from r3.engines.device import placement  # torch loads only when an engine is made

    model_path = bundled_model.resolve(settings)
    model_id = settings.served_model_name or Path(model_path).name
    where = placement(settings.device, settings.dtype)
    common = {"device": where.device, "dtype": where.dtype, "max_model_len": settings.max_model_len,
              "max_batch_size": settings.max_batch_size, "max_resident_adapters": settings.max_resident_adapters}
    if settings.engine == "vllm":
        from r3.engines.vllm_engine import VllmEngine  # vllm loads only when chosen

        engine: Engine = VllmEngine.start(
            model_path, model_id, **common, max_loras=settings.max_loras, max_lora_rank=settings.max_lora_rank,
            enable_prefix_caching=settings.enable_prefix_caching,
            gpu_memory_utilization=settings.gpu_memory_utilization, cpu_kv_cache_gb=settings.cpu_kv_cache_gb,
            tensor_parallel_size=settings.tensor_parallel_size,
            pipeline_parallel_size=settings.pipeline_parallel_size,
            distributed_executor_backend=settings.distributed_executor_backend, block_size=settings.kv_block_size,
        )
    else:
        from r3.engines.transformers_engine import TransformersEngine

        engine = TransformersEngine(model_path, model_id, **common, max_num_batched_tokens=settings.max_num_batched_tokens,
                                    prefix_cache_memory_bytes=settings.prefix_cache_memory_bytes
                                    if settings.enable_prefix_caching else 0)
    for name, path in settings.lora_modules.items():
        await engine.load_adapter(name, path)
    return engine
