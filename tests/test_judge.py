"""The model judge (`r3.judge`): which one a process gets from its settings, the judge's host held to the
webhook allow-list when the settings are read, the in-process judge on an engine (a scripted one, and
the bundled model with its answer held to the schema by constrained decoding), and the HTTP judge's
bound on calls at once."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from judge_server import SLOW_S, OpenAICompatibleJudge
from support import ScriptedEngine, ThreadedServer

from r3.judge import EmbeddedJudge, EngineJudge, HttpJudge, model_judge
from r3.reflect_retry import verifier_runtime
from r3.settings import ConfigurationError, Settings, load_settings
from verifiers import Attempt, JudgeUsage, TaskContext, VerifierNotAllowed, VerifierRuntime, parse_spec, verify
from verifiers.graders.model_graders import output_schema
from verifiers.runtime import JudgeFailed, JudgeSampling

SCORE = output_schema({"type": "number"})
ASK = [{"role": "developer", "content": "Score the answer from 0 to 10."}, {"role": "user", "content": "Paris"}]


# ---------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(("environment", "said"), [
    ({"R3_JUDGE_BASE_URL": "https://judge.example.com/v1"},
     "its host 'judge.example.com' is not in R3_WEBHOOK_ALLOWED_HOSTS"),
    ({"R3_JUDGE_BASE_URL": "http://127.0.0.1:8001/v1", "R3_WEBHOOK_ALLOWED_HOSTS": '["judge.example.com"]'},
     "its host '127.0.0.1' is a loopback host, and R3_WEBHOOK_ALLOW_LOOPBACK is off"),
    ({"R3_JUDGE_BASE_URL": "ftp://judge.example.com/v1", "R3_WEBHOOK_ALLOWED_HOSTS": '["judge.example.com"]'},
     "not an absolute http(s) URL"),
])
def test_a_judge_outside_the_webhook_allow_list_stops_r3_at_startup(monkeypatch, tmp_path: Path,
                                                                    environment: dict[str, str], said: str) -> None:
    monkeypatch.chdir(tmp_path)  # no ./.env
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as refused:
        load_settings()
    message = str(refused.value)
    assert message.startswith(f"R3_JUDGE_BASE_URL={environment['R3_JUDGE_BASE_URL']!r} cannot be called: {said}.")
    assert "Fix: add its host to R3_WEBHOOK_ALLOWED_HOSTS" in message


@pytest.mark.parametrize("allowed", [{"webhook_allowed_hosts": ["JUDGE.example.com"]},
                                     {"webhook_allow_loopback": True}])
def test_an_allowed_judge_host_is_taken(allowed: dict) -> None:
    url = "https://judge.example.com/v1" if "webhook_allowed_hosts" in allowed else "http://localhost:8001/v1"
    assert Settings(judge_base_url=url, **allowed).judge_base_url == url


def test_each_process_gets_the_judge_its_settings_name(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, judge_base_url="http://127.0.0.1:9/v1/", webhook_allow_loopback=True,
                        judge_api_key="sk-x", judge_timeout_s=7, judge_max_attempts=2)
    over_http = verifier_runtime(settings).judge
    assert isinstance(over_http, HttpJudge) and over_http.url == "http://127.0.0.1:9/v1/chat/completions"
    assert (over_http.timeout_s, over_http.max_attempts) == (7, 2)

    local = Settings(data_dir=tmp_path, lora_modules={"helper": tmp_path})
    engine = ScriptedEngine([])
    served = verifier_runtime(local, engine).judge  # the server: the engine it serves with
    assert isinstance(served, EngineJudge) and served.engine is engine and served.adapters == {"helper"}
    trainer = model_judge(local)  # the trainer: an engine of the process's own, one for all its runtimes
    assert isinstance(trainer, EmbeddedJudge) and model_judge(local) is trainer
    assert trainer.settings.engine == "transformers"


# ---------------------------------------------------------------------------------------- in process


def test_the_in_process_judge_judges_with_fixed_weights_only(tmp_path: Path) -> None:
    judge = EngineJudge(ScriptedEngine([], model_id="smol"), adapters={"helper"})
    assert judge.model_problem("base") is None and judge.model_problem("helper") is None
    for name in ("r3", "smol", "r3@v2", "gpt-4o"):
        problem = judge.model_problem(name)
        assert problem.startswith(f"model {name!r} cannot judge here: without R3_JUDGE_BASE_URL")
        assert "`base` or an R3_LORA_MODULES adapter (`helper`)" in problem


async def test_the_in_process_judge_renders_the_conversation_and_counts_its_tokens(tmp_path: Path) -> None:
    answer = json.dumps({"steps": [{"description": "d", "conclusion": "c"}], "result": 8})
    engine = ScriptedEngine([answer, answer])
    await engine.load_adapter("helper", tmp_path)
    judge = EngineJudge(engine, adapters={"helper"}, max_tokens=200)

    reply = await judge.complete("base", ASK, SCORE, JudgeSampling())
    [call] = engine.calls
    assert call.adapter is None
    assert call.prompt == ("<|im_start|>system\nScore the answer from 0 to 10.<|im_end|>\n"  # developer: system
                           "<|im_start|>user\nParis<|im_end|>\n<|im_start|>assistant\n")
    assert (call.params.max_tokens, call.params.temperature, call.params.top_p) == (200, 1.0, 1.0)  # OpenAI's defaults
    assert reply.text == answer
    assert reply.usage == JudgeUsage(1, len(engine.encode(call.prompt)), len(engine.encode(answer)))

    await judge.complete("helper", ASK, SCORE, JudgeSampling(temperature=0, seed=3, max_completion_tokens=99))
    assert engine.calls[1].adapter == "helper"
    assert (engine.calls[1].params.temperature, engine.calls[1].params.seed, engine.calls[1].params.max_tokens) \
        == (0, 3, 99)


async def test_an_in_process_answer_cut_by_its_token_limit_is_no_answer() -> None:
    judge = EngineJudge(ScriptedEngine(['{"steps": [{"description": "and on and on']))
    with pytest.raises(JudgeFailed) as failed:
        await judge.complete("base", ASK, SCORE, JudgeSampling(max_completion_tokens=5))
    assert str(failed.value) == "the judge's answer was cut off at 5 tokens (sampling_params.max_completions_tokens)"
    assert failed.value.usage.completion_tokens == 5


async def test_an_unknown_judge_model_is_refused_when_the_request_arrives() -> None:
    runtime = VerifierRuntime(judge=EngineJudge(ScriptedEngine([])))
    spec = parse_spec({"type": "score_model", "name": "s", "model": "r3",
                       "input": [{"role": "user", "content": "{{ sample.output_text }}"}]})
    with pytest.raises(VerifierNotAllowed) as refused:
        await verify(spec, Attempt("Paris"), TaskContext(), runtime)
    assert (refused.value.param, refused.value.code) == ("verifier.model", "model_not_found")


async def test_a_trainers_judge_whose_engine_cannot_start_leaves_attempts_unjudged(tmp_path: Path) -> None:
    judge = EmbeddedJudge(Settings(model=str(tmp_path / "no-model"), data_dir=tmp_path))
    spec = parse_spec({"type": "label_model", "name": "l", "model": "base", "labels": ["yes", "no"],
                       "passing_labels": ["yes"], "input": [{"role": "user", "content": "{{ sample.output_text }}"}]})
    verdict = await verify(spec, Attempt("Paris"), TaskContext(), VerifierRuntime(judge=judge))
    assert verdict.success is None and verdict.detail.startswith("judge error: its engine did not start: ")
    assert verdict.usage == JudgeUsage()


async def test_the_bundled_model_judges_as_its_own_judge(transformers_engine) -> None:
    """This server as its own judge: the bundled model answers a score_model grader under the grader's
    schema (constrained decoding), greedily; the verdict is read from that answer."""
    spec = parse_spec({
        "type": "score_model", "name": "capital", "model": "base", "range": [0, 10], "pass_threshold": 7,
        "item": {"reference": "Paris"},
        "input": [{"role": "system", "content":
                   'You grade an answer against a reference. Reply in JSON with one step, then the result: '
                   '{"steps": [{"description": "compare the answer with the reference", "conclusion": '
                   '"the answer matches"}], "result": 10}. The result is 10 when the answer is the reference, '
                   'else 0.'},
                  {"role": "user", "content": "Reference: {{ item.reference }}\nAnswer: {{ sample.output_text }}"}],
        "sampling_params": {"temperature": 0, "max_completions_tokens": 120}})
    judge = EngineJudge(transformers_engine)
    verdict = await verify(spec, Attempt("Paris"), TaskContext(), VerifierRuntime(judge=judge))
    assert verdict.success is not None, verdict.detail  # judged: the answer was JSON of the schema
    assert verdict.detail.startswith("scored ") and " in [0, 10]" in verdict.detail
    assert verdict.score == pytest.approx(float(verdict.detail.split()[1]) / 10)
    assert verdict.usage.calls == 1 and 0 < verdict.usage.completion_tokens <= 120
    assert verdict.usage.prompt_tokens > 60  # the rendered conversation, template and all


def test_a_trainers_judge_starts_its_engine_once_and_judges_in_each_steps_loop(model_path: Path,
                                                                              tmp_path: Path) -> None:
    """The trainer judges each step's retries in an event loop of its own (`asyncio.run`): its judge's
    engine is started at the first judgement and serves every later loop."""
    settings = Settings(models_dir=model_path.parent, data_dir=tmp_path, device="cpu", max_batch_size=2)
    judge = EmbeddedJudge(settings)
    answer = JudgeSampling(temperature=0, max_completion_tokens=8)
    schema = {"name": "yes_or_no", "strict": True, "schema": {"type": "string", "enum": ["yes", "no"]}}
    replies = [asyncio.run(judge.complete("base", ASK, schema, answer)) for _ in range(2)]  # two steps, two loops
    engine = judge._judge.engine
    assert [reply.usage.calls for reply in replies] == [1, 1]
    assert replies[0].text in ('"yes"', '"no"') and replies[1].text == replies[0].text  # held to the schema
    assert engine.model_id == "judge"
    asyncio.run(judge.complete("base", ASK, schema, answer))
    assert judge._judge.engine is engine  # started once
    asyncio.run(engine.close())


# ---------------------------------------------------------------------------------------- over HTTP


async def test_an_http_judge_makes_at_most_its_limit_of_calls_at_once() -> None:
    server = OpenAICompatibleJudge()
    with ThreadedServer(server.app) as url:
        judge = HttpJudge(f"{url}/v1", timeout_s=10, max_concurrency=2)
        started = time.monotonic()
        replies = await asyncio.gather(*(judge.complete("slow", ASK, SCORE, JudgeSampling()) for _ in range(4)))
        elapsed = time.monotonic() - started
    assert server.most_at_once == 2 and elapsed >= 2 * SLOW_S
    assert all(json.loads(reply.text)["result"] == 9 for reply in replies)
