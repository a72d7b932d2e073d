"""JSON Schema checks shared by `json_schema`, `tool_schema` and the server's request validation.

The validator class follows the schema's `$schema` and defaults to Draft 2020-12. `format` is not
asserted (the JSON Schema default). Remote `$ref`s are never fetched: they are unresolvable.

A client's JSON value (a schema, a verifier's spec) may nest at most `MAX_JSON_DEPTH` arrays and
objects: jsonschema (and anything else that walks such a value) recurses once or more per level, so
a deeper value would exhaust the interpreter's stack (a `RecursionError`).

A known gap: jsonschema applies `pattern` and `patternProperties` with Python's `re`, which has no
time limit, so a client's catastrophic pattern can hold the event loop while its answer is checked
(the `regex` verifier bounds its matches; jsonschema offers no hook for another regex engine).
"""

from __future__ import annotations

from typing import Any

from jsonschema import SchemaError
from jsonschema.exceptions import best_match
from jsonschema.validators import Draft202012Validator, validator_for

MAX_JSON_DEPTH = 64  # arrays and objects inside one another; a schema 64 deep checks within ~500 stack frames


def nesting_depth(value: Any) -> int:
    """How many arrays/objects deep a JSON value goes (a scalar: 0, `{}`: 1), computed without recursion."""
    depth, level = 0, [value]
    while level:
        containers = [v for v in level if isinstance(v, dict | list)]
        if not containers:
            break
        depth += 1
        level = [child for c in containers for child in (c.values() if isinstance(c, dict) else c)]
    return depth


def depth_problem(value: Any) -> str | None:
    """Why `value` is nested too deeply to take (deeper than `MAX_JSON_DEPTH`), or None."""
    if nesting_depth(value) > MAX_JSON_DEPTH:
        return f"nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects"
    return None


def schema_problem(schema: Any) -> str | None:
    """Why `schema` is not a valid JSON Schema (or too deeply nested to check), or None when it is."""
    if not isinstance(schema, dict | bool):
        return "a JSON Schema must be an object or a boolean"
    too_deep = depth_problem(schema)
    if too_deep is not None:
        return too_deep
    if isinstance(schema, dict) and not isinstance(schema.get("$schema", ""), str):
        return "$schema must be a string: the URI of a JSON Schema dialect"  # jsonschema crashes on others
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as error:
        return f"invalid JSON Schema at {error.json_path}: {error.message}"
    return None


def schema_violation(schema: Any, instance: Any) -> str | None:
    """Why `instance` fails a valid `schema`, or None when it passes."""
    validator = validator_for(schema, default=Draft202012Validator)(schema)
    try:
        error = best_match(validator.iter_errors(instance))
    except Exception as failure:  # noqa: BLE001
        # An unresolvable or cyclic $ref (jsonschema raises private types, or RecursionError): the
        # schema came with the request and cannot be applied, which is a failure, not a crash.
        return f"the schema cannot be applied: {failure}"
    if error is None:
        return None
    return f"{error.json_path}: {error.message}"
