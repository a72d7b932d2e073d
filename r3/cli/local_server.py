"""`r3 serve` as a child process, for a replay that brings its own server.

It inherits the caller's environment (R3_* settings included), so it records episodes in the same
store that `r3 train` reads; the port is its own, it runs no trainer (R3_TRAINER=off: a replay
measures the adapter it started with), and it accepts the key the replay sends.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


class ServerStartError(Exception):
    """The server exited or did not answer /health in time; the message points at its log."""


@contextmanager
def local_server(log_path: Path, api_key: str | None = None,
                 startup_timeout_s: float = 900) -> Iterator[tuple[str, str]]:
    """`with local_server(log) as (url, key):` — the server's base URL and the key to send while the
    block runs; stopped after. Without `api_key`, a fresh key that this server alone accepts (its
    R3_API_KEYS), so the replay is served whether or not keys were created with `r3 keys create`."""
    port = _free_port()
    env = {**os.environ, "R3_HOST": "127.0.0.1", "R3_PORT": str(port), "R3_TRAINER": "off"}
    key = api_key
    if key is None:
        key = "r3-replay-" + secrets.token_urlsafe(24)
        env["R3_API_KEYS"] = json.dumps([key])
    with log_path.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "r3", "serve"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(process, url, log_path, startup_timeout_s)
        yield url, key
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_healthy(process: subprocess.Popen, url: str, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s  # the first start may pull the bundled model
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = log_path.read_text(errors="replace").strip().splitlines()[-1:]  # a startup error is one line
            raise ServerStartError(f"r3 serve exited with status {process.returncode} ({''.join(said)}); "
                                   f"see {log_path}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise ServerStartError(f"r3 serve did not answer /health within {timeout_s:.0f} s; see {log_path}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
