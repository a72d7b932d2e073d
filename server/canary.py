"""The live canary's watch: every `R3_CANARY_CHECK_S` each server runs the sequential test
(`r3.canary.decide`) on each running canary's live outcomes, read from the store, and acts on its
decision: promote the canary's version, abort it, or give up and keep the current one. Several
replicas may watch at once: the store ends a canary once (`r3.store.canaries`), whoever is first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from r3.canary import CanaryDecision, Verdict
from r3.settings import Settings
from r3.store.canaries import CanaryInfo
from r3.store.models import CanaryState
from r3.store.store import Store

log = logging.getLogger(__name__)

ACTOR = "canary"  # who the audit log says decided, when the test did


class CanaryWatch:
    def __init__(self, store: Store, settings: Settings, on_decision: Callable[[], object] = lambda: None) -> None:
        self.store, self.settings = store, settings
        self.on_decision = on_decision  # e.g. the adapter manager's sync: serve the outcome at once

    async def verdict(self, canary: CanaryInfo) -> Verdict:
        """The test on `canary`'s outcomes now, under its scenario's policy."""
        return await self.store.canaries.verdict(canary, self.settings)

    async def check(self) -> list[tuple[CanaryInfo, Verdict]]:
        """Run the test on every running canary and act on its decision; returns each canary decided."""
        decided = []
        for canary in await self.store.canaries.running():
            verdict = await self.verdict(canary)
            numbers = verdict.numbers()
            if verdict.decision is CanaryDecision.CONTINUE:
                await self.store.canaries.record(canary.id, numbers)
                continue
            if verdict.decision is CanaryDecision.PROMOTE:
                done = await self.store.canaries.promote(canary.id, ACTOR, verdict.reason, numbers)
            else:
                state = CanaryState.ABORTED if verdict.decision is CanaryDecision.ABORT else CanaryState.GAVE_UP
                done = await self.store.canaries.end(canary.id, state, ACTOR, verdict.reason, numbers)
            if done:
                log.warning("canary %s in scenario %s: %s (%s)", canary.version, canary.scenario,
                            verdict.decision.value, verdict.reason)
                decided.append((canary, verdict))
        if decided:
            await self.on_decision()
        return decided

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.canary_check_s)
            started = time.monotonic()
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - the watch must keep running
                log.exception("canary check failed after %.1f s", time.monotonic() - started)
