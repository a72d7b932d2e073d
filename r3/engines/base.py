"""The engine interface: what the server and the trainer ask of an inference engine.

An engine turns a rendered prompt into a completion, streamed or whole, with the token ids and
per-token logprobs the trainer needs, optionally through a named LoRA adapter. Chat rendering and
tool-call parsing happen outside (`r3.chat_format`), so both engines share them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length", "tool_calls"]

# Temperatures below this sample greedily, as in vLLM (`_SAMPLING_EPS` in vllm/sampling_params.py):
# dividing logits by a smaller one can overflow them to inf, and the distribution to nan.
GREEDY_BELOW = 1e-5


class EngineError(Exception):
    """A request the engine cannot serve; the message is safe to show to the client."""


class UnknownAdapterError(EngineError):
    pass


class PromptTooLongError(EngineError):
    pass


# A prompt: its text, or its token ids as `Engine.encode` makes them of the text.
Prompt = str | list[int]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0  # 0 (or under GREEDY_BELOW) means greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int = 0  # alternatives reported per token (the chosen token's logprob is always kept)
    # The completion must be JSON valid under this schema; only engines with `supports_json_schema`.
    json_schema: dict[str, Any] | None = None
    # The completion must match this structural tag (xgrammar's `StructuralTag` as JSON, as vLLM takes
    # it; it wins over `json_schema`); only engines with `supports_json_schema`.
    structural_tag: dict[str, Any] | None = None
    # OpenAI's `parallel_tool_calls`: false allows one tool call at most. It shapes the structural tag
    # (`r3.structured_output`); kept here so a recorded request replays with it.
    parallel_tool_calls: bool = True
    # OpenAI's sampling adjustments, as vLLM applies them: after logprobs are taken, before temperature.
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    presence_penalty: float = 0.0  # subtracted once from the logit of every token already generated
    frequency_penalty: float = 0.0  # subtracted from a token's logit once per time it was generated
    # Report the logprob of each prompt token after the first too, with this many alternatives (the
    # first chunk's `prompt_tokens`); None: not computed.
    prompt_logprobs: int | None = None

    @property
    def greedy(self) -> bool:
        """Whether each token is the most likely one: temperature 0, or one under `GREEDY_BELOW`."""
        return self.temperature < GREEDY_BELOW


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float  # under the model's raw distribution (before temperature and top-p)
    top: tuple[tuple[str, float], ...] = ()


@dataclass
class GenerationChunk:
    """Text and tokens generated since the previous chunk; the last chunk has a finish reason."""

    text: str
    tokens: list[TokenLogprob]
    finish_reason: FinishReason | None = None
    # In the first chunk, with `SamplingParams.prompt_logprobs`: the prompt's tokens after its first.
    prompt_tokens: list[TokenLogprob] | None = None
    # In the first chunk (every engine sends it): the prompt's length in tokens, as the engine encoded it.
    prompt_length: int | None = None


@dataclass
class GenerationResult:
    text: str
    tokens: list[TokenLogprob]
    finish_reason: FinishReason
    prompt_tokens: int
    prompt_token_ids: list[int] = field(repr=False, default_factory=list)

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)

    @property
    def token_ids(self) -> list[int]:
        return [token.token_id for token in self.tokens]


class Engine(Protocol):
    model_id: str
    max_model_len: int
    tokenizer: Any
    # Can constrain decoding (`SamplingParams.json_schema` and `structural_tag`).
    supports_json_schema: bool

    async def generate(self, prompt: Prompt, params: SamplingParams, adapter: str | None = None) -> GenerationResult:
        """The whole completion of `prompt` (`adapter=None` is the base model)."""
        ...

    def stream(self, prompt: Prompt, params: SamplingParams, adapter: str | None = None) -> AsyncIterator[GenerationChunk]:
        """The completion as it is generated; stopping iteration early cancels the request."""
        ...

    async def load_adapter(self, name: str, path: Path) -> None: ...

    async def unload_adapter(self, name: str) -> None: ...

    def adapters(self) -> dict[str, Path]:
        """Loaded adapters by name."""
        ...

    def encode(self, prompt: str) -> list[int]:
        """`prompt`'s token ids as the engine reads a text prompt (the chat template already holds
        every special token, so none is added). Passing them instead of the text skips a second pass."""
        ...

    async def close(self) -> None: ...
