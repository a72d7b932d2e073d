"""Chat formatting: OpenAI messages and tools in, a prompt string out; model text in, tool calls out.

Tools are rendered with the model's own chat template when it knows about tools. Otherwise (the
bundled SmolLM2's template does not) they go into the system message in the Hermes style that
many open models are trained on:

    You are a function calling AI model. ... <tools>{one JSON schema per line}</tools> ...
    <tool_call>
    {"name": <function-name>, "arguments": <args-dict>}
    </tool_call>

Earlier assistant tool calls are written back in that same `<tool_call>` form and tool results as
`<tool_response>` blocks, so a multi-turn conversation reads the way the model is asked to write.

On an engine that constrains decoding (both of R3's), `tool_choice` is enforced by a grammar
(`r3.structured_output`), and the answer starts as the model's own. Elsewhere (the trainer samples
with plain transformers) "required" and a named tool are enforced by prefilling the answer with
the opening of a call (`<tool_call>\\n{"name": "`), and the model continues from there.

Parsing returns only calls of offered tools, with the arguments as the model wrote them when they
are a JSON object (so a streamed call's argument pieces rejoin into exactly them); anything else
stays content.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

from verifiers.base import ToolCall
from verifiers.json_text import JsonTextError, read_json, read_json_at

HERMES_TOOL_PROMPT = (
    "You are a function calling AI model. You are provided with function signatures within "
    "<tools></tools> XML tags. You may call one or more functions to assist with the user query. "
    "Don't make assumptions about what values to plug into functions. Here are the available "
    "tools: <tools>\n{tools}\n</tools>\n"
    "For each function call return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-dict>}}\n</tool_call>'
)
REQUIRED_TOOL_NOTE = "\nYou must call at least one of these functions."
CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"

_TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_CODE_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")
# The opening of a call up to its arguments' first character, as the Hermes format and R3's grammar
# write it: `[<tool_call>] {"name": "<name>", "arguments": {`. Group 1 is the name as a JSON string.
CALL_HEADER = re.compile(r'(?:<tool_call>\s*)?\{\s*"name"\s*:\s*("(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*")'
                         r'\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\{)')


@dataclass(frozen=True)
class ChatPrompt:
    text: str  # the rendered conversation, ending where the assistant starts to write
    assistant_prefix: str = ""  # forced opening of the answer; part of the answer's text
    token_ids: list[int] | None = None  # `engine_input` encoded by the engine (`Engine.encode`), once known

    @property
    def engine_input(self) -> str:
        return self.text + self.assistant_prefix

    @property
    def for_engine(self) -> str | list[int]:
        """What to hand the engine: the token ids when known (no second encoding), else the text."""
        return self.token_ids if self.token_ids is not None else self.engine_input


@dataclass(frozen=True)
class ParsedOutput:
    content: str | None
    tool_calls: list[ToolCall]


def call_id(completion_id: str, index: int) -> str:
    """The id of a completion's `index`th tool call: known before the call is whole, so a stream
    can send it with the call's name and the recorded episode holds the same one."""
    return f"call_{completion_id.removeprefix('chatcmpl-')[:24]}_{index}"


def with_call_ids(parsed: ParsedOutput, completion_id: str) -> ParsedOutput:
    return replace(parsed, tool_calls=[replace(call, id=call_id(completion_id, i))
                                       for i, call in enumerate(parsed.tool_calls)])


def template_supports_tools(tokenizer: Any) -> bool:
    return "tools" in (getattr(tokenizer, "chat_template", None) or "")


def message_text(content: str | list[dict[str, Any]] | None) -> str:
    """The text of a message's content: a string, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content)


def render_prompt(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
    constrained_decoding: bool = False,
) -> ChatPrompt:
    """Render an OpenAI conversation (+ tools) into the model's prompt text.

    `constrained_decoding`: the engine holds the answer to `tool_choice` with a grammar, so no
    forced call is prefilled."""
    if tool_choice == "none":
        tools = None
    native_tools = bool(tools) and template_supports_tools(tokenizer)
    chat = [_template_message(message, native_tools) for message in messages]
    if tools and not native_tools:
        chat = _with_hermes_system_prompt(chat, tools, tool_choice == "required")
    text = tokenizer.apply_chat_template(
        chat,
        tools=[_function(tool) for tool in tools] if native_tools else None,
        add_generation_prompt=True,
        tokenize=False,
    )
    return ChatPrompt(text=text, assistant_prefix="" if constrained_decoding else _forced_prefix(tools, tool_choice))


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    return tool.get("function", tool)


def _forced_prefix(tools: list[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None) -> str:
    if not tools:
        return ""
    if tool_choice == "required":
        return f'{CALL_OPEN}\n{{"name": "'
    if isinstance(tool_choice, dict):
        name = tool_choice["function"]["name"]
        return f'{CALL_OPEN}\n{{"name": {json.dumps(name)}, "arguments": '
    return ""


def _with_hermes_system_prompt(
    chat: list[dict[str, Any]], tools: list[dict[str, Any]], required: bool
) -> list[dict[str, Any]]:
    schemas = "\n".join(json.dumps(_function(tool)) for tool in tools)
    prompt = HERMES_TOOL_PROMPT.format(tools=schemas) + (REQUIRED_TOOL_NOTE if required else "")
    if chat and chat[0]["role"] == "system":
        return [{"role": "system", "content": f"{chat[0]['content']}\n\n{prompt}"}, *chat[1:]]
    return [{"role": "system", "content": prompt}, *chat]


def _template_message(message: dict[str, Any], native_tools: bool) -> dict[str, Any]:
    role = "system" if message["role"] == "developer" else message["role"]
    text = message_text(message.get("content"))
    calls = message.get("tool_calls") or []
    if native_tools:
        rendered: dict[str, Any] = {"role": role, "content": text}
        if calls:
            rendered["tool_calls"] = [
                {"type": "function", "function": {"name": c["function"]["name"],
                                                  "arguments": _arguments_object(c["function"]["arguments"])}}
                for c in calls
            ]
        if role == "tool" and message.get("tool_call_id"):
            rendered["tool_call_id"] = message["tool_call_id"]
        return rendered
    if calls:
        blocks = [
            "<tool_call>\n" + json.dumps({"name": c["function"]["name"],
                                          "arguments": _arguments_object(c["function"]["arguments"])})
            + "\n</tool_call>"
            for c in calls
        ]
        text = "\n".join([text, *blocks] if text else blocks)
    if role == "tool":
        text = f"<tool_response>\n{text}\n</tool_response>"
    return {"role": role, "content": text}


def _arguments_object(arguments: str | dict[str, Any]) -> Any:
    if isinstance(arguments, dict):
        return arguments
    try:
        return read_json(arguments)
    except JsonTextError:
        return arguments  # shown to the model as it was sent


def parse_tool_calls(text: str, offered: Collection[str] | None = None) -> ParsedOutput:
    """Split model output into prose and tool calls, reading it left to right.

    A call is `{"name": ..., "arguments": {...}}` (`parameters` for `arguments`, or the arguments as
    a JSON string) naming one of `offered` (None: any name), found in a `<tool_call>` block (whose
    closing tag may be cut off by max_tokens or a stop string) or, outside blocks, as bare JSON,
    fenced or not; a block or a JSON list holds one or more. A call's arguments are always whole
    JSON: everything else (a block that does not parse, a call cut short by `max_tokens`, JSON that
    is no call, a call of a tool never offered) stays in the content, so nothing the model wrote is
    lost. Content beside calls is the prose around them, joined by spaces.
    """
    calls: list[ToolCall] = []
    kept: list[str] = []
    cursor = position = 0
    while (candidate := _CANDIDATE.search(text, position)) is not None:
        start = candidate.start()
        if candidate.group() == CALL_OPEN:
            block = _TOOL_CALL_BLOCK.match(text, start)
            found, end = _calls_from_json(_CODE_FENCE.sub("", block.group(1).strip()), offered), block.end()
        else:
            found, end = _bare_calls(text, start, offered)
        if found is None:  # a failed block may still hold a bare call; JSON that is no call holds none
            position = start + 1 if candidate.group() == CALL_OPEN else end
            continue
        kept.append(text[cursor:start])
        calls.extend(found)
        cursor = position = end
    kept.append(text[cursor:])
    if not calls:
        return ParsedOutput(content=text.strip() or None, tool_calls=[])
    return ParsedOutput(content=_joined(kept), tool_calls=calls)


_CANDIDATE = re.compile(r"<tool_call>|[{\[]")
_CALL_KEYS = {"name", "arguments", "parameters", "type", "id"}


def _bare_calls(text: str, start: int, offered: Collection[str] | None) -> tuple[list[ToolCall] | None, int]:
    """The calls of the JSON value at `start` (None: it is no call), and where to read on."""
    try:
        value, end = read_json_at(text, start)
    except JsonTextError:
        return None, start + 1
    return _calls_from_value(value, text[start:end], offered), end


def _joined(pieces: list[str]) -> str | None:
    kept = (_CODE_FENCE.sub("", piece.strip()) for piece in pieces)
    return " ".join(piece for piece in kept if piece) or None


def _calls_from_json(body: str, offered: Collection[str] | None) -> list[ToolCall] | None:
    try:
        return _calls_from_value(read_json(body), body, offered)
    except JsonTextError:
        return None


def _calls_from_value(value: Any, written: str, offered: Collection[str] | None) -> list[ToolCall] | None:
    """`value` (written as `written`) as calls, or None unless every item of it is a call of an offered tool."""
    items = value if isinstance(value, list) else [value]
    calls = [_call_from_object(item, offered) for item in items]
    if not calls or any(call is None for call in calls):
        return None
    if not isinstance(value, list):
        calls = [replace(calls[0], arguments=_as_written(written, calls[0].arguments))]
    return calls  # type: ignore[return-value]


def _call_from_object(item: Any, offered: Collection[str] | None) -> ToolCall | None:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
        return None
    if not item.keys() <= _CALL_KEYS:  # e.g. {"name": "Alice", "age": 30}: data that has a name, not a call
        return None
    if offered is not None and item["name"] not in offered:
        return None
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = read_json(arguments)
        except JsonTextError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(name=item["name"], arguments=json.dumps(arguments))


def _as_written(call: str, arguments: str) -> str:
    """The arguments as the model wrote them in `call` (one call's JSON), when they were written as
    the object they are; else `arguments` (re-serialized)."""
    header = CALL_HEADER.match(call, len(call) - len(call.lstrip()))
    if header is None:
        return arguments
    try:
        value, end = read_json_at(call, header.end())
    except JsonTextError:
        return arguments
    return call[header.end():end] if value == read_json(arguments) else arguments
