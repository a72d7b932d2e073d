"""What `r3 serve` checks before it loads the model, in the order a new user meets the mistakes: the
port, the folders, the database, Redis, the model. Each check raises `ConfigurationError` in a line
or two that names the `R3_*` variable, the cause and the fix (`--verbose` adds the traceback)."""

from __future__ import annotations

import asyncio
import errno
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from r3 import bundled_model
from r3.settings import ConfigurationError, Settings, without_password


def bind(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound now (before the model loads), so a port in use is said at once.

    Raises `ConfigurationError` naming R3_PORT (in use, or not allowed) or R3_HOST (no such address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except socket.gaierror as error:
        raise ConfigurationError(f"R3_HOST={host}: not an address of this machine ({error.strerror}). Fix: "
                                 "R3_HOST=127.0.0.1 (this machine only) or 0.0.0.0 (every interface).") from error
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise ConfigurationError(
                f"R3_PORT={port}: the port is already in use on {host} (another r3 serve?). Fix: stop that "
                f"server, or choose another port: R3_PORT={port + 1} or `r3 serve --port {port + 1}`.") from error
        if error.errno == errno.EADDRNOTAVAIL:
            raise ConfigurationError(f"R3_HOST={host}: not an address of this machine. Fix: R3_HOST=127.0.0.1 "
                                     "or 0.0.0.0.") from error
        raise ConfigurationError(f"R3_PORT={port}: cannot listen on {host}:{port} ({error.strerror}). Fix: a "
                                 "port above 1023, e.g. R3_PORT=8000.") from error


def check_folders(settings: Settings) -> None:
    """The data dir (database, journal), the adapters dir and the folder of an R3_DATABASE_URL SQLite
    file exist, or can be made, and this user can list them and write in them. Raises `ConfigurationError`."""
    from sqlalchemy.engine import make_url

    adapters_variable = "R3_ADAPTERS_DIR" if settings.adapters_dir else "R3_DATA_DIR"  # the default is under it
    folders = [("R3_DATA_DIR", settings.data_dir), (adapters_variable, settings.adapters_path)]
    if settings.database_url and make_url(settings.database_url).get_backend_name() == "sqlite":
        folders.append(("R3_DATABASE_URL", Path(make_url(settings.database_url).database).parent))
    for variable, folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            next(folder.iterdir(), None)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise ConfigurationError(
                f"{variable}: cannot use {folder} ({error.strerror or error}). Fix: point {variable} at a folder "
                "this user can read and write, or make it so (chown/chmod).") from error


def check_database(settings: Settings) -> None:
    """The database answers and its schema is the code's (the embedded SQLite migrates itself).
    Raises `ConfigurationError`."""
    from r3.store import database
    from r3.store.store import open_store

    async def check() -> None:
        async with open_store(settings):
            pass  # opening is the check: it connects and compares the schema's migration

    with database_errors(database.database_url(settings)):
        asyncio.run(check())


@contextmanager
def database_errors(url: str) -> Iterator[None]:
    """`with database_errors(url):` turns the errors of reaching the database (the driver's, under
    SQLAlchemy's, and `NotMigratedError`) into `ConfigurationError`s that name R3_DATABASE_URL (or
    R3_DATA_DIR for the embedded SQLite)."""
    from sqlalchemy.exc import SQLAlchemyError

    from r3.store.database import NotMigratedError

    try:
        yield
    except (SQLAlchemyError, NotMigratedError, OSError) as error:
        raise _database_problem(error, url) from error


def _database_problem(error: Exception, url: str) -> ConfigurationError:
    from sqlalchemy.engine import make_url

    from r3.store.database import NotMigratedError, is_embedded

    parsed = make_url(url)
    if is_embedded(url):
        return ConfigurationError(f"R3_DATA_DIR: cannot use the embedded database {parsed.database} ({error}). "
                                  "Fix: point R3_DATA_DIR at a folder this user can write.")
    shown = f"R3_DATABASE_URL={parsed.render_as_string(hide_password=True)}"
    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
    root = _root_cause(error)
    if isinstance(error, NotMigratedError):
        return ConfigurationError(f"{shown}: {error}.")
    if type(root).__name__ == "InvalidCatalogNameError":
        return ConfigurationError(f"{shown}: the database {parsed.database!r} does not exist on {where}. Fix: "
                                  f"create it (`createdb -h {parsed.host} -p {parsed.port or 5432} -U "
                                  f"{parsed.username} {parsed.database}`), then `r3 migrate`; or name one that "
                                  "exists.")
    if type(root).__name__ in ("InvalidPasswordError", "InvalidAuthorizationSpecificationError"):
        return ConfigurationError(f"{shown}: Postgres refused the user or password ({root}). Fix: the user and "
                                  "password in R3_DATABASE_URL.")
    if isinstance(root, socket.gaierror):
        return ConfigurationError(f"{shown}: no host named {parsed.host!r} ({root.strerror}). Fix: the host in "
                                  "R3_DATABASE_URL.")
    if isinstance(root, ConnectionRefusedError):
        return ConfigurationError(f"{shown}: nothing listens at {where} (connection refused). Fix: start Postgres "
                                  "there, or correct R3_DATABASE_URL (unset, R3 uses its embedded SQLite).")
    if isinstance(root, OSError | TimeoutError):
        return ConfigurationError(f"{shown}: cannot reach {where} ({root}). Fix: check that Postgres runs there "
                                  "and this machine may connect to it.")
    return ConfigurationError(f"{shown}: the database cannot be used ({root}). Fix: correct R3_DATABASE_URL.")


def _root_cause(error: BaseException) -> BaseException:
    """The first error of a chain (the driver's own, under SQLAlchemy's wrappers)."""
    while (cause := error.__cause__ or error.__context__) is not None:
        error = cause
    return error


def check_redis(settings: Settings) -> None:
    """Redis answers a PING at R3_REDIS_URL (when it is set). Raises `ConfigurationError`."""
    if settings.redis_url is None:
        return
    import redis

    fix = "Fix: start Redis there, or correct R3_REDIS_URL (unset, R3 runs without the episode stream)."
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except ValueError as error:  # not a redis:// URL
        raise ConfigurationError(f"R3_REDIS_URL={settings.redis_url}: {error}. Fix: redis://host:6379/0.") from error
    except redis.RedisError as error:
        raise ConfigurationError(f"R3_REDIS_URL={without_password(settings.redis_url)}: Redis does not answer "
                                 f"({error}). {fix}") from error


def check_model(settings: Settings) -> str:
    """What the engine will load for R3_MODEL (pulling the bundled model, with a progress bar, when it
    is missing); a hub id must at least have a config that loads. Raises `ConfigurationError`."""
    try:
        model = bundled_model.resolve(settings)
    except bundled_model.ModelPullError as error:
        said = str(error)
        raise ConfigurationError(said if said.startswith("R3_MODEL") else f"R3_MODEL={settings.model}: {said}") \
            from error
    if Path(model).is_dir():
        return model
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as error:
        cause = str(error).strip().splitlines()[0]
        raise ConfigurationError(
            f"R3_MODEL={settings.model}: not a folder here, and it does not load as a hub id ({cause}). Fix: name "
            f"a model folder (with its config.json), or leave R3_MODEL unset for the bundled "
            f"{bundled_model.BUNDLED_MODEL}.") from error
    return model
