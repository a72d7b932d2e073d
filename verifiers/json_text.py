"""Strict JSON parsing of model output: standard JSON only, and every failure an `UnreadableOutput`."""

from __future__ import annotations

import json
from typing import Any

from verifiers.base import ToolCall, UnreadableOutput


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str) -> Any:
    """`json.loads`, refusing NaN/Infinity (not JSON) and JSON nested too deeply to parse."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError as error:
        raise UnreadableOutput("JSON nested too deeply") from error
    except ValueError as error:  # JSONDecodeError, a refused constant, an integer of over 4300 digits
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
