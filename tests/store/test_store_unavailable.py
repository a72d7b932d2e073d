"""Every way a database can be unavailable is one error, `DatabaseUnavailable`, whichever call meets it;
and a journal whose disk is full says so before anything relies on it, loses no line, and recovers.

Real conditions only: a Postgres database altered to refuse connections, a role over its connection
limit, a port nobody listens on, and a real tmpfs filled to the last byte (root only; skipped otherwise)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_support import query, run, run_in_thread

from r3.store import database
from r3.store.errors import DatabaseUnavailable, JournalUnavailable
from r3.store.journal import Journal
from r3.store.keys import ApiKeys
from r3.store.live_stats import version_stats
from r3.store.sql import SqlEpisodeStore

pytestmark = pytest.mark.services  # the suite's tiers: tests/conftest.py

# ---------------------------------------------------------------------------------------------- database


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def refuse_connections(url: str, refuse: bool) -> None:
    """`ALTER DATABASE … ALLOW_CONNECTIONS` on the shared server, and (refusing) end the open sessions:
    new connections get SQLSTATE 55000, open ones are gone."""
    name = database_name(url)
    admin = url.rsplit("/", 1)[0] + "/test"
    query(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(not refuse).lower()}')
    if refuse:
        query(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)


async def reads(url: str) -> list[BaseException | None]:
    """An episode read, the live stats and an API-key check, each on its own pooled engine that held a
    working connection before: what each raised (None: it worked)."""
    engine = database.create_engine(url)
    sessions = database.sessions(engine)
    try:
        outcomes: list[BaseException | None] = []
        for call in (lambda: SqlEpisodeStore(sessions).get("no-such-episode", None),
                     lambda: version_stats(sessions), lambda: ApiKeys(sessions).tenant_of("r3-some-key")):
            try:
                await call()
                outcomes.append(None)
            except Exception as error:  # noqa: BLE001 - what was raised is what the test checks
                outcomes.append(error)
        return outcomes
    finally:
        await engine.dispose()


def test_a_database_that_refuses_connections_is_unavailable_to_every_read(fresh_pg_url: str) -> None:
    run_in_thread(database.migrate, fresh_pg_url)
    assert run(lambda: reads(fresh_pg_url)) == [None, None, None]
    refuse_connections(fresh_pg_url, True)
    try:
        refused = run(lambda: reads(fresh_pg_url))
        assert all(isinstance(error, DatabaseUnavailable) for error in refused), refused
        assert {error.orig.sqlstate for error in refused} == {"55000"}  # object_not_in_prerequisite_state
    finally:
        refuse_connections(fresh_pg_url, False)
    assert run(lambda: reads(fresh_pg_url)) == [None, None, None]  # back by itself


def test_too_many_connections_and_no_server_are_unavailable_too(fresh_pg_url: str) -> None:
    run_in_thread(database.migrate, fresh_pg_url)
    role = f"limited_{database_name(fresh_pg_url)}"
    query(fresh_pg_url, f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 0')
    try:
        over_limit = run(lambda: reads(fresh_pg_url.replace("postgres@", f"{role}@")))
        assert all(isinstance(error, DatabaseUnavailable) for error in over_limit), over_limit
        assert {error.orig.sqlstate for error in over_limit} == {"53300"}  # too_many_connections
    finally:
        query(fresh_pg_url, f'DROP ROLE "{role}"')
    nobody = run(lambda: reads("postgresql+asyncpg://postgres@127.0.0.1:9/none"))  # refused: the OS's error
    assert all(isinstance(error, DatabaseUnavailable) for error in nobody), nobody


async def test_a_sqlite_file_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    engine = database.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'r3.db'}")
    try:
        with pytest.raises(DatabaseUnavailable):
            await version_stats(database.sessions(engine))
    finally:
        await engine.dispose()


# ---------------------------------------------------------------------------------------------- journal


def small_tmpfs(folder: Path) -> Iterator[Path]:
    """`folder` (made) with a 256 KiB tmpfs mounted on it, unmounted afterwards; skips without root."""
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                      capture_output=True, check=False).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from small_tmpfs(tmp_path / "disk")


def fill(disk: Path) -> Path:
    """Write a file until the disk refuses another byte; returns it."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as file:
        try:
            while True:
                file.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def test_a_full_journal_disk_is_reported_and_refuses_without_a_partial_line(small_disk: Path) -> None:
    journal = Journal(small_disk / "journal")
    try:
        journal.append({"id": "before", "text": "fits"})
        assert journal.problem() is None
        filler = fill(small_disk)
        size = journal.current.path.stat().st_size

        # Larger than what is left of the segment's last page: part of it would be written.
        with pytest.raises(JournalUnavailable, match="No space left on device"):
            journal.append({"id": "refused", "text": "x" * 20_000})
        assert journal.current.path.stat().st_size == size  # no partial line left behind
        assert "No space left on device" in journal.problem()

        filler.unlink()  # space returns
        assert journal.problem() is None
        journal.append({"id": "after", "text": "fits again"})
        records, unreadable = Journal.read(journal.current)
        assert [r["id"] for r in records] == ["before", "after"] and unreadable == []
    finally:
        journal.close()


def test_a_journal_disk_below_its_reserve_is_reported_before_any_write_fails(small_disk: Path) -> None:
    journal = Journal(small_disk / "journal", reserve_bytes=128 * 1024)
    try:
        assert journal.problem() is None
        filler = small_disk / "filler"
        filler.write_bytes(b"\0" * (160 * 1024))  # leaves less than the reserve, but room to write
        problem = journal.problem()
        assert problem is not None and "R3_JOURNAL_RESERVE_BYTES" in problem
        os.unlink(filler)
        assert journal.problem() is None
    finally:
        journal.close()
