"""BFCL (Berkeley Function Calling Leaderboard) → replay tasks.

A BFCL question file (JSON Lines despite its .json name) holds
`{"id", "question": [[messages of turn 1], ...], "function": [function docs]}`; its possible-answer
file holds `{"id", "ground_truth": [{function name: {argument: [acceptable values]}}]}`, where `""`
among the values marks an optional argument. The irrelevance categories have no answers: no call is
right. Everything here follows BFCL's own code (github.com/ShishirPatil/gorilla,
berkeley-function-call-leaderboard/bfcl_eval):

- function docs → OpenAI tools: `convert_to_tool` and `_cast_to_openai_type` (model_handler/utils.py)
  with `GORILLA_TO_OPENAPI` (constants/type_mappings.py): dict → object, float → number (with
  `format: float` and " This is a float type value." added to the description), tuple/list →
  array, any and unknown or missing types → string, the same inside `properties` and `items`.
  Function names keep their dots: R3 accepts them (BFCL swaps them for `_` only for APIs that refuse
  them).
- possible answers → `tool_call` patterns, as ast_checker.py reads them: `""` makes an argument
  optional unless the function requires it, and stays an acceptable value where `type_checker`
  lets a string through (a string parameter, or answers that are strings: its "variable" case); an
  argument the function does not declare can only be left out ("Unexpected parameter"); a `dict`
  argument's answers are objects of per-key acceptable values (`dict_checker`, where `""` marks an
  optional key and stays acceptable, as no type is checked inside); an array of dicts is matched
  item by item (`list_dict_checker`); strings compare normalized (`standardize_string`).
  An answer nothing can satisfy (BFCL fails every answer to it) is skipped.

Categories come from the id (`simple_python_3` → `simple_python`, `live_multiple_7-3-1` →
`live_multiple`). Multi-turn entries, Java and JavaScript (whose values BFCL compares as source
text), and entries without an answer outside the irrelevance categories (live_relevance) are skipped.
Without a possible-answer file, only the irrelevance (and relevance) categories can be judged: an
entry of another category is an error saying the answers are needed. A record of the wrong shape is
a `TaskFileError` naming its file and line (the answers file's, for a malformed possible answer).
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from r3.replay.tasks import ReplayTask, TaskFileError, numbered_records, record_error
from verifiers import parse_spec

# constants/type_mappings.py, GORILLA_TO_OPENAPI
GORILLA_TO_OPENAPI = {
    "integer": "integer", "number": "number", "float": "number", "string": "string", "boolean": "boolean",
    "bool": "boolean", "array": "array", "list": "array", "dict": "object", "object": "object", "tuple": "array",
    "any": "string", "byte": "integer", "short": "integer", "long": "integer", "double": "number", "char": "string",
    "ArrayList": "array", "Array": "array", "HashMap": "object", "Hashtable": "object", "Queue": "array",
    "Stack": "array", "Any": "string", "String": "string", "Bigint": "integer",
}
OPTIONAL_MARK = ""  # in a list of acceptable values


class _Unanswerable(Exception):
    """A possible answer no answer can pass (BFCL fails every answer to it): the entry is skipped."""


def convert(questions: Path, answers: Path | None) -> tuple[list[ReplayTask], Counter[str]]:
    """The tasks of a BFCL category, and how many entries were skipped for each reason. Raises
    `TaskFileError` for a record that cannot be read, or an entry that needs the answers when
    `answers` is None."""
    ground_truth: dict[str, tuple[str, Any]] = {}
    for where, _, record in numbered_records(answers) if answers else ():
        try:
            ground_truth[_entry_id(record)] = (where, record["ground_truth"])
        except Exception as error:  # noqa: BLE001 - whatever the record holds, the error names it
            raise record_error(where, error) from error
    tasks: list[ReplayTask] = []
    skipped: Counter[str] = Counter()
    for where, _, record in numbered_records(questions):
        try:
            entry_id = _entry_id(record)
            category = category_of(entry_id)
            if "java" in category:
                skipped["Java/JavaScript (values compared as source text)"] += 1
            elif "multi_turn" in category or len(record.get("question", [])) != 1:
                skipped["multi-turn"] += 1
            elif "irrelevance" in category:
                tasks.append(_task(record, category, []))
            elif entry_id in ground_truth:
                answer_where, truth = ground_truth[entry_id]
                docs = {doc["name"]: doc for doc in record["function"]}
                try:
                    expected = _expected_calls(truth, docs)
                except _Unanswerable:
                    skipped["possible answer that no answer can pass"] += 1
                    continue
                except Exception as error:  # noqa: BLE001
                    raise record_error(answer_where, error) from error
                tasks.append(_task(record, category, expected))
            elif answers is not None or "relevance" in category:
                skipped["no possible answer (e.g. live_relevance)"] += 1
            else:
                raise TaskFileError(f"{where}: {category} entries are judged against BFCL's possible answers: "
                                    "pass --answers with the possible-answer file of the same name (only the "
                                    "irrelevance categories need none)")
        except Exception as error:  # noqa: BLE001
            raise record_error(where, error) from error
    return tasks, skipped


def _entry_id(record: dict[str, Any]) -> str:
    entry_id = record.get("id")
    if not isinstance(entry_id, str) or not entry_id:
        raise ValueError("id must be a non-empty string")
    return entry_id


def _expected_calls(truth: Any, docs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """An entry's ground truth as expected calls. Raises `_Unanswerable` when no answer can pass it,
    `ValueError` when it is not shaped as BFCL's possible answers are."""
    if not isinstance(truth, list):
        raise ValueError("ground_truth must be a list of possible calls, [{function name: {argument: [values]}}]")
    expected = [expected_call(entry, docs) for entry in truth]
    try:
        parse_spec(_verifier(expected))
    except ValidationError as error:  # a pattern nothing matches (a required argument with no acceptable value)
        raise _Unanswerable from error
    return expected


def category_of(entry_id: str) -> str:
    return entry_id.rsplit("_", 1)[0]


def to_openai_tool(function: dict[str, Any]) -> dict[str, Any]:
    """A BFCL function doc as an OpenAI function tool (BFCL's `convert_to_tool`, OpenAI style)."""
    function = copy.deepcopy(function)
    parameters = function.setdefault("parameters", {})
    parameters["type"] = "object"
    properties = parameters.get("properties", {})
    parameters["properties"] = {name: _openai_schema(schema) for name, schema in properties.items()}
    return {"type": "function", "function": function}


def expected_call(entry: dict[str, dict[str, list[Any]]], docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One ground-truth entry `{name: {argument: [acceptable values]}}` as an expected call. Raises
    `_Unanswerable` when it names a function the entry does not offer, `ValueError` when it is not
    shaped so."""
    if not isinstance(entry, dict) or len(entry) != 1:
        raise ValueError("each possible call in ground_truth must be {function name: {argument: [values]}}")
    (name, acceptable), = entry.items()
    if not isinstance(acceptable, dict):
        raise ValueError(f"the possible call of {name} must map its arguments to lists of acceptable values")
    if unlisted := [argument for argument, values in acceptable.items() if not isinstance(values, list)]:
        raise ValueError(f"the acceptable values of {name}'s argument {unlisted[0]} must be a list, as in "
                         f'{{"{unlisted[0]}": [value, ...]}}')
    if name not in docs:  # BFCL fails any answer to a call of a function it does not offer
        raise _Unanswerable
    parameters = docs[name].get("parameters", {})
    properties, required = parameters.get("properties", {}), set(parameters.get("required", []))
    arguments = {argument: _argument_pattern(values, properties.get(argument), argument not in required)
                 for argument, values in acceptable.items()}
    return {"name": name, "arguments": arguments}


def _verifier(expected: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "tool_call", "expected": expected, "strings": "normalized"}


def _task(record: dict[str, Any], category: str, expected: list[dict[str, Any]]) -> ReplayTask:
    request = {"messages": record["question"][0], "tools": [to_openai_tool(doc) for doc in record["function"]],
               "verifier": _verifier(expected)}
    return ReplayTask(id=record["id"], category=category, request=request)


def _openai_schema(schema: dict[str, Any], is_property: bool = True) -> dict[str, Any]:
    """One parameter's (or items') schema with OpenAPI types; only properties get the float note, as in BFCL."""
    schema = dict(schema)
    declared = schema.get("type")
    if declared == "float" and is_property:
        schema["format"] = "float"
        schema["description"] = schema.get("description", "") + " This is a float type value."
    schema["type"] = GORILLA_TO_OPENAPI.get(declared, "string") if isinstance(declared, str) else "string"
    if isinstance(schema.get("properties"), dict):
        schema["properties"] = {name: _openai_schema(child) for name, child in schema["properties"].items()}
    if isinstance(schema.get("items"), dict):
        schema["items"] = _openai_schema(schema["items"], is_property=False)
    return schema


def _argument_pattern(values: list[Any], doc: dict[str, Any] | None, may_be_left_out: bool) -> Any:
    """A parameter's list of acceptable values as a pattern (`simple_function_checker`)."""
    optional = may_be_left_out and OPTIONAL_MARK in values
    if doc is None:  # an answer naming a parameter the function lacks: BFCL refuses it when given
        return _one_of([], optional)
    typed = [value for value in values if value != OPTIONAL_MARK]
    # `type_checker` lets a string through where the doc says string, or where the answers are strings
    # (BFCL's "variable" case); then `""` is compared like any value, and found among them.
    takes_strings = GORILLA_TO_OPENAPI.get(doc.get("type"), "string") == "string" or (
        bool(typed) and isinstance(typed[0], str))
    kept = values if takes_strings else typed
    return _one_of([_acceptable_value(value, doc) for value in kept], optional)


def _acceptable_value(value: Any, doc: dict[str, Any]) -> Any:
    declared, items = doc.get("type"), doc.get("items") or {}
    if declared == "dict" and _is_dict_answer(value):
        return _dict_pattern(value)
    if declared in ("array", "tuple") and items.get("type") == "dict" and isinstance(value, list) \
            and all(_is_dict_answer(item) for item in value):
        return [_dict_pattern(item) for item in value]
    return value


def _dict_pattern(answer: dict[str, list[Any]]) -> dict[str, Any]:
    """`dict_checker`: each key a list of acceptable values, `""` marking it optional (and acceptable)."""
    return {key: _one_of(values, OPTIONAL_MARK in values) for key, values in answer.items()}


def _is_dict_answer(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(values, list) for values in value.values())


def _one_of(values: list[Any], optional: bool) -> Any:
    if len(values) == 1 and not optional:
        return values[0]
    return {"$one_of": values, "$optional": True} if optional else {"$one_of": values}
