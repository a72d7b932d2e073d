"""`POST /v1/completions`'s wire models (OpenAI's legacy text completion): a prompt in, its
continuation out, whole or streamed; what every request model shares is `server.protocol`'s."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, StrictBool, field_validator, model_validator

from server.protocol import (
    MAX_CHOICES,
    MAX_LEGACY_CHOICES,
    LogitBias,
    StreamOptions,
    Streamed,
    WithStops,
    default_for_null,
)

class CompletionRequest(WithStops):
    """The legacy `POST /v1/completions` (OpenAI's `CompletionCreateParams`): a prompt in, its
    continuation out, as evaluation tools (lm-evaluation-harness) use it to score a model."""

    model: str
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text, texts, or token ids (read as given).")
    max_tokens: int = Field(16, ge=0, description="0 (with echo): only score the prompt.")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    best_of: int | None = Field(None, ge=1, le=MAX_CHOICES, description="Only n itself: R3 keeps every choice it makes.")
    logprobs: int | None = Field(None, ge=0, le=20, description="Alternatives reported per token.")
    echo: StrictBool = Field(False, description="The prompt comes back before the completion (with its logprobs).")
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: LogitBias | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    suffix: str | None = Field(None, description="Not supported (the model has no fill-in-the-middle): only null.")
    user: str | None = None

    _null_is_the_default = field_validator("temperature", "top_p", "n", "presence_penalty", "frequency_penalty",
                                           "echo", "stream", "max_tokens", mode="before")(default_for_null)

    @model_validator(mode="after")
    def _consistent(self) -> CompletionRequest:
        if self.suffix is not None:
            raise ValueError("suffix is not supported: this model has no fill-in-the-middle")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of must equal n: R3 returns every choice it makes")
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens 0 scores the prompt, which needs echo: true")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options requires stream: true")
        if self.prompt in ("", []) or (isinstance(self.prompt, list) and any(p in ("", []) for p in self.prompt)):
            raise ValueError("prompts must not be empty")
        prompts = len(self.prompt) if isinstance(self.prompt, list) and not isinstance(self.prompt[0], int) else 1
        if prompts * self.n > MAX_LEGACY_CHOICES:
            raise ValueError(f"at most {MAX_LEGACY_CHOICES} choices (prompts × n) in one request")
        return self



class CompletionLogprobs(BaseModel):
    """The legacy logprobs: per token, its text, logprob (null for a prompt's first token), the most
    likely alternatives, and where it starts in the choice's text."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Completion(Streamed):
    """A legacy completion, whole or (streamed) one chunk of it."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]


