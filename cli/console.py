"""Where the commands write: messages to stderr, results (a key, a JSON report, a table) to stdout."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console(stderr=True)


def fail(error: Exception) -> typer.Exit:
    """`raise fail(error) from error`: the error in words on stderr, exit status 1, no traceback."""
    console.print(f"[red]error:[/red] {error}")
    return typer.Exit(1)
