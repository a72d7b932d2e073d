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

import json
import re
from pathlib import Path
from typing import Any

from r3.replay.tasks import ReplayTask, TaskFileError, read_records

PYTHON_TO_JSON_SCHEMA = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "list": "array",
                         "set": "array", "tuple": "array", "dict": "object"}
_OPTIONAL_SUFFIX = re.compile(r",\s*optional\s*$", re.IGNORECASE)
_GENERIC = re.compile(r"^(\w+)\s*(?:\[(.*)\])?$", re.DOTALL)


def convert(path: Path) -> list[ReplayTask]:
    """The tasks of an xLAM file (JSON array or JSON Lines). Raises `TaskFileError` on a malformed record."""
    tasks = []
    for number, record in enumerate(read_records(path), start=1):
        try:
            tasks.append(to_task(record, default_id=str(number)))
        except (KeyError, TypeError, ValueError) as error:  # ValueError covers JSON and pydantic errors
            raise TaskFileError(f"{path}: record {number}: {error!r}") from error
    return tasks


def to_task(record: dict[str, Any], default_id: str) -> ReplayTask:
    tools, answers = _decoded(record["tools"]), _decoded(record["answers"])
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


def _decoded(value: Any) -> list[dict[str, Any]]:
    return json.loads(value) if isinstance(value, str) else value


def _category(tools: int, calls: int) -> str:
    if calls == 0:
        return "xlam_irrelevance"
    if calls > 1:
        return "xlam_parallel"
    return "xlam_multiple" if tools > 1 else "xlam_simple"
