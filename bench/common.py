"""What the benchmarks share: an `r3 serve` process to measure, a closed-loop load, and result files."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
MODEL = "SmolLM2-135M-Instruct"
PASSING = {"type": "regex", "pattern": "(?s).*"}  # a verifier every answer passes (regex is a full match)


def require_bench_extra() -> None:
    """Stop before any work when the `bench` extra is missing (matplotlib draws the plots, scipy
    computes the intervals and tests), so a benchmark never runs for an hour and then fails at its
    plot. Raises SystemExit with one line naming the missing modules and the install command."""
    missing = []
    for module in ("matplotlib", "scipy"):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise SystemExit(f"the benchmarks need {' and '.join(missing)} (the bench extra): "
                         "pip install -e '.[bench]', or make bench")


def machine() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`with server as url:` an HTTP server in its own process (`command`, run in `cwd` with `env`,
    its output in `log_path`), up once `GET /health` answers 200 on `port`; stopped at the end
    (SIGTERM, then SIGKILL after 60 s). RuntimeError, naming the log, if it exits or does not come
    up within `startup_timeout_s`."""

    name = "the server"

    def __init__(self, command: list[str], env: dict[str, str], port: int, log_path: Path,
                 startup_timeout_s: float, cwd: Path | None = None) -> None:
        self.command, self.env, self.port, self.log_path, self.cwd = command, env, port, log_path, cwd
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> str:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log_path}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"{self.name} did not start in {self.startup_timeout_s} s; see {self.log_path}")

    def __exit__(self, *_) -> None:
        if self.process:
            stop(self.process, grace_s=60)


def stop(process: subprocess.Popen, grace_s: float) -> None:
    """Stop `process` if it still runs: SIGTERM, then SIGKILL after `grace_s` seconds; reaped either way."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class R3Server(ServerProcess):
    """`with R3Server({"R3_ENGINE": "vllm"}) as url:` — `r3 serve` in its own process, with its own data dir."""

    name = "r3 serve"

    def __init__(self, settings: dict[str, str], startup_timeout_s: float = 300, code: Path = REPO) -> None:
        """`code`: the checkout whose server runs (another commit's worktree, to compare with)."""
        self.code = code
        port = free_port()
        self.data_dir = Path(settings.get("R3_DATA_DIR") or tempfile.mkdtemp(prefix="r3-bench-"))
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("R3_")}
        env = {**inherited, "R3_DATA_DIR": str(self.data_dir), **settings, "R3_PORT": str(port)}
        # `python -m r3`; a checkout from before the command moved into the r3 package has `cli`.
        command = "r3" if (code / "r3" / "__main__.py").exists() else "cli"
        super().__init__([sys.executable, "-m", command, "serve"], env, port, self.data_dir / "server.log",
                         startup_timeout_s, cwd=code)


@dataclass
class Sample:
    started: float  # time.monotonic()
    latency_s: float
    completion_tokens: int
    body: dict[str, Any] | None  # the response; None for a failed request


async def closed_loop(send, concurrency: int, requests_per_worker: int) -> tuple[list[Sample], float]:
    """`concurrency` workers, each sending `requests_per_worker` requests back to back; the samples and wall time.

    `send()` returns (completion_tokens, response body or None)."""
    samples: list[Sample] = []

    async def worker() -> None:
        for _ in range(requests_per_worker):
            started = time.monotonic()
            tokens, body = await send()
            samples.append(Sample(started, time.monotonic() - started, tokens, body))

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, time.monotonic() - start


def chat_sender(client: httpx.AsyncClient, body: dict[str, Any]):
    async def send() -> tuple[int, dict[str, Any] | None]:
        response = await client.post("/v1/chat/completions", json=body)
        if response.status_code != 200:
            return 0, None
        payload = response.json()
        if payload["r3"]["reflected"]:
            raise RuntimeError("a request meant to pass its verifier was reflected on and retried")
        return payload["usage"]["completion_tokens"], payload

    return send


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                **result}, indent=2))
    return path


def table(headers: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(*headers)
    for row in rows:
        out.add_row(*(f"{cell:.3f}" if isinstance(cell, float) else str(cell) for cell in row))
    Console().print(out)


@contextmanager
def figure(path: Path, title: str, columns: int = 1) -> Iterator[Any]:
    """`with figure(path, title) as ax:` draw on `ax` (a list of axes for `columns` > 1); saved as a PNG at the end."""
    import matplotlib

    matplotlib.use("Agg")  # no screen
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=(5 + 5 * (columns - 1) if columns > 1 else 7, 4))
    yield axes
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
