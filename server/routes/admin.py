"""`/admin/*`: adapter versions, activation and rollback, training rounds, live numbers, the audit log.

Activation, rollback, training rounds and the audit log are `server.admin_service.AdminService`'s,
which the dashboard calls too; these routes hand it the request's arguments."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query

from r3.store.live_stats import VersionStats, version_stats
from r3.store.registry import Version
from server.admin_protocol import (
    Activation,
    AdapterList,
    AdminActionList,
    SetAsideList,
    StatsReport,
    TrainingRequested,
    TrainingState,
)
from server.auth import CheckedRoute, admin
from server.deps import AdaptersDep, AdminDep, EpisodeLogDep, StoreDep

router = APIRouter(prefix="/admin", dependencies=[Depends(admin)], route_class=CheckedRoute)

MAX_STATS_WINDOW_S = 366 * 24 * 3600.0  # the longest window /admin/stats looks back: a year


_RATES_AND_MEANS = ("first_attempt_success", "second_attempt_success", "success", "first_attempt_score",
                    "second_attempt_score", "score")


def _stats_out(stats: VersionStats | None) -> dict[str, Any]:
    if stats is None:
        return {"requests": 0, **dict.fromkeys(_RATES_AND_MEANS)}
    return {**asdict(stats), **{name: getattr(stats, name) for name in _RATES_AND_MEANS}}


def _version_out(version: Version, live: VersionStats | None) -> dict[str, Any]:
    return {"name": version.name, "status": version.status, "parent": version.parent,
            "created_at": version.created_at, "promoted_at": version.promoted_at, "sha256": version.sha256,
            "gate": version.metrics.get("gate"), "training": version.metrics.get("training"),
            "episodes_used": len(version.episodes_used), "live": _stats_out(live)}


@router.get("/adapters", response_model=AdapterList)
async def list_adapters(store: StoreDep, adapters: AdaptersDep) -> dict[str, Any]:
    live = await version_stats(store.database.sessions)
    return {"object": "list", "active": adapters.active,
            "data": [_version_out(v, live.get(v.name)) for v in await store.registry.versions()],
            "base": _stats_out(live.get("base"))}


@router.post("/adapters/rollback", response_model=Activation)
async def rollback(service: AdminDep) -> Activation:
    """Back to the active version's parent (the base model when it has none)."""
    return await service.rollback()


@router.post("/adapters/{name}/activate", response_model=Activation)
async def activate(name: str, service: AdminDep) -> Activation:
    """Make any recorded version active ("base" serves no adapter): rollback and roll-forward."""
    return await service.activate(None if name == "base" else name, reason="activated by an admin")


@router.post("/train", response_model=TrainingRequested)
async def request_training(service: AdminDep) -> TrainingRequested:
    """Ask the trainer for a round now; it picks the request up on its next check.

    Answers `{"round", "status", "new"}`. While a round is already requested or running, asking
    again adds none: the answer is that round (`"new": false`), so repeated clicks or retried calls
    never queue rounds behind one another."""
    return await service.request_training()  # GET /admin/train's current


@router.get("/train", response_model=TrainingState)
async def training_state(service: AdminDep, limit: int = Query(5, ge=1, le=100)) -> TrainingState:
    return await service.training_state(limit)


@router.get("/train/set-aside", response_model=SetAsideList)
async def set_aside_episodes(service: AdminDep, limit: int = Query(100, ge=1, le=1000)) -> SetAsideList:
    """Episodes training rounds set aside because they cannot be run again as tasks (e.g. a stored
    verifier that no longer validates), with the tenant, the round and the reason, the latest first.
    A round goes on without them; none is picked again."""
    return await service.set_aside(limit)


@router.get("/stats", response_model=StatsReport)
async def live_stats(store: StoreDep, adapters: AdaptersDep, log: EpisodeLogDep,
                     window_s: float = Query(3600, gt=0, le=MAX_STATS_WINDOW_S, allow_inf_nan=False)) -> dict[str, Any]:
    """Success rates per version over the last `window_s` seconds (at most a year); the versions this
    server refused to serve, with the reason; the episode log's backlog and the episodes the database
    refused since the start (kept in the journal's `rejected.jsonl`)."""
    since = datetime.now(UTC) - timedelta(seconds=window_s)
    live = await version_stats(store.database.sessions, since=since)
    return {"window_s": window_s, "active": adapters.active or "base",
            "versions": {name: _stats_out(stats) for name, stats in sorted(live.items())},
            "refused_versions": dict(adapters.refused),
            "episode_log": {"backlog": log.backlog, "rejected": log.rejected}}


@router.get("/actions", response_model=AdminActionList)
async def admin_actions(service: AdminDep, limit: int = Query(100, ge=1, le=1000)) -> AdminActionList:
    return await service.actions(limit)
