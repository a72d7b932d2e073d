"""The replay file: JSON Lines, one task per line.

    {"id": "weather-1", "category": "simple",
     "request": {"messages": [...], "tools": [...], "verifier": {"type": "tool_call", ...}}}

`id` names the task (unique in the file; a replay resumes by it). `category` groups the report; when
it is absent the verifier's task kind does (`function_calling`, `countdown`, ...). `request` is the
body of `POST /v1/chat/completions` as R3 takes it, `verifier` required; `model` may be left out
(replay sends `r3`, the active adapter, unless told otherwise), `stream` may not be true.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from verifiers import parse_spec


class TaskFileError(Exception):
    """A task or record file cannot be read; the message names the file and line."""


class ReplayTask(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    category: str | None = None
    request: dict[str, Any]

    @field_validator("request")
    @classmethod
    def _a_judged_chat_request(cls, request: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(request.get("messages"), list) or not request["messages"]:
            raise ValueError("request.messages must be a non-empty list")
        if "verifier" not in request:
            raise ValueError("request.verifier is required: replay measures verdicts")
        if request.get("stream") is True:
            raise ValueError("request.stream must not be true: replay reads whole responses")
        parse_spec(request["verifier"])  # a ValidationError is a ValueError: pydantic reports it here
        return request

    @property
    def group(self) -> str:
        """The category it is counted in."""
        return self.category or parse_spec(self.request["verifier"]).task_kind


def read_tasks(path: Path) -> list[ReplayTask]:
    """The tasks of a replay file. Raises `TaskFileError` on a malformed line or a repeated id."""
    tasks: list[ReplayTask] = []
    seen: set[str] = set()
    for line_number, record in _json_lines(path):
        try:
            task = ReplayTask.model_validate(record)
        except ValidationError as error:
            raise TaskFileError(f"{path}:{line_number}: {_first_error(error)}") from error
        if task.id in seen:
            raise TaskFileError(f"{path}:{line_number}: id {task.id!r} appears twice")
        seen.add(task.id)
        tasks.append(task)
    return tasks


def write_tasks(tasks: Iterable[ReplayTask], path: Path) -> None:
    with path.open("w", encoding="utf-8") as file:
        for task in tasks:
            file.write(task.model_dump_json(exclude_none=True) + "\n")


def read_records(path: Path) -> list[dict[str, Any]]:
    """A dataset's records: a JSON array (as xLAM ships) or JSON Lines (as BFCL ships, named .json)."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise TaskFileError(f"{path}: not valid JSON: {error}") from error
        numbered = list(enumerate(records, start=1))
    else:
        numbered = list(_json_lines(path))
    for number, record in numbered:
        if not isinstance(record, dict):
            raise TaskFileError(f"{path}: record {number} is not a JSON object")
    return [record for _, record in numbered]


def _json_lines(path: Path) -> Iterable[tuple[int, Any]]:
    with path.open(encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            if line.strip():
                try:
                    yield line_number, json.loads(line)
                except json.JSONDecodeError as error:
                    raise TaskFileError(f"{path}:{line_number}: not valid JSON: {error}") from error


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]
