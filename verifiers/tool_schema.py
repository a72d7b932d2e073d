"""`tool_schema`: the tool calls must be well-formed for the tools the request offered.

Each call must name an offered function and its arguments must validate against that function's
`parameters` schema. A function without `parameters` takes none (as in OpenAI's API): only `{}`
passes. A function marked `"strict": true` (OpenAI's structured function calling) takes no argument
its schema does not name, even where the schema leaves `additionalProperties` open (OpenAI's strict
mode requires it closed on every object; R3 closes the top level, and nested objects follow their
schema). `tool_choice` is honoured: "required" or a named function with no call fails, a named
function answered with another fails, and "none" with a call fails. With "auto" (or no
`tool_choice`) an answer without calls passes: not calling a tool is allowed there; a client that
wants a call says "required".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from verifiers.base import (
    Attempt,
    SpecBase,
    TaskContext,
    ToolCall,
    UnreadableOutput,
    Verdict,
)
from verifiers.json_text import parse_arguments
from verifiers.registry import VerifierType, register
from verifiers.schema import schema_problem, schema_violation

# A function offered without `parameters` takes none (OpenAI's reading); R3's grammars hold its calls to this too.
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True)
class OfferedFunction:
    parameters: Any  # its JSON Schema, as the request sent it (not necessarily valid)
    strict: bool = False


def offered_functions(tools: tuple[dict, ...]) -> dict[str, OfferedFunction]:
    """Function name → what the request said of it, for every well-formed function tool offered."""
    functions: dict[str, OfferedFunction] = {}
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            functions[function["name"]] = OfferedFunction(function.get("parameters", NO_PARAMETERS),
                                                           function.get("strict") is True)
    return functions


def chosen_function(tool_choice: str | dict | None) -> str | None:
    """The function a named `tool_choice` ({"type": "function", "function": {"name": ...}}) forces."""
    if isinstance(tool_choice, dict) and isinstance(tool_choice.get("function"), dict):
        return tool_choice["function"].get("name")
    return None


class ToolSchemaSpec(SpecBase):
    type: Literal["tool_schema"]

    def judge(self, attempt: Attempt, context: TaskContext) -> Verdict:
        calls, choice = attempt.tool_calls, context.tool_choice
        forced = chosen_function(choice)
        if not calls:
            if forced is not None:
                return Verdict(False, f"no tool was called; tool_choice requires a call to {forced}")
            if choice == "required":
                return Verdict(False, "no tool was called; tool_choice is 'required'")
            return Verdict(True)
        if choice == "none":
            return Verdict(False, f"called {calls[0].name}, but tool_choice is 'none'")
        functions = offered_functions(context.tools)
        for call in calls:
            problem = _call_problem(call, functions, forced)
            if problem is not None:
                return Verdict(False, problem)
        return Verdict(True)


def _call_problem(call: ToolCall, functions: dict[str, OfferedFunction], forced: str | None) -> str | None:
    if forced is not None and call.name != forced:
        return f"called {call.name}, but tool_choice requires {forced}"
    if call.name not in functions:
        return f"unknown tool {call.name!r} (offered: {', '.join(sorted(functions)) or 'none'})"
    function = functions[call.name]
    problem = schema_problem(function.parameters)
    if problem is not None:
        return f"{call.name}: the request's parameters schema is invalid: {problem}"
    try:
        arguments = parse_arguments(call)
    except UnreadableOutput as error:
        return str(error)
    if function.strict:
        unknown = sorted(set(arguments) - _named_parameters(function.parameters))
        if unknown:
            return f"{call.name}: unexpected argument {unknown[0]!r} (the function is strict)"
    violation = schema_violation(function.parameters, arguments)
    return None if violation is None else f"{call.name}: arguments do not match the schema: {violation}"


def _named_parameters(schema: Any) -> set[str]:
    properties = schema.get("properties") if isinstance(schema, dict) else None
    return set(properties) if isinstance(properties, dict) else set()


register(VerifierType(
    ToolSchemaSpec, judge=ToolSchemaSpec.judge, task_kind="function_calling",
    summary="every call names an offered tool and its arguments validate against that tool's JSON "
            "Schema (`tool_choice: \"required\"` needs a call; a function with `\"strict\": true` "
            "takes no argument its schema does not name)",
))
