"""Data out (`r3 export`): the store's episodes as datasets that `datasets.load_dataset` reads and TRL's
trainers take as they are, in TRL's conversational dataset types
(https://huggingface.co/docs/trl/dataset_formats):

- `sft` (language modeling, for `SFTTrainer`): an episode whose outcome passed (its first attempt, or a
  retry that rescued it) as `messages`, the request's messages followed by the answer that passed.
- `preference` (for `DPOTrainer`): a rescued episode (its first attempt failed, its last passed) as
  `prompt` (the request's messages), `chosen` (the passing retry) and `rejected` (the failed first
  attempt), each a list of messages. The reflection that came between is left out: the pair teaches
  answering as the retry did, from the request alone.
- `prompts` (prompt-only): a request whose first attempt failed its verifier, as `prompt` with the
  verifier's spec, for reinforcement learning elsewhere (`GRPOTrainer` hands such extra columns to its
  reward functions).
- `episodes`: every episode whole, one record each.

`record_of` makes a record from an `Episode`; `arrow_schema` gives each format's columns, which
docs/guides/export.md documents. Messages are OpenAI chat messages as R3's chat rendering
(`r3.chat_format`) reads them: `content` is text ("" for none, text parts joined), a `developer`
message is a `system` one, tool calls are `{"id", "type": "function", "function": {"name",
"arguments"}}` with `arguments` JSON text. A value whose shape differs from record to record (tools'
JSON Schemas, a verifier spec, sampling, tool_choice) is JSON text, so that every record of a file has
one Arrow schema; TRL reads a `tools` column of JSON text as it reads a list.

An episode recorded with `store: false` kept no text: it makes no `sft`, `preference` or `prompts`
record (the report counts it), and its `episodes` record has null `messages`, `tools`, `content`,
`tool_calls`, `token_ids`, `logprobs` and `reflection`.

`export` streams the store to a file in pages of `page_size` episodes, newest first, in constant
memory, as of its start (episodes recorded later are not in it). The file is written as
`OUT.partial` and renamed to OUT when complete, so no file named OUT is ever half written. JSON
Lines are resumable: after each page the text is synced and `OUT.resume` records the last episode
written and the file's length; `resume=True` continues from there (cutting off what a killed run
wrote after it). Parquet (one row group a page) is written whole, or again from the start.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from r3.chat_format import message_text
from r3.episodes import AttemptRecord, Episode
from r3.reflection import assistant_message
from r3.store.fast_json import dumps

if TYPE_CHECKING:
    import pyarrow as pa

    from r3.store.sql import EpisodeFilter, SqlEpisodeStore

PAGE_SIZE = 500  # episodes read from the store at a time (and a Parquet row group)


class ExportFormat(StrEnum):
    sft = "sft"
    preference = "preference"
    prompts = "prompts"
    episodes = "episodes"


class ExportError(Exception):
    """An export that cannot go on as asked (the unfinished one it would resume is another)."""


# ---------------------------------------------------------------------------------------------- records


def chat_message(message: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI message as the exported conversations hold it (the module's docstring says how)."""
    out: dict[str, Any] = {"role": "system" if message["role"] == "developer" else message["role"],
                           "content": message_text(message.get("content"))}
    if message.get("name"):
        out["name"] = message["name"]
    if message.get("tool_calls"):
        out["tool_calls"] = _tool_calls(message["tool_calls"])
    if message.get("tool_call_id"):
        out["tool_call_id"] = message["tool_call_id"]
    return out


def _tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": call.get("id", ""), "type": "function",
             "function": {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}}
            for call in calls]


def _answer(attempt: AttemptRecord) -> dict[str, Any]:
    return chat_message(assistant_message(attempt.content, attempt.tool_calls))


def _json(value: Any) -> str | None:
    return None if value is None else dumps(value)


def _trainable(episode: Episode) -> bool:
    """Whether its answers may be learnt from: text kept, and answered (the trainer, too, never
    learns from an episode whose client hung up)."""
    return episode.store_text and bool(episode.attempts) and not episode.abandoned


def sft_record(episode: Episode) -> dict[str, Any] | None:
    """`messages` (the request's, then the answer that passed), `tools`, the `episode_id` and the
    `attempt` (1: passed the first time; more: rescued by that retry); None unless its outcome passed."""
    if not _trainable(episode) or episode.outcome is not True:
        return None
    answer = episode.latest
    return {"messages": [*map(chat_message, episode.messages), _answer(answer)], "tools": _json(episode.tools),
            "episode_id": episode.id, "attempt": answer.number}


def preference_record(episode: Episode) -> dict[str, Any] | None:
    """`prompt`, `chosen` (the passing last attempt), `rejected` (the failed first attempt), `tools`,
    the `episode_id`; None unless the episode was rescued."""
    if not _trainable(episode) or episode.attempts[0].passed is not False or episode.outcome is not True:
        return None
    return {"prompt": [*map(chat_message, episode.messages)], "chosen": [_answer(episode.latest)],
            "rejected": [_answer(episode.attempts[0])], "tools": _json(episode.tools), "episode_id": episode.id}


def prompt_record(episode: Episode) -> dict[str, Any] | None:
    """`prompt`, `tools`, the `verifier` spec (JSON text) and `task_kind` that judge an answer, the
    `scenario`, `category`, whether a retry `rescued` it, the `episode_id`; None unless its first
    attempt failed a verifier (not client feedback alone: there would be nothing to judge with)."""
    if not episode.store_text or not episode.attempts or episode.verifier is None:
        return None
    if episode.attempts[0].passed is not False:
        return None
    return {"prompt": [*map(chat_message, episode.messages)], "tools": _json(episode.tools),
            "verifier": _json(episode.verifier), "task_kind": episode.task_kind, "scenario": episode.scenario,
            "category": episode.category, "rescued": episode.outcome is True, "episode_id": episode.id}


def episode_record(episode: Episode) -> dict[str, Any]:
    """Everything the store holds of the episode (docs/guides/export.md lists the fields)."""
    return {
        "id": episode.id, "created_at": episode.created_at, "tenant": episode.tenant, "scenario": episode.scenario,
        "category": episode.category, "canary": episode.canary, "model": episode.model,
        "adapter": episode.adapter or "base", "task_kind": episode.task_kind, "verifier": _json(episode.verifier),
        "store_text": episode.store_text,
        "messages": None if episode.messages is None else [*map(chat_message, episode.messages)],
        "tools": _json(episode.tools), "tool_choice": _json(episode.tool_choice), "sampling": _json(episode.sampling),
        "outcome": episode.outcome, "attempts": [_attempt_record(a) for a in episode.attempts],
    }


def _attempt_record(attempt: AttemptRecord) -> dict[str, Any]:
    feedback = attempt.feedback
    return {
        "number": attempt.number, "completion_id": attempt.completion_id, "finish_reason": attempt.finish_reason,
        "prompt_tokens": attempt.prompt_tokens, "completion_tokens": attempt.completion_tokens,
        "latency_s": attempt.latency_s, "content": attempt.content,
        "tool_calls": _tool_calls(attempt.tool_calls) if attempt.tool_calls else None,
        "token_ids": attempt.token_ids, "logprobs": attempt.logprobs, "reflection": attempt.reflection,
        "reflection_tokens": attempt.reflection_tokens, "success": attempt.success, "score": attempt.score,
        "detail": attempt.detail,
        "feedback": {"success": feedback.success, "score": feedback.score, "detail": feedback.detail,
                     "received_at": feedback.received_at} if feedback else None,
        "passed": attempt.passed, "graded": attempt.graded, "judge_calls": attempt.judge_calls,
        "judge_prompt_tokens": attempt.judge_prompt_tokens, "judge_completion_tokens": attempt.judge_completion_tokens,
    }


RECORDS: dict[ExportFormat, Callable[[Episode], dict[str, Any] | None]] = {
    ExportFormat.sft: sft_record, ExportFormat.preference: preference_record,
    ExportFormat.prompts: prompt_record, ExportFormat.episodes: episode_record,
}


def record_of(format: ExportFormat, episode: Episode) -> dict[str, Any] | None:
    """The episode's record in `format`, or None when the format holds no record of it."""
    return RECORDS[format](episode)


def arrow_schema(format: ExportFormat) -> pa.Schema:
    """The columns of a `format` file, as Parquet stores them (`datasets` reads JSON Lines to the same,
    but that a struct field no record of the file has is missing, not null)."""
    import pyarrow as pa

    call = pa.struct([("id", pa.string()), ("type", pa.string()),
                      ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())]))])
    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string()), ("name", pa.string()),
                                   ("tool_calls", pa.list_(call)), ("tool_call_id", pa.string())]))
    if format is ExportFormat.sft:
        return pa.schema([("messages", messages), ("tools", pa.string()), ("episode_id", pa.string()),
                          ("attempt", pa.int64())])
    if format is ExportFormat.preference:
        return pa.schema([("prompt", messages), ("chosen", messages), ("rejected", messages), ("tools", pa.string()),
                          ("episode_id", pa.string())])
    if format is ExportFormat.prompts:
        return pa.schema([("prompt", messages), ("tools", pa.string()), ("verifier", pa.string()),
                          ("task_kind", pa.string()), ("scenario", pa.string()), ("category", pa.string()),
                          ("rescued", pa.bool_()), ("episode_id", pa.string())])
    feedback = pa.struct([("success", pa.bool_()), ("score", pa.float64()), ("detail", pa.string()),
                          ("received_at", pa.float64())])
    attempt = pa.struct([
        ("number", pa.int64()), ("completion_id", pa.string()), ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("latency_s", pa.float64()),
        ("content", pa.string()), ("tool_calls", pa.list_(call)), ("token_ids", pa.list_(pa.int64())),
        ("logprobs", pa.list_(pa.float64())), ("reflection", pa.string()), ("reflection_tokens", pa.int64()),
        ("success", pa.bool_()), ("score", pa.float64()), ("detail", pa.string()), ("feedback", feedback),
        ("passed", pa.bool_()), ("graded", pa.float64()), ("judge_calls", pa.int64()),
        ("judge_prompt_tokens", pa.int64()), ("judge_completion_tokens", pa.int64())])
    return pa.schema([
        ("id", pa.string()), ("created_at", pa.float64()), ("tenant", pa.string()), ("scenario", pa.string()),
        ("category", pa.string()), ("canary", pa.bool_()), ("model", pa.string()), ("adapter", pa.string()),
        ("task_kind", pa.string()), ("verifier", pa.string()), ("store_text", pa.bool_()), ("messages", messages),
        ("tools", pa.string()), ("tool_choice", pa.string()), ("sampling", pa.string()), ("outcome", pa.bool_()),
        ("attempts", pa.list_(attempt))])


# ---------------------------------------------------------------------------------------------- the writer


@dataclass
class ExportProgress:
    """Where an export stands: `episodes` of `total` read (those of a resumed run's earlier runs too),
    `records` written, `without_text` episodes read that were recorded with `store: false`."""

    total: int
    episodes: int = 0
    records: int = 0
    without_text: int = 0
    resumed: bool = False  # it continued an unfinished export


def partial_path(out: Path) -> Path:
    """Where the file is written until it is complete."""
    return out.with_name(out.name + ".partial")


def resume_path(out: Path) -> Path:
    """Where a JSON Lines export records how far it got (`export`'s docstring)."""
    return out.with_name(out.name + ".resume")


def selection(format: ExportFormat, where: EpisodeFilter) -> EpisodeFilter:
    """The episodes to read for `format`: those `where` admits, narrowed in the database where the
    format allows (`sft` and `preference` need an outcome that passed)."""
    if format in (ExportFormat.sft, ExportFormat.preference) and where.outcome is None:
        return dataclasses.replace(where, outcome=True)
    return where


async def export(episodes: SqlEpisodeStore, out: Path, format: ExportFormat, where: EpisodeFilter, *,
                 parquet: bool = False, resume: bool = False, page_size: int = PAGE_SIZE,
                 progress: Callable[[ExportProgress], None] = lambda _: None) -> ExportProgress:
    """Write the `format` records of the episodes `where` admits (its times timezone-aware) to `out`
    (JSON Lines, or Parquet), reading `page_size` episodes at a time, calling `progress` after each
    page; returns the totals.

    With `resume`, an unfinished JSON Lines export to `out` of the same format and filters goes on
    where it stopped (none: it starts afresh). Raises `ExportError` when the unfinished one differs,
    or when asked to resume Parquet."""
    if resume and parquet:
        raise ExportError("a Parquet export cannot be resumed (it is written whole): run it again without --resume")
    partial, state_file = partial_path(out), resume_path(out)
    filters = {name: value.isoformat() if isinstance(value, datetime) else value
               for name, value in dataclasses.asdict(where).items()}
    state = _unfinished(state_file, partial) if resume else None
    if state is not None and (state["format"], state["filters"]) != (format.value, filters):
        raise ExportError(f"the unfinished export to {out} is of {state['format']} with filters "
                          f"{_described(state['filters'])}, not of {format.value} with {_described(filters)}: "
                          "run it again with those, or without --resume to start over")
    state_file.unlink(missing_ok=True)  # until this run has synced a page of its own
    as_of = datetime.fromisoformat(state["as_of"]) if state else datetime.now(UTC)
    reading = selection(format, where)
    reading = dataclasses.replace(reading, until=min(reading.until, as_of) if reading.until else as_of)
    done = ExportProgress(total=await episodes.count(reading), resumed=state is not None)
    after = None
    if state is not None:
        done.episodes, done.records, done.without_text = state["episodes"], state["records"], state["without_text"]
        after = (datetime.fromisoformat(state["after"][0]), state["after"][1])
    writer = (_ParquetWriter(partial, arrow_schema(format)) if parquet
              else _JsonLinesWriter(partial, state["bytes"] if state else None))
    progress(done)
    try:
        while True:
            page = await episodes.list(reading, page_size, after)
            records = []
            for episode in page:
                done.without_text += not episode.store_text
                if (record := record_of(format, episode)) is not None:
                    records.append(record)
            writer.write(records)
            done.episodes += len(page)
            done.records += len(records)
            if page:
                last = page[-1]
                after = (datetime.fromtimestamp(last.created_at, UTC), last.id)
                if not parquet:
                    _write_state(state_file, {
                        "format": format.value, "filters": filters, "as_of": as_of.isoformat(),
                        "after": [after[0].isoformat(), after[1]], "bytes": writer.sync(), "episodes": done.episodes,
                        "records": done.records, "without_text": done.without_text})
            progress(done)
            if len(page) < page_size:
                break
        writer.close()
    except BaseException:
        writer.abandon()
        raise
    os.replace(partial, out)
    state_file.unlink(missing_ok=True)
    return done


def _unfinished(state_file: Path, partial: Path) -> dict[str, Any] | None:
    """What `state_file` says of the unfinished export in `partial`; None when there is none to go on with."""
    if not partial.exists() or not state_file.exists():
        return None
    state = json.loads(state_file.read_text(encoding="utf-8"))
    return state if partial.stat().st_size >= state["bytes"] else None  # shorter: not the file it describes


def _described(filters: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value}" for name, value in filters.items() if value is not None) or "none"


def _write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace the state file whole (a reader never sees half of one)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(state), encoding="utf-8")
    os.replace(temporary, path)


class _JsonLinesWriter:
    """One record a line, appended; `start`: the length of an unfinished file to go on from."""

    def __init__(self, path: Path, start: int | None) -> None:
        if start is None:
            self.file = path.open("wb")
        else:
            self.file = path.open("r+b")
            self.file.truncate(start)  # what a killed run wrote after its last synced page
            self.file.seek(start)

    def write(self, records: list[dict[str, Any]]) -> None:
        self.file.write("".join(dumps(record) + "\n" for record in records).encode())

    def sync(self) -> int:
        """Make what is written durable; its length in bytes."""
        self.file.flush()
        os.fsync(self.file.fileno())
        return self.file.tell()

    def close(self) -> None:
        self.sync()
        self.file.close()

    def abandon(self) -> None:
        self.file.close()  # kept, with its state file, for a resume


class _ParquetWriter:
    def __init__(self, path: Path, schema: pa.Schema) -> None:
        import pyarrow.parquet as pq

        self.path, self.schema = path, schema
        self.writer = pq.ParquetWriter(path, schema)

    def write(self, records: list[dict[str, Any]]) -> None:
        if records:
            import pyarrow as pa

            self.writer.write_table(pa.Table.from_pylist(records, schema=self.schema))  # one row group

    def close(self) -> None:
        self.writer.close()
        with self.path.open("rb") as written:
            os.fsync(written.fileno())

    def abandon(self) -> None:
        self.writer.close()
        self.path.unlink(missing_ok=True)  # cannot be continued
