"""Expected arguments as patterns: how `tool_call` states what may be answered, and how an answer is matched.

A pattern is a JSON value, read as follows:

    "Paris", 5, true, null    the produced value equals it (strings and numbers: see `Comparison`)
    [P1, P2]                  an array of as many items, each matching its pattern, in order
    {"k": P, ...}             an object with exactly these keys (an `$optional` key may be absent),
                              each value matching its pattern
    {"$one_of": [P1, P2]}     any one of the alternatives (each a pattern itself)
    {"$one_of": [...], "$optional": true}
                              as an object's value only: the key may also be left out; with an empty
                              `$one_of` it must be left out

An object is an operator when it has `$one_of` or `$optional`; a literal object cannot use those keys.
A call's `arguments` object itself is always literal (its keys are argument names), so it cannot
have them either: `{"$one_of": [{"a": 1}, {"b": 2}]}` there is refused, not read as an argument
named `$one_of` (which no call could match). Alternatives for a whole set of arguments are separate
expected calls, or per-argument `$one_of`s.
The shapes follow BFCL's possible answers (bfcl_eval/eval_checker/ast_eval/ast_checker.py): each
argument a list of acceptable values with `""` marking an optional one, dict arguments matched key by
key (`dict_checker`), lists of dicts item by item (`list_dict_checker`).

A difference is explained without the expected value: a retry that could copy it would pass without
its reflection having learned anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from verifiers.base import quote
from verifiers.json_text import json_type

ONE_OF = "$one_of"
OPTIONAL = "$optional"

# BFCL's `standardize_string` drops " ,./-_*^", lowercases, and reads ' as "; R3 drops every whitespace.
_IGNORED_IN_STRINGS = re.compile(r"[\s,./\-_*^]")


def standardize(text: str) -> str:
    """A string as BFCL compares it (`standardize_string` in ast_checker.py)."""
    return _IGNORED_IN_STRINGS.sub("", text).lower().replace("'", '"')


@dataclass(frozen=True)
class Comparison:
    """How scalars compare. `normalize_strings`: by `standardize`. `tolerance`: numbers this close are equal."""

    normalize_strings: bool = False
    tolerance: float | None = None


def _is_operator(pattern: Any) -> bool:
    return isinstance(pattern, dict) and (ONE_OF in pattern or OPTIONAL in pattern)


def _is_optional(pattern: Any) -> bool:
    return _is_operator(pattern) and pattern.get(OPTIONAL) is True


def arguments_problem(arguments: dict[str, Any]) -> str | None:
    """Why a call's expected `arguments` (argument name → pattern) are not well-formed, or None.
    Recursive: bound the depth before calling."""
    if operators := [key for key in (ONE_OF, OPTIONAL) if key in arguments]:
        return (f"{' and '.join(operators)} cannot stand for a call's whole arguments, which are an object of "
                f"argument names: put {ONE_OF} (and {OPTIONAL}) under an argument's name, as its value")
    for name, pattern in arguments.items():
        problem = pattern_problem(pattern, name, as_key_value=True)
        if problem is not None:
            return problem
    return None


def pattern_problem(pattern: Any, path: str, as_key_value: bool) -> str | None:
    """Why `pattern` is not a well-formed pattern (naming where), or None. `as_key_value`: it is an
    object's value, where `$optional` is allowed. Recursive: bound the depth before calling."""
    if _is_operator(pattern):
        alternatives, optional = pattern.get(ONE_OF), pattern.get(OPTIONAL, False)
        if set(pattern) - {ONE_OF, OPTIONAL}:
            return f"{path}: an operator object takes only {ONE_OF} and {OPTIONAL}"
        if not isinstance(alternatives, list):
            return f"{path}: {ONE_OF} must be an array of patterns"
        if not isinstance(optional, bool):
            return f"{path}: {OPTIONAL} must be true or false"
        if optional and not as_key_value:
            return f"{path}: {OPTIONAL} applies only to an object's key (an argument or a nested key)"
        if not alternatives and not optional:
            return f"{path}: {ONE_OF} is empty, so nothing could match"
        children = [(f"{path}.{ONE_OF}[{i}]", alternative, False) for i, alternative in enumerate(alternatives)]
    elif isinstance(pattern, dict):
        children = [(f"{path}.{key}", value, True) for key, value in pattern.items()]
    elif isinstance(pattern, list):
        children = [(f"{path}[{i}]", item, False) for i, item in enumerate(pattern)]
    else:
        return None
    for child_path, child, child_as_key_value in children:
        problem = pattern_problem(child, child_path, child_as_key_value)
        if problem is not None:
            return problem
    return None


def arguments_difference(pattern: dict[str, Any], arguments: dict[str, Any], schema: Any,
                         comparison: Comparison) -> str | None:
    """How a call's `arguments` fail the expected `pattern`, or None when they match. `schema` is the
    tool's `parameters` JSON Schema when the request offered it (it types numbers), else None."""
    return _object_difference(pattern, arguments, "", schema, comparison)


def _difference(pattern: Any, actual: Any, path: str, schema: Any, comparison: Comparison) -> str | None:
    if _is_operator(pattern):
        return _one_of_difference(pattern[ONE_OF], actual, path, schema, comparison)
    if isinstance(pattern, dict) and isinstance(actual, dict):
        return _object_difference(pattern, actual, path, schema, comparison)
    if isinstance(pattern, list) and isinstance(actual, list):
        if len(actual) != len(pattern):
            return f"argument '{path}' has {len(actual)} items, expected {len(pattern)}"
        for index, (item_pattern, item) in enumerate(zip(pattern, actual, strict=True)):
            difference = _difference(item_pattern, item, f"{path}[{index}]", _item_schema(schema, index), comparison)
            if difference is not None:
                return difference
        return None
    return _scalar_difference(pattern, actual, path, schema, comparison)


def _one_of_difference(alternatives: list[Any], actual: Any, path: str, schema: Any,
                       comparison: Comparison) -> str | None:
    differences = [_difference(alternative, actual, path, schema, comparison) for alternative in alternatives]
    if None in differences:
        return None
    if not alternatives:  # `$optional` with nothing acceptable: the argument must be left out
        return f"unexpected argument '{path}'"
    # Explain against an alternative of the answer's own kind: a nested miss tells more than "wrong".
    for alternative, difference in zip(alternatives, differences, strict=True):
        if json_type(alternative) == json_type(actual):
            return difference
    return _wrong(path, actual)


def _object_difference(pattern: dict[str, Any], actual: dict[str, Any], path: str, schema: Any,
                       comparison: Comparison) -> str | None:
    def child(key: str) -> str:
        return f"{path}.{key}" if path else key

    for key, value_pattern in pattern.items():
        if key not in actual and not _is_optional(value_pattern):
            return f"missing argument '{child(key)}'"
    for key in actual:
        if key not in pattern:
            return f"unexpected argument '{child(key)}'"
    for key, value_pattern in pattern.items():
        if key in actual:
            difference = _difference(value_pattern, actual[key], child(key), _property_schema(schema, key), comparison)
            if difference is not None:
                return difference
    return None


def _scalar_difference(expected: Any, actual: Any, path: str, schema: Any, comparison: Comparison) -> str | None:
    if _is_number(expected) and _is_number(actual):
        types = _schema_types(schema)
        # The tool's schema types its numbers: an integer is a number (5 for 5.0), a float is not an integer.
        if "integer" in types and "number" not in types and isinstance(actual, float):
            return f"argument '{path}' is {quote(actual)}, but the parameter is an integer"
        if comparison.tolerance is not None:
            equal = _within(expected, actual, comparison.tolerance)
        elif types & {"integer", "number"}:
            equal = expected == actual  # Python compares int and float by exact value
        else:  # untyped: JSON's own types, so 1 ≠ 1.0
            equal = type(expected) is type(actual) and expected == actual
    elif isinstance(expected, str) and isinstance(actual, str) and comparison.normalize_strings:
        equal = standardize(expected) == standardize(actual)
    else:
        equal = type(expected) is type(actual) and expected == actual
    return None if equal else _wrong(path, actual)


def _wrong(path: str, actual: Any) -> str:
    return f"argument '{path}' is {quote(actual)}, which is wrong"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _within(expected: int | float, actual: int | float, tolerance: float) -> bool:
    try:
        # Fractions: exact, and no OverflowError for integers beyond the range of floats.
        return abs(Fraction(expected) - Fraction(actual)) <= Fraction(tolerance)
    except (OverflowError, ValueError):  # an infinity or NaN has no Fraction
        return expected == actual


def _schema_types(schema: Any) -> set[str]:
    declared = schema.get("type") if isinstance(schema, dict) else None
    if isinstance(declared, str):
        return {declared}
    return {t for t in declared if isinstance(t, str)} if isinstance(declared, list) else set()


def _property_schema(schema: Any, key: str) -> Any:
    properties = schema.get("properties") if isinstance(schema, dict) else None
    return properties.get(key) if isinstance(properties, dict) else None


def _item_schema(schema: Any, index: int) -> Any:
    if not isinstance(schema, dict):
        return None
    prefix = schema.get("prefixItems")
    if isinstance(prefix, list) and index < len(prefix):
        return prefix[index]
    items = schema.get("items")
    return items if isinstance(items, dict) else None
