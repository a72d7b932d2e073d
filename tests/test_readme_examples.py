"""Every code block of README.md (and of docs/) runs as written against a live `r3 serve` on the
bundled model: change an example and this runs the new one.

A block is run by its language: `python` blocks run in order, in one namespace per file (a later one
uses the `client` an earlier one made); `bash` blocks with bash; a `json` block that is a replay task
(`{"id", "request"}`) is sent as its request, and one that is a verifier spec (`{"type", ...}`) as a
request's verifier. A `text` block is output, not an example. Any other block must say why it is not
run, on the line before it: `<!-- not run by the tests: why -->`. The address the examples use,
127.0.0.1:8000 (or localhost:8000), becomes the live server's.

The same server, `r3 serve` exactly as `make serve` starts it (with the trainer beside it), also
answers for what a new user meets first: the banner, `/v1/models`, `/docs` offline, and the trainer
stopped with the server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
NOT_RUN = re.compile(r"<!-- not run by the tests: (.+?) -->")
EXAMPLE_ADDRESS = re.compile(r"(127\.0\.0\.1|localhost):8000")
ADMIN_KEY = "readme-admin-key"
# A reflect-and-retry on a 2-core CPU: an attempt, a reflection of up to 256 tokens, a retry.
EXAMPLE_TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    document: Path
    line: int  # the opening fence's, 1-based
    language: str
    code: str
    not_run: str | None  # why, when the document says it is not run

    @property
    def name(self) -> str:
        return f"{self.document.relative_to(REPO)}:{self.line}"


def blocks(document: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with the reason given on the line before each."""
    found, lines = [], document.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = re.match(r"^(\s*)```(\S*)\s*$", lines[index])
        if opening is None:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
        before = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        reason = NOT_RUN.search(before)
        found.append(Block(document, index + 1, opening.group(2) or "text", "\n".join(lines[index + 1:end]),
                           reason.group(1) if reason else None))
        index = end + 1
    return found


EXAMPLES = [block for document in DOCUMENTS if document.exists() for block in blocks(document)
            if block.language != "text"]


def test_every_example_is_run_or_says_why_not() -> None:
    assert len(EXAMPLES) >= 8  # the parser found the README's blocks
    unexplained = [b.name for b in EXAMPLES if b.not_run is None and b.language not in ("python", "bash", "json")]
    assert unexplained == [], f"blocks in a language this test cannot run, with no <!-- not run ... --> line"


# ------------------------------------------------------------------ the live server


@dataclass
class LiveR3:
    process: subprocess.Popen
    url: str
    log: Path
    banner: str
    namespaces: dict[Path, dict]  # each document's python namespace
    ran: set[str]  # the python blocks already run in them


@pytest.fixture(scope="module")
def live_r3(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveR3]:
    """`python -m r3 serve` as a new user runs it: a fresh data dir, no R3_* settings but the model
    cache (already pulled), a free port, and an admin key for the trainer's status."""
    folder = tmp_path_factory.mktemp("readme")
    env = {k: v for k, v in os.environ.items() if not k.startswith("R3_")}
    env.update({"R3_DATA_DIR": str(folder / "data"), "R3_MODELS_DIR": str(model_path.parent), "R3_PORT": "0",
                "R3_ADMIN_KEY": ADMIN_KEY, "PYTHONPATH": str(REPO)})
    log = folder / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "r3", "serve"], cwd=folder, env=env, stdout=output,
                                   stderr=subprocess.STDOUT)
    try:
        url = _wait_for_banner(process, log)
        _wait_healthy(process, url, log)
        banner = log.read_text(errors="replace")
        yield LiveR3(process, url, log, banner[banner.index("R3 is serving on"):], {}, set())
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(120)


def _wait_for_banner(process: subprocess.Popen, log: Path, timeout_s: float = 600) -> str:
    deadline = time.monotonic() + timeout_s  # loading the model on a busy 2-core machine
    while time.monotonic() < deadline:
        found = re.search(r"R3 is serving on (http://\S+)", log.read_text(errors="replace"))
        if found:
            return found.group(1)
        assert process.poll() is None, f"r3 serve exited: {log.read_text(errors='replace')[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no banner within {timeout_s} s: {log.read_text(errors='replace')[-3000:]}")


def _wait_healthy(process: subprocess.Popen, url: str, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"/health never answered 200: {log.read_text(errors='replace')[-3000:]}")


# ------------------------------------------------------------------ the examples


@pytest.mark.parametrize("block", [b for b in EXAMPLES if b.not_run is None], ids=lambda b: b.name)
def test_the_example_runs_as_written(block: Block, live_r3: LiveR3) -> None:
    code = EXAMPLE_ADDRESS.sub(live_r3.url.removeprefix("http://"), block.code)
    if block.language == "python":
        _run_python_up_to(block, live_r3)
    elif block.language == "bash":
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", code], capture_output=True, text=True,
                                timeout=EXAMPLE_TIMEOUT_S, cwd=REPO)
        assert result.returncode == 0, result.stderr[-3000:]
        assert '"error"' not in result.stdout, result.stdout[-3000:]
    else:
        _send_json_example(json.loads(code), live_r3.url)


def _run_python_up_to(block: Block, live_r3: LiveR3) -> None:
    """Run the document's python blocks up to this one, each once, in the document's namespace."""
    namespace = live_r3.namespaces.setdefault(block.document, {"__name__": "__readme__"})
    for earlier in EXAMPLES:
        if earlier.document != block.document or earlier.language != "python" or earlier.not_run is not None:
            continue
        if earlier.line > block.line:
            break
        if earlier.name not in live_r3.ran:
            live_r3.ran.add(earlier.name)
            code = EXAMPLE_ADDRESS.sub(live_r3.url.removeprefix("http://"), earlier.code)
            exec(compile(code, earlier.name, "exec"), namespace)  # noqa: S102 - the README's own example


def _send_json_example(example: dict, url: str) -> None:
    if "request" in example:  # a replay task: its request as `r3 replay` sends it
        body = {"model": "r3", **example["request"]}
    else:  # a verifier spec
        assert "type" in example, f"a JSON block that is neither a replay task nor a verifier: {example}"
        body = {"model": "r3", "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
                "max_tokens": 16, "temperature": 0, "verifier": example}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=EXAMPLE_TIMEOUT_S)
    assert response.status_code == 200, response.text
    first = response.json()["r3"]["attempts"][0]
    # Judged by that verifier; a model judge that could not answer (down, too slow, outside the shape, cut
    # off by its token limit) leaves it unjudged, no score, the detail saying why, as the graders guide says.
    judged = first["success"] in (True, False) and 0 <= first["score"] <= 1
    unjudged = first["success"] is None and first["score"] is None and "judge" in first["detail"]
    assert judged or unjudged, first


# ------------------------------------------------------------------ what a new user meets first


def test_the_banner_says_what_is_served_and_where(live_r3: LiveR3) -> None:
    banner = live_r3.banner
    assert f"R3 is serving on {live_r3.url}" in banner
    assert "names       SmolLM2-135M-Instruct, r3 (active version), base" in banner
    assert "engine      transformers on cpu" in banner and "active      base (no adapter version yet)" in banner
    assert "auth        open to loopback clients only" in banner
    assert f"dashboard   {live_r3.url}/dashboard (log in with R3_ADMIN_KEY)" in banner
    assert f"API docs    {live_r3.url}/docs" in banner
    assert re.search(r"trainer     `r3 train` runs beside this server \(pid \d+\)", banner)
    assert "data        " in banner and "r3.db" in banner


def test_models_lists_r3_and_retrieves_it(live_r3: LiveR3) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{live_r3.url}/v1", api_key="unused")
    listed = [model.id for model in client.models.list()]
    assert listed[:3] == ["SmolLM2-135M-Instruct", "r3", "base"]
    assert client.models.retrieve("r3").id == "r3"


def test_docs_are_served_with_their_own_assets(live_r3: LiveR3) -> None:
    """Swagger UI's script and style come from this server, so /docs works offline."""
    page = httpx.get(f"{live_r3.url}/docs").text
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page)
    assert len(assets) == 2 and all(asset.startswith("/") for asset in assets), assets
    for asset in assets:
        answer = httpx.get(f"{live_r3.url}{asset}")
        assert answer.status_code == 200 and len(answer.content) > 10_000
    assert "cdn" not in page.lower()


def test_episodes_made_before_the_first_key_say_why_a_key_cannot_read_them(live_r3: LiveR3) -> None:
    """Open mode records episodes for no tenant: after `r3 keys create`, a key's 404 says so."""
    answer = httpx.post(f"{live_r3.url}/v1/chat/completions", timeout=EXAMPLE_TIMEOUT_S, json={
        "model": "r3", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0,
        "verifier": {"type": "regex", "pattern": "(?s).*"}}).json()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("R3_")}, "PYTHONPATH": str(REPO),
           "R3_DATA_DIR": str(live_r3.log.parent / "data")}
    created = subprocess.run([sys.executable, "-m", "r3", "keys", "create", "--name", "first"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert created.returncode == 0, created.stderr
    assert "Episodes recorded before it belong to no key" in " ".join(created.stderr.split())
    missing = httpx.get(f"{live_r3.url}/v1/episodes/{answer['r3']['episode_id']}",
                        headers={"Authorization": f"Bearer {created.stdout.strip()}"})
    assert missing.status_code == 404
    assert "episodes recorded before the first API key was created belong to no key" in missing.text
    assert httpx.get(f"{live_r3.url}/v1/models").status_code == 401  # closed at once, loopback too


def test_the_trainer_runs_beside_the_server_and_stops_with_it(live_r3: LiveR3) -> None:
    """Last in this module: it stops the server."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    asked = httpx.post(f"{live_r3.url}/admin/train", headers=admin, timeout=60).json()
    trainer = asked["trainer"]
    assert trainer["running"] is True and trainer["log"].endswith("trainer.log"), trainer
    os.kill(trainer["pid"], 0)  # alive
    live_r3.process.send_signal(signal.SIGINT)  # Ctrl-C
    assert live_r3.process.wait(120) == 128 + signal.SIGINT  # uvicorn shuts down, then exits as Ctrl-C'd
    assert "Application shutdown complete" in live_r3.log.read_text(errors="replace")
    with pytest.raises(ProcessLookupError):  # the server stopped (and reaped) its trainer before it exited
        os.kill(trainer["pid"], 0)
