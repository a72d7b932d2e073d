"""`POST /v1/responses`'s wire models: the request (OpenAI's `ResponseCreateParams` for text and
function tools, and R3's extensions), the `Response` object, and the events of its stream.

What every request model shares (no coercion, unknown fields set aside, nulls read as defaults) is
`server.protocol`'s, and the parts a chat request has too are the chat request's own models
(`server.chat.protocol`: a function's definition, a call's arguments, a JSON Schema format,
`metadata`, `reflect`), so both surfaces hold a request to the same rules. The request becomes the
chat completion request it asks for (`ResponsesRequest.chat_request`): `instructions` a system message,
then the conversation a `previous_response_id` continues, then `input`, read as messages. What R3
cannot do is refused, saying so (`refuse_unsupported`): OpenAI's built-in tools (web search, file
search, computer use, ...), parts that are not text, stored prompts, conversations, background
responses, logprobs.

A response's id names its episode: `resp_<hex>` is episode `ep_<hex>` (`response_id`, `episode_id`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, StrictBool, Tag, field_validator, model_validator

from r3.episodes import Episode
from r3.reflection import assistant_message
from server.chat.protocol import (
    ArgumentsCall,
    CacheBreakpoint,
    ChatCompletionRequest,
    FunctionDefinition,
    JsonSchemaFormat,
    Metadata,
    R3Info,
    ReflectOptions,
)
from server.errors import APIError
from server.protocol import JsonObject, RequestPart, default_for_null, omitted, shown

# OpenAI's tools that run on OpenAI's side (the `openai` SDK's `ToolParam` and `ToolChoiceTypesParam`):
# R3 runs no tool itself; a client offers function tools and runs them.
BUILT_IN_TOOLS = frozenset({
    "file_search", "computer", "computer_use", "computer_use_preview", "web_search", "web_search_2025_08_26",
    "web_search_preview", "web_search_preview_2025_03_11", "mcp", "code_interpreter", "image_generation",
    "local_shell", "shell", "apply_patch", "tool_search", "programmatic_tool_calling"})
# `include` values R3 cannot honour: the tokens' logprobs (the chat completions API returns them).
LOGPROBS = "message.output_text.logprobs"


def response_id(episode_id: str) -> str:
    """The id of the response that episode `episode_id` (`ep_<hex>`) answered: `resp_<hex>`."""
    return "resp_" + episode_id.removeprefix("ep_")


def episode_id(response_id: str) -> str | None:
    """The episode that response `response_id` answered; None for text that is no response id."""
    return "ep_" + response_id.removeprefix("resp_") if response_id.startswith("resp_") else None


def message_id(completion_id: str, number: int = 0) -> str:
    """The id of message `number` (from 0) of the answer `completion_id` names."""
    own = completion_id.removeprefix("chatcmpl-")
    return f"msg_{own}" if number == 0 else f"msg_{own}_{number}"


def call_item_id(completion_id: str, index: int) -> str:
    """The id of the output item of call `index` of the answer `completion_id` names (its `call_id`
    is the chat tool call's id, `r3.chat_format.call_id`)."""
    return f"fc_{completion_id.removeprefix('chatcmpl-')}_{index}"


def _kind(known: frozenset[str], untyped: str | None = None) -> Any:
    """A discriminator: an item's `type` when it is one of `known`, `untyped` when it has none (a
    message may leave it out), else "other", the model that refuses it by its type."""
    def kind(value: Any) -> str:
        of = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
        if of is None and untyped is not None:
            return untyped
        return of if isinstance(of, str) and of in known else "other"

    return Discriminator(kind)


# ---------------------------------------------------------------- request: input


class InputText(RequestPart):
    type: Literal["input_text"]
    text: str
    prompt_cache_breakpoint: CacheBreakpoint | None = None  # OpenAI's prompt caching; no effect


class OutputText(RequestPart):
    """What an assistant said, as an earlier response's output item holds it."""

    type: Literal["output_text"]
    text: str
    annotations: list[JsonObject] | None = None
    logprobs: list[JsonObject] | None = None


class Refusal(RequestPart):
    """What an assistant said when it refused (an earlier turn): read as its text."""

    type: Literal["refusal"]
    refusal: str


class OtherPart(RequestPart):
    """A part R3's models cannot read (an image, a file, audio): refused, saying so."""

    type: str


Part = Annotated[Annotated[InputText, Tag("input_text")] | Annotated[OutputText, Tag("output_text")]
                 | Annotated[Refusal, Tag("refusal")] | Annotated[OtherPart, Tag("other")],
                 _kind(frozenset({"input_text", "output_text", "refusal"}))]


def _text_parts(content: str | list[Any]) -> str | list[dict[str, str]]:
    """Content as a chat message holds it: text, or its parts as text parts."""
    if isinstance(content, str):
        return content
    return [{"type": "text", "text": part.refusal if part.type == "refusal" else part.text} for part in content]


class MessageItem(RequestPart):
    """A message: the user's, the system's or the developer's (instructions), or an assistant's
    (an earlier answer, as an output item or written by the client)."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Part]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: Literal["commentary", "final_answer"] | None = None


class FunctionCallItem(ArgumentsCall):
    """A function call an earlier answer made (its `name` and `arguments`, read as a chat tool call)."""

    type: Literal["function_call"]
    call_id: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    namespace: str | None = None
    caller: JsonObject | None = None


class FunctionCallOutputItem(RequestPart):
    """A function's result, for the call `call_id` names: read as a chat `tool` message."""

    type: Literal["function_call_output"]
    call_id: str
    output: str | list[Part]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    name: str | None = None
    namespace: str | None = None
    caller: JsonObject | None = None


class ReasoningItem(RequestPart):
    """A reasoning model's reasoning, from an earlier answer: R3's models do not reason, and it is left out."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[JsonObject] | None = None
    content: list[JsonObject] | None = None
    encrypted_content: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class OtherItem(RequestPart):
    """An item of a tool R3 does not have (a web search call, a computer call's output, ...) or a
    reference to a stored item: refused, saying so."""

    type: str


InputItem = Annotated[Annotated[MessageItem, Tag("message")] | Annotated[FunctionCallItem, Tag("function_call")]
                      | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
                      | Annotated[ReasoningItem, Tag("reasoning")] | Annotated[OtherItem, Tag("other")],
                      _kind(frozenset({"message", "function_call", "function_call_output", "reasoning"}),
                            untyped="message")]


# ---------------------------------------------------------------- request: tools and the rest


class FunctionTool(FunctionDefinition):
    """A function the model may call: the chat request's function definition, flat."""

    type: Literal["function"]
    allowed_callers: list[str] | None = None
    defer_loading: StrictBool | None = None
    output_schema: JsonObject | None = None


class BuiltInTool(RequestPart):
    """One of OpenAI's built-in tools (or any other tool type but `function`): refused, saying so."""

    type: str


Tool = Annotated[Annotated[FunctionTool, Tag("function")] | Annotated[BuiltInTool, Tag("other")],
                 _kind(frozenset({"function"}))]


class FunctionChoice(RequestPart):
    type: Literal["function"]
    name: str


class ToolReference(RequestPart):
    """A tool `allowed_tools` names: `{"type": "function", "name": ...}` (any other type is refused)."""

    type: str
    name: str | None = None


class AllowedToolsChoice(RequestPart):
    """Only these of the tools may be called: R3 offers the model only them."""

    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: list[ToolReference] = Field(min_length=1)


class OtherChoice(RequestPart):
    """A built-in tool, an MCP server or a custom tool as `tool_choice`: refused, saying so."""

    type: str


ToolChoice = (Literal["none", "auto", "required"]
              | Annotated[Annotated[FunctionChoice, Tag("function")]
                          | Annotated[AllowedToolsChoice, Tag("allowed_tools")] | Annotated[OtherChoice, Tag("other")],
                          _kind(frozenset({"function", "allowed_tools"}))])


class TextFormatText(RequestPart):
    type: Literal["text"]


class TextFormatJsonObject(RequestPart):
    type: Literal["json_object"]


class TextFormatJsonSchema(JsonSchemaFormat):
    """Structured outputs: the answer is JSON valid under `schema` (held by the same grammar as chat's)."""

    type: Literal["json_schema"]


class TextConfig(RequestPart):
    format: Annotated[TextFormatText | TextFormatJsonObject | TextFormatJsonSchema,
                      Field(discriminator="type")] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # for OpenAI's reasoning models; no effect


class ResponseStreamOptions(RequestPart):
    include_obfuscation: StrictBool | None = None  # OpenAI's padding of events against side channels; no effect


class ResponsesRequest(RequestPart):
    model: str
    input: str | list[InputItem]
    instructions: str | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool = Field(True, description="false: at most one function call per answer.")
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    store: StrictBool = Field(True, description="false: keep no text (the episode keeps only numbers); the "
                                                "response can be neither retrieved nor continued.")
    previous_response_id: str | None = Field(None, description="Continue this response's conversation: its "
                                                               "input and output come before `input`.")
    metadata: Metadata | None = Field(None, description="Up to 16 pairs, as OpenAI takes them; `category` names "
                                                        "the request's task family, which the gate checks for "
                                                        "forgetting on its own.")
    stream: StrictBool = False
    stream_options: ResponseStreamOptions | None = None
    truncation: Literal["auto", "disabled"] | None = Field(None, description="Accepted; R3 never truncates: an "
                                                                             "input that does not fit is a 400.")
    include: list[str] | None = Field(None, description=f"Accepted, no effect; `{LOGPROBS}` is refused.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Only 0: R3 returns no logprobs here.")
    background: StrictBool | None = Field(None, description="Only false: R3 answers within the request.")
    conversation: str | JsonObject | None = Field(None, description="Refused: continue with previous_response_id.")
    prompt: JsonObject | None = Field(None, description="Refused: OpenAI's stored prompts are OpenAI's.")
    # Accepted, no effect: what they ask for is OpenAI's own service.
    user: str | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: JsonObject | None = None
    reasoning: JsonObject | None = None
    moderation: JsonObject | None = None
    max_tool_calls: int | None = None
    context_management: list[JsonObject] | None = None
    # R3's extensions (the OpenAI SDKs send them through `extra_body`), as chat completions take them:
    verifier: JsonObject | None = Field(None, description="How to judge an answer; see the verifiers package.")
    reflect: ReflectOptions = Field(default_factory=ReflectOptions)

    _null_is_the_default = field_validator("temperature", "top_p", "stream", "store", "parallel_tool_calls",
                                           "reflect", mode="before")(default_for_null)

    @model_validator(mode="after")
    def _consistent(self) -> ResponsesRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options requires stream: true")
        return self

    def refuse_unsupported(self) -> None:
        """Refuses (`APIError` 400, naming the param; code `unsupported_value`) what OpenAI's Responses
        API offers but R3 does not: built-in tools and their items, parts that are not text, references
        to stored items, stored prompts, conversations, background responses and logprobs."""
        for i, tool in enumerate(self.tools or []):
            if isinstance(tool, BuiltInTool):
                raise _unsupported(f"tools.{i}.type", _not_a_function(tool.type))
        self._refuse_unsupported_choice()
        for i, item in enumerate(self.input if isinstance(self.input, list) else []):
            if isinstance(item, OtherItem):
                why = ("item references are not supported: send the item itself, or continue a response with "
                       "previous_response_id" if item.type == "item_reference"
                       else f"{shown(item.type)} items are not supported: R3 offers its models function tools only")
                raise _unsupported(f"input.{i}.type", why)
            field = "output" if isinstance(item, FunctionCallOutputItem) else "content"
            parts = getattr(item, field, None)
            for j, part in enumerate(parts if isinstance(parts, list) else []):
                if isinstance(part, OtherPart):
                    raise _unsupported(f"input.{i}.{field}.{j}.type",
                                       f"{shown(part.type)} parts are not supported: this model reads text only")
        if self.background:
            raise _unsupported("background", "background responses are not supported: R3 answers within the request")
        if self.conversation is not None:
            raise _unsupported("conversation", "conversations are not supported: continue a response with "
                               "previous_response_id")
        if self.prompt is not None:
            raise _unsupported("prompt", "stored prompts are not supported: send instructions and input")
        if LOGPROBS in (self.include or []) or self.top_logprobs:
            param = "include" if LOGPROBS in (self.include or []) else "top_logprobs"
            raise _unsupported(param, "logprobs are not supported on /v1/responses: POST /v1/chat/completions "
                               "returns them")

    def _refuse_unsupported_choice(self) -> None:
        choice = self.tool_choice
        if isinstance(choice, OtherChoice):
            raise _unsupported("tool_choice.type", _not_a_function(choice.type))
        for i, tool in enumerate(choice.tools if isinstance(choice, AllowedToolsChoice) else []):
            if tool.type != "function":
                raise _unsupported(f"tool_choice.tools.{i}.type", _not_a_function(tool.type))
            if tool.name is None:
                param = f"tool_choice.tools.{i}.name"
                raise APIError(400, f"{param}: name the function", param=param)

    def input_messages(self) -> list[dict[str, Any]]:
        """`input` as chat messages: text is a user message; a message item a message of its role; a
        function call joins the assistant message just before it (or starts one), as a tool call
        whose id is its `call_id`; a function's output is a `tool` message; reasoning is left out."""
        if isinstance(self.input, str):
            return [{"role": "user", "content": self.input}]
        messages: list[dict[str, Any]] = []
        for item in self.input:
            if isinstance(item, MessageItem):
                messages.append({"role": item.role, "content": _text_parts(item.content)})
            elif isinstance(item, FunctionCallItem):
                call = {"id": item.call_id, "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments}}
                if not messages or messages[-1]["role"] != "assistant":
                    messages.append({"role": "assistant", "content": None})
                messages[-1]["tool_calls"] = [*messages[-1].get("tool_calls", []), call]
            elif isinstance(item, FunctionCallOutputItem):
                messages.append({"role": "tool", "tool_call_id": item.call_id, "content": _text_parts(item.output)})
        return messages

    def chat_request(self, previous: Episode | None) -> ChatCompletionRequest:
        """The chat completion request this asks for: `instructions` as a system message, then the
        conversation of `previous` (the response `previous_response_id` names: its messages without
        its own instructions, which are not carried over, as OpenAI's; then its answer), then `input`
        (`input_messages`). Raises `APIError` (400) when that leaves nothing to answer."""
        messages = [{"role": "system", "content": self.instructions}] if self.instructions else []
        if previous is not None:
            messages += continued(previous)
        messages += self.input_messages()
        if not messages:
            raise APIError(400, "input: there is nothing to answer: send a message", param="input")
        text_format = self.text.format if self.text is not None else None
        response_format = None
        if text_format is not None:
            response_format = {"type": text_format.type}
            if isinstance(text_format, TextFormatJsonSchema):
                response_format["json_schema"] = text_format.model_dump(exclude={"type"}, exclude_none=True,
                                                                        by_alias=True)
        return ChatCompletionRequest.model_validate({
            "model": self.model, "messages": messages,
            "tools": [{"type": "function", "function": tool.model_dump(include=_FUNCTION, exclude_none=True)}
                      for tool in self.tools] if self.tools else None,
            "tool_choice": _chat_tool_choice(self.tool_choice), "parallel_tool_calls": self.parallel_tool_calls,
            "temperature": self.temperature, "top_p": self.top_p, "max_completion_tokens": self.max_output_tokens,
            "response_format": response_format, "user": self.user, "metadata": self.metadata,
            "verifier": self.verifier, "reflect": self.reflect, "store": self.store,
        })

    def settings(self) -> ResponseSettings:
        """What the response echoes of this request, as OpenAI's does."""
        return ResponseSettings(
            instructions=self.instructions, metadata=self.metadata or {},
            parallel_tool_calls=self.parallel_tool_calls, previous_response_id=self.previous_response_id,
            temperature=self.temperature, top_p=self.top_p, max_output_tokens=self.max_output_tokens,
            tool_choice=(self.tool_choice if isinstance(self.tool_choice, str) or self.tool_choice is None
                         else self.tool_choice.model_dump(exclude_none=True)) or "auto",
            tools=[tool.model_dump(exclude_none=True, by_alias=True) for tool in self.tools or []],
            text=self.text.model_dump(exclude_none=True, by_alias=True) if self.text and self.text.format
            else {"format": {"type": "text"}},
            store=self.store, truncation=self.truncation or "disabled", user=self.user)


_FUNCTION = set(FunctionDefinition.model_fields)


def continued(previous: Episode) -> list[dict[str, Any]]:
    """The conversation a request continues when its `previous_response_id` names `previous` (an
    episode that kept its text): its messages, less the instructions it was asked with (OpenAI
    carries no instructions over), then its answer (its latest attempt)."""
    messages = (previous.messages or [])[1 if (previous.responses_api or {}).get("instructions") else 0:]
    answer = previous.latest
    return [*messages, assistant_message(answer.content if answer.content is not None or answer.tool_calls else "",
                                         answer.tool_calls)]


def _chat_tool_choice(choice: Any) -> Any:
    """`tool_choice` as the chat request takes it."""
    if isinstance(choice, FunctionChoice):
        return {"type": "function", "function": {"name": choice.name}}
    if isinstance(choice, AllowedToolsChoice):
        allowed = [{"type": "function", "function": {"name": tool.name}} for tool in choice.tools]
        return {"type": "allowed_tools", "allowed_tools": {"mode": choice.mode, "tools": allowed}}
    return choice


def _not_a_function(kind: str) -> str:
    if kind in BUILT_IN_TOOLS:
        return (f"{kind} is one of OpenAI's built-in tools, which R3 does not have: offer a function tool and "
                "run it yourself")
    return f"{shown(kind)} tools are not supported: R3 offers its models function tools only"


def _unsupported(param: str, why: str) -> APIError:
    return APIError(400, f"{param}: {why}", param=param, code="unsupported_value")


# ---------------------------------------------------------------- response


class ResponseSettings(BaseModel):
    """What a response echoes of its request (OpenAI's `Response` fields that say how it was asked),
    kept with its episode for `GET /v1/responses/{id}`."""

    instructions: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    max_output_tokens: int | None = None
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    store: bool = True
    truncation: Literal["auto", "disabled"] = "disabled"
    user: str | None = None
    background: bool = False


class OutputTextOut(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputTextOut]


class FunctionCallOut(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str  # what the function's output names (`function_call_output.call_id`)
    name: str
    arguments: str  # JSON, as the model wrote it
    status: ItemStatus


OutputItem = Annotated[OutputMessage | FunctionCallOut, Field(discriminator="type")]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0  # R3's reflections: generated, never shown as output


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseError(BaseModel):
    code: str
    message: str


ResponseStatus = Literal["completed", "incomplete", "in_progress", "cancelled", "failed"]


class Response(ResponseSettings):
    id: str  # resp_<hex>: its episode is ep_<hex>
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    output: list[OutputItem]
    usage: ResponseUsage | None = None
    r3: R3Info | None = omitted()


# ---------------------------------------------------------------- streamed events


class StreamEvent(BaseModel):
    type: str
    sequence_number: int


class ResponseLifecycleEvent(StreamEvent):
    type: Literal["response.created", "response.in_progress", "response.completed", "response.incomplete",
                  "response.failed"]
    response: Response


class OutputItemEvent(StreamEvent):
    type: Literal["response.output_item.added", "response.output_item.done"]
    output_index: int
    item: OutputItem


class ContentPartEvent(StreamEvent):
    type: Literal["response.content_part.added", "response.content_part.done"]
    item_id: str
    output_index: int
    content_index: int
    part: OutputTextOut


class TextDeltaEvent(StreamEvent):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class TextDoneEvent(StreamEvent):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class ArgumentsDeltaEvent(StreamEvent):
    type: Literal["response.function_call_arguments.delta"] = "response.function_call_arguments.delta"
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(StreamEvent):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    item_id: str
    output_index: int
    name: str
    arguments: str


class ErrorEvent(StreamEvent):
    type: Literal["error"] = "error"
    code: str | None
    message: str
    param: str | None
