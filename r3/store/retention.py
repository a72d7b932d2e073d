"""Episode retention: with `R3_EPISODE_RETENTION_DAYS` set, episodes older than that are deleted, in
batches, except those training, the gate, a live canary or an admin still need. Off by default.

Kept whatever their age (`kept`):
- every episode a committed training round used (`trained_in` set): trained on in a version (the
  ids its `episodes_used` lists), held out for the gate (`rounds.HELD_OUT`), or trained on in a
  round whose rollouts carried no signal (`rounds.NO_SIGNAL`);
- every episode a round set aside (`set_aside_episodes`), for an admin to look at;
- the episodes a scenario's running canary counts: its scenario's, since the canary started;
- per scenario, the pools its next round draws from, so that pruning never shrinks them: its
  `HELD_OUT_POOL` newest replayable first-attempt failures (the gate's held-out set is drawn from
  them), its 4 × R3_TRAIN_MAX_FAILURES newest of those not yet trained on (what it trains on), and
  its 4 × R3_GATE_REGRESSION_SIZE newest replayable first-attempt passes (the gate's retained set),
  with the scenario's own overrides of those settings.
Nothing outside `episodes` and their `attempts` is touched: the audit log (`admin_actions`),
versions, rounds and their reports stay. The rollups lose what the deleted episodes added, so the
dashboard and `/admin/stats` count the episodes still stored, as a query over them would.

Each batch is one short transaction: it picks at most `batch` of the oldest prunable episodes
(`FOR UPDATE SKIP LOCKED`: a row a writer holds is left for the next run rather than waited on),
deletes them with their attempts and takes their numbers off the rollups. Episode ids are random
(uuid4), so batches follow `(created_at, id)`, the order of the `episodes_created` index, from
where the last one stopped. On Postgres nothing locks the table, so writers go on inserting while
a prune runs; the embedded SQLite has one writer at a time, and each batch holds it briefly.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, and_, delete, exists, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from r3.settings import Settings
from r3.store import rollups
from r3.store.models import AttemptRow, Canary, CanaryState, EpisodeRow, SetAsideEpisode
from r3.store.scenarios import ScenarioError, ScenarioInfo, scenario_settings
from r3.store.store import Store

log = logging.getLogger(__name__)

HELD_OUT_POOL = 2000  # the newest failures a round draws its held-out set from (trainer: `rounds.failures(2000)`)
BATCH = 1000  # episodes deleted per transaction
EVERY_S = 3600.0  # how often a server prunes


@dataclass(frozen=True)
class Pools:
    """How many of a scenario's newest episodes of each kind its next round may draw on."""

    failures: int  # replayable first-attempt failures (the held-out set's pool)
    untrained: int  # of those, not yet used by a round (the training pool)
    passes: int  # replayable first-attempt passes (the retained set's pool)

    @classmethod
    def of(cls, settings: Settings) -> Pools:
        """As the trainer's round reads them (`trainer.worker`), with `settings` a scenario's."""
        return cls(HELD_OUT_POOL, 4 * settings.train_max_failures, 4 * settings.gate_regression_size)


def _replayable(scenario: str, first_success: bool) -> ColumnElement[bool]:
    """A scenario's episodes a round can run again with this first verdict (null-safe: NULL is false)."""
    return and_(EpisodeRow.scenario == scenario, EpisodeRow.replayable, EpisodeRow.store_text,
                EpisodeRow.first_success.is_(first_success))


async def _newest(session: AsyncSession, kind: ColumnElement[bool], count: int) -> ColumnElement[bool] | None:
    """`kind`'s `count` newest episodes (and any created at the same moment as the last), as a
    condition; None when `count` is 0."""
    if count <= 0:
        return None
    oldest = await session.scalar(select(EpisodeRow.created_at).where(kind)
                                  .order_by(EpisodeRow.created_at.desc()).offset(count - 1).limit(1))
    return kind if oldest is None else and_(kind, EpisodeRow.created_at >= oldest)


async def kept(sessions: async_sessionmaker[AsyncSession], pools: dict[str, Pools]) -> ColumnElement[bool]:
    """The condition an episode that must be kept meets (the module's list), `pools` giving each
    scenario's (a scenario not in it has none). Null-safe: true or false for every episode."""
    canary = exists().where(Canary.state == CanaryState.RUNNING, Canary.scenario == EpisodeRow.scenario,
                            Canary.started_at <= EpisodeRow.created_at)
    conditions = [EpisodeRow.trained_in.is_not(None), exists().where(SetAsideEpisode.episode_id == EpisodeRow.id),
                  canary]
    async with sessions() as session:
        for scenario, pool in sorted(pools.items()):
            failures = _replayable(scenario, False)
            for kind, count in ((failures, pool.failures), (and_(failures, EpisodeRow.trained_in.is_(None)),
                                                            pool.untrained),
                                (_replayable(scenario, True), pool.passes)):
                if (newest := await _newest(session, kind, count)) is not None:
                    conditions.append(newest)
    return or_(*conditions)


async def prune(sessions: async_sessionmaker[AsyncSession], older_than: datetime, keep: ColumnElement[bool],
                batch: int = BATCH) -> int:
    """Delete the episodes created before `older_than` that `keep` does not hold, `batch` at a time,
    each batch in a transaction of its own; returns how many were deleted."""
    deleted, last = 0, None
    while True:
        query = (select(EpisodeRow.id, EpisodeRow.created_at).where(EpisodeRow.created_at < older_than, ~keep)
                 .order_by(EpisodeRow.created_at, EpisodeRow.id).limit(batch).with_for_update(skip_locked=True))
        if last is not None:
            query = query.where(tuple_(EpisodeRow.created_at, EpisodeRow.id) > tuple_(*last))
        async with sessions.begin() as session:
            connection = await session.connection()
            rows = (await connection.execute(query)).all()
            ids = [row.id for row in rows]
            if ids:
                before = await rollups.tally(connection, ids)
                await connection.execute(delete(AttemptRow).where(AttemptRow.episode_id.in_(ids)))
                await connection.execute(delete(EpisodeRow).where(EpisodeRow.id.in_(ids)))
                await rollups.apply(connection, before, {})
        deleted += len(ids)
        if len(rows) < batch:
            return deleted
        last = (rows[-1].created_at, rows[-1].id)
        await asyncio.sleep(0)  # let the server's other work in between batches


def scenario_pools(settings: Settings, scenarios: list[ScenarioInfo]) -> dict[str, Pools]:
    """Each scenario's pools under its own training settings (the global ones where its overrides no
    longer validate: the trainer would refuse them too)."""
    pools = {}
    for scenario in scenarios:
        try:
            pools[scenario.name] = Pools.of(scenario_settings(settings, scenario.training))
        except ScenarioError:
            pools[scenario.name] = Pools.of(settings)
    return pools


@dataclass
class EpisodeRetention:
    """A server's periodic prune: at its start, then every `every_s` seconds."""

    store: Store
    settings: Settings
    every_s: float = EVERY_S

    async def run_once(self) -> int:
        """Prune episodes older than R3_EPISODE_RETENTION_DAYS now; returns how many were deleted."""
        sessions = self.store.database.sessions
        older_than = datetime.now(UTC) - timedelta(days=self.settings.episode_retention_days)
        keep = await kept(sessions, scenario_pools(self.settings, await self.store.scenarios.list_all()))
        deleted = await prune(sessions, older_than, keep)
        if deleted:
            log.info("retention: deleted %d episodes created before %s", deleted, older_than.isoformat())
        return deleted

    async def run_forever(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # noqa: BLE001 - the next run tries again
                log.exception("pruning old episodes failed")
            await asyncio.sleep(self.every_s)
