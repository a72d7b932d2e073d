"""Adapter versions as the Versions page shows them: in lineage order (each parent above its
children), with the gate's numbers turned into rates with 95% intervals."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from r3.stats import wilson
from r3.store.live_stats import VersionStats
from r3.store.registry import Version

@dataclass(frozen=True)
class Rate:
    """`successes` of `n`, with its Wilson score interval (sound for small `n` and for rates of 0 or 1)."""

    successes: int
    n: int

    @property
    def value(self) -> float:
        return self.successes / self.n

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.successes, self.n)

    @classmethod
    def of(cls, rate: float | None, n: int | None) -> Rate | None:
        """From a rate over `n` items, as the gate records them (None when there were no items)."""
        if rate is None or not n:
            return None
        return cls(round(rate * n), n)


@dataclass(frozen=True)
class GateNumbers:
    """The gate's comparison of a candidate with the version active when it was judged."""

    candidate_second: Rate | None  # held-out retries after reflecting that passed (samples × failures)
    active_second: Rate | None
    p_value: float | None  # one-sided exact sign test over the held-out items
    alpha: float | None
    candidate_first: Rate | None  # first attempts passed on the regression set
    active_first: Rate | None
    first_attempt_drop: float | None
    tolerance: float | None

    @classmethod
    def of(cls, gate: dict[str, Any] | None) -> GateNumbers | None:
        """From the `gate` numbers trainer.gate records in a version's metrics (None: never judged)."""
        if not gate:
            return None
        heldout, regression = (gate.get("heldout") or 0) * gate.get("samples", 1), gate.get("regression")
        return cls(Rate.of(gate.get("candidate_second_attempt"), heldout),
                   Rate.of(gate.get("active_second_attempt"), heldout), gate.get("p_value"), gate.get("alpha"),
                   Rate.of(gate.get("candidate_first_attempt"), regression),
                   Rate.of(gate.get("active_first_attempt"), regression), gate.get("first_attempt_drop"),
                   gate.get("tolerance"))


@dataclass(frozen=True)
class VersionRow:
    version: Version
    depth: int  # generations below the first version of its line
    gate: GateNumbers | None
    reason: str | None  # why the gate promoted or rejected it
    live: VersionStats | None  # every episode it served


def lineage(versions: list[Version], live: dict[str, VersionStats]) -> list[VersionRow]:
    """Depth-first from the versions without a (known) parent, children in the order they were made."""
    names = {v.name for v in versions}
    children: dict[str | None, list[Version]] = defaultdict(list)
    for version in sorted(versions, key=lambda v: v.number):
        children[version.parent if version.parent in names else None].append(version)
    rows: list[VersionRow] = []
    stack = [(v, 0) for v in reversed(children[None])]
    while stack:  # iterative: a line of a thousand versions must not hit the recursion limit
        version, depth = stack.pop()
        rows.append(VersionRow(version, depth, GateNumbers.of(version.metrics.get("gate")),
                               version.metrics.get("reason"), live.get(version.name)))
        stack.extend((child, depth + 1) for child in reversed(children[version.name]))
    return rows
