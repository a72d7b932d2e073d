"""A client's patterns are matched with a time limit wherever a verifier meets them: a JSON Schema's
`pattern` and `patternProperties` (with `additionalProperties` beside them, in `$defs` through
`$ref`, in a subschema of another dialect), a tool's `parameters`, the `regex` verifier. A
catastrophic pattern gives a failed verdict that says so, never a hang."""

from __future__ import annotations

import asyncio

import pytest

from verifiers import Attempt, TaskContext, ToolCall, VerifierRuntime, parse_spec, schema_problem, verify

CATASTROPHIC = "^(a|a)+$"  # backtracks 2^n ways before it fails on a string of n a's and a b
SLOW_TEXT = "a" * 28 + "b"  # with `re`: ~30 s, doubling with each further a
RAN_OUT = "took longer than"


@pytest.mark.parametrize(
    ("schema", "answer"),
    [
        ({"type": "string", "pattern": CATASTROPHIC}, SLOW_TEXT),
        ({"type": "object", "properties": {"name": {"type": "string", "pattern": CATASTROPHIC}}}, {"name": SLOW_TEXT}),
        ({"type": "object", "patternProperties": {CATASTROPHIC: {"type": "integer"}}}, {SLOW_TEXT: 1}),
        ({"type": "object", "patternProperties": {CATASTROPHIC: {}}, "additionalProperties": False}, {SLOW_TEXT: 1}),
        ({"$defs": {"name": {"pattern": CATASTROPHIC}}, "items": {"$ref": "#/$defs/name"}}, [SLOW_TEXT]),
        ({"properties": {"x": {"$schema": "http://json-schema.org/draft-07/schema#", "pattern": CATASTROPHIC}}},
         {"x": SLOW_TEXT}),
        ({"$schema": "http://json-schema.org/draft-04/schema#", "pattern": CATASTROPHIC}, SLOW_TEXT),
        # Many matches share one budget: 40 strings that each take a fraction of it still stop.
        ({"type": "array", "items": {"pattern": CATASTROPHIC}}, ["a" * 20 + "b"] * 40),
    ],
)
def test_a_catastrophic_schema_pattern_is_a_bounded_failure(schema, answer) -> None:
    import json

    verdict = parse_spec({"type": "json_schema", "schema": schema}).judge(Attempt(json.dumps(answer)), TaskContext())
    assert not verdict.success
    assert RAN_OUT in verdict.detail and "not checked" in verdict.detail


def test_patterns_still_judge_as_json_schema_says() -> None:
    schema = {"type": "object", "patternProperties": {"^x_": {"type": "integer"}}, "additionalProperties": False,
              "properties": {"id": {"type": "string", "pattern": "^[a-z]+-[0-9]+$"}}}
    spec = parse_spec({"type": "json_schema", "schema": schema})

    def judged(answer: str) -> tuple[bool, str]:
        verdict = spec.judge(Attempt(answer), TaskContext())
        return verdict.success, verdict.detail

    assert judged('{"id": "ab-12", "x_a": 1}') == (True, "")
    assert judged('{"id": "ab-12x"}') == (False, "JSON does not match the schema: $.id: 'ab-12x' does not match "
                                                 "'^[a-z]+-[0-9]+$'")
    assert judged('{"x_a": "one"}')[1].endswith("$.x_a: 'one' is not of type 'integer'")
    assert "('y' was unexpected)" in judged('{"y": 1}')[1]


def test_a_tool_parameters_pattern_is_bounded_too() -> None:
    tools = ({"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"code": {"type": "string", "pattern": CATASTROPHIC}}}}},)
    call = ToolCall("f", f'{{"code": "{SLOW_TEXT}"}}')
    verdict = parse_spec({"type": "tool_schema"}).judge(Attempt(None, (call,)), TaskContext(tools=tools))
    assert not verdict.success and RAN_OUT in verdict.detail


def test_the_regex_verifier_is_bounded() -> None:
    verdict = parse_spec({"type": "regex", "pattern": CATASTROPHIC}).judge(Attempt(SLOW_TEXT), TaskContext())
    assert not verdict.success and RAN_OUT in verdict.detail


def test_pattern_properties_with_unevaluated_properties_is_refused() -> None:
    # jsonschema matches patternProperties itself for unevaluatedProperties, with `re`: no time limit.
    schema = {"patternProperties": {"^a": {}}, "unevaluatedProperties": False}
    assert "patternProperties cannot be combined with unevaluatedProperties" in schema_problem(schema)


async def test_verify_judges_off_the_event_loop() -> None:
    """While a pattern runs out its time in a judging thread, the event loop goes on: a task that
    only needs the loop finishes before the verdict comes."""
    spec = parse_spec({"type": "json_schema", "schema": {"type": "string", "pattern": CATASTROPHIC}})
    judging = asyncio.ensure_future(verify(spec, Attempt(f'"{SLOW_TEXT}"'), TaskContext(), VerifierRuntime()))
    ticked = 0
    while not judging.done():
        await asyncio.sleep(0)  # a turn of the loop, which a judge holding it would not give
        ticked += 1
        if ticked == 100:
            break
    assert ticked == 100 and not judging.done()  # the loop turned while the judge was still running
    verdict = await judging
    assert not verdict.success and RAN_OUT in verdict.detail
