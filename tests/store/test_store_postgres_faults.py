"""Postgres crashes under load, and the server is killed while episodes exist only in its journal.

A private Postgres cluster (crashed with `pg_ctl stop -m immediate`), a private Redis, and one
`r3 serve` process that the last test kills with SIGKILL and starts again on the same data dir.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from store_support import (
    PrivatePostgres,
    PrivateRedis,
    R3Process,
    RequestStream,
    journal_records,
    query,
    wait_for,
)

pytestmark = pytest.mark.slow

API_KEY = "r3-test-key-postgres-faults"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("r3-pg-faults")


@pytest.fixture(scope="module")
def server(private_postgres: PrivatePostgres, private_redis: PrivateRedis, r3_process, data_dir) -> R3Process:
    # With a configured key, authenticating a request needs no database (open mode asks the
    # database whether keys exist: see test_open_mode_serves_while_the_database_is_down).
    process = r3_process(data_dir, R3_DATABASE_URL=private_postgres.url, R3_REDIS_URL=private_redis.url,
                         R3_API_KEYS=f'["{API_KEY}"]')
    process.start()
    yield process
    process.close()


def stored_ids(url: str, ids: list[str]) -> set[str]:
    return {r["id"] for r in query(url, "SELECT id FROM episodes WHERE id = ANY($1)", ids)}


def check_stored_once(postgres: PrivatePostgres, redis_server: PrivateRedis, sent: list[str]) -> None:
    """Every sent episode is in Postgres with its one attempt, and on the stream exactly once."""
    assert len(set(sent)) == len(sent)
    wait_for(lambda: len(stored_ids(postgres.url, sent)) == len(sent), 60, "every episode in Postgres")
    rows = query(postgres.url, "SELECT e.id, e.attempt_count, count(a.number) AS attempts FROM episodes e "
                               "JOIN attempts a ON a.episode_id = e.id WHERE e.id = ANY($1) GROUP BY e.id", sent)
    assert sorted(r["id"] for r in rows) == sorted(sent)
    assert all(r["attempt_count"] == 1 and r["attempts"] == 1 for r in rows)
    wait_for(lambda: query(postgres.url, "SELECT count(*) AS n FROM episodes WHERE id = ANY($1) AND announced",
                           sent)[0]["n"] == len(sent), 60, "every episode announced")
    on_stream = Counter(redis_server.stream_ids())
    assert {i: on_stream[i] for i in sent} == {i: 1 for i in sent}
    assert max(on_stream.values()) == 1


def test_a_postgres_crash_under_load_loses_and_duplicates_nothing(server, private_postgres, private_redis,
                                                                  data_dir) -> None:
    total, crash_after, restart_after = 24, 4, 16
    requests = RequestStream(server, total)
    try:
        requests.wait_until_answered(crash_after, "the first requests")
        private_postgres.crash()
        crashed_at = len(requests.results)
        requests.wait_until_answered(restart_after, "requests during the outage")
        # (the first may have been recorded, and written, just before the crash)
        during = [episode_id for status, episode_id in requests.results[crashed_at + 1:] if status == 200]
        assert during, f"no request was served while Postgres was down: {requests.results[crashed_at:]}"
        # They wait in the journal (written before the response went out).
        journaled = {record["id"] for record in journal_records(data_dir)}
        assert set(during) <= journaled
        private_postgres.start()
    finally:
        sent = requests.finish()
    check_stored_once(private_postgres, private_redis, sent)
    # Everything written: the journal's segments are gone.
    wait_for(lambda: not journal_records(data_dir), 30, "the journal to empty")


def test_a_killed_server_replays_its_journal_at_the_next_start(server, private_postgres, private_redis,
                                                              data_dir) -> None:
    private_postgres.crash()  # so the episodes can only be in the journal when the server dies
    sent = []
    for i in range(8):
        response = server.chat(f"Name the number {i}.", max_tokens=3)
        assert response.status_code == 200, response.text
        sent.append(response.json()["r3"]["episode_id"])
    journaled = [record["id"] for record in journal_records(data_dir)]
    assert set(sent) <= set(journaled)
    server.kill()  # right after the responses: no shutdown, no flush

    private_postgres.start()
    assert not stored_ids(private_postgres.url, sent)  # none reached the database before the kill
    server.start()
    check_stored_once(private_postgres, private_redis, sent)
    assert "replayed" in server.output().rsplit("Started server process", 1)[1]  # by the journal's replay
    wait_for(lambda: not journal_records(data_dir), 30, "the adopted journal to empty")
    folders = list((data_dir / "journal").glob("process-*"))
    assert len(folders) == 1, folders  # the dead process's folder was adopted and removed


def test_open_mode_serves_while_the_database_is_down(private_postgres, private_redis, r3_process,
                                                     tmp_path_factory) -> None:
    """With no API key configured, serving a request must not need the database either."""
    open_server = r3_process(tmp_path_factory.mktemp("r3-open"), R3_DATABASE_URL=private_postgres.url,
                             R3_REDIS_URL=private_redis.url)
    open_server.start()
    try:
        assert open_server.chat("Say yes.", max_tokens=2).status_code == 200
        private_postgres.crash()
        try:
            # Past the server's 5 s cache of "does the database hold any keys?".
            statuses, started = [], time.monotonic()
            while time.monotonic() - started < 6:
                statuses.append(open_server.chat("Say yes.", max_tokens=2).status_code)
            assert set(statuses) == {200}, statuses
        finally:
            private_postgres.start()
    finally:
        open_server.close()
