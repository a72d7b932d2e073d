"""What a chat answer is held to: tool calls in the Hermes format R3 prompts for, and the schema
`response_format` asks for, as one structural tag (xgrammar's `StructuralTag`, as vLLM takes it in
`StructuredOutputsParams.structural_tag`), so both engines decode under the same grammar.

A call is written `<tool_call>\\n{"name": "<tool>", "arguments": <JSON>}\\n</tool_call>` (the format
`r3.chat_format` describes to the model and parses back). Each offered tool is one tag whose begin
string names it and whose content is its `parameters` schema, so a call can only name an offered
tool and its arguments can only be what that tool takes:

| tool_choice | the answer is |
|---|---|
| `"auto"` | free text, in which `<tool_call>` starts a call held to the tags (with `response_format`: either calls, or the JSON answer) |
| `"required"` | one or more calls and nothing else (one, with `parallel_tool_calls: false`) |
| a named function | one call of that function and nothing else |

When the format is complete the grammar allows only the end of the answer, so a forced call ends
the generation (finish reason `tool_calls`), never running on to `max_tokens`.
Source: xgrammar's structural tag formats (`triggered_tags`, `tags_with_separator`, `or`).
"""

from __future__ import annotations

import json
import re
from typing import Any

import xgrammar as xgr

from r3.chat_format import CALL_CLOSE, CALL_OPEN


def structural_tag(tools: list[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None,
                   parallel_tool_calls: bool, answer_schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """The structural tag for an answer with these tools and `response_format` schema; None when
    tools are not in play (then `answer_schema`, if any, is a plain JSON schema constraint)."""
    if not tools or tool_choice == "none":
        return None
    named = tool_choice["function"]["name"] if isinstance(tool_choice, dict) else None
    tags = [_call_tag(function) for function in map(_function, tools) if named in (None, function["name"])]
    calls = {"type": "tags_with_separator", "tags": tags, "separator": "\n", "at_least_one": True,
             "stop_after_first": named is not None or not parallel_tool_calls}
    if tool_choice == "required" or named is not None:
        answer = calls
    elif answer_schema is not None:
        answer = {"type": "or", "elements": [calls, {"type": "json_schema", "json_schema": answer_schema}]}
    else:
        answer = {"type": "triggered_tags", "triggers": [CALL_OPEN], "tags": tags,
                  "stop_after_first": not parallel_tool_calls}
    return {"type": "structural_tag", "format": answer}


def _call_tag(function: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tag", "begin": f'{CALL_OPEN}\n{{"name": {json.dumps(function["name"])}, "arguments": ',
            "content": {"type": "json_schema", "json_schema": function.get("parameters") or {"type": "object"}},
            "end": f"}}\n{CALL_CLOSE}"}


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    return tool.get("function", tool)


def grammar_problem(tag: dict[str, Any] | None = None, json_schema: dict[str, Any] | None = None) -> str | None:
    """Why xgrammar cannot build the grammar of this structural tag or JSON schema (None: it can), so
    a request is refused before its answer starts rather than in the middle of a stream."""
    try:
        if tag is not None:
            xgr.Grammar.from_structural_tag(json.dumps(tag))
        if json_schema is not None:
            xgr.Grammar.from_json_schema(json.dumps(json_schema), any_whitespace=True)
    except (RuntimeError, ValueError, TypeError) as error:
        return xgrammar_reason(error)
    return None


def xgrammar_reason(error: Exception) -> str:
    """xgrammar's message without the C++ log prefix (`[05:16:30] /project/cpp/x.cc:83: `)."""
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", str(error).strip())
