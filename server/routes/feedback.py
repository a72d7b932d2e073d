"""`POST /feedback`: a client's verdict on an answer it could only judge later, and an optional retry."""

from __future__ import annotations

import asyncio
import weakref

from fastapi import APIRouter, Request

from r3.episodes import Episode, Feedback
from r3.reflect_retry import recorded_task
from server.admin_protocol import FEEDBACK_RESPONSES
from server.auth import CheckedRoute
from server.chat.protocol import ChatCompletion
from server.chat.responses import chat_completion, completion_of_attempt
from server.deps import AdaptersDep, EpisodeLogDep, ReflectorDep, SettingsDep, TenantDep
from server.errors import APIError, ignore_unknown_fields
from server.openai.serving import unless_disconnected
from server.protocol import FeedbackReceipt, FeedbackRequest
from verifiers import parse_spec

router = APIRouter(route_class=CheckedRoute)

# One feedback at a time per episode, so two retries never race to become the same attempt.
_episode_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


@router.post("/feedback", response_model=None, responses=FEEDBACK_RESPONSES)
async def give_feedback(body: FeedbackRequest, request: Request, store: EpisodeLogDep, reflector: ReflectorDep,
                        adapters: AdaptersDep, caller: TenantDep,
                        settings: SettingsDep) -> FeedbackReceipt | ChatCompletion:
    ignore_unknown_fields(request, body, settings.strict_request_fields)
    episode, number = await _find(store, body, caller)
    lock = _episode_locks.setdefault(episode.id, asyncio.Lock())
    async with lock:
        episode, number = await _find(store, body, caller)  # as it is now that we hold the lock
        if episode.abandoned:
            raise APIError(409, "this request was abandoned: its client hung up before the answer was ready",
                           type="conflict_error", code="episode_abandoned")
        attempt = episode.attempt(number)
        if attempt.feedback is not None:
            return _repeat(episode, number, body)
        if body.retry:
            _check_retryable(episode, number, body)
        success, score = body.verdict(_pass_threshold(episode))
        attempt.feedback = Feedback(success=success, detail=body.detail, score=score)
        if not body.retry:
            await store.save(episode)
            return _receipt(episode, number)
        # The retry runs on the version the episode was served with, held loaded while it runs. A client
        # that hangs up meanwhile leaves nothing behind: sent again, its feedback retries again.
        async with adapters.pin(episode.adapter or "base"):
            task = recorded_task(episode, model=episode.model, adapter=episode.adapter)
            retry = reflector.retry_after_feedback(task, episode)
            record, turns = await unless_disconnected(request, retry)
        episode.attempts.append(record)
        await store.save(episode)
        return chat_completion(episode.model, episode, turns, logprobs=False)


async def _find(store, body: FeedbackRequest, tenant: str | None) -> tuple[Episode, int]:
    if body.episode_id is not None:
        episode = await store.get(body.episode_id, tenant)
        found = (episode, len(episode.attempts)) if episode else None
    else:
        found = await store.by_completion_id(body.completion_id, tenant)
    if found is None:
        which = "episode_id" if body.episode_id is not None else "completion_id"
        raise APIError(404, f"no episode has this {which}", type="not_found_error", param=which, code="not_found")
    return found


def _pass_threshold(episode: Episode) -> float | None:
    """The score in [0, 1] from which the recorded verifier passes an answer, where it grades on a
    scale (`SpecBase.pass_score`); None for a pass/fail check, or a record that no longer parses."""
    if episode.verifier is None:
        return None
    try:
        return parse_spec(episode.verifier).pass_score
    except ValueError:  # pydantic's ValidationError: a type or field this release no longer has
        return None


def _check_retryable(episode: Episode, number: int, body: FeedbackRequest) -> None:
    if body.verdict(_pass_threshold(episode))[0]:
        raise APIError(400, "retry needs a failing verdict: this score passes the verifier's pass_threshold",
                       param="retry")
    if episode.retry_of(number) is not None:
        raise APIError(409, f"attempt {number} already has a retry (attempt {number + 1}); give feedback on that one",
                       type="conflict_error", param="retry")
    if not episode.store_text:
        raise APIError(409, "this episode was made with store: false and kept no text to retry from",
                       type="conflict_error", param="retry")


def _repeat(episode: Episode, number: int, body: FeedbackRequest) -> FeedbackReceipt | ChatCompletion:
    """The same feedback again is answered as the first time; different feedback is a conflict."""
    given = episode.attempt(number).feedback
    if (given.success, given.graded, given.detail) != (*body.verdict(_pass_threshold(episode)), body.detail):
        raise APIError(409, f"attempt {number} already has different feedback", type="conflict_error", param="success")
    retried = episode.retry_of(number)
    if body.retry and retried is not None:
        return completion_of_attempt(episode, retried)
    if body.retry:  # the first such feedback asked for no retry
        raise APIError(409, f"attempt {number} already has feedback without a retry", type="conflict_error",
                       param="retry")
    return _receipt(episode, number)


def _receipt(episode: Episode, number: int) -> FeedbackReceipt:
    feedback = episode.attempt(number).feedback
    return FeedbackReceipt(episode_id=episode.id, attempt=number, success=feedback.success, score=feedback.graded,
                           detail=feedback.detail)


