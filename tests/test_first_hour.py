"""A new user's first hour: each startup mistake said in a line or two naming its R3_* variable (each in
its own `r3` process, in a fresh folder with a fresh data dir), the version and help, API keys listed
and revoked at once on every replica, and the trainer `r3 serve` supervises beside it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.requests import Request
from support import ThreadedServer, free_port

from r3.cli.supervisor import TrainerSupervisor
from r3.settings import Settings
from r3.store.store import open_store
from server.auth import Authenticator
from server.errors import APIError

pytestmark = pytest.mark.process  # the suite's tiers: tests/conftest.py

REPO = Path(__file__).resolve().parent.parent


def r3(folder: Path, *args: str, env: dict[str, str] | None = None, dotenv: str | None = None
       ) -> subprocess.CompletedProcess:
    """`r3 ARGS` run in `folder` (its `.env`: `dotenv`), as a fresh user with no R3_* in the environment
    but `env`, its data dir inside `folder`."""
    if dotenv is not None:
        (folder / ".env").write_text(dotenv)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("R3_")}
    clean.update({"R3_DATA_DIR": str(folder / "data"), "PYTHONPATH": str(REPO), **(env or {})})
    return subprocess.run([sys.executable, "-m", "r3", *args], cwd=folder, env=clean, capture_output=True,
                          text=True, timeout=300)


def said(result: subprocess.CompletedProcess) -> str:
    """What a failed command told its user: exit status 1, no traceback, at most two lines of error."""
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    (message,) = result.stderr.strip().splitlines()
    assert message.startswith("error: R3_"), result.stderr[-3000:]
    return message


def test_a_model_folder_that_is_not_there_is_not_taken_for_a_hub_id(tmp_path: Path) -> None:
    message = said(r3(tmp_path, "serve", env={"R3_MODEL": str(tmp_path / "my-model"), "R3_PORT": "0"}))
    assert f"R3_MODEL={tmp_path / 'my-model'}: no such folder" in message


def test_a_postgres_database_that_does_not_exist(tmp_path: Path) -> None:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=3).close()
    except OSError:
        pytest.skip("no Postgres at 127.0.0.1:5432")
    name = f"r3_missing_{uuid.uuid4().hex[:10]}"
    message = said(r3(tmp_path, "serve", env={"R3_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}",
                                              "R3_PORT": "0"}))
    assert f"R3_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/{name}" in message
    assert f"the database '{name}' does not exist on 127.0.0.1:5432" in message and f"createdb" in message


def test_postgres_not_listening(tmp_path: Path) -> None:
    port = free_port()
    message = said(r3(tmp_path, "serve", env={"R3_DATABASE_URL": f"postgresql://r3:secret@127.0.0.1:{port}/r3",
                                              "R3_PORT": "0"}))
    assert f"R3_DATABASE_URL=postgresql+asyncpg://r3:***@127.0.0.1:{port}/r3: nothing listens" in message
    assert "secret" not in message  # the password is never printed
    # The same words for every command that opens the database.
    assert said(r3(tmp_path, "keys", "create", "--name", "alice",
                   env={"R3_DATABASE_URL": f"postgresql://r3@127.0.0.1:{port}/r3"})).count("nothing listens") == 1


def test_a_number_that_is_not_one_in_dotenv_names_the_variable_not_the_field(tmp_path: Path) -> None:
    message = said(r3(tmp_path, "serve", dotenv="R3_MAX_BATCH_SIZE=abc\n"))
    assert "R3_MAX_BATCH_SIZE='abc' (from ./.env): Input should be a valid integer" in message
    assert "remove it for the default (8)" in message and "max_batch_size" not in message


def test_bad_json_in_lora_modules(tmp_path: Path) -> None:
    message = said(r3(tmp_path, "serve", env={"R3_LORA_MODULES": '{"mine": /adapters/mine}'}))
    assert "R3_LORA_MODULES (from the environment) is not valid JSON" in message
    assert 'R3_LORA_MODULES=\'{"name": "/path/to/adapter"}\'' in message


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://127.0.0.1:{port}/0", "R3_REDIS_URL=redis://127.0.0.1:{port}/0: Redis does not answer"),
    ("http://127.0.0.1:{port}", "R3_REDIS_URL=http://127.0.0.1:{port}: Redis URL must specify"),
])
def test_a_wrong_redis_url(tmp_path: Path, url: str, expected: str) -> None:
    port = free_port()
    message = said(r3(tmp_path, "serve", env={"R3_REDIS_URL": url.format(port=port), "R3_PORT": "0"}))
    assert expected.format(port=port) in message


def test_an_adapters_dir_that_cannot_be_used(tmp_path: Path) -> None:
    """A file where the folder should be (the tests run as root, whom no permission stops)."""
    (tmp_path / "taken").write_text("not a folder")
    message = said(r3(tmp_path, "serve", env={"R3_ADAPTERS_DIR": str(tmp_path / "taken" / "adapters"),
                                              "R3_PORT": "0"}))
    assert f"R3_ADAPTERS_DIR: cannot use {tmp_path / 'taken' / 'adapters'} (Not a directory)" in message


def test_a_port_in_use_is_found_before_anything_else(tmp_path: Path) -> None:
    """Before the model (here a folder that is not there either), so in seconds, not after loading it."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        message = said(r3(tmp_path, "serve", env={"R3_PORT": str(port), "R3_MODEL": str(tmp_path / "absent")}))
    assert f"R3_PORT={port}: the port is already in use on 127.0.0.1" in message
    assert f"R3_PORT={port + 1}" in message and "R3_MODEL" not in message


@pytest.mark.parametrize(("url", "expected"), [
    ("mysql://r3:secret@db/r3", "R3_DATABASE_URL='mysql://r3:***@db/r3' (from the environment): R3 takes "
     "postgresql:// or sqlite:// URLs, not mysql://"),
    ("not a url", "R3_DATABASE_URL='not a url' (from the environment): not a database URL. Fix: postgresql://"),
    ("sqlite:///tmp/x.db", "R3_DATABASE_URL='sqlite:///tmp/x.db' (from the environment): the SQLite file tmp/x.db "
     "is not an absolute path"),
])
def test_a_database_url_r3_cannot_open_is_said_before_it_is_opened(tmp_path: Path, url: str, expected: str) -> None:
    message = said(r3(tmp_path, "serve", env={"R3_DATABASE_URL": url, "R3_PORT": "0"}))
    assert expected in message and "secret" not in message
    assert "sqlite:////" in message and "R3_DATA_DIR:" not in message


def test_a_sqlite_file_by_its_absolute_path_is_the_one_opened(tmp_path: Path) -> None:
    """Four slashes: the folder is made, the file migrated, and `r3 keys` uses it."""
    database = tmp_path / "elsewhere" / "r3.db"
    result = r3(tmp_path, "keys", "create", "--name", "alice", env={"R3_DATABASE_URL": f"sqlite:///{database}"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert database.is_file()


@pytest.mark.parametrize("how", [["--port", "99999"], ["--port", "-1"]])
def test_a_port_out_of_range_is_said_for_the_option_as_for_the_variable(tmp_path: Path, how: list[str]) -> None:
    message = said(r3(tmp_path, "serve", *how))
    assert message.startswith(f"error: R3_PORT={how[1]} (from --port): Input should be") and "Fix:" in message
    assert said(r3(tmp_path, "serve", env={"R3_PORT": "99999"})).startswith(
        "error: R3_PORT='99999' (from the environment): Input should be less than or equal to 65535")


def test_verbose_adds_the_traceback(tmp_path: Path) -> None:
    result = r3(tmp_path, "serve", "--verbose", env={"R3_MODEL": str(tmp_path / "absent"), "R3_PORT": "0"})
    assert result.returncode == 1 and "Traceback" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("error: R3_MODEL=")


def test_version_and_help_show_defaults_without_type_noise(tmp_path: Path) -> None:
    version = r3(tmp_path, "--version")
    assert version.returncode == 0 and version.stdout.strip() == "r3 0.1.0"
    help_text = r3(tmp_path, "replay", "--help").stdout
    assert "[default: 8; x>=1]" in help_text and "[default: 600.0]" in help_text
    assert "<bool>" not in help_text and "--serve " in help_text
    assert "[default: R3_PORT, else 8000" in r3(tmp_path, "serve", "--help").stdout


# ------------------------------------------------------------------ API keys


def calling_with(key: str) -> Request:
    return Request({"type": "http", "headers": [(b"authorization", f"Bearer {key}".encode())],
                    "client": ("203.0.113.9", 4242)})


def test_keys_list_and_a_revoked_key_is_refused_at_once_by_every_replica(tmp_path: Path) -> None:
    created = r3(tmp_path, "keys", "create", "--name", "alice")
    assert created.returncode == 0 and "This is the first key" in created.stderr
    assert "Episodes recorded before it belong to no key" in " ".join(created.stderr.split())
    key = created.stdout.strip()
    assert "This is the first key" not in r3(tmp_path, "keys", "create", "--name", "bob").stderr

    settings = Settings(_env_file=None, data_dir=tmp_path / "data")  # the store `r3 keys` used

    async def two_replicas_then_revoke() -> tuple[list, list]:
        async with open_store(settings) as one, open_store(settings) as other:
            replicas = [Authenticator([], None, store.keys) for store in (one, other)]
            before = [await replica.tenant(calling_with(key)) for replica in replicas]
            assert r3(tmp_path, "keys", "revoke", "alice").returncode == 0
            after = []
            for replica in replicas:
                with pytest.raises(APIError) as refused:
                    await replica.tenant(calling_with(key))
                after.append((refused.value.status, refused.value.message))
            return before, after

    before, after = asyncio.run(two_replicas_then_revoke())
    assert before[0] == before[1] and before[0].startswith("key-")
    assert after == [(401, "invalid API key")] * 2

    listed = r3(tmp_path, "keys", "list")
    assert listed.returncode == 0
    alice, bob = (next(line for line in listed.stdout.splitlines() if name in line) for name in ("alice", "bob"))
    assert before[0] in alice and alice.rstrip(" │|").split()[-1] != "-"  # revoked: its time
    assert bob.rstrip(" │|").split()[-1] == "-"
    assert "1 live, 1 revoked; 0 more in R3_API_KEYS" in listed.stderr
    again = r3(tmp_path, "keys", "revoke", "alice")
    assert again.returncode == 1 and "no live key is named 'alice'" in again.stderr

    # With every key revoked, the server does not fall back to open mode: loopback needs a key too.
    assert r3(tmp_path, "keys", "revoke", "bob").returncode == 0

    async def keyless_from_loopback() -> APIError:
        async with open_store(settings) as store:
            with pytest.raises(APIError) as refused:
                await Authenticator([], None, store.keys).tenant(
                    Request({"type": "http", "headers": [], "client": ("127.0.0.1", 4242)}))
            return refused.value

    refused = asyncio.run(keyless_from_loopback())
    assert (refused.status, refused.message) == (401, "missing API key: send Authorization: Bearer <key>")


# ------------------------------------------------------------------ the supervised trainer


DIES_ONCE = """
import pathlib, sys, time
marker = pathlib.Path(sys.argv[1])
if not marker.exists():
    marker.write_text("died once")
    sys.exit(3)
time.sleep(600)
"""


def test_the_supervisor_starts_the_trainer_again_when_it_dies_and_stops_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        supervisor = TrainerSupervisor(tmp_path / "trainer.log", command=[sys.executable, "-c", DIES_ONCE,
                                                                         str(tmp_path / "marker")])
        await supervisor.start()
        try:
            while supervisor.restarts < 1 or not supervisor.status().running:
                await asyncio.sleep(0.05)  # polling its state, with the test's own timeout below
            status = supervisor.status()
            assert status.restarts == 1 and status.pid and f"(pid {status.pid})" in status.detail
            assert status.log == str(tmp_path / "trainer.log")
        finally:
            await supervisor.stop()
        stopped = supervisor.status()
        assert stopped.running is False and stopped.detail.startswith("stopped with the server")
        assert stopped.restarts == 1  # the stop's SIGTERM is not a death to restart after
        with pytest.raises(ProcessLookupError):
            os.kill(status.pid, 0)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_signal_to_the_servers_process_group_leaves_the_trainer_to_the_supervisor(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Ctrl-C or `kill -TERM -PGID` reaches the server only; it stops the trainer without a restart or warning."""
    async def scenario() -> None:
        supervisor = TrainerSupervisor(tmp_path / "trainer.log", command=[sys.executable, "-c",
                                                                         "import time; time.sleep(600)"])
        await supervisor.start()
        try:
            while not supervisor.status().running:
                await asyncio.sleep(0.05)  # polling its state, with the test's own timeout below
            assert os.getpgid(supervisor.status().pid) != os.getpgid(0)
        finally:
            await supervisor.stop()
        assert supervisor.restarts == 0

    with caplog.at_level("WARNING", logger="r3.trainer"):
        asyncio.run(asyncio.wait_for(scenario(), 60))
    assert caplog.records == []


SUPERVISING = """
import asyncio, sys
from pathlib import Path
from r3.cli.supervisor import TrainerSupervisor

async def main():
    supervisor = TrainerSupervisor(Path(sys.argv[1]), command=[sys.executable, "-c", "import time; time.sleep(600)"])
    await supervisor.start()
    while not supervisor.status().running:
        await asyncio.sleep(0.05)
    print(supervisor.status().pid, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_a_server_killed_outright_leaves_no_trainer_behind(tmp_path: Path) -> None:
    """SIGKILL gives the server no chance to stop its trainer: the kernel ends the trainer instead."""
    server = subprocess.Popen([sys.executable, "-c", SUPERVISING, str(tmp_path / "trainer.log")],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        trainer = int(server.stdout.readline())
        os.kill(server.pid, signal.SIGKILL)
        server.wait(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(f"/proc/{trainer}").exists() \
                and Path(f"/proc/{trainer}/stat").read_text().split()[2] != "Z":
            time.sleep(0.05)  # polling the trainer's state, with a deadline
        assert not Path(f"/proc/{trainer}").exists() or Path(f"/proc/{trainer}/stat").read_text().split()[2] == "Z"
    finally:
        server.kill()


# ------------------------------------------------------------------ r3 replay


def replay_tasks(folder: Path, count: int) -> Path:
    tasks = folder / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"t{i}", "request": {
        "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0,
        "verifier": {"type": "regex", "pattern": "(?s).*"}}}) + "\n" for i in range(count)))
    return tasks


def test_replay_against_a_server_that_refuses_the_key_says_what_to_pass_before_sending(tmp_path: Path) -> None:
    """A server with keys (here one that refuses every key, as R3 does a wrong one): one line, no bar, no table."""
    sent = []
    refusing = FastAPI()

    @refusing.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"error": {"message": "invalid API key", "type": "authentication_error", "param": None,
                                       "code": "invalid_api_key"}}, status_code=401)

    @refusing.post("/v1/chat/completions")
    async def chat() -> None:
        sent.append(1)

    with ThreadedServer(refusing) as url:
        result = r3(tmp_path, "replay", str(replay_tasks(tmp_path, 8)), "--url", url, "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and sent == []
    (line,) = result.stderr.strip().splitlines()
    assert line == (f"error: {url} refused the key (invalid API key): pass a key: --api-key KEY or R3_API_KEY=KEY "
                    "(`r3 keys create --name replay` makes one)")


def test_a_replay_timeout_names_the_limit_and_what_to_do(tmp_path: Path) -> None:
    never = asyncio.Event()  # a server that never answers in time
    slow = FastAPI()

    @slow.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": []}

    @slow.post("/v1/chat/completions")
    async def chat() -> None:
        await never.wait()

    with ThreadedServer(slow) as url:
        result = r3(tmp_path, "replay", str(replay_tasks(tmp_path, 3)), "--url", url, "--timeout-s", "0.5",
                    "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    said = result.stderr
    (line,) = [line for line in said.splitlines() if line.startswith("not answered: ")]
    ids, error = line.removeprefix("not answered: ").split(": ", 1)
    assert sorted(ids.split(", ")) == ["t0", "t1", "t2"]  # every one listed, in one group
    assert error == "no answer within --timeout-s 0.5 s (ReadTimeout)"
    assert "what to do: raise --timeout-s" in said and "second attempt" not in result.stdout  # no empty table
    assert "3 errors" in said


def test_replay_serve_after_keys_create_uses_a_key_of_its_own(model_path: Path, tmp_path: Path) -> None:
    """The new user's path: a key exists, so every request needs one; `--serve` brings its own."""
    env = {"R3_MODELS_DIR": str(model_path.parent)}
    assert r3(tmp_path, "keys", "create", "--name", "me", env=env).returncode == 0
    result = r3(tmp_path, "replay", str(replay_tasks(tmp_path, 2)), "--serve", "--out", str(tmp_path / "out"),
                env=env)
    assert result.returncode == 0, result.stderr[-3000:] + (tmp_path / "out" / "server.log").read_text()[-3000:]
    assert "2/2 answered" in result.stderr
    assert "trainer     off (R3_TRAINER=off)" in (tmp_path / "out" / "server.log").read_text()  # it measures


@pytest.mark.parametrize(("env", "named"), [
    ({"R3_MAX_NUM_BATCHED_TOKENS": "4", "R3_MAX_BATCH_SIZE": "8"}, "R3_MAX_NUM_BATCHED_TOKENS=4 is below R3_MAX_BATCH_SIZE=8"),
    ({"R3_TRAIN_HEARTBEAT_S": "30", "R3_TRAIN_STALE_AFTER_S": "20"}, "R3_TRAIN_STALE_AFTER_S=20 is not above R3_TRAIN_HEARTBEAT_S=30"),
])
def test_settings_that_do_not_agree_are_named_together(tmp_path: Path, env: dict[str, str], named: str) -> None:
    message = said(r3(tmp_path, "serve", env={**env, "R3_PORT": "0"}))
    assert named in message and "Fix:" in message
