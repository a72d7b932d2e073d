"""`tool_call` patterns: what BFCL's possible answers and xLAM's answers state, in hand-written cases."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from verifiers import Attempt, TaskContext, ToolCall, ToolCallSpec, Verdict, parse_spec
from verifiers.argument_patterns import standardize


def spec(expected: list[tuple[str, dict[str, Any]]], **options: Any) -> ToolCallSpec:
    parsed = parse_spec({"type": "tool_call", "expected": [{"name": n, "arguments": a} for n, a in expected],
                         **options})
    assert isinstance(parsed, ToolCallSpec)
    return parsed


def tool(name: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": properties}}}


def judge(parsed: ToolCallSpec, calls: list[tuple[str, Any]], tools: tuple[dict, ...] = (),
          content: str | None = None) -> Verdict:
    produced = tuple(ToolCall(name, args if isinstance(args, str) else json.dumps(args)) for name, args in calls)
    return parsed.judge(Attempt(content=content, tool_calls=produced), TaskContext(tools=tools))


def one_of(*values: Any, optional: bool = False) -> dict[str, Any]:
    return {"$one_of": list(values), **({"$optional": True} if optional else {})}


SCIENCE = ("get_scientist", {"discovery": one_of("Theory of Evolution", "theory of evolution")})
WEATHER = ("get_weather", {"city": "Paris", "unit": one_of("celsius", "C", optional=True)})
AREA_TOOLS = (tool("area", {"base": {"type": "number"}, "height": {"type": "integer"},
                            "sides": {"type": "array", "items": {"type": "number"}},
                            "shape": {"type": "object", "properties": {"scale": {"type": "number"}}}}),)
RECORDS = ("fetch_records", {
    "table": "students",
    "conditions": {"department": "Science", "school": one_of("Bluebird High School", "Bluebird HS"),
                   "year": one_of(2024, optional=True)},
})
QUERY = ("query", {"filters": [{"field": "age", "op": one_of(">", "gt")}, {"field": "job", "op": "="}]})

# (expected calls, produced calls, spec options, tools, success, detail fragment)
CASES = [
    # Several acceptable values for one argument.
    ([SCIENCE], [("get_scientist", {"discovery": "theory of evolution"})], {}, (), True, ""),
    ([SCIENCE], [("get_scientist", {"discovery": "Theory of evolution"})], {}, (), False,
     """argument 'discovery' is "Theory of evolution", which is wrong"""),
    ([WEATHER], [("get_weather", {"city": "Paris", "unit": "C"})], {}, (), True, ""),
    # An optional argument: left out, or given an acceptable value; a wrong value still fails.
    ([WEATHER], [("get_weather", {"city": "Paris"})], {}, (), True, ""),
    ([WEATHER], [("get_weather", {"city": "Paris", "unit": "kelvin"})], {}, (), False,
     """argument 'unit' is "kelvin", which is wrong"""),
    ([WEATHER], [("get_weather", {"unit": "celsius"})], {}, (), False, "missing argument 'city'"),
    ([WEATHER], [("get_weather", {"city": "Paris", "days": 3})], {}, (), False, "unexpected argument 'days'"),
    # An optional argument with no acceptable value (BFCL's [""] on a non-string) must be left out.
    ([("f", {"x": one_of(optional=True)})], [("f", {})], {}, (), True, ""),
    ([("f", {"x": one_of(optional=True)})], [("f", {"x": 0})], {}, (), False, "unexpected argument 'x'"),
    # Strings compared like BFCL: case and " ,./-_*^" ignored (the space only), ' read as ".
    ([("f", {"city": "New York, NY"})], [("f", {"city": "new york ny"})], {"strings": "normalized"}, (), True, ""),
    ([("f", {"city": "New York, NY"})], [("f", {"city": "new york ny"})], {}, (), False, "is \"new york ny\""),
    ([("f", {"date": "April 1, 2024"})], [("f", {"date": "april 1,2024"})], {"strings": "normalized"}, (), True,
     ""),
    ([("f", {"q": "it's"})], [("f", {"q": 'IT"S'})], {"strings": "normalized"}, (), True, ""),
    ([("f", {"city": "Paris"})], [("f", {"city": "Pariss"})], {"strings": "normalized"}, (), False,
     "argument 'city' is \"Pariss\", which is wrong"),
    ([("f", {"tags": ["Santa Barbara", "Monterey"]})], [("f", {"tags": ["santa-barbara", "MONTEREY"]})],
     {"strings": "normalized"}, (), True, ""),
    ([("f", {"n": "5"})], [("f", {"n": 5})], {"strings": "normalized"}, (), False, "is 5, which is wrong"),
    # Numbers typed by the tool's schema: an integer is a number; a float is not an integer.
    ([("area", {"base": 5.0, "height": 70})], [("area", {"base": 5, "height": 70})], {}, AREA_TOOLS, True, ""),
    ([("area", {"base": 5, "height": 70})], [("area", {"base": 5.0, "height": 70})], {}, AREA_TOOLS, True, ""),
    ([("area", {"base": 5.0, "height": 70})], [("area", {"base": 5.0, "height": 70.0})], {}, AREA_TOOLS, False,
     "argument 'height' is 70.0, but the parameter is an integer"),
    ([("area", {"base": 5.0, "height": 70})], [("area", {"base": 5.5, "height": 70})], {}, AREA_TOOLS, False,
     "argument 'base' is 5.5, which is wrong"),
    # An array argument's items are type-checked without the integer allowance (BFCL's nested check).
    ([("area", {"sides": [1.0, 2.5]})], [("area", {"sides": [1, 2.5]})], {}, AREA_TOOLS, False,
     "argument 'sides[0]' is 1, but the parameter's items are floats (with a decimal point)"),
    ([("area", {"sides": [1.0, 2.5]})], [("area", {"sides": [1.0, 2.5]})], {}, AREA_TOOLS, True, ""),
    ([("area", {"shape": {"scale": 2.0}})], [("area", {"shape": {"scale": 2}})], {}, AREA_TOOLS, True, ""),
    ([("area", {"height": 70})], [("area", {"height": 70.0})], {"numeric_tolerance": 0.5}, AREA_TOOLS, False,
     "but the parameter is an integer"),
    ([("area", {"base": 5.0})], [("area", {"base": 5.25})], {"numeric_tolerance": 0.5}, AREA_TOOLS, True, ""),
    # Without a schema for it (no tools offered, or an untyped parameter), JSON's own types: 1 ≠ 1.0.
    ([("area", {"base": 5.0})], [("area", {"base": 5})], {}, (), False, "argument 'base' is 5, which is wrong"),
    ([("other", {"n": 1})], [("other", {"n": 1.0})], {}, AREA_TOOLS, False, "is 1.0, which is wrong"),
    ([("area", {"base": one_of(5.0, "five")})], [("area", {"base": 5})], {}, AREA_TOOLS, True, ""),
    # "No call is the right answer": only an answer without calls passes.
    ([], [], {}, (), True, ""),
    ([], [("get_weather", {"city": "Paris"})], {}, (), False, "expected no tool call, got 1 call (get_weather)"),
    ([], [("a", {}), ("b", "not json")], {}, (), False, "expected no tool call, got 2 calls (a, b)"),
    # Nested objects: acceptable values and optional keys per key.
    ([RECORDS], [("fetch_records", {"table": "students",
                                    "conditions": {"school": "Bluebird HS", "department": "Science"}})],
     {}, (), True, ""),
    ([RECORDS], [("fetch_records", {"table": "students",
                                    "conditions": {"school": "Bluebird HS", "department": "Science", "year": 2024}})],
     {}, (), True, ""),
    ([RECORDS], [("fetch_records", {"table": "students",
                                    "conditions": {"school": "Greenfield", "department": "Science"}})],
     {}, (), False, """argument 'conditions.school' is "Greenfield", which is wrong"""),
    ([RECORDS], [("fetch_records", {"table": "students", "conditions": {"school": "Bluebird HS"}})],
     {}, (), False, "missing argument 'conditions.department'"),
    ([RECORDS], [("fetch_records", {"table": "students",
                                    "conditions": {"school": "Bluebird HS", "department": "Science", "year": 2023}})],
     {}, (), False, "argument 'conditions.year' is 2023, which is wrong"),
    # Arrays of objects, item by item (BFCL's list of dicts).
    ([QUERY], [("query", {"filters": [{"field": "age", "op": "gt"}, {"op": "=", "field": "job"}]})], {}, (), True,
     ""),
    ([QUERY], [("query", {"filters": [{"field": "age", "op": "<"}, {"field": "job", "op": "="}]})], {}, (), False,
     """argument 'filters[0].op' is "<", which is wrong"""),
    # Alternatives that are whole objects: the miss is explained against one of them.
    ([("f", {"loc": one_of({"city": "Paris"}, {"city": "Lyon", "zip": one_of("69001", optional=True)})})],
     [("f", {"loc": {"city": "Lyon"}})], {}, (), True, ""),
    ([("f", {"loc": one_of({"city": "Paris"}, {"city": "Lyon"})})], [("f", {"loc": {"city": "Nice"}})], {}, (),
     False, """argument 'loc.city' is "Nice", which is wrong"""),
    ([("f", {"loc": one_of({"city": "Paris"}, "Paris")})], [("f", {"loc": 3})], {}, (), False,
     "argument 'loc' is 3, which is wrong"),
    # Parallel calls: a maximum matching, which passes where a greedy pairing (BFCL's) fails.
    ([("f", {"x": one_of(1, 2)}), ("f", {"x": 1})], [("f", {"x": 1}), ("f", {"x": 2})], {}, (), True, ""),
    ([("f", {"x": one_of(1, 2)}), ("f", {"x": 1})], [("f", {"x": 2}), ("f", {"x": 2})], {}, (), False,
     "f: argument 'x' is 2, which is wrong"),
    ([("f", {"x": 1}), ("g", {})], [("g", {}), ("f", {"x": 1})], {"ordered": True}, (), False,
     "call 1: called g, expected f"),
]


@pytest.mark.parametrize(("expected", "produced", "options", "tools", "success", "detail"), CASES)
def test_pattern_verdicts(expected, produced, options, tools, success, detail) -> None:
    verdict = judge(spec(expected, **options), produced, tools)
    assert verdict.success is success, verdict.detail
    assert detail in verdict.detail


def test_no_call_expected_passes_with_any_content() -> None:
    assert judge(spec([]), [], content="I cannot help with that: no tool fits.").success


@pytest.mark.parametrize("secret", ["Bluebird High School", "Bluebird HS", "Science"])
def test_details_never_reveal_an_acceptable_value(secret: str) -> None:
    produced = {"table": "students", "conditions": {"school": "Greenfield", "department": "Arts"}}
    for strings in ("exact", "normalized"):
        verdict = judge(spec([RECORDS], strings=strings), [("fetch_records", produced)])
        assert not verdict.success
        assert secret not in verdict.detail


def test_standardize_is_bfcls_rule() -> None:
    assert standardize("April 1, 2024") == standardize("april 1 2024") == "april12024"
    assert standardize("Don't") == 'don"t'
    assert standardize("a-b_c*d^e/f.g") == "abcdefg"
    # Only the ASCII space: BFCL's pattern is [ ,./-_*^], not whitespace.
    assert standardize("New\tYork") == "new\tyork"
    assert standardize("New\u00a0York") == "new\u00a0york"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"x": {"$one_of": "a"}}, "x: $one_of must be an array of patterns"),
        ({"x": {"$one_of": []}}, "x: $one_of is empty, so nothing could match"),
        ({"x": {"$one_of": [1], "$optional": "yes"}}, "x: $optional must be true or false"),
        ({"x": {"$optional": True}}, "x: $one_of must be an array of patterns"),
        ({"x": {"$one_of": [1], "$default": 1}}, "x: an operator object takes only $one_of and $optional"),
        ({"x": [{"$one_of": [1], "$optional": True}]}, "x[0]: $optional applies only to an object's key"),
        ({"x": {"$one_of": [{"$one_of": [1], "$optional": True}]}}, "x.$one_of[0]: $optional applies only"),
        ({"x": {"y": {"z": {"$one_of": 2}}}}, "x.y.z: $one_of must be an array"),
        # The arguments object itself is literal: an operator there would be an argument named "$one_of".
        ({"$one_of": [{"a": 1}]}, "$one_of cannot stand for a call's whole arguments"),
        ({"$one_of": [{"a": 1}], "$optional": True}, "$one_of and $optional cannot stand for a call's whole"),
        ({"a": 1, "$optional": True}, "$optional cannot stand for a call's whole arguments"),
    ],
)
def test_malformed_patterns_are_refused_with_their_path(arguments: dict, message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_spec({"type": "tool_call", "expected": [{"name": "f", "arguments": arguments}]})
    errors = raised.value.errors()
    assert any("arguments" in error["loc"] and message in error["msg"] for error in errors), errors


@pytest.mark.parametrize("data", [
    {"type": "tool_call", "expected": []},
    {"type": "tool_call", "expected": [{"name": RECORDS[0], "arguments": RECORDS[1]}], "strings": "normalized"},
])
def test_specs_survive_the_episode_log(data: dict) -> None:
    parsed = parse_spec(data)
    assert parse_spec(parsed.model_dump(mode="json", by_alias=True)) == parsed


def test_strings_option_takes_only_its_modes() -> None:
    with pytest.raises(ValidationError) as raised:
        parse_spec({"type": "tool_call", "expected": [], "strings": "fuzzy"})
    assert any("strings" in error["loc"] for error in raised.value.errors())
