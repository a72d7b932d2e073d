"""`POST /v1/chat/completions`'s wire models: the request (every field, message and content part of
OpenAI's `CompletionCreateParams`, and R3's extensions), and the response, whole or streamed.

What every request model shares (no coercion, unknown fields set aside, nulls read as defaults) is
`server.protocol`'s. The request knows what it asks of R3: its conversation (`conversation`), the
tools offered and the choice among them (`tools_and_choice`), the JSON Schemas it carries
(`schemas`), and, once the route has checked them with the model, the task (`to_task`) and the
sampling (`sampling_params`) it becomes. A part R3's models cannot read (an image, audio, a file)
or a custom tool is refused by `refuse_unreadable`, saying so.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Discriminator, Field, StrictBool, Tag, field_validator, model_validator

from r3.engines.base import SamplingParams
from r3.reflect_retry import ChatTask
from server.errors import APIError
from server.protocol import (
    MAX_CHOICES,
    JsonObject,
    JsonSchema,
    LogitBias,
    RequestPart,
    StreamOptions,
    Streamed,
    Usage,
    WithStops,
    default_for_null,
    omitted,
    shown,
)
from verifiers import VerifierSpec
from verifiers.json_text import JsonTextError, JsonTooDeep, read_json

# ---------------------------------------------------------------- request


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


class ReflectOptions(RequestPart):
    max_retries: int = Field(1, ge=0, le=3, description="Reflect-and-retry rounds after a failed attempt; 0 only judges.")


def _openai_metadata(value: dict[str, str]) -> dict[str, str]:
    """OpenAI's limits on `metadata` (its API reference): at most 16 pairs, keys of at most 64
    characters, values of at most 512."""
    if len(value) > 16:
        raise ValueError(f"at most 16 metadata pairs, not {len(value)}")
    for key, text in value.items():
        if len(key) > 64 or len(text) > 512:
            raise ValueError(f"metadata keys are at most 64 characters and values at most 512 ({shown(key)})")
    return value


Metadata = Annotated[dict[str, str], AfterValidator(_openai_metadata)]


class ChatCompletionRequest(WithStops):
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
    metadata: Metadata | None = Field(None, description="Up to 16 pairs, as OpenAI takes them; `category` names "
                                                        "the request's task family, which the gate checks for "
                                                        "forgetting on its own.")
    # Accepted, no effect: what they ask for is OpenAI's own service (or output R3 cannot make).
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
                                           mode="before")(default_for_null)

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



    @property
    def asked_max_tokens(self) -> tuple[str, int | None]:
        """The length limit asked for, with its param: `max_completion_tokens`, else `max_tokens`."""
        if self.max_completion_tokens:
            return "max_completion_tokens", self.max_completion_tokens
        return "max_tokens", self.max_tokens

    def refuse_unreadable(self) -> None:
        """Refuses (`APIError` 400, code `unsupported_value`, naming it) what OpenAI defines but R3's
        models cannot take: image, audio and file parts, and custom (free-text) tools, their calls and choice."""
        for i, message in enumerate(self.messages):
            parts = message.content if isinstance(message.content, list) else []
            if unreadable := [j for j, part in enumerate(parts) if part.type in UNREADABLE_PARTS]:
                where = f"messages.{i}.content.{unreadable[0]}"
                raise APIError(400, f"{where}: {parts[unreadable[0]].type} parts are not supported: this model reads "
                               "text only", param=where, code="unsupported_value")
            calls = getattr(message, "tool_calls", None) or []
            if custom := [j for j, call in enumerate(calls) if call.type == "custom"]:
                where = f"messages.{i}.tool_calls.{custom[0]}"
                raise APIError(400, f"{where}: custom tool calls are not supported: R3 offers its models function "
                               "tools only", param=where, code="unsupported_value")
        if custom := [i for i, tool in enumerate(self.tools or []) if tool.type == "custom"]:
            raise APIError(400, f"tools.{custom[0]}: custom tools are not supported: R3 offers its models function "
                           "tools only", param=f"tools.{custom[0]}", code="unsupported_value")
        if getattr(self.tool_choice, "type", None) == "custom":
            raise APIError(400, "tool_choice: custom tools are not supported: R3 offers its models function tools only",
                           param="tool_choice", code="unsupported_value")

    def conversation(self) -> list[dict[str, Any]]:
        """The messages as the conversation holds them, as plain JSON (`_message`)."""
        return [_message(message.model_dump(exclude_none=True)) for message in self.messages]

    def tools_and_choice(self) -> tuple[list[dict[str, Any]] | None, str | dict[str, Any] | None]:
        """The tools the model is offered and the `tool_choice` it answers under, as plain JSON (the
        deprecated `functions` and `function_call` are read as them). With `allowed_tools`, only the
        allowed tools are offered, under its mode. Raises `APIError` (400) for a choice that names no
        offered tool."""
        offered = self.tools or [Tool(type="function", function=function) for function in self.functions or []]
        tools = {tool.function.name: tool.model_dump(exclude_none=True) for tool in offered}
        choice = self.tool_choice
        if self.function_call is not None:
            choice = self.function_call if isinstance(self.function_call, str) else NamedToolChoice(
                type="function", function=self.function_call)
        if choice not in (None, "none", "auto") and not tools:
            raise APIError(400, "tool_choice needs tools", param="tool_choice")
        named = [choice.function.name] if hasattr(choice, "function") else []
        if hasattr(choice, "allowed_tools"):
            named = [allowed.function.name for allowed in choice.allowed_tools.tools]
        if unknown := [name for name in named if name not in tools]:
            raise APIError(400, f"tool_choice names {shown(unknown[0])}, which is not in tools", param="tool_choice")
        if hasattr(choice, "allowed_tools"):
            return [tools[name] for name in dict.fromkeys(named)], choice.allowed_tools.mode
        return list(tools.values()) or None, choice.model_dump() if hasattr(choice, "model_dump") else choice

    def schemas(self) -> list[tuple[str, Any]]:
        """Each JSON Schema the request carries, with its param."""
        schemas = [(f"tools.{i}.function.parameters", tool.function.parameters)
                   for i, tool in enumerate(self.tools or [])
                   if getattr(tool, "function", None) is not None and tool.function.parameters is not None]
        schemas += [(f"functions.{i}.parameters", function.parameters)
                    for i, function in enumerate(self.functions or []) if function.parameters is not None]
        if self.response_format is not None and self.response_format.json_schema is not None:
            schemas.append(("response_format.json_schema.schema", self.response_format.json_schema.schema_))
        if self.verifier is not None and self.verifier.get("type") == "json_schema" and "schema" in self.verifier:
            schemas.append(("verifier.schema", self.verifier["schema"]))
        return schemas

    def response_schema(self, constrained_decoding: bool) -> dict[str, Any] | None:
        """The JSON schema `response_format` holds the answer to. Raises `APIError` (400) when the
        engine cannot constrain decoding (`constrained_decoding` false) to enforce it."""
        response_format = self.response_format
        if response_format is None or response_format.type == "text":
            return None
        if not constrained_decoding:
            raise APIError(400, f"response_format {response_format.type} needs an engine that constrains decoding; "
                           "on this one, attach a json_schema verifier instead, and a failed answer is reflected on "
                           "and retried", param="response_format")
        if response_format.type == "json_object":
            return {"type": "object"}
        return response_format.json_schema.schema_

    def to_task(self, verifier: VerifierSpec | None) -> ChatTask:
        """The task this request asks for, judged by `verifier` (read from `verifier` and checked by the
        route), with no adapter yet (set when the request pins one) and default sampling (`sampling_params`)."""
        tools, tool_choice = self.tools_and_choice()
        return ChatTask(model=self.model, adapter=None, messages=self.conversation(), tools=tools,
                        tool_choice=tool_choice, params=SamplingParams(), verifier=verifier,
                        max_retries=self.reflect.max_retries, store_text=self.store)

    def sampling_params(self, max_tokens: int, json_schema: dict[str, Any] | None,
                        logit_bias: tuple[tuple[int, float], ...]) -> SamplingParams:
        """How each attempt samples: at most `max_tokens` tokens, held to `json_schema`, `logit_bias`
        as (token id, bias) pairs checked against the vocabulary (`server.openai.serving.logit_bias_pairs`)."""
        return SamplingParams(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, seed=self.seed,
                              stop=self.stop_sequences, top_logprobs=self.top_logprobs or 0, json_schema=json_schema,
                              logit_bias=logit_bias, presence_penalty=self.presence_penalty,
                              frequency_penalty=self.frequency_penalty, parallel_tool_calls=self.parallel_tool_calls)


def _message(message: dict[str, Any]) -> dict[str, Any]:
    """A message as the conversation holds it: OpenAI's deprecated function forms read as the tool
    forms that replaced them (a call's id is its function's name, which is how a result names it),
    and what an assistant said in refusing (a refusal part, or `refusal` without content) as its text."""
    if message["role"] == "function":
        return {"role": "tool", "tool_call_id": message["name"], "content": message.get("content") or ""}
    if call := message.pop("function_call", None):
        message["tool_calls"] = [*message.get("tool_calls", []),
                                 {"id": call["name"], "type": "function", "function": call}]
    if isinstance(message.get("content"), list):
        message["content"] = [{"type": "text", "text": part["refusal"]} if part["type"] == "refusal" else part
                              for part in message["content"]]
    if "content" not in message and "refusal" in message:
        message["content"] = message["refusal"]
    return message


# ---------------------------------------------------------------- response


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


class AttemptReport(BaseModel):
    attempt: int
    success: bool | None  # None: not judged (no verifier, the judge failed, or it awaits /feedback)
    score: float | None = None  # the verdict's score in [0, 1]
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


class ChatCompletionChunk(Streamed):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    r3: R3Info | None = omitted()  # in the last chunk (choice 0's, with n > 1)


