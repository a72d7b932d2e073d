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

`tool_choice` "required" and a named tool are enforced by prefilling the assistant's answer with
the opening of a call (`<tool_call>\\n{"name": "`); the engine continues from there. It is the
cheapest constrained decoding there is and works on every engine. An engine that can constrain
decoding to a JSON schema (vLLM) gets only `<tool_call>\\n` and a schema for the call, so the
name is one of the tools and the arguments match that tool's parameters.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

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

_TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_CODE_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object, as a string, as OpenAI sends it
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


@dataclass(frozen=True)
class ChatPrompt:
    text: str  # the rendered conversation, ending where the assistant starts to write
    assistant_prefix: str = ""  # forced opening of the answer; part of the answer's text
    json_schema: dict[str, Any] | None = None  # what must follow the prefix (engines that constrain decoding)

    @property
    def engine_input(self) -> str:
        return self.text + self.assistant_prefix


@dataclass(frozen=True)
class ParsedOutput:
    content: str | None
    tool_calls: list[ToolCall]


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
    json_constrained: bool = False,
) -> ChatPrompt:
    """Render an OpenAI conversation (+ tools) into the model's prompt text.

    `json_constrained`: the engine can hold decoding to a JSON schema, so a forced tool call is a
    schema rather than a longer prefix."""
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
    if json_constrained and (schema := _forced_call_schema(tools, tool_choice)):
        return ChatPrompt(text=text, assistant_prefix="<tool_call>\n", json_schema=schema)
    return ChatPrompt(text=text, assistant_prefix=_forced_prefix(tools, tool_choice))


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    return tool.get("function", tool)


def _forced_prefix(tools: list[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None) -> str:
    if not tools:
        return ""
    if tool_choice == "required":
        return '<tool_call>\n{"name": "'
    if isinstance(tool_choice, dict):
        name = tool_choice["function"]["name"]
        return f'<tool_call>\n{{"name": {json.dumps(name)}, "arguments": '
    return ""


def _forced_call_schema(tools: list[dict[str, Any]] | None,
                        tool_choice: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """A JSON schema for one call of the tool `tool_choice` forces (any tool, for "required")."""
    if not tools or tool_choice not in ("required",) and not isinstance(tool_choice, dict):
        return None
    named = tool_choice["function"]["name"] if isinstance(tool_choice, dict) else None
    calls = [
        {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
         "properties": {"name": {"const": function["name"]},
                        "arguments": function.get("parameters") or {"type": "object"}}}
        for function in map(_function, tools) if named in (None, function["name"])
    ]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


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
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments  # shown to the model as it was sent


def parse_tool_calls(text: str) -> ParsedOutput:
    """Split model output into prose and tool calls.

    Accepts `<tool_call>{...}</tool_call>` blocks (the closing tag may be cut off by max_tokens or a
    stop string) and, failing those, bare JSON calls: `{"name": ..., "arguments": {...}}` or a list
    of them, alone or within text. `parameters` is accepted for `arguments`. Anything that does not
    parse as a call stays in the content, so a malformed call is never silently lost.
    """
    calls: list[ToolCall] = []
    kept: list[str] = []
    cursor = 0
    for block in _TOOL_CALL_BLOCK.finditer(text):
        found = _calls_from_json(_CODE_FENCE.sub("", block.group(1).strip()))
        if found is None:
            continue
        kept.append(text[cursor:block.start()])
        calls.extend(found)
        cursor = block.end()
    kept.append(text[cursor:])
    if not calls:
        return _parse_bare_json(text)
    return ParsedOutput(content=_joined(kept), tool_calls=calls)


def _parse_bare_json(text: str) -> ParsedOutput:
    decoder = json.JSONDecoder()
    calls: list[ToolCall] = []
    kept: list[str] = []
    cursor = position = 0
    while position < len(text):
        if text[position] not in "{[":
            position += 1
            continue
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            position += 1
            continue
        found = _calls_from_value(value)
        if found is None:
            position += 1
            continue
        kept.append(text[cursor:position])
        calls.extend(found)
        cursor = position = end
    kept.append(text[cursor:])
    if not calls:
        return ParsedOutput(content=text, tool_calls=[])
    return ParsedOutput(content=_joined(kept), tool_calls=calls)


def _joined(pieces: list[str]) -> str | None:
    kept = (_CODE_FENCE.sub("", piece.strip()) for piece in pieces)
    return " ".join(piece for piece in kept if piece) or None


def _calls_from_json(body: str) -> list[ToolCall] | None:
    try:
        return _calls_from_value(json.loads(body))
    except json.JSONDecodeError:
        return None


def _calls_from_value(value: Any) -> list[ToolCall] | None:
    items = value if isinstance(value, list) else [value]
    calls = [_call_from_object(item) for item in items]
    if not calls or any(call is None for call in calls):
        return None
    return calls  # type: ignore[return-value]


def _call_from_object(item: Any) -> ToolCall | None:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
        return None
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(name=item["name"], arguments=json.dumps(arguments))
