"""Serving `POST /v1/responses` (`OpenAIServingResponses`, as vLLM's serving class is named) and
`GET /v1/responses/{id}` (`stored_response`).

A Responses API request is the chat completion request it asks for (`ResponsesRequest.chat_request`),
checked and run by the chat completions' serving, which this extends: reflected on and retried while
its verifier says no, recorded as one episode, on the adapter version it pins. Its answer is a
`Response`, whole (`full_response`) or as the events of its stream (`stream_response`,
`server.responses.sse`). Its episode keeps what the request asked beyond its task and its usage
(`Episode.responses_api`), so that `GET /v1/responses/{id}` answers as the request was answered (with
R3's account as it is now: feedback may have judged it since), and a later request's
`previous_response_id` continues its conversation.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from r3.episodes import ABANDONED, AttemptRecord, Episode
from r3.reflect_retry import Chunk, Generated, Run, openai_tool_calls
from r3.store.episode_log import EpisodeLog
from server.adapters import Served
from server.chat.responses import r3_info, usage_of
from server.chat.serving import ChatRequest, OpenAIServingChat
from server.errors import APIError
from server.protocol import shown
from server.responses.protocol import (
    FunctionCallOut,
    IncompleteDetails,
    OutputMessage,
    OutputTextOut,
    OutputTokensDetails,
    Response,
    ResponsesRequest,
    ResponseSettings,
    ResponseUsage,
    call_item_id,
    episode_id,
    message_id,
    response_id,
)
from server.responses.sse import OutputEvents, ResponseEvents


@dataclass(frozen=True)
class Answer:
    """A response's answer: its text and its calls (OpenAI's chat form), why it ended, and the
    completion that made it (which names its items)."""

    content: str | None
    tool_calls: list[dict[str, Any]]
    finish_reason: str  # stop | length | abandoned
    completion_id: str

    @classmethod
    def of_turn(cls, turn: Generated) -> Answer:
        return cls(turn.parsed.content, openai_tool_calls(turn.parsed) or [], turn.result.finish_reason,
                   turn.completion_id)

    @classmethod
    def of_attempt(cls, attempt: AttemptRecord) -> Answer:
        return cls(attempt.content, attempt.tool_calls or [], attempt.finish_reason, attempt.completion_id)


def response_of(episode: Episode, settings: ResponseSettings, answer: Answer, usage: ResponseUsage | None) -> Response:
    """The response that `episode` answered with `answer`, asked as `settings` say: a message with the
    answer's text (when it has text, or no call), then a function call item per call. It is
    "incomplete" when `max_output_tokens` cut it short (so is its last item), "cancelled" when its
    client hung up before it was made."""
    output: list[OutputMessage | FunctionCallOut] = []
    if answer.content or not answer.tool_calls:
        output.append(OutputMessage(id=message_id(answer.completion_id), status="completed",
                                    content=[OutputTextOut(text=answer.content or "")]))
    output += [FunctionCallOut(id=call_item_id(answer.completion_id, i), call_id=call["id"],
                               name=call["function"]["name"], arguments=call["function"]["arguments"],
                               status="completed") for i, call in enumerate(answer.tool_calls)]
    if answer.finish_reason in ("length", ABANDONED):  # cut short: the last item is as far as it got
        output[-1].status = "incomplete"
    status = {"length": "incomplete", ABANDONED: "cancelled"}.get(answer.finish_reason, "completed")
    incomplete = IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None
    return Response(**settings.model_dump(), id=response_id(episode.id), created_at=int(episode.created_at),
                    status=status, incomplete_details=incomplete, model=episode.model, output=output, usage=usage,
                    r3=r3_info(episode))


@dataclass(frozen=True)
class ResponseJob:
    """A checked Responses API request, ready to run: the chat request it is, and what it echoes."""

    body: ResponsesRequest
    chat: ChatRequest
    settings: ResponseSettings


class OpenAIServingResponses(OpenAIServingChat):
    """`POST /v1/responses` over this server's services: `prepare_response` a request, then answer it
    `full_response` or `stream_response` it."""

    async def prepare_response(self, body: ResponsesRequest, tenant: str | None, scenario: str | None = None,
                               request_id: str | None = None) -> ResponseJob:
        """Checks everything the request asks for before any generation starts (what R3 does not
        offer was refused before: `ResponsesRequest.refuse_unsupported`). Raises `APIError`: 404 for
        a model this server does not serve, or a `previous_response_id` that names none of the
        caller's responses; 400 for what the request asks wrongly (named as the Responses API names
        it), a previous response made with `store: false` or cancelled, and an input that does not
        fit the context."""
        previous = await self._previous(body.previous_response_id, tenant) if body.previous_response_id else None
        try:
            chat = await self.prepare(body.chat_request(previous), tenant, scenario, request_id)
        except APIError as error:
            raise in_responses_terms(error) from None
        return ResponseJob(body, chat, body.settings())

    async def full_response(self, job: ResponseJob) -> Response:
        """The whole response, made (reflected on and retried while its verifier says no) and recorded."""
        chat = job.chat
        async with self.services.adapters.pin(chat.body.model, chat.scenario, chat.request_id) as served:
            run = self._start(job, served)
            async with self._recording([run]):
                await self.reflector.run(run)
                response = self._finish(job, run)
        return response

    async def stream_response(self, job: ResponseJob, events: ResponseEvents) -> AsyncIterator[str]:
        """The response as its stream's events (`server.responses.sse`). Plain inference streams as
        the engine generates; a verified answer is judged (reflected on and retried) before anything
        is sent, and its final answer then goes out whole."""
        chat = job.chat
        async with self.services.adapters.pin(chat.body.model, chat.scenario, chat.request_id) as served:
            run = self._start(job, served)
            offered = run.task.tool_names if run.task.parses_tools else None
            async with self._recording([run]):
                if chat.verified:
                    await self.reflector.run(run)
                    final = run.turns[-1]
                    output = OutputEvents(events, final.completion_id, offered)
                    rest = [*events.opening(self._started(job, run)), *output.feed(final.text), *output.finish(final)]
                else:
                    async with aclosing(self.reflector.events(run)) as made:
                        # The first event is attempt 1 starting, before any token: the stream opens with it.
                        generation = (await anext(made)).generation
                        for event in events.opening(self._started(job, run)):
                            yield event
                        output = OutputEvents(events, generation.completion_id, offered)
                        for event in output.feed(generation.prompt.assistant_prefix):
                            yield event
                        async for made_event in made:
                            if isinstance(made_event, Chunk):
                                for event in output.feed(made_event.chunk.text):
                                    yield event
                    rest = output.finish(run.turns[-1])
                response = self._finish(job, run)
        for event in rest:
            yield event
        yield events.closing(response)

    def _start(self, job: ResponseJob, served: Served) -> Run:
        """The request's run, its episode keeping what the request asked beyond its task (with
        `store: false`, only that it was a response, which kept nothing to retrieve)."""
        [run] = self._runs(job.chat, served)
        run.episode.responses_api = job.settings.model_dump(mode="json") if job.body.store else {"store": False}
        return run

    def _finish(self, job: ResponseJob, run: Run) -> Response:
        """The response `run` made; its usage is kept with the episode (recorded once this returns)."""
        usage = usage_of(run.turns)
        reflected = sum(attempt.reflection_tokens for attempt in run.episode.attempts)
        response_usage = ResponseUsage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                                       total_tokens=usage.total_tokens,
                                       output_tokens_details=OutputTokensDetails(reasoning_tokens=reflected))
        if job.body.store:
            run.episode.responses_api["usage"] = response_usage.model_dump(mode="json")
        return response_of(run.episode, job.settings, Answer.of_turn(run.turns[-1]), response_usage)

    def _started(self, job: ResponseJob, run: Run) -> Response:
        """The response as its stream announces it: in progress, no output yet."""
        return Response(**job.settings.model_dump(), id=response_id(run.episode.id),
                        created_at=int(run.episode.created_at), status="in_progress", model=run.episode.model,
                        output=[])

    async def _previous(self, previous_id: str, tenant: str | None) -> Episode:
        """The episode of the response `previous_id` names, to continue. Raises `APIError`: 404 when
        it is none of the caller's responses; 400 when it kept no text (`store: false`) or was cancelled."""
        episode = await _response_episode(self.services.episode_log, previous_id, tenant)
        if episode is None:
            raise APIError(404, f"previous_response_id: no response {shown(previous_id)}", type="not_found_error",
                           param="previous_response_id", code="previous_response_not_found")
        if not episode.store_text:
            raise APIError(400, f"previous_response_id: response {shown(previous_id)} was made with store: false, "
                           "so R3 kept nothing to continue from: send the whole conversation as input",
                           param="previous_response_id")
        if episode.abandoned:
            raise APIError(400, f"previous_response_id: response {shown(previous_id)} was cancelled (its client "
                           "hung up before it was made): there is no answer to continue from",
                           param="previous_response_id")
        return episode


async def stored_response(log: EpisodeLog, response: str, tenant: str | None) -> Response:
    """Response `response` as it was answered, R3's account as it is now. Raises `APIError` 404 when
    it is none of the caller's responses, or was made with `store: false`."""
    episode = await _response_episode(log, response, tenant)
    if episode is None or not episode.store_text:
        why = "" if episode is None else ": it was made with store: false, and R3 kept nothing of it"
        raise APIError(404, f"no response {shown(response)}{why}", type="not_found_error", param="response_id",
                       code="not_found")
    record = episode.responses_api
    usage = ResponseUsage.model_validate(record["usage"]) if "usage" in record else None
    return response_of(episode, ResponseSettings.model_validate(record), Answer.of_attempt(episode.latest), usage)


async def _response_episode(log: EpisodeLog, response: str, tenant: str | None) -> Episode | None:
    """The episode of the caller's response `response`, or None: no such response (a chat
    completion's episode is none), or another tenant's."""
    episode = await log.get(found, tenant) if (found := episode_id(response)) else None
    return episode if episode is not None and episode.responses_api is not None and episode.attempts else None


# A chat request's params as the Responses API names them: (the chat param, its name here).
_RENAMED = ((re.compile(r"^messages\b"), "input"), (re.compile(r"^max_completion_tokens\b"), "max_output_tokens"),
            (re.compile(r"^response_format\.json_schema\.schema\b"), "text.format.schema"),
            (re.compile(r"^response_format\b"), "text.format"),
            (re.compile(r"^tools\.(\d+)\.function\.parameters\b"), r"tools.\1.parameters"))


def in_responses_terms(error: APIError) -> APIError:
    """`error`, raised checking the chat request a Responses request became, naming its param as the
    Responses API does (`max_completion_tokens` is `max_output_tokens`, `response_format` is
    `text.format`, `messages` is `input`, ...), in its `param` and its message."""
    for chat_name, name in _RENAMED:
        if error.param is not None and chat_name.match(error.param):
            param = chat_name.sub(name, error.param, count=1)
            message = error.message.replace("the messages take", "the input takes").replace(error.param, param, 1)
            return APIError(error.status, message, error.type, param, error.code)
    return error
