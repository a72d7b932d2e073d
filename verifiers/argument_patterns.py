"""Expected arguments as patterns: how `tool_call` states what may be answered, and how an answer is matched.

A pattern is a JSON value, read as follows:

    "Paris", 5, true, null    the produced value equals it (see "How values compare" below)
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

How values compare follows the same checker, whose rules depend on where a value sits (`Place`):

- An argument (`simple_function_checker`, `type_checker`) must have the type its schema gives it,
  an integer counting for a `number` (BFCL turns an int given for a float into a float), or else the
  JSON type of the expected value (BFCL's "variable" case, where the possible answer's type wins):
  `70.0` fails for an `integer`, `1` for a `boolean`. An item of an array argument is checked the
  same way against `items`, but without the integer-for-`number` allowance: `[1, 2.5]` fails where
  the items are `number`s and `[1.0, 2.5]` is expected (the nested check of `type_checker`). When
  the argument is optional, or one of its acceptable values is not an array, its items are not
  checked (BFCL's nested check passes on any possible answer that is not a list, its `""` mark too).
  Without a schema type, the expected value's JSON type is the type: `1` ≠ `1.0`, `true` ≠ `1`.
- Below those, nothing is type-checked: a value is compared with Python's `==`, as `dict_checker`,
  `list_checker` and `list_dict_checker` do, so `50.0` equals `50` and `true` equals `1` inside an
  object, whatever its schema says.
- Strings compare by `standardize` (with `strings: "normalized"`) where BFCL standardizes them: an
  argument, an item of an array argument, a value of an object argument or of an object in an
  array argument. Deeper strings compare exactly, as Python's `==` compares them there.
- An optional argument may be given empty where BFCL's `""` mark matches it: `""` where the
  argument takes strings (`string_checker`), `[]` where it is an array (`list_checker` reads `""`
  as an empty list); an optional key of an object argument, or of an object in an array argument,
  may be given `""` whatever its type (`dict_checker` checks no type).

A difference is explained without the expected value: a retry that could copy it would pass without
its reflection having learned anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction
from typing import Any

from verifiers.base import quote
from verifiers.json_text import json_type

ONE_OF = "$one_of"
OPTIONAL = "$optional"

# BFCL's `standardize_string` drops these (only the ASCII space: a tab or a no-break space stays),
# lowercases, and reads ' as ".
_IGNORED_IN_STRINGS = re.compile(r"[ ,./\-_*^]")


def standardize(text: str) -> str:
    """A string as BFCL compares it (`standardize_string` in ast_checker.py)."""
    return _IGNORED_IN_STRINGS.sub("", text).lower().replace("'", '"')


@dataclass(frozen=True)
class Comparison:
    """How scalars compare. `normalize_strings`: by `standardize`, where BFCL standardizes.
    `tolerance`: numbers this close are equal."""

    normalize_strings: bool = False
    tolerance: float | None = None


class Place(Enum):
    """Where a value sits in a call's arguments, which decides the rules BFCL's checker applies to it
    (ast_checker.py; see the module's docstring)."""

    CALL = "the arguments object"
    ARGUMENT = "an argument"  # simple_function_checker: type_checker, then string/list/dict_checker
    # The same, but its items are not type-checked: type_checker's nested check passes as soon as one
    # possible answer is not a list, as the optional mark "" is not.
    LOOSE_ARGUMENT = "an optional argument, or one with an acceptable value that is not an array"
    ITEM = "an item of an array argument"  # type_checker's nested (one level) check, list_checker
    UNCHECKED_ITEM = "an item of a loose argument"  # list_checker only
    ENTRY = "a value of an object argument or of an object item"  # dict_checker: ==, strings standardized
    DEEP = "deeper"  # == as Python has it

    def inside(self, container: list | dict, pattern: Any) -> Place:
        """The place of a value inside `container` (itself a value at this place) that `pattern` states."""
        if self is Place.CALL:
            loose = _is_optional(pattern) or any(not isinstance(value, list) for value in _alternatives(pattern))
            return Place.LOOSE_ARGUMENT if loose else Place.ARGUMENT
        if isinstance(container, list):
            return {Place.ARGUMENT: Place.ITEM, Place.LOOSE_ARGUMENT: Place.UNCHECKED_ITEM}.get(self, Place.DEEP)
        return Place.ENTRY if self in _ENTRY_HOLDERS else Place.DEEP


_ENTRY_HOLDERS = frozenset({Place.ARGUMENT, Place.LOOSE_ARGUMENT, Place.ITEM, Place.UNCHECKED_ITEM})
_TYPE_CHECKED = frozenset({Place.ARGUMENT, Place.LOOSE_ARGUMENT, Place.ITEM})
_ARGUMENTS = frozenset({Place.ARGUMENT, Place.LOOSE_ARGUMENT})
_STANDARDIZED = frozenset(set(Place) - {Place.DEEP, Place.CALL})


def _is_operator(pattern: Any) -> bool:
    return isinstance(pattern, dict) and (ONE_OF in pattern or OPTIONAL in pattern)


def _is_optional(pattern: Any) -> bool:
    return _is_operator(pattern) and pattern.get(OPTIONAL) is True


def _alternatives(pattern: Any) -> Iterator[Any]:
    """The literal patterns a pattern allows, through nested `$one_of`s (a literal: itself)."""
    if _is_operator(pattern):
        for alternative in pattern[ONE_OF]:
            yield from _alternatives(alternative)
    else:
        yield pattern


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
    tool's `parameters` JSON Schema when the request offered it (it types the arguments and the items
    of array arguments), else None. Recursive: bound the depth of `pattern` before calling (`arguments`
    were read by `verifiers.json_text`, which bounds theirs)."""
    return _object_difference(pattern, arguments, "", schema, Place.CALL, comparison)


def _difference(pattern: Any, actual: Any, path: str, schema: Any, place: Place,
                comparison: Comparison) -> str | None:
    if _is_operator(pattern):
        return _one_of_difference(pattern[ONE_OF], actual, path, schema, place, comparison)
    if place in _TYPE_CHECKED:
        problem = _type_problem(pattern, actual, path, schema, place, comparison)
        if problem is not None:
            return problem
    if isinstance(pattern, dict) and isinstance(actual, dict):
        return _object_difference(pattern, actual, path, schema, place, comparison)
    if isinstance(pattern, list) and isinstance(actual, list):
        if len(actual) != len(pattern):
            return f"argument '{path}' has {len(actual)} items, expected {len(pattern)}"
        for index, (item_pattern, item) in enumerate(zip(pattern, actual, strict=True)):
            difference = _difference(item_pattern, item, f"{path}[{index}]", _item_schema(schema, index),
                                     place.inside(actual, item_pattern), comparison)
            if difference is not None:
                return difference
        return None
    return _scalar_difference(pattern, actual, path, place, comparison)


def _one_of_difference(alternatives: list[Any], actual: Any, path: str, schema: Any, place: Place,
                       comparison: Comparison) -> str | None:
    differences = [_difference(alternative, actual, path, schema, place, comparison)
                   for alternative in alternatives]
    if None in differences:
        return None
    if not alternatives:  # `$optional` with nothing acceptable: the argument must be left out
        return f"unexpected argument '{path}'"
    # Explain against an alternative of the answer's own kind: a nested miss tells more than "wrong";
    # else against the first (a type check's complaint, or "wrong").
    for alternative, difference in zip(alternatives, differences, strict=True):
        if json_type(alternative) == json_type(actual):
            return difference
    return differences[0]


def _object_difference(pattern: dict[str, Any], actual: dict[str, Any], path: str, schema: Any, place: Place,
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
        if key not in actual:
            continue
        value_schema, value_place = _property_schema(schema, key), place.inside(actual, value_pattern)
        if _is_optional(value_pattern) and _given_as_left_out(value_pattern, actual[key], value_schema,
                                                              value_place, comparison):
            continue
        difference = _difference(value_pattern, actual[key], child(key), value_schema, value_place, comparison)
        if difference is not None:
            return difference
    return None


def _given_as_left_out(pattern: Any, actual: Any, schema: Any, place: Place, comparison: Comparison) -> bool:
    """Whether `actual`, given for an `$optional` key, matches BFCL's optional mark `""` (which it
    keeps among the acceptable values and compares like them): at an argument, `""` where it takes
    strings (its schema's type, or string alternatives: `type_checker`'s "variable" case) and `[]`
    where it is an array (`list_checker` reads `""` as an empty list; without a schema type, where an
    alternative is an array); as an object's value, `""` whatever its type (`dict_checker`)."""
    empty_string = isinstance(actual, str) and _standardized(actual, place, comparison) == ""
    if place is Place.ENTRY:
        return empty_string
    if place not in _ARGUMENTS:
        return False
    types, alternatives = _schema_types(schema), list(_alternatives(pattern))
    if empty_string:
        return "string" in types or any(isinstance(alternative, str) for alternative in alternatives)
    if actual == [] and isinstance(actual, list):
        return "array" in types if types else any(isinstance(alternative, list) for alternative in alternatives)
    return False


def _type_problem(expected: Any, actual: Any, path: str, schema: Any, place: Place,
                  comparison: Comparison) -> str | None:
    """Why `actual` fails the type check BFCL makes at an argument and at an item of an array argument
    (`type_checker`), or None. It passes with the expected value's own type (the "variable" case) or
    one of the schema's types, an integer also counting as a `number` at an argument (BFCL casts an
    int given for a float, there only). Untyped, only the expected value's type passes, or with a
    `numeric_tolerance` any number for a number."""
    kind = _schema_type(actual)
    if kind == _schema_type(expected):
        return None
    types = _schema_types(schema)
    if types:
        if kind in types or (kind == "integer" and "number" in types and place in _ARGUMENTS):
            return None
        if kind == "integer" and "number" in types:  # at an item, where BFCL casts no int to a float
            return f"argument '{path}' is {quote(actual)}, but the parameter's items are floats (with a decimal point)"
        whose = "the parameter is" if place in _ARGUMENTS else "the parameter's items are each"
        names = " or ".join(_A_TYPE.get(name, name) for name in sorted(types))
        return f"argument '{path}' is {quote(actual)}, but {whose} {names}"
    if comparison.tolerance is not None and _is_number(expected) and _is_number(actual):
        return None
    return _wrong(path, actual)


_A_TYPE = {"integer": "an integer", "number": "a number", "boolean": "a boolean", "string": "a string",
           "array": "an array", "object": "an object", "null": "null"}


def _scalar_difference(expected: Any, actual: Any, path: str, place: Place, comparison: Comparison) -> str | None:
    if isinstance(expected, str) and isinstance(actual, str):
        equal = _standardized(expected, place, comparison) == _standardized(actual, place, comparison)
    elif isinstance(expected, int | float) and isinstance(actual, int | float):
        # Python's ==, as BFCL compares: 5 == 5.0, and a bool is the int 0 or 1. Where that matters
        # (true for 1) the type check has already refused what BFCL refuses.
        equal = expected == actual if comparison.tolerance is None else _within(expected, actual, comparison.tolerance)
    else:
        equal = expected == actual  # null, or values of different kinds (never equal)
    return None if equal else _wrong(path, actual)


def _standardized(text: str, place: Place, comparison: Comparison) -> str:
    return standardize(text) if comparison.normalize_strings and place in _STANDARDIZED else text


def _wrong(path: str, actual: Any) -> str:
    return f"argument '{path}' is {quote(actual)}, which is wrong"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _schema_type(value: Any) -> str:
    """A parsed JSON value's JSON Schema type, an integer told from a float as Python (and BFCL) tell them."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return json_type(value)


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
