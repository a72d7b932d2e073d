"""`r3 bench …`: the benchmarks that need the whole system (the others are scripts: BENCHMARKS.md).

The benchmarks live in the repository's `bench/`, which the wheel does not install: `r3 bench` runs
them from the checkout R3 is installed from (`make serve` installs it editable), and says so where
there is none.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import typer

from r3.cli.console import HELP

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
    reward: Literal["binary", "graded"] = typer.Option(
        "binary", help="planted only (bench/planted.py REWARDS): binary, a retry passes iff its reflection is "
        "short; graded, it is scored by the reflection's length (writes learn_planted_graded.json and .png)."),
    scenarios: int = typer.Option(1, min=1, max=2, help="planted only: 2 runs two scenarios on one server, each "
                                  "with its own planted rule and lineage (writes learn_planted_scenarios.json and .png)."),
    canary_fraction: float = typer.Option(0.0, min=0.0, max=0.99, help="planted only: R3_CANARY_FRACTION; > 0 makes "
                                          "an accepted candidate a live canary, sent live requests until the "
                                          "server's test decides."),
    control: bool = typer.Option(True, help="planted, one scenario: also run the shuffled-reward control round."),
) -> None:
    """The learning experiment: the real serve → reflect → train → gate → hot-swap loop on a task suite."""
    import dataclasses

    experiment = _bench_module("learn")

    if suite == "planted":
        config = dataclasses.replace(experiment.PLANTED, seed=seed, reward=reward, scenarios=scenarios,
                                     canary_fraction=canary_fraction, control=control)
    else:
        config = experiment.Config(minutes=minutes, seed=seed, heldout=heldout, batch=batch,
                                   train_max_steps=train_max_steps, train_max_failures=train_max_failures,
                                   families=tuple(families.split(",")))
    experiment.main(config, Path(out))


def _bench_module(name: str):
    """`bench.<name>` from the checkout this package was installed from; one line and exit 2 elsewhere."""
    import importlib

    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / "bench" / "__init__.py").exists():
        typer.echo("r3 bench runs the benchmarks of R3's source repository (bench/ is not installed with the "
                   "package): run it from a checkout, installed with `make serve` or `pip install -e .`", err=True)
        raise typer.Exit(2)
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    return importlib.import_module(f"bench.{name}")
