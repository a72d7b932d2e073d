"""`multi`: OpenAI's multigrader — the sub-graders' scores combined by `calculate_output` — and the
refused `python` grader."""

from __future__ import annotations

import ast
import asyncio
import json
import math
from typing import Any

import pytest
from pydantic import ValidationError
from rapidfuzz import fuzz

from verifiers import Attempt, TaskContext, ToolCall, VerifierNotAllowed, VerifierRuntime, admit, is_replayable, \
    parse_spec, verify
from verifiers.base import JudgeUsage
from verifiers.graders.multi import FUNCTIONS, MultiSpec, evaluate
from verifiers.runtime import JudgeFailed, JudgeReply

RUNTIME = VerifierRuntime()

# OpenAI's graders guide, "Function calling": one grader for the tool's name, one for its arguments.
TOOL_GRADER = {
    "type": "multi",
    "graders": {
        "function_name": {"name": "function_name", "type": "string_check", "input": "get_acceptors",
                          "reference": "{{sample.output_tools[0].function.name}}", "operation": "eq"},
        "arguments": {"name": "arguments", "type": "string_check", "input": "{\"smiles\": \"{{item.smiles}}\"}",
                      "reference": "{{sample.output_tools[0].function.arguments}}", "operation": "eq"},
    },
    "calculate_output": "0.5 * function_name + 0.5 * arguments",
    "item": {"smiles": "CCO"},
}

# The guide's "Multigraders" example: the email must be exact, the name may be misspelt.
EMAIL_GRADER = {
    "type": "multi",
    "name": "contact",
    "graders": {
        "name": {"name": "name", "type": "text_similarity", "input": "{{sample.output_json.name}}",
                 "reference": "{{item.name}}", "evaluation_metric": "fuzzy_match"},
        "email": {"name": "email", "type": "string_check", "input": "{{sample.output_json.email}}",
                  "reference": "{{item.email}}", "operation": "eq"},
    },
    "calculate_output": "(name + email) / 2",
    "item": {"name": "Jane Doe", "email": "jane@doe.com"},
}


def call(name: str, arguments: str) -> Attempt:
    return Attempt(None, (ToolCall(name, arguments, "call_1"),))


@pytest.mark.parametrize(
    ("attempt", "score"),
    [
        (call("get_acceptors", '{"smiles": "CCO"}'), 1.0),
        (call("get_acceptors", '{"smiles": "CCC"}'), 0.5),
        (call("get_donors", '{"smiles": "CCO"}'), 0.5),
        (Attempt("no call"), 0.0),
    ],
)
async def test_openai_tool_call_example(attempt, score) -> None:
    spec = parse_spec(TOOL_GRADER)
    assert isinstance(spec, MultiSpec)
    verdict = await verify(spec, attempt, TaskContext(), RUNTIME)
    assert verdict.score == score
    assert verdict.success is (score >= 0.5)  # the default pass threshold


async def test_openai_email_example_scores_half_for_the_email_and_half_for_the_name() -> None:
    spec = parse_spec(EMAIL_GRADER)
    right = await verify(spec, Attempt('{"name": "Jane Doh", "email": "jane@doe.com"}'), TaskContext(), RUNTIME)
    assert right.score == pytest.approx((fuzz.ratio("Jane Doh", "Jane Doe") / 100 + 1) / 2)
    assert 0.5 <= right.score <= 1 and right.success is True
    wrong = await verify(spec, Attempt('{"name": "Jane Doe", "email": "jane@doe.org"}'), TaskContext(), RUNTIME)
    assert wrong.score == 0.5  # "samples that get the email wrong will score between 0-0.5"
    assert wrong.detail.startswith("contact: name 1.000, email 0.000 → 0.500")
    assert "email: the input is not the reference" in wrong.detail
    prose = await verify(spec, Attempt("Jane Doe, jane@doe.com"), TaskContext(), RUNTIME)
    assert prose.score == 0.0 and "not the JSON the grader reads" in prose.detail


@pytest.mark.parametrize(
    ("formula", "value"),
    [
        ("a ^ 2", 0.25),
        ("a ** 2", 0.25),
        ("2 * a ^ 2", 0.5),  # ^ binds tighter than *, as in arithmetic
        ("-a ^ 2", -0.25),
        ("min(a, b) + max(a, b, 0.1)", 1.5),
        ("abs(a - b) + floor(1.7) + ceil(0.2)", 2.5),
        ("exp(0) + sqrt(b) + log(b)", 2.0),
        ("(a + b) / 2", 0.75),
    ],
)
def test_formulas(formula, value) -> None:
    spec = parse_spec({**TOOL_GRADER, "graders": {"a": TOOL_GRADER["graders"]["arguments"],
                                                  "b": TOOL_GRADER["graders"]["function_name"]},
                       "calculate_output": formula})
    assert evaluate(ast.parse(formula.replace("^", "**"), mode="eval").body, {"a": 0.5, "b": 1.0}) == value
    assert spec.calculate_output == formula


@pytest.mark.parametrize(
    ("formula", "scores", "detail"),
    [
        ("function_name / arguments", (1, 0), "calculate_output failed (float division by zero), so it scores 0"),
        ("log(arguments)", (1, 0), "calculate_output failed (math domain error)"),
        ("exp(1000 * function_name)", (1, 0), "calculate_output failed (math range error)"),
        ("(arguments - 1) ^ 0.5", (1, 0), "calculate_output failed (a negative number to a fractional power)"),
        ("1e308 * 10 * function_name", (1, 0), "calculate_output is inf, not a number, so it scores 0"),
    ],
)
async def test_a_formula_undefined_on_the_scores_scores_zero(formula, scores, detail) -> None:
    spec = parse_spec({**TOOL_GRADER, "calculate_output": formula})
    attempt = call("get_acceptors", '{"smiles": "CCC"}')  # function_name 1, arguments 0
    verdict = await verify(spec, attempt, TaskContext(), RUNTIME)
    assert verdict.success is False and verdict.score == 0.0 and detail in verdict.detail


async def test_the_score_is_clamped_to_the_unit_interval() -> None:
    above = parse_spec({**TOOL_GRADER, "calculate_output": "3 * function_name"})
    verdict = await verify(above, call("get_acceptors", "{}"), TaskContext(), RUNTIME)
    assert verdict.score == 1.0
    below = parse_spec({**TOOL_GRADER, "calculate_output": "function_name - 2"})
    assert (await verify(below, call("get_acceptors", "{}"), TaskContext(), RUNTIME)).score == 0.0


@pytest.mark.parametrize(("threshold", "passes"), [(0.5, True), (0.51, False), (1, False), (0, True)])
async def test_the_pass_threshold(threshold, passes) -> None:
    spec = parse_spec({**TOOL_GRADER, "pass_threshold": threshold})
    verdict = await verify(spec, call("get_acceptors", "{}"), TaskContext(), RUNTIME)
    assert verdict.score == 0.5 and verdict.success is passes


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("function_name + __import__('os').system('true')", "may call min, max"),
        ("function_name.real", "may use numbers, the graders' names"),
        ("function_name if arguments else 1", "may use numbers, the graders' names"),
        ("function_name > arguments", "may use numbers, the graders' names"),
        ("functionname + 1", "names 'functionname', which is neither one of the graders"),
        ("max", "max is a function: call it"),
        ("sqrt(function_name, arguments)", "sqrt() takes one number"),
        ("min()", "min() takes numbers"),
        ("max(*[1, 2])", "may not unpack"),
        ("round(function_name)", "may call min, max"),
        ("'1' + function_name", "may use numbers, not '1'"),
        ("True + function_name", "may use numbers, not True"),
        ("function_name // 2", "operators are + - * / and ^"),
        ("function_name +", "not an expression"),
        ("lambda: 1", "may use numbers, the graders' names"),
        ("1 + " * 200 + "1", "longer than 500 characters"),
    ],
)
def test_a_formula_naming_what_it_may_not_use_is_refused(formula, message) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_spec({**TOOL_GRADER, "calculate_output": formula})
    (error,) = raised.value.errors()
    assert error["loc"] == ("multi", "calculate_output") and message in error["msg"]


@pytest.mark.parametrize(
    ("graders", "loc", "message"),
    [
        ({"x": {"type": "string_check", "input": "{{ item.nope }}", "reference": "a", "operation": "eq"}},
         ("multi", "graders", "x", "string_check", "input"), "reads item.nope, which the spec's `item` does not have"),
        ({"x": {"type": "string_check", "input": "a", "operation": "eq"}},
         ("multi", "graders", "x", "string_check", "reference"), "Field required"),
        ({"x": {"type": "grammar", "input": "a"}}, ("multi", "graders", "x"), "does not match any of the expected tags"),
        ({"x": {"type": "exact", "expected": "a"}}, ("multi", "graders", "x"), "does not match"),  # not a grader
        ({"x": {"type": "multi", "graders": {}, "calculate_output": "1"}}, ("multi", "graders"),
         "may not be multigraders"),
        ({"x": {"type": "text_similarity", "input": "a", "reference": "b", "evaluation_metric": "cosine"}},
         ("multi", "graders", "x", "text_similarity", "evaluation_metric"), "embeddings"),
        ({"x": {"type": "string_check", "input": "a", "reference": "a", "operation": "eq", "item": {"other": 1}}},
         ("multi", "graders"), "reads the multigrader's `item`"),
        ({}, ("multi", "graders"), "at least 1 item"),
    ],
)
def test_bad_sub_graders_are_named_by_their_key(graders, loc, message) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_spec({**TOOL_GRADER, "graders": graders, "calculate_output": "1"})
    error = max(raised.value.errors(), key=lambda e: len(e["loc"]))
    assert error["loc"] == loc and message in error["msg"]


def test_the_recorded_spec_parses_back_to_the_same_grader() -> None:
    """The episode records the spec as JSON: the sub-graders without the multigrader's `item` they were
    given, so the record is the client's grader, and reads back as the same spec."""
    spec = parse_spec(EMAIL_GRADER)
    recorded = spec.model_dump(mode="json", by_alias=True)
    assert all("item" not in grader for grader in recorded["graders"].values())
    assert parse_spec(json.loads(json.dumps(recorded))) == spec
    assert is_replayable(recorded)


def test_a_python_grader_is_read_and_refused_with_a_pointer_to_webhooks() -> None:
    spec = parse_spec({"type": "python", "name": "py", "source": "def grade(sample, item):\n    return 1.0",
                       "image_tag": "2025-05-08"})
    with pytest.raises(VerifierNotAllowed) as refused:
        admit(spec, RUNTIME)
    assert refused.value.param == "verifier.source" and refused.value.code == "python_grader_not_supported"
    assert "webhook" in str(refused.value)
    assert not is_replayable(spec.model_dump(mode="json"))


def test_a_refused_sub_grader_is_named_by_its_key() -> None:
    spec = parse_spec({**TOOL_GRADER, "graders": {"code": {"type": "python", "source": "def grade(s, i): return 1"},
                                                  "function_name": TOOL_GRADER["graders"]["function_name"]},
                       "calculate_output": "code * function_name"})
    with pytest.raises(VerifierNotAllowed) as refused:
        admit(spec, RUNTIME)
    assert refused.value.param == "verifier.graders.code.source"


class ScriptedJudge:
    """A model judge answering from a script, as tests/support.py's ScriptedEngine is a scripted engine:
    each call takes the next answer (a score, or a `JudgeFailed` to raise), once every expected call
    has started, so the calls are seen to run at once."""

    def __init__(self, answers: list[float | JudgeFailed]) -> None:
        self.answers, self.started = list(answers), 0
        self.all_started = asyncio.Event()

    def model_problem(self, model: str) -> str | None:
        return None

    async def complete(self, model: str, messages: list[dict[str, Any]], json_schema: dict[str, Any],
                       sampling: Any) -> JudgeReply:
        answer = self.answers[self.started]
        self.started += 1
        if self.started == len(self.answers):
            self.all_started.set()
        await asyncio.wait_for(self.all_started.wait(), 5)
        if isinstance(answer, JudgeFailed):
            raise answer
        usage = JudgeUsage(calls=1, prompt_tokens=10, completion_tokens=5)
        return JudgeReply(json.dumps({"steps": [{"description": "d", "conclusion": "c"}], "result": answer}), usage)


def score_model(name: str) -> dict[str, Any]:
    return {"type": "score_model", "name": name, "model": "judge", "range": [0, 10],
            "input": [{"role": "user", "content": "Rate {{ sample.output_text }} against {{ item.answer }}."}]}


MODEL_GRADERS = {"type": "multi", "item": {"answer": "Paris"}, "calculate_output": "(style + facts) / 2",
                 "graders": {"style": score_model("style"), "facts": score_model("facts")}}


async def test_model_sub_graders_judge_concurrently_and_their_usage_adds_up() -> None:
    spec = parse_spec(MODEL_GRADERS)
    judge = ScriptedJudge([8, 4])
    verdict = await verify(spec, Attempt("Paris"), TaskContext(), VerifierRuntime(judge=judge))
    assert verdict.score == pytest.approx(0.6) and verdict.success is True
    assert verdict.usage == JudgeUsage(calls=2, prompt_tokens=20, completion_tokens=10)


async def test_an_unjudged_sub_grader_leaves_the_multigrader_unjudged() -> None:
    spec = parse_spec(MODEL_GRADERS)
    judge = ScriptedJudge([8, JudgeFailed("judge error: connection refused", JudgeUsage(calls=3))])
    verdict = await verify(spec, Attempt("Paris"), TaskContext(), VerifierRuntime(judge=judge))
    assert verdict.success is None and verdict.score is None
    assert "facts: judge error: connection refused" in verdict.detail
    assert verdict.usage == JudgeUsage(calls=4, prompt_tokens=10, completion_tokens=5)


def test_model_sub_graders_need_a_judge() -> None:
    with pytest.raises(VerifierNotAllowed) as refused:
        admit(parse_spec(MODEL_GRADERS), RUNTIME)
    assert refused.value.param == "verifier.graders.style.model"


def test_math_functions_are_the_guides() -> None:
    assert set(FUNCTIONS) == {"min", "max", "abs", "floor", "ceil", "exp", "sqrt", "log"}
    assert FUNCTIONS["log"](math.e) == 1.0  # natural
