from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from verifiers import Attempt, TaskContext, ToolCall, ToolSchemaSpec, parse_spec


def function_tool(name: str, parameters: Any = None) -> dict:
    function: dict[str, Any] = {"name": name, "description": f"{name} tool"}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


WEATHER = function_tool(
    "get_weather",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
PING = function_tool("ping")  # no parameters: takes none
# A schema that leaves additionalProperties open, offered plainly and with OpenAI's "strict": true.
OPEN_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"},
                                                "at": {"type": "object", "properties": {"hour": {"type": "integer"}}}}}
LOOSE = function_tool("lookup", OPEN_SCHEMA)
STRICT = {"type": "function", "function": {"name": "lookup", "parameters": OPEN_SCHEMA, "strict": True}}
TOOLS = (WEATHER, PING)
NAMED_WEATHER = {"type": "function", "function": {"name": "get_weather"}}

# (tools, tool_choice, produced calls, success, detail fragment)
CASES = [
    (TOOLS, None, [("get_weather", '{"city": "Paris"}')], True, ""),
    (TOOLS, "auto", [("get_weather", '{"city": "Paris", "unit": "celsius"}'), ("ping", "{}")], True, ""),
    (TOOLS, None, [("get_time", "{}")], False, "unknown tool 'get_time' (offered: get_weather, ping)"),
    ((), None, [("get_time", "{}")], False, "unknown tool 'get_time' (offered: none)"),
    (TOOLS, None, [("get_weather", '{"city": 5}')], False, "get_weather: arguments do not match the schema: $.city"),
    (TOOLS, None, [("get_weather", "{}")], False, "'city' is a required property"),
    (TOOLS, None, [("get_weather", '{"city": "Paris", "unit": "kelvin"}')], False, "$.unit"),
    (TOOLS, None, [("get_weather", '{"city": "Paris", "days": 3}')], False, "'days' was unexpected"),
    (TOOLS, None, [("ping", "{}"), ("get_weather", '{"city": 1}')], False, "get_weather"),
    (TOOLS, None, [("get_weather", '{"city": "Paris"')], False, "get_weather: arguments are not valid JSON"),
    (TOOLS, None, [("get_weather", '["Paris"]')], False, "arguments are a JSON array, not an object"),
    (TOOLS, None, [("ping", '{"now": true}')], False, "ping: arguments do not match the schema"),
    # tool_choice
    (TOOLS, None, [], True, ""),
    (TOOLS, "auto", [], True, ""),
    (TOOLS, "none", [], True, ""),
    (TOOLS, "required", [], False, "no tool was called; tool_choice is 'required'"),
    (TOOLS, "required", [("ping", "{}")], True, ""),
    (TOOLS, NAMED_WEATHER, [], False, "tool_choice requires a call to get_weather"),
    (TOOLS, NAMED_WEATHER, [("ping", "{}")], False, "called ping, but tool_choice requires get_weather"),
    (TOOLS, NAMED_WEATHER, [("get_weather", '{"city": "Oslo"}')], True, ""),
    (TOOLS, "none", [("ping", "{}")], False, "called ping, but tool_choice is 'none'"),
    # The request's own schemas may be broken: a failed verdict, never an exception.
    ((function_tool("f", {"type": 5}),), None, [("f", "{}")], False, "f: the request's parameters schema is invalid"),
    ((function_tool("f", "object"),), None, [("f", "{}")], False, "must be an object or a boolean"),
    ((function_tool("f", {"$ref": "https://example.invalid/schema.json"}),), None, [("f", "{}")], False,
     "the schema cannot be applied"),
    ((function_tool("f", {"$ref": "#"}),), None, [("f", "{}")], False, "the schema cannot be applied"),
    ((function_tool("f", {"$ref": "#/$defs/missing"}),), None, [("f", "{}")], False, "the schema cannot be applied"),
    ((function_tool("f", True),), None, [("f", '{"anything": 1}')], True, ""),
    # Malformed tool entries are not offered functions.
    (("not a tool", {"type": "function"}, {"function": {"name": 7}}, PING), None, [("ping", "{}")], True, ""),
    # "strict": true refuses arguments the schema does not name; without it they pass.
    ((LOOSE,), None, [("lookup", '{"city": "Oslo", "days": 3}')], True, ""),
    ((STRICT,), None, [("lookup", '{"city": "Oslo", "days": 3}')], False,
     "lookup: unexpected argument 'days' (the function is strict)"),
    ((STRICT,), None, [("lookup", '{"city": "Oslo"}')], True, ""),
    ((STRICT,), None, [("lookup", '{"city": 5}')], False, "lookup: arguments do not match the schema: $.city"),
    # Nested objects follow their own schema (OpenAI's strict mode has them say additionalProperties: false).
    ((STRICT,), None, [("lookup", '{"at": {"hour": 9, "tz": "UTC"}}')], True, ""),
    (({"type": "function", "function": {"name": "lookup", "parameters": OPEN_SCHEMA, "strict": False}},), None,
     [("lookup", '{"zone": 1}')], True, ""),
    # `$schema` picks the dialect: draft-07 `dependencies` is honoured.
    ((function_tool("f", {"$schema": "http://json-schema.org/draft-07/schema#",
                          "dependencies": {"a": ["b"]}}),), None, [("f", '{"a": 1}')], False, "'b' is a dependency"),
]


@pytest.mark.parametrize(("tools", "tool_choice", "calls", "success", "detail"), CASES)
def test_tool_schema_verdicts(tools, tool_choice, calls, success, detail) -> None:
    spec = parse_spec({"type": "tool_schema"})
    assert isinstance(spec, ToolSchemaSpec)
    attempt = Attempt(content=None, tool_calls=tuple(ToolCall(name, arguments) for name, arguments in calls))
    verdict = spec.judge(attempt, TaskContext(tools=tools, tool_choice=tool_choice))
    assert verdict.success is success, verdict.detail
    assert detail in verdict.detail


def test_the_spec_takes_no_fields() -> None:
    with pytest.raises(ValidationError) as raised:
        parse_spec({"type": "tool_schema", "tools": []})
    assert any("tools" in error["loc"] for error in raised.value.errors())
