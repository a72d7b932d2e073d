"""The dashboard's tests' world: a real server over a store that holds two scenarios, each a line of
adapter versions with their gate numbers, training rounds, and episodes made up in bulk (passes,
failures, rescues over several versions and tenants), written the way the episode log writes them.
The default scenario's versions carry the gate's numbers of before task families; the other's
(`OTHER`) are judged by the real gate (`trainer.gate.decide`), with task families and a probe."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import ThreadedServer, make_lora

from bench.dashboard import made_up_episodes, write_episodes
from r3.settings import Settings
from r3.store.models import TrainingRound
from r3.store.registry import version_name
from r3.store.rounds import RoundStatus
from r3.store.store import open_store
from server.app import create_app
from trainer.gate import EvalResult, decide
from trainer.probe import probe_decision

def gate_numbers(heldout: int, candidate: float, active: float, p_value: float, first_drop: float = 0.0) -> dict[str, Any]:
    """A version's `gate` metrics, shaped as trainer.gate records them."""
    return {"heldout": heldout, "candidate_second_attempt": candidate, "active_second_attempt": active,
            "p_value": p_value, "alpha": 0.05, "regression": 40, "candidate_first_attempt": 0.7 - first_drop,
            "active_first_attempt": 0.7, "first_attempt_drop": first_drop, "tolerance": 0.05}


def training_numbers(rewards: list[float], kls: list[float | None], groups: int, skipped: int) -> dict[str, Any]:
    """A round's `training` report, shaped as trainer.grpo's RoundReport writes it."""
    return {"failures": 24, "left_out": 1, "steps": len(rewards), "reward_mean": rewards, "kl": kls,
            "groups": groups, "skipped_groups": skipped}


GATE = gate_numbers(20, 0.6, 0.25, 0.0195)  # the active child's
# (gate, training, promoted, reason) of each version, oldest first: r3-v1 → r3-v2 (active) → r3-v3 (rejected).
LINE = (
    (gate_numbers(16, 0.5, 0.1875, 0.0352), training_numbers([0.25, 0.375, 0.5], [None, 0.0012, 0.0021], 18, 7),
     True, "second-attempt success higher (6 vs 1 discordant, p = 0.0352); first attempts within tolerance (+0.000)"),
    (GATE, training_numbers([0.31, 0.44, 0.5, 0.56], [0.0008, 0.0015, 0.0019, 0.0024], 24, 9),
     True, "second-attempt success higher (8 vs 1 discordant, p = 0.0195); first attempts within tolerance (+0.000)"),
    (gate_numbers(20, 0.65, 0.6, 0.5, first_drop=0.1), training_numbers([0.5, 0.5], [0.002, 0.003], 12, 8),
     False, "first-attempt success fell by 0.100 (more than 0.05) on the regression set"),
)


def judged(adapter: str | None, rescued: int, first: dict[str, list[float]]) -> EvalResult:
    """An adapter's evaluation by the gate: `rescued` of 12 held-out failures rescued, and the first
    attempts' scores on the regression set, per task family."""
    items = {f"{family}-{i}": (family, score) for family, scores in first.items() for i, score in enumerate(scores)}
    return EvalResult(adapter, {f"heldout-{i}": float(i < rescued) for i in range(12)},
                      {item: score for item, (_, score) in items.items()},
                      families={item: family for item, (family, _) in items.items()})


def probed(candidate_acc: float, base_acc: float) -> tuple[bool, dict[str, Any]]:
    """A probe of 50 items, shaped as trainer.probe.run_probe returns it."""
    passed, numbers = probe_decision(candidate_acc, base_acc, 50, max_drop=0.05)
    return passed, {**numbers, "candidate": {"acc": candidate_acc, "acc_norm": candidate_acc + 0.04, "acc_bytes": 0.6},
                    "base": {"acc": base_acc, "acc_norm": base_acc + 0.02, "acc_bytes": 0.62}}


OTHER = "sql"  # the second scenario
OTHER_EPISODES = 30  # the newest episodes of all: unfiltered, they would top every list
STEADY = [1.0] * 8 + [0.0, 1.0]  # sql_exec's first attempts: against STEADY[::-1], one item worse, one better
STRINGS = [1.0, 1.0, 0.0, 1.0]  # string_check's, the same for every adapter
# The other scenario's line, as the gate judged it: sql-v1 promoted (each family within tolerance, the
# probe passed), then sql-v2 refused: sql_exec's first attempts fell (7 items worse, significantly)
# and so did the probe's accuracy.
OTHER_LINE = tuple(decide(judged("candidate", rescued, {"sql_exec": scores, "string_check": STRINGS}),
                          judged("active", active_rescued, {"sql_exec": STEADY[::-1], "string_check": STRINGS}),
                          alpha=0.05, tolerance=0.05, probe=probed(*accuracies))
                   for rescued, active_rescued, scores, accuracies in (
                       (9, 2, STEADY, (0.62, 0.64)), (10, 3, [0.0] * 8 + [1.0, 1.0], (0.5, 0.64))))
OTHER_NAMES = [version_name(number, OTHER) for number in (1, 2)]


@contextmanager
def served_store(model_path: Path, tmp_path_factory: pytest.TempPathFactory, episodes: int, span_s: float,
                 admin_key: str) -> Iterator[tuple[Any, str, list[str]]]:
    """A real server (SQLite store, the bundled model) whose store holds the versions of `LINE` (real
    LoRA adapters; the middle one active), a finished training round for each, and `episodes` made-up
    episodes over the last `span_s` seconds, served by the base model and then each promoted version;
    and the scenario `OTHER`, with the versions of `OTHER_LINE` (the first active), a round for each
    and `OTHER_EPISODES` episodes of the last minutes. Yields (app, base url, [parent, child, rejected])
    of the default scenario."""
    settings = Settings(models_dir=model_path.parent, data_dir=tmp_path_factory.mktemp("dashboard-data"),
                        admin_key=admin_key, adapter_poll_s=0.2, adapter_grace_s=0.5, default_max_tokens=1,
                        reflection_max_tokens=2)

    async def prepare() -> list[str]:
        async with open_store(settings) as store:  # the embedded SQLite migrates itself
            now = datetime.now(UTC)
            names: list[str] = []
            for seed, (gate, training, promote, reason) in enumerate(LINE):
                folder = make_lora(model_path, tmp_path_factory.mktemp("lora") / "adapter", seed)
                version = await store.registry.register(folder, names[-1] if names else None,
                                                        {"training": training}, [])
                await store.registry.record_decision(version.name, {"gate": gate, "reason": reason}, promote=promote)
                names.append(version.name)
                finished = now - timedelta(seconds=span_s * (len(LINE) - seed) / (len(LINE) + 1))
                async with store.database.sessions.begin() as session:
                    session.add(TrainingRound(
                        status=RoundStatus.FINISHED, requested_by="schedule",
                        requested_at=finished - timedelta(minutes=9),
                        started_at=finished - timedelta(minutes=8), finished_at=finished, candidate=version.name,
                        promoted=promote, report={"train": 24, "heldout": gate["heldout"], "regression": 40,
                                                  "gate": gate, "reason": reason, "training": training}))
            served_by = [None, *(name for name, line in zip(names, LINE) if line[2])]
            await write_episodes(store.episodes,
                                 made_up_episodes(episodes, served_by, time.time() - span_s, time.time()))

            await store.scenarios.create(OTHER, "text-to-SQL queries")
            parent = None
            for seed, decision in enumerate(OTHER_LINE, start=len(LINE)):
                folder = make_lora(model_path, tmp_path_factory.mktemp("lora") / "adapter", seed)
                version = await store.registry.register(folder, parent, {}, [], scenario=OTHER)
                await store.registry.record_decision(
                    version.name, {"gate": decision.numbers, "reason": decision.reason}, promote=decision.promote)
                parent = parent or version.name  # the second is the first one's child
                async with store.database.sessions.begin() as session:
                    session.add(TrainingRound(
                        scenario=OTHER, status=RoundStatus.FINISHED, requested_by="schedule",
                        requested_at=now - timedelta(minutes=9), started_at=now - timedelta(minutes=8),
                        finished_at=now, candidate=version.name, promoted=decision.promote,
                        report={"train": 12, "gate": decision.numbers, "reason": decision.reason}))
            others = made_up_episodes(OTHER_EPISODES, [None, OTHER_NAMES[0]], time.time() - 300, time.time(), seed=3)
            for episode in others:
                episode.scenario, episode.category, episode.tenant = OTHER, "sql_exec", "sql-tenant"
            await write_episodes(store.episodes, others)
            return names

    names = asyncio.run(prepare())
    app = create_app(settings)
    with ThreadedServer(app) as base_url:
        yield app, base_url, names
