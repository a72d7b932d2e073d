"""What a chat answer is held to: tool calls in the Hermes format R3 prompts for, and the schema
`response_format` asks for, as one structural tag (xgrammar's `StructuralTag`, as vLLM takes it in
`StructuredOutputsParams.structural_tag`), so both engines decode under the same grammar.

A call is written `<tool_call>\\n{"name": "<tool>", "arguments": <JSON>}\\n</tool_call>` (the format
`r3.chat_format` describes to the model and parses back). Each offered tool is one tag whose begin
string names it and whose content is its `parameters` schema, so a call can only name an offered
tool and its arguments can only be what that tool takes. A tool without `parameters` takes none (as
in OpenAI's API): its arguments are `{}`.

| tool_choice | the answer is |
|---|---|
| `"auto"` | free text, in which `<tool_call>` starts a call held to the tags (with `response_format`: either calls, or the JSON answer) |
| `"required"` | one or more calls and nothing else (one, with `parallel_tool_calls: false`) |
| a named function | one call of that function and nothing else |

When the format is complete the grammar allows only the end of the answer, so a forced call ends
the generation (finish reason `tool_calls`), never running on to `max_tokens`. For that, every JSON
R3's grammars admit has at most `MAX_JSON_WHITESPACE` whitespace characters in a row: with any
amount allowed, a small model writes whitespace inside `{` until `max_tokens` runs out. A plain
`response_format` schema is a structural tag too (`grammar_tag`), so both engines apply that bound
the same way (vLLM's own `disable_any_whitespace` is a server-wide switch).
Source: xgrammar's structural tag formats (`triggered_tags`, `tags_with_separator`, `or`,
`json_schema` with `max_whitespace_cnt`).

Building a grammar is CPU work on a client's schema, and compiling one against a vocabulary can take
seconds for a schema of a few bytes (`{"maxLength": 100000}`: ~5 s). So it runs in
`GRAMMAR_THREADS` threads of its own (`grammar_work`), never on the event loop nor in the default
thread pool every request shares, and is waited for at most `GRAMMAR_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import xgrammar as xgr

from r3.chat_format import CALL_CLOSE, CALL_OPEN
from verifiers.tool_schema import NO_PARAMETERS

MAX_JSON_WHITESPACE = 2  # whitespace characters in a row anywhere in a JSON answer or call's arguments
GRAMMAR_THREADS = 1
GRAMMAR_TIMEOUT_S = 10.0  # waiting for a grammar to be checked or compiled

T = TypeVar("T")
_grammar_threads = ThreadPoolExecutor(GRAMMAR_THREADS, thread_name_prefix="r3-grammar")


class GrammarTimeout(Exception):
    """Building or compiling a grammar took longer than `GRAMMAR_TIMEOUT_S`."""

    def __init__(self) -> None:
        super().__init__(f"building its grammar took longer than {GRAMMAR_TIMEOUT_S:g} s")


async def grammar_work(work: Callable[..., T], *args: Any) -> T:
    """`work(*args)`, run in the grammar threads. Raises `GrammarTimeout` after `GRAMMAR_TIMEOUT_S`.
    Cancelling this (a client gone), or its timing out, drops the work if it has not started; work
    already running finishes by itself (xgrammar's compiler cannot be stopped), its result cached."""
    running = asyncio.get_running_loop().run_in_executor(_grammar_threads, work, *args)
    try:
        return await asyncio.wait_for(running, GRAMMAR_TIMEOUT_S)
    except TimeoutError:
        raise GrammarTimeout() from None


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
        answer = {"type": "or", "elements": [calls, _json(answer_schema)]}
    else:
        answer = {"type": "triggered_tags", "triggers": [CALL_OPEN], "tags": tags,
                  "stop_after_first": not parallel_tool_calls}
    return {"type": "structural_tag", "format": answer}


def grammar_tag(tag: dict[str, Any] | None, json_schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """The structural tag an engine holds an answer to: `tag` when there is one (it embeds any answer
    schema itself), else one for `json_schema` alone; None when there is neither."""
    if tag is not None:
        return tag
    return None if json_schema is None else {"type": "structural_tag", "format": _json(json_schema)}


def _json(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": schema, "max_whitespace_cnt": MAX_JSON_WHITESPACE}


def _call_tag(function: dict[str, Any]) -> dict[str, Any]:
    # An explicit `{}` allows any value; a call's arguments are an object all the same.
    parameters = function.get("parameters", NO_PARAMETERS) or {"type": "object"}
    return {"type": "tag", "begin": f'{CALL_OPEN}\n{{"name": {json.dumps(function["name"])}, "arguments": ',
            "content": _json(parameters), "end": f"}}\n{CALL_CLOSE}"}


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    return tool.get("function", tool)


def grammar_problem(tag: dict[str, Any] | None) -> str | None:
    """Why xgrammar cannot build the grammar of this structural tag (None: it can, or there is no
    tag), so a request is refused before its answer starts rather than in the middle of a stream.
    CPU work on the client's schemas (~0.5 µs a byte): call it through `grammar_work`."""
    if tag is None:
        return None
    try:
        xgr.Grammar.from_structural_tag(json.dumps(tag))
    except (RuntimeError, ValueError, TypeError) as error:
        return xgrammar_reason(error)
    return None


def xgrammar_reason(error: Exception) -> str:
    """xgrammar's message without the C++ log prefix (`[05:16:30] /project/cpp/x.cc:83: `)."""
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", str(error).strip())
