"""Several server processes on one database converge on the version it marks active."""

from __future__ import annotations

import time
from pathlib import Path

from store_support import run, run_in_thread, wait_for
from support import make_lora

from r3.settings import Settings
from r3.store import database
from r3.store.store import open_store

ADMIN = {"Authorization": "Bearer admin-key"}


def test_two_servers_follow_each_activation(fresh_pg_url, private_redis, r3_process, model_path: Path,
                                            tmp_path: Path) -> None:
    run_in_thread(database.migrate, fresh_pg_url)
    adapters_dir = tmp_path / "adapters"
    files = make_lora(model_path, tmp_path / "trained", seed=7)

    async def register() -> str:
        settings = Settings(_env_file=None, database_url=fresh_pg_url, adapters_dir=adapters_dir, data_dir=tmp_path)
        async with open_store(settings) as store:
            return (await store.registry.register(files, None, {}, [])).name

    version = run(register)
    env = dict(R3_DATABASE_URL=fresh_pg_url, R3_REDIS_URL=private_redis.url, R3_ADAPTERS_DIR=str(adapters_dir),
               R3_ADMIN_KEY="admin-key", R3_ADAPTER_POLL_S="30")  # slow polling: the event must do the work
    servers = [r3_process(tmp_path / f"server{i}", **env) for i in range(2)]
    for number, server in enumerate(servers):
        (tmp_path / f"server{number}").mkdir()
        server.start()
    try:
        assert all(s.chat("Hi", max_tokens=1).json()["r3"]["adapter"] == "base" for s in servers)
        activated = time.monotonic()
        assert servers[0].http.post(f"/admin/adapters/{version}/activate", headers=ADMIN).status_code == 200
        for server in servers:  # the other process hears of it on pub/sub, well before its 30 s poll
            wait_for(lambda s=server: s.chat("Hi", max_tokens=1).json()["r3"]["adapter"] == version, 10,
                     f"{server.url} to serve {version}", interval_s=0.05)
        assert time.monotonic() - activated < 10

        assert servers[1].http.post("/admin/adapters/rollback", headers=ADMIN).json()["active"] == "base"
        for server in servers:
            wait_for(lambda s=server: s.chat("Hi", max_tokens=1).json()["r3"]["adapter"] == "base", 10,
                     f"{server.url} to roll back", interval_s=0.05)
    finally:
        for server in servers:
            server.stop()
