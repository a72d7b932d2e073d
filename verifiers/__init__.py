"""Verifiers: judge a model's answer against the task spec a client attached to its request.

`parse_spec` turns the client's `verifier` object into a spec (a pydantic `ValidationError`, whose
`loc` names the field, when it is wrong); `verify` judges an attempt with it. A verifier never
raises over what the model produced: output it cannot read is a failed verdict saying why. The one
exception is `WebhookNotAllowed`, raised when a webhook spec's URL is outside the server's policy,
which the server is expected to have refused already with `WebhookSpec.check`.

Judging is CPU work on the client's spec (a schema, a pattern) and the model's output, so `verify`
runs it in `JUDGE_THREADS` threads of its own, off the caller's event loop and out of the default
thread pool, and waits at most `JUDGE_TIMEOUT_S` for a verdict.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from verifiers.base import Attempt, TaskContext, ToolCall, Verdict
from verifiers.countdown import CountdownSpec
from verifiers.exact import ExactSpec
from verifiers.json_schema import JsonSchemaSpec
from verifiers.math import MathSpec
from verifiers.regex import RegexSpec
from verifiers.schema import MAX_JSON_DEPTH, depth_problem, nesting_depth, schema_problem, schema_shape_problem
from verifiers.tool_call import ToolCallSpec
from verifiers.tool_schema import ToolSchemaSpec
from verifiers.webhook import WebhookNotAllowed, WebhookPolicy, WebhookSpec

VerifierSpec = Annotated[
    ToolCallSpec | ToolSchemaSpec | CountdownSpec | JsonSchemaSpec | RegexSpec | ExactSpec | MathSpec | WebhookSpec,
    Field(discriminator="type"),
]

_SPEC_ADAPTER: TypeAdapter[VerifierSpec] = TypeAdapter(VerifierSpec)

JUDGE_THREADS = 2
JUDGE_TIMEOUT_S = 5.0  # a judge's patterns stop sooner (`PATTERN_BUDGET_S`); this bounds everything else
_judges = ThreadPoolExecutor(JUDGE_THREADS, thread_name_prefix="r3-judge")


def parse_spec(data: dict[str, Any]) -> VerifierSpec:
    return _SPEC_ADAPTER.validate_python(data)


async def verify(spec: VerifierSpec, attempt: Attempt, context: TaskContext, policy: WebhookPolicy) -> Verdict:
    """`spec`'s verdict on `attempt`. A local judge runs in a judging thread; one that takes longer than
    `JUDGE_TIMEOUT_S` is a failed verdict saying so (one still queued then never runs; a running one
    ends by itself). Cancelling this cancels a judge that has not started."""
    if isinstance(spec, WebhookSpec):
        return await spec.judge(attempt, context, policy)
    judging = asyncio.get_running_loop().run_in_executor(_judges, spec.judge, attempt, context)
    try:
        return await asyncio.wait_for(judging, JUDGE_TIMEOUT_S)
    except TimeoutError:
        return Verdict(False, f"judging the answer took longer than {JUDGE_TIMEOUT_S:g} s, so it was not checked")


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
    "schema_shape_problem",
    "verify",
]
