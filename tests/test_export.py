"""`r3 export`: episodes written through the real store (SQLite, and Postgres) come out as the
documented records, which `datasets` loads (JSON Lines and Parquet) and TRL's SFTTrainer and
DPOTrainer train on for a step; filters, `store: false`, streaming in pages, and an export that was
killed (never a complete-looking file; `--resume` finishes it)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from store_support import fresh_database, run_in_thread, shared_postgres_available

from r3.cli.export import Format
from r3.episodes import ABANDONED, AttemptRecord, Episode, Feedback
from r3.export import ExportError, ExportFormat, export, partial_path, resume_path
from r3.settings import Settings
from r3.store.sql import EpisodeFilter, SqlEpisodeStore
from r3.store.store import Store, open_store

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
TOOL_CALL_VERIFIER = {"type": "tool_call", "name": "get_weather", "arguments": {"city": "Paris"}}
EXACT = {"type": "exact", "expected": "42"}


def attempt(number: int, passed: bool | None, content: str | None = None, **fields: Any) -> AttemptRecord:
    return AttemptRecord(number=number, completion_id="", finish_reason=fields.pop("finish", "stop"),
                         prompt_tokens=10 * number, completion_tokens=3, latency_s=0.5 * number, content=content,
                         success=passed, score=None if passed is None else float(passed),
                         detail=None if passed is None else ("ok" if passed else "wrong"), **fields)


def episode(episode_id: str, offset_s: float, attempts: list[AttemptRecord], **fields: Any) -> Episode:
    values: dict[str, Any] = dict(tenant=None, model="r3", adapter=None, task_kind="math", verifier=EXACT,
                                  store_text=True, messages=[{"role": "user", "content": "What is 6 * 7?"}],
                                  tools=None, tool_choice=None, sampling={"max_tokens": 16, "temperature": 0.0})
    values.update(fields)
    for each in attempts:  # unique in the store
        each.completion_id = f"chatcmpl-{episode_id}-{each.number}"
    return Episode(id=episode_id, attempts=attempts, created_at=T0 + offset_s, revision=1, **values)


def recorded() -> list[Episode]:
    """One of each kind an export tells apart (newest first: the order of every export)."""
    return [
        # A tool call that passed the first time; a developer message and content in text parts.
        episode("ep_called", 60, [attempt(1, True, None, tool_calls=[CALL], token_ids=[5, 6], logprobs=[-0.5, -0.25])],
                task_kind="function_calling", verifier=TOOL_CALL_VERIFIER, tools=[WEATHER], tool_choice="auto",
                messages=[{"role": "developer", "content": "Use the tools."},
                          {"role": "user", "content": [{"type": "text", "text": "Weather in "},
                                                       {"type": "text", "text": "Paris?"}]}],
                tenant="tenant_a", adapter="r3-v2", category="weather"),
        # Rescued: wrong, reflected, right.
        episode("ep_rescued", 50, [attempt(1, False, "41"),
                                   attempt(2, True, "42", reflection="I multiplied wrong.", reflection_tokens=4)],
                category="arith"),
        # Failed twice.
        episode("ep_failed", 40, [attempt(1, False, "40"),
                                  attempt(2, False, "43", reflection="Try again.", reflection_tokens=2)]),
        # Rescued, but recorded with store: false: numbers only.
        episode("ep_private", 30, [attempt(1, False), attempt(2, True, reflection_tokens=3)], store_text=False,
                messages=None),
        # Rescued, but the client hung up before the answer went out.
        episode("ep_abandoned", 20, [attempt(1, False, "41"),
                                     attempt(2, True, "42", reflection="Again.", finish=ABANDONED)]),
        # No verifier: the client's feedback passed it.
        episode("ep_feedback", 10, [attempt(1, None, "Hello!", feedback=Feedback(True, "nice", T0 + 11, 0.75))],
                verifier=None, task_kind="generic", scenario="chat",
                messages=[{"role": "user", "content": "Say hello."}]),
    ]


# ------------------------------------------------------------------------------------- the stores


@pytest.fixture(scope="session")
def shared_postgres() -> None:
    if not shared_postgres_available():
        pytest.skip("no Postgres on 127.0.0.1:5432")


@pytest.fixture(scope="module")
def module_pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    from r3.store.database import migrate

    for url in fresh_database(request):
        run_in_thread(migrate, url)
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = request.getfixturevalue("module_pg_url") if request.param == "postgres" else None
    async with open_store(Settings(_env_file=None, data_dir=tmp_path / "data", database_url=url)) as opened:
        await opened.episodes.write(recorded())
        yield opened


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(Settings(_env_file=None, data_dir=tmp_path / "data")) as opened:
        await opened.episodes.write(recorded())
        yield opened


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def without_nulls(value: Any) -> Any:
    """`value` with every null dict entry left out: a JSON record as Arrow gives it back, where a
    struct field no record has is missing and one some records have is null in the others."""
    if isinstance(value, dict):
        return {key: without_nulls(v) for key, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def loaded(path: Path, parquet: bool, cache: Path) -> list[dict[str, Any]]:
    from datasets import load_dataset

    return load_dataset("parquet" if parquet else "json", data_files=str(path), split="train",
                        cache_dir=str(cache)).to_list()


# ------------------------------------------------------------------------------------- the records

USER_6X7 = {"role": "user", "content": "What is 6 * 7?"}
CALLED_MESSAGES = [{"role": "system", "content": "Use the tools."}, {"role": "user", "content": "Weather in Paris?"}]
CALLED_ANSWER = {"role": "assistant", "content": "", "tool_calls": [CALL]}

EXPECTED = {
    ExportFormat.sft: [
        {"messages": [*CALLED_MESSAGES, CALLED_ANSWER], "tools": json.dumps([WEATHER]), "episode_id": "ep_called",
         "attempt": 1},
        {"messages": [USER_6X7, {"role": "assistant", "content": "42"}], "tools": None, "episode_id": "ep_rescued",
         "attempt": 2},
        {"messages": [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello!"}],
         "tools": None, "episode_id": "ep_feedback", "attempt": 1},
    ],
    ExportFormat.preference: [
        {"prompt": [USER_6X7], "chosen": [{"role": "assistant", "content": "42"}],
         "rejected": [{"role": "assistant", "content": "41"}], "tools": None, "episode_id": "ep_rescued"},
    ],
    ExportFormat.prompts: [
        {"prompt": [USER_6X7], "tools": None, "verifier": json.dumps(EXACT), "task_kind": "math",
         "scenario": "default", "category": "arith", "rescued": True, "episode_id": "ep_rescued"},
        {"prompt": [USER_6X7], "tools": None, "verifier": json.dumps(EXACT), "task_kind": "math",
         "scenario": "default", "category": None, "rescued": False, "episode_id": "ep_failed"},
        {"prompt": [USER_6X7], "tools": None, "verifier": json.dumps(EXACT), "task_kind": "math",
         "scenario": "default", "category": None, "rescued": True, "episode_id": "ep_abandoned"},
    ],
}
JSON_TEXT = ("tools", "verifier", "tool_choice", "sampling")  # compared parsed: Postgres orders an object's keys


def parsed(record: dict[str, Any]) -> dict[str, Any]:
    return {key: json.loads(value) if key in JSON_TEXT and value is not None else value
            for key, value in record.items()}


@pytest.mark.parametrize("parquet", [False, True], ids=["jsonl", "parquet"])
@pytest.mark.parametrize("format", [ExportFormat.sft, ExportFormat.preference, ExportFormat.prompts])
async def test_each_training_format_holds_exactly_its_episodes_and_datasets_loads_it(
        store: Store, tmp_path: Path, format: ExportFormat, parquet: bool) -> None:
    out = tmp_path / f"{format}.{'parquet' if parquet else 'jsonl'}"
    done = await export(store.episodes, out, format, EpisodeFilter(), parquet=parquet)
    expected = [parsed(record) for record in EXPECTED[format]]
    if not parquet:
        assert [parsed(record) for record in lines(out)] == expected
    rows = [parsed(row) for row in loaded(out, parquet, tmp_path / "cache")]
    assert without_nulls(rows) == without_nulls(expected)
    assert done.records == len(expected)
    assert done.without_text == 1  # ep_private: rescued and passed, but no text to learn from
    assert not partial_path(out).exists() and not resume_path(out).exists()


@pytest.mark.parametrize("parquet", [False, True], ids=["jsonl", "parquet"])
async def test_the_episodes_format_holds_every_episode_whole(store: Store, tmp_path: Path, parquet: bool) -> None:
    out = tmp_path / ("episodes.parquet" if parquet else "episodes.jsonl")
    done = await export(store.episodes, out, ExportFormat.episodes, EpisodeFilter(), parquet=parquet)
    records = lines(out) if not parquet else None
    rows = loaded(out, parquet, tmp_path / "cache")
    assert [row["id"] for row in rows] == [e.id for e in recorded()] and done.records == 6
    if records is not None:
        assert without_nulls(rows) == without_nulls(records)
    called = {
        "id": "ep_called", "created_at": T0 + 60, "tenant": "tenant_a", "scenario": "default", "category": "weather",
        "canary": None, "model": "r3", "adapter": "r3-v2", "task_kind": "function_calling",
        "verifier": TOOL_CALL_VERIFIER, "store_text": True, "messages": CALLED_MESSAGES, "tools": [WEATHER],
        "tool_choice": "auto", "sampling": {"max_tokens": 16, "temperature": 0.0}, "outcome": True,
        "attempts": [{"number": 1, "completion_id": "chatcmpl-ep_called-1", "finish_reason": "stop",
                      "prompt_tokens": 10, "completion_tokens": 3, "latency_s": 0.5, "content": None,
                      "tool_calls": [CALL], "token_ids": [5, 6], "logprobs": [-0.5, -0.25], "reflection": None,
                      "reflection_tokens": 0, "success": True, "score": 1.0, "detail": "ok", "feedback": None,
                      "passed": True, "graded": 1.0, "judge_calls": 0, "judge_prompt_tokens": 0,
                      "judge_completion_tokens": 0}]}
    if records is not None:
        assert parsed(records[0]) == called
    assert without_nulls(parsed(rows[0])) == without_nulls(called)
    by_id = {row["id"]: row for row in rows}
    # store: false: the episode is there with its numbers and verdicts, and no text
    private = by_id["ep_private"]
    assert (private["store_text"], private["messages"], private["tools"], private["outcome"]) == (
        False, None, None, True)
    assert [(a["content"], a["reflection"], a["token_ids"], a["passed"], a["reflection_tokens"])
            for a in private["attempts"]] == [(None, None, None, False, 0), (None, None, None, True, 3)]
    feedback = by_id["ep_feedback"]["attempts"][0]
    assert (feedback["success"], feedback["passed"], feedback["graded"]) == (None, True, 0.75)
    assert feedback["feedback"] == {"success": True, "score": 0.75, "detail": "nice", "received_at": T0 + 11}
    assert by_id["ep_rescued"]["adapter"] == "base"
    assert by_id["ep_abandoned"]["attempts"][1]["finish_reason"] == ABANDONED


@pytest.mark.parametrize(("where", "ids"), [
    (EpisodeFilter(scenario="chat"), ["ep_feedback"]),
    (EpisodeFilter(adapter="r3-v2"), ["ep_called"]),
    (EpisodeFilter(adapter="base"), ["ep_rescued", "ep_failed", "ep_private", "ep_abandoned", "ep_feedback"]),
    (EpisodeFilter(since=datetime.fromtimestamp(T0 + 30, UTC), until=datetime.fromtimestamp(T0 + 60, UTC)),
     ["ep_rescued", "ep_failed", "ep_private"]),  # since inclusive, until exclusive
    (EpisodeFilter(outcome=False), ["ep_failed"]),
    (EpisodeFilter(task_kind="function_calling"), ["ep_called"]),
    (EpisodeFilter(tenant="tenant_a"), ["ep_called"]),
    (EpisodeFilter(outcome=True, scenario="default", adapter="base"), ["ep_rescued", "ep_private", "ep_abandoned"]),
], ids=["scenario", "version", "base", "time", "outcome", "task-kind", "tenant", "combined"])
async def test_filters_select_the_episodes(sqlite_store: Store, tmp_path: Path, where: EpisodeFilter,
                                           ids: list[str]) -> None:
    out = tmp_path / "episodes.jsonl"
    done = await export(sqlite_store.episodes, out, ExportFormat.episodes, where)
    assert [record["id"] for record in lines(out)] == ids
    assert done.total == done.episodes == len(ids)


async def test_a_filter_narrows_a_training_format_too(sqlite_store: Store, tmp_path: Path) -> None:
    out = tmp_path / "sft.jsonl"
    await export(sqlite_store.episodes, out, ExportFormat.sft, EpisodeFilter(scenario="default", adapter="base"))
    assert [record["episode_id"] for record in lines(out)] == ["ep_rescued"]
    await export(sqlite_store.episodes, out, ExportFormat.sft, EpisodeFilter(outcome=False))
    assert out.read_text() == ""  # a failed outcome never makes an sft record


class PageCountingStore(SqlEpisodeStore):
    """The real store, noting the size of each page the export asks for and gets."""

    def __init__(self, store: SqlEpisodeStore) -> None:
        super().__init__(store.sessions)
        self.pages: list[tuple[int, int]] = []

    async def list(self, where: EpisodeFilter, limit: int, after=None) -> list[Episode]:
        page = await super().list(where, limit, after)
        self.pages.append((limit, len(page)))
        return page


async def test_an_export_reads_the_store_a_page_at_a_time(tmp_path: Path) -> None:
    count, page_size = 1003, 50
    # Many episodes share a creation time: the pages' keyset must neither skip nor repeat one of them.
    many = [episode(f"ep_{n:05d}", n // 7, [attempt(1, True, str(n))]) for n in range(count)]
    async with open_store(Settings(_env_file=None, data_dir=tmp_path / "data")) as opened:
        await opened.episodes.write(many)
        counting = PageCountingStore(opened.episodes)
        seen: list[tuple[int, int]] = []
        done = await export(counting, tmp_path / "sft.jsonl", ExportFormat.sft, EpisodeFilter(), page_size=page_size,
                            progress=lambda p: seen.append((p.episodes, p.total)))
    assert {limit for limit, _ in counting.pages} == {page_size}
    assert [got for _, got in counting.pages] == [page_size] * (count // page_size) + [count % page_size]
    expected = sorted(many, key=lambda e: (e.created_at, e.id), reverse=True)
    assert [record["episode_id"] for record in lines(tmp_path / "sft.jsonl")] == [e.id for e in expected]
    assert done.records == count and seen[0] == (0, count) and seen[-1] == (count, count)
    assert len(seen) == math.ceil(count / page_size) + 1


async def test_a_resumed_export_goes_on_from_its_last_page_and_refuses_other_filters(
        sqlite_store: Store, tmp_path: Path) -> None:
    out = tmp_path / "episodes.jsonl"
    await export(sqlite_store.episodes, out, ExportFormat.episodes, EpisodeFilter())
    whole = out.read_bytes()

    class Killed(Exception):
        pass

    def kill_after_two_pages(progress) -> None:
        if progress.episodes == 4:
            partial_path(out).open("ab").write(b'{"id": "ep_half')  # a page cut off mid-write
            raise Killed

    with pytest.raises(Killed):
        await export(sqlite_store.episodes, out, ExportFormat.episodes, EpisodeFilter(), page_size=2,
                     progress=kill_after_two_pages)
    out.unlink()
    with pytest.raises(ExportError, match="is of episodes with filters none, not of episodes with scenario=chat"):
        await export(sqlite_store.episodes, out, ExportFormat.episodes, EpisodeFilter(scenario="chat"), resume=True)
    with pytest.raises(ExportError, match="cannot be resumed"):
        await export(sqlite_store.episodes, out, ExportFormat.episodes, EpisodeFilter(), parquet=True, resume=True)
    done = await export(sqlite_store.episodes, out, ExportFormat.episodes, EpisodeFilter(), page_size=2, resume=True)
    assert done.resumed and done.episodes == 6 and out.read_bytes() == whole


# ------------------------------------------------------------------------------------- the command


def r3(data_dir: Path, *args: str, **popen: Any) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("R3_")}
    env.update({"R3_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)})
    return subprocess.Popen([sys.executable, "-m", "r3", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def finished(process: subprocess.Popen) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=300)
    return process.returncode, " ".join(stderr.split())


def test_the_command_names_every_format_of_the_kernel() -> None:
    assert [f.value for f in Format] == [f.value for f in ExportFormat]


@pytest.mark.process
def test_a_killed_export_leaves_no_complete_looking_file_and_resume_finishes_it(tmp_path: Path) -> None:
    data = tmp_path / "data"

    async def fill() -> None:
        async with open_store(Settings(_env_file=None, data_dir=data)) as opened:
            await opened.episodes.write([episode(f"ep_{n:05d}", n, [attempt(1, False, str(n))]) for n in range(600)])

    run_in_thread(asyncio.run, fill())
    out, whole = tmp_path / "out" / "prompts.jsonl", tmp_path / "whole.jsonl"
    code, said = finished(r3(data, "export", str(whole), "--format", "prompts", "--since", "2026-03-01"))
    assert code == 0 and "wrote 600 prompts records from 600 episodes" in said, said

    # 300 pages, each synced: seconds, while the test waits for the first page at most 10 ms.
    exporting = r3(data, "export", str(out), "--format", "prompts", "--since", "2026-03-01", "--page-size", "2")
    deadline = time.monotonic() + 120
    while not resume_path(out).exists():  # a page or more is written
        assert exporting.poll() is None and time.monotonic() < deadline, exporting.stderr.read()
        time.sleep(0.01)
    exporting.send_signal(signal.SIGKILL)
    exporting.wait(30)
    assert not out.exists() and partial_path(out).exists()
    assert 0 < len(partial_path(out).read_bytes()) < len(whole.read_bytes())

    code, said = finished(r3(data, "export", str(out), "--format", "prompts", "--since", "2026-03-01", "--resume"))
    assert code == 0 and "(going on with an unfinished export)" in said, said
    assert out.read_bytes() == whole.read_bytes()
    assert not partial_path(out).exists() and not resume_path(out).exists()

    code, said = finished(r3(data, "export", str(out), "--format", "sft", "--scenario", "nope"))
    assert code == 1 and "no scenario named 'nope'" in said and "Traceback" not in said


def test_a_time_that_is_not_one_is_refused_naming_the_option(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from r3.cli.main import app

    refused = CliRunner().invoke(app, ["export", str(tmp_path / "out.jsonl"), "--format", "sft", "--until", "soon"])
    assert refused.exit_code == 2 and "--until" in refused.output and "'soon' is not a time" in refused.output


# ------------------------------------------------------------------------------------- TRL


@pytest.mark.slow
async def test_trl_trains_a_step_on_the_sft_and_preference_exports(sqlite_store: Store, tmp_path: Path,
                                                                   model_path: Path) -> None:
    """SFTTrainer on the sft export (JSON Lines), DPOTrainer on the preference export (Parquet), as
    `datasets` loads them: one optimizer step each changes the model."""
    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    sft, preference = tmp_path / "sft.jsonl", tmp_path / "preference.parquet"
    await export(sqlite_store.episodes, sft, ExportFormat.sft, EpisodeFilter())
    await export(sqlite_store.episodes, preference, ExportFormat.preference, EpisodeFilter(), parquet=True)
    cache = str(tmp_path / "cache")
    common = dict(max_steps=1, per_device_train_batch_size=1, learning_rate=1e-3, use_cpu=True, bf16=False,
                  report_to="none", save_strategy="no", disable_tqdm=True, model_init_kwargs={"dtype": "float32"})
    runs = [
        (SFTTrainer, SFTConfig(output_dir=str(tmp_path / "sft-run"), **common),
         load_dataset("json", data_files=str(sft), split="train", cache_dir=cache)),
        (DPOTrainer, DPOConfig(output_dir=str(tmp_path / "dpo-run"), **common),
         load_dataset("parquet", data_files=str(preference), split="train", cache_dir=cache)),
    ]
    for trainer_class, config, dataset in runs:
        trainer = trainer_class(model=str(model_path), args=config, train_dataset=dataset)
        before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
        result = trainer.train()
        assert trainer.state.global_step == 1 and math.isfinite(result.training_loss), trainer_class.__name__
        changed = [name for name, p in trainer.model.named_parameters() if p.requires_grad
                   and not p.detach().equal(before[name])]
        assert changed, f"{trainer_class.__name__}: no weight changed"
