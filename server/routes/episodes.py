"""Reading episodes: a tenant's own (`/v1/episodes/{id}`), and everyone's for the admin (`/admin/episodes`)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Query

from r3.episodes import Episode
from r3.store.sql import EpisodeFilter
from server.auth import CheckedRoute, admin
from server.deps import EpisodeLogDep, EpisodesDep, TenantDep
from server.errors import APIError, shown
from server.protocol import AttemptOut, EpisodeOut, EpisodePage, FeedbackOut, JudgeUsageOut

router = APIRouter(route_class=CheckedRoute)


def episode_out(episode: Episode) -> EpisodeOut:
    return EpisodeOut(
        id=episode.id, created_at=episode.created_at, model=episode.model, scenario=episode.scenario,
        category=episode.category, adapter=episode.adapter or "base",
        task_kind=episode.task_kind, verifier=episode.verifier, store=episode.store_text, messages=episode.messages,
        tools=episode.tools, outcome=episode.outcome, score=episode.latest.graded if episode.attempts else None,
        attempts=[AttemptOut(
            attempt=a.number, completion_id=a.completion_id, content=a.content, tool_calls=a.tool_calls,
            reflection=a.reflection, success=a.success, score=a.score, detail=a.detail,
            feedback=FeedbackOut(success=a.feedback.success, score=a.feedback.graded, detail=a.feedback.detail,
                                 received_at=a.feedback.received_at) if a.feedback else None,
            judge_usage=JudgeUsageOut(calls=a.judge_calls, prompt_tokens=a.judge_prompt_tokens,
                                      completion_tokens=a.judge_completion_tokens) if a.judge_calls else None,
            finish_reason=a.finish_reason,
            prompt_tokens=a.prompt_tokens, completion_tokens=a.completion_tokens,
            reflection_tokens=a.reflection_tokens, latency_s=a.latency_s,
        ) for a in episode.attempts],
    )


@router.get("/v1/episodes/{episode_id}")
async def get_episode(episode_id: str, log: EpisodeLogDep, caller: TenantDep) -> EpisodeOut:
    episode = await log.get(episode_id, caller)
    if episode is None:
        # A key's tenant sees its own episodes only; those recorded in open mode belong to no key.
        whose = (" for this key (episodes recorded before the first API key was created belong to no key: the "
                 "admin key reads them, GET /admin/episodes)") if caller is not None else ""
        raise APIError(404, f"no episode {shown(episode_id)}{whose}", type="not_found_error", param="episode_id",
                       code="not_found")
    return episode_out(episode)


@router.get("/admin/episodes", dependencies=[Depends(admin)])
async def list_episodes(
    episodes_store: EpisodesDep,
    since: datetime | None = None,
    until: datetime | None = None,
    outcome: bool | None = None,
    adapter: str | None = Query(None, description='"base" for the base model, or an adapter name'),
    task_kind: str | None = None,
    tenant_id: str | None = Query(None, alias="tenant"),
    scenario: str | None = None,
    limit: int = Query(50, ge=1, le=500),
    after: str | None = Query(None, description="next_cursor of the previous page"),
) -> EpisodePage:
    where = EpisodeFilter(since=since, until=until, outcome=outcome, task_kind=task_kind, tenant=tenant_id,
                          adapter=adapter, scenario=scenario)
    episodes = await episodes_store.list(where, limit, decode_cursor(after) if after else None)
    cursor = encode_cursor(episodes[-1]) if len(episodes) == limit else None
    return EpisodePage(data=[episode_out(e) for e in episodes], next_cursor=cursor)


def encode_cursor(episode: Episode) -> str:
    """The `next_cursor` of a page that ends with `episode` (the admin API's and the dashboard's): opaque text
    that `decode_cursor` reads back as the store's `after`."""
    created = datetime.fromtimestamp(episode.created_at, UTC).isoformat()
    return base64.urlsafe_b64encode(f"{created}|{episode.id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) a cursor of `encode_cursor` names; a 400 `APIError` (param `after`) for other text."""
    try:
        created, episode_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(created), episode_id
    except ValueError as error:
        raise APIError(400, "after is not a cursor this API returned", param="after") from error
