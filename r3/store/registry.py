"""The adapter registry: every trained LoRA adapter as a version with a never-reused name, in the
lineage of its scenario.

A scenario (`r3.store.scenarios`) is a workload with its own lineage: versions `<scenario>-v1`,
`<scenario>-v2`, … (the `default` scenario's are `r3-v1`, … as before scenarios), its own active
version, rollbacks and audit entries. Everything below holds per scenario.

A version is born `pending` (its name is taken before its files are written), becomes `candidate`
once its files and their sha256 are in place, and then `active` (promoted) or `rejected` (the gate
said no); or `failed`, when its files could not be written or its round failed before deciding it
(its name is not reused either). Promotion retires the previous active version and activates the new one in one
transaction — a unique index allows one active row per scenario at most — and only after the commit is the
event published, so a crash anywhere leaves either the old version active or the new one, never
half of each. Servers learn of promotions from Redis pub/sub (`adapter_events`, the subscriber
beside the publisher) and, as a safety net, by polling.

The registry also keeps the admin audit log (`admin_actions`): every activation, and the actions that
change no version (`record_action`: a dashboard logout).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from r3.store.models import (
    DEFAULT_SCENARIO,
    AdapterVersion,
    AdminAction,
    Canary,
    CanaryState,
    Scenario,
    VersionStatus,
)

log = logging.getLogger(__name__)

ADAPTER_CHANNEL = "r3:adapters"
ANY_VERSION = object()  # `activate` whatever is active now
# The statuses of versions without whole files: never activated or served.
INCOMPLETE = (VersionStatus.PENDING, VersionStatus.FAILED)


DEFAULT_LINEAGE = "r3"  # the default scenario's versions are `r3-vN`, its model `r3`
_VERSION = re.compile(r"(?P<lineage>.+)[@-]v(?P<number>[1-9][0-9]{0,8})")


def lineage(scenario: str) -> str:
    """The prefix of `scenario`'s version names and the `model` clients name it by: the scenario's
    own name, except `r3` for the default scenario."""
    return DEFAULT_LINEAGE if scenario == DEFAULT_SCENARIO else scenario


def scenario_of_lineage(prefix: str) -> str:
    """The scenario whose lineage is `prefix` (`lineage`'s inverse)."""
    return DEFAULT_SCENARIO if prefix == DEFAULT_LINEAGE else prefix


def version_name(number: int, scenario: str = DEFAULT_SCENARIO) -> str:
    """Version `number` of `scenario`, as the registry and the engine name it: `r3-v3`, `sql-v2`."""
    return f"{lineage(scenario)}-v{number}"


def model_name(version: str) -> str:
    """The name clients give `version` as a request's `model`: `r3-v3` → `r3@v3`, `sql-v2` → `sql@v2`."""
    match = _VERSION.fullmatch(version)
    return f"{match['lineage']}@v{match['number']}" if match else version


def version_of(model: str) -> str | None:
    """The version a request's `model` pins (`r3@v3`, `sql@v2`, or the registry's own `r3-v3`), else
    None. Whether such a version exists is the registry's to say."""
    match = _VERSION.fullmatch(model)
    return f"{match['lineage']}-v{match['number']}" if match else None


def adapter_sha256(folder: Path) -> str:
    """One digest over every file of an adapter folder (names and contents), in a stable order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class Version:
    name: str
    scenario: str
    number: int
    parent: str | None
    status: VersionStatus
    path: Path
    sha256: str
    metrics: dict[str, Any]
    episodes_used: list[str]
    created_at: datetime
    promoted_at: datetime | None

    @classmethod
    def of(cls, row: AdapterVersion) -> Version:
        return cls(row.name, row.scenario, row.number, row.parent, VersionStatus(row.status), Path(row.path),
                   row.sha256, row.metrics, row.episodes_used, row.created_at, row.promoted_at)

    @property
    def servable(self) -> bool:
        """Whether its files are whole: a version still being written, or one that failed, is not."""
        return self.status not in INCOMPLETE


@dataclass(frozen=True)
class AdapterEvent:
    """What a promotion, rollback or roll-forward publishes: the version now active in a scenario
    (None: the base model)."""

    active: str | None
    sha256: str | None
    scenario: str = DEFAULT_SCENARIO

    @classmethod
    def of(cls, version: Version | None, scenario: str = DEFAULT_SCENARIO) -> AdapterEvent:
        return cls(version.name, version.sha256, version.scenario) if version is not None else cls(None, None, scenario)

    def to_json(self) -> str:
        return json.dumps({"active": self.active, "sha256": self.sha256, "scenario": self.scenario})

    @classmethod
    def parse(cls, data: bytes | str) -> AdapterEvent | None:
        """The event a message holds, or None if it is not one."""
        try:
            event = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(event, dict) or not all(isinstance(event.get(k), str | None) for k in ("active", "sha256")):
            return None
        scenario = event.get("scenario", DEFAULT_SCENARIO)
        return cls(event.get("active"), event.get("sha256"), scenario) if isinstance(scenario, str) else None


async def adapter_events(redis_url: str, retry_s: float) -> AsyncIterator[AdapterEvent]:
    """Every adapter event published on `ADAPTER_CHANNEL`, for as long as the caller iterates.

    Redis being down (or going down) ends nothing: it is logged once per outage and the subscription
    tried again every `retry_s`. Pub/sub keeps nothing for a subscriber that is away, so an event
    published meanwhile is lost: a server polls the database as well, and the events only make it
    faster. A message on the channel that is not an event is logged and skipped. Iterate it under
    `contextlib.aclosing`, so that its connection closes as soon as the caller stops.
    """
    down = False
    while True:
        client = redis.from_url(redis_url)
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(ADAPTER_CHANNEL)
                if down:
                    log.info("adapter events available again")
                    down = False
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    event = AdapterEvent.parse(message["data"])
                    if event is None:
                        log.warning("ignoring a message on %s that is not an adapter event: %.200r",
                                    ADAPTER_CHANNEL, message["data"])
                        continue
                    yield event
        except (RedisError, OSError) as error:
            if not down:
                log.warning("adapter events unavailable (%s); trying again every %ss", error, retry_s)
            down = True
        finally:
            await client.aclose()
        await asyncio.sleep(retry_s)  # also when the subscription ended without an error: never spin


class AdapterRegistry:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], adapters_dir: Path,
                 redis_url: str | None = None) -> None:
        self.sessions, self.adapters_dir = sessions, adapters_dir
        self.redis = redis.from_url(redis_url) if redis_url else None

    async def register(self, files: Path, parent: str | None, metrics: dict[str, Any],
                       episodes_used: list[str], scenario: str = DEFAULT_SCENARIO) -> Version:
        """Copy a trained adapter folder in as a new candidate version of `scenario`. When the copy fails
        (a full disk), the version is marked failed and its partial files removed before the error propagates."""
        row = await self._reserve_name(parent, metrics, episodes_used, scenario)
        target = Path(row.path)
        try:
            shutil.copytree(files, target)
            sha = adapter_sha256(target)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            async with self.sessions.begin() as session:
                await session.execute(update(AdapterVersion).where(AdapterVersion.name == row.name)
                                      .values(status=VersionStatus.FAILED))
            raise
        async with self.sessions.begin() as session:
            await session.execute(update(AdapterVersion).where(AdapterVersion.name == row.name)
                                  .values(status=VersionStatus.CANDIDATE, sha256=sha))
        return await self.get(row.name)

    async def _reserve_name(self, parent: str | None, metrics: dict[str, Any], episodes_used: list[str],
                            scenario: str = DEFAULT_SCENARIO) -> AdapterVersion:
        while True:  # two trainers racing for a number: the unique index picks one, the other retries
            async with self.sessions() as session:
                number = (await session.scalar(select(func.max(AdapterVersion.number))
                                               .where(AdapterVersion.scenario == scenario)) or 0) + 1
                name = version_name(number, scenario)
                row = AdapterVersion(name=name, scenario=scenario, number=number, parent=parent,
                                     status=VersionStatus.PENDING,
                                     path=str(self.adapters_dir / name), sha256="", metrics=metrics,
                                     episodes_used=episodes_used, created_at=datetime.now(UTC))
                session.add(row)
                try:
                    await session.commit()
                    return row
                except IntegrityError:
                    await session.rollback()

    async def get(self, name: str) -> Version | None:
        async with self.sessions() as session:
            row = await session.get(AdapterVersion, name)
            return Version.of(row) if row is not None else None

    async def active(self, scenario: str = DEFAULT_SCENARIO) -> Version | None:
        """`scenario`'s active version (None: it serves the base model)."""
        async with self.sessions() as session:
            row = await session.scalar(select(AdapterVersion).where(AdapterVersion.status == VersionStatus.ACTIVE,
                                                                    AdapterVersion.scenario == scenario))
            return Version.of(row) if row is not None else None

    async def actives(self) -> dict[str, Version]:
        """Every scenario's active version, by scenario (a scenario serving the base model is absent)."""
        async with self.sessions() as session:
            rows = await session.scalars(select(AdapterVersion).where(AdapterVersion.status == VersionStatus.ACTIVE))
            return {row.scenario: Version.of(row) for row in rows}

    async def running_canaries(self) -> dict[str, tuple[Version, float]]:
        """Each scenario's running live canary (`r3.store.canaries`): its version and traffic share."""
        async with self.sessions() as session:
            rows = await session.execute(select(AdapterVersion, Canary.fraction)
                                         .join(Canary, Canary.version == AdapterVersion.name)
                                         .where(Canary.state == CanaryState.RUNNING))
            return {version.scenario: (Version.of(version), fraction) for version, fraction in rows.all()}

    async def scenario_names(self) -> list[str]:
        """Every scenario's name (`r3.store.scenarios`): the lineages a server serves."""
        async with self.sessions() as session:
            return list(await session.scalars(select(Scenario.name).order_by(Scenario.name)))

    async def versions(self, scenario: str | None = DEFAULT_SCENARIO) -> list[Version]:
        """`scenario`'s versions, oldest first (None: every scenario's)."""
        query = select(AdapterVersion).order_by(AdapterVersion.scenario, AdapterVersion.number)
        if scenario is not None:
            query = query.where(AdapterVersion.scenario == scenario)
        async with self.sessions() as session:
            return [Version.of(row) for row in await session.scalars(query)]

    async def record_decision(self, name: str, metrics: dict[str, Any], promote: bool, activate: bool = True) -> Version:
        """The gate's verdict on a candidate: its numbers, then active (promoted) or rejected. With
        `activate` false a promoted candidate stays a candidate (its live canary decides:
        `r3.store.canaries.Canaries.start`)."""
        async with self.sessions.begin() as session:
            row = await session.get(AdapterVersion, name)
            row.metrics = {**row.metrics, **metrics}
            if not promote:
                row.status = VersionStatus.REJECTED
        if promote and activate:
            await self.activate(name, actor="trainer", reason="passed the evaluation gate")
        return await self.get(name)

    async def activate(self, name: str | None, actor: str, reason: str | None = None,
                       expected_active: str | None | object = ANY_VERSION, scenario: str | None = None) -> bool:
        """Make a version the active one of its scenario (promotion, rollback, roll-forward; None: the
        base model, in `scenario`, default the default scenario).

        One transaction retires the scenario's old version, activates the new one and records who did
        it; the event is published after the commit. With `expected_active`, nothing happens unless
        that is still the scenario's active version (two replicas rolling back at once act once).
        Returns whether the change was made. Raises `LookupError` for a version that is not whole, or
        not of `scenario` when both are given.
        """
        async with self.sessions.begin() as session:
            target = await session.get(AdapterVersion, name) if name is not None else None
            if name is not None and (target is None or target.status in INCOMPLETE
                                     or scenario not in (None, target.scenario)):
                raise LookupError(f"no complete adapter version named {name!r}"
                                  + (f" in scenario {scenario!r}" if scenario else ""))
            scenario = target.scenario if target is not None else scenario or DEFAULT_SCENARIO
            current = await session.scalar(select(AdapterVersion.name).where(
                AdapterVersion.status == VersionStatus.ACTIVE, AdapterVersion.scenario == scenario))
            if expected_active is not ANY_VERSION and current != expected_active:
                return False
            await session.execute(update(AdapterVersion).where(AdapterVersion.status == VersionStatus.ACTIVE,
                                                               AdapterVersion.scenario == scenario)
                                  .values(status=VersionStatus.RETIRED))
            await session.flush()  # the unique "one active" index must see the old row retired first
            if target is not None:
                target.status = VersionStatus.ACTIVE
                target.promoted_at = datetime.now(UTC)
            session.add(AdminAction(at=datetime.now(UTC), actor=actor, scenario=scenario, action="activate",
                                    from_version=current, to_version=name, reason=reason))
        await self.publish(await self.get(name) if name is not None else None, scenario)
        return True

    async def actions(self, limit: int = 100, scenario: str | None = None,
                      unscoped: bool = False) -> list[AdminAction]:
        """The latest audit entries, newest first; with `scenario`, that scenario's only, and with
        `unscoped` too the entries of no scenario (a dashboard logout)."""
        query = select(AdminAction).order_by(AdminAction.id.desc()).limit(limit)
        if scenario is not None:
            mine = AdminAction.scenario == scenario
            query = query.where(or_(mine, AdminAction.scenario.is_(None)) if unscoped else mine)
        async with self.sessions() as session:
            return list(await session.scalars(query))

    async def record_action(self, actor: str, action: str, reason: str | None = None,
                            scenario: str | None = None) -> None:
        """Add an action that changes no version to the audit log (now), e.g. a dashboard logout."""
        async with self.sessions.begin() as session:
            session.add(AdminAction(at=datetime.now(UTC), actor=actor, scenario=scenario, action=action,
                                    reason=reason))

    async def last_action_at(self, action: str) -> datetime | None:
        """When `action` was last recorded in the audit log (aware, UTC), or None if never."""
        async with self.sessions() as session:
            at = await session.scalar(select(AdminAction.at).where(AdminAction.action == action)
                                      .order_by(AdminAction.at.desc()).limit(1))
        if at is None:
            return None
        return at if at.tzinfo else at.replace(tzinfo=UTC)  # SQLite gives back naive UTC

    async def publish(self, version: Version | None, scenario: str = DEFAULT_SCENARIO) -> None:
        if self.redis is None:
            return
        try:
            await self.redis.publish(ADAPTER_CHANNEL, AdapterEvent.of(version, scenario).to_json())
        except (RedisError, OSError):
            pass  # servers poll the database as well; the event only makes them faster

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
