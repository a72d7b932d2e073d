"""The production engine: vLLM's `AsyncLLM` in this process, its engine core in a spawned one.

Everything vLLM does well is used as is: continuous batching, paged attention, prefix caching (a
retry's prompt repeats the first attempt's, so its prefill mostly hits the cache), per-request
LoRA, and structured decoding. What this module adds is the translation to R3's engine interface:

- Prompts are tokenized here, with the same tokenizer call as the transformers engine, and sent as
  token ids, so both engines see the same tokens for the same text.
- Each adapter version gets a `LoRARequest` with its own integer id, never reused: vLLM keys its
  prefix cache and its loaded weights by that id, so a reused id could serve stale output.
- An adapter's folder is checked before `add_lora`, and an unknown adapter is refused before a
  request is sent: vLLM's worker dies on a folder it cannot load, taking every request with it.
- vLLM reports the end-of-sequence token as a generated token; it is dropped, as the transformers
  engine never emits it.

vLLM starts its engine core with `spawn`, so a program that builds this engine must start from an
`if __name__ == "__main__":` guard (console scripts such as `r3` and `pytest` have one).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from transformers import AutoTokenizer

from r3.engines.base import (
    EngineError,
    GenerationChunk,
    GenerationResult,
    PromptTooLongError,
    SamplingParams,
    TokenLogprob,
    UnknownAdapterError,
)

log = logging.getLogger(__name__)


class VllmEngine:
    supports_json_schema = True

    def __init__(self, llm, tokenizer, model_id: str, max_lora_rank: int) -> None:
        """Use `VllmEngine.start`; this only wraps a running `AsyncLLM`."""
        self._llm = llm
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.max_model_len = llm.model_config.max_model_len
        self._max_lora_rank = max_lora_rank
        self._lora_ids = itertools.count(1)
        self._adapters: dict[str, object] = {}  # name -> LoRARequest
        self._paths: dict[str, Path] = {}
        self._in_use: Counter[str] = Counter()
        self._closed = False

    @classmethod
    def start(
        cls,
        model_path: str,
        model_id: str,
        dtype: str = "float32",
        max_model_len: int | None = None,
        max_batch_size: int = 8,
        max_loras: int = 4,
        max_lora_rank: int = 64,
        enable_prefix_caching: bool = True,
        gpu_memory_utilization: float = 0.85,
        cpu_kv_cache_gb: int = 2,
    ) -> VllmEngine:
        # vLLM on a CPU reads its KV cache size from the environment only.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kv_cache_gb))
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=model_path,
            served_model_name=model_id,
            dtype=dtype,
            max_model_len=max_model_len,
            max_num_seqs=max_batch_size,
            enable_lora=True,
            max_loras=max_loras,
            max_lora_rank=max_lora_rank,
            enable_prefix_caching=enable_prefix_caching,
            gpu_memory_utilization=gpu_memory_utilization,
            # R3 reports logprobs under the model's raw distribution, as the transformers engine does.
            logprobs_mode="raw_logprobs",
            max_logprobs=20,
        )
        return cls(AsyncLLM.from_engine_args(args), AutoTokenizer.from_pretrained(model_path), model_id, max_lora_rank)

    # ------------------------------------------------------------------ interface

    def count_tokens(self, prompt: str) -> int:
        return len(self._encode(prompt))

    def adapters(self) -> dict[str, Path]:
        return dict(self._paths)

    async def load_adapter(self, name: str, path: Path) -> None:
        from vllm.lora.request import LoRARequest

        if not name:
            raise EngineError(f"{name!r} cannot name an adapter")
        if name in self._adapters:
            raise EngineError(f"an adapter named {name!r} is already loaded")
        path = Path(path)
        self._check_adapter_folder(name, path)
        request = LoRARequest(lora_name=name, lora_int_id=next(self._lora_ids), lora_path=str(path))
        try:
            await self._llm.add_lora(request)
        except Exception as error:  # noqa: BLE001 - vLLM raises many types; the caller needs one
            raise EngineError(f"cannot load adapter {name!r} from {path}: {error}") from error
        self._adapters[name], self._paths[name] = request, path
        log.info("loaded adapter %s (lora id %d) from %s", name, request.lora_int_id, path)

    async def unload_adapter(self, name: str) -> None:
        if name not in self._adapters:
            raise UnknownAdapterError(f"no adapter named {name!r} is loaded")
        if self._in_use[name]:
            raise EngineError(f"adapter {name!r} is in use by a running request")
        request = self._adapters.pop(name)
        del self._paths[name]
        await self._llm.remove_lora(request.lora_int_id)
        log.info("unloaded adapter %s", name)

    async def generate(self, prompt: str, params: SamplingParams, adapter: str | None = None) -> GenerationResult:
        prompt_ids = self._encode(prompt)
        text, tokens, finish = "", [], "length"
        async for chunk in self._generate(prompt_ids, params, adapter):
            text += chunk.text
            tokens += chunk.tokens
            finish = chunk.finish_reason or finish
        return GenerationResult(text=text, tokens=tokens, finish_reason=finish,
                                prompt_tokens=len(prompt_ids), prompt_token_ids=prompt_ids)

    async def stream(self, prompt: str, params: SamplingParams, adapter: str | None = None) -> AsyncIterator[GenerationChunk]:
        async for chunk in self._generate(self._encode(prompt), params, adapter):
            yield chunk

    async def close(self) -> None:
        self._closed = True
        self._llm.shutdown()
        self._llm = None  # vLLM's finalizer shuts down again; let it run now, not at interpreter exit

    # ------------------------------------------------------------------ internals

    def _encode(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def _check_adapter_folder(self, name: str, path: Path) -> None:
        config_file = path / "adapter_config.json"
        if not config_file.is_file():
            raise EngineError(f"{path} is not a peft adapter folder (no adapter_config.json)")
        try:
            rank = int(json.loads(config_file.read_text())["r"])
        except (ValueError, KeyError, TypeError) as error:
            raise EngineError(f"cannot read adapter {name!r}'s adapter_config.json: {error}") from error
        if rank > self._max_lora_rank:
            raise EngineError(f"adapter {name!r} has rank {rank}; this engine takes at most {self._max_lora_rank}")
        if not any(path.glob("adapter_model.*")):
            raise EngineError(f"{path} has no adapter weights (adapter_model.*)")

    def _sampling_params(self, params: SamplingParams, room: int):
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        return VllmSamplingParams(
            max_tokens=min(params.max_tokens, room),
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop=list(params.stop) or None,
            logprobs=params.top_logprobs,  # vLLM always adds the sampled token's own logprob
            output_kind=RequestOutputKind.DELTA,
            structured_outputs=StructuredOutputsParams(json=params.json_schema) if params.json_schema else None,
        )

    async def _generate(self, prompt_ids: list[int], params: SamplingParams, adapter: str | None) -> AsyncIterator[GenerationChunk]:
        if self._closed:
            raise EngineError("the engine is shut down")
        if adapter is not None and adapter not in self._adapters:
            raise UnknownAdapterError(f"no adapter named {adapter!r} is loaded")
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise PromptTooLongError(f"the prompt has {len(prompt_ids)} tokens; this model's context is {self.max_model_len}")
        lora = self._adapters.get(adapter) if adapter else None
        self._in_use[adapter or ""] += 1
        try:
            async for output in self._llm.generate({"prompt_token_ids": prompt_ids}, self._sampling_params(params, room),
                                                   request_id=uuid.uuid4().hex, lora_request=lora):
                completion = output.outputs[0]
                tokens = self._tokens(completion.token_ids, completion.logprobs or [], params.top_logprobs)
                finish = completion.finish_reason
                if finish == "stop" and completion.stop_reason is None and tokens:
                    tokens = tokens[:-1]  # an end-of-sequence token (vLLM's stop_reason None) is not part of the answer
                if finish not in (None, "stop", "length"):
                    raise EngineError(f"generation ended abnormally ({finish})")
                if completion.text or tokens or finish:
                    yield GenerationChunk(text=completion.text, tokens=tokens, finish_reason=finish)
        finally:
            self._in_use[adapter or ""] -= 1

    def _tokens(self, token_ids: list[int], logprobs: list[dict], top_logprobs: int) -> list[TokenLogprob]:
        """Each token with its logprob and, ranked, the `top_logprobs` most likely alternatives
        (vLLM's dict holds those plus the sampled token, whatever its rank)."""
        tokens = []
        for token_id, alternatives in zip(token_ids, logprobs, strict=True):
            ranked = sorted((lp.rank, i, lp.logprob) for i, lp in alternatives.items() if lp.rank <= top_logprobs)
            top = tuple((self.tokenizer.decode([i]), logprob) for _, i, logprob in ranked)
            tokens.append(TokenLogprob(token_id, self.tokenizer.decode([token_id]), alternatives[token_id].logprob, top))
        return tokens
