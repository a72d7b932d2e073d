"""The `r3_training_rounds{status}` gauge: counted in the database at each scrape (the trainer is
another process), on the real embedded (SQLite) store; a database that cannot answer leaves the
counts as last seen and the scrape still served."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from r3.settings import Settings
from r3.store import database
from r3.store.episode_log import EpisodeLog
from r3.store.journal import Journal
from r3.store.rounds import RoundStatus, TrainingRounds
from r3.store.store import open_store
from r3.store.stream import NoEpisodeStream
from server.metrics import Metrics


def rounds_gauge(scraped: bytes) -> dict[str, float]:
    """`r3_training_rounds` by status, as a scrape shows it."""
    for family in text_string_to_metric_families(scraped.decode()):
        if family.name == "r3_training_rounds":
            return {sample.labels["status"]: sample.value for sample in family.samples}
    return {}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[tuple[TrainingRounds, EpisodeLog]]:
    async with open_store(Settings(_env_file=None, data_dir=tmp_path)) as opened:  # the embedded SQLite
        journal = Journal(tmp_path / "journal")
        try:
            yield opened.rounds, EpisodeLog(opened.episodes, NoEpisodeStream(), journal)
        finally:
            journal.close()


async def test_the_gauge_counts_the_rounds_in_the_database_at_each_scrape(store, tmp_path: Path) -> None:
    rounds, episode_log = store
    metrics = Metrics()
    assert rounds_gauge(await metrics.scrape(episode_log, rounds)) == dict.fromkeys(RoundStatus, 0.0)

    await rounds.request("admin")
    assert rounds_gauge(await metrics.scrape(episode_log, rounds)) == {
        "requested": 1.0, "running": 0.0, "finished": 0.0, "failed": 0.0}

    # The trainer (another process, in production) starts it: the next scrape sees it running.
    await rounds.start("admin", "host pid 1 test", 3600.0)
    assert rounds_gauge(await metrics.scrape(episode_log, rounds)) == {
        "requested": 0.0, "running": 1.0, "finished": 0.0, "failed": 0.0}

    # A database that cannot answer (here: its file's folder does not exist): the rest is served,
    # the rounds as last seen. (Opening a store would refuse it: the store's own engine, to reach it.)
    unreachable = database.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'r3.db'}")
    try:
        scraped = await metrics.scrape(episode_log, TrainingRounds(database.sessions(unreachable)))
    finally:
        await unreachable.dispose()
    assert rounds_gauge(scraped)["running"] == 1.0
    assert b"r3_episode_log_backlog 0.0" in scraped
