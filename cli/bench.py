"""`r3 bench …`: the benchmarks that need the whole system (the others are scripts: BENCHMARKS.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.console import HELP

app = typer.Typer(help="Benchmarks.", no_args_is_help=True, **HELP)


@app.command("learn")
def learn(
    minutes: float = typer.Option(35.0, help="Time for the whole experiment: baseline, rounds, evaluations."),
    seed: int = typer.Option(0, help="Seeds the task suite (the held-out set uses another seed derived from it)."),
    heldout: int = typer.Option(80, help="Held-out tasks evaluated on every version."),
    batch: int = typer.Option(48, help="Training tasks sent through the API before each round."),
    train_max_steps: int = typer.Option(8, help="GRPO steps per round (R3_TRAIN_MAX_STEPS)."),
    train_max_failures: int = typer.Option(16, help="Failures trained on per round (R3_TRAIN_MAX_FAILURES)."),
    families: str = typer.Option("countdown2", help="Task families, comma-separated: countdown2, countdown3, "
                                 "timer, weather, message, currency, alarm."),
    out: str = typer.Option("bench/results", help="Where learn.json and learn.png go."),
    suite: str = typer.Option("tasks", help="tasks: the families above; planted: the planted-reward suite "
                              "(bench/planted.py) with its own defaults (the options above are ignored) and a "
                              "shuffled-reward control; writes learn_planted.json and .png."),
) -> None:
    """The learning experiment: the real serve → reflect → train → gate → hot-swap loop on a task suite."""
    import dataclasses

    from bench import learn as experiment

    if suite == "planted":
        config = dataclasses.replace(experiment.PLANTED, seed=seed)
    else:
        config = experiment.Config(minutes=minutes, seed=seed, heldout=heldout, batch=batch,
                                   train_max_steps=train_max_steps, train_max_failures=train_max_failures,
                                   families=tuple(families.split(",")))
    experiment.main(config, Path(out))
