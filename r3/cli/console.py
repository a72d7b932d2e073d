"""Where the commands write: messages to stderr, results (a key, a JSON report, a table) to stdout."""

from __future__ import annotations

import logging
import sys
import traceback

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)

# Every command's help: click's plain layout (a flag is just `--once`, with no `<bool>` beside it) and
# each default shown.
HELP = {"rich_markup_mode": None, "context_settings": {"show_default": True}}


def fail(error: Exception, verbose: bool = False) -> typer.Exit:
    """`raise fail(error) from error`: the error in words on stderr, exit status 1; its traceback only
    when `verbose`."""
    if verbose:
        console.print(escape("".join(traceback.format_exception(error))), highlight=False, soft_wrap=True)
    console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)  # whole, to copy
    return typer.Exit(1)


def log_quietly(verbose: bool) -> None:
    """R3's own messages at INFO; the libraries' (Alembic's set-up lines, TRL's and vLLM's notices)
    only at WARNING, unless `verbose`."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    for ours in ("r3", "trainer", "server"):
        logging.getLogger(ours).setLevel(logging.INFO)
    if not verbose:
        # TRL warns about the installed vLLM's version at import, and vLLM about its Triton backend:
        # true, but nothing a user of this machine can act on.
        logging.captureWarnings(True)
        for noisy in ("py.warnings", "vllm"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


class _StderrHandler(logging.StreamHandler):
    """Writes to `sys.stderr` as it is at each record, not as it was at the start: while the progress
    bar is drawn, rich stands in for stderr and prints each line above the bar."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _stream) -> None:
        pass
