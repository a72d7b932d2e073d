from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from verifiers import Attempt, TaskContext, ToolCall, ToolCallSpec, Verdict, parse_spec


def spec(expected: list[tuple[str, dict[str, Any]]], **options: Any) -> ToolCallSpec:
    data = {"type": "tool_call", "expected": [{"name": n, "arguments": a} for n, a in expected], **options}
    parsed = parse_spec(data)
    assert isinstance(parsed, ToolCallSpec)
    return parsed


def judge(parsed: ToolCallSpec, calls: list[tuple[str, str]]) -> Verdict:
    attempt = Attempt(content=None, tool_calls=tuple(ToolCall(name, arguments) for name, arguments in calls))
    return parsed.judge(attempt, TaskContext())


def nested_lists(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


WEATHER = ("get_weather", {"city": "Paris", "unit": "celsius"})

# (expected calls, produced calls as (name, arguments string), spec options, success, detail fragment)
CASES = [
    ([WEATHER], [("get_weather", '{"city": "Paris", "unit": "celsius"}')], {}, True, ""),
    ([WEATHER], [("get_weather", '{"unit": "celsius", "city": "Paris"}')], {}, True, ""),
    ([WEATHER], [("get_weather", '{"city": "paris", "unit": "celsius"}')], {}, False,
     """get_weather: argument 'city' is "paris", which is wrong"""),
    ([WEATHER], [("get_weather", '{"city": "Paris"}')], {}, False, "get_weather: missing argument 'unit'"),
    ([WEATHER], [("get_weather", '{"city": "Paris", "unit": "celsius", "days": 3}')], {}, False,
     "unexpected argument 'days'"),
    ([WEATHER], [("get_time", '{"city": "Paris", "unit": "celsius"}')], {}, False,
     "no call to get_weather (unexpected: get_time)"),
    ([WEATHER], [], {}, False, "expected 1 call, got 0"),
    ([WEATHER], [("get_weather", '{"city": "Paris", "unit": "celsius"}')] * 2, {}, False, "expected 1 call, got 2"),
    ([WEATHER, ("get_time", {})], [("get_time", "{}")], {}, False, "expected 2 calls, got 1"),
    # JSON types: 1 is not "1", true is not 1, 1 is not 1.0 unless a tolerance says numbers are close enough.
    ([("f", {"n": 1})], [("f", '{"n": "1"}')], {}, False, """argument 'n' is "1", which is wrong"""),
    ([("f", {"n": 1})], [("f", '{"n": true}')], {}, False, "argument 'n' is true, which is wrong"),
    ([("f", {"n": True})], [("f", '{"n": 1}')], {}, False, "argument 'n' is 1, which is wrong"),
    ([("f", {"n": 0})], [("f", '{"n": false}')], {"numeric_tolerance": 1}, False, "is false, which is wrong"),
    ([("f", {"n": 1})], [("f", '{"n": 1.0}')], {}, False, "argument 'n' is 1.0, which is wrong"),
    ([("f", {"n": 1.0})], [("f", '{"n": 1}')], {}, False, "argument 'n' is 1, which is wrong"),
    ([("f", {"n": 1.5})], [("f", '{"n": 1.5}')], {}, True, ""),
    ([("f", {"n": 1})], [("f", '{"n": 1.0}')], {"numeric_tolerance": 0}, True, ""),
    ([("f", {"n": 1})], [("f", '{"n": 1.005}')], {"numeric_tolerance": 0.01}, True, ""),
    ([("f", {"n": 1})], [("f", '{"n": 1.02}')], {"numeric_tolerance": 0.01}, False, "is 1.02, which is wrong"),
    ([("f", {"n": 10**400})], [("f", '{"n": 1.0}')], {"numeric_tolerance": 0.5}, False, "argument 'n'"),
    ([("f", {"n": None})], [("f", '{"n": null}')], {}, True, ""),
    ([("f", {"n": None})], [("f", "{}")], {}, False, "missing argument 'n'"),
    ([("f", {"n": None})], [("f", '{"n": 0}')], {}, False, "is 0, which is wrong"),
    # Nested values compare recursively: keys in any order, arrays in order.
    ([("f", {"loc": {"city": "Paris", "zip": "75001"}})], [("f", '{"loc": {"zip": "75001", "city": "Paris"}}')],
     {}, True, ""),
    ([("f", {"loc": {"city": "Paris", "zip": "75001"}})], [("f", '{"loc": {"city": "Paris", "zip": 75001}}')],
     {}, False, """argument 'loc.zip' is 75001, which is wrong"""),
    ([("f", {"loc": {"city": "Paris"}})], [("f", '{"loc": {"city": "Paris", "zip": 1}}')], {}, False,
     "unexpected argument 'loc.zip'"),
    ([("f", {"ids": [1, 2]})], [("f", '{"ids": [2, 1]}')], {}, False, "argument 'ids[0]' is 2, which is wrong"),
    ([("f", {"ids": [1, 2]})], [("f", '{"ids": [1, 2, 3]}')], {}, False, "argument 'ids' has 3 items, expected 2"),
    ([("f", {"rows": [{"a": [1.0]}]})], [("f", '{"rows": [{"a": [1]}]}')], {"numeric_tolerance": 0}, True, ""),
    ([("f", {"ids": [1, 2]})], [("f", '{"ids": {"0": 1, "1": 2}}')], {}, False, "argument 'ids' is {"),
    # Several calls: a multiset in any order unless `ordered`.
    ([("a", {}), ("b", {"x": 1})], [("b", '{"x": 1}'), ("a", "{}")], {}, True, ""),
    ([("a", {}), ("b", {"x": 1})], [("b", '{"x": 1}'), ("a", "{}")], {"ordered": True}, False,
     "call 1: called b, expected a"),
    ([("a", {}), ("b", {"x": 1})], [("a", "{}"), ("b", '{"x": 2}')], {"ordered": True}, False,
     "call 2: b: argument 'x' is 2, which is wrong"),
    ([("a", {"x": 1}), ("a", {"x": 1})], [("a", '{"x": 1}'), ("a", '{"x": 1}')], {}, True, ""),
    ([("a", {"x": 1}), ("a", {"x": 1})], [("a", '{"x": 1}'), ("a", '{"x": 2}')], {}, False,
     "a: argument 'x' is 2, which is wrong"),
    ([("a", {"x": 1}), ("b", {})], [("a", '{"x": 1}'), ("a", '{"x": 1}')], {}, False, "no call to b (unexpected: a)"),
    # With a tolerance "equal" is not transitive: pairing 1.0 with 1.05 first would strand 1.1 with 0.95.
    ([("f", {"x": 1.0}), ("f", {"x": 1.1})], [("f", '{"x": 1.05}'), ("f", '{"x": 0.95}')],
     {"numeric_tolerance": 0.1}, True, ""),
    # Arguments that are not a JSON object.
    ([("f", {})], [("f", "{not json")], {}, False, "f: arguments are not valid JSON"),
    ([("f", {})], [("f", "")], {}, False, "f: arguments are not valid JSON"),
    ([("f", {})], [("f", "[1, 2]")], {}, False, "f: arguments are a JSON array, not an object"),
    ([("f", {})], [("f", "null")], {}, False, "f: arguments are a JSON null, not an object"),
    ([("f", {})], [("f", '"{}"')], {}, False, "f: arguments are a JSON string, not an object"),
    ([("f", {"x": 1.0})], [("f", '{"x": NaN}')], {"numeric_tolerance": 1}, False, "NaN is not valid JSON"),
    ([("f", {})], [("f", "[" * 100_000)], {}, False, "f: arguments are not valid JSON"),
    ([("f", {})], [("f", '{"x": ' + "9" * 5000 + "}")], {}, False, "f: arguments are not valid JSON"),
]


@pytest.mark.parametrize(("expected", "produced", "options", "success", "detail"), CASES)
def test_tool_call_verdicts(expected, produced, options, success, detail) -> None:
    verdict = judge(spec(expected, **options), produced)
    assert verdict.success is success, verdict.detail
    assert detail in verdict.detail


def test_long_values_are_shortened_in_the_detail() -> None:
    verdict = judge(spec([("f", {"text": "a" * 1000})]), [("f", json.dumps({"text": "b" * 1000}))])
    assert not verdict.success
    assert len(verdict.detail) < 200


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"type": "tool_call"}, "expected"),
        ({"type": "tool_call", "expected": [{"name": "f"}]}, "arguments"),
        ({"type": "tool_call", "expected": [{"name": "f", "arguments": "{}"}]}, "arguments"),
        ({"type": "tool_call", "expected": [{"name": "f", "arguments": {}}], "numeric_tolerance": -1},
         "numeric_tolerance"),
        ({"type": "tool_call", "expected": [{"name": "f", "arguments": {}}], "strict": True}, "strict"),
        ({"type": "tool_call", "expected": [{"name": "f", "arguments": {"x": nested_lists(100)}}]}, "arguments"),
    ],
)
def test_invalid_specs_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_spec(data)
    assert any(field in error["loc"] for error in raised.value.errors())


# --- properties ---------------------------------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(
    max_size=8
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
ARGUMENTS = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=5)
CALLS = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), ARGUMENTS), min_size=1, max_size=4)


def shuffled_keys(value: Any, rng: random.Random) -> Any:
    """The same JSON value with every object's keys in a random order."""
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {key: shuffled_keys(value[key], rng) for key in keys}
    if isinstance(value, list):
        return [shuffled_keys(item, rng) for item in value]
    return value


@settings(max_examples=100, deadline=None)
@given(calls=CALLS, rng=st.randoms(use_true_random=False))
def test_calls_match_themselves_in_any_key_and_call_order(calls, rng: random.Random) -> None:
    produced = [(name, json.dumps(shuffled_keys(arguments, rng))) for name, arguments in calls]
    assert judge(spec(calls, ordered=True), produced).success
    rng.shuffle(produced)
    assert judge(spec(calls), produced).success


@settings(max_examples=100, deadline=None)
@given(calls=CALLS, data=st.data())
def test_changing_one_value_fails(calls, data) -> None:
    changeable = [index for index, (_, arguments) in enumerate(calls) if arguments]
    if not changeable:
        calls = [*calls, ("a", {"x": 1})]
        changeable = [len(calls) - 1]
    index = data.draw(st.sampled_from(changeable))
    _, arguments = calls[index]
    key = data.draw(st.sampled_from(sorted(arguments)))
    changed = {**arguments, key: [arguments[key]]}  # a list never equals its own element
    produced = [(n, json.dumps(changed if i == index else a)) for i, (n, a) in enumerate(calls)]
    for options in ({}, {"ordered": True}, {"numeric_tolerance": 0.5}):
        assert not judge(spec(calls, **options), produced).success


@settings(max_examples=200, deadline=None)
@given(arguments=st.text(max_size=200) | st.text(alphabet='{}[]":,0123456789.eE-+ truefalsnNaI\\', max_size=200))
def test_arbitrary_argument_strings_never_raise(arguments: str) -> None:
    verdict = judge(spec([("f", {"x": 1})], numeric_tolerance=0.1), [("f", arguments)])
    assert isinstance(verdict, Verdict)
    assert verdict.success == (verdict.detail == "")
