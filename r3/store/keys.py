"""API keys: created once and shown once; only their sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from r3.store.models import ApiKey

KEY_PREFIX = "r3-"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def tenant_of_configured_key(key: str) -> str:
    """The tenant id of a key given in `R3_API_KEYS` (not in the database): derived, stable."""
    return f"env-{key_hash(key)[:16]}"


class KeyNameTaken(ValueError):
    """A live key already has this name: a second would make two tenants nobody can tell apart."""


@dataclass(frozen=True)
class KeyInfo:
    """A database key as `r3 keys list` shows it (the key itself is never kept)."""

    tenant: str
    name: str
    created_at: datetime
    revoked_at: datetime | None
    default_scenario: str | None = None  # what `model: "r3"` means for this key's requests (None: `default`)


class ApiKeys:
    """The API keys in the database (`Store.keys`); `sessions`: the store's session factory."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def create(self, name: str) -> tuple[str, str]:
        """A new key for `name`: returns (tenant id, key). The key cannot be recovered later.

        Raises `KeyNameTaken` when a key that is not revoked already has `name`."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        tenant = f"key-{secrets.token_hex(8)}"
        async with self.sessions.begin() as session:
            taken = await session.scalar(select(ApiKey.id).where(ApiKey.name == name, ApiKey.revoked_at.is_(None)))
            if taken is not None:
                raise KeyNameTaken(f"a key named {name!r} exists already (tenant {taken}); choose another name")
            session.add(ApiKey(id=tenant, name=name, key_hash=key_hash(key), created_at=datetime.now(UTC)))
        return tenant, key

    async def tenant_of(self, key: str) -> str | None:
        """The tenant a database key belongs to, or None if it is unknown or revoked."""
        found = await self.caller(key)
        return found.tenant if found is not None else None

    async def caller(self, key: str) -> KeyInfo | None:
        """The live database key `key` is (its tenant and default scenario), or None if it is unknown
        or revoked."""
        async with self.sessions() as session:
            row = await session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash(key)))
        return _info(row) if row is not None and row.revoked_at is None else None

    async def set_default_scenario(self, name_or_tenant: str, scenario: str | None) -> KeyInfo:
        """Make `scenario` (None: `default`) what `model: "r3"` means for the live key with this name
        or tenant. Raises `LookupError` when no live key has it; the database refuses a scenario that
        does not exist (an `IntegrityError`: check it first)."""
        async with self.sessions.begin() as session:
            row = await session.scalar(select(ApiKey).where(
                or_(ApiKey.name == name_or_tenant, ApiKey.id == name_or_tenant), ApiKey.revoked_at.is_(None)))
            if row is None:
                raise LookupError(f"no live key is named {name_or_tenant!r} or has that tenant id")
            row.default_scenario = scenario
            return _info(row)

    async def any_created(self) -> bool:
        """Whether a key was ever created, revoked ones included: a server that had keys stays closed."""
        async with self.sessions() as session:
            return await session.scalar(select(ApiKey.id).limit(1)) is not None

    async def list_all(self) -> list[KeyInfo]:
        """Every key ever created, oldest first, revoked ones included."""
        async with self.sessions() as session:
            rows = await session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id))
            return [_info(row) for row in rows]

    async def revoke(self, name_or_tenant: str) -> KeyInfo:
        """Revoke the live key with this name (or tenant id); servers refuse it from their next request.
        Raises `LookupError` when no live key has that name or tenant."""
        async with self.sessions.begin() as session:
            row = await session.scalar(select(ApiKey).where(
                or_(ApiKey.name == name_or_tenant, ApiKey.id == name_or_tenant), ApiKey.revoked_at.is_(None)))
            if row is None:
                raise LookupError(f"no live key is named {name_or_tenant!r} or has that tenant id; `r3 keys list` "
                                  "shows them")
            row.revoked_at = datetime.now(UTC)
            return _info(row)


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(row.id, row.name, row.created_at, row.revoked_at, row.default_scenario)
