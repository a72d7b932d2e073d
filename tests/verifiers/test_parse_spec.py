from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

import verifiers
from verifiers import Attempt, TaskContext, Verdict, VerifierRuntime, parse_spec, verify

EXAMPLES = [
    ({"type": "tool_call", "expected": [{"name": "f", "arguments": {"x": 1}}]}, verifiers.ToolCallSpec,
     "function_calling"),
    ({"type": "tool_schema"}, verifiers.ToolSchemaSpec, "function_calling"),
    ({"type": "countdown", "numbers": [1, 2], "target": 3}, verifiers.CountdownSpec, "countdown"),
    ({"type": "json_schema", "schema": {"type": "object"}}, verifiers.JsonSchemaSpec, "generic"),
    ({"type": "regex", "pattern": "a+"}, verifiers.RegexSpec, "generic"),
    ({"type": "exact", "expected": "a"}, verifiers.ExactSpec, "generic"),
    ({"type": "math", "expected": "1/2"}, verifiers.MathSpec, "math"),
    ({"type": "webhook", "url": "https://hooks.example.com/judge"}, verifiers.WebhookSpec, "generic"),
]


@pytest.mark.parametrize(("data", "spec_class", "task_kind"), EXAMPLES)
def test_each_type_parses_to_its_spec(data: dict, spec_class: type, task_kind: str) -> None:
    spec = parse_spec(data)
    assert type(spec) is spec_class
    assert spec.task_kind == task_kind
    assert parse_spec(spec.model_dump()) == spec  # what the server stores can be replayed


@pytest.mark.parametrize(("data", "spec_class", "task_kind"), EXAMPLES)
def test_unknown_fields_are_refused(data: dict, spec_class: type, task_kind: str) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_spec({**data, "surprise": True})
    assert any("surprise" in error["loc"] for error in raised.value.errors())


@pytest.mark.parametrize("data", [{"type": "llm_judge"}, {"type": None}, {}, {"expected": "a"}])
def test_unknown_or_missing_types_are_refused(data: dict) -> None:
    with pytest.raises(ValidationError):
        parse_spec(data)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"type": "exact"}, "expected"),
        ({"type": "math"}, "expected"),
        ({"type": "countdown", "numbers": [1]}, "target"),
        ({"type": "regex"}, "pattern"),
        ({"type": "json_schema"}, "schema"),
        ({"type": "webhook"}, "url"),
        ({"type": "tool_call"}, "expected"),
        ({"type": "exact", "expected": "a", "ignore_case": "sometimes"}, "ignore_case"),
    ],
)
def test_a_missing_or_wrong_field_is_named(data: dict, field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_spec(data)
    assert any(field in error["loc"] for error in raised.value.errors())


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"type": "tool_call", "expected": [], "ordered": 1}, "ordered"),
        ({"type": "tool_call", "expected": [], "ordered": "true"}, "ordered"),
        ({"type": "tool_call", "expected": [], "numeric_tolerance": "0.1"}, "numeric_tolerance"),
        ({"type": "tool_call", "expected": [], "numeric_tolerance": True}, "numeric_tolerance"),
        ({"type": "tool_call", "expected": [{"name": 5, "arguments": {}}]}, "name"),
        ({"type": "exact", "expected": "a", "ignore_case": "yes"}, "ignore_case"),
        ({"type": "exact", "expected": "a", "normalize_whitespace": 0}, "normalize_whitespace"),
        ({"type": "exact", "expected": 4}, "expected"),
        ({"type": "math", "expected": "1", "extract_answer": "false"}, "extract_answer"),
        ({"type": "math", "expected": "1", "tolerance": "0.1"}, "tolerance"),
        ({"type": "countdown", "numbers": [1, 2], "target": "3"}, "target"),
        ({"type": "countdown", "numbers": [1, 2], "target": 3.0}, "target"),
        ({"type": "countdown", "numbers": [True, 2], "target": 3}, "numbers"),
    ],
)
def test_booleans_and_numbers_must_be_json_booleans_and_numbers(data: dict, field: str) -> None:
    """Nothing in a spec is coerced (verifiers.base.ClientInput): `1` and `"true"` are no `true`,
    `"0.1"` and `true` no number, `3.0` no integer."""
    with pytest.raises(ValidationError) as raised:
        parse_spec(data)
    assert any(field in error["loc"] for error in raised.value.errors()), raised.value.errors()


def test_an_integer_is_a_number() -> None:
    assert parse_spec({"type": "tool_call", "expected": [], "numeric_tolerance": 1}).numeric_tolerance == 1.0
    assert parse_spec({"type": "math", "expected": "1", "tolerance": 0}).tolerance == 0.0


def test_specs_are_immutable() -> None:
    spec = parse_spec({"type": "exact", "expected": "a"})
    with pytest.raises(ValidationError):
        spec.expected = "b"


def test_a_spec_union_fits_in_a_request_model() -> None:
    class Request(BaseModel):
        verifier: verifiers.VerifierSpec

    request = Request.model_validate({"verifier": {"type": "countdown", "numbers": [2, 2], "target": 4}})
    assert isinstance(request.verifier, verifiers.CountdownSpec)


@pytest.mark.parametrize(
    ("data", "attempt", "success"),
    [
        ({"type": "exact", "expected": "4"}, Attempt(content="4"), True),
        ({"type": "countdown", "numbers": [2, 2], "target": 4}, Attempt(content="<answer>2*2</answer>"), True),
        ({"type": "countdown", "numbers": [2, 2], "target": 5}, Attempt(content="<answer>2*2</answer>"), False),
        ({"type": "tool_call", "expected": [{"name": "f", "arguments": {}}]},
         Attempt(content=None, tool_calls=(verifiers.ToolCall("f", "{}"),)), True),
    ],
)
async def test_verify_dispatches_to_the_spec(data: dict, attempt: Attempt, success: bool) -> None:
    verdict = await verify(parse_spec(data), attempt, TaskContext(), VerifierRuntime())
    assert isinstance(verdict, Verdict)
    assert verdict.success is success


def test_verdict_details_are_clipped() -> None:
    assert len(Verdict(False, "x" * 1000).detail) == 300
    assert Verdict(False, "short").detail == "short"
