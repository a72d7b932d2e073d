"""The services a route uses, as typed FastAPI dependencies (`registry: RegistryDep`).

`server.app`'s lifespan builds each service once and keeps it in `app.state`; each getter here reads
its one attribute there, per request, so whatever holds the app (a test, a benchmark that swaps the
episode log for one that discards) sees its change in the next request.

The store (`StoreDep`: `r3.store.store.Store`) is this process's one way to the database and Redis;
`RegistryDep` and `EpisodesDep` are two of its parts. The episode log and the episodes are two
layers of one database, not one object: the log (`EpisodeLogDep`) takes every episode the API writes
and answers reads by id (it may still hold an episode the database has not got); the episodes
(`EpisodesDep`) are the database itself, for listings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from r3.engines.base import Engine
from r3.reflect_retry import Reflector
from r3.settings import Settings
from r3.store.episode_log import EpisodeLog
from r3.store.errors import JournalUnavailable
from r3.store.registry import AdapterRegistry
from r3.store.sql import SqlEpisodeStore
from r3.store.store import Store
from server.adapters import AdapterManager
from server.admin_service import AdminService
from server.auth import Authenticator, tenant
from server.metrics import Metrics


def _from_state(name: str) -> Callable[[Request], Any]:
    """A dependency that reads `app.state.<name>`, per request (its type is the `Annotated` one below)."""
    def read(request: Request) -> Any:
        return getattr(request.app.state, name)

    read.__name__ = f"get_{name}"
    return read


get_settings = _from_state("settings")
get_metrics = _from_state("metrics")
get_engine = _from_state("engine")
get_store = _from_state("store")
get_episode_log = _from_state("episode_log")
get_adapters = _from_state("adapters")
get_reflector = _from_state("reflector")
get_auth = _from_state("auth")
get_started = _from_state("started")  # when this server started (Unix seconds): the `created` of its models


def get_episodes(request: Request) -> SqlEpisodeStore:
    return get_store(request).episodes


def get_registry(request: Request) -> AdapterRegistry:
    return get_store(request).registry


@dataclass(frozen=True)
class Services:
    """The serving services together, for a route that hands them on to its helpers as one."""

    settings: Settings
    metrics: Metrics
    engine: Engine
    episode_log: EpisodeLog
    adapters: AdapterManager
    reflector: Reflector


def get_services(request: Request) -> Services:
    return Services(settings=get_settings(request), metrics=get_metrics(request), engine=get_engine(request),
                    episode_log=get_episode_log(request), adapters=get_adapters(request), reflector=get_reflector(request))


def get_admin(request: Request) -> AdminService:
    """The admin's operations (activation, rollback, training rounds, the audit log), over this app's services."""
    return AdminService(store=get_store(request), adapters=get_adapters(request), metrics=get_metrics(request),
                        trainer=request.app.state.trainer_status, canary_watch=request.app.state.canary_watch)


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
EngineDep = Annotated[Engine, Depends(get_engine)]
StoreDep = Annotated[Store, Depends(get_store)]
EpisodeLogDep = Annotated[EpisodeLog, Depends(get_episode_log)]
EpisodesDep = Annotated[SqlEpisodeStore, Depends(get_episodes)]
RegistryDep = Annotated[AdapterRegistry, Depends(get_registry)]
AdaptersDep = Annotated[AdapterManager, Depends(get_adapters)]
ReflectorDep = Annotated[Reflector, Depends(get_reflector)]
StartedDep = Annotated[int, Depends(get_started)]
ServicesDep = Annotated[Services, Depends(get_services)]
AdminDep = Annotated[AdminService, Depends(get_admin)]
AuthDep = Annotated[Authenticator, Depends(get_auth)]
# The calling tenant (None in open mode); a 401 without a valid key, before the body is read.
TenantDep = Annotated[str | None, Depends(tenant)]


def recordable(log: EpisodeLogDep) -> None:
    """For a route that records an episode: refuse the request (`JournalUnavailable`: 503 with
    Retry-After) before it generates anything, while the episode could not be recorded."""
    problem = log.unrecordable()
    if problem is not None:
        raise JournalUnavailable(problem)
