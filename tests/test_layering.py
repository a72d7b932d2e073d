"""The layering rule (docs/architecture.md), checked on the source (ast, nothing imported).

The kernel (`r3`, but for `r3.cli`) imports neither the server, the trainer, the benchmarks nor the
command line; server and trainer never import each other; verifiers import nothing of ours. Only the
composition root (`r3.cli`, the `r3` command) imports everything. Nor may a layer reach past the rule
by name: an import by string (`importlib.import_module("trainer.worker")`, `__import__`, uvicorn's
"server.app:create_app").
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SKIPPED = {".venv", ".git", "build", "dist", "node_modules", "__pycache__"}

# Layer → the layers of ours it may import (itself always). Everything else of ours is off limits.
# A layer is a top-level package, but for the command line, which lives inside r3 as `r3.cli`.
MAY_IMPORT = {
    "r3": {"verifiers"},  # r3.migrations (the repository's migrations/) is the kernel's own: the store runs it
    "verifiers": set(),
    "server": {"r3", "verifiers"},
    "trainer": {"r3", "verifiers"},
}
CLI = "r3.cli"
# Layers that the layers above must not reach by name either.
UPPER = {"server", "trainer", "bench", CLI}
IMPORTERS = {"import_module", "__import__", "find_spec", "run_module"}


def our_packages() -> set[str]:
    return {path.parent.name for path in REPO.glob("*/__init__.py")} | {CLI}


def layer_of(module: str) -> str:
    """The layer a dotted module name belongs to: `r3.cli.serve` → `r3.cli`, `r3.store` → `r3`."""
    return CLI if module == CLI or module.startswith(CLI + ".") else module.split(".")[0]


def python_files(under: Path) -> Iterator[Path]:
    """The layer's source files: `r3`'s without the command line (`r3/cli`, and `r3/__main__.py`, which
    is `python -m r3`), a layer of its own."""
    for path in sorted(under.rglob("*.py")):
        parts = path.relative_to(REPO).parts
        if not SKIPPED & set(parts) and (under.name != "r3" or parts[1] not in ("cli", "__main__.py")):
            yield path


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, layer) of every absolute import, at the top or inside a function."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, layer_of(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names] if node.module == "r3" else [node.module]
            for name in names:  # `from r3 import cli` is an import of r3.cli
                yield node.lineno, layer_of(name)


def imports_by_name(tree: ast.Module) -> Iterator[tuple[int, ast.expr | None]]:
    """(line, first argument) of every call of importlib.import_module, __import__ and the like."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
            if name in IMPORTERS:
                yield node.lineno, node.args[0] if node.args else None


def test_the_packages_in_the_rule_exist() -> None:
    assert set(MAY_IMPORT) | {CLI, "bench"} <= our_packages() and (REPO / "r3" / "cli" / "__init__.py").exists()


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_a_layer_imports_only_what_the_layout_allows(package: str) -> None:
    forbidden = our_packages() - MAY_IMPORT[package] - {package}
    assert UPPER - {package} <= forbidden
    found = [f"{path.relative_to(REPO)}:{line} imports {name}"
             for path in python_files(REPO / package) for line, name in imported(parse(path)) if name in forbidden]
    assert found == []


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_a_layer_does_not_import_by_name_or_by_import_string(package: str) -> None:
    """A name the rule could not check (a variable) is refused too; so is a "module:attribute" string
    naming a package above (uvicorn and others import those)."""
    upper = "|".join(re.escape(name) for name in sorted(UPPER - {package}))
    import_string = re.compile(rf"({upper})(\.\w+)*:\w+")
    found = []
    for path in python_files(REPO / package):
        tree = parse(path)
        where = path.relative_to(REPO)
        found += [f"{where}:{line} imports by a name computed at run time"
                  for line, argument in imports_by_name(tree) if not isinstance(argument, ast.Constant)]
        found += [f"{where}:{node.lineno} names {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and import_string.fullmatch(node.value)]
    assert found == []


def test_nothing_imports_the_upper_packages_by_name() -> None:
    """`importlib.import_module("trainer.worker")` is how the old `r3/cli.py` dodged the rule; the
    command line (`r3.cli`) may import everything with plain imports, so nobody needs it."""
    found = []
    for path in python_files(REPO):
        for line, argument in imports_by_name(parse(path)):
            if isinstance(argument, ast.Constant) and layer_of(str(argument.value)) in UPPER:
                found.append(f"{path.relative_to(REPO)}:{line} imports {argument.value!r} by name")
    assert found == []


def test_the_checks_see_what_they_look_for() -> None:
    tree = ast.parse("import trainer.worker\ndef f():\n    from r3.cli.main import app\n    from r3 import cli\n"
                     "    from r3.store import x\n    importlib.import_module('server.app')\n    __import__(name)\n")
    assert [name for _, name in imported(tree)] == ["trainer", CLI, CLI, "r3"]
    arguments = [argument for _, argument in imports_by_name(tree)]
    assert arguments[0].value == "server.app" and isinstance(arguments[1], ast.Name)


# The store (r3/store) is the server's and the trainer's only way to the database and to Redis, so
# neither imports the clients (nor the drivers under them).
STORE_CLIENTS = {"sqlalchemy", "redis", "alembic", "asyncpg", "aiosqlite", "sqlite3", "psycopg", "psycopg2"}


def store_client_imports(package: str) -> set[tuple[str, str]]:
    return {(path.relative_to(REPO).as_posix(), name)
            for path in python_files(REPO / package) for _, name in imported(parse(path)) if name in STORE_CLIENTS}


def test_server_and_trainer_reach_the_database_and_redis_only_through_the_store() -> None:
    found = store_client_imports("server") | store_client_imports("trainer")
    assert found == set(), "import the store (r3.store), not its clients"


# One store per process (issue 26): `r3.store.store.open_store` alone connects to the database; the
# server, the trainer, the command line and the benchmarks call it where they start, and hand its
# parts on. Nothing outside the store builds an engine or a session factory of its own.
DATABASE_INTERNALS = {"create_engine", "sessions", "make_ready", "ensure_migrated"}
SQLALCHEMY_CONNECTORS = {"create_async_engine", "async_sessionmaker", "sessionmaker"}


def connections(folder: Path) -> Iterator[tuple[str, str]]:
    """(file, what) for each way `package` connects to the database: a call of `open_store`, of the
    store's internals (`database.create_engine`) or of SQLAlchemy's connectors, or an import of them."""
    for path in python_files(folder):
        where = path.relative_to(REPO).as_posix()
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.ImportFrom) and node.module in {"r3.store.database", "sqlalchemy.ext.asyncio"}:
                yield from ((where, f"import {a.name}") for a in node.names
                            if a.name in DATABASE_INTERNALS | SQLALCHEMY_CONNECTORS)
            elif isinstance(node, ast.Call):
                function = node.func
                if isinstance(function, ast.Name) and function.id in {"open_store", *SQLALCHEMY_CONNECTORS}:
                    yield where, function.id
                elif (isinstance(function, ast.Attribute) and isinstance(function.value, ast.Name)
                      and function.value.id == "database" and function.attr in DATABASE_INTERNALS):
                    yield where, f"database.{function.attr}"


def test_each_process_opens_the_store_in_one_place_and_builds_no_engine_of_its_own() -> None:
    found = {package: sorted(connections(REPO.joinpath(*package.split(".")))) for package in ("server", "trainer", CLI, "bench")}
    assert found["server"] == [("server/app.py", "open_store")]  # the app's lifespan
    assert found["trainer"] == [("trainer/worker.py", "open_store")]  # `run_trainer`'s main process
    for package in (CLI, "bench"):
        assert {what for _, what in found[package]} == {"open_store"}, found[package]
