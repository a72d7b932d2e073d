from __future__ import annotations

import pytest
from pydantic import ValidationError

from verifiers import Attempt, JsonSchemaSpec, TaskContext, parse_spec

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}

# (schema, content, success, detail fragment)
CASES = [
    (PERSON, '{"name": "Ada", "age": 36}', True, ""),
    (PERSON, '  {"age": 36, "name": "Ada"}\n', True, ""),
    (PERSON, '```json\n{"name": "Ada", "age": 36}\n```', True, ""),
    (PERSON, '```JSON\n{"name": "Ada", "age": 36}\n```', True, ""),
    (PERSON, '```\n{"name": "Ada", "age": 36}\n```', True, ""),
    (PERSON, 'Here it is:\n```json\n{"name": "Ada", "age": 36}\n```', False, "content is not valid JSON"),
    (PERSON, '{"name": "Ada", "age": "36"}', False, "JSON does not match the schema: $.age: '36' is not of type"),
    (PERSON, '{"name": "Ada", "age": -1}', False, "$.age: -1 is less than the minimum of 0"),
    (PERSON, '{"name": "Ada"}', False, "'age' is a required property"),
    (PERSON, '{"name": "Ada", "age": 36.5}', False, "$.age"),
    (PERSON, "{'name': 'Ada', 'age': 36}", False, "content is not valid JSON"),
    (PERSON, '{"name": "Ada", "age": NaN}', False, "NaN is not valid JSON"),
    (PERSON, "", False, "content is not valid JSON"),
    (PERSON, None, False, "no content"),
    (PERSON, "[" * 100_000, False, "content is not valid JSON"),
    ({"type": "array", "items": {"type": "number"}}, "[1, 2.5, 3]", True, ""),
    ({"type": "array", "items": {"type": "number"}}, "[1, true]", False, "$[1]: True is not of type 'number'"),
    ({}, "null", True, ""),
    ({"$ref": "https://example.invalid/schema.json"}, "{}", False, "the schema cannot be applied"),
]


@pytest.mark.parametrize(("schema", "content", "success", "detail"), CASES)
def test_json_schema_verdicts(schema, content, success, detail) -> None:
    spec = parse_spec({"type": "json_schema", "schema": schema})
    assert isinstance(spec, JsonSchemaSpec)
    verdict = spec.judge(Attempt(content=content), TaskContext())
    assert verdict.success is success, verdict.detail
    assert detail in verdict.detail


@pytest.mark.parametrize(
    "data",
    [
        {"type": "json_schema", "schema": {"type": "strnig"}},
        {"type": "json_schema", "schema": {"properties": {"a": {"minimum": "zero"}}}},
        {"type": "json_schema", "schema": {"required": "name"}},
        {"type": "json_schema", "schema": "object"},
        {"type": "json_schema"},
    ],
)
def test_invalid_schemas_are_refused_at_parse_time(data: dict) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_spec(data)
    assert any("schema" in error["loc"] for error in raised.value.errors())


def test_the_schema_field_is_spelled_schema_on_the_wire() -> None:
    spec = parse_spec({"type": "json_schema", "schema": PERSON})
    assert spec.model_dump() == {"type": "json_schema", "schema": PERSON}
    assert JsonSchemaSpec(type="json_schema", schema_=PERSON) == spec
