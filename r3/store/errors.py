"""The store's failures, by names the layers above it catch them by (they import no SQLAlchemy).

`DatabaseUnavailable` is the database failure a caller answers with "try again later" rather than
as a bug: the database is down, unreachable, refusing connections or out of resources. Every engine `r3.store.database.create_engine` makes raises it
for all of these (`install_translation`), whichever driver or code path met the condition, so the
classification below is the only one. `JournalUnavailable`: the local journal cannot be written.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

# SQLSTATE classes of a database that cannot serve now, whatever was asked: connection exception (08),
# transaction rollback (40: a deadlock or serialization failure, retried), insufficient resources
# (53: too many connections, disk full, out of memory), object not in prerequisite state (55: a
# database that does not accept connections, `ALLOW_CONNECTIONS false`; a lock not available),
# operator intervention (57: shutting down, starting up, a dropped database, a cancelled statement)
# and system error (58: I/O). Source: PostgreSQL, "Appendix A. PostgreSQL Error Codes".
UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58"})


class DatabaseUnavailable(OperationalError):
    """The database cannot serve now (down, unreachable, refusing connections, out of resources);
    `orig` holds the driver's (or the operating system's) error. Try again later."""


class JournalUnavailable(OSError):
    """The local journal cannot be written (disk full, read-only, gone): no episode can be recorded,
    so no request that records one should start. Try again later."""


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE (Postgres' five-character error code) a SQLAlchemy error carries, if any."""
    original = getattr(error, "orig", None)
    state = getattr(original, "sqlstate", None) or getattr(getattr(original, "__cause__", None), "sqlstate", None)
    return state.upper() if isinstance(state, str) and state else None


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` means the database cannot serve now, rather than a fault of the statement or its rows.

    With a SQLSTATE (Postgres), its class decides (`UNAVAILABLE_SQLSTATE_CLASSES`). Without one,
    SQLAlchemy's operational and interface errors (SQLite's "database is locked", a lost connection)
    are, as are the operating system's (a refused connection, an unknown host, a timeout).
    """
    if isinstance(error, DatabaseUnavailable):
        return True
    if isinstance(error, DBAPIError):
        state = sqlstate(error)
        if state is not None:
            return state[:2] in UNAVAILABLE_SQLSTATE_CLASSES
        return isinstance(error, OperationalError | InterfaceError)
    return isinstance(error, DisconnectionError | OSError | TimeoutError)


def install_translation(engine: AsyncEngine) -> None:
    """Make `engine` raise `DatabaseUnavailable` for every failure `is_unavailable` says is one: a
    driver's error while connecting or running a statement (SQLAlchemy's `handle_error`), and the
    operating system's while connecting, which no driver wraps (`do_connect`)."""

    @event.listens_for(engine.sync_engine, "handle_error")
    def translate(context: ExceptionContext) -> DatabaseUnavailable | None:
        error = context.sqlalchemy_exception or context.original_exception
        if isinstance(error, DatabaseUnavailable) or not is_unavailable(error):
            return None
        # A lost or refused connection is dropped from the pool; a deadlock or a lock timeout is not.
        state = sqlstate(error)
        context.is_disconnect = context.is_disconnect or state is None or state[:2] in {"08", "57"}
        return _unavailable(context.original_exception, context.is_disconnect)

    @event.listens_for(engine.sync_engine, "do_connect")
    def connect(dialect: Any, _record: Any, cargs: tuple, cparams: dict) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except (OSError, TimeoutError) as error:  # refused, unknown host, timed out: not a driver error
            raise _unavailable(error, True) from error


def _unavailable(original: BaseException, invalidated: bool) -> DatabaseUnavailable:
    # No statement or parameters: those hold episodes' text, which must not reach a log or a response.
    return DatabaseUnavailable(None, None, original, connection_invalidated=invalidated)  # type: ignore[arg-type]


__all__ = ["DatabaseUnavailable", "JournalUnavailable", "install_translation", "is_unavailable", "sqlstate"]
