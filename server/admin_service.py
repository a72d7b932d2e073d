"""The admin's operations on adapter versions and training rounds, for the admin API and the dashboard.

`/admin/*` and the dashboard's pages and buttons call the same `AdminService` (the typed dependency
`server.deps.AdminDep`), so a click does exactly what the API call does, and both read the same
answers: the response models of `server.admin_protocol`. A refusal is an `APIError` (404 for a
version that does not exist, 409 for a rollback with nothing to roll back from): the API answers it
as JSON, the dashboard shows its message.
"""

from __future__ import annotations

from collections.abc import Callable

from r3.store.rounds import ENDED, PENDING, Round
from r3.store.store import Store
from server.adapters import AdapterManager
from server.admin_protocol import (
    Activation,
    AdminActionList,
    AdminActionOut,
    SetAsideEpisodeOut,
    SetAsideList,
    TrainerStatus,
    TrainingRequested,
    TrainingRoundOut,
    TrainingState,
)
from server.errors import APIError, shown
from server.metrics import Metrics

ACTOR = "admin"  # who the registry's audit log and the swap counter say acted, from the API or the dashboard


def no_trainer_here() -> TrainerStatus:
    """The trainer's status on a server that runs none beside it (R3_TRAINER=off, or an embedded app)."""
    return TrainerStatus(running=None, detail="no trainer runs beside this server (R3_TRAINER=off): a requested "
                         "round waits until an `r3 train` process, here or on another machine, takes it up (a "
                         "running round's owner and heartbeat_at show one at work)")


class AdminService:
    def __init__(self, store: Store, adapters: AdapterManager, metrics: Metrics,
                 trainer: Callable[[], TrainerStatus] = no_trainer_here) -> None:
        self.registry, self.rounds = store.registry, store.rounds
        self.adapters = adapters
        self.metrics = metrics
        self.trainer = trainer  # the trainer's status now (`r3 serve`'s supervisor, or none here)

    # ------------------------------------------------------------ adapter versions

    async def activate(self, name: str | None, reason: str) -> Activation:
        """Make a recorded version active (None: the base model) and serve it on this replica at once."""
        try:
            await self.registry.activate(name, actor=ACTOR, reason=reason)
        except LookupError as error:
            raise APIError(404, f"no complete adapter version named {shown(name)}", type="not_found_error",
                           param="name") from error
        await self.adapters.sync()  # this replica at once; the others on the event or their poll
        self.metrics.swaps_requested.labels(actor=ACTOR).inc()
        # A version this server cannot serve (its files are damaged, or shaped for another model) stays
        # active in the registry but is not served: say why.
        return Activation(active=name or "base", serving=self.adapters.active or "base",
                          refused=self.adapters.refused.get(name) if name is not None else None)

    async def rollback(self) -> Activation:
        """Back to the active version's parent (the base model when it has none); 409 when none is active."""
        active = await self.registry.active()
        if active is None:
            raise APIError(409, "no adapter version is active: the base model is served", type="conflict_error")
        return await self.activate(active.parent, reason=f"rollback from {active.name}")

    async def actions(self, limit: int) -> AdminActionList:
        """The audit log, the latest first."""
        return AdminActionList(data=[
            AdminActionOut(at=a.at, actor=a.actor, action=a.action, from_version=a.from_version, to=a.to_version,
                           reason=a.reason)
            for a in await self.registry.actions(limit)])

    # ------------------------------------------------------------ training rounds

    async def request_training(self) -> TrainingRequested:
        """Ask the trainer for a round; while one is requested or running, that one (`new` false)."""
        asked, new = await self.rounds.request(ACTOR)
        return TrainingRequested(round=asked.id, status=asked.status, new=new, trainer=self.trainer())

    async def training_state(self, limit: int) -> TrainingState:
        """The latest `limit` rounds, the one requested or running and the last one that ended."""
        rounds = [_round_out(r) for r in await self.rounds.recent(limit)]
        return TrainingState(current=next((r for r in rounds if r.status in PENDING), None),
                             last=next((r for r in rounds if r.status in ENDED), None),
                             rounds=rounds, trainer=self.trainer())

    async def set_aside(self, limit: int) -> SetAsideList:
        """The episodes training rounds set aside (they cannot be run again as tasks), the latest first."""
        return SetAsideList(data=[
            SetAsideEpisodeOut(episode_id=e.episode_id, tenant=e.tenant, round=e.round_id, reason=e.reason, at=e.at)
            for e in await self.rounds.set_aside_episodes(limit)])


def _round_out(r: Round) -> TrainingRoundOut:
    return TrainingRoundOut(round=r.id, status=r.status, requested_by=r.requested_by, requested_at=r.requested_at,
                            started_at=r.started_at, finished_at=r.finished_at, candidate=r.candidate,
                            promoted=r.promoted, report=r.report, error=r.error, owner=r.owner,
                            heartbeat_at=r.heartbeat_at)
