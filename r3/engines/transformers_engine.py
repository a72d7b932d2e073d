"""The embedded engine: transformers + peft on the CPU or one GPU, with continuous batching.

One scheduler thread owns the model. Each turn of its loop (a step) it admits waiting requests, runs
one decode step for every running sequence, then feeds prompts being prefilled as many tokens as
the step's budget (`max_num_batched_tokens`, vLLM's name) has left after the decoding rows, oldest
prompt first: chunked prefill, as vLLM's, so a long prompt enters its own KV cache a chunk a step
while the running rows keep decoding, and a step's work and memory stay bounded whatever the
prompt. A prompt wholly in its cache gets its first token and its cache joins the running batch.
Each row samples with its own parameters and random generator, and new text goes to the request's
asyncio queue. So the event loop never waits on torch, requests that arrive while others decode
join the next step instead of queueing behind them, and a sequence leaves the batch the moment it
finishes. Logits are computed only where they are read: after a prompt's last position, or, when a
request asks for prompt logprobs, after each position of the current chunk.

A failure stays with the requests it belongs to: a row whose sampling raises fails alone, and a
forward pass that raises fails the rows of that pass (the prompt whose chunk it was, or the
decoding batch) while the engine goes on with the rest.

Adapters are chosen per row: peft's mixed-adapter batches (`adapter_names=[...]`, `"__base__"` for
no adapter) apply each row's LoRA only to that row, so requests for different adapters and the
base share a batch without seeing each other's weights. Any number of adapters may be registered
(`load_adapter`), but at most `max_resident_adapters` are in the model at once (`r3.engines.residency`):
a row whose adapter is not waits, at admission, while its adapter takes the place of the least recently
used one that no running row uses. An adapter whose layers are configured as the evicted one's (rank,
alpha, target modules: every version the trainer makes) has its weights copied into the evicted one's
peft adapter, a "slot"; another is loaded by peft anew, whose cost grows with the adapters already in
the model, and the batch waits meanwhile, as it does for any adapter load (BENCHMARKS.md, "Many
adapters in one batch"). When every resident adapter is in use by a running row, the row waits for one
to be free, and the adapter rows after it wait behind it (first come, first served: later rows could
otherwise keep every slot busy for ever); base rows never wait.

A request's attempts reuse each other's work: a prompt on the same adapter that begins with the tokens
of a finished sequence (a reflection after its failed attempt, a retry after its reflection) takes
their keys and values from the prefix cache (`r3.engines.prefix_cache`, at most
`prefix_cache_memory_bytes`) and prefills only what is new, as vLLM's automatic prefix caching does.

On a GPU (`device="cuda"`) the weights are loaded straight onto it and every tensor of a step
stays there: the inputs are made on it and each request samples with a generator of its own on it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import queue
import random
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from r3.engines.adapter_check import CONFIG_FILE, WEIGHTS_FILE, AdapterChecker
from r3.engines.constrained import Grammars, RowGrammar
from r3.engines.prefix_cache import LayersKV, PrefixCache
from r3.engines.residency import Residency
from r3.structured_output import GrammarTimeout, grammar_work
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

log = logging.getLogger(__name__)

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass(eq=False)
class _Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    adapter: str
    max_new_tokens: int
    loop: asyncio.AbstractEventLoop
    chunks: asyncio.Queue
    generator: torch.Generator
    generated: list[int] = field(default_factory=list)
    tokens: list[TokenLogprob] = field(default_factory=list)
    text: str = ""
    emitted_chars: int = 0
    emitted_tokens: int = 0
    finish_reason: str | None = None
    cancelled: bool = False
    grammar: RowGrammar | None = None  # what the next token may be, for a constrained request
    prompt_tokens: list[TokenLogprob] | None = None  # the prompt's logprobs, until the first chunk takes them
    cached_tokens: int = 0  # of its prompt, those whose keys and values came from the prefix cache
    conversation: str | None = None  # the request it is a turn of, which holds its prefix cache entry

    def send(self, item: GenerationChunk | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.chunks.put_nowait, item)

    def fail(self, error: EngineError) -> None:
        """End the request with `error`; marked cancelled, it leaves its batch at the next selection."""
        self.cancelled = True
        self.send(error)


class TransformersEngine:
    supports_json_schema = True  # each row may be held to its own grammar (`r3.engines.constrained`)
    _grammars: Grammars | None = None  # made at the first constrained request (reading the vocabulary takes ~0.1 s)

    def __init__(
        self,
        model_path: str,
        model_id: str,
        dtype: str = "float32",
        max_batch_size: int = 8,
        max_model_len: int | None = None,
        device: str = "cpu",
        max_num_batched_tokens: int = 512,
        max_resident_adapters: int = 16,
        prefix_cache_memory_bytes: int = 0,
    ) -> None:
        """`model_path` loaded on `device` ("cpu", "cuda" or "cuda:N") in `dtype` ("float32",
        "bfloat16", "float16"); `r3.engines.create_engine` passes `R3_DEVICE` and `R3_DTYPE` resolved.
        A step's forward passes take at most `max_num_batched_tokens` tokens in all (one per decoding
        row, the rest for prompt chunks); ValueError if that is under `max_batch_size`, which would leave
        a full batch's newcomer no room to prefill. At most `max_resident_adapters` (≥ 1, else
        ValueError) registered adapters are in the model at once, the least recently used leaving first.
        Finished sequences' keys and values are kept for later prompts that begin with their tokens, at most
        `prefix_cache_memory_bytes` of them (0, the default here: no prefix caching; `create_engine` passes
        `R3_PREFIX_CACHE_MEMORY_BYTES`)."""
        if max_num_batched_tokens < max_batch_size:
            raise ValueError(f"max_num_batched_tokens ({max_num_batched_tokens}) must be at least max_batch_size "
                             f"({max_batch_size})")
        self.model_id = model_id
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            # Pinned now: "cuda" means the current device, which is per thread, and the scheduler is another thread.
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        # device_map puts each weight on the device as it is read: the whole model never sits in CPU memory.
        self._model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype),
                                                           device_map=self.device).eval()
        config_len = getattr(self._model.config, "max_position_embeddings", 2048)
        self.max_model_len = min(max_model_len or config_len, config_len)
        self.max_batch_size = max_batch_size
        self.max_num_batched_tokens = max_num_batched_tokens
        self._eos_ids = self._stop_token_ids()
        self._adapters: dict[str, Path] = {}  # registered, resident or not
        self._residency = Residency(max_resident_adapters)  # those in the model
        self.prefix_cache = PrefixCache(prefix_cache_memory_bytes) if prefix_cache_memory_bytes else None
        self._slots: dict[str, _Slot] = {}  # each resident adapter's place in the model
        self._slot_ids = itertools.count()
        self._adapter_checker = AdapterChecker(model_path)
        self._waiting: queue.Queue[_Sequence | None] = queue.Queue()
        self._ended: queue.SimpleQueue[str] = queue.SimpleQueue()  # conversations ended, for the prefix cache
        self._parked: list[_Sequence] = []  # admitted, waiting for their adapter to be resident, oldest first
        self._running: list[_Sequence] = []  # decoding, being prefilled or parked
        self._lock = threading.Lock()  # the model: one forward pass or one adapter change at a time
        self._closed = False
        self._thread = threading.Thread(target=self._schedule, name="r3-engine", daemon=True)
        self._thread.start()

    def _stop_token_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self._model.generation_config, "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        ids.discard(None)
        return ids

    # ------------------------------------------------------------------ public interface

    @property
    def dtype(self) -> torch.dtype:
        """The base model's weights' dtype (adapters may hold float32 weights beside bfloat16 ones)."""
        return self._model.dtype

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def adapters(self) -> dict[str, Path]:
        """Registered adapters by name, whether or not they are resident now."""
        return dict(self._adapters)

    def resident_adapters(self) -> tuple[str, ...]:
        """The adapters in the model now, least recently used (the next to be evicted) first."""
        return self._residency.order

    async def load_adapter(self, name: str, path: Path) -> None:
        if name == BASE or not name:
            raise EngineError(f"{name!r} cannot name an adapter")
        if name in self._adapters:
            raise EngineError(f"an adapter named {name!r} is already loaded")
        await asyncio.to_thread(self._load_adapter, name, Path(path))

    async def unload_adapter(self, name: str) -> None:
        if name not in self._adapters:
            raise UnknownAdapterError(f"no adapter named {name!r} is loaded")
        await asyncio.to_thread(self._unload_adapter, name)

    async def generate(self, prompt: Prompt, params: SamplingParams, adapter: str | None = None) -> GenerationResult:
        sequence = self._submit(prompt, params, adapter, await self._grammar(params))
        text, tokens, finish = "", [], "length"
        async for chunk in self._chunks(sequence):
            text += chunk.text
            tokens += chunk.tokens
            finish = chunk.finish_reason or finish
        return GenerationResult(text=text, tokens=tokens, finish_reason=finish,
                                prompt_tokens=len(sequence.prompt_ids), prompt_token_ids=sequence.prompt_ids)

    async def stream(self, prompt: Prompt, params: SamplingParams, adapter: str | None = None,
                     conversation: str | None = None) -> AsyncIterator[GenerationChunk]:
        sequence = self._submit(prompt, params, adapter, await self._grammar(params), conversation)
        async for chunk in self._chunks(sequence):
            yield chunk

    def end_conversation(self, conversation: str) -> None:
        """`conversation`'s request has ended: the prefix cache stops holding its entry for it (at the
        scheduler's next step, where the cache is used)."""
        if self.prefix_cache is not None:
            self._ended.put(conversation)

    async def _chunks(self, sequence: _Sequence) -> AsyncIterator[GenerationChunk]:
        try:
            while True:
                item = await sequence.chunks.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            sequence.cancelled = True  # a client gone mid-stream frees its batch slot

    async def close(self) -> None:
        self._closed = True
        self._waiting.put(None)
        await asyncio.to_thread(self._thread.join, 30)

    # ------------------------------------------------------------------ submission

    def _ids(self, prompt: Prompt) -> list[int]:
        return self.encode(prompt) if isinstance(prompt, str) else prompt

    async def _grammar(self, params: SamplingParams) -> RowGrammar | None:
        """A fresh matcher of `params`' grammar, compiled in the grammar threads (`grammar_work`: a
        client's schema can take seconds); None when `params` has none. Raises `EngineError` for one
        that cannot be compiled, or not within `GRAMMAR_TIMEOUT_S`."""
        if params.json_schema is None and params.structural_tag is None:
            return None
        try:
            grammars = self._grammars or await grammar_work(Grammars, self.tokenizer, self._model.config.vocab_size)
            self._grammars = grammars
            compiled = await grammar_work(grammars.compile, params)
        except GrammarTimeout as error:
            raise EngineError(f"cannot constrain decoding to this schema: {error}") from error
        return grammars.row(compiled) if compiled is not None else None

    def _submit(self, prompt: Prompt, params: SamplingParams, adapter: str | None,
                grammar: RowGrammar | None = None, conversation: str | None = None) -> _Sequence:
        if self._closed:
            raise EngineError("the engine is shut down")
        if adapter is not None and adapter not in self._adapters:
            raise UnknownAdapterError(f"no adapter named {adapter!r} is loaded")
        prompt_ids = self._ids(prompt)
        if not prompt_ids:  # no position to predict the first token from (vLLM refuses it too)
            raise EngineError("the prompt is empty")
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise PromptTooLongError(
                f"the prompt has {len(prompt_ids)} tokens; this model's context is {self.max_model_len}"
            )
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        sequence = _Sequence(
            prompt_ids=prompt_ids,
            params=params,
            adapter=adapter or BASE,
            max_new_tokens=min(params.max_tokens, room),
            loop=asyncio.get_running_loop(),
            chunks=asyncio.Queue(),
            generator=torch.Generator(device=self.device).manual_seed(seed),
            grammar=grammar,
            conversation=conversation,
        )
        self._waiting.put(sequence)
        return sequence

    # ------------------------------------------------------------------ adapters (engine thread pool)

    def _load_adapter(self, name: str, path: Path) -> None:
        """Register `name`, and load it into the model now if there is room or an adapter no request
        uses or waits for to evict (else at its first request)."""
        self._adapter_checker.check(name, path)
        with self._lock:
            resident = self._make_resident(name, path, busy=self._adapters_asked_for())
            self._adapters[name] = path
        if not resident:
            log.info("registered adapter %s from %s; every resident adapter is in use, so it loads at its first "
                     "request", name, path)

    def _unload_adapter(self, name: str) -> None:
        with self._lock:
            if name in self._adapters_asked_for():
                raise EngineError(f"adapter {name!r} is in use by a running request")
            del self._adapters[name]
            if self.prefix_cache is not None:
                self.prefix_cache.forget(name)
            if name in self._residency:
                self._evict(name)
        log.info("unloaded adapter %s", name)

    def _adapters_asked_for(self) -> set[str]:
        """The adapters of the requests running, parked or queued."""
        queued = [s for s in list(self._waiting.queue) if s is not None]
        return {s.adapter for s in self._running + queued}

    def _make_resident(self, name: str, path: Path, busy: set[str], wanted: set[str] = frozenset()) -> bool:
        """Make `name` resident (loaded from `path` unless it is) and the most recently used, in the place
        of the least recently used adapter not in `busy` (preferring one not in `wanted`) if the model holds
        as many as it may; False, changing nothing, when every resident one is busy. Raises EngineError
        when `path` cannot be loaded. Called under the model lock."""
        if name not in self._residency:
            replacing = None
            if self._residency.full:
                replacing = self._residency.victim(busy, wanted)
                if replacing is None:
                    return False
            self._load_into_model(name, path, replacing)
        self._residency.use(name)
        return True

    def _load_into_model(self, name: str, path: Path, replacing: str | None) -> None:
        """Put adapter `name`, from `path`, in the model, in the place of resident adapter `replacing`
        (None: beside the others). If both have the same layers (`_layers_config`), `name` takes over
        `replacing`'s slot: its weights are copied into the slot's tensors, in milliseconds, where peft's
        `load_adapter` builds an adapter's layers anew, walking every module of the model and of each
        adapter already in it (seconds with a dozen adapters in the bundled model, on the CPU)."""
        config = _layers_config(path)
        slot = self._slots.get(replacing) if replacing is not None else None
        if slot is not None and slot.config == config and slot.fits(weights := self._read_weights(name, path)):
            slot.take(weights)
            self._residency.drop(replacing)
            self._slots[name] = self._slots.pop(replacing)
            log.info("loaded adapter %s from %s in place of %s", name, path, replacing)
            return
        if replacing is not None:
            self._evict(replacing)
        self._slots[name] = self._new_slot(name, path, config)
        log.info("loaded adapter %s from %s", name, path)

    def _read_weights(self, name: str, path: Path) -> dict[str, torch.Tensor]:
        try:
            return load_file(path / WEIGHTS_FILE, device=str(self.device))
        except (OSError, SafetensorError) as error:  # the files may change after the check
            raise EngineError(f"cannot load adapter {name!r} from {path}: {error}") from error

    def _new_slot(self, name: str, path: Path, config: dict[str, Any]) -> _Slot:
        """A new peft adapter in the model holding adapter `name` from `path`."""
        from peft import PeftModel

        slot = f"r3-slot-{next(self._slot_ids)}"  # a hyphen: no module's name has one
        try:
            if isinstance(self._model, PeftModel):
                self._model.load_adapter(str(path), adapter_name=slot)
            else:
                self._model = PeftModel.from_pretrained(self._model, str(path), adapter_name=slot)
        except (ValueError, RuntimeError, KeyError, OSError, SafetensorError) as error:  # the files may change after the check
            raise EngineError(f"cannot load adapter {name!r} from {path}: {error}") from error
        self._model.eval()
        # Each of its tensors by its name in an adapter's weights file: the slot's name is one part of its own.
        weights = {".".join(part for part in key.split(".") if part != slot): tensor
                   for key, tensor in self._model.named_parameters() if slot in key.split(".")}
        return _Slot(slot, config, weights)

    def _evict(self, name: str) -> None:
        """Delete resident adapter `name`'s slot from the model (it stays registered unless the caller forgets it)."""
        self._residency.drop(name)
        slot = self._slots.pop(name)
        if self._slots:
            # Another adapter made the active one first (rows name their adapter anyway): deleting the
            # active one, peft (0.21.2) warns, and takes the next from the first LoRA layer it meets; if
            # that layer held only the deleted one (adapters on different modules), the model keeps
            # pointing at it and every forward raises KeyError.
            self._model.set_adapter(next(iter(self._slots.values())).name)
            self._model.delete_adapter(slot.name)
        else:  # the last one: drop peft's wrapper, leaving the untouched base model
            self._model = self._model.unload()
        log.info("evicted adapter %s from the model", name)

    # ------------------------------------------------------------------ the scheduler thread

    def _schedule(self) -> None:
        batch: _Batch | None = None  # the decoding rows
        prefilling: list[_Batch] = []  # prompts part-way into their own KV cache, one row each, oldest first
        while not self._closed:
            admitted = self._admit(block=batch is None and not prefilling and not self._parked)
            with self._lock:
                # Outside inference mode: an adapter loaded in it has inference tensors, which peft's next
                # load (setting requires_grad on every adapter's weights) cannot touch.
                busy = {s.adapter for s in (batch.sequences if batch else [])} | {p.sequences[0].adapter for p in prefilling}
                ready, self._parked = self._with_resident_adapters(self._parked + admitted, busy)
                while not self._ended.empty():
                    self.prefix_cache.end(self._ended.get())
                with torch.inference_mode():
                    prefilling += [self._to_prefill(s) for s in ready]
                    budget = self.max_num_batched_tokens - (len(batch.sequences) if batch else 0)
                    if batch is not None:
                        batch = self._step(batch.sequences, partial(self._decode, batch))
                    prefilling, prefilled = self._prefill_chunks(prefilling, budget)
                    for part in prefilled:
                        batch = _merged(batch, part)
                self._running = (batch.sequences if batch else []) + [p.sequences[0] for p in prefilling] + self._parked
        for sequence in self._running + self._drain_waiting():
            sequence.fail(EngineError("the engine shut down"))

    def _to_prefill(self, sequence: _Sequence) -> _Batch:
        """`sequence` alone, about to be prefilled: its cache holds the keys and values of the longest prefix
        of its prompt that the prefix cache has for its adapter (none when it asks for prompt logprobs,
        which need every position's logits), and only the rest is fed."""
        prefix: LayersKV = []
        if self.prefix_cache is not None and sequence.params.prompt_logprobs is None:
            sequence.cached_tokens, prefix = self.prefix_cache.match(sequence.adapter, sequence.prompt_ids)
        return _Batch.prompt(sequence, self.device, prefix)

    def _keep(self, batch: _Batch, row: int) -> None:
        """Row `row` of `batch`, finished, into the prefix cache: its prompt and generated tokens, as far
        as the model has read them, with their keys and values."""
        sequence = batch.sequences[row]
        read = int(batch.attention_mask[row].sum())  # its positions in the cache; the rest of the row is padding
        try:
            self.prefix_cache.store(sequence.adapter, (sequence.prompt_ids + sequence.generated)[:read],
                                    len(sequence.prompt_ids), partial(batch.row_cache, row, read), sequence.conversation)
        except torch.OutOfMemoryError:  # a full GPU: the request is answered all the same, its prefix not kept
            log.warning("no memory left to keep a finished sequence's keys and values for prefix caching")

    def _step(self, sequences: list[_Sequence], step: Callable[[], _Batch | None]) -> _Batch | None:
        """`step()`'s batch; if it raises, every one of `sequences` (the rows of that forward pass,
        whose batch state may be half-updated) fails with the error and the result is None."""
        try:
            return step()
        except Exception as error:  # noqa: BLE001 - any failure must reach the step's clients, and only them
            log.exception("generation step failed")
            for sequence in sequences:
                sequence.fail(EngineError(f"generation failed: {error}"))
            return None

    def _admit(self, block: bool) -> list[_Sequence]:
        admitted: list[_Sequence] = []
        while len(self._running) + len(admitted) < self.max_batch_size:
            try:
                sequence = self._waiting.get(block=block and not admitted)
            except queue.Empty:
                break
            if sequence is None:  # close()
                break
            if not sequence.cancelled:
                admitted.append(sequence)
        return admitted

    def _with_resident_adapters(self, sequences: list[_Sequence], busy: set[str]) -> tuple[list[_Sequence], list[_Sequence]]:
        """`sequences` (oldest first) as (those that may start now, those parked until their adapter can
        be resident). Each adapter row's adapter is made resident (`_make_resident`), never evicting one
        a running row uses (`busy`, or one starting now); the first row that finds every resident adapter
        busy is parked, and every adapter row after it too (first come, first served). Base rows never
        wait. Cancelled rows are dropped; a row whose adapter was unregistered since it was queued fails
        with UnknownAdapterError, one whose adapter cannot be loaded again with EngineError. Called
        under the model lock, so no unregistering can follow."""
        ready: list[_Sequence] = []
        parked: list[_Sequence] = []
        busy = set(busy)
        wanted = {s.adapter for s in sequences} | self._adapters_asked_for()
        for sequence in sequences:
            adapter = sequence.adapter
            if sequence.cancelled:
                continue
            if adapter == BASE:
                ready.append(sequence)
            elif adapter not in self._adapters:
                sequence.fail(UnknownAdapterError(f"adapter {adapter!r} was unloaded"))
            elif parked:
                parked.append(sequence)
            else:
                try:
                    if adapter not in self._residency:  # its files are read again: check them again
                        self._adapter_checker.check(adapter, self._adapters[adapter])
                    resident = self._make_resident(adapter, self._adapters[adapter], busy, wanted)
                except EngineError as error:
                    sequence.fail(error)
                    continue
                if resident:
                    busy.add(adapter)
                    ready.append(sequence)
                else:
                    parked.append(sequence)
        return ready, parked

    def _drain_waiting(self) -> list[_Sequence]:
        """The queued sequences, taken off the queue (at shutdown, to tell them)."""
        drained = []
        while True:
            try:
                sequence = self._waiting.get_nowait()
            except queue.Empty:
                return drained
            if sequence is not None:
                drained.append(sequence)

    def _forward(self, batch: _Batch, input_ids: torch.Tensor, position_ids: torch.Tensor,
                 every_position: bool = False) -> torch.Tensor:
        """The float32 logits after the last position ([rows, vocab]), or after each one ([rows, width,
        vocab]); the LM head runs on those positions alone (each is a vocabulary of floats: 200 KB on the
        bundled model)."""
        extra = {"adapter_names": [self._slots[s.adapter].name if s.adapter != BASE else BASE
                                   for s in batch.sequences]} if self._slots else {}
        output = self._model(
            input_ids=input_ids,
            attention_mask=batch.attention_mask,
            position_ids=position_ids,
            past_key_values=batch.cache,
            use_cache=True,
            logits_to_keep=0 if every_position else 1,
            **extra,
        )
        return output.logits.float() if every_position else output.logits[:, -1, :].float()

    def _prefill_chunks(self, prefilling: list[_Batch], budget: int) -> tuple[list[_Batch], list[_Batch]]:
        """`prefilling`'s prompts fed up to `budget` tokens in all, oldest first, as (those still part-way,
        those now wholly in their cache with their first token sent). Cancelled ones are dropped, and
        so is one whose chunk fails (it fails alone) or that finished at its first token."""
        still: list[_Batch] = []
        prefilled: list[_Batch] = []
        for part in prefilling:
            sequence = part.sequences[0]
            if sequence.cancelled:
                continue
            take = min(budget, len(sequence.prompt_ids) - part.width)
            if take == 0:
                still.append(part)
                continue
            budget -= take
            fed = self._step(part.sequences, partial(self._prefill, part, take))
            if fed is not None:
                (prefilled if fed.width == len(sequence.prompt_ids) else still).append(fed)
        return still, prefilled

    def _prefill(self, part: _Batch, take: int) -> _Batch | None:
        """`part` (one sequence) with the next `take` tokens of its prompt in its KV cache and, when that
        completes the prompt, its first token sampled and sent (None: it finished there). With
        `prompt_logprobs`, the chunk's prompt tokens are scored from this chunk's logits alone."""
        sequence = part.sequences[0]
        start = part.width
        part.attention_mask = F.pad(part.attention_mask, (0, take), value=1)
        input_ids = torch.tensor([sequence.prompt_ids[start:start + take]], device=self.device)
        position_ids = torch.arange(start, start + take, device=self.device)[None]
        scored = sequence.params.prompt_logprobs is not None
        logits = self._forward(part, input_ids, position_ids, every_position=scored)
        if scored:
            sequence.prompt_tokens = (sequence.prompt_tokens or []) + self._prompt_tokens(sequence, logits[0], start)
            logits = logits[:, -1, :]
        if part.width < len(sequence.prompt_ids):
            return part
        return self._sample_and_emit(part, logits)

    def _prompt_tokens(self, sequence: _Sequence, logits: torch.Tensor, start: int) -> list[TokenLogprob]:
        """The prompt tokens that a chunk's positions `start`, `start` + 1, ... predict (logits: [chunk,
        vocab]), each with its logprob (and `prompt_logprobs` alternatives) under the model's raw
        distribution. Position i predicts token i + 1, so the prompt's last position scores none."""
        ids = sequence.prompt_ids[start + 1:start + 1 + logits.shape[0]]
        logprobs = torch.log_softmax(logits[:len(ids)], dim=-1)
        chosen = logprobs.gather(1, torch.tensor(ids, device=logprobs.device)[:, None]).squeeze(1).tolist()
        top: list[tuple[TokenLogprob, ...]] = [()] * len(ids)
        if count := sequence.params.prompt_logprobs:
            values, top_ids = logprobs.topk(count, dim=-1)
            top = [alternatives(self.tokenizer, row_ids, row_values)
                   for row_ids, row_values in zip(top_ids.tolist(), values.tolist())]
        return [TokenLogprob(token_id, self.tokenizer.decode([token_id]), logprob, alternatives_of)
                for token_id, logprob, alternatives_of in zip(ids, chosen, top)]

    def _decode(self, batch: _Batch) -> _Batch | None:
        """`batch` one token further (None: all its sequences finished or left)."""
        batch = batch.without_cancelled()
        if batch is None:
            return None
        batch.attention_mask = F.pad(batch.attention_mask, (0, 1), value=1)
        input_ids = torch.tensor([[s.generated[-1]] for s in batch.sequences], device=self.device)
        position_ids = batch.attention_mask.sum(-1, keepdim=True) - 1
        logits = self._forward(batch, input_ids, position_ids)
        return self._sample_and_emit(batch, logits)

    def _sample_and_emit(self, batch: _Batch, logits: torch.Tensor) -> _Batch | None:
        """Each row's next token, sent to its client; `batch` less the rows that finished or failed.

        Each row in vLLM's order: its grammar's mask; the logprobs it reports; logit bias and
        penalties; temperature and top-p."""
        for row, sequence in enumerate(batch.sequences):
            try:
                if sequence.grammar is not None:
                    sequence.grammar.mask(logits[row])
                logprobs = torch.log_softmax(logits[row], dim=-1)
                token_id = _sample(_adjusted(logits[row], sequence.params, sequence.generated), sequence.params,
                                   sequence.generator)
                if sequence.grammar is not None:
                    sequence.grammar.accept(token_id)
                self._append(sequence, token_id, logprobs)
            except Exception as error:  # noqa: BLE001 - a row's failure is that row's alone
                log.exception("sampling failed for one request")
                sequence.fail(EngineError(f"sampling failed: {error}"))
            else:
                if sequence.finish_reason is not None and self.prefix_cache is not None:
                    self._keep(batch, row)
        return batch.select([row for row, s in enumerate(batch.sequences) if s.finish_reason is None and not s.cancelled])

    def _append(self, sequence: _Sequence, token_id: int, logprobs: torch.Tensor) -> None:
        """`token_id`, with `logprobs` ([vocab], what the row's token was drawn from, grammar applied),
        added to `sequence`; its text cut before any stop string, with the tokens past the cut
        (`tokens_making`); what is ready sent."""
        params = sequence.params
        if token_id in self._eos_ids:
            sequence.finish_reason = "stop"
        else:
            values, ids = logprobs.topk(params.top_logprobs)
            sequence.generated.append(token_id)
            sequence.tokens.append(TokenLogprob(token_id, self.tokenizer.decode([token_id]), logprobs[token_id].item(),
                                                alternatives(self.tokenizer, ids.tolist(), values.tolist())))
            sequence.text = self.tokenizer.decode(sequence.generated, skip_special_tokens=True)
            cut = min((i for i in (sequence.text.find(s) for s in params.stop) if i >= 0), default=-1)
            if cut >= 0:
                sequence.text = sequence.text[:cut]
                del sequence.tokens[tokens_making(self.tokenizer, sequence.generated, sequence.text,
                                                  sequence.emitted_tokens):]
                sequence.finish_reason = "stop"
            elif len(sequence.generated) >= sequence.max_new_tokens:
                sequence.finish_reason = "length"
        self._emit(sequence)

    def _emit(self, sequence: _Sequence) -> None:
        """Send `sequence`'s text since the last chunk with the tokens that make it; until it finishes,
        less what may be the start of a stop string or part of a character."""
        ready = len(sequence.text)
        tokens = len(sequence.tokens)
        if sequence.finish_reason is None:
            ready -= max((len(s) - 1 for s in sequence.params.stop), default=0)
            while ready > sequence.emitted_chars and sequence.text[ready - 1] == "\ufffd":
                ready -= 1
            if ready <= sequence.emitted_chars:
                return
            if ready < len(sequence.text):  # some text held back: only the tokens of the rest (decoding costs)
                tokens = tokens_making(self.tokenizer, sequence.generated, sequence.text[:ready], sequence.emitted_tokens)
        chunk = GenerationChunk(
            text=sequence.text[sequence.emitted_chars:ready],
            tokens=sequence.tokens[sequence.emitted_tokens:tokens],
            finish_reason=sequence.finish_reason,
            prompt_tokens=sequence.prompt_tokens,
            prompt_length=len(sequence.prompt_ids) if sequence.emitted_tokens == 0 else None,
            cached_tokens=sequence.cached_tokens if sequence.emitted_tokens == 0 else None,
        )
        sequence.emitted_chars, sequence.emitted_tokens = ready, tokens
        sequence.prompt_tokens = None
        sequence.send(chunk)


@dataclass
class _Slot:
    """A peft adapter in the model, `name`, holding one registered adapter at a time. Another adapter whose
    layers have the same config (`_layers_config`) takes its place by having its weights copied into the
    slot's tensors (`weights`: by their names in an adapter's weights file)."""

    name: str
    config: dict[str, Any]
    weights: dict[str, torch.Tensor]

    def fits(self, weights: dict[str, torch.Tensor]) -> bool:
        """Whether `weights` (an adapter's weights file) are exactly this slot's tensors, name and shape."""
        return weights.keys() == self.weights.keys() and all(t.shape == self.weights[k].shape for k, t in weights.items())

    def take(self, weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for key, tensor in weights.items():
                self.weights[key].copy_(tensor)


# adapter_config.json's fields that say where an adapter came from or how its weights began, not what its
# layers are: two adapters that differ in these alone have layers of the same shapes and scaling.
_ORIGIN_FIELDS = ("base_model_name_or_path", "revision", "peft_version", "auto_mapping", "inference_mode",
                  "init_lora_weights")


def _layers_config(path: Path) -> dict[str, Any]:
    """Adapter `path`'s LoRA config less `_ORIGIN_FIELDS`, its target modules as a sorted list: equal for
    two adapters whose layers are alike. Raises EngineError when it cannot be read."""
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError) as error:  # the files may change after the check
        raise EngineError(f"cannot read {path / CONFIG_FILE}: {error}") from error
    for name in _ORIGIN_FIELDS:
        config.pop(name, None)
    if isinstance(config.get("target_modules"), list):  # peft saves a set, in no fixed order
        config["target_modules"] = sorted(config["target_modules"])
    return config


@dataclass
class _Batch:
    """Running sequences, their shared KV cache and attention mask (left-padded, one row each)."""

    sequences: list[_Sequence]
    cache: DynamicCache
    attention_mask: torch.Tensor

    @classmethod
    def prompt(cls, sequence: _Sequence, device: torch.device, prefix: LayersKV = ()) -> _Batch:
        """`sequence` alone, a prompt about to be prefilled, its cache empty or holding `prefix` (each
        layer's keys and values of its prompt's first tokens, copied)."""
        width = prefix[0][0].shape[2] if prefix else 0
        cache = DynamicCache(ddp_cache_data=prefix) if prefix else DynamicCache()
        return cls([sequence], cache, torch.ones(1, width, dtype=torch.long, device=device))

    @property
    def width(self) -> int:
        """Positions in the cache, padding included (for a prompt being prefilled: its tokens in so far)."""
        return self.attention_mask.shape[1]

    def row_cache(self, row: int, length: int) -> LayersKV:
        """Each layer's keys and values of row `row`'s last `length` positions, copied out of the batch's tensors."""
        start = self.width - length
        return [(layer.keys[row:row + 1, :, start:].clone(memory_format=torch.contiguous_format),
                 layer.values[row:row + 1, :, start:].clone(memory_format=torch.contiguous_format))
                for layer in self.cache.layers]

    def select(self, rows: list[int]) -> _Batch | None:
        if not rows:
            return None
        if len(rows) < len(self.sequences):
            index = torch.tensor(rows, device=self.attention_mask.device)
            self.cache.batch_select_indices(index)
            self.sequences = [self.sequences[r] for r in rows]
            self.attention_mask = self.attention_mask[index]
            self._trim_padding()
        return self

    def without_cancelled(self) -> _Batch | None:
        return self.select([r for r, s in enumerate(self.sequences) if not s.cancelled])

    def merged_with(self, other: _Batch) -> _Batch:
        width = max(self.attention_mask.shape[1], other.attention_mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, width, dim=2), _left_pad(theirs.keys, width, dim=2)])
            mine.values = torch.cat([_left_pad(mine.values, width, dim=2), _left_pad(theirs.values, width, dim=2)])
        self.attention_mask = torch.cat(
            [_left_pad(self.attention_mask, width, dim=1), _left_pad(other.attention_mask, width, dim=1)]
        )
        self.sequences = self.sequences + other.sequences
        return self

    def _trim_padding(self) -> None:
        """Drop leading columns that are padding in every row, so the cache shrinks as rows leave."""
        used = self.attention_mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start:
            self.attention_mask = self.attention_mask[:, start:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]


def _merged(running: _Batch | None, fresh: _Batch | None) -> _Batch | None:
    if running is None or fresh is None:
        return running or fresh
    return running.merged_with(fresh)


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _adjusted(logits: torch.Tensor, params: SamplingParams, generated: list[int]) -> torch.Tensor:
    """`logits` ([vocab]) with `params`' logit bias added and presence and frequency penalties taken
    off the tokens generated so far (OpenAI's definitions, as vLLM applies them); a copy when any applies."""
    if not (params.logit_bias or params.presence_penalty or params.frequency_penalty):
        return logits
    adjusted = logits.clone()
    if params.logit_bias:
        ids, biases = zip(*params.logit_bias)
        adjusted[list(ids)] += torch.tensor(biases, dtype=logits.dtype, device=logits.device)
    if generated and (params.presence_penalty or params.frequency_penalty):
        counts = torch.bincount(torch.tensor(generated, device=logits.device), minlength=logits.shape[-1])
        adjusted -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0)
    return adjusted


def _sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """A token id drawn from `logits` ([vocab], raw) under `params`' temperature and top-p."""
    if params.greedy:
        return int(logits.argmax())
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > params.top_p  # keeps the top token always
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))
