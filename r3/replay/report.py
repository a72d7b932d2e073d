"""First- and second-attempt success per category, with Wilson 95% intervals.

"First": the first attempt passed its verifier. "Second": the first or the retry after one
reflection passed (the paper's second try). Both are counted over the tasks the server answered.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from r3.stats import wilson


@dataclass(frozen=True)
class Outcome:
    """One answered task, as the results log keeps it."""

    id: str
    category: str
    episode_id: str
    verdicts: list[bool | None]  # each attempt's verdict, in order
    latency_s: float

    @property
    def first(self) -> bool:
        return self.verdicts[:1] == [True]

    @property
    def second(self) -> bool:
        return True in self.verdicts[:2]


def rate(k: int, n: int) -> dict[str, Any]:
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": list(wilson(k, n))}


def summarize(outcomes: Iterable[Outcome]) -> dict[str, dict[str, Any]]:
    """Category → {"n", "first", "second"}, with "all" last (when there are several categories)."""
    groups: dict[str, list[Outcome]] = defaultdict(list)
    everything: list[Outcome] = []
    for outcome in outcomes:
        groups[outcome.category].append(outcome)
        everything.append(outcome)
    if len(groups) > 1:
        groups = {**dict(sorted(groups.items())), "all": everything}
    return {name: {"n": len(group), "first": rate(sum(o.first for o in group), len(group)),
                   "second": rate(sum(o.second for o in group), len(group))} for name, group in groups.items()}


def table(summary: dict[str, dict[str, Any]]) -> Table:
    out = Table("category", "tasks", "first attempt", "second attempt", title="replay: success (95% Wilson interval)")
    for name, row in summary.items():
        out.add_row(name, str(row["n"]), _cell(row["first"]), _cell(row["second"]))
    return out


def _cell(counted: dict[str, Any]) -> str:
    if not counted["n"]:
        return "—"
    low, high = counted["ci95"]
    return f"{counted['k']}/{counted['n']} {counted['rate']:.0%} [{low:.0%}–{high:.0%}]"
