"""`/admin/*`: scenarios, adapter versions, activation and rollback, training rounds, live numbers, the
audit log. Routes about one lineage take `?scenario=` (default `default`, the lineage `r3`).

Activation, rollback, training rounds and the audit log are `server.admin_service.AdminService`'s,
which the dashboard calls too; these routes hand it the request's arguments."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query

from r3.store.live_stats import VersionStats, version_stats
from r3.store.models import DEFAULT_SCENARIO
from r3.store.registry import Version
from server.admin_protocol import (
    Activation,
    AdapterList,
    AdminActionList,
    CanaryOut,
    ScenarioConfigure,
    ScenarioCreate,
    ScenarioList,
    ScenarioOut,
    SetAsideList,
    StatsReport,
    TrainingRequested,
    TrainingState,
)
from server.auth import CheckedRoute, admin
from server.deps import AdaptersDep, AdminDep, EpisodeLogDep, SettingsDep, StoreDep

router = APIRouter(prefix="/admin", dependencies=[Depends(admin)], route_class=CheckedRoute)

MAX_STATS_WINDOW_S = 366 * 24 * 3600.0  # the longest window /admin/stats looks back: a year
Scenario = Query(DEFAULT_SCENARIO, description="the scenario whose lineage this is about")


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


@router.get("/scenarios", response_model=ScenarioList)
async def list_scenarios(service: AdminDep) -> ScenarioList:
    """Every scenario: its lineage's `model` name, the version this server serves in it, its training overrides."""
    return await service.list_scenarios()


@router.post("/scenarios", response_model=ScenarioOut)
async def create_scenario(body: ScenarioCreate, service: AdminDep, settings: SettingsDep) -> ScenarioOut:
    """A new scenario: its own lineage (`<name>-v1`, …), served as `model: "<name>"` on the base model
    until its first version is promoted. 409 when the name is taken."""
    return await service.create_scenario(body.name, body.description, body.training, settings)


@router.patch("/scenarios/{name}", response_model=ScenarioOut)
async def configure_scenario(name: str, body: ScenarioConfigure, service: AdminDep,
                             settings: SettingsDep) -> ScenarioOut:
    """Replace a scenario's training overrides (and description); its next round uses them."""
    return await service.configure_scenario(name, body.training, body.description, settings)


@router.get("/adapters", response_model=AdapterList)
async def list_adapters(store: StoreDep, adapters: AdaptersDep, service: AdminDep,
                        scenario: str = Scenario) -> dict[str, Any]:
    await service.scenario(scenario)
    live = await version_stats(store.database.sessions)
    return {"object": "list", "scenario": scenario, "active": adapters.actives.get(scenario),
            "data": [_version_out(v, live.get(v.name)) for v in await store.registry.versions(scenario)],
            "base": _stats_out(live.get("base"))}


@router.post("/adapters/rollback", response_model=Activation)
async def rollback(service: AdminDep, scenario: str = Scenario) -> Activation:
    """Back to the scenario's active version's parent (the base model when it has none)."""
    return await service.rollback(scenario)


@router.post("/adapters/{name}/activate", response_model=Activation)
async def activate(name: str, service: AdminDep, scenario: str | None = Query(
        None, description='the scenario: needed for "base"; a version names its own')) -> Activation:
    """Make any recorded version active in its scenario ("base" serves no adapter): rollback and roll-forward."""
    return await service.activate(None if name == "base" else name, reason="activated by an admin",
                                  scenario=scenario)


@router.get("/canary", response_model=CanaryOut)
async def canary(service: AdminDep, scenario: str = Scenario) -> CanaryOut:
    """The scenario's live canary: its version, share and state; each outcome's counts, means and the
    difference's always-valid interval; the test's statistics against their boundary; its decision."""
    return await service.canary(scenario)


@router.post("/canary/promote", response_model=CanaryOut)
async def promote_canary(service: AdminDep, scenario: str = Scenario) -> CanaryOut:
    """Promote the scenario's running canary now, whatever its test says (recorded in the audit log)."""
    return await service.end_canary(scenario, promote=True)


@router.post("/canary/abort", response_model=CanaryOut)
async def abort_canary(service: AdminDep, scenario: str = Scenario) -> CanaryOut:
    """Abort the scenario's running canary now: its version is rejected, the current one kept."""
    return await service.end_canary(scenario, promote=False)


@router.post("/train", response_model=TrainingRequested)
async def request_training(service: AdminDep, scenario: str = Scenario) -> TrainingRequested:
    """Ask the trainer for a round of the scenario now; it picks the request up on its next check.

    Answers `{"round", "scenario", "status", "new"}`. While a round of the scenario is already
    requested or running, asking again adds none: the answer is that round (`"new": false`), so
    repeated clicks or retried calls never queue rounds behind one another."""
    return await service.request_training(scenario)  # GET /admin/train's current


@router.get("/train", response_model=TrainingState)
async def training_state(service: AdminDep, limit: int = Query(5, ge=1, le=100),
                         scenario: str | None = Query(None, description="one scenario's rounds; all by default")
                         ) -> TrainingState:
    return await service.training_state(limit, scenario)


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
async def admin_actions(service: AdminDep, limit: int = Query(100, ge=1, le=1000),
                        scenario: str | None = Query(None, description="one scenario's entries; all by default")
                        ) -> AdminActionList:
    return await service.actions(limit, scenario)
