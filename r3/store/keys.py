"""API keys: created once and shown once; only their sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime

from sqlalchemy import select
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


async def create_key(sessions: async_sessionmaker[AsyncSession], name: str) -> tuple[str, str]:
    """A new key for `name`: returns (tenant id, key). The key cannot be recovered later.

    Raises `KeyNameTaken` when a key that is not revoked already has `name`."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    tenant = f"key-{secrets.token_hex(8)}"
    async with sessions.begin() as session:
        taken = await session.scalar(select(ApiKey.id).where(ApiKey.name == name, ApiKey.revoked_at.is_(None)))
        if taken is not None:
            raise KeyNameTaken(f"a key named {name!r} exists already (tenant {taken}); choose another name")
        session.add(ApiKey(id=tenant, name=name, key_hash=key_hash(key), created_at=datetime.now(UTC)))
    return tenant, key


async def tenant_of(sessions: async_sessionmaker[AsyncSession], key: str) -> str | None:
    """The tenant a database key belongs to, or None if it is unknown or revoked."""
    async with sessions() as session:
        row = await session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash(key)))
    return row.id if row is not None and row.revoked_at is None else None


async def any_keys(sessions: async_sessionmaker[AsyncSession]) -> bool:
    async with sessions() as session:
        return await session.scalar(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)) is not None
