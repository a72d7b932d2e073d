"""Send replay tasks through a running R3 and keep each verdict.

Tasks go out as ordinary chat completions (so every one is recorded as an episode, and `r3 train`
learns from the failures like from live traffic), `concurrency` at a time. Each answer is appended
to the results log as it arrives; a task whose id is already there is not sent again, so an
interrupted replay resumes where it stopped. A request that fails (HTTP error, timeout) is reported
and left out of the log, so the next run retries it.
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


@dataclass(frozen=True)
class Failure:
    id: str
    error: str


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
        """Send the tasks not yet in the log; write and return the report (see `report.json` in the README)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        log = ResultsLog(self.out_dir / "results.jsonl")
        wanted = {task.id for task in tasks}
        done = {outcome.id for outcome in log.read()}
        pending = [task for task in tasks if task.id not in done]
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
                except httpx.HTTPError as error:
                    result = Failure(task.id, f"{type(error).__name__}: {error}")
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
            return Failure(task.id, f"HTTP {response.status_code}: {_error_message(response)}")
        r3 = response.json()["r3"]
        return Outcome(id=task.id, category=task.group, episode_id=r3["episode_id"],
                       verdicts=[attempt["success"] for attempt in r3["attempts"]],
                       latency_s=round(time.monotonic() - started, 3))


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
