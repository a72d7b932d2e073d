"""`tool_call` agrees with BFCL's AST checker at every depth of the arguments (R3 issue 27).

BFCL's rules (bfcl_eval/eval_checker/ast_eval/ast_checker.py) depend on where a value sits: an
argument and the items of an array argument are type-checked (`type_checker`); below them values
compare with Python's `==` (`dict_checker`, `list_checker`, `list_dict_checker`), so `50.0 == 50` and
`True == 1`; strings are standardized down to an object argument's values and an array argument's
items, and compare exactly deeper. Each case names the rule. Where the request offers the tool,
every verdict here is the one BFCL's checker gives for the same possible answer (checked against
ast_checker.py at gorilla 6ea5797); the cases marked "R3" have no BFCL counterpart (no tools offered,
or `$optional` deeper than BFCL's possible answers can mark a key) and show R3's reading of them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifiers import Attempt, TaskContext, ToolCall, ToolCallSpec, Verdict, parse_spec


def one_of(*values: Any, optional: bool = False) -> dict[str, Any]:
    return {"$one_of": list(values), **({"$optional": True} if optional else {})}


def judge(arguments: dict[str, Any], produced: dict[str, Any], properties: dict[str, Any] | None,
          strings: str = "normalized") -> Verdict:
    """The verdict on one call of `f` that produced `produced`, when `arguments` are expected and `f`
    was offered with these parameter `properties` (None: no tools offered)."""
    spec = parse_spec({"type": "tool_call", "expected": [{"name": "f", "arguments": arguments}], "strings": strings})
    assert isinstance(spec, ToolCallSpec)
    tools = () if properties is None else (
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": properties}}},)
    attempt = Attempt(content=None, tool_calls=(ToolCall("f", json.dumps(produced)),))
    return spec.judge(attempt, TaskContext(tools=tools))


INTEGER, NUMBER, BOOLEAN, STRING = ({"type": t} for t in ("integer", "number", "boolean", "string"))
PARAMS = {"params": {"type": "object", "properties": {"limit": INTEGER, "ratio": NUMBER, "exact": BOOLEAN,
                                                      "city": STRING, "ids": {"type": "array", "items": INTEGER},
                                                      "page": {"type": "object", "properties": {"size": INTEGER,
                                                                                                "city": STRING}}}}}
ROWS = {"rows": {"type": "array", "items": {"type": "object", "properties": {"count": INTEGER, "on": BOOLEAN,
                                                                             "city": STRING}}}}
SIDES = {"sides": {"type": "array", "items": NUMBER}}
FLAGS = {"flags": {"type": "array", "items": BOOLEAN}}
COUNTS = {"counts": {"type": "array", "items": INTEGER}}
TOP = {"limit": INTEGER, "on": BOOLEAN, "tags": {"type": "array", "items": STRING}, "city": STRING}
LOOSE = {"config": {"type": "object"}}  # an object whose schema types nothing inside
GRID = {"grid": {"type": "array", "items": {"type": "array", "items": STRING}}}

# (expected arguments, produced arguments, tool properties (None: no tools), success)
CASES = {
    # A float for an integer: refused at an argument and an array argument's item (type_checker),
    # accepted inside an object at any depth (dict_checker's ==: 50.0 == 50).
    "float for integer inside an object": ({"params": {"limit": 50}}, {"params": {"limit": 50.0}}, PARAMS, True),
    "float for integer two objects deep": ({"params": {"page": {"size": 20}}}, {"params": {"page": {"size": 20.0}}},
                                           PARAMS, True),
    "float for integer in an object item of an array": ({"rows": [{"count": 3}]}, {"rows": [{"count": 3.0}]}, ROWS,
                                                        True),
    "floats for integers in an array inside an object": ({"params": {"ids": [1, 2]}}, {"params": {"ids": [1.0, 2.0]}},
                                                         PARAMS, True),
    "float for integer at the argument": ({"limit": 50}, {"limit": 50.0}, TOP, False),
    "float for integer as an array argument's item": ({"counts": [50]}, {"counts": [50.0]}, COUNTS, False),
    "float that differs inside an object": ({"params": {"limit": 50}}, {"params": {"limit": 50.5}}, PARAMS, False),
    # 1/0 for booleans: Python's True == 1, inside objects; the type check refuses it above.
    "1 for true inside an object": ({"params": {"exact": True}}, {"params": {"exact": 1}}, PARAMS, True),
    "0 for false inside an object": ({"params": {"exact": False}}, {"params": {"exact": 0}}, PARAMS, True),
    "1.0 for true inside an object item": ({"rows": [{"on": True}]}, {"rows": [{"on": 1.0}]}, ROWS, True),
    "true for 1 inside an object": ({"params": {"limit": 1}}, {"params": {"limit": True}}, PARAMS, True),
    "0 for true inside an object": ({"params": {"exact": True}}, {"params": {"exact": 0}}, PARAMS, False),
    "1 for true at the argument": ({"on": True}, {"on": 1}, TOP, False),
    "1 for true as an array argument's item": ({"flags": [True]}, {"flags": [1]}, FLAGS, False),
    # An optional argument given empty matches BFCL's optional mark "": [] for an array (list_checker
    # reads "" as []), "" for a string (string_checker); inside an object, "" for any optional key.
    "[] for an optional array": ({"tags": one_of(["a"], optional=True)}, {"tags": []}, TOP, True),
    "[] for an optional array of objects": ({"rows": one_of([{"count": 1}], optional=True)}, {"rows": []}, ROWS, True),
    "[] for an optional array that must be left out": ({"tags": one_of(optional=True)}, {"tags": []}, TOP, True),
    "R3: [] for an optional array, no tools offered": ({"tags": one_of(["a"], optional=True)}, {"tags": []}, None,
                                                       True),
    "[] for a required array": ({"tags": ["a"]}, {"tags": []}, TOP, False),
    "[] for an optional string": ({"city": one_of("Paris", optional=True)}, {"city": []}, TOP, False),
    "[] for an optional array inside an object": ({"params": {"ids": one_of([1], optional=True)}},
                                                  {"params": {"ids": []}}, PARAMS, False),
    '"" for an optional string': ({"city": one_of("Paris", optional=True)}, {"city": ""}, TOP, True),
    '" " for an optional string (standardized to "")': ({"city": one_of("Paris", optional=True)}, {"city": " "}, TOP,
                                                       True),
    '"" for an optional integer': ({"limit": one_of(5, optional=True)}, {"limit": ""}, TOP, False),
    '"" for an optional key of an object argument': ({"params": {"limit": one_of(5, optional=True)}},
                                                     {"params": {"limit": ""}}, PARAMS, True),
    '"" for an optional key of an object item': ({"rows": [{"count": one_of(5, optional=True)}]},
                                                 {"rows": [{"count": ""}]}, ROWS, True),
    '"" for a required key of an object argument': ({"params": {"limit": 5}}, {"params": {"limit": ""}}, PARAMS,
                                                    False),
    'R3: "" for an optional key two objects deep': ({"params": {"page": {"size": one_of(5, optional=True)}}},
                                                {"params": {"page": {"size": ""}}}, PARAMS, False),
    # Ints and floats where the schema types nothing, or no tools were offered: == inside objects.
    "1.0 for 1 inside an untyped object": ({"config": {"ratio": 1}}, {"config": {"ratio": 1.0}}, LOOSE, True),
    "R3: 1 for 1.0 inside an object, no tools offered": ({"config": {"ratio": 1.0}}, {"config": {"ratio": 1}}, None,
                                                         True),
    "1 for 1.0 deep in arrays inside an object": ({"config": {"grid": [[1.0]]}}, {"config": {"grid": [[1]]}}, LOOSE,
                                                  True),
    "R3: 1.0 for 1 at an argument, no tools offered": ({"n": 1}, {"n": 1.0}, None, False),
    '"1" for 1 inside an object': ({"config": {"n": 1}}, {"config": {"n": "1"}}, LOOSE, False),
    # Strings are standardized where BFCL standardizes them, exact deeper.
    "re-cased string inside an object argument": ({"params": {"city": "New York"}}, {"params": {"city": "new york"}},
                                                  PARAMS, True),
    "re-cased string in an object item of an array": ({"rows": [{"city": "New York"}]},
                                                      {"rows": [{"city": "NEW-YORK"}]}, ROWS, True),
    "re-cased string as an array argument's item": ({"tags": ["New York"]}, {"tags": ["new york"]}, TOP, True),
    "re-cased string two objects deep": ({"params": {"page": {"city": "New York"}}},
                                         {"params": {"page": {"city": "new york"}}}, PARAMS, False),
    "re-cased string in an array inside an object": ({"config": {"cities": ["New York"]}},
                                                     {"config": {"cities": ["new york"]}}, LOOSE, False),
    "re-cased string in an array inside an array": ({"grid": [["New York"]]}, {"grid": [["new york"]]}, GRID, False),
    "same string two objects deep": ({"params": {"page": {"city": "New York"}}},
                                     {"params": {"page": {"city": "New York"}}}, PARAMS, True),
    # Only the ASCII space is dropped (standardize_string's [ ,./-_*^]): a tab or no-break space stays.
    "tab for a space": ({"city": "New York"}, {"city": "New\tYork"}, TOP, False),
    "no-break space for a space": ({"city": "New York"}, {"city": "New\u00a0York"}, TOP, False),
    "newline for a space inside an object": ({"params": {"city": "New York"}}, {"params": {"city": "New\nYork"}},
                                             PARAMS, False),
    "hyphen for a space": ({"city": "New York"}, {"city": "new-york"}, TOP, True),
    # An array argument's items are type-checked with no integer allowance (type_checker's nested
    # check), unless the expected item is an integer itself (its "variable" case) or the argument is
    # optional or may be a non-array (the nested check passes on the "" mark, or on any non-list answer).
    "integer items in a float array": ({"sides": [1.0, 2.5]}, {"sides": [1, 2.5]}, SIDES, False),
    "integer item matching an integer expected item": ({"sides": [1, 2.5]}, {"sides": [1, 2.5]}, SIDES, True),
    "float item for an integer expected item": ({"sides": [1, 2.5]}, {"sides": [1.0, 2.5]}, SIDES, True),
    "integer items in an optional float array": ({"sides": one_of([1.0, 2.5], optional=True)}, {"sides": [1, 2.5]},
                                                 SIDES, True),
    "integer items in a float array that may be a string": ({"sides": one_of([1.0, 2.5], "all")}, {"sides": [1, 2.5]},
                                                            SIDES, True),
    "integer items in a float array inside an object": ({"config": {"sides": [1.0]}}, {"config": {"sides": [1]}},
                                                        {"config": {"type": "object", "properties": SIDES}}, True),
    "integer for a float argument": ({"ratio": 2.0}, {"ratio": 2}, {"ratio": NUMBER}, True),
}


@pytest.mark.parametrize(("expected", "produced", "properties", "success"), CASES.values(), ids=CASES.keys())
def test_verdict_agrees_with_bfcl_at_every_depth(expected, produced, properties, success) -> None:
    verdict = judge(expected, produced, properties)
    assert verdict.success is success, verdict.detail


def test_exact_strings_stay_exact_where_bfcl_standardizes() -> None:
    # `strings: "exact"` (the default) is stricter than BFCL at every depth: a choice of R3's.
    assert not judge({"params": {"city": "New York"}}, {"params": {"city": "new york"}}, PARAMS, "exact").success


@pytest.mark.parametrize(("expected", "produced", "fragment"), [
    ({"sides": [1.0]}, {"sides": [1]}, "argument 'sides[0]' is 1, but the parameter's items are floats"),
    ({"flags": [True]}, {"flags": [1]}, "argument 'flags[0]' is 1, but the parameter's items are each a boolean"),
    ({"limit": 50}, {"limit": 50.0}, "argument 'limit' is 50.0, but the parameter is an integer"),
    ({"params": {"page": {"city": "New York"}}}, {"params": {"page": {"city": "new york"}}},
     """argument 'params.page.city' is "new york", which is wrong"""),
])
def test_details_name_the_depth_and_the_rule(expected, produced, fragment) -> None:
    properties = {**PARAMS, **SIDES, **FLAGS, **TOP}
    verdict = judge(expected, produced, properties)
    assert not verdict.success
    assert fragment in verdict.detail


# --- property: below an object argument, numbers compare by value ------------------------------------

NUMBERS_AND_BOOLS = st.booleans() | st.integers(-1000, 1000)
NESTED = st.recursive(NUMBERS_AND_BOOLS | st.text(max_size=4),
                      lambda children: st.lists(children, max_size=3)
                      | st.dictionaries(st.text("abc", min_size=1, max_size=3), children, max_size=3),
                      max_leaves=10)


def as_floats(value: Any) -> Any:
    """The same value with every integer and boolean written as the float Python finds equal to it."""
    if isinstance(value, dict):
        return {key: as_floats(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_floats(item) for item in value]
    return float(value) if isinstance(value, int) else value


@settings(max_examples=100, deadline=None)
@given(inner=st.dictionaries(st.text("xyz", min_size=1, max_size=3), NESTED, max_size=4))
def test_numbers_inside_an_object_argument_compare_by_value(inner: dict[str, Any]) -> None:
    # dict_checker compares an object argument's values with Python's ==, at any depth below it.
    for properties in (None, LOOSE):
        assert judge({"config": inner}, {"config": as_floats(inner)}, properties).success
        assert judge({"config": as_floats(inner)}, {"config": inner}, properties).success
