"""JSON Schema checks shared by `json_schema`, `tool_schema` and the server's request validation.

The validator class follows the schema's `$schema` and defaults to Draft 2020-12. `format` is not
asserted (the JSON Schema default). Remote `$ref`s are never fetched: they are unresolvable.

A client's JSON value (a schema, a verifier's spec) may nest at most `MAX_JSON_DEPTH` arrays and
objects: jsonschema (and anything else that walks such a value) recurses once or more per level, so
a deeper value would exhaust the interpreter's stack (a `RecursionError`).

Patterns are the client's own, and one like `^(a|a)+$` backtracks exponentially. jsonschema matches
`pattern` and `patternProperties` with Python's `re`, which has no time limit and holds the GIL while
it runs, so R3 validates with jsonschema's classes extended (`jsonschema.validators.extend`) to match
with the `regex` package instead: re's syntax, with a timeout. All the matches of one check share
`PATTERN_BUDGET_S`; past it the check stops with a failure that says which pattern ran out
(`schema_violation`). jsonschema's `unevaluatedProperties` matches `patternProperties` itself, with
`re`, and offers no hook, so a schema that uses both is refused (`schema_problem`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextvars import ContextVar
from functools import cache
from typing import Any

import attrs
import regex
from jsonschema import SchemaError, ValidationError, validators
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from jsonschema.validators import Draft202012Validator, validator_for

MAX_JSON_DEPTH = 64  # arrays and objects inside one another; a schema 64 deep checks within ~500 stack frames
PATTERN_BUDGET_S = 0.5  # all the pattern matches of one `schema_violation` together


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


def schema_shape_problem(schema: Any) -> str | None:
    """The quick part of `schema_problem` (linear, ~15 ms for 400 kB): why `schema` cannot be a JSON
    Schema R3 checks (not an object or boolean, too deeply nested, a `$schema` that is not a string),
    or None. Checking it against its metaschema takes ~6 µs a byte, so the server does that off the
    event loop."""
    if not isinstance(schema, dict | bool):
        return "a JSON Schema must be an object or a boolean"
    too_deep = depth_problem(schema)
    if too_deep is not None:
        return too_deep
    if isinstance(schema, dict) and not isinstance(schema.get("$schema", ""), str):
        return "$schema must be a string: the URI of a JSON Schema dialect"  # jsonschema crashes on others
    return None


def schema_problem(schema: Any) -> str | None:
    """Why `schema` is not a valid JSON Schema (or too deeply nested to check, or not one R3 can
    apply within its time limits), or None when it is."""
    problem = schema_shape_problem(schema)
    if problem is not None:
        return problem
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as error:
        return f"invalid JSON Schema at {error.json_path}: {error.message}"
    if {"patternProperties", "unevaluatedProperties"} <= _keys_within(schema):
        return ("patternProperties cannot be combined with unevaluatedProperties: R3 matches patterns with a "
                "time limit, which jsonschema's unevaluatedProperties does not apply")
    return None


def schema_violation(schema: Any, instance: Any) -> str | None:
    """Why `instance` fails a valid `schema`, or None when it passes. Its pattern matches take at most
    `PATTERN_BUDGET_S` together: past that, the answer is a failure saying so."""
    validator = _bounded(validator_for(schema, default=Draft202012Validator))(schema)
    budget = _deadline.set(time.monotonic() + PATTERN_BUDGET_S)
    try:
        error = best_match(validator.iter_errors(instance))
    except PatternTimeout as timeout:
        return (f"the schema's pattern {timeout.pattern[:60]!r} took longer than {PATTERN_BUDGET_S:g} s to "
                "match the answer, so it was not checked")
    except Exception as failure:  # noqa: BLE001
        # An unresolvable or cyclic $ref (jsonschema raises private types, or RecursionError), a pattern
        # `regex` cannot read: the schema came with the request and cannot be applied, which is a
        # failure, not a crash.
        return f"the schema cannot be applied: {failure}"
    finally:
        _deadline.reset(budget)
    if error is None:
        return None
    return f"{error.json_path}: {error.message}"


def _keys_within(value: Any) -> set[str]:
    """Every key of every object in a JSON value, without recursion."""
    keys: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            keys.update(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return keys


# ------------------------------------------------------------------ patterns matched with a time limit


class PatternTimeout(Exception):
    """A pattern ran out of its check's time (`PATTERN_BUDGET_S`)."""

    def __init__(self, pattern: str) -> None:
        super().__init__(f"the pattern {pattern!r} took too long")
        self.pattern = pattern


# When the current check's matches must end (time.monotonic()); set by `schema_violation`.
_deadline: ContextVar[float | None] = ContextVar("pattern_deadline", default=None)


def _search(pattern: str, text: str) -> bool:
    """`re.search(pattern, text)`'s truth, with `regex` and the time the check has left. Raises
    `PatternTimeout` when it runs out; `regex` releases the GIL while it matches."""
    deadline = _deadline.get() or time.monotonic() + PATTERN_BUDGET_S
    left = deadline - time.monotonic()
    if left <= 0:
        raise PatternTimeout(pattern)
    try:
        return regex.search(pattern, text, timeout=left) is not None
    except TimeoutError:
        raise PatternTimeout(pattern) from None


def _pattern(validator: Validator, pattern: str, instance: Any, schema: dict) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Validator, patterns: dict, instance: Any, schema: dict) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


@cache
def _bounded(base: type[Validator]) -> type[Validator]:
    """`base` (a jsonschema validator class) with every keyword that matches a pattern matching it
    with `_search`; a subschema of another dialect (its own `$schema`) is checked by that dialect's
    class, bounded too."""
    additional_properties = base.VALIDATORS["additionalProperties"]

    def _additional_properties(validator: Validator, additional: Any, instance: Any,
                               schema: dict) -> Iterator[ValidationError]:
        # jsonschema's own, shown only the keys no pattern matches: it would match them with `re`.
        patterns = schema.get("patternProperties")
        if patterns and validator.is_type(instance, "object"):
            instance = {key: value for key, value in instance.items()
                        if not any(_search(pattern, key) for pattern in patterns)}
            schema = {keyword: value for keyword, value in schema.items() if keyword != "patternProperties"}
        yield from additional_properties(validator, additional, instance, schema)

    bounded = validators.extend(base, {"pattern": _pattern, "patternProperties": _pattern_properties,
                                       "additionalProperties": _additional_properties})
    evolve = bounded.evolve

    def evolve_bounded(self: Validator, **changes: Any) -> Validator:
        evolved = evolve(self, **changes)
        if evolved.VALIDATORS["pattern"] is _pattern:
            return evolved
        unbounded = type(evolved)
        return _bounded(unbounded)(**{field.alias: getattr(evolved, field.name)
                                      for field in attrs.fields(unbounded) if field.init})

    bounded.evolve = evolve_bounded
    return bounded
