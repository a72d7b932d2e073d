"""API keys, tenancy and the admin API, through a real server on the embedded SQLite store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from support import ThreadedServer

from r3.settings import Settings
from r3.store import keys
from r3.store.store import open_store
from server.app import create_app
from server.auth import Authenticator
from server.errors import APIError

MODEL = "SmolLM2-135M-Instruct"
ADMIN = "admin-secret"


def chat(url: str, key: str | None, **extra) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4,
            "temperature": 0, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("auth-data")
    settings = Settings(models_dir=model_path.parent, data_dir=data_dir, admin_key=ADMIN, default_max_tokens=4)

    async def make_keys() -> tuple[str, str]:
        async with open_store(settings) as store:  # the embedded SQLite migrates itself
            made = [await store.keys.create(name) for name in ("alice", "bob")]
        return made[0][1], made[1][1]

    alice, bob = asyncio.run(make_keys())
    with ThreadedServer(create_app(settings)) as base_url:
        yield base_url, alice, bob


def test_keys_are_required_once_any_exists(server) -> None:
    url, alice, _ = server
    assert chat(url, None).status_code == 401
    unknown = chat(url, "r3-not-a-real-key")
    assert unknown.status_code == 401 and unknown.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert chat(url, alice).status_code == 200
    assert httpx.get(f"{url}/health").status_code == 200  # health stays open for load balancers


def test_episodes_and_feedback_belong_to_the_key_that_made_them(server) -> None:
    url, alice, bob = server
    as_alice, as_bob = {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}
    made = chat(url, alice).json()
    episode_id, completion_id = made["r3"]["episode_id"], made["id"]

    assert httpx.get(f"{url}/v1/episodes/{episode_id}", headers=as_alice).json()["id"] == episode_id
    other = httpx.get(f"{url}/v1/episodes/{episode_id}", headers=as_bob)
    assert other.status_code == 404 and other.json()["error"]["type"] == "not_found_error"
    for body in ({"episode_id": episode_id, "success": True}, {"completion_id": completion_id, "success": True}):
        assert httpx.post(f"{url}/feedback", json=body, headers=as_bob).status_code == 404
    assert httpx.post(f"{url}/feedback", json={"episode_id": episode_id, "success": True},
                      headers=as_alice).status_code == 200


def test_the_admin_api_needs_the_admin_key(server) -> None:
    url, alice, _ = server
    assert httpx.get(f"{url}/admin/episodes").status_code == 401
    assert httpx.get(f"{url}/admin/episodes", headers={"Authorization": f"Bearer {alice}"}).status_code == 401
    assert httpx.get(f"{url}/admin/episodes", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200


def test_admin_lists_episodes_with_filters_and_pages(server) -> None:
    url, alice, bob = server
    admin = {"Authorization": f"Bearer {ADMIN}"}
    made = [chat(url, alice).json()["r3"]["episode_id"] for _ in range(3)]
    made.append(chat(url, bob, verifier={"type": "regex", "pattern": "^never$"},
                     reflect={"max_retries": 0}).json()["r3"]["episode_id"])

    def listed(**params) -> list[dict]:
        response = httpx.get(f"{url}/admin/episodes", params=params, headers=admin)
        assert response.status_code == 200, response.text
        return response.json()["data"]

    everything = listed(limit=500)
    assert set(made) <= {e["id"] for e in everything}
    created = [e["created_at"] for e in everything]
    assert created == sorted(created, reverse=True)  # newest first

    failed = listed(outcome="false", limit=500)
    assert made[3] in {e["id"] for e in failed} and all(e["outcome"] is False for e in failed)
    assert {e["id"] for e in listed(task_kind="generic", adapter="base", limit=500)} >= set(made)

    pages, cursor = [], None
    while True:
        params = {"limit": 2, **({"after": cursor} if cursor else {})}
        page = httpx.get(f"{url}/admin/episodes", params=params, headers=admin).json()
        pages += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [e["id"] for e in pages] == [e["id"] for e in everything]  # every episode once, in order

    bad = httpx.get(f"{url}/admin/episodes", params={"after": "garbage!"}, headers=admin)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "after"


def _request(host: str, key: str | None = None) -> Request:
    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    return Request({"type": "http", "headers": headers, "client": (host, 1234)})


async def test_open_mode_serves_only_loopback_clients(tmp_path: Path) -> None:
    async with open_store(Settings(_env_file=None, data_dir=tmp_path)) as store:
        auth = Authenticator([], None, store.keys)
        assert await auth.tenant(_request("127.0.0.1", "anything-the-sdk-sends")) is None
        assert await auth.tenant(_request("::1")) is None
        with pytest.raises(APIError) as refused:
            await auth.tenant(_request("192.0.2.10"))
        assert refused.value.status == 401
        with pytest.raises(APIError) as disabled:
            auth.require_admin(_request("127.0.0.1", "x"))
        assert disabled.value.status == 403


async def test_configured_keys_need_no_database_row(tmp_path: Path) -> None:
    async with open_store(Settings(_env_file=None, data_dir=tmp_path)) as store:
        auth = Authenticator(["from-env"], None, store.keys)
        assert await auth.tenant(_request("192.0.2.10", "from-env")) == keys.tenant_of_configured_key("from-env")
        with pytest.raises(APIError):
            await auth.tenant(_request("127.0.0.1", "other"))
