"""Adapter versions as the Versions page shows them: in lineage order (each parent above its
children), with the gate's numbers turned into rates with 95% intervals, its check of each task
family and its general-capability probe (`trainer.gate.decide`'s numbers)."""

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
class FamilyCheck:
    """The gate's check of one task family's first attempts on the regression set (the rows of
    `trainer.gate.family_checks`)."""

    family: str  # the verifier type, or the client's metadata.category
    n: int  # items judged for both adapters
    unjudged: int
    candidate: float | None  # mean first-attempt score on those items, in [0, 1] (None: no items)
    active: float | None
    drop: float | None  # active − candidate
    candidate_better: int  # items on which the candidate's first attempt scored higher
    active_better: int
    p_adjusted: float | None  # the one-sided sign test's p-value, Holm-adjusted across the families
    refused: bool  # fell beyond the tolerance, significantly: the candidate was refused for it

    @classmethod
    def of(cls, family: str, row: dict[str, Any]) -> FamilyCheck:
        return cls(family, row.get("n", 0), row.get("unjudged", 0), row.get("candidate"), row.get("active"),
                   row.get("drop"), row.get("candidate_better", 0), row.get("active_better", 0),
                   row.get("p_adjusted"), bool(row.get("refused")))


@dataclass(frozen=True)
class ProbeNumbers:
    """The candidate against the base model on the operator's multiple-choice probe
    (`trainer.probe.run_probe`): accuracies scored as lm-evaluation-harness scores multiple_choice."""

    candidate: Rate  # acc, with its Wilson interval (the probe's own candidate_ci95)
    base: Rate
    drop: float  # base acc − candidate acc
    max_drop: float  # R3_GATE_PROBE_MAX_DROP
    refused: bool
    candidate_metrics: dict[str, float]  # acc, acc_norm (by characters), acc_bytes
    base_metrics: dict[str, float]

    @classmethod
    def of(cls, probe: dict[str, Any] | None) -> ProbeNumbers | None:
        """From the `probe` numbers the gate records (None: no probe was run)."""
        if not probe or not probe.get("n"):
            return None
        return cls(Rate.of(probe["candidate_acc"], probe["n"]), Rate.of(probe["base_acc"], probe["n"]),
                   probe["drop"], probe["max_drop"], bool(probe.get("refused")),
                   probe.get("candidate") or {}, probe.get("base") or {})


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
    families: list[FamilyCheck]  # by family name; empty for a version judged before families were checked
    probe: ProbeNumbers | None

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
                   gate.get("tolerance"),
                   [FamilyCheck.of(name, row) for name, row in sorted((gate.get("families") or {}).items())],
                   ProbeNumbers.of(gate.get("probe")))


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
