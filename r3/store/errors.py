"""The database's failures, by names the layers above the store catch them by (they import no SQLAlchemy).

`StoreError` is any failure the database reports; `UNAVAILABLE` those of a database that is down or
unreachable (refused or dropped connections), which a caller answers with "try again later" rather
than as a bug.
"""

from __future__ import annotations

from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError

StoreError = SQLAlchemyError
UNAVAILABLE: tuple[type[StoreError], ...] = (OperationalError, InterfaceError, DisconnectionError)

__all__ = ["UNAVAILABLE", "StoreError"]
