"""A scenario's live canary as the dashboard shows it: the admin API's answer (`/admin/canary`,
`server.admin_protocol.CanaryOut`) with each outcome's standing in words, and the test's statistics
as a bar chart against their boundary (the statistic over time is not stored: its values now).

The test is `r3.canary`'s: the normal mSPRT of Johari, Pekelis and Walsh on each outcome, at α/2
each; a statistic at or above the boundary log(2/α) decides (`worse` with a negative difference,
`not worse` against −margin)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from r3.canary import CanaryPolicy
from server.admin_protocol import CanaryComparison, CanaryOut

MEASURES = {"first_attempt_score": "first-attempt score", "rescue_rate": "rescue rate (of failed first attempts)"}


@dataclass(frozen=True)
class CanaryRow:
    """One outcome, canary against current, with where the test stands on it."""

    label: str
    comparison: CanaryComparison
    standing: str  # "worse", "not worse", "too few yet" or "undecided"

    @property
    def confidence(self) -> float:
        """The always-valid interval's coverage: 1 − α/2 (the boundary is log(1 / (α/2)))."""
        return 1 - math.exp(-self.comparison.boundary)


@dataclass(frozen=True)
class CanaryPanel:
    canary: CanaryOut
    policy: CanaryPolicy | None  # the test's policy now, for a running canary (None once it ended)
    rows: list[CanaryRow]
    chart: dict[str, Any] | None  # for static/dashboard.js; None without comparisons

    @property
    def running(self) -> bool:
        return self.canary.state == "running"

    @classmethod
    def of(cls, canary: CanaryOut, policy: CanaryPolicy | None) -> CanaryPanel:
        rows = [CanaryRow(MEASURES.get(c.measure, c.measure), c, _standing(c, policy)) for c in canary.comparisons]
        return cls(canary, policy, rows, chart(rows, policy))


def _standing(c: CanaryComparison, policy: CanaryPolicy | None) -> str:
    # As `r3.canary.decide` reads a comparison: none before each side has min_episodes of the outcome.
    if policy is not None and min(c.canary_n, c.current_n) < policy.min_episodes:
        return "too few yet"
    return "worse" if c.worse else "not worse" if c.not_worse else "undecided"


def chart(rows: list[CanaryRow], policy: CanaryPolicy | None) -> dict[str, Any] | None:
    """`{"id", "title", "unit", "type": "bar", "labels": [outcome], "datasets": [log Λ(0) per outcome,
    log Λ(−margin) per outcome, the boundary as a line]}` (three decimals); None without rows."""
    if not rows:
        return None
    margin = f"−{policy.margin:g}" if policy is not None else "−margin"
    boundary = rows[0].comparison.boundary
    return {"id": "canary", "title": "The test's statistics now, against the boundary", "unit": "log Λ",
            "type": "bar", "labels": [row.label for row in rows],
            "datasets": [
                {"label": "log Λ(0): worse? (if the difference is negative)",
                 "data": [round(r.comparison.worse_statistic, 3) for r in rows]},
                {"label": f"log Λ({margin}): not worse than the margin?",
                 "data": [round(r.comparison.not_worse_statistic, 3) for r in rows]},
                {"label": f"boundary log(2/α) = {boundary:.2f}", "type": "line",
                 "data": [round(boundary, 3)] * len(rows), "borderDash": [6, 4], "pointRadius": 0}]}
