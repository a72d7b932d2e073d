"""Scenarios: the workloads one server serves, each with its own adapter lineage (`r3.store.registry`).

A scenario has a name, a description and training overrides: settings of the trainer, the gate and
the live canary (`R3_TRAIN_*`, `R3_GATE_*`, `R3_CANARY_*`, by their field names, e.g.
`{"train_num_generations": 8}`) that replace the global ones for its rounds and canaries
(`scenario_settings`). The auto-rollback watches every scenario with
the global `R3_AUTO_ROLLBACK_*`.
The scenario `default` always exists: it is the lineage every server had before scenarios.

Scenarios are created by the admin (`POST /admin/scenarios`, `r3 scenarios create`), never by a
request: a `model` naming no scenario is an unknown model, not a new lineage made by a typo.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from r3.settings import Settings
from r3.store.models import DEFAULT_SCENARIO, Scenario

MAX_NAME_CHARS = 40
_NAME = re.compile(r"[a-z][a-z0-9_]*(?:-[a-z0-9_]+)*")
_LOOKS_LIKE_A_VERSION = re.compile(r".*-v[0-9]+")
RESERVED_NAMES = frozenset({"r3", "base"})  # models every server answers to
TRAINING_PREFIXES = ("train_", "gate_", "canary_")


class ScenarioError(ValueError):
    """A scenario name or training override that cannot be used; the message says why, `param` which
    field is at fault (`name` or `training`)."""

    def __init__(self, message: str, param: str = "name") -> None:
        super().__init__(message)
        self.param = param


class ScenarioExists(ScenarioError):
    """A scenario of this name exists already."""


def check_name(name: str) -> None:
    """Raise `ScenarioError` unless `name` can name a scenario: lowercase letters, digits, `_` and
    inner `-`, starting with a letter, at most `MAX_NAME_CHARS`; not `r3` or `base`; not ending in
    `-v<number>` (which would read as a version of another scenario)."""
    if len(name) > MAX_NAME_CHARS or not _NAME.fullmatch(name):
        raise ScenarioError(f"a scenario name is 1 to {MAX_NAME_CHARS} lowercase letters, digits, '_' and inner '-', "
                            f"starting with a letter; not {name[:60]!r}")
    if name in RESERVED_NAMES:
        raise ScenarioError(f"{name!r} is a model every server answers to; choose another scenario name")
    if _LOOKS_LIKE_A_VERSION.fullmatch(name):
        raise ScenarioError(f"{name!r} ends like a version name (-v<number>); choose another scenario name")


def scenario_settings(settings: Settings, training: dict[str, Any]) -> Settings:
    """`settings` with a scenario's training overrides in place, validated as the settings are.
    Raises `ScenarioError` for a key that is not a training, gate or auto-rollback setting, or a value
    the setting refuses."""
    for key in training:
        if not key.startswith(TRAINING_PREFIXES) or key not in Settings.model_fields:
            raise ScenarioError(f"{key!r} is not a training setting a scenario may override "
                                f"(the R3_TRAIN_*, R3_GATE_* and R3_CANARY_* settings, by field name)",
                                "training")
    try:
        return type(settings).model_validate({**settings.model_dump(), **training})
    except ValidationError as error:
        first = error.errors()[0]
        raise ScenarioError(f"{'.'.join(map(str, first['loc'])) or 'training'}: {first['msg']}", "training") from None


@dataclass(frozen=True)
class ScenarioInfo:
    name: str
    description: str
    training: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, row: Scenario) -> ScenarioInfo:
        return cls(row.name, row.description, dict(row.training), row.created_at)


class Scenarios:
    """The scenarios in the database (`Store.scenarios`); `sessions`: the store's session factory."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def create(self, name: str, description: str = "", training: dict[str, Any] | None = None,
                     settings: Settings | None = None) -> ScenarioInfo:
        """A new scenario. Raises `ScenarioError` for a bad name or override (checked against
        `settings` when given), `ScenarioExists` when the name is taken."""
        check_name(name)
        training = dict(training or {})
        scenario_settings(settings or Settings(), training)
        row = Scenario(name=name, description=description, training=training, created_at=datetime.now(UTC))
        try:
            async with self.sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            raise ScenarioExists(f"a scenario named {name!r} exists already") from None
        return ScenarioInfo.of(row)

    async def get(self, name: str) -> ScenarioInfo | None:
        async with self.sessions() as session:
            row = await session.get(Scenario, name)
            return ScenarioInfo.of(row) if row is not None else None

    async def list_all(self) -> list[ScenarioInfo]:
        """Every scenario, `default` first, then by name."""
        async with self.sessions() as session:
            rows = list(await session.scalars(select(Scenario).order_by(Scenario.name)))
        return sorted((ScenarioInfo.of(row) for row in rows), key=lambda s: (s.name != DEFAULT_SCENARIO, s.name))

    async def configure(self, name: str, training: dict[str, Any], description: str | None = None,
                        settings: Settings | None = None) -> ScenarioInfo:
        """Replace a scenario's training overrides (and description, if given). Raises `LookupError`
        for an unknown scenario, `ScenarioError` for a bad override."""
        scenario_settings(settings or Settings(), training)
        async with self.sessions.begin() as session:
            row = await session.get(Scenario, name)
            if row is None:
                raise LookupError(f"no scenario named {name!r}")
            row.training = dict(training)
            if description is not None:
                row.description = description
            return ScenarioInfo.of(row)
