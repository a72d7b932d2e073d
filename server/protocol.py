"""OpenAI wire schemas: what crosses the HTTP boundary, and nothing else.

Requests are strict (`extra="forbid"`): a misspelled parameter is a 400 that names it, not a
silently ignored setting. Booleans must be JSON booleans (`"yes"` or `1` is no `true`). Parameters
OpenAI defines but R3 does not implement are accepted only at their neutral values. A free-form JSON
value (a tool's `parameters`, a `response_format` schema, a `verifier`) may nest at most
`verifiers.MAX_JSON_DEPTH` arrays and objects, and a schema must be a valid JSON Schema.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from verifiers import depth_problem, schema_problem


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _a_valid_schema(schema: dict[str, Any]) -> dict[str, Any]:
    problem = schema_problem(schema)
    if problem is not None:
        raise ValueError(problem)
    return schema


def _not_too_deep(value: dict[str, Any]) -> dict[str, Any]:
    problem = depth_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# A JSON Schema a request carries: valid, and shallow enough to check and to apply.
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
    name: str | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _says_something(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self


class ToolMessage(_Strict):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


Message = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]


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


class ChatCompletionRequest(_Strict):
    model: str
    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1, description="A 64-bit signed integer (as vLLM's).")
    logprobs: StrictBool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    n: Literal[1] = 1
    presence_penalty: Literal[0] = 0
    frequency_penalty: Literal[0] = 0
    user: str | None = None
    # R3's extensions (the OpenAI SDKs send them through `extra_body`):
    verifier: JsonObject | None = Field(None, description="How to judge an answer; see the verifiers package.")
    reflect: ReflectOptions = Field(default_factory=ReflectOptions)
    store: StrictBool = Field(True, description="false: keep no prompt or completion text, only metrics.")

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences")
        if stop == "" or (isinstance(stop, list) and "" in stop):
            raise ValueError("stop sequences must not be empty")
        return stop

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs: true")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options requires stream: true")
        return self

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


# ---------------------------------------------------------------- response


def now() -> int:
    return int(time.time())


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut]


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: ChoiceLogprobs | None = None


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


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCall


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    r3: R3Info | None = None


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
