"""`json_schema`: the content must be JSON (a ```json fence around it is fine) valid under a schema."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from verifiers.base import Attempt, SpecBase, TaskContext, UnreadableOutput, Verdict
from verifiers.json_text import parse_json
from verifiers.registry import VerifierType, register
from verifiers.schema import schema_problem, schema_violation

# Greedy, anchored at both ends: one match attempt, linear in the content.
_CODE_FENCE = re.compile(r"```(?i:json)?(.*)```", re.DOTALL)


def strip_code_fence(text: str) -> str:
    text = text.strip()
    fenced = _CODE_FENCE.fullmatch(text)
    return fenced.group(1) if fenced else text


class JsonSchemaSpec(SpecBase):
    # `schema` would shadow a BaseModel attribute, so the field is `schema_`, spelled `schema` on the wire.
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        problem = schema_problem(schema)
        if problem is not None:
            raise ValueError(problem)
        return schema

    def judge(self, attempt: Attempt, context: TaskContext) -> Verdict:
        if attempt.content is None:
            return Verdict(False, "no content; expected JSON")
        try:
            document = parse_json(strip_code_fence(attempt.content))
        except UnreadableOutput as error:
            return Verdict(False, f"content is not valid JSON ({error})")
        violation = schema_violation(self.schema_, document)
        return Verdict(violation is None, "" if violation is None else f"JSON does not match the schema: {violation}")


register(VerifierType(
    JsonSchemaSpec, judge=JsonSchemaSpec.judge,
    summary="the content is JSON that validates",
))
