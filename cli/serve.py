"""`r3 serve`: the API server."""

from __future__ import annotations

import logging

import typer

from cli.console import fail
from cli.store import check_database
from r3 import bundled_model
from r3.settings import get_settings


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
        raise fail(error) from error
    check_database()

    # Here, not at the top: the server loads torch and the engines.
    from server.app import create_app

    uvicorn.run(create_app, factory=True, host=host or settings.host, port=port or settings.port)
