"""`r3 train`: the worker that turns recorded failures into new adapter versions.

    wait ── until enough new replayable failures arrived, the interval passed, or an admin asked
    round (owned by this worker, which marks it alive every R3_TRAIN_HEARTBEAT_S):
        select   untrained first-attempt failures (the database is the source of truth; the Redis
                 stream only wakes the worker); set aside any episode that cannot be run again as a
                 task (recorded with the reason, for the admin); deduplicate, split by prompt hash
                 into train and held-out (held-out prompts are never trained on), balance task kinds
        train    GRPO with reflection-only credit, from the active adapter (trainer.grpo); a round
                 whose rollouts carried no signal (no step changed the adapter) ends here, saying so
        register the candidate as a new version (r3-vN, files + sha256)
        gate     candidate vs active on all held-out failures and a regression set (trainer.gate)
        decide   promote (one transaction + pub/sub event) or reject; either way keep the numbers
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

from r3 import bundled_model
from r3.engines import create_engine
from r3.reflect_retry import verifier_runtime
from r3.settings import Settings
from r3.store.errors import DatabaseUnavailable
from r3.store.rounds import NO_SIGNAL
from r3.store.store import Store, open_store
from trainer.data import (
    balance,
    dedupe,
    failures_from_episodes,
    first_attempt_successes,
    runnable,
    split,
)
from trainer.distributed import Launch, RoundOrder, follow
from trainer.gate import decide, evaluate_adapter

if TYPE_CHECKING:  # trainer.grpo imports TRL (and vLLM): only a round with something to train loads it
    from trainer.grpo import GRPOSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundOutcome:
    round_id: int
    candidate: str | None
    promoted: bool
    report: dict[str, Any]


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
        self._last_round = time.monotonic()
        # Who runs this worker's rounds, as the rounds table shows it.
        self.owner = f"{socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:8]}"

    async def close(self) -> None:
        await self.stream.close()

    # ------------------------------------------------------------------ the loop

    async def run_forever(self, poll_s: float = 5.0) -> None:
        await self.stream.claim_abandoned(int(self.settings.train_claim_idle_s * 1000))
        while True:
            reason = await self._due()
            if reason:
                await self.run_round(requested_by=reason)
            else:
                await self.stream.read(poll_s)

    async def _due(self) -> str | None:
        if await self.rounds.requested():
            return "admin"
        waiting = await self.rounds.count_untrained_failures()
        if waiting >= self.settings.train_min_failures:
            return "failures"
        if waiting and time.monotonic() - self._last_round >= self.settings.train_interval_s:
            return "interval"
        return None

    # ------------------------------------------------------------------ one round

    async def run_round(self, requested_by: str = "admin") -> RoundOutcome:
        while await self.stream.read(0):  # every entry announced so far is covered by this round
            pass
        acknowledged = list(self.stream.received)
        # Rounds whose trainer died are failed here (`start`), whatever started this one.
        round_id = await self.rounds.start(requested_by, self.owner, self.settings.train_stale_after_s)
        heartbeat = asyncio.create_task(self._heartbeat(round_id), name=f"round-{round_id}-heartbeat")
        try:
            outcome = await self._round(round_id)
        except Exception as error:
            log.exception("training round %d failed", round_id)
            await self.rounds.fail(round_id, str(error))  # and the version it registered, if any
            raise
        finally:
            heartbeat.cancel()
        self._last_round = time.monotonic()
        await self.stream.acknowledge(acknowledged)
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

    async def _round(self, round_id: int) -> RoundOutcome:
        settings = self.settings
        untrained = await self.rounds.untrained_failures(4 * settings.train_max_failures)
        every_failure = await self.rounds.failures(2000)
        passed = await self.rounds.first_attempt_passes(settings.gate_regression_size)
        new_failures, refused_new = runnable(failures_from_episodes(untrained))
        all_failures, refused_all = runnable(failures_from_episodes(every_failure))
        successes, refused_passes = runnable(first_attempt_successes(passed))
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
        log.info("round %d: %s", round_id, counts)
        short = self._too_few(len(train), len(heldout), len(prompts))
        if short is not None:
            skipped = {**counts, "skipped": short}
            await self.rounds.finish(round_id, skipped)
            return RoundOutcome(round_id, None, False, skipped)

        # TRL (and with it vLLM) is loaded only now that there is something to train.
        from trainer.grpo import train_round

        active = await self.registry.active()
        order = RoundOrder(bundled_model.resolve(settings), active.path if active else None, train,
                           grpo_settings(settings))
        self.launch.send(order)
        with tempfile.TemporaryDirectory(prefix="r3-round-") as scratch:
            report = await asyncio.to_thread(train_round, order.model_path, order.start_adapter, order.failures,
                                             Path(scratch) / "adapter", order.settings, verifier_runtime(settings))
            if not any(step.updated for step in report.step_logs):
                return await self._without_signal(round_id, counts, report, train, new_heldout)
            candidate = await self.registry.register(
                Path(scratch) / "adapter", active.name if active else None,
                {"training": _summary(report.to_dict())}, [f.episode_id for f in train])
            await self.rounds.registered(round_id, candidate.name)

        decision = await self._gate(candidate.name, candidate.path, active, heldout, successes)
        await self.registry.record_decision(candidate.name, {"gate": decision.numbers, "reason": decision.reason},
                                            promote=decision.promote)
        await self.rounds.mark_used(candidate.name, trained=[f.episode_id for f in train],
                                    held_out=[f.episode_id for f in new_heldout])
        summary = {**counts, "candidate": candidate.name, "promoted": decision.promote, "reason": decision.reason,
                   "gate": decision.numbers, "training": _summary(report.to_dict())}
        await self.rounds.finish(round_id, summary, candidate=candidate.name, promoted=decision.promote)
        log.info("round %d: %s %s (%s)", round_id, candidate.name,
                 "promoted" if decision.promote else "rejected", decision.reason)
        return RoundOutcome(round_id, candidate.name, decision.promote, summary)

    def _too_few(self, train: int, heldout: int, prompts: int) -> str | None:
        """Why a round with `train` failures to train on and `heldout` held out (of `prompts` distinct
        failed prompts) cannot run, naming each number that is short and what would raise it; None
        when it can."""
        short = []
        if train < self.launch.processes:  # every training process needs a failure
            short.append(f"{train} new failures to train on, at least {self.launch.processes} needed (one per "
                         "training process): failures come from requests whose verifier said no and that kept "
                         "their text, and each is trained on once")
        if not heldout:
            fraction = self.settings.train_heldout_fraction
            short.append(f"none of the {prompts} distinct failed prompts is held out for the gate, at least 1 "
                         f"needed: R3_TRAIN_HELDOUT_FRACTION={fraction:g} holds out about 1 prompt in "
                         f"{round(1 / fraction):d}, so record failures on more prompts, or raise it")
        return f"too few failures: {'; and '.join(short)}" if short else None

    async def _without_signal(self, round_id: int, counts: dict[str, Any], report, train, new_heldout) -> RoundOutcome:
        """End a round whose rollouts carried no signal: no step changed the adapter, so there is no
        candidate to register or gate. Its failures are not picked again (`NO_SIGNAL`)."""
        rewards = report.reward_mean
        outcome = ("every retry failed" if not any(rewards) else "every retry passed" if all(r == 1 for r in rewards)
                   else "the retries after each failure's reflections all passed or all failed")
        summary = {**counts, "training": _summary(report.to_dict()), "skipped": (
            f"no signal: in all {report.groups} groups of {report.steps} steps {outcome}, whatever was reflected, "
            "so no step changed the adapter; no candidate was made or gated. These failures are not picked again")}
        await self.rounds.mark_used(NO_SIGNAL, trained=[f.episode_id for f in train],
                                    held_out=[f.episode_id for f in new_heldout])
        await self.rounds.finish(round_id, summary)
        log.info("round %d: %s", round_id, summary["skipped"])
        return RoundOutcome(round_id, None, False, summary)

    async def _gate(self, candidate: str, candidate_path: Path, active, heldout, successes):
        # The serving engine on the trainer's device (R3_ENGINE, R3_DEVICE, R3_DTYPE), with none of
        # the server's own adapters.
        gate_settings = self.settings.model_copy(update={"lora_modules": {}, "served_model_name": "gate"})
        engine = await create_engine(gate_settings)
        try:
            await engine.load_adapter(candidate, candidate_path)
            if active is not None:
                await engine.load_adapter(active.name, active.path)
            runtime = verifier_runtime(self.settings)
            sampling = {"reflection_max_tokens": self.settings.reflection_max_tokens,
                        "samples": self.settings.gate_samples, "temperature": self.settings.gate_temperature}
            candidate_result = await evaluate_adapter(engine, candidate, heldout, successes, runtime, **sampling)
            active_result = await evaluate_adapter(engine, active.name if active else None, heldout, successes, runtime,
                                           **sampling)
        finally:
            await engine.close()
        return decide(candidate_result, active_result, self.settings.gate_alpha, self.settings.gate_tolerance)


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The round's numbers without the per-step logs (those go to the worker's log)."""
    return {k: v for k, v in report.items() if k != "step_logs"}
