"""The `r3` command's tree: `r3 serve | train | migrate | replay`, `r3 model …`, `r3 keys …`, `r3 scenarios …`,
`r3 canary …`, `r3 bench …`.

`main()` is the `r3` program: a mistake in the settings or the environment (`ConfigurationError`)
is said in a line or two naming the `R3_*` variable; `--verbose` adds the traceback."""

from __future__ import annotations

import sys
from importlib.metadata import version

import typer

from r3.cli import bench, canary, model, replay, scenarios, serve, store, train
from r3.cli.console import HELP, fail
from r3.cli.export import export
from r3.settings import ConfigurationError

app = typer.Typer(help="R3: an OpenAI-compatible server that reflects, retries and learns.", no_args_is_help=True,
                  **HELP)
app.add_typer(model.app, name="model")
app.add_typer(store.keys_app, name="keys")
app.add_typer(scenarios.app, name="scenarios")
app.add_typer(canary.app, name="canary")
app.add_typer(bench.app, name="bench")
app.command()(store.migrate)
app.command()(train.train)
app.command()(serve.serve)
app.command()(replay.replay)
app.command()(export)


def _print_version(asked: bool) -> None:
    if asked:
        print(f"r3 {version('r3')}")
        raise typer.Exit()


@app.callback()
def _options(
    _version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                  help="Print R3's version and exit."),
    _verbose: bool = typer.Option(False, "--verbose", help="On an error, show its traceback too."),  # main() reads it
) -> None:
    """R3: an OpenAI-compatible server that reflects, retries and learns."""


def main() -> None:
    """The `r3` program (`python -m r3` too)."""
    try:
        app()
    except ConfigurationError as error:
        # --verbose anywhere: `r3 --verbose serve` or `r3 serve --verbose`.
        raise SystemExit(fail(error, verbose="--verbose" in sys.argv[1:]).exit_code) from None
