"""`score_model` and `label_model` judged by an OpenAI-compatible judge served on loopback
(`judge_server.OpenAICompatibleJudge`, which scores 9 an answer naming Paris and 2 any other):
scores and labels read, scaled by `range`, passed by `pass_threshold`, the judge's conclusions as the
detail, its usage counted; a judge that fails (down, slow, erring, refusing, unreadable) leaves the
attempt unjudged; the specs as OpenAI writes them, and what is refused when they are read."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from judge_server import COMPLETION_TOKENS, PROMPT_TOKENS_PER_MESSAGE, OpenAICompatibleJudge
from pydantic import ValidationError
from support import ThreadedServer

from r3.judge import HttpJudge
from verifiers import Attempt, JudgeUsage, TaskContext, Verdict, VerifierNotAllowed, VerifierRuntime, parse_spec, verify

API_KEY = "sk-judge-test"
TIMEOUT_S = 0.3  # below judge_server.SLOW_S


@pytest.fixture(scope="module")
def judge_server():
    judge = OpenAICompatibleJudge()
    with ThreadedServer(judge.app) as url:
        judge.base_url = f"{url}/v1"
        yield judge


@pytest.fixture
def judge(judge_server) -> OpenAICompatibleJudge:
    judge_server.reset()
    return judge_server


@pytest.fixture
def runtime(judge) -> VerifierRuntime:
    return VerifierRuntime(judge=HttpJudge(judge.base_url, API_KEY, timeout_s=TIMEOUT_S, max_attempts=3))


def score_model(**changes: Any) -> dict[str, Any]:
    """OpenAI's example of a score_model grader (the graders guide), on a 0-10 range."""
    return {
        "type": "score_model", "name": "capital", "model": "judge",
        "input": [
            {"role": "system", "content": "You are an expert grader. Score the answer from 0 to 10."},
            {"role": "user",
             "content": "Reference: {{ item.reference_answer }}. Model answer: {{ sample.output_text }}"},
        ],
        "item": {"reference_answer": "Paris"}, "range": [0, 10], "pass_threshold": 7,
        "sampling_params": {"temperature": 0.5, "top_p": 0.9, "seed": 42, "max_completions_tokens": 300},
        **changes,
    }


def label_model(**changes: Any) -> dict[str, Any]:
    return {
        "type": "label_model", "name": "capital", "model": "judge",
        "input": [{"role": "developer", "content": "Label the answer correct or incorrect."},
                  {"role": "user", "content": [{"type": "input_text", "text": "Answer: {{ sample.output_text }}"}]}],
        "labels": ["correct", "incorrect"], "passing_labels": ["correct"], **changes,
    }


async def judged(spec: dict[str, Any], answer: str, runtime: VerifierRuntime) -> Verdict:
    return await verify(parse_spec(spec), Attempt(answer), TaskContext(), runtime)


TWO_MESSAGES = JudgeUsage(1, 2 * PROMPT_TOKENS_PER_MESSAGE, COMPLETION_TOKENS)


# ---------------------------------------------------------------------------------------- score_model


async def test_a_high_score_passes_scaled_to_the_range_with_the_judges_conclusion(judge, runtime) -> None:
    verdict = await judged(score_model(), "The capital of France is Paris.", runtime)
    assert verdict == Verdict(True, "scored 9 in [0, 10]: the answer names Paris", 0.9, TWO_MESSAGES)


async def test_a_low_score_fails_and_says_why(judge, runtime) -> None:
    verdict = await judged(score_model(), "Lyon", runtime)
    assert verdict == Verdict(False, "scored 2 in [0, 10]: the answer does not name Paris", 0.2, TWO_MESSAGES)


async def test_the_judge_is_asked_as_openai_asks_it(judge, runtime) -> None:
    await judged(score_model(), "Paris", runtime)
    [(body, headers)] = judge.requests
    assert headers["authorization"] == f"Bearer {API_KEY}"
    assert body["model"] == "judge"
    assert body["messages"] == [
        {"role": "system", "content": "You are an expert grader. Score the answer from 0 to 10."},
        {"role": "user", "content": "Reference: Paris. Model answer: Paris"},
    ]
    assert (body["temperature"], body["top_p"], body["seed"], body["max_completion_tokens"]) == (0.5, 0.9, 42, 300)
    assert "reasoning_effort" not in body  # unset: the judge's default
    response_format = body["response_format"]
    assert response_format["type"] == "json_schema" and response_format["json_schema"]["strict"] is True
    schema = response_format["json_schema"]["schema"]
    assert list(schema["properties"]) == ["steps", "result"]  # reasons, then scores
    assert schema["required"] == ["steps", "result"] and schema["additionalProperties"] is False
    assert schema["properties"]["result"] == {"type": "number"}
    assert schema["properties"]["steps"]["items"]["required"] == ["description", "conclusion"]


async def test_a_score_outside_the_range_is_truncated_to_it_as_openai_does(judge, runtime) -> None:
    verdict = await judged(score_model(model="out_of_range"), "Paris", runtime)
    assert (verdict.success, verdict.score) == (True, 1.0)
    assert verdict.detail.startswith("scored 15 in [0, 10]")


@pytest.mark.parametrize(("answer", "passed", "score"), [("Paris", True, 0.5), ("Lyon", False, 0.0)])
async def test_without_a_threshold_the_middle_of_the_range_passes(judge, runtime, answer: str, passed: bool,
                                                                  score: float) -> None:
    spec = score_model(range=[4, 14])  # 9 is its middle; 2 is below it, truncated to 4
    del spec["pass_threshold"]
    verdict = await judged(spec, answer, runtime)
    assert (verdict.success, verdict.score) == (passed, score)


async def test_the_threshold_is_in_the_ranges_units(judge, runtime) -> None:
    verdict = await judged(score_model(pass_threshold=2), "Lyon", runtime)  # 2 of 10 reaches it exactly
    assert (verdict.success, verdict.score) == (True, 0.2)


def test_the_pass_score_a_feedback_score_is_read_against_is_the_threshold_on_the_unit_scale() -> None:
    assert parse_spec(score_model(pass_threshold=7)).pass_score == 0.7
    assert parse_spec(score_model(pass_threshold=None)).pass_score == 0.5  # the middle of the range
    assert parse_spec(label_model()).pass_score is None  # a label passes or fails


# ---------------------------------------------------------------------------------------- label_model


async def test_a_passing_label_scores_one(judge, runtime) -> None:
    verdict = await judged(label_model(), "Paris", runtime)
    assert verdict == Verdict(True, "labelled 'correct' (a passing label): the answer names Paris", 1.0,
                              TWO_MESSAGES)
    [(body, _)] = judge.requests
    assert body["response_format"]["json_schema"]["schema"]["properties"]["result"] == {
        "type": "string", "enum": ["correct", "incorrect"]}
    assert body["messages"][1] == {"role": "user", "content": "Answer: Paris"}
    assert "temperature" not in body  # label_model has no sampling_params


async def test_another_label_fails_scoring_zero(judge, runtime) -> None:
    verdict = await judged(label_model(), "Lyon", runtime)
    assert (verdict.success, verdict.score) == (False, 0.0)
    assert verdict.detail == "labelled 'incorrect' (not a passing label): the answer does not name Paris"


async def test_a_label_outside_the_labels_leaves_it_unjudged(judge, runtime) -> None:
    verdict = await judged(label_model(labels=["correct", "wrong"], passing_labels=["correct"]), "Lyon", runtime)
    assert verdict.success is None and verdict.score is None
    assert verdict.detail == "judge error: its label \"'incorrect'\" is not one of the grader's labels"


# ---------------------------------------------------------------------------------------- a judge that fails


async def test_5xx_answers_are_tried_again(judge, runtime) -> None:
    verdict = await judged(score_model(model="flaky"), "Paris", runtime)
    assert (verdict.success, verdict.score) == (True, 0.9)
    assert verdict.usage == JudgeUsage(3, 2 * PROMPT_TOKENS_PER_MESSAGE, COMPLETION_TOKENS)  # two 503s, then the answer
    assert len(judge.requests) == 3


async def test_a_judge_erring_on_every_try_leaves_the_attempt_unjudged(judge, runtime) -> None:
    judge.flaky_failures = 5
    try:
        verdict = await judged(score_model(model="flaky"), "Paris", runtime)
    finally:
        judge.flaky_failures = 2
    assert verdict == Verdict(None, "judge error: HTTP 503 after 3 attempts", None, JudgeUsage(3))


async def test_a_judge_that_is_down_leaves_the_attempt_unjudged(runtime) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    down = VerifierRuntime(judge=HttpJudge(f"http://127.0.0.1:{port}/v1", max_attempts=2))
    verdict = await judged(score_model(), "Paris", down)
    assert verdict == Verdict(None, "judge error: connection failed (ConnectError) after 2 attempts", None,
                              JudgeUsage(2))


async def test_a_slow_judge_times_out_without_another_try(judge, runtime) -> None:
    verdict = await judged(score_model(model="slow"), "Paris", runtime)
    assert verdict == Verdict(None, f"judge error: no reply within {TIMEOUT_S:g} s", None, JudgeUsage(1))
    assert len(judge.requests) == 1


@pytest.mark.parametrize(("model", "reason"), [
    ("unreadable", 'judge error: its answer is not JSON of the form {"steps": [{"description", "conclusion"}...], '
                   "\"result\": ...}: 'I think the answer is rather good.'"),
    ("refusing", "the judge refused: I cannot grade this."),
    ("rambling", "the judge's answer was cut off by its token limit (sampling_params.max_completions_tokens)"),
])
async def test_an_answer_that_cannot_be_read_leaves_the_attempt_unjudged(judge, runtime, model: str,
                                                                          reason: str) -> None:
    verdict = await judged(score_model(model=model), "Paris", runtime)
    assert verdict == Verdict(None, reason, None, TWO_MESSAGES)  # its tokens were spent all the same


async def test_an_unknown_model_is_the_judges_4xx_not_retried(judge, runtime) -> None:
    verdict = await judged(score_model(model="gpt-nope"), "Paris", runtime)
    assert verdict == Verdict(None, "judge error: HTTP 404: The model `gpt-nope` does not exist", None, JudgeUsage(1))


async def test_a_template_the_answer_cannot_fill_fails_without_asking_the_judge(judge, runtime) -> None:
    spec = score_model(input=[{"role": "user", "content": "City: {{ sample.output_json.city }}"}])
    verdict = await judged(spec, "Paris, not JSON", runtime)
    assert verdict.success is False and verdict.usage is None and "not the JSON the grader reads" in verdict.detail
    assert judge.requests == []


# ---------------------------------------------------------------------------------------- admitting and reading specs


async def test_a_process_without_a_model_judge_refuses_model_graders() -> None:
    for spec in (score_model(), label_model()):
        with pytest.raises(VerifierNotAllowed) as refused:
            await judged(spec, "Paris", VerifierRuntime())
        assert (refused.value.param, refused.value.code) == ("verifier.model", "judge_unavailable")


def test_specs_as_openai_writes_them_parse_and_record_unchanged() -> None:
    openai_example = score_model(input=[
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "Reference: {{item.reference_answer}}"},
                     {"type": "output_text", "text": "{{sample.output_text}}"}]}],
        sampling_params={"max_completions_tokens": 32768, "top_p": 1, "reasoning_effort": "medium"})
    for spec in (openai_example, label_model(), score_model(range=[0.0, 1.0], pass_threshold=0.5)):
        parsed = parse_spec(spec)
        assert parse_spec(parsed.model_dump(mode="json", by_alias=True)) == parsed  # as an episode records it


@pytest.mark.parametrize(("changes", "where", "message"), [
    ({"range": [1, 1]}, ("range",), "range is [low, high] with low < high"),
    ({"range": [0, 1, 2]}, ("range",), "at most 2 items"),
    ({"pass_threshold": 11}, ("pass_threshold",), "pass_threshold 11 is outside the range [0, 10]"),
    ({"input": []}, ("input",), "at least 1 item"),
    ({"input": [{"role": "user", "content": "{{ item.missing }}"}]}, ("input",),
     "input[0]: the template reads item.missing, which the spec's `item` does not have"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
     ("input", 0, "content"), "input_image content is not supported: R3's model judges read text"),
    ({"input": [{"role": "tool", "content": "x"}]}, ("input", 0, "role"), "Input should be"),
    ({"sampling_params": {"temperature": "hot"}}, ("sampling_params", "temperature"), "valid number"),
])
def test_a_score_model_spec_that_cannot_work_is_refused_naming_its_field(changes: dict[str, Any],
                                                                         where: tuple, message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_spec(score_model(**changes))
    [error] = refused.value.errors()
    assert error["loc"][:len(where) + 1] == ("score_model", *where) and message in error["msg"]


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"passing_labels": ["maybe"]}, "passing_labels", "passing_labels must be a subset of labels"),
    ({"labels": ["a", "a"], "passing_labels": ["a"]}, "labels", "labels must be distinct"),
    ({"labels": []}, "labels", "at least 1 item"),
])
def test_a_label_model_spec_that_cannot_work_is_refused_naming_its_field(changes: dict[str, Any], field: str,
                                                                         message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_spec(label_model(**changes))
    errors = refused.value.errors()
    assert any(error["loc"][:2] == ("label_model", field) and message in error["msg"] for error in errors)
