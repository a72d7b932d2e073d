"""OpenAI wire schemas: what crosses the HTTP boundary, and nothing else.

Every field of OpenAI's chat completion request is accepted (the fields are those of the `openai`
SDK's `CompletionCreateParams`); those R3 cannot honour (`metadata`, `service_tier`,
`reasoning_effort`, ...) are accepted and have no effect. An explicit `null` is the field's default,
as OpenAI types them "... or null" and client wrappers send nulls. A field outside OpenAI's request
and R3's extensions is a 400 that names it (`extra="forbid"`), so a misspelled parameter is never a
silently ignored setting. Nothing is coerced (`verifiers.base.ClientInput`, the base of every
request model): a boolean must be a JSON boolean (`"yes"` or `1` is no `true`), a number a JSON
number (`"0"` or `true` is none; an integer is a number, `5.0` is not an integer). No number may be
NaN or infinite, anywhere in the body (JSON has none; the server refuses them before this: see
`server.errors.refuse_unsound_body`). A free-form
JSON value (a tool's `parameters`, a `response_format` schema, a `verifier`) may nest at most
`verifiers.MAX_JSON_DEPTH` arrays and objects, and a schema must be a valid JSON Schema.
Responses follow OpenAI's: a stream chunk always carries `finish_reason` and `logprobs` (null until
they have a value), and with `include_usage` every chunk carries `usage` (null but in the last).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StrictBool,
    ValidationInfo,
    field_validator,
    model_validator,
)

from verifiers import depth_problem, schema_shape_problem
from verifiers.base import ClientInput

_Strict = ClientInput  # every request model: unknown fields refused, nothing coerced

SHOWN_CHARS = 100  # a client's value quoted back in an error message is cut to about this long


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """A client's value as an error message quotes it (`repr`), cut to `limit` characters: a
    10,000-character model name is not echoed whole."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _a_valid_schema(schema: dict[str, Any]) -> dict[str, Any]:
    # Only the quick checks: checking it against its metaschema takes ~6 µs a byte, too long for the
    # event loop, so the route does that in a worker thread (server.routes.chat._checked_schemas).
    problem = schema_shape_problem(schema)
    if problem is not None:
        raise ValueError(problem)
    return schema


def _not_too_deep(value: dict[str, Any]) -> dict[str, Any]:
    problem = depth_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# A JSON Schema a request carries: shallow enough to check and to apply (its validity is checked by the route).
JsonSchema = Annotated[dict[str, Any], AfterValidator(_a_valid_schema)]
# Any other free-form JSON object a request carries: shallow enough to walk.
JsonObject = Annotated[dict[str, Any], AfterValidator(_not_too_deep)]


# ---------------------------------------------------------------- request


class TextPart(_Strict):
    type: Literal["text"]
    text: str


Content = str | list[TextPart]


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCallIn(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Strict):
    role: Literal["system", "developer"]
    content: Content
    name: str | None = None


class UserMessage(_Strict):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(_Strict):
    role: Literal["assistant"]
    content: Content | None = None
    tool_calls: list[ToolCallIn] | None = None
    function_call: FunctionCall | None = None  # deprecated by OpenAI; read as a tool call
    name: str | None = None
    refusal: str | None = None
    audio: JsonObject | None = None  # a reference to OpenAI's stored audio; no effect

    @model_validator(mode="after")
    def _says_something(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls and self.function_call is None:
            raise ValueError("an assistant message needs content or tool_calls")
        return self


class ToolMessage(_Strict):
    role: Literal["tool"]
    content: Content
    tool_call_id: str
    name: str | None = None  # not in OpenAI's type, but clients send it (instructor's retries do); no effect


class FunctionMessage(_Strict):
    """A function's result, in the form OpenAI deprecated for `tool` messages; read as one."""

    role: Literal["function"]
    name: str
    content: Content | None


Message = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage,
                    Field(discriminator="role")]


class FunctionDefinition(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: JsonSchema | None = None
    strict: StrictBool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class AllowedTools(_Strict):
    mode: Literal["auto", "required"]
    tools: list[NamedToolChoice] = Field(min_length=1)


class AllowedToolsChoice(_Strict):
    """Only these of the tools may be called: R3 offers the model only them."""

    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


class JsonSchemaFormat(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    description: str | None = None
    schema_: JsonSchema = Field(default_factory=dict, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is given exactly when type is json_schema")
        return self


class StreamOptions(_Strict):
    include_usage: StrictBool = False


class ReflectOptions(_Strict):
    max_retries: int = Field(1, ge=0, le=3, description="Reflect-and-retry rounds after a failed attempt; 0 only judges.")


MAX_CHOICES = 8  # `n`: each choice is a generation (and an episode) of its own
MAX_LEGACY_CHOICES = 256  # prompts × n of one legacy completion request (an evaluation tool's batch)


def _default_for_null(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """An explicit null is the field's default: OpenAI types these "... or null", and clients send nulls."""
    if value is None:
        return cls.model_fields[info.field_name].get_default(call_default_factory=True)
    return value


def _token_ids_and_biases(cls: type[BaseModel], bias: dict[str, float] | None) -> dict[str, float] | None:
    for token, value in (bias or {}).items():
        if not token.isdigit():
            raise ValueError(f"{shown(token)} is not a token id")
        if not -100 <= value <= 100:
            raise ValueError(f"the bias of token {token} is {value}; biases are from -100 to 100")
    return bias


class _Stops(_Strict):
    """`stop` as both completion requests take it: a string or at most 4, none empty (OpenAI's limit)."""

    stop: str | list[str] | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences")
        if stop == "" or (isinstance(stop, list) and "" in stop):
            raise ValueError("stop sequences must not be empty")
        return stop

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_Stops):
    model: str
    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | AllowedToolsChoice | None = None
    parallel_tool_calls: StrictBool = Field(True, description="false: at most one tool call per answer.")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1, description="A 64-bit signed integer (as vLLM's).")
    logprobs: StrictBool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    logit_bias: dict[str, float] | None = Field(None, description="Token id (a string) -> bias added to its "
                                                                 "logit, -100 to 100.")
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    user: str | None = None
    # Accepted, no effect: what they ask for is OpenAI's own service (or output R3 cannot make).
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    modalities: list[str] | None = None
    audio: JsonObject | None = None
    prediction: JsonObject | None = None
    web_search_options: JsonObject | None = None
    moderation: JsonObject | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: JsonObject | None = None
    safety_identifier: str | None = None
    # Deprecated by OpenAI for `tools` and `tool_choice`, and read as them (the answer has `tool_calls`):
    functions: list[FunctionDefinition] | None = None
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    # R3's extensions (the OpenAI SDKs send them through `extra_body`):
    verifier: JsonObject | None = Field(None, description="How to judge an answer; see the verifiers package.")
    reflect: ReflectOptions = Field(default_factory=ReflectOptions)
    store: StrictBool = Field(True, description="false: keep no prompt or completion text, only metrics.")

    _null_is_the_default = field_validator("temperature", "top_p", "n", "presence_penalty", "frequency_penalty",
                                           "logprobs", "stream", "store", "parallel_tool_calls", "reflect",
                                           mode="before")(_default_for_null)
    _logit_bias_checked = field_validator("logit_bias")(_token_ids_and_biases)

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs: true")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options requires stream: true")
        if self.functions and (self.tools or self.tool_choice is not None):
            raise ValueError("send tools and tool_choice, or the deprecated functions and function_call, not both")
        if self.function_call is not None and not self.functions:
            raise ValueError("function_call needs functions")
        return self


class CompletionRequest(_Stops):
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
    logit_bias: dict[str, float] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    suffix: str | None = Field(None, description="Not supported (the model has no fill-in-the-middle): only null.")
    user: str | None = None

    _null_is_the_default = field_validator("temperature", "top_p", "n", "presence_penalty", "frequency_penalty",
                                           "echo", "stream", "max_tokens", mode="before")(_default_for_null)
    _logit_bias_checked = field_validator("logit_bias")(_token_ids_and_biases)

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


# ---------------------------------------------------------------- response


def now() -> int:
    return int(time.time())


def _absent_when_none(value: Any) -> bool:
    return value is None


def omitted() -> Any:
    """A field OpenAI leaves out while it has no value (a delta's unchanged parts, R3's extensions)."""
    return Field(None, exclude_if=_absent_when_none)


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]  # the token's own bytes: those of a piece of a character rejoin into it with the next


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut]


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None  # never set: R3 has no refusal channel
    tool_calls: list[ToolCallOut] | None = None


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: ChoiceLogprobs | None = None
    r3: R3Info | None = omitted()  # with n > 1: this choice's own episode (the response's `r3` is choice 0's)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AttemptReport(BaseModel):
    attempt: int
    success: bool | None  # None: no verifier judged it (or it awaits /feedback)
    detail: str | None = None
    reflection: str | None = None  # the reflection written before this attempt (absent with store: false)
    finish_reason: str


class R3Info(BaseModel):
    """R3's account of the request: which episode it is, what served it, and each attempt's verdict."""

    episode_id: str
    adapter: str  # "base" or the adapter's name
    reflected: bool
    attempts: list[AttemptReport]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    r3: R3Info | None = None


class FunctionCallDelta(BaseModel):
    name: str | None = omitted()  # in the call's first delta only
    arguments: str


class ToolCallDelta(BaseModel):
    """A piece of a streamed tool call: the first has its id, type and name (and arguments ""), the
    others the next piece of its arguments."""

    index: int
    id: str | None = omitted()
    type: Literal["function"] | None = omitted()
    function: FunctionCallDelta


class Delta(BaseModel):
    role: Literal["assistant"] | None = omitted()
    content: str | None = omitted()
    tool_calls: list[ToolCallDelta] | None = omitted()


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None  # null until the choice's last chunk
    logprobs: ChoiceLogprobs | None = None
    r3: R3Info | None = omitted()  # in the choice's last chunk


class _Streamed(BaseModel):
    usage: Usage | None = None  # sent only with include_usage: null but in the last chunk

    def sse(self, include_usage: bool) -> str:
        """The chunk as a server-sent event; `usage` is in every chunk with `include_usage`, else in none."""
        return f"data: {self.model_dump_json(exclude=None if include_usage else {'usage'})}\n\n"


class ChatCompletionChunk(_Streamed):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    r3: R3Info | None = omitted()  # in the last chunk (choice 0's, with n > 1)


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


class Completion(_Streamed):
    """A legacy completion, whole or (streamed) one chunk of it."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]


class FeedbackRequest(_Strict):
    episode_id: str | None = None
    completion_id: str | None = None
    success: StrictBool
    detail: str | None = Field(None, max_length=4000)
    retry: StrictBool = Field(False, description="With success: false, reflect and retry now and return the new "
                                                 "completion.")

    @model_validator(mode="after")
    def _one_id(self) -> FeedbackRequest:
        if (self.episode_id is None) == (self.completion_id is None):
            raise ValueError("give exactly one of episode_id and completion_id")
        if self.retry and self.success:
            raise ValueError("retry needs success: false")
        return self


class FeedbackReceipt(BaseModel):
    episode_id: str
    attempt: int
    success: bool
    detail: str | None


class FeedbackOut(BaseModel):
    success: bool
    detail: str | None
    received_at: float


class AttemptOut(BaseModel):
    attempt: int
    completion_id: str
    content: str | None
    tool_calls: list[dict[str, Any]] | None
    reflection: str | None  # the reflection written before this attempt
    success: bool | None
    detail: str | None
    feedback: FeedbackOut | None
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    reflection_tokens: int
    latency_s: float


class EpisodeOut(BaseModel):
    id: str
    object: Literal["episode"] = "episode"
    created_at: float
    model: str
    adapter: str  # "base" or the adapter's name
    task_kind: str
    verifier: dict[str, Any] | None
    store: bool
    messages: list[dict[str, Any]] | None
    tools: list[dict[str, Any]] | None
    outcome: bool | None
    attempts: list[AttemptOut]


class EpisodePage(BaseModel):
    object: Literal["list"] = "list"
    data: list[EpisodeOut]
    next_cursor: str | None  # pass as `after` for the next page; null on the last one


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "r3"
    root: str
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
