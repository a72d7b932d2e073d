"""Test support: a real uvicorn server in a background thread, real LoRA adapters to load, and an
engine that answers from a script (no model) for tests of what runs around the model."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import uvicorn

from r3.engines.base import (
    EngineError,
    FinishReason,
    GenerationChunk,
    GenerationResult,
    Prompt,
    PromptTooLongError,
    SamplingParams,
    TokenLogprob,
    UnknownAdapterError,
)

# Two tools with closed schemas, which constrained decoding can hold the bundled model to.
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Rome"]}},
    "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"timezone": {"type": "string", "maxLength": 20}},
    "required": ["timezone"], "additionalProperties": False}}}


async def next_turn_reuse(engine: Any, adapter: str | None = None, prompt_tokens: int = 150,
                          answer_tokens: int = 40) -> tuple[int, int]:
    """What a conversation's next turn reuses of the turn before it on `engine`, as a rescue's
    reflection reuses its attempt: a prompt of `prompt_tokens` tokens no other test sends, answered
    greedily with `answer_tokens` tokens (end of sequence banned), then a prompt that begins with
    both and goes on. Returns (the tokens of the first turn the model read: its prompt and its answer
    but the last token, the next turn's prompt tokens the engine reported cached)."""
    words = " ".join(f"w{time.time_ns() % 100_000 + i}" for i in range(prompt_tokens))  # new to any cache
    prompt = engine.encode(words)[:prompt_tokens]
    ban_eos = ((engine.tokenizer.eos_token_id, -100.0),)
    first = await engine.generate(prompt, SamplingParams(max_tokens=answer_tokens, temperature=0.0,
                                                         logit_bias=ban_eos), adapter)
    assert first.completion_tokens == answer_tokens
    later = prompt + first.token_ids + engine.encode(" And then?")
    chunks = [chunk async for chunk in engine.stream(later, SamplingParams(max_tokens=1, temperature=0.0), adapter)]
    return len(prompt) + answer_tokens - 1, chunks[0].cached_tokens


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadedServer:
    """`with ThreadedServer(app) as url:` — a real HTTP server for the block's duration."""

    def __init__(self, app, startup_timeout_s: float = 180) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.startup_timeout_s = startup_timeout_s

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *_) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def make_lora(model_path: Path, folder: Path, seed: int, rank: int = 4, alpha: int = 8,
              target_modules: tuple[str, ...] = ("q_proj",)) -> Path:
    """A real peft LoRA adapter with random, non-zero weights (so it changes the output), saved to `folder`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules), init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(folder)
    return folder


def make_model(model_path: Path, folder: Path, **changes) -> Path:
    """A randomly initialised model of `model_path`'s architecture with config `changes` (e.g. another
    `hidden_size`), saved to `folder`: the base of adapters made for a model other than ours."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model_path)
    for key, value in changes.items():
        setattr(config, key, value)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def truncated_copy(adapter: Path, folder: Path) -> Path:
    """A copy of `adapter` in `folder` whose weights file is cut in half, as an interrupted copy leaves it."""
    shutil.copytree(adapter, folder)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


# SmolLM2's chat template without its default system message: ChatML, which the scripted engine's
# prompts are rendered in (`r3.chat_format.render_prompt`).
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
          "+ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@cache
def byte_tokenizer() -> Any:
    """A real, tiny `transformers` tokenizer built in memory (no download): one token per UTF-8 byte
    (byte-level BPE without merges: 256 tokens), ChatML's two special tokens, and the ChatML chat
    template. Any text encodes, and its ids decode back to it exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    model = Tokenizer(models.BPE(vocab={char: i for i, char in enumerate(alphabet)}, merges=[]))
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    model.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=model, bos_token="<|im_start|>", eos_token="<|im_end|>")
    tokenizer.chat_template = CHATML
    return tokenizer


def last_user_message(prompt: str) -> str:
    """The content of the last user message of a ChatML `prompt` (as `ScriptedEngine` renders them):
    the task on a first attempt, the reflection request on a reflection, the retry request on a retry."""
    return prompt.rpartition("<|im_start|>user\n")[2].partition("<|im_end|>")[0]


# A script: answers each call from its prompt's text and its adapter (None: the base model), or a
# sequence of answers given in the order the calls come.
Script = Callable[[str, str | None], str] | Iterable[str]


@dataclass(frozen=True)
class ScriptedCall:
    """One call the engine answered: its prompt as text, adapter, sampling, and the script's answer
    (before `max_tokens` and stop strings cut it)."""

    prompt: str
    adapter: str | None
    params: SamplingParams
    answer: str
    conversation: str | None = None  # the request it was a turn of (streamed calls name one)


class ScriptedEngine:
    """An `r3.engines.base.Engine` that answers from a script instead of a model: for testing the
    reflect-retry core, the server and the gate in milliseconds.

    Prompts are encoded by `byte_tokenizer` (one token per byte), and an answer is generated as its
    tokens: cut at the first stop string it completes within `max_tokens` (finish "stop"), else at
    `max_tokens` or what the context leaves (finish "length"), else whole (finish "stop"), as an engine
    cuts a model's text. Streamed one chunk per token (a character's bytes together); the first chunk
    carries the prompt's length. The script is certain of its answer: each token's logprob is 0, and
    its only alternative (with `top_logprobs`) is itself. Sampling settings other than `max_tokens` and
    `stop` change nothing. It cannot constrain decoding (`supports_json_schema` is false) and has no
    prompt logprobs (an `EngineError`). `calls` holds every call answered, in order.

    A list script answers calls in the order they come: for concurrent calls (the gate) use a
    callable. A call the script has no answer for raises `AssertionError`, so the test fails."""

    supports_json_schema = False

    def __init__(self, script: Script, model_id: str = "scripted", max_model_len: int = 4096) -> None:
        self.model_id = model_id
        self.max_model_len = max_model_len
        self.tokenizer = byte_tokenizer()
        self.calls: list[ScriptedCall] = []
        self.ended_conversations: list[str] = []  # as `end_conversation` was told, in order
        self._answer = script if callable(script) else _in_order(script)
        self._adapters: dict[str, Path] = {}
        self._closed = False

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt, add_special_tokens=False)

    async def generate(self, prompt: Prompt, params: SamplingParams, adapter: str | None = None) -> GenerationResult:
        prompt_ids, chunks = self._generate(prompt, params, adapter)
        return GenerationResult(text="".join(c.text for c in chunks), tokens=[t for c in chunks for t in c.tokens],
                                finish_reason=chunks[-1].finish_reason, prompt_tokens=len(prompt_ids),
                                prompt_token_ids=prompt_ids)

    async def stream(self, prompt: Prompt, params: SamplingParams, adapter: str | None = None,
                     conversation: str | None = None) -> AsyncIterator[GenerationChunk]:
        for chunk in self._generate(prompt, params, adapter, conversation)[1]:
            yield chunk

    def end_conversation(self, conversation: str) -> None:
        self.ended_conversations.append(conversation)

    async def load_adapter(self, name: str, path: Path) -> None:
        if not name or name in self._adapters:
            raise EngineError(f"{name!r} cannot name an adapter, or one by that name is already loaded")
        if not Path(path).is_dir():
            raise EngineError(f"cannot load adapter {name!r} from {path}: no such folder")
        self._adapters[name] = Path(path)

    async def unload_adapter(self, name: str) -> None:
        if self._adapters.pop(name, None) is None:
            raise UnknownAdapterError(f"no adapter named {name!r} is loaded")

    def adapters(self) -> dict[str, Path]:
        return dict(self._adapters)

    async def close(self) -> None:
        self._closed = True

    def _generate(self, prompt: Prompt, params: SamplingParams, adapter: str | None,
                  conversation: str | None = None) -> tuple[list[int], list[GenerationChunk]]:
        """The prompt's ids and the chunks of the script's answer to it. Raises as the real engines do."""
        if self._closed:
            raise EngineError("the engine is shut down")
        if adapter is not None and adapter not in self._adapters:
            raise UnknownAdapterError(f"no adapter named {adapter!r} is loaded")
        if params.json_schema is not None or params.structural_tag is not None or params.prompt_logprobs is not None:
            raise EngineError("the scripted engine cannot constrain decoding or report prompt logprobs")
        prompt_ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not prompt_ids:
            raise EngineError("the prompt is empty")
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise PromptTooLongError(
                f"the prompt has {len(prompt_ids)} tokens; this model's context is {self.max_model_len}")
        text = self.tokenizer.decode(prompt_ids)
        answer = self._answer(text, adapter)
        self.calls.append(ScriptedCall(text, adapter, params, answer, conversation))
        ids, finish = self._cut(answer, params.stop, min(params.max_tokens, room))
        return prompt_ids, self._chunks(ids, finish, len(prompt_ids), params.top_logprobs)

    def _cut(self, answer: str, stops: tuple[str, ...], limit: int) -> tuple[list[int], FinishReason]:
        """The ids generated for `answer` within `limit` tokens, and why generation ended."""
        ends = [(answer.find(stop) + len(stop), answer.find(stop)) for stop in stops if stop and stop in answer]
        if ends:
            end, start = min(ends)  # generation stops at the token that completes a stop string
            if len(self.encode(answer[:end])) <= limit:
                return self.encode(answer[:start]), "stop"
        ids = self.encode(answer)
        return (ids[:limit], "length") if len(ids) > limit else (ids, "stop")

    def _chunks(self, ids: list[int], finish: FinishReason, prompt_length: int, top: int) -> list[GenerationChunk]:
        chunks: list[GenerationChunk] = []
        sent, tokens = "", []
        for i, token_id in enumerate(ids):
            token = self.tokenizer.decode([token_id])
            chosen = TokenLogprob(token_id, token, 0.0)
            tokens.append(TokenLogprob(token_id, token, 0.0, (chosen,) if top else ()))
            text, last = self.tokenizer.decode(ids[:i + 1]), i == len(ids) - 1
            if text.endswith("\ufffd") and not last:
                continue  # part of a character: its text comes with the token that completes it
            chunks.append(GenerationChunk(text[len(sent):], tokens, finish if last else None))
            sent, tokens = text, []
        chunks = chunks or [GenerationChunk("", [], finish)]
        chunks[0].prompt_length = prompt_length
        return chunks


def _in_order(answers: Iterable[str]) -> Callable[[str, str | None], str]:
    remaining = iter(answers)

    def answer(prompt: str, adapter: str | None) -> str:
        reply = next(remaining, None)
        assert reply is not None, f"the script has no answer left for {prompt!r} (adapter {adapter!r})"
        return reply

    return answer
