"""The replay file: JSON Lines, one task per line.

    {"id": "weather-1", "category": "simple",
     "request": {"messages": [...], "tools": [...], "verifier": {"type": "tool_call", ...}}}

`id` names the task (unique in the file; a replay resumes by it). `category` groups the report; when
it is absent the verifier's task kind does (`function_calling`, `countdown`, ...). `request` is the
body of `POST /v1/chat/completions` as R3 takes it, `verifier` required; `model` may be left out
(replay sends `r3`, the active adapter, unless told otherwise), `stream` may not be true.

Whatever a file holds, reading it (and converting a dataset's records) either gives tasks or raises
`TaskFileError` naming the file and line: text that is not UTF-8, a line that is not JSON (or holds
NaN or an infinity, which JSON has not, or nests too deep to read), a record of the wrong shape.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ConfigDict, Field, ValidationError, field_validator

from verifiers import parse_spec
from verifiers.base import ClientInput, validation_message
from verifiers.json_text import finite_float


class TaskFileError(Exception):
    """A task or record file cannot be read; the message names the file and line."""


class Record(NamedTuple):
    """A dataset's record, and where it is: `where` is `FILE:LINE` (JSON Lines) or `FILE:LINE: record N`
    (a JSON array, where several records may share a line); `number` counts records from 1."""

    where: str
    number: int
    value: dict[str, Any]


def record_error(where: str, error: Exception) -> TaskFileError:
    """`error`, met while making sense of the record at `where`, as the `TaskFileError` naming it."""
    if isinstance(error, TaskFileError):
        return error
    if isinstance(error, ValidationError):
        reason = _first_error(error)
    elif isinstance(error, RecursionError):
        reason = "nested too deeply to read"
    elif isinstance(error, ValueError):
        reason = str(error)
    else:  # a shape the converter did not expect: say what broke
        reason = f"cannot make sense of this record ({type(error).__name__}: {error})"
    return TaskFileError(f"{where}: {reason}")


class ReplayTask(ClientInput):
    model_config = ConfigDict(frozen=True)

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
        try:
            parse_spec(request["verifier"])
        except ValidationError as error:  # named from the request, as the server names it
            raise ValueError(f"request.verifier: {_spec_error(error)}") from None
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
        where = f"{path}:{line_number}"
        try:
            task = ReplayTask.model_validate(record)
        except Exception as error:  # noqa: BLE001 - whatever the line holds, the error names it
            raise record_error(where, error) from error
        if task.id in seen:
            raise TaskFileError(f"{where}: id {task.id!r} appears twice")
        seen.add(task.id)
        tasks.append(task)
    return tasks


def write_tasks(tasks: Iterable[ReplayTask], path: Path) -> None:
    with path.open("w", encoding="utf-8") as file:
        for task in tasks:
            file.write(task.model_dump_json(exclude_none=True) + "\n")


def numbered_records(path: Path) -> list[Record]:
    """A dataset's records, a JSON array (as xLAM ships) or JSON Lines (as BFCL ships, named .json),
    each with where it is (see `Record`). Raises `TaskFileError` naming the line
    of a record that cannot be read, or is not a JSON object."""
    data = _read_bytes(path)
    if data.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"["):
        text = _utf8(path, data)
        records = [Record(f"{path}:{line}: record {number}", number, value)
                   for number, (line, value) in enumerate(_array_items(path, text), start=1)]
    else:
        records = [Record(f"{path}:{line}", number, value)
                   for number, (line, value) in enumerate(_json_lines(path), start=1)]
    for record in records:
        if not isinstance(record.value, dict):
            raise TaskFileError(f"{record.where}: not a JSON object")
    return records


def loads(text: str) -> Any:
    """A JSON value, as JSON defines it: Python's extensions (NaN, Infinity) and numbers too large
    for a float (1e999) are refused (`ValueError`), as the server refuses them."""
    return _DECODER.decode(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=finite_float)
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TaskFileError(f"{path}: cannot be read: {error.strerror or error}") from error


def _utf8(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise TaskFileError(f"{path}:{line}: not UTF-8 text ({error.reason} at byte {error.start})") from error


def _not_json(error: Exception) -> str:
    if isinstance(error, RecursionError):
        return "not readable JSON: nested too deeply"
    reason = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
    return f"not valid JSON: {reason}"


def _array_items(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """The items of the JSON array `text`, each with the line it starts on, read one by one (so an
    item that cannot be read is named by its line)."""
    position = _WHITESPACE.match(text, 0).end() + 1  # past the "["
    line, counted = 1, 0
    position = _WHITESPACE.match(text, position).end()
    if text.startswith("]", position):
        position += 1
    else:
        while True:
            line += text.count("\n", counted, position)
            counted = position
            try:
                value, position = _DECODER.raw_decode(text, position)
            except (ValueError, RecursionError) as error:
                raise TaskFileError(f"{path}:{line}: {_not_json(error)}") from error
            yield line, value
            position = _WHITESPACE.match(text, position).end()
            if text.startswith(",", position):
                position = _WHITESPACE.match(text, position + 1).end()
            elif text.startswith("]", position):
                position += 1
                break
            else:
                line += text.count("\n", counted, position)
                raise TaskFileError(f"{path}:{line}: not valid JSON: expected , or ] after an item of the array")
    if _WHITESPACE.match(text, position).end() != len(text):
        line += text.count("\n", counted, position)
        raise TaskFileError(f"{path}:{line}: not valid JSON: text after the array's end")


def _json_lines(path: Path) -> Iterable[tuple[int, Any]]:
    """The JSON value of each non-blank line, with its number. Raises `TaskFileError` naming the line."""
    for line_number, raw in enumerate(_read_bytes(path).splitlines(), start=1):
        try:
            line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
        except UnicodeDecodeError as error:
            raise TaskFileError(f"{path}:{line_number}: not UTF-8 text ({error.reason} at byte {error.start} "
                                "of the line)") from error
        if line.strip():
            try:
                yield line_number, loads(line)
            except (ValueError, RecursionError) as error:
                raise TaskFileError(f"{path}:{line_number}: {_not_json(error)}") from error


def _spec_error(error: ValidationError) -> str:
    """A verifier spec's first error, its field named as the server names it (`ordered`, not
    `tool_call.ordered`: the location starts with the spec's type tag)."""
    first = max(error.errors(), key=lambda e: len(e.get("loc", ())))
    field = ".".join(str(part) for part in first.get("loc", ())[1:])
    message = validation_message(first)
    return f"{field}: {message}" if field else message


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = validation_message(first)
    return f"{where}: {message}" if where else message
