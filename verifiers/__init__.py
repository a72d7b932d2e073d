"""Verifiers: judge a model's answer against the task spec a client attached to its request.

`parse_spec` turns the client's `verifier` object into a spec (a pydantic `ValidationError`, whose
`loc` names the field, when it is wrong); `verify` judges an attempt with it. A verifier never
raises over what the model produced: output it cannot read is a failed verdict saying why. The one
exception is `WebhookNotAllowed`, raised when a webhook spec's URL is outside the server's policy,
which the server is expected to have refused already with `WebhookSpec.check`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from verifiers.base import Attempt, TaskContext, ToolCall, Verdict
from verifiers.countdown import CountdownSpec
from verifiers.exact import ExactSpec
from verifiers.json_schema import JsonSchemaSpec
from verifiers.math import MathSpec
from verifiers.regex import RegexSpec
from verifiers.schema import MAX_JSON_DEPTH, depth_problem, nesting_depth, schema_problem
from verifiers.tool_call import ToolCallSpec
from verifiers.tool_schema import ToolSchemaSpec
from verifiers.webhook import WebhookNotAllowed, WebhookPolicy, WebhookSpec

VerifierSpec = Annotated[
    ToolCallSpec | ToolSchemaSpec | CountdownSpec | JsonSchemaSpec | RegexSpec | ExactSpec | MathSpec | WebhookSpec,
    Field(discriminator="type"),
]

_SPEC_ADAPTER: TypeAdapter[VerifierSpec] = TypeAdapter(VerifierSpec)


def parse_spec(data: dict[str, Any]) -> VerifierSpec:
    return _SPEC_ADAPTER.validate_python(data)


async def verify(spec: VerifierSpec, attempt: Attempt, context: TaskContext, policy: WebhookPolicy) -> Verdict:
    if isinstance(spec, WebhookSpec):
        return await spec.judge(attempt, context, policy)
    return spec.judge(attempt, context)


__all__ = [
    "Attempt",
    "CountdownSpec",
    "ExactSpec",
    "JsonSchemaSpec",
    "MAX_JSON_DEPTH",
    "MathSpec",
    "RegexSpec",
    "TaskContext",
    "ToolCall",
    "ToolCallSpec",
    "ToolSchemaSpec",
    "Verdict",
    "VerifierSpec",
    "WebhookNotAllowed",
    "WebhookPolicy",
    "WebhookSpec",
    "depth_problem",
    "nesting_depth",
    "parse_spec",
    "schema_problem",
    "verify",
]
