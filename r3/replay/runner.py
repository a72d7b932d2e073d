"""Send replay tasks through a running R3 and keep each verdict.

Tasks go out as ordinary chat completions (so every one is recorded as an episode, and `r3 train`
learns from the failures like from live traffic), `concurrency` at a time. Each answer is appended
to the results log as it arrives; a task whose id is already there is not sent again, so an
interrupted replay resumes where it stopped. A request that fails (HTTP error, timeout) is reported
with what to do about it, and left out of the log, so the next run retries it. A server that cannot
be reached, or refuses the key, stops the replay before any task is sent (`ReplayRefused`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from r3.replay.report import Outcome, summarize
from r3.replay.tasks import ReplayTask

DEFAULT_MODEL = "r3"  # the active adapter version


KEY_REMEDY = "pass a key: --api-key KEY or R3_API_KEY=KEY (`r3 keys create --name replay` makes one)"


class ReplayRefused(RuntimeError):
    """The server cannot be reached, or refuses the key: no task was sent. The message says what to do."""


@dataclass(frozen=True)
class Failure:
    """A task the server did not answer: what happened and what to do about it."""

    id: str
    error: str
    remedy: str


class ResultsLog:
    """The resume log: JSON Lines, one `Outcome` per answered task."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[Outcome]:
        if not self.path.exists():
            return []
        outcomes = []
        with self.path.open(encoding="utf-8") as file:
            for line in file:
                try:
                    outcomes.append(Outcome(**json.loads(line)))
                except (ValueError, TypeError):  # a line cut short by an interrupted run: that task is sent again
                    continue
        return outcomes

    def append(self, outcome: Outcome) -> None:
        line = json.dumps(asdict(outcome)).encode() + b"\n"
        with self.path.open("ab+") as file:  # appends go to the end whatever the read position
            size = file.seek(0, os.SEEK_END)
            if size:
                file.seek(size - 1)
                if file.read(1) != b"\n":  # an interrupted run cut its last line short: start past it
                    line = b"\n" + line
            file.write(line)


@dataclass(frozen=True)
class Replay:
    """Where and how to send the tasks. `model`, when set, overrides each request's."""

    url: str
    out_dir: Path
    concurrency: int
    timeout_s: float
    model: str | None = None
    api_key: str | None = None

    def run(self, tasks: list[ReplayTask], console: Console) -> dict[str, Any]:
        """Send the tasks not yet in the log; write and return the report (see `report.json` in docs/guides/replay.md).

        Raises `ReplayRefused` before sending anything when the server is unreachable or refuses the key."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        log = ResultsLog(self.out_dir / "results.jsonl")
        wanted = {task.id for task in tasks}
        done = {outcome.id for outcome in log.read()}
        pending = [task for task in tasks if task.id not in done]
        if pending:
            self._check_access()
        started = time.monotonic()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task("replay", total=len(pending))
            counts = {"first": 0, "second": 0, "answered": 0}

            def advance(result: Outcome | Failure) -> None:
                if isinstance(result, Outcome):
                    counts["first"] += result.first
                    counts["second"] += result.second
                    counts["answered"] += 1
                n = counts["answered"] or 1
                progress.update(bar, advance=1, description=f"first {counts['first'] / n:.0%} · "
                                                            f"second {counts['second'] / n:.0%}")

            failures = asyncio.run(self._send_all(pending, log, advance))
        outcomes = [outcome for outcome in log.read() if outcome.id in wanted]
        report = {"url": self.url, "model": self.model, "tasks": len(tasks), "answered": len(outcomes),
                  "resumed": len(done & wanted), "sent": len(pending), "wall_s": round(time.monotonic() - started, 2),
                  "errors": [asdict(failure) for failure in failures], "categories": summarize(outcomes)}
        (self.out_dir / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        return report

    async def _send_all(self, tasks: list[ReplayTask], log: ResultsLog,
                        advance: Callable[[Outcome | Failure], None]) -> list[Failure]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        failures: list[Failure] = []
        queue: Iterator[ReplayTask] = iter(tasks)  # shared by the workers: each takes the next task

        async def worker(client: httpx.AsyncClient) -> None:
            for task in queue:
                try:
                    result: Outcome | Failure = await self._send(client, task)
                except httpx.TimeoutException as error:  # its own message is often empty
                    result = Failure(task.id, f"no answer within --timeout-s {self.timeout_s:g} s "
                                     f"({type(error).__name__})", "raise --timeout-s, send fewer at once "
                                     "(--concurrency), or give the tasks a smaller max_tokens: on a CPU one request "
                                     "with its retries can take minutes")
                except httpx.HTTPError as error:
                    result = Failure(task.id, f"{type(error).__name__}: {error or 'no message'}",
                                     "check that the server still runs (its log says why it stopped)")
                if isinstance(result, Outcome):
                    log.append(result)
                else:
                    failures.append(result)
                advance(result)

        async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=self.timeout_s) as client:
            await asyncio.gather(*(worker(client) for _ in range(self.concurrency)))
        return failures

    async def _send(self, client: httpx.AsyncClient, task: ReplayTask) -> Outcome | Failure:
        body = {"model": DEFAULT_MODEL, **task.request}
        if self.model is not None:
            body["model"] = self.model
        started = time.monotonic()
        response = await client.post("/v1/chat/completions", json=body)
        if response.status_code != 200:
            return Failure(task.id, f"HTTP {response.status_code}: {_error_message(response)}",
                           _remedy(response.status_code))
        r3 = response.json()["r3"]
        return Outcome(id=task.id, category=task.group, episode_id=r3["episode_id"],
                       verdicts=[attempt["success"] for attempt in r3["attempts"]],
                       latency_s=round(time.monotonic() - started, 3))


    def _check_access(self) -> None:
        """One request before the tasks: a server that is not there, or refuses the key, is said once."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            response = httpx.get(f"{self.url}/v1/models", headers=headers, timeout=30)
        except httpx.HTTPError as error:
            raise ReplayRefused(f"nothing answers at {self.url} ({type(error).__name__}: {error or 'no message'}): "
                                "start `r3 serve`, pass --url, or add --serve") from error
        if response.status_code == 401:
            raise ReplayRefused(f"{self.url} refused the key ({_error_message(response)}): {KEY_REMEDY}")


def _remedy(status: int) -> str:
    """What to do about a task the server answered with `status`."""
    if status in (401, 403):
        return KEY_REMEDY
    return {400: "the server refused the task as written: correct the task (the message names the field)",
            404: "the model is not served: pass --model, or see GET /v1/models",
            413: "the request is over the server's R3_MAX_REQUEST_BYTES",
            429: "the server is busy: run again later (answered tasks are not sent again)",
            503: "the server cannot record episodes now: run again later (answered tasks are not sent again)",
            }.get(status, "the server failed: its log says why (with --serve: server.log in --out)")


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
