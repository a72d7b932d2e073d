"""The engine interface: what the server and the trainer ask of an inference engine.

An engine turns a rendered prompt into a completion, streamed or whole, with the token ids and
per-token logprobs the trainer needs, optionally through a named LoRA adapter. Chat rendering and
tool-call parsing happen outside (`r3.chat_format`), so both engines share them.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable, Sequence
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


# A prompt: its text (`Engine.encode` makes its token ids), or token ids, read as given.
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
    """A token with its logprob under the model's raw distribution (before logit bias, penalties,
    temperature and top-p; under a grammar, over the tokens the grammar allows, as vLLM's)."""

    token_id: int
    token: str  # its text alone (U+FFFD for part of a character: `r3.engines.token_bytes` has its bytes)
    logprob: float
    # The most likely tokens in its place, best first, each with its own id (and no `top` of its own);
    # only finite ones (`alternatives`): a token a grammar forbids is no alternative.
    top: tuple[TokenLogprob, ...] = ()


def alternatives(tokenizer: Any, ids: Iterable[int], logprobs: Iterable[float]) -> tuple[TokenLogprob, ...]:
    """`ids` with their `logprobs` (ranked, best first) as a token's `top`, less those whose logprob is
    not finite: the grammar of a constrained request gives a token it forbids −inf, and vLLM's
    structured outputs report only allowed alternatives (JSON has no −inf either)."""
    return tuple(TokenLogprob(i, tokenizer.decode([i]), logprob) for i, logprob in zip(ids, logprobs)
                 if math.isfinite(logprob))


def tokens_making(tokenizer: Any, ids: Sequence[int], text: str, at_least: int = 0) -> int:
    """How many of the generated `ids` (at least `at_least`) make `text`, a prefix of their decoded
    text: the fewest whose decoding begins with it (one decoding per token looked at past `at_least`).

    At a stop string's cut this keeps a token that is part before the cut, part in the stop string,
    as vLLM does (its detokenizer keeps the token that completes a stop string: `check_stop_strings`),
    and drops a token wholly in the stop string, which vLLM would keep: the logprobs cover exactly the
    text returned. While streaming, the pieces of a character count once the character is in `text`."""
    count = at_least
    while count < len(ids) and not tokenizer.decode(ids[:count], skip_special_tokens=True).startswith(text):
        count += 1
    return count


@dataclass
class GenerationChunk:
    """Text and tokens generated since the previous chunk; the last chunk has a finish reason. Its
    tokens are those that make its text (`tokens_making`): the text and the tokens of all chunks agree,
    a stop string's cut included."""

    text: str
    tokens: list[TokenLogprob]
    finish_reason: FinishReason | None = None
    # In the first chunk, with `SamplingParams.prompt_logprobs`: the prompt's tokens after its first.
    prompt_tokens: list[TokenLogprob] | None = None
    # In the first chunk (every engine sends it): the prompt's length in tokens, as the engine encoded it.
    prompt_length: int | None = None
    # In the first chunk (every engine sends it): how many of the prompt's first tokens had their keys and
    # values reused from the prefix cache instead of computed (vLLM's `num_cached_tokens`; OpenAI's
    # `usage.prompt_tokens_details.cached_tokens`).
    cached_tokens: int | None = None


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

    def stream(self, prompt: Prompt, params: SamplingParams, adapter: str | None = None,
               conversation: str | None = None) -> AsyncIterator[GenerationChunk]:
        """The completion as it is generated; stopping iteration early cancels the request. A turn of
        `conversation` (a request's attempts, reflections and retries: its episode id) keeps what the
        engine caches of it for the next turn until `end_conversation`."""
        ...

    def end_conversation(self, conversation: str) -> None:
        """`conversation`'s request has ended: what was cached of its turns is no longer held for it."""
        ...

    async def load_adapter(self, name: str, path: Path) -> None:
        """Register adapter `name` from folder `path` (EngineError if it cannot be served). Any number may
        be registered; the engine holds at most `R3_MAX_RESIDENT_ADAPTERS` in memory, evicting the least
        recently used one no running request uses, and loads an evicted one again when a request asks for it."""
        ...

    async def unload_adapter(self, name: str) -> None: ...

    def adapters(self) -> dict[str, Path]:
        """Registered adapters by name, resident in memory or not: each is served."""
        ...

    def encode(self, prompt: str) -> list[int]:
        """`prompt`'s token ids as the engine reads a text prompt (the chat template already holds
        every special token, so none is added). Passing them instead of the text skips a second pass."""
        ...

    async def close(self) -> None: ...
