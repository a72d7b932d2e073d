"""The built wheel holds R3's packages and nothing generic at the top level (issue 26): `r3` (with the
command line and the migrations inside it), `server`, `trainer`, `verifiers`; not `bench`, `cli`,
`migrations` or the tests."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.process  # the suite's tiers: tests/conftest.py

REPO = Path(__file__).resolve().parent.parent
LAYOUT = ("r3", "server", "trainer", "verifiers")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    # A copy of the tree git knows, so no build output of the checkout (build/, *.egg-info) leaks in.
    source = out / "source"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((REPO / name).read_bytes())
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(source)], check=True, capture_output=True, timeout=600)
    (path,) = out.glob("r3-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_installs_only_the_layouts_packages(wheel: zipfile.ZipFile) -> None:
    top = {name.split("/")[0] for name in wheel.namelist() if not name.split("/")[0].endswith(".dist-info")}
    assert top == set(LAYOUT)


def test_every_module_of_the_layout_is_in_the_wheel(wheel: zipfile.ZipFile) -> None:
    tracked = subprocess.run(["git", "ls-files", *LAYOUT], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    modules = {name for name in tracked if name.endswith(".py")}
    assert modules and modules <= set(wheel.namelist())


def test_the_migrations_and_the_dashboards_files_ship_as_package_data(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    versions = {f"r3/migrations/{path.relative_to(REPO / 'migrations')}" for path in (REPO / "migrations").rglob("*")
                if path.is_file() and "__pycache__" not in path.parts}
    assert {"r3/migrations/env.py", "r3/migrations/script.py.mako"} <= versions <= names
    assert any(name.startswith("r3/migrations/versions/0001") for name in names)
    assert any(name.startswith("server/dashboard/templates/") for name in names)
    assert any(name.startswith("server/dashboard/static/") for name in names)


def test_the_r3_command_is_the_cli_inside_the_r3_package(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = [name for name in wheel.namelist() if name.endswith(".dist-info/entry_points.txt")]
    assert "r3 = r3.cli.main:main" in wheel.read(entry_points).decode()
