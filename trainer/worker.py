"""`r3 train`: the worker that turns recorded failures into new adapter versions.

    wait ── until a scenario is due: an admin asked, enough new replayable failures arrived, or the
            interval passed (`next_scenario`: which goes next)
    round of one scenario, on its episodes alone, with its training overrides (owned by this worker,
    which marks it alive every R3_TRAIN_HEARTBEAT_S):
        select   untrained first-attempt failures (the database is the source of truth; the Redis
                 stream only wakes the worker); set aside any episode that cannot be run again as a
                 task (recorded with the reason, for the admin); deduplicate, split by prompt hash
                 into train and held-out (held-out prompts are never trained on), balance task kinds
        train    GRPO with reflection-only credit, from the active adapter (trainer.grpo); a round
                 whose rollouts carried no signal (no step changed the adapter) ends here, saying so
        register the candidate as a new version of the scenario's lineage (r3-vN, <scenario>-vN; files + sha256)
        gate     candidate vs active on all held-out failures and the retained set: first attempts that
                 passed, stratified by task family, each family checked for forgetting; and, with
                 R3_GATE_PROBE_FILE, a multiple-choice probe against the base model (trainer.gate, trainer.probe)
        decide   promote (one transaction + pub/sub event) or reject; either way keep the numbers. With
                 R3_CANARY_FRACTION, an accepted candidate first serves that share of the scenario's
                 traffic as a live canary, which the servers' sequential test promotes or aborts
        commit   mark the episodes used, finish the round row, then XACK the stream entries

Stream entries are acknowledged only after the round that covered them is committed; a worker
that dies leaves them pending, and the next one claims them (XAUTOCLAIM) and redoes the round.
A crash at any point leaves the active version as it was or fully replaced, never in between. A
round that fails marks the version it registered failed; one whose worker died is found silent by
whoever asks for or starts the next round (`r3.store.rounds`), which fails it and its version.

Under `accelerate launch` (`run_trainer`) the worker runs in the main process only; the other
processes train each round with it and touch nothing else (`trainer.distributed`).

The rounds, the episodes they use and the stream are the store's (`r3.store.rounds`,
`r3.store.stream`). `trainer.grpo` (TRL, and through it vLLM: seconds to import) is imported only
by a round that has something to train, so a round that is skipped never loads it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from r3 import bundled_model, telemetry
from r3.engines import create_engine
from r3.reflect_retry import verifier_runtime
from r3.settings import ConfigurationError, Settings
from r3.store.errors import DatabaseUnavailable
from r3.store.models import DEFAULT_SCENARIO
from r3.store.rounds import NO_SIGNAL
from r3.store.scenarios import scenario_settings
from r3.store.store import Store, open_store
from trainer.data import (
    balance,
    dedupe,
    failures_from_episodes,
    first_attempt_successes,
    retained_set,
    runnable,
    split,
)
from trainer.distributed import Launch, RoundOrder, follow
from trainer.gate import decide, evaluate_adapter
from trainer.probe import ProbeError, ProbeItem, read_probe, run_probe
from trainer.tracking import RoundRun, require

if TYPE_CHECKING:  # trainer.grpo imports TRL (and vLLM): only a round with something to train loads it
    from trainer.grpo import GRPOSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundOutcome:
    round_id: int
    candidate: str | None
    promoted: bool
    report: dict[str, Any]
    scenario: str = DEFAULT_SCENARIO


@dataclass(frozen=True)
class Waiting:
    """A scenario's claim on the next round, as `next_scenario` weighs it."""

    scenario: str
    requested: bool  # an admin asked for a round of it
    new_failures: int  # replayable first-attempt failures no round has used
    min_failures: int  # its R3_TRAIN_MIN_FAILURES
    waited_s: float  # since its last round (or since this worker started)
    interval_s: float  # its R3_TRAIN_INTERVAL_S


def next_scenario(waiting: list[Waiting]) -> tuple[str, str] | None:
    """Which scenario's round runs next, and why ("admin", "interval", "failures"); None: none is due.

    A scenario is due when an admin asked for a round of it, when it has at least its
    `R3_TRAIN_MIN_FAILURES` new failures, or when it has any and its `R3_TRAIN_INTERVAL_S` has passed
    since its last round. Among the due ones an admin's request goes first (oldest request first: the
    order given); then a scenario that has waited its interval (the longest wait first), so that a
    quiet scenario waits at most about one interval plus one round of each busier one; then the one
    with the most new failures (what most traffic is failing at now)."""
    if requested := [w for w in waiting if w.requested]:
        return requested[0].scenario, "admin"
    overdue = [w for w in waiting if w.new_failures and w.waited_s >= w.interval_s]
    if overdue:
        return max(overdue, key=lambda w: w.waited_s - w.interval_s).scenario, "interval"
    full = [w for w in waiting if w.new_failures >= w.min_failures]
    if full:
        return max(full, key=lambda w: w.new_failures).scenario, "failures"
    return None


def grpo_settings(settings: Settings) -> GRPOSettings:
    """A round's GRPO settings from R3's (`R3_TRAIN_*`, `R3_DEVICE`, `R3_DTYPE`, `R3_REFLECTION_MAX_TOKENS`).
    Imports trainer.grpo, and so TRL."""
    from trainer.grpo import GRPOSettings

    return GRPOSettings(
        learning_rate=settings.train_learning_rate, lr_scheduler_type=settings.train_lr_scheduler,
        warmup_ratio=settings.train_warmup_ratio, lora_rank=settings.train_lora_rank,
        lora_alpha=settings.train_lora_alpha, lora_target_modules=tuple(settings.train_lora_target_modules),
        num_generations=settings.train_num_generations, prompts_per_step=settings.train_prompts_per_step,
        gradient_accumulation_steps=settings.train_gradient_accumulation_steps,
        gradient_checkpointing=settings.train_gradient_checkpointing, beta=settings.train_beta,
        epsilon=settings.train_epsilon, max_reflection_tokens=settings.reflection_max_tokens,
        max_retry_tokens=settings.train_max_retry_tokens, max_prompt_tokens=settings.train_max_prompt_tokens,
        temperature=settings.train_temperature, retry_temperature=settings.train_retry_temperature,
        max_steps=settings.train_max_steps, num_epochs=settings.train_num_epochs, seed=settings.train_seed,
        shuffle_rewards=settings.train_shuffle_rewards, device=settings.device, dtype=settings.dtype,
        use_vllm=settings.train_use_vllm, vllm_mode=settings.train_vllm_mode,
        vllm_server_url=settings.train_vllm_server_url,
        vllm_gpu_memory_utilization=settings.train_vllm_gpu_memory_utilization)


# A round's size on a CPU for each of these the user did not set: a round with signal then takes
# minutes on 2 cores (4 steps of 2 failures × G reflections and retries, a gate of a few held-out
# failures), not hours. On a GPU the defaults of `Settings` stand.
CPU_ROUND = {"train_max_failures": 32, "train_max_steps": 4, "gate_samples": 2, "gate_regression_size": 16}


def sized_for_device(settings: Settings) -> Settings:
    """`settings` with `CPU_ROUND`'s value for every one of its settings not set explicitly (in the
    environment, `.env` or the constructor), when the trainer runs on the CPU; as they are on a GPU."""
    from r3.engines.device import placement  # imports torch

    if placement(settings.device, settings.dtype).device != "cpu":
        return settings
    unset = {name: value for name, value in CPU_ROUND.items() if name not in settings.model_fields_set}
    return settings.model_copy(update=unset)


def run_trainer(settings: Settings, once: bool = False) -> RoundOutcome | None:
    """`r3 train` in this process, alone or as one of those `accelerate launch` started: the main
    process runs the worker (rounds until stopped, or one with `once`) and the others follow it.
    On a CPU a round is sized by `CPU_ROUND` where the settings do not say otherwise.

    Returns the round's outcome in the main process with `once`, else None (a follower, or a worker
    that was stopped)."""
    settings = sized_for_device(settings)
    launch = Launch(settings.device)
    if not launch.is_main:
        follow(launch, settings)
        return None
    telemetry.configure_tracing(settings, "r3-trainer")  # off unless the settings ask for it
    return asyncio.run(_lead(settings, launch, once))


async def _lead(settings: Settings, launch: Launch, once: bool) -> RoundOutcome | None:
    async with open_store(settings) as store:
        worker = TrainerWorker(settings, store, launch)
        outcome = None
        try:
            if once:
                outcome = await worker.run_round(requested_by="cli")
            else:
                await worker.run_forever()  # returns only by raising
        finally:
            await worker.close()
    # Only after a clean end: after a failure the followers may be inside the round's collectives, and
    # the launcher ends them once this process exits with the error.
    launch.send(None)
    return outcome


class TrainerWorker:
    def __init__(self, settings: Settings, store: Store, launch: Launch | None = None) -> None:
        """The worker of the main process, on `store` (its opener closes it); `launch`: the processes
        that train with it (default: this one alone, or those `accelerate launch` started). Raises
        RuntimeError in any other process: only the main one touches the store (`run_trainer` makes
        the others follow)."""
        self.settings = settings
        self.launch = launch or Launch(settings.device)
        if not self.launch.is_main:
            raise RuntimeError("the trainer's worker runs in the main process only; under accelerate launch, "
                               "start the trainer with trainer.worker.run_trainer")
        self.store, self.registry, self.rounds = store, store.registry, store.rounds
        # Without Redis (the embedded default) there is no stream: the database is polled.
        self.stream = store.consumer()
        self._started = time.monotonic()
        self._last_round: dict[str, float] = {}  # scenario -> when its last round ended (monotonic)
        self._said: dict[str, int] = {}  # scenario -> its new failures when the log last said so
        # Read at the start, so a bad probe file stops the trainer at once rather than its first gate.
        try:
            self.probe: list[ProbeItem] | None = read_probe(settings.gate_probe_file) if settings.gate_probe_file else None
        except ProbeError as error:
            raise ConfigurationError(f"R3_GATE_PROBE_FILE: {error}") from None
        require(settings.train_report_to)  # a tracker without its package stops the trainer now, not a round
        # Who runs this worker's rounds, as the rounds table shows it.
        self.owner = f"{socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:8]}"

    async def close(self) -> None:
        await self.stream.close()

    # ------------------------------------------------------------------ the loop

    async def run_forever(self, poll_s: float = 5.0) -> None:
        await self.stream.claim_abandoned(int(self.settings.train_claim_idle_s * 1000))
        log.info("waiting for failed episodes: a scenario's round starts at %d new ones (R3_TRAIN_MIN_FAILURES), "
                 "or at any after %g s (R3_TRAIN_INTERVAL_S), or when an admin asks",
                 self.settings.train_min_failures, self.settings.train_interval_s)
        while True:
            due = await self._due()
            if due is not None:
                scenario, reason = due
                await self.run_round(requested_by=reason, scenario=scenario)
            else:
                await self.stream.read(poll_s)

    async def _due(self) -> tuple[str, str] | None:
        """The next scenario to train and why (`next_scenario`), from the store; None: none is due."""
        requested = await self.rounds.requested()
        counts = await self.rounds.untrained_failures_by_scenario()
        now, waiting = time.monotonic(), []
        for scenario in [*requested, *(s for s in counts if s not in requested)]:
            settings = await self._settings_of(scenario)
            waiting.append(Waiting(scenario, scenario in requested, counts.get(scenario, 0),
                                   settings.train_min_failures, now - self._last_round.get(scenario, self._started),
                                   settings.train_interval_s))
        for each in waiting:  # the log says how far each scenario is from a round, when that changes
            if self._said.get(each.scenario) != each.new_failures and not each.requested:
                self._said[each.scenario] = each.new_failures
                log.info("scenario %s: %d of the %d new failures a round needs", each.scenario, each.new_failures,
                         each.min_failures)
        return next_scenario(waiting)

    async def _settings_of(self, scenario: str) -> Settings:
        """The settings a round of `scenario` runs with: this worker's, with the scenario's overrides."""
        found = await self.store.scenarios.get(scenario)
        return scenario_settings(self.settings, found.training) if found is not None else self.settings

    # ------------------------------------------------------------------ one round

    @telemetry.tracer.start_as_current_span("r3.training_round")
    async def run_round(self, requested_by: str = "admin", scenario: str = DEFAULT_SCENARIO) -> RoundOutcome:
        """One round of `scenario`, on its episodes alone, with its training overrides."""
        while await self.stream.read(0):  # every entry announced so far is covered by this round
            pass
        acknowledged = list(self.stream.received)
        settings = await self._settings_of(scenario)
        # Rounds whose trainer died are failed here (`start`), whatever started this one.
        round_id = await self.rounds.start(requested_by, self.owner, settings.train_stale_after_s, scenario)
        telemetry.describe_round(round_id=round_id, scenario=scenario, requested_by=requested_by)
        heartbeat = asyncio.create_task(self._heartbeat(round_id), name=f"round-{round_id}-heartbeat")
        # Its trackers' runs open only once the round has something to train.
        run = RoundRun(settings.train_report_to, settings.tracking_path, scenario, round_id)
        try:
            outcome = await self._round(round_id, scenario, settings, run)
        except Exception as error:
            log.exception("training round %d failed", round_id)
            await self.rounds.fail(round_id, str(error))  # and the version it registered, if any
            await asyncio.to_thread(run.fail)
            raise
        finally:
            heartbeat.cancel()
        self._last_round[scenario] = time.monotonic()
        await self.stream.acknowledge(acknowledged)
        telemetry.describe_round(candidate=outcome.candidate, promoted=outcome.promoted,
                                 skipped=outcome.report.get("skipped"))
        return outcome

    async def _heartbeat(self, round_id: int) -> None:
        """Mark round `round_id` alive every R3_TRAIN_HEARTBEAT_S while it runs."""
        while True:
            await asyncio.sleep(self.settings.train_heartbeat_s)
            try:
                alive = await self.rounds.heartbeat(round_id, self.owner)
            except DatabaseUnavailable as error:  # the next beat may get through before the round is presumed dead
                log.warning("round %d: its heartbeat did not reach the database (%s)", round_id, error.orig)
                continue
            if not alive:
                log.error("round %d was failed as abandoned while this trainer ran it (its heartbeat was late); "
                          "it cannot be finished", round_id)
                return

    async def _round(self, round_id: int, scenario: str, settings: Settings, run: RoundRun) -> RoundOutcome:
        with telemetry.tracer.start_as_current_span("r3.select") as select:
            untrained = await self.rounds.untrained_failures(4 * settings.train_max_failures, scenario)
            every_failure = await self.rounds.failures(2000, scenario)
            # More than the retained set's size, so that rare families still have items to draw.
            passed = await self.rounds.first_attempt_passes(4 * settings.gate_regression_size, scenario)
            new_failures, refused_new = runnable(failures_from_episodes(untrained))
            all_failures, refused_all = runnable(failures_from_episodes(every_failure))
            successes, refused_passes = runnable(first_attempt_successes(passed))
            successes = retained_set(successes, settings.gate_regression_size)
            set_aside = {**refused_new, **refused_all, **refused_passes}
            if set_aside:
                log.warning("round %d sets aside %d episodes it cannot run again (GET /admin/train/set-aside): %s",
                            round_id, len(set_aside), set_aside)
                await self.rounds.set_aside(round_id, set_aside)
            train, new_heldout = split(dedupe(new_failures), settings.train_heldout_fraction)
            train = balance(train)[: settings.train_max_failures]
            prompts = dedupe(all_failures)
            _, heldout = split(prompts, settings.train_heldout_fraction)
            counts = {"train": len(train), "heldout": len(heldout), "regression": len(successes),
                      "set_aside": len(set_aside)}
            log.info("round %d (scenario %s): %s", round_id, scenario, counts)
            short = self._too_few(len(train), len(heldout), len(prompts), settings)
            select.set_attributes({f"r3.round.{name}": n for name, n in counts.items()})
        if short is not None:
            skipped = {**counts, "skipped": short}
            await self.rounds.finish(round_id, skipped)
            return RoundOutcome(round_id, None, False, skipped, scenario)

        # TRL (and with it vLLM) is loaded only now that there is something to train.
        from trainer.grpo import train_round

        active = await self.registry.active(scenario)
        order = RoundOrder(bundled_model.resolve(settings), active.path if active else None, train,
                           grpo_settings(settings))
        self.launch.send(order)
        await asyncio.to_thread(run.start)
        with tempfile.TemporaryDirectory(prefix="r3-round-") as scratch:
            with telemetry.tracer.start_as_current_span("r3.train"):
                report = await asyncio.to_thread(train_round, order.model_path, order.start_adapter, order.failures,
                                                 Path(scratch) / "adapter", order.settings,
                                                 verifier_runtime(settings), run)
            if not any(step.updated for step in report.step_logs):
                return await self._without_signal(round_id, counts, report, train, new_heldout, scenario, run)
            with telemetry.tracer.start_as_current_span("r3.register"):
                candidate = await self.registry.register(
                    Path(scratch) / "adapter", active.name if active else None,
                    {"training": _summary(report.to_dict()), **run.record()}, [f.episode_id for f in train], scenario)
                await self.rounds.registered(round_id, candidate.name)
            await asyncio.to_thread(run.link, candidate.name)

        decision = await self._gate(candidate.name, candidate.path, active, heldout, successes, settings)
        with telemetry.tracer.start_as_current_span("r3.decide", attributes={
                telemetry.PROMOTED: decision.promote, "r3.decision.reason": decision.reason}):
            canary = decision.promote and settings.canary_fraction > 0
            await self.registry.record_decision(candidate.name, {"gate": decision.numbers, "reason": decision.reason},
                                                promote=decision.promote, activate=not canary)
            if canary:
                await self.store.canaries.start(candidate.name, settings.canary_fraction)
        await self.rounds.mark_used(candidate.name, trained=[f.episode_id for f in train],
                                    held_out=[f.episode_id for f in new_heldout])
        summary = {**counts, "candidate": candidate.name, "promoted": decision.promote, "reason": decision.reason,
                   "canary": canary, "gate": decision.numbers, "training": _summary(report.to_dict()), **run.record()}
        await asyncio.to_thread(run.finish, summary)
        await self.rounds.finish(round_id, summary, candidate=candidate.name, promoted=decision.promote)
        log.info("round %d: %s %s (%s)", round_id, candidate.name,
                 "a live canary" if canary else "promoted" if decision.promote else "rejected", decision.reason)
        return RoundOutcome(round_id, candidate.name, decision.promote, summary, scenario)

    def _too_few(self, train: int, heldout: int, prompts: int, settings: Settings) -> str | None:
        """Why a round with `train` failures to train on and `heldout` held out (of `prompts` distinct
        failed prompts) cannot run, naming each number that is short and what would raise it; None
        when it can."""
        short = []
        if train < self.launch.processes:  # every training process needs a failure
            short.append(f"{train} new failures to train on, at least {self.launch.processes} needed (one per "
                         "training process): failures come from requests whose verifier said no and that kept "
                         "their text, and each is trained on once")
        if not heldout:
            fraction = settings.train_heldout_fraction
            short.append(f"none of the {prompts} distinct failed prompts is held out for the gate, at least 1 "
                         f"needed: R3_TRAIN_HELDOUT_FRACTION={fraction:g} holds out about 1 prompt in "
                         f"{round(1 / fraction):d}, so record failures on more prompts, or raise it")
        return f"too few failures: {'; and '.join(short)}" if short else None

    async def _without_signal(self, round_id: int, counts: dict[str, Any], report, train, new_heldout,
                              scenario: str, run: RoundRun) -> RoundOutcome:
        """End a round whose rollouts carried no signal: no step changed the adapter, so there is no
        candidate to register or gate. Its failures are not picked again (`NO_SIGNAL`)."""
        rewards = report.reward_mean
        outcome = ("every retry failed" if not any(rewards) else "every retry passed" if all(r == 1 for r in rewards)
                   else "the retries after each failure's reflections all passed or all failed")
        summary = {**counts, "training": _summary(report.to_dict()), "skipped": (
            f"no signal: in all {report.groups} groups of {report.steps} steps {outcome}, whatever was reflected, "
            "so no step changed the adapter; no candidate was made or gated. These failures are not picked again"),
            **run.record()}
        await self.rounds.mark_used(NO_SIGNAL, trained=[f.episode_id for f in train],
                                    held_out=[f.episode_id for f in new_heldout])
        await asyncio.to_thread(run.finish, summary)
        await self.rounds.finish(round_id, summary)
        log.info("round %d: %s", round_id, summary["skipped"])
        return RoundOutcome(round_id, None, False, summary, scenario)

    @telemetry.tracer.start_as_current_span("r3.gate")
    async def _gate(self, candidate: str, candidate_path: Path, active, heldout, successes, settings: Settings):
        # The serving engine on the trainer's device (R3_ENGINE, R3_DEVICE, R3_DTYPE), with none of
        # the server's own adapters.
        gate_settings = settings.model_copy(update={"lora_modules": {}, "served_model_name": "gate"})
        engine = await create_engine(gate_settings)
        try:
            await engine.load_adapter(candidate, candidate_path)
            if active is not None:
                await engine.load_adapter(active.name, active.path)
            runtime = verifier_runtime(settings)
            sampling = {"reflection_max_tokens": settings.reflection_max_tokens,
                        "samples": settings.gate_samples, "temperature": settings.gate_temperature}
            candidate_result = await evaluate_adapter(engine, candidate, heldout, successes, runtime, **sampling)
            active_result = await evaluate_adapter(engine, active.name if active else None, heldout, successes, runtime,
                                           **sampling)
            probe = (await run_probe(engine, self.probe, candidate, settings.gate_probe_max_drop)
                     if self.probe else None)
        finally:
            await engine.close()
        return decide(candidate_result, active_result, settings.gate_alpha, settings.gate_tolerance, probe=probe)


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The round's numbers without the per-step logs (those go to the worker's log)."""
    return {k: v for k, v in report.items() if k != "step_logs"}
