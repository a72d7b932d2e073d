"""The `r3` command's tree: `r3 serve | train | migrate | replay`, `r3 model …`, `r3 keys …`, `r3 bench …`."""

from __future__ import annotations

import typer

from cli import bench, model, replay, serve, store, train

app = typer.Typer(help="R3: an OpenAI-compatible server that reflects, retries and learns.", no_args_is_help=True)
app.add_typer(model.app, name="model")
app.add_typer(store.keys_app, name="keys")
app.add_typer(bench.app, name="bench")
app.command()(store.migrate)
app.command()(train.train)
app.command()(serve.serve)
app.command()(replay.replay)
