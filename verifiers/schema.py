"""JSON Schema checks shared by `json_schema` and `tool_schema`.

The validator class follows the schema's `$schema` and defaults to Draft 2020-12. `format` is not
asserted (the JSON Schema default). Remote `$ref`s are never fetched: they are unresolvable.

A known gap: jsonschema applies `pattern` and `patternProperties` with Python's `re`, which has no
time limit, so a client's catastrophic pattern can hold the event loop while its answer is checked
(the `regex` verifier bounds its matches; jsonschema offers no hook for another regex engine).
"""

from __future__ import annotations

from typing import Any

from jsonschema import SchemaError
from jsonschema.exceptions import best_match
from jsonschema.validators import Draft202012Validator, validator_for


def schema_problem(schema: Any) -> str | None:
    """Why `schema` is not a valid JSON Schema, or None when it is."""
    if not isinstance(schema, dict | bool):
        return "a JSON Schema must be an object or a boolean"
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
