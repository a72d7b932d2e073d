"""OpenAI wire schemas: what crosses the HTTP boundary, and nothing else.

Every field of OpenAI's chat completion request is accepted, and every message and content part
(the fields are those of the `openai` SDK's `CompletionCreateParams` and the types it names);
those R3 cannot honour (`metadata`, `service_tier`, `reasoning_effort`, ...) are accepted and have
no effect, and a part R3's models cannot read (an image, audio, a file) is refused by the route,
saying so. An explicit `null` is the field's default, as OpenAI types them "... or null" and client
wrappers send nulls. A field outside OpenAI's request and R3's extensions, anywhere in the body, is
ignored, as vLLM ignores it, but never silently: the server names it in the `X-R3-Ignored-Fields`
header and a logged warning (`take_unknown_fields`), and with `R3_STRICT_REQUEST_FIELDS` refuses it
(400 naming it). A verifier spec stays strict (`verifiers.base.ClientInput`): a misspelt field
there would change how an answer is judged. Nothing is coerced (`RequestPart`, the base of every
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

import re
import time
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    StrictBool,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from verifiers import depth_problem, schema_shape_problem
from verifiers.base import ClientInput
from verifiers.json_text import JsonTextError, JsonTooDeep, read_json

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


class RequestPart(ClientInput):
    """The base of every model a request body is read into: nothing is coerced (`ClientInput`), and
    a field the model does not define is kept aside (`model_extra`) rather than refused, so that the
    server can name it and drop it (`take_unknown_fields`), or refuse it when it is strict about
    fields (`R3_STRICT_REQUEST_FIELDS`)."""

    model_config = ConfigDict(extra="allow")


def take_unknown_fields(model: BaseModel, path: str = "") -> list[str]:
    """Removes every field that `model`'s models do not define, at any depth, and returns their
    paths as an error's `param` names them (`["temprature", "messages.0.foo"]`)."""
    unknown = [_child(path, key) for key in model.model_extra or ()]
    if model.model_extra:
        model.model_extra.clear()
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        where = _child(path, field.alias or name)
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            if isinstance(item, BaseModel):
                unknown += take_unknown_fields(item, where if index is None else f"{where}.{index}")
    return unknown


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class CacheBreakpoint(RequestPart):
    mode: Literal["explicit"]


class _Part(RequestPart):
    prompt_cache_breakpoint: CacheBreakpoint | None = None  # OpenAI's prompt caching; no effect


class TextPart(_Part):
    type: Literal["text"]
    text: str


class RefusalPart(RequestPart):
    """What an assistant said when it refused (an earlier turn): read as its text."""

    type: Literal["refusal"]
    refusal: str


class ImageURL(RequestPart):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Part):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(RequestPart):
    data: str
    format: Literal["wav", "mp3"]


class AudioPart(_Part):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileData(RequestPart):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FilePart(_Part):
    type: Literal["file"]
    file: FileData


# The parts of a message's content each role may send, as OpenAI defines them. R3's models read
# text: the route refuses (400, saying so) an image, audio or file part, which OpenAI allows a user.
TextContent = str | list[TextPart]
UserContent = str | list[Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]]
AssistantContent = str | list[Annotated[TextPart | RefusalPart, Field(discriminator="type")]]
UNREADABLE_PARTS = ("image_url", "input_audio", "file")


class FunctionCall(RequestPart):
    name: str
    arguments: str


class ArgumentsCall(FunctionCall):
    """A call in a client's messages: its `arguments` may be any text (a model's invalid JSON,
    sent back), but JSON in them nests no deeper than any JSON a request carries."""

    @field_validator("arguments")
    @classmethod
    def _readable_if_json(cls, arguments: str) -> str:
        try:
            read_json(arguments)
        except JsonTooDeep as error:
            raise ValueError(str(error)) from None
        except JsonTextError:
            pass  # not JSON: shown to the model as it was sent
        return arguments


class ToolCallIn(RequestPart):
    id: str
    type: Literal["function"] = "function"
    function: ArgumentsCall


class CustomCall(RequestPart):
    name: str
    input: str


class CustomToolCallIn(RequestPart):
    """A call of a custom (free-text) tool, which R3 does not offer: the route refuses it, saying so."""

    id: str
    type: Literal["custom"]
    custom: CustomCall


def _tool_call_kind(call: Any) -> str:
    """A tool call's `type`; a call without one is a function call (as clients that omit it mean)."""
    return (call.get("type") if isinstance(call, dict) else getattr(call, "type", None)) or "function"


AnyToolCall = Annotated[Annotated[ToolCallIn, Tag("function")] | Annotated[CustomToolCallIn, Tag("custom")],
                        Discriminator(_tool_call_kind)]


class SystemMessage(RequestPart):
    role: Literal["system", "developer"]
    content: TextContent
    name: str | None = None


class UserMessage(RequestPart):
    role: Literal["user"]
    content: UserContent
    name: str | None = None


class AudioReference(RequestPart):
    id: str


class AssistantMessage(RequestPart):
    role: Literal["assistant"]
    content: AssistantContent | None = None
    tool_calls: list[AnyToolCall] | None = None
    function_call: ArgumentsCall | None = None  # deprecated by OpenAI; read as a tool call
    name: str | None = None
    refusal: str | None = None  # read as the content, when there is none
    audio: AudioReference | None = None  # OpenAI's stored audio of an earlier answer; R3 cannot read it

    @model_validator(mode="after")
    def _says_something(self) -> AssistantMessage:
        if self.content is None and self.refusal is None and not self.tool_calls and self.function_call is None:
            raise ValueError("an assistant message needs content, refusal, tool_calls or function_call (R3 "
                             "cannot read a stored audio answer: send its transcript as content)")
        return self


class ToolMessage(RequestPart):
    role: Literal["tool"]
    content: TextContent
    tool_call_id: str
    name: str | None = None  # not in OpenAI's type, but clients send it (instructor's retries do); no effect


class FunctionMessage(RequestPart):
    """A function's result, in the form OpenAI deprecated for `tool` messages; read as one."""

    role: Literal["function"]
    name: str
    content: str | None


Message = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage,
                    Field(discriminator="role")]


class FunctionDefinition(RequestPart):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: JsonSchema | None = None
    strict: StrictBool | None = None


class Tool(RequestPart):
    type: Literal["function"]
    function: FunctionDefinition


class CustomTool(RequestPart):
    """A custom (free-text) tool: R3 offers its models function tools only; the route refuses it, saying so."""

    type: Literal["custom"]
    custom: JsonObject


AnyTool = Annotated[Tool | CustomTool, Field(discriminator="type")]


class NamedFunction(RequestPart):
    name: str


class NamedToolChoice(RequestPart):
    type: Literal["function"]
    function: NamedFunction


class NamedCustomToolChoice(RequestPart):
    """A custom tool's name as `tool_choice`: refused with custom tools."""

    type: Literal["custom"]
    custom: NamedFunction


class AllowedTools(RequestPart):
    mode: Literal["auto", "required"]
    tools: list[NamedToolChoice] = Field(min_length=1)


class AllowedToolsChoice(RequestPart):
    """Only these of the tools may be called: R3 offers the model only them."""

    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


ToolChoice = (Literal["none", "auto", "required"]
              | Annotated[NamedToolChoice | NamedCustomToolChoice | AllowedToolsChoice, Field(discriminator="type")])


class JsonSchemaFormat(RequestPart):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    description: str | None = None
    schema_: JsonSchema = Field(default_factory=dict, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(RequestPart):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is given exactly when type is json_schema")
        return self


class StreamOptions(RequestPart):
    include_usage: StrictBool = False
    include_obfuscation: StrictBool | None = None  # OpenAI's padding of chunks against side channels; no effect


class ReflectOptions(RequestPart):
    max_retries: int = Field(1, ge=0, le=3, description="Reflect-and-retry rounds after a failed attempt; 0 only judges.")


MAX_CHOICES = 8  # `n`: each choice is a generation (and an episode) of its own
MAX_LEGACY_CHOICES = 256  # prompts × n of one legacy completion request (an evaluation tool's batch)


def _default_for_null(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """An explicit null is the field's default: OpenAI types these "... or null", and clients send nulls."""
    if value is None:
        return cls.model_fields[info.field_name].get_default(call_default_factory=True)
    return value


_TOKEN_ID = re.compile(r"[0-9]{1,18}")  # ASCII digits only: `str.isdigit` also takes "²" and "١", which `int` does not


def _token_id(key: Any) -> int:
    if not isinstance(key, str) or not _TOKEN_ID.fullmatch(key):
        raise ValueError(f"{shown(key)} is not a token id: write a token id in ASCII digits (at most 18)")
    return int(key)


def _bias(value: float) -> float:
    if not -100 <= value <= 100:
        raise ValueError(f"a bias of {value}: biases are from -100 to 100")
    return value


# `logit_bias` as both completion requests take it: token id (a JSON key, so a string) -> bias added
# to its logit, -100 to 100; read as {int: float}. Whether each id is in the model's vocabulary is
# the route's check (`server.completions.logit_bias_pairs`), which knows the model.
LogitBias = Annotated[
    dict[Annotated[int, PlainValidator(_token_id), WithJsonSchema({"type": "string", "pattern": "^[0-9]{1,18}$"})],
         Annotated[float, AfterValidator(_bias)]],
    Field(description="Token id (a string of ASCII digits) -> bias added to its logit, -100 to 100."),
]


class _Stops(RequestPart):
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
    tools: list[AnyTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool = Field(True, description="false: at most one tool call per answer.")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1, description="A 64-bit signed integer (as vLLM's).")
    logprobs: StrictBool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    logit_bias: LogitBias | None = None
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
    logit_bias: LogitBias | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    suffix: str | None = Field(None, description="Not supported (the model has no fill-in-the-middle): only null.")
    user: str | None = None

    _null_is_the_default = field_validator("temperature", "top_p", "n", "presence_penalty", "frequency_penalty",
                                           "echo", "stream", "max_tokens", mode="before")(_default_for_null)

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


class FeedbackRequest(RequestPart):
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
