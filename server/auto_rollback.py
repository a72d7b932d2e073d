"""Automatic rollback: a newly promoted version whose live success rate falls significantly below
its parent's is replaced by the parent, and the reason recorded; in each scenario, on its own traffic.

Every `check_s` the server compares the active version's episodes since its promotion with the
parent's episodes over the same length of time before it, on final success among judged episodes.
It rolls back when both have at least `min_episodes` and a one-sided two-proportion z-test says the
active version is worse at significance `alpha`. Several replicas may check at once; the registry's
`expected_active` makes the rollback happen once.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from r3.store.live_stats import version_stats
from r3.store.registry import Version
from r3.store.store import Store

log = logging.getLogger(__name__)


def one_sided_p(successes_new: int, n_new: int, successes_old: int, n_old: int) -> float:
    """p-value of "the new rate is lower than the old" (pooled two-proportion z-test)."""
    pooled = (successes_new + successes_old) / (n_new + n_old)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n_new + 1 / n_old))
    if spread == 0:
        return 1.0
    z = (successes_new / n_new - successes_old / n_old) / spread
    return 0.5 * math.erfc(-z / math.sqrt(2))  # Φ(z)


@dataclass
class AutoRollback:
    store: Store
    min_episodes: int = 50
    alpha: float = 0.01
    check_s: float = 30.0

    async def check(self) -> str | None:
        """Roll back, in each scenario, an active version significantly worse than its parent; returns
        the reasons (None: no rollback)."""
        reasons = [reason for active in (await self.store.registry.actives()).values()
                   if (reason := await self._check(active)) is not None]
        return "; ".join(reasons) or None

    async def _check(self, active: Version) -> str | None:
        registry, sessions = self.store.registry, self.store.database.sessions
        if active.promoted_at is None:
            return None
        promoted = active.promoted_at if active.promoted_at.tzinfo else active.promoted_at.replace(tzinfo=UTC)
        now = datetime.now(UTC)
        after = (await version_stats(sessions, since=promoted, scenario=active.scenario)).get(active.name)
        before = (await version_stats(sessions, since=promoted - (now - promoted), until=promoted,
                                      scenario=active.scenario)).get(active.parent or "base")
        if after is None or before is None or min(after.judged, before.judged) < self.min_episodes:
            return None
        p = one_sided_p(after.successes, after.judged, before.successes, before.judged)
        if p >= self.alpha:
            return None
        reason = (f"live success {after.successes}/{after.judged} vs parent {active.parent or 'base'} "
                  f"{before.successes}/{before.judged}: one-sided p = {p:.4g} < {self.alpha}")
        if not await registry.activate(active.parent, actor="auto-rollback", reason=reason,
                                       expected_active=active.name, scenario=active.scenario):
            return None  # another replica got there first
        log.warning("auto-rollback from %s: %s", active.name, reason)
        return reason

    async def run_forever(self, on_rollback) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            try:
                if await self.check():
                    on_rollback()
            except Exception:  # noqa: BLE001 - the check must keep running
                log.exception("auto-rollback check failed")
