"""The packages R3's wheel holds; everything else about the project is in pyproject.toml.

`r3`, `server`, `trainer` and `verifiers` (the project's layout; their data folders, such as the
dashboard's templates, as namespace packages), and the repository's top-level `migrations/` folder,
shipped inside the r3 package as `r3.migrations` (Alembic's scripts). `bench/` and `tests/` stay in
the repository: nothing generic is installed at the top level. tests/test_packaging.py checks the
built wheel's contents.
"""

from setuptools import find_namespace_packages, setup

LAYOUT = ["r3", "server", "trainer", "verifiers"]

setup(
    packages=[*find_namespace_packages(include=[name for package in LAYOUT for name in (package, f"{package}.*")],
                                       exclude=["*.__pycache__"]),
              "r3.migrations", "r3.migrations.versions"],
    package_dir={"r3.migrations": "migrations", "r3.migrations.versions": "migrations/versions"},
)
