"""Fixtures for the episode store's tests: real Postgres (a fresh database on the shared server, or a
private cluster a test may crash), real Redis (a private server a test may kill), `r3 serve`
subprocesses. The machinery is in store_support.py."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from store_support import (
    PrivatePostgres,
    PrivateRedis,
    R3Process,
    fresh_database,
    run_in_thread,
    shared_postgres_available,
)
from support import free_port


@pytest.fixture(scope="session")
def shared_postgres() -> None:
    if not shared_postgres_available():
        pytest.skip("no Postgres on 127.0.0.1:5432")


@pytest.fixture
def fresh_pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A new empty database on the shared server, dropped after the test."""
    yield from fresh_database(request)


@pytest.fixture(scope="module")
def module_pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A new database on the shared server, migrated to head, for a whole module."""
    from r3.store.database import migrate

    for url in fresh_database(request):
        run_in_thread(migrate, url)
        yield url


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    """A private cluster, started, with a migrated database `r3`; stopped after the module."""
    from r3.store.database import migrate

    # Not under pytest's tmp dir: that is private to root, and the cluster runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="r3-test-pg-"))
    try:
        cluster = PrivatePostgres(root)
        cluster.start()
        try:
            cluster.create_database()
            run_in_thread(migrate, cluster.url)
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path_factory.mktemp("redis", numbered=True))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def r3_process(model_path: Path) -> Callable[..., R3Process]:
    """A factory: `r3_process(tmp_dir, R3_DATABASE_URL=..., ...)` builds an unstarted server."""

    def make(data_dir: Path, **env: str) -> R3Process:
        settings = {"R3_DATA_DIR": str(data_dir), "R3_MODELS_DIR": str(model_path.parent),
                    "R3_PORT": str(free_port()), "R3_MAX_BATCH_SIZE": "4", "R3_REFLECTION_MAX_TOKENS": "8",
                    "R3_DEFAULT_MAX_TOKENS": "8",
                    # One torch thread: on a small, shared machine more threads mostly wait on each other.
                    "OMP_NUM_THREADS": "1", **env}
        return R3Process(settings, data_dir / "server.log")

    return make
