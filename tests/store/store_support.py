"""Real Postgres, Redis and servers for the episode store's tests (the fixtures are in conftest.py): no mocks.

- `fresh_pg_url`: a new, empty database on the shared server (127.0.0.1:5432), dropped afterwards.
- `PrivatePostgres`: a cluster of our own (initdb into a tmp dir) that a test can crash and restart.
- `PrivateRedis`: a redis-server of our own, with an fsync-always AOF so its stream survives SIGKILL.
- `R3Process`: `python -m r3 serve` in a subprocess, its output captured to a file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis
from support import free_port

REPO = Path(__file__).resolve().parents[2]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SHARED_PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "database": "test"}
STREAM_KEY = "r3:episodes"


def wait_for(condition: Callable[[], object], timeout_s: float = 30, what: str = "condition",
             interval_s: float = 0.05) -> object:
    """Poll `condition` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last value: {value!r})")
        time.sleep(interval_s)


def run(coroutine_function: Callable[[], Coroutine]) -> object:
    """Run a coroutine to completion from synchronous code, even inside a running event loop
    (an async test's fixture): in a thread of its own, with its own loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(coroutine_function())).result()


def run_in_thread(function: Callable, *args) -> object:
    """`function(*args)` in a thread of its own (Alembic's env.py calls asyncio.run)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(function, *args).result()


def sync_url(url: str) -> str:
    """The asyncpg URL as psycopg-free plain `postgresql://` (what asyncpg.connect takes)."""
    return url.replace("postgresql+asyncpg://", "postgresql://")


def query(url: str, sql: str, *args) -> list[asyncpg.Record]:
    """Run one query against Postgres from synchronous test code."""

    async def run_query() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(sync_url(url), timeout=10)
        try:
            return await connection.fetch(sql, *args)
        finally:
            await connection.close()

    return run(run_query)


# ---------------------------------------------------------------------------------------------- Postgres


async def _create_database(name: str, **server) -> None:
    connection = await asyncpg.connect(**{**SHARED_PG, **server}, timeout=10)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def _drop_database(name: str, **server) -> None:
    connection = await asyncpg.connect(**{**SHARED_PG, **server}, timeout=10)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def shared_postgres_available() -> bool:
    async def ping() -> None:
        connection = await asyncpg.connect(**SHARED_PG, timeout=3)
        await connection.close()

    try:
        run(ping)
    except Exception:  # noqa: BLE001
        return False
    return True


def fresh_database(request: pytest.FixtureRequest) -> Iterator[str]:
    request.getfixturevalue("shared_postgres")
    name = f"r3_test_{uuid.uuid4().hex[:12]}"
    run(lambda: _create_database(name))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        run(lambda: _drop_database(name))


class PrivatePostgres:
    """A Postgres cluster of our own, which a test may crash (`stop -m immediate`) and restart."""

    def __init__(self, root: Path) -> None:
        if not (PG_BIN / "initdb").exists():
            pytest.skip("no Postgres 15 binaries")
        self.root = root
        self.data = root / "pgdata"
        self.sockets = root / "sockets"
        self.log = root / "postgres.log"
        self.port = free_port()
        self.database = "r3"
        self.sockets.mkdir()
        shutil.chown(root, "postgres")
        shutil.chown(self.sockets, "postgres")
        self._as_postgres([PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                           "--no-sync"])
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("fsync = on\nshared_buffers = 32MB\nmax_connections = 50\n")

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{self.database}"

    def _as_postgres(self, argv: list, check: bool = True) -> subprocess.CompletedProcess:
        command = ["runuser", "-u", "postgres", "--", *map(str, argv)] if os.geteuid() == 0 else list(map(str, argv))
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {result.stdout}\n{result.stderr}")
        return result

    def start(self) -> None:
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1"
        self._as_postgres([PG_BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60",
                           "start"])
        wait_for(self.accepting, 30, "the private Postgres to accept connections")

    def crash(self) -> None:
        """Stop at once, without a checkpoint, as a crash would (recovery runs at the next start)."""
        self._as_postgres([PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"])

    def stop(self) -> None:
        self._as_postgres([PG_BIN / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"], check=False)

    def accepting(self) -> bool:
        async def ping() -> None:
            connection = await asyncpg.connect(host="127.0.0.1", port=self.port, user="postgres",
                                               database="postgres", timeout=2)
            await connection.close()

        try:
            run(ping)
        except Exception:  # noqa: BLE001
            return False
        return True

    def create_database(self) -> None:
        run(lambda: _create_database(self.database, port=self.port, database="postgres"))


# ---------------------------------------------------------------------------------------------- Redis


class PrivateRedis:
    """A redis-server of our own; `kill()` is SIGKILL, `start()` comes back on the same port and AOF."""

    def __init__(self, root: Path, persistent: bool = True) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("no redis-server")
        self.persistent = persistent
        self.dir = root
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, decode_responses=False)

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always", "--save", "",
             "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.alive, 20, "the private Redis to answer PING")

    def alive(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None

    def stream_ids(self) -> list[str]:
        """The episode ids on the stream, in order (with repeats, if any)."""
        with self.client() as client:
            return [fields[b"episode_id"].decode() for _, fields in client.xrange(STREAM_KEY, "-", "+")]


# ---------------------------------------------------------------------------------------------- the server


class R3Process:
    """`python -m r3 serve` with R3_* settings; stdout and stderr go to `log_path`."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("R3_")}
        self.env = {**inherited, **env, "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self.port = int(env["R3_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.http = httpx.Client(base_url=self.url, timeout=120, headers=self._headers())

    def _headers(self) -> dict[str, str]:
        keys = self.env.get("R3_API_KEYS")
        if keys:
            import json

            return {"Authorization": f"Bearer {json.loads(keys)[0]}"}
        return {}

    def start(self, timeout_s: float = 180) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it
        self.process = subprocess.Popen([sys.executable, "-m", "r3", "serve"], cwd=REPO, env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT)
        log.close()

        def healthy() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited ({self.process.returncode}):\n{self.output()[-4000:]}")
            try:
                return self.http.get("/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout_s, "the server's /health", interval_s=0.2)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def chat(self, content: str, max_tokens: int = 4, **extra) -> httpx.Response:
        body = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": content}],
                "max_tokens": max_tokens, "temperature": 0, **extra}
        return self.http.post("/v1/chat/completions", json=body)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self.process = None

    def stop(self) -> None:
        """SIGTERM: uvicorn's graceful shutdown (the episode log flushes)."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)
        self.process = None

    def close(self) -> None:
        if self.process is not None:
            self.kill()
        self.http.close()


def journal_records(data_dir: Path) -> list[dict]:
    """Every record in the server's journal files (all process folders), torn lines skipped."""
    import json

    records = []
    for path in sorted((data_dir / "journal").glob("process-*/*segment-*.jsonl")):
        for line in path.read_bytes().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class RequestStream:
    """`total` chat requests sent one after another from a background thread, for fault tests:
    `results` fills with (status, episode id or error text) as they come back."""

    def __init__(self, server: R3Process, total: int) -> None:
        self.server, self.total = server, total
        self.results: list[tuple[int, str]] = []
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._send)
        self._thread.start()

    def _send(self) -> None:
        try:
            for i in range(self.total):
                response = self.server.chat(f"Count to {i}.", max_tokens=3)
                self.results.append((response.status_code, response.json()["r3"]["episode_id"]
                                     if response.status_code == 200 else response.text))
        finally:
            self.done.set()

    def wait_until_answered(self, count: int, what: str) -> int:
        """Wait for `count` answers (or the end); returns how many there are."""
        wait_for(lambda: len(self.results) >= count or self.done.is_set(), 120, what)
        return len(self.results)

    def finish(self) -> list[str]:
        """Wait for the last request; assert every one succeeded; the episode ids, in order."""
        self._thread.join(300)
        assert self.done.is_set()
        assert [status for status, _ in self.results] == [200] * self.total, self.results
        return [episode_id for _, episode_id in self.results]


class InProcessEpisodeStream:
    """An episode stream held in memory, for tests of what the episode log announces: each id is
    queued once, however often it is announced."""

    carries = True

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self._seen: set[str] = set()

    async def announce(self, episode_ids: list[str]) -> None:
        for episode_id in episode_ids:
            if episode_id not in self._seen:
                self._seen.add(episode_id)
                self.queue.put_nowait(episode_id)

    async def close(self) -> None:
        return None
