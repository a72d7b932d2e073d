"""`/admin/*`: adapter versions, activation and rollback, training rounds, live numbers, the audit log."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from r3.store.live_stats import VersionStats, version_stats
from r3.store.registry import Version
from r3.store.rounds import TrainingRounds
from server.admin_protocol import (
    Activation,
    AdapterList,
    AdminActionList,
    StatsReport,
    TrainingRequested,
    TrainingState,
)
from server.auth import CheckedRoute, admin
from server.deps import AdaptersDep, RegistryDep, StoreDep, get_adapters, get_metrics, get_registry
from server.errors import APIError, shown

router = APIRouter(prefix="/admin", dependencies=[Depends(admin)], route_class=CheckedRoute)

MAX_STATS_WINDOW_S = 366 * 24 * 3600.0  # the longest window /admin/stats looks back: a year


def _stats_out(stats: VersionStats | None) -> dict[str, Any]:
    if stats is None:
        return {"requests": 0, "first_attempt_success": None, "second_attempt_success": None, "success": None}
    return {**asdict(stats), "first_attempt_success": stats.first_attempt_success,
            "second_attempt_success": stats.second_attempt_success, "success": stats.success}


def _version_out(version: Version, live: VersionStats | None) -> dict[str, Any]:
    return {"name": version.name, "status": version.status, "parent": version.parent,
            "created_at": version.created_at, "promoted_at": version.promoted_at, "sha256": version.sha256,
            "gate": version.metrics.get("gate"), "training": version.metrics.get("training"),
            "episodes_used": len(version.episodes_used), "live": _stats_out(live)}


@router.get("/adapters", response_model=AdapterList)
async def list_adapters(registry: RegistryDep, adapters: AdaptersDep) -> dict[str, Any]:
    live = await version_stats(registry.sessions)
    return {"object": "list", "active": adapters.active,
            "data": [_version_out(v, live.get(v.name)) for v in await registry.versions()],
            "base": _stats_out(live.get("base"))}


# The routes the dashboard calls as functions too take the request and read the services from it.


@router.post("/adapters/rollback", response_model=Activation)
async def rollback(request: Request) -> dict[str, Any]:
    """Back to the active version's parent (the base model when it has none)."""
    registry = get_registry(request)
    active = await registry.active()
    if active is None:
        raise APIError(409, "no adapter version is active: the base model is served", type="conflict_error")
    return await _activate(request, active.parent, reason=f"rollback from {active.name}")


@router.post("/adapters/{name}/activate", response_model=Activation)
async def activate(name: str, request: Request) -> dict[str, Any]:
    """Make any recorded version active ("base" serves no adapter): rollback and roll-forward."""
    return await _activate(request, None if name == "base" else name, reason="activated by an admin")


async def _activate(request: Request, name: str | None, reason: str) -> dict[str, Any]:
    registry, adapters = get_registry(request), get_adapters(request)
    try:
        await registry.activate(name, actor="admin", reason=reason)
    except LookupError as error:
        raise APIError(404, f"no complete adapter version named {shown(name)}", type="not_found_error",
                       param="name") from error
    await adapters.sync()  # this replica at once; the others on the event or their poll
    get_metrics(request).swaps_requested.labels(actor="admin").inc()
    # A version this server cannot serve (its files are damaged, or shaped for another model) stays
    # active in the registry but is not served: say why.
    return {"active": name or "base", "serving": adapters.active or "base", "refused": adapters.refused.get(name)}


@router.post("/train", response_model=TrainingRequested)
async def request_training(request: Request) -> dict[str, Any]:
    """Ask the trainer for a round now; it picks the request up on its next check.

    Answers `{"round", "status", "new"}`. While a round is already requested or running, asking
    again adds none: the answer is that round (`"new": false`), so repeated clicks or retried calls
    never queue rounds behind one another."""
    asked, new = await TrainingRounds(get_registry(request).sessions).request("admin")  # GET /admin/train's current
    return {"round": asked.id, "status": asked.status, "new": new}


@router.get("/train", response_model=TrainingState)
async def training_state(request: Request, limit: int = Query(5, ge=1, le=100)) -> dict[str, Any]:
    rows = await TrainingRounds(get_registry(request).sessions).recent(limit)
    rounds = [{"round": r.id, "status": r.status, "requested_by": r.requested_by, "requested_at": r.requested_at,
               "started_at": r.started_at, "finished_at": r.finished_at, "candidate": r.candidate,
               "promoted": r.promoted, "report": r.report, "error": r.error} for r in rows]
    current = next((r for r in rounds if r["status"] in ("requested", "running")), None)
    last = next((r for r in rounds if r["status"] in ("finished", "failed")), None)
    return {"current": current, "last": last, "rounds": rounds}


@router.get("/stats", response_model=StatsReport)
async def live_stats(registry: RegistryDep, adapters: AdaptersDep, store: StoreDep,
                     window_s: float = Query(3600, gt=0, le=MAX_STATS_WINDOW_S, allow_inf_nan=False)) -> dict[str, Any]:
    """Success rates per version over the last `window_s` seconds (at most a year); the versions this
    server refused to serve, with the reason; the episode log's backlog and the episodes the database
    refused since the start (kept in the journal's `rejected.jsonl`)."""
    since = datetime.now(UTC) - timedelta(seconds=window_s)
    live = await version_stats(registry.sessions, since=since)
    return {"window_s": window_s, "active": adapters.active or "base",
            "versions": {name: _stats_out(stats) for name, stats in sorted(live.items())},
            "refused_versions": dict(adapters.refused),
            "episode_log": {"backlog": store.backlog, "rejected": store.rejected}}


@router.get("/actions", response_model=AdminActionList)
async def admin_actions(request: Request, limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
    actions = await get_registry(request).actions(limit)
    return {"object": "list", "data": [{"at": a.at, "actor": a.actor, "action": a.action, "from": a.from_version,
                                        "to": a.to_version, "reason": a.reason} for a in actions]}
