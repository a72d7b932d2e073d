"""Verifiers: judge a model's answer against the task spec a client attached to its request.

Each verifier type is a module of this package that registers itself (`verifiers.registry`): its
spec model, how it judges, its task kind, whether the trainer may judge it again. `parse_spec` turns
the client's `verifier` object into a spec of a registered type (a pydantic `ValidationError`, whose
`loc` names the field, when it is wrong); `admit` refuses one this server will not run
(`VerifierNotAllowed`, e.g. a webhook outside the operator's policy); `verify` judges an attempt
with it. A verifier never raises over what the model produced: output it cannot read is a failed
verdict saying why.

What a judge may use beyond its spec (the webhook policy, the HTTP client) is the process's
`VerifierRuntime`, built once and handed to `verify`. Local judging is CPU work on the client's spec
and the model's output, so `verify` runs it in `JUDGE_THREADS` threads of its own, off the caller's
event loop and out of the default thread pool, and waits at most `JUDGE_TIMEOUT_S` for a verdict.
"""

from __future__ import annotations

# The built-in verifier types, each registered by importing its module, in import order (the verifiers
# guide's table order; tool_call imports tool_schema, which so comes first). A new type adds its module here.
from verifiers import tool_call, tool_schema, countdown, json_schema, regex, exact, math, webhook  # noqa: F401, I001
from verifiers.graders import string_check, text_similarity, multi, python  # noqa: F401, I001
from verifiers.graders import model_graders  # noqa: F401, I001
from verifiers.base import Attempt, JudgeUsage, SpecBase, TaskContext, ToolCall, Verdict
from verifiers.countdown import CountdownSpec
from verifiers.exact import ExactSpec
from verifiers.json_schema import JsonSchemaSpec
from verifiers.math import MathSpec
from verifiers.regex import RegexSpec
from verifiers.registry import (
    JUDGE_THREADS,
    JUDGE_TIMEOUT_S,
    VerifierNotAllowed,
    VerifierSpec,
    VerifierType,
    admit,
    is_replayable,
    parse_spec,
    register,
    verifier_type,
    verifier_types,
    verify,
)
from verifiers.runtime import VerifierRuntime
from verifiers.schema import MAX_JSON_DEPTH, depth_problem, nesting_depth, schema_problem, schema_shape_problem
from verifiers.tool_call import ToolCallSpec
from verifiers.tool_schema import ToolSchemaSpec
from verifiers.webhook import WebhookNotAllowed, WebhookPolicy, WebhookSpec

def reference_table() -> str:
    """The table of verifiers in docs/guides/verifiers.md (Markdown), one row per registered type: its name, its spec's
    fields as the client spells them, and when an answer passes."""
    rows = ["| verifier | spec | passes when |", "|---|---|---|"]
    for kind in verifier_types():
        fields = [f"`{field.alias or name}`" for name, field in kind.spec.model_fields.items() if name != "type"]
        rows.append(f"| `{kind.name}` | {', '.join(fields) or '—'} | {kind.summary} |")
    return "\n".join(rows) + "\n"


__all__ = [
    "JUDGE_THREADS",
    "JUDGE_TIMEOUT_S",
    "MAX_JSON_DEPTH",
    "Attempt",
    "JudgeUsage",
    "CountdownSpec",
    "ExactSpec",
    "JsonSchemaSpec",
    "MathSpec",
    "RegexSpec",
    "SpecBase",
    "TaskContext",
    "ToolCall",
    "ToolCallSpec",
    "ToolSchemaSpec",
    "Verdict",
    "VerifierNotAllowed",
    "VerifierRuntime",
    "VerifierSpec",
    "VerifierType",
    "WebhookNotAllowed",
    "WebhookPolicy",
    "WebhookSpec",
    "admit",
    "depth_problem",
    "is_replayable",
    "nesting_depth",
    "parse_spec",
    "reference_table",
    "register",
    "schema_problem",
    "schema_shape_problem",
    "verifier_type",
    "verifier_types",
    "verify",
]
