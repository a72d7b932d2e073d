"""The admin's operations on adapter versions and training rounds, for the admin API and the dashboard.

`/admin/*` and the dashboard's pages and buttons call the same `AdminService` (the typed dependency
`server.deps.AdminDep`), so a click does exactly what the API call does, and both read the same
answers: the response models of `server.admin_protocol`. A refusal is an `APIError` (404 for a
version that does not exist, 409 for a rollback with nothing to roll back from): the API answers it
as JSON, the dashboard shows its message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from r3.settings import Settings
from r3.store.models import DEFAULT_SCENARIO, CanaryState
from r3.store.registry import lineage
from r3.store.rounds import ENDED, PENDING, Round
from r3.store.scenarios import ScenarioError, ScenarioExists, ScenarioInfo
from r3.store.store import Store
from server.adapters import AdapterManager
from server.admin_protocol import (
    Activation,
    AdminActionList,
    AdminActionOut,
    CanaryOut,
    ScenarioList,
    ScenarioOut,
    SetAsideEpisodeOut,
    SetAsideList,
    TrainerStatus,
    TrainingRequested,
    TrainingRoundOut,
    TrainingState,
)
from server.canary import CanaryWatch
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
                 trainer: Callable[[], TrainerStatus] = no_trainer_here, canary_watch: CanaryWatch | None = None) -> None:
        self.store, self.registry, self.rounds, self.scenarios = store, store.registry, store.rounds, store.scenarios
        self.adapters = adapters
        self.metrics = metrics
        self.trainer = trainer  # the trainer's status now (`r3 serve`'s supervisor, or none here)
        self.canary_watch = canary_watch or CanaryWatch(store, Settings())  # runs the canary test on demand

    # ------------------------------------------------------------ adapter versions

    async def activate(self, name: str | None, reason: str, scenario: str | None = None) -> Activation:
        """Make a recorded version active in its scenario (None: the base model, in `scenario`) and serve
        it on this replica at once. 404 for an unknown scenario or version, or a version of another
        scenario than the one named."""
        if scenario is not None:
            await self.scenario(scenario)
        try:
            await self.registry.activate(name, actor=ACTOR, reason=reason, scenario=scenario)
        except LookupError as error:
            where = f" in scenario {shown(scenario)}" if scenario else ""
            raise APIError(404, f"no complete adapter version named {shown(name)}{where}", type="not_found_error",
                           param="name") from error
        await self.adapters.sync()  # this replica at once; the others on the event or their poll
        self.metrics.swaps_requested.labels(actor=ACTOR).inc()
        version = await self.registry.get(name) if name is not None else None
        scenario = version.scenario if version is not None else scenario or DEFAULT_SCENARIO
        # A version this server cannot serve (its files are damaged, or shaped for another model) stays
        # active in the registry but is not served: say why.
        return Activation(scenario=scenario, active=name or "base",
                          serving=self.adapters.actives.get(scenario) or "base",
                          refused=self.adapters.refused.get(name) if name is not None else None)

    async def rollback(self, scenario: str = DEFAULT_SCENARIO) -> Activation:
        """Back to the scenario's active version's parent (the base model when it has none); 409 when
        none is active."""
        await self.scenario(scenario)
        active = await self.registry.active(scenario)
        if active is None:
            raise APIError(409, f"no adapter version is active in scenario {shown(scenario)}: the base model is served",
                           type="conflict_error")
        return await self.activate(active.parent, reason=f"rollback from {active.name}", scenario=scenario)

    async def actions(self, limit: int, scenario: str | None = None) -> AdminActionList:
        """The audit log (of `scenario`, or of all), the latest first."""
        return AdminActionList(data=[
            AdminActionOut(at=a.at, actor=a.actor, scenario=a.scenario, action=a.action, from_version=a.from_version,
                           to=a.to_version, reason=a.reason)
            for a in await self.registry.actions(limit, scenario)])

    # ------------------------------------------------------------ scenarios

    async def scenario(self, name: str) -> ScenarioInfo:
        """The scenario named `name`; 404 when there is none (a typo never makes a lineage)."""
        found = await self.scenarios.get(name)
        if found is None:
            raise APIError(404, f"no scenario named {shown(name)}; create it with POST /admin/scenarios or "
                                f"`r3 scenarios create`", type="not_found_error", param="scenario",
                           code="scenario_not_found")
        return found

    async def list_scenarios(self) -> ScenarioList:
        return ScenarioList(data=[self._scenario_out(s) for s in await self.scenarios.list_all()])

    async def create_scenario(self, name: str, description: str, training: dict[str, Any],
                              settings: Settings) -> ScenarioOut:
        """A new scenario, served at once by this replica (the others on their next poll). 400 for a bad
        name or override, 409 when the name is taken."""
        try:
            created = await self.scenarios.create(name, description, training, settings)
        except ScenarioExists as error:
            raise APIError(409, str(error), type="conflict_error", param="name") from None
        except ScenarioError as error:
            raise APIError(400, str(error), param=error.param) from None
        await self.registry.record_action(ACTOR, "create_scenario", scenario=name)
        await self.adapters.sync()
        return self._scenario_out(created)

    async def configure_scenario(self, name: str, training: dict[str, Any], description: str | None,
                                 settings: Settings) -> ScenarioOut:
        await self.scenario(name)
        try:
            configured = await self.scenarios.configure(name, training, description, settings)
        except ScenarioError as error:
            raise APIError(400, str(error), param=error.param) from None
        await self.registry.record_action(ACTOR, "configure_scenario", reason=str(training), scenario=name)
        return self._scenario_out(configured)

    def _scenario_out(self, scenario: ScenarioInfo) -> ScenarioOut:
        return ScenarioOut(name=scenario.name, description=scenario.description, training=scenario.training,
                           created_at=scenario.created_at, active=self.adapters.actives.get(scenario.name),
                           model=lineage(scenario.name))

    # ------------------------------------------------------------ live canaries

    async def canary(self, scenario: str) -> CanaryOut:
        """`scenario`'s running canary with the test's numbers now, else its last one as it ended; 404
        when it never had one."""
        await self.scenario(scenario)
        found = await self.store.canaries.latest(scenario)
        if found is None:
            raise APIError(404, f"scenario {shown(scenario)} has had no live canary (R3_CANARY_FRACTION starts one "
                                "when the gate accepts a candidate)", type="not_found_error", param="scenario",
                           code="no_canary")
        numbers = ((await self.canary_watch.verdict(found)).numbers() if found.state == CanaryState.RUNNING
                   else found.numbers)
        return CanaryOut(scenario=scenario, version=found.version, baseline=found.baseline or "base",
                         fraction=found.fraction, state=found.state, started_at=found.started_at,
                         decided_at=found.decided_at, decided_by=found.decided_by,
                         decision=numbers.get("decision"), reason=found.reason or numbers.get("reason"),
                         comparisons=numbers.get("comparisons", []))

    async def end_canary(self, scenario: str, promote: bool) -> CanaryOut:
        """Promote or abort `scenario`'s running canary now, as the admin; 409 when none runs."""
        await self.scenario(scenario)
        running = next((c for c in await self.store.canaries.running() if c.scenario == scenario), None)
        if running is None:
            raise APIError(409, f"no canary runs in scenario {shown(scenario)}", type="conflict_error",
                           param="scenario")
        verdict = await self.canary_watch.verdict(running)
        numbers = verdict.numbers()
        # The audit log's reason carries the test's numbers then, as the test's own decisions do.
        said = f"the test said {verdict.decision.value}: {verdict.reason}"
        if promote:
            done = await self.store.canaries.promote(running.id, ACTOR, f"promoted by an admin; {said}", numbers)
        else:
            done = await self.store.canaries.end(running.id, CanaryState.ABORTED, ACTOR,
                                                 f"aborted by an admin; {said}", numbers)
        if not done:
            raise APIError(409, "the canary ended meanwhile (its test decided, or the current version changed)",
                           type="conflict_error", param="scenario")
        await self.adapters.sync()
        return await self.canary(scenario)

    # ------------------------------------------------------------ training rounds

    async def request_training(self, scenario: str = DEFAULT_SCENARIO) -> TrainingRequested:
        """Ask the trainer for a round of `scenario`; while one is requested or running, that one (`new` false)."""
        await self.scenario(scenario)
        asked, new = await self.rounds.request(ACTOR, scenario)
        return TrainingRequested(round=asked.id, scenario=scenario, status=asked.status, new=new,
                                 trainer=self.trainer())

    async def training_state(self, limit: int, scenario: str | None = None) -> TrainingState:
        """The latest `limit` rounds (of `scenario`, or of all), the one requested or running and the
        last one that ended."""
        if scenario is not None:
            await self.scenario(scenario)
        rounds = [_round_out(r) for r in await self.rounds.recent(limit, scenario)]
        return TrainingState(current=next((r for r in rounds if r.status in PENDING), None),
                             last=next((r for r in rounds if r.status in ENDED), None),
                             rounds=rounds, trainer=self.trainer())

    async def set_aside(self, limit: int) -> SetAsideList:
        """The episodes training rounds set aside (they cannot be run again as tasks), the latest first."""
        return SetAsideList(data=[
            SetAsideEpisodeOut(episode_id=e.episode_id, tenant=e.tenant, round=e.round_id, reason=e.reason, at=e.at)
            for e in await self.rounds.set_aside_episodes(limit)])


def _round_out(r: Round) -> TrainingRoundOut:
    return TrainingRoundOut(round=r.id, scenario=r.scenario, status=r.status, requested_by=r.requested_by, requested_at=r.requested_at,
                            started_at=r.started_at, finished_at=r.finished_at, candidate=r.candidate,
                            promoted=r.promoted, report=r.report, error=r.error, owner=r.owner,
                            heartbeat_at=r.heartbeat_at)
