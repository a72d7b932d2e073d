"""The reflect-retry core (`r3.reflect_retry.Reflector`) on a scripted engine: the events a run is made
of, in order, and the prompts each attempt and reflection is given, judged by real built-in verifiers.
No model: each test takes milliseconds."""

from __future__ import annotations

from support import ScriptedEngine, last_user_message

from r3.engines.base import SamplingParams
from r3.reflect_retry import AttemptStarted, ChatTask, Chunk, Judged, Reflector, Run
from r3.reflection import reflection_request, retry_request
from verifiers import Verdict, VerifierRuntime, parse_spec

ASK = [{"role": "user", "content": "What is the capital of France? One word."}]
EXACT = parse_spec({"type": "exact", "expected": "Paris"})
WRONG = 'the answer "Lyon" is not the expected answer'  # the exact verifier's detail on "Lyon"
REFLECTION = "I named the wrong city: France's capital is Paris."


def task(verifier=EXACT, max_retries: int = 1, params: SamplingParams = SamplingParams(max_tokens=64)) -> ChatTask:
    return ChatTask(model="scripted", adapter=None, messages=ASK, tools=None, tool_choice=None,
                    params=params, verifier=verifier, max_retries=max_retries)


async def events(engine: ScriptedEngine, chat: ChatTask) -> tuple[Run, list]:
    """The run of `chat` and its events; an `AttemptStarted` as the pair (it, the text its generation
    had when it came)."""
    run = Reflector.start(chat, tenant=None)
    return run, [(event, event.generation.text) if isinstance(event, AttemptStarted) else event
                 async for event in Reflector(engine, VerifierRuntime()).events(run)]


async def test_a_failed_attempt_is_reflected_on_and_retried_in_order() -> None:
    engine = ScriptedEngine(["Lyon", REFLECTION, "Paris"])
    run, made = await events(engine, task())

    started, chunks, first, retry = made[0], made[1:-2], made[-2], made[-1]
    assert isinstance(started[0], AttemptStarted) and started[1] == ""  # before any token
    assert all(isinstance(chunk, Chunk) for chunk in chunks)
    assert "".join(c.chunk.text for c in chunks) == "Lyon" and len(chunks) == 4  # a chunk per token
    assert chunks[-1].chunk.finish_reason == "stop" and chunks[0].chunk.prompt_length == len(
        engine.encode(engine.calls[0].prompt))
    assert first == Judged(1, run.turns[0], Verdict(False, WRONG), None)
    assert isinstance(retry, Judged) and retry.number == 2 and retry.verdict == Verdict(True)
    assert retry.reflection.text == REFLECTION and retry.turn.parsed.content == "Paris"

    attempt, reflection, retried = engine.calls
    assert last_user_message(attempt.prompt) == ASK[0]["content"]
    assert last_user_message(reflection.prompt) == reflection_request(EXACT.task_kind, WRONG)["content"]
    assert f"The checker said: {WRONG}." in reflection.prompt
    # the retry is asked the task again after the failed answer and the reflection on it
    assert last_user_message(retried.prompt) == retry_request(ASK)["content"]
    assert retried.prompt.index("Lyon") < retried.prompt.index(REFLECTION)

    records = run.episode.attempts
    assert [(a.number, a.success, a.detail, a.content) for a in records] == [
        (1, False, WRONG, "Lyon"), (2, True, "", "Paris")]
    assert records[1].reflection == REFLECTION and records[1].reflection_tokens == len(REFLECTION.encode())
    assert [a.completion_tokens for a in records] == [4, 5]
    assert records[1].prompt_tokens == len(engine.encode(retried.prompt))


async def test_a_passing_first_answer_is_not_reflected_on() -> None:
    engine = ScriptedEngine(["Paris"])
    run, made = await events(engine, task())
    assert isinstance(made[0][0], AttemptStarted) and made[-1] == Judged(1, run.turns[0], Verdict(True), None)
    assert [type(event) for event in made[1:-1]] == [Chunk] * 5
    assert len(engine.calls) == 1 and [a.success for a in run.episode.attempts] == [True]


async def test_no_retries_left_judges_the_first_answer_only() -> None:
    engine = ScriptedEngine(["Lyon"])
    run, made = await events(engine, task(max_retries=0))
    assert made[-1] == Judged(1, run.turns[0], Verdict(False, WRONG), None)
    assert len(engine.calls) == 1 and [a.success for a in run.episode.attempts] == [False]


async def test_each_reflection_is_shown_its_verifiers_detail_until_a_retry_passes() -> None:
    regex = parse_spec({"type": "regex", "pattern": r"\d+"})
    engine = ScriptedEngine(["seven", "I wrote a word.", "Seven!", "I must write digits only.", "7"])
    run, made = await events(engine, task(regex, max_retries=2))

    judged = [event for event in made if isinstance(event, Judged)]
    assert [(j.number, j.verdict.success) for j in judged] == [(1, False), (2, False), (3, True)]
    first_detail, second_detail = judged[0].verdict.detail, judged[1].verdict.detail
    assert "does not match" in first_detail and "does not match" in second_detail
    reflections = [call.prompt for call in engine.calls[1::2]]
    assert last_user_message(reflections[0]) == reflection_request(regex.task_kind, first_detail)["content"]
    assert last_user_message(reflections[1]) == reflection_request(regex.task_kind, second_detail)["content"]
    assert "I wrote a word." in reflections[1]  # the second reflection sees the first failure and its reflection
    assert [j.reflection.text for j in judged[1:]] == ["I wrote a word.", "I must write digits only."]


async def test_stop_strings_and_max_tokens_cut_an_attempt_before_it_is_judged() -> None:
    engine = ScriptedEngine(["Paris.\nBut maybe Lyon", "Paris, then more words"])
    run, made = await events(engine, task(max_retries=0, params=SamplingParams(max_tokens=64, stop=(".",))))
    assert made[-1].verdict == Verdict(True) and run.episode.attempts[0].finish_reason == "stop"

    run, made = await events(engine, task(max_retries=0, params=SamplingParams(max_tokens=5)))
    assert made[-1].verdict == Verdict(True) and run.episode.attempts[0].finish_reason == "length"
    assert run.episode.attempts[0].completion_tokens == 5



async def test_a_requests_generations_are_turns_of_one_conversation_ended_with_it() -> None:
    """The engine is told each generation's conversation (the episode's id), so its prefix cache can hold
    the attempt a reflection reads, and told when the request ends: answered, or cut short by a client
    that hung up mid-answer."""
    engine = ScriptedEngine(["Lyon", REFLECTION, "Paris"])
    run, _ = await events(engine, task())
    assert [call.conversation for call in engine.calls] == [run.episode.id] * 3 and engine.ended_conversations == [run.episode.id]

    engine = ScriptedEngine(["Lyon"])
    hung_up = Reflector.start(task(), tenant=None)
    stream = Reflector(engine, VerifierRuntime()).events(hung_up)
    assert isinstance(await anext(stream), AttemptStarted) and isinstance(await anext(stream), Chunk)
    assert engine.ended_conversations == []
    await stream.aclose()  # what the server does to a run whose client is gone
    assert engine.ended_conversations == [hung_up.episode.id]
