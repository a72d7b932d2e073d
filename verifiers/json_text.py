"""The one reader of JSON text that R3 did not write itself: a client's (a tool call's `arguments` in
its messages, a webhook's answer) or a model's (tool calls, a `json_schema` or `response_format`
answer).

It reads standard JSON only, as the server takes request bodies: no NaN or Infinity (Python's
extensions), no number too large for a float (`1e999`), no integer of more digits than Python
converts. A value may nest at most `MAX_JSON_DEPTH` arrays and objects, the limit on the JSON
values a request carries: anything that walks a deeper value (a schema check, a comparison,
`json.dumps`) recurses once per level and would exhaust the interpreter's stack, and so would the
decoder itself: the depth is read first. Every failure is a `JsonTextError` saying why, never a
`RecursionError`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from verifiers.base import ToolCall, UnreadableOutput
from verifiers.schema import MAX_JSON_DEPTH


class JsonTextError(ValueError):
    """The text is not JSON R3 reads; the message says why (for an error or a verdict's detail)."""


class JsonTooDeep(JsonTextError):
    """The text is JSON nested deeper than `MAX_JSON_DEPTH`: refused even where other text is taken."""

    def __init__(self) -> None:
        super().__init__(f"nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def finite_float(text: str) -> float:
    """A JSON number's text as a float (`json.JSONDecoder`'s `parse_float`); ValueError for one too
    large for a float (`1e999`), which Python's json would read as infinity."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large for a number")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=finite_float)
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's, as `json.loads` skips it around a value


def read_json(text: str) -> Any:
    """The JSON value that is the whole of `text`. Raises `JsonTextError`."""
    value, end = read_json_at(text, _WHITESPACE.match(text).end())
    end = _WHITESPACE.match(text, end).end()
    if end != len(text):
        raise JsonTextError(str(json.JSONDecodeError("Extra data", text, end)))
    return value


def read_json_at(text: str, start: int) -> tuple[Any, int]:
    """The JSON value that starts at `text[start]`, and where it ends (text may follow it: model
    output with a call among prose). Raises `JsonTextError`."""
    if _deeper_than_the_limit(text, start):
        raise JsonTooDeep
    try:
        return _DECODER.raw_decode(text, start)
    except ValueError as error:  # JSONDecodeError, a refused constant or number, an integer of over 4300 digits
        raise JsonTextError(str(error)) from error


# A JSON string or a bracket: what the depth scan reads (a bracket inside a string is text).
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def _deeper_than_the_limit(text: str, start: int) -> bool:
    """Whether the value at `text[start]` nests more than `MAX_JSON_DEPTH` arrays and objects. Read
    without parsing (the decoder recurses once a level) and only as far as it must: to the value's
    end, or to the first level past the limit, so trying every `[` of a long run of them is cheap."""
    if not text.startswith(("[", "{"), start):
        return False  # a scalar nests nothing
    depth = 0
    for token in _STRING_OR_BRACKET.finditer(text, start):
        bracket = token.group()
        if bracket in ("[", "{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif bracket in ("]", "}"):
            depth -= 1
            if depth == 0:
                return False
    return False


def parse_json(text: str) -> Any:
    """`read_json` for a verifier: a model's output it cannot read is `UnreadableOutput`."""
    try:
        return read_json(text)
    except JsonTextError as error:
        raise UnreadableOutput(str(error)) from error


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (bool before int: a Python bool is an int)."""
    for python_type, name in ((bool, "boolean"), (int, "number"), (float, "number"), (str, "string"),
                              (list, "array"), (dict, "object")):
        if isinstance(value, python_type):
            return name
    return "null"


def parse_arguments(call: ToolCall) -> dict[str, Any]:
    """A tool call's arguments as a dict; `UnreadableOutput` when they are not a JSON object."""
    try:
        arguments = parse_json(call.arguments)
    except UnreadableOutput as error:
        raise UnreadableOutput(f"{call.name}: arguments are not valid JSON ({error})") from error
    if not isinstance(arguments, dict):
        raise UnreadableOutput(f"{call.name}: arguments are a JSON {json_type(arguments)}, not an object")
    return arguments
