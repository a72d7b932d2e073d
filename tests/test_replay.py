"""`r3 replay` end to end: the CLI against a real R3 on the bundled model, judged by deterministic verifiers
(the 135M model's answers vary; what is measured here is the counting, the resume and the recording)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from support import ThreadedServer
from typer.testing import CliRunner

from r3.cli.main import app
from r3.settings import Settings
from server.app import create_app

SAY_HI = [{"role": "user", "content": "Say hi."}]


class RescueWebhook:
    """A verifier that fails every first attempt and passes every retry; counts what it judged."""

    def __init__(self) -> None:
        self.judged = 0
        self.app = FastAPI()

        @self.app.post("/judge")
        async def judge(request: Request) -> dict:
            self.judged += 1
            return {"success": (await request.json())["attempt"] > 1, "detail": "say it again"}


@pytest.fixture(scope="module")
def webhook():
    hook = RescueWebhook()
    with ThreadedServer(hook.app) as url:
        hook.url = f"{url}/judge"
        yield hook


@pytest.fixture(scope="module")
def r3_url(model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(webhook_allow_loopback=True, default_max_tokens=2, reflection_max_tokens=4,
                        models_dir=model_path.parent, data_dir=tmp_path_factory.mktemp("r3-data"))
    with ThreadedServer(create_app(settings)) as url:
        yield url


def task(task_id: str, verifier: dict, category: str | None = None, **request) -> dict:
    line = {"id": task_id, "request": {"messages": SAY_HI, "verifier": verifier, **request}}
    return {**line, "category": category} if category else line


def write(path: Path, tasks: list[dict]) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return path


def replay(*args: str):
    return CliRunner().invoke(app, ["replay", *args], catch_exceptions=False)


def counts(report: dict, category: str) -> tuple[int, int, int]:
    row = report["categories"][category]
    return row["first"]["k"], row["second"]["k"], row["n"]


def test_replay_counts_resumes_and_records(r3_url: str, webhook: RescueWebhook, tmp_path: Path) -> None:
    anything, nothing = {"type": "regex", "pattern": "(?s).*"}, {"type": "regex", "pattern": "(?!)"}
    tasks = write(tmp_path / "tasks.jsonl", [
        task("easy-1", anything, "easy"), task("easy-2", anything, "easy"),
        task("hard-1", nothing, "hard"),
        task("rescue-1", {"type": "webhook", "url": webhook.url}, "rescue"),
        task("no-call-1", {"type": "tool_call", "expected": []}),  # no category: its task kind counts
    ])
    out = tmp_path / "out"
    result = replay(str(tasks), "--url", r3_url, "--out", str(out), "--concurrency", "2")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert (report["tasks"], report["answered"], report["sent"], report["resumed"]) == (5, 5, 5, 0)
    assert report["errors"] == []
    assert counts(report, "easy") == (2, 2, 2)
    assert counts(report, "hard") == (0, 0, 1)
    assert counts(report, "rescue") == (0, 1, 1)
    assert counts(report, "function_calling") == (1, 1, 1)
    assert counts(report, "all") == (3, 4, 5)
    assert report["categories"]["rescue"]["second"]["ci95"] == pytest.approx([0.2065, 1.0], abs=1e-4)
    assert "second attempt" in result.output and "rescue" in result.output

    # Failures are episodes like live traffic: the trainer finds them in the store.
    log = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    hard = next(outcome for outcome in log if outcome["id"] == "hard-1")
    assert hard["verdicts"] == [False, False]
    episode = httpx.get(f"{r3_url}/v1/episodes/{hard['episode_id']}").json()
    assert episode["outcome"] is False and [a["success"] for a in episode["attempts"]] == [False, False]
    assert episode["messages"] == SAY_HI and episode["verifier"]["pattern"] == "(?!)"

    # Resumable by id: a second run sends nothing; a task missing from the log is sent again.
    judged = webhook.judged
    replay(str(tasks), "--url", r3_url, "--out", str(out))
    report = json.loads((out / "report.json").read_text())
    assert (report["sent"], report["resumed"], webhook.judged) == (0, 5, judged)
    kept = "".join(json.dumps(o) + "\n" for o in log if o["id"] != "rescue-1")
    (out / "results.jsonl").write_text(kept + '{"id": "rescue-1", "categ')  # as a killed run can leave it
    replay(str(tasks), "--url", r3_url, "--out", str(out))
    report = json.loads((out / "report.json").read_text())
    assert (report["sent"], report["resumed"], report["answered"], webhook.judged) == (1, 4, 5, judged + 2)
    assert counts(report, "all") == (3, 4, 5)


def test_requests_the_server_refuses_are_reported_and_retried_next_time(r3_url: str, tmp_path: Path) -> None:
    tasks = write(tmp_path / "tasks.jsonl", [task("ok", {"type": "regex", "pattern": "(?s).*"}),
                                             task("refused", {"type": "regex", "pattern": "x"}, max_tokens=0)])
    out = tmp_path / "out"
    result = replay(str(tasks), "--url", r3_url, "--out", str(out))
    assert result.exit_code == 1
    report = json.loads((out / "report.json").read_text())
    (error,) = report["errors"]
    assert error["id"] == "refused" and error["error"].startswith("HTTP 400: ")
    assert report["answered"] == 1 and "not answered: refused" in result.output
    assert [json.loads(line)["id"] for line in (out / "results.jsonl").read_text().splitlines()] == ["ok"]


def test_a_malformed_task_file_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    tasks = write(tmp_path / "tasks.jsonl", [task("a", {"type": "regex"})])
    result = replay(str(tasks), "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and "tasks.jsonl:1" in result.output


BFCL_QUESTION = {"id": "simple_python_0", "question": [[{"role": "user", "content": "Area of a 10 by 5 triangle?"}]],
                 "function": [{"name": "calculate_triangle_area", "description": "Area.", "parameters": {
                     "type": "dict", "required": ["base"], "properties": {"base": {"type": "integer"}}}}]}


@pytest.mark.parametrize(("source", "records", "answers", "where"), [
    ("xlam", [{"id": 1, "query": "q", "tools": json.dumps([{"name": "f", "parameters": []}]), "answers": "[]"}],
     None, "x.json:1"),
    ("bfcl", [BFCL_QUESTION], [{"id": "simple_python_0", "ground_truth": {"a": 1}}], "a.json:1"),
    ("bfcl", [BFCL_QUESTION], [{"id": "simple_python_0", "ground_truth": [{"calculate_triangle_area": {"base": 10}}]}],
     "a.json:1"),
    ("bfcl", [BFCL_QUESTION], None, "x.json:1"),  # not an irrelevance category: the answers are needed
    ("r3", b'{"id": "\xff"}\n', None, "x.json:1"),
    ("r3", b"[" * 100_000 + b"\n", None, "x.json:1"),
])
def test_a_file_replay_cannot_make_sense_of_is_an_error_naming_its_line(tmp_path: Path, source: str, records,
                                                                       answers, where: str) -> None:
    """Never a traceback: `error: FILE:LINE: ...` and exit status 1, before anything is sent."""
    path = tmp_path / "x.json"
    path.write_bytes(records if isinstance(records, bytes) else b"".join(json.dumps(r).encode() + b"\n"
                                                                         for r in records))
    extra = ["--answers", str(write(tmp_path / "a.json", answers))] if answers else []
    result = CliRunner().invoke(app, ["replay", str(path), "--from", source, *extra, "--url", "http://127.0.0.1:9",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    output = "".join(result.output.split())  # rich wraps long lines, even inside a path
    assert output.startswith("error:") and f"{where}:" in output and "Traceback" not in output, result.output


def test_serve_starts_a_server_for_the_replay(model_path: Path, tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    for name, value in {"R3_DATA_DIR": str(data), "R3_MODELS_DIR": str(model_path.parent),
                        "R3_DEFAULT_MAX_TOKENS": "2"}.items():
        monkeypatch.setenv(name, value)
    tasks = write(tmp_path / "tasks.jsonl", [task("one", {"type": "regex", "pattern": "(?s).*"})])
    out = tmp_path / "out"
    result = replay(str(tasks), "--serve", "--out", str(out))
    assert result.exit_code == 0, result.output + (out / "server.log").read_text()
    report = json.loads((out / "report.json").read_text())
    assert report["answered"] == 1 and counts(report, "generic") == (1, 1, 1)
    assert (data / "r3.db").exists()  # recorded in the store R3_DATA_DIR names, where `r3 train` looks
