"""What a client hears while the database refuses connections, or the journal's disk is full: 503 with
Retry-After and OpenAI's error object, never a 500; chat goes on while only the database is away; and
both recover by themselves. One real server (the bundled model) on a fresh Postgres database, with its
journal on a real 256 KiB tmpfs (root only; skipped otherwise)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from store_support import run_in_thread
from support import ThreadedServer
from test_store_unavailable import fill, refuse_connections, small_tmpfs

from r3.settings import Settings
from r3.store import database
from server.app import create_app

KEY, ADMIN = "r3-test-key-unavailable", "admin-unavailable"
USER, ADMIN_AUTH = {"Authorization": f"Bearer {KEY}"}, {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def journal_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from small_tmpfs(tmp_path_factory.mktemp("r3-unavailable") / "journal")


@pytest.fixture(scope="module")
def server(model_path: Path, module_pg_url: str, journal_disk: Path) -> Iterator[str]:
    settings = Settings(_env_file=None, models_dir=model_path.parent, data_dir=journal_disk.parent,
                        database_url=module_pg_url, api_keys=[KEY], admin_key=ADMIN, default_max_tokens=4,
                        journal_reserve_bytes=64 * 1024)
    with ThreadedServer(create_app(settings)) as base_url:
        yield base_url


def chat(url: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers=USER, timeout=120, json={
        "model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Say hi."}], "temperature": 0})


def assert_unavailable(response: httpx.Response, code: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"].isdigit()
    error = response.json()["error"]
    assert error["type"] == "server_error" and error["code"] == code and error["message"]


def journal_writable(url: str) -> float:
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
    return next(f.samples[0].value for f in families if f.name == "r3_episode_journal_writable")


def test_a_database_that_refuses_connections_is_a_503_and_chat_goes_on(server: str, module_pg_url: str) -> None:
    assert httpx.get(f"{server}/admin/stats", headers=ADMIN_AUTH).status_code == 200
    refuse_connections(module_pg_url, True)  # SQLSTATE 55000 for every new connection
    try:
        assert_unavailable(httpx.get(f"{server}/admin/stats", headers=ADMIN_AUTH), "database_unavailable")
        assert_unavailable(httpx.get(f"{server}/v1/episodes/ep-unknown", headers=USER), "database_unavailable")
        # A key that is not configured is looked up in the database.
        unknown_key = httpx.get(f"{server}/v1/models", headers={"Authorization": "Bearer r3-not-configured"})
        assert_unavailable(unknown_key, "database_unavailable")
        assert chat(server).status_code == 200  # the journal keeps the episode
        assert httpx.get(f"{server}/health").status_code == 200  # ready: only the database is away
    finally:
        refuse_connections(module_pg_url, False)
    assert httpx.get(f"{server}/admin/stats", headers=ADMIN_AUTH).status_code == 200
    assert httpx.get(f"{server}/v1/episodes/ep-unknown", headers=USER).status_code == 404


def test_a_full_journal_disk_is_a_503_before_generating_and_heals(server: str, journal_disk: Path) -> None:
    assert chat(server).status_code == 200
    assert journal_writable(server) == 1
    filler = fill(journal_disk)
    try:
        refused = chat(server)
        assert_unavailable(refused, "journal_unavailable")
        assert "R3_JOURNAL_RESERVE_BYTES" in refused.json()["error"]["message"]  # the check before generating
        health = httpx.get(f"{server}/health")
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable" and "journal" in health.json()["reason"]
        assert journal_writable(server) == 0
    finally:
        filler.unlink()
    assert chat(server).status_code == 200
    assert httpx.get(f"{server}/health").status_code == 200
    assert journal_writable(server) == 1
