"""Alembic migrations: up, down and up again, and the migrated schema is exactly the models' metadata."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from store_support import run, run_in_thread

from r3.store import database
from r3.store.models import Base


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'r3.db'}"
    return request.getfixturevalue("fresh_pg_url")


def schema_state(url: str) -> tuple[str | None, set[str], list]:
    """(the database's revision, its tables, autogenerate's diff against the models)."""

    async def inspect_database():
        engine = database.create_engine(url)
        try:
            async with engine.connect() as connection:
                def look(sync_connection):
                    # compare_type and server defaults too: a column of the wrong type is a difference
                    context = MigrationContext.configure(sync_connection, opts={"compare_type": True,
                                                                               "compare_server_default": True})
                    return (context.get_current_revision(), set(inspect(sync_connection).get_table_names()),
                            compare_metadata(context, Base.metadata))

                return await connection.run_sync(look)
        finally:
            await engine.dispose()

    return run(inspect_database)


def test_upgrade_downgrade_upgrade_leaves_exactly_the_models_schema(url: str) -> None:
    head = ScriptDirectory.from_config(database.alembic_config(url)).get_current_head()
    model_tables = set(Base.metadata.tables)

    run_in_thread(database.migrate, url)
    revision, tables, diff = schema_state(url)
    assert revision == head
    assert tables - {"alembic_version"} == model_tables
    assert diff == []

    run_in_thread(database.downgrade, url, "base")
    revision, tables, _ = schema_state(url)
    assert revision is None
    assert tables - {"alembic_version"} == set()

    run_in_thread(database.migrate, url)
    revision, tables, diff = schema_state(url)
    assert revision == head
    assert tables - {"alembic_version"} == model_tables
    assert diff == []

    # The comparison does see a difference when there is one.
    async def drop_index() -> None:
        engine = database.create_engine(url)
        try:
            async with engine.begin() as connection:
                await connection.exec_driver_sql("DROP INDEX episodes_unannounced")
        finally:
            await engine.dispose()

    run(drop_index)
    _, _, diff = schema_state(url)
    assert [(d[0], d[1].name) for d in diff] == [("add_index", "episodes_unannounced")]


def test_the_server_refuses_a_database_behind_the_code(url: str) -> None:
    from r3.store.database import NotMigratedError

    async def check() -> None:
        engine = database.create_engine(url)
        try:
            await database.ensure_migrated(engine, url)
        finally:
            await engine.dispose()

    with pytest.raises(NotMigratedError):
        run(check)
    run_in_thread(database.migrate, url)
    run(check)


async def execute(url: str, *statements: str) -> list[list[tuple]]:
    """Run `statements` on the database at `url` in one transaction; each one's rows (none for a write)."""
    engine = database.create_engine(url)
    try:
        async with engine.begin() as connection:
            results = [await connection.exec_driver_sql(statement) for statement in statements]
            return [[tuple(row) for row in result.all()] if result.returns_rows else [] for result in results]
    finally:
        await engine.dispose()


def test_scores_are_given_to_the_verdicts_a_previous_release_recorded(url: str) -> None:
    """Migration 0003 on a database written by the release before it: every judged attempt and
    episode gets the score its verdict means, unjudged ones none, the client's feedback its own."""
    run_in_thread(database.migrate, url, "0002")

    run(lambda: execute(url, 
        "INSERT INTO episodes (id, created_at, model, task_kind, replayable, store_text, sampling, revision,"
        " attempt_count, first_success, outcome) VALUES ('ep_a', '2026-12-01 00:00:00+00', 'r3', 'generic',"
        " false, true, '{}', 1, 3, false, true)",
        *(f"INSERT INTO attempts (episode_id, number, completion_id, finish_reason, prompt_tokens,"
          f" completion_tokens, latency_s, reflection_tokens, success, feedback_success) VALUES"
          f" ('ep_a', {number}, 'c{number}', 'stop', 1, 1, 0.1, 0, {success}, {feedback})"
          for number, success, feedback in ((1, "false", "NULL"), (2, "NULL", "NULL"), (3, "false", "true")))))
    run_in_thread(database.migrate, url)
    attempts, episodes = run(lambda: execute(url, 
        "SELECT number, score, feedback_score, judge_calls FROM attempts ORDER BY number",
        "SELECT first_score, outcome_score FROM episodes"))
    assert attempts == [(1, 0.0, None, 0), (2, None, None, 0), (3, 0.0, 1.0, 0)]
    assert episodes == [(0.0, 1.0)]


def test_the_lineage_before_scenarios_becomes_the_default_scenario(url: str) -> None:
    """Migration 0004 on a database written by the release before it: its versions keep their names
    and stay active, in the scenario `default`; its episodes and rounds are the default scenario's."""
    run_in_thread(database.migrate, url, "0003")

    versions = ("INSERT INTO adapter_versions (name, number, parent, status, path, sha256, metrics, episodes_used,"
                " created_at) VALUES ")
    run(lambda: execute(url, 
        versions + "('r3-v1', 1, NULL, 'retired', '/a/r3-v1', 'x', '{}', '[]', '2026-12-01 00:00:00+00')",
        versions + "('r3-v2', 2, 'r3-v1', 'active', '/a/r3-v2', 'y', '{}', '[]', '2026-12-02 00:00:00+00')",
        "INSERT INTO episodes (id, created_at, model, task_kind, replayable, store_text, sampling, revision,"
        " attempt_count, first_success, outcome) VALUES ('ep_a', '2026-12-01 00:00:00+00', 'r3', 'generic',"
        " true, true, '{}', 1, 1, false, false)",
        "INSERT INTO training_rounds (status, requested_by, requested_at, report) VALUES"
        " ('finished', 'admin', '2026-12-01 00:00:00+00', '{}')"))
    run_in_thread(database.migrate, url)
    versions_after, episodes, rounds, scenarios = run(lambda: execute(url, 
        "SELECT name, scenario, number, status FROM adapter_versions ORDER BY number",
        "SELECT id, scenario, category FROM episodes", "SELECT scenario FROM training_rounds",
        "SELECT name FROM scenarios"))
    assert versions_after == [("r3-v1", "default", 1, "retired"), ("r3-v2", "default", 2, "active")]
    assert episodes == [("ep_a", "default", None)] and rounds == [("default",)] and scenarios == [("default",)]
