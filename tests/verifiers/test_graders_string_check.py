"""`string_check`: OpenAI's four operations on the rendered input and reference, scored 1 or 0."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from verifiers import Attempt, TaskContext, ToolCall, parse_spec
from verifiers.graders.string_check import StringCheckSpec


def grade(operation: str, answer: str | None, reference: str, **fields):
    spec = parse_spec({"type": "string_check", "name": "check", "input": "{{ sample.output_text }}",
                       "reference": reference, "operation": operation, **fields})
    assert isinstance(spec, StringCheckSpec)
    return spec.judge(Attempt(answer), TaskContext())


# OpenAI's graders guide: eq and ne are case-sensitive (in)equality, like and ilike containment of the reference.
@pytest.mark.parametrize(
    ("operation", "answer", "reference", "passes"),
    [
        ("eq", "Paris", "Paris", True),
        ("eq", "paris", "Paris", False),
        ("eq", "Paris ", "Paris", False),  # compared as rendered: no trimming
        ("eq", None, "", True),
        ("ne", "Lyon", "Paris", True),
        ("ne", "Paris", "Paris", False),
        ("ne", "paris", "Paris", True),
        ("like", "The capital is Paris.", "Paris", True),
        ("like", "The capital is paris.", "Paris", False),
        ("like", "Par", "Paris", False),  # the input contains the reference, not the other way round
        ("ilike", "THE CAPITAL IS PARIS.", "paris", True),
        ("ilike", "Die Straße", "STRASSE", True),  # caseless, as Unicode defines it
        ("ilike", "Lyon", "Paris", False),
    ],
)
def test_operations(operation, answer, reference, passes) -> None:
    verdict = grade(operation, answer, reference)
    assert verdict.success is passes
    assert verdict.score == (1.0 if passes else 0.0)


def test_the_detail_names_the_grader_and_quotes_neither_side() -> None:
    verdict = grade("eq", "Sydney", "{{ item.answer }}", item={"answer": "Canberra"})
    assert verdict.detail == "check: the input is not the reference"
    assert "Canberra" not in verdict.detail and "Sydney" not in verdict.detail


def test_openai_tool_call_example() -> None:
    """The function-name grader of the guide's tool-calling multigrader, with the answer in `reference`."""
    spec = parse_spec({"name": "function_name", "type": "string_check", "input": "get_acceptors",
                       "reference": "{{sample.output_tools[0].function.name}}", "operation": "eq"})
    called = Attempt(None, (ToolCall("get_acceptors", '{"smiles": "CCO"}'),))
    assert spec.judge(called, TaskContext()).success is True
    other = Attempt(None, (ToolCall("get_donors", '{"smiles": "CCO"}'),))
    assert spec.judge(other, TaskContext()).score == 0.0
    no_call = spec.judge(Attempt("I would call get_acceptors."), TaskContext())
    assert no_call.success is False and "the answer lacks what the grader's template reads" in no_call.detail


def test_an_answer_that_is_not_the_json_read_fails_with_a_reason() -> None:
    spec = parse_spec({"type": "string_check", "name": "clause", "input": "{{ sample.output_json.clause_type }}",
                       "reference": "{{ item.clause_type }}", "operation": "eq", "item": {"clause_type": "Indemnity"}})
    assert spec.judge(Attempt('{"clause_type": "Indemnity"}'), TaskContext()).success is True
    verdict = spec.judge(Attempt("Indemnity"), TaskContext())
    assert verdict.success is False and verdict.score == 0.0
    assert verdict.detail.startswith("the answer is not the JSON the grader reads")


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"operation": "neq"}, ("string_check", "operation")),  # the guide's prose spells it neq; the API, ne
        ({"reference": "{{ item.answer }}"}, ("string_check", "reference")),  # no such item field
        ({"input": "{{ sample.output_text "}, ("string_check", "input")),
        ({"reference": 5}, ("string_check", "reference")),
        ({"pass_threshold": 0.5}, ("string_check", "pass_threshold")),  # it scores 1 or 0: no threshold
        ({"item": ["a"]}, ("string_check", "item")),
        ({"item": ["a"], "reference": "{{ item.answer }}"}, ("string_check", "item")),  # the item is what is wrong
    ],
)
def test_bad_specs_name_the_field(fields, loc) -> None:
    spec = {"type": "string_check", "name": "x", "input": "{{ sample.output_text }}", "reference": "Paris",
            "operation": "eq", **fields}
    with pytest.raises(ValidationError) as raised:
        parse_spec(spec)
    assert [error["loc"] for error in raised.value.errors()] == [loc]


def test_a_missing_field_is_named() -> None:
    with pytest.raises(ValidationError) as raised:
        parse_spec({"type": "string_check", "input": "a", "operation": "eq"})
    assert [(e["loc"], e["type"]) for e in raised.value.errors()] == [(("string_check", "reference"), "missing")]
