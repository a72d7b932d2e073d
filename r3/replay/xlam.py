"""xLAM / APIGen function-calling records → replay tasks.

A record of Salesforce/xlam-function-calling-60k (the paper's APIGen task) is
`{"id", "query", "tools", "answers"}`, where `tools` is a JSON string of
`[{"name", "description", "parameters": {name: {"type", "description", "default"}}}]` with Python
type names (`str`, `int`, `float`, `bool`, `List[int]`, `Dict`, `str, optional`, ...) and `answers`
a JSON string of `[{"name", "arguments"}]` (`[]` in the irrelevance set: no call is right).

The query becomes the user message; each tool an OpenAI function tool whose parameters are a JSON
Schema (`str` → string, `int` → integer, `float` → number, `bool` → boolean, `list`/`List[X]`/`set`/
`tuple` → array (of X), `dict` → object, anything else — `Any`, `Callable`, unions — no type
constraint; a type ending in `, optional` or written `Optional[X]` is not required; `default` is
kept); the answers become the expected calls with their literal arguments, matched exactly as the
paper does ("correct only if the tool and all arguments exactly match"), in any order. Categories:
`xlam_simple` (one tool, one call), `xlam_multiple` (several tools, one call), `xlam_parallel`
(several calls), `xlam_irrelevance` (no call).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from r3.replay.tasks import ReplayTask, loads, numbered_records, record_error

PYTHON_TO_JSON_SCHEMA = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "list": "array",
                         "set": "array", "tuple": "array", "dict": "object"}
_OPTIONAL_SUFFIX = re.compile(r",\s*optional\s*$", re.IGNORECASE)
_GENERIC = re.compile(r"^(\w+)\s*(?:\[(.*)\])?$", re.DOTALL)


def convert(path: Path) -> list[ReplayTask]:
    """The tasks of an xLAM file (JSON array or JSON Lines). Raises `TaskFileError` naming the file and
    line of a record it cannot make sense of, whatever is wrong with it."""
    tasks = []
    for where, number, record in numbered_records(path):
        try:
            tasks.append(to_task(record, default_id=str(number)))
        except Exception as error:  # noqa: BLE001 - whatever the record holds, the error names it
            raise record_error(where, error) from error
    return tasks


def to_task(record: dict[str, Any], default_id: str) -> ReplayTask:
    tools, answers = _decoded(record, "tools"), _decoded(record, "answers")
    if not isinstance(record.get("query"), str):
        raise ValueError("query must be a string: the user's message")
    for tool in tools:
        if not isinstance(tool, dict):
            raise ValueError(f"tools: each tool must be an object, not {_shape(tool)}")
        if not isinstance(tool.get("parameters", {}), dict):
            raise ValueError(f"tools: the parameters of {str(tool.get('name'))[:100]!r} must be an object (parameter "
                             f"name → its type and description), not {_shape(tool['parameters'])}")
    if any(not isinstance(answer, dict) or not isinstance(answer.get("arguments"), dict) for answer in answers):
        raise ValueError("answers: each answer must be an object with a name and an arguments object")
    expected = [{"name": answer["name"], "arguments": answer["arguments"]} for answer in answers]
    request = {"messages": [{"role": "user", "content": record["query"]}],
               "tools": [to_openai_tool(tool) for tool in tools],
               "verifier": {"type": "tool_call", "expected": expected}}
    return ReplayTask(id=f"xlam-{record.get('id', default_id)}", category=_category(len(tools), len(answers)),
                      request=request)


def to_openai_tool(tool: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, parameter in tool.get("parameters", {}).items():
        schema, optional = parameter_schema(str(parameter.get("type", "")))
        properties[name] = {**schema, **{key: parameter[key] for key in ("description", "default") if key in parameter}}
        if not optional:
            required.append(name)
    function = {"name": tool["name"], "description": tool.get("description", ""),
                "parameters": {"type": "object", "properties": properties, "required": required}}
    return {"type": "function", "function": function}


def parameter_schema(python_type: str) -> tuple[dict[str, Any], bool]:
    """A Python type name as a JSON Schema, and whether it marks the parameter optional."""
    text, optional = _OPTIONAL_SUFFIX.subn("", python_type.strip())
    generic = _GENERIC.match(text.strip())
    if generic is None:
        return {}, bool(optional)
    head, argument = generic.group(1), generic.group(2)
    if head.lower() == "optional" and argument:
        return parameter_schema(argument)[0], True
    json_type = PYTHON_TO_JSON_SCHEMA.get(head.lower())
    schema: dict[str, Any] = {"type": json_type} if json_type else {}
    if json_type == "array" and head.lower() != "tuple" and argument:
        items, _ = parameter_schema(argument)
        if items:
            schema["items"] = items
    return schema, bool(optional)


def _decoded(record: dict[str, Any], field: str) -> list[Any]:
    """A record's `tools` or `answers`: a JSON string of a list (as xLAM ships them), or the list."""
    if field not in record:
        raise ValueError(f"{field} is missing")
    value = record[field]
    if isinstance(value, str):
        try:
            value = loads(value)
        except (ValueError, RecursionError) as error:
            raise ValueError(f"{field} is not a JSON list: {error}") from error
    if not isinstance(value, list):
        raise ValueError(f"{field} must be a list (or a JSON string of one), not {_shape(value)}")
    return value


def _shape(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _category(tools: int, calls: int) -> str:
    if calls == 0:
        return "xlam_irrelevance"
    if calls > 1:
        return "xlam_parallel"
    return "xlam_multiple" if tools > 1 else "xlam_simple"
