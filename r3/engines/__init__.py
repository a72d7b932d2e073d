"""Inference engines behind one interface (`r3.engines.base.Engine`)."""

from __future__ import annotations

from pathlib import Path

from r3 import bundled_model
from r3.engines.base import Engine
from r3.settings import Settings


async def create_engine(settings: Settings) -> Engine:
    """The engine `R3_ENGINE` names, with the model `R3_MODEL` names and `R3_LORA_MODULES` loaded."""
    model_path = bundled_model.resolve(settings)
    model_id = settings.served_model_name or Path(model_path).name
    if settings.engine == "vllm":
        from r3.engines.vllm_engine import VllmEngine  # vllm loads only when chosen

        engine: Engine = VllmEngine.start(
            model_path,
            model_id,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            max_batch_size=settings.max_batch_size,
            max_loras=settings.max_loras,
            max_lora_rank=settings.max_lora_rank,
            enable_prefix_caching=settings.enable_prefix_caching,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            cpu_kv_cache_gb=settings.cpu_kv_cache_gb,
        )
    else:
        from r3.engines.transformers_engine import TransformersEngine  # torch loads only when needed

        engine = TransformersEngine(
            model_path,
            model_id,
            dtype=settings.dtype,
            max_batch_size=settings.max_batch_size,
            max_model_len=settings.max_model_len,
        )
    for name, path in settings.lora_modules.items():
        await engine.load_adapter(name, path)
    return engine
