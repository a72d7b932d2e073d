"""A chat request's episode as the OpenAI response it is answered with: whole (`chat_completion`),
or a recorded attempt again (`completion_of_attempt`, for /feedback); each with R3's account of it
(`r3_info`) and what it cost (`usage_of`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from r3.engines.base import TokenLogprob
from r3.engines.token_bytes import own_bytes, token_name
from r3.episodes import AttemptRecord, Episode
from r3.reflect_retry import Generated
from server.chat.protocol import (
    AttemptReport,
    ChatCompletion,
    Choice,
    ChoiceLogprobs,
    FunctionCall,
    R3Info,
    ResponseMessage,
    TokenLogprobOut,
    ToolCallOut,
    TopLogprob,
)
from server.protocol import Usage, now

# One choice of a response: its episode and the turns that made it (the last is the answer).
Answer = tuple[Episode, list[Generated]]


def r3_info(episode: Episode) -> R3Info:
    return R3Info(
        episode_id=episode.id,
        adapter=episode.adapter or "base",
        reflected=len(episode.attempts) > 1,
        attempts=[AttemptReport(attempt=a.number, success=a.passed, score=a.graded,
                                detail=a.feedback.detail if a.feedback else a.detail,
                                reflection=a.reflection, finish_reason=a.finish_reason)
                  for a in episode.attempts],
    )


def usage_of(*choices: Sequence[Generated]) -> Usage:
    """Every token a request cost, given each choice's turns (attempts and reflections, the first
    one's first): the request's prompt once, as OpenAI counts it (every choice's first attempt reads
    that one prompt), each later turn's own prompt, and every turn's generated tokens."""
    first = choices[0][0].result.prompt_tokens
    prompt = first + sum(turn.result.prompt_tokens for turns in choices for turn in turns[1:])
    completion = sum(turn.result.completion_tokens for turns in choices for turn in turns)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def logprobs_out(tokens: list[TokenLogprob], vocabulary: Sequence[bytes] = ()) -> ChoiceLogprobs:
    """OpenAI's logprobs of `tokens`. Each token, and each of its alternatives, has its own `bytes`,
    from `vocabulary` (the bytes of each token id, `r3.engines.token_bytes`), so the bytes of the
    pieces of a character rejoin into it, and is named as OpenAI names it (`token_name`:
    `bytes:\\xe3\\x81` for such a piece)."""
    def named(token: TokenLogprob) -> dict[str, Any]:
        raw = own_bytes(vocabulary, token.token_id, token.token)
        return {"token": token_name(raw), "logprob": token.logprob, "bytes": list(raw)}

    return ChoiceLogprobs(content=[TokenLogprobOut(**named(t), top_logprobs=[TopLogprob(**named(a)) for a in t.top])
                                   for t in tokens])


def finish_reason(turn: Generated) -> str:
    """The answer's `finish_reason`: "tool_calls" when it stopped having called a tool."""
    return "tool_calls" if turn.parsed.tool_calls and turn.result.finish_reason == "stop" else turn.result.finish_reason


def completion_of_attempt(episode: Episode, attempt: AttemptRecord) -> ChatCompletion:
    """A recorded attempt as the completion it was returned as (for repeated, idempotent /feedback)."""
    tool_calls = [ToolCallOut(id=c["id"], function=FunctionCall(**c["function"])) for c in attempt.tool_calls or []]
    finish = "tool_calls" if tool_calls and attempt.finish_reason == "stop" else attempt.finish_reason
    tokens = attempt.prompt_tokens + attempt.completion_tokens
    return ChatCompletion(
        id=attempt.completion_id, created=now(), model=episode.model,
        choices=[Choice(message=ResponseMessage(content=attempt.content, tool_calls=tool_calls or None),
                        finish_reason=finish)],
        usage=Usage(prompt_tokens=attempt.prompt_tokens, completion_tokens=attempt.completion_tokens, total_tokens=tokens),
        r3=r3_info(episode),
    )


def chat_completion(model: str, episode: Episode, turns: list[Generated], logprobs: bool,
                    vocabulary: Sequence[bytes] = (), more: Sequence[Answer] = ()) -> ChatCompletion:
    """The response to a request: its last attempt, with the cost and verdicts of all of them; with
    `more` (the other choices of `n`), one choice each, each with its own `r3`."""
    answers = [(episode, turns), *more]

    def choice(index: int, answer: Answer) -> Choice:
        final = answer[1][-1]
        tool_calls = [ToolCallOut(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
                      for c in final.parsed.tool_calls] or None
        return Choice(index=index, message=ResponseMessage(content=final.parsed.content, tool_calls=tool_calls),
                      finish_reason=finish_reason(final),
                      logprobs=logprobs_out(final.result.tokens, vocabulary) if logprobs else None,
                      r3=r3_info(answer[0]) if more else None)

    return ChatCompletion(id=turns[-1].completion_id, created=now(), model=model,
                          choices=[choice(index, answer) for index, answer in enumerate(answers)],
                          usage=usage_of(*(answer_turns for _, answer_turns in answers)),
                          r3=r3_info(episode))
