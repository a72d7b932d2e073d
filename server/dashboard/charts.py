"""The dashboard's plots as data for Chart.js: time windows, the overview's series per version, and a
training round's per-step numbers.

The server does the arithmetic (buckets come counted from the database, rates and means are made
here); the page only draws what it is handed (static/dashboard.js).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from r3.store.timeline import TimelinePoint


@dataclass(frozen=True)
class Window:
    name: str  # as the page's selector and URL say it: "24h"
    seconds: int
    buckets: int

    @property
    def bucket_s(self) -> int:
        return self.seconds // self.buckets

    def start(self, now: datetime) -> datetime:
        """The first bucket's start: buckets begin on multiples of `bucket_s`, and the last holds `now`."""
        last = int(now.timestamp()) // self.bucket_s * self.bucket_s
        return datetime.fromtimestamp(last - (self.buckets - 1) * self.bucket_s, UTC)


WINDOWS = {w.name: w for w in (Window("1h", 3600, 60), Window("6h", 6 * 3600, 72), Window("24h", 24 * 3600, 96),
                               Window("7d", 7 * 24 * 3600, 84), Window("30d", 30 * 24 * 3600, 90))}


def fitting_window(first_episode: datetime | None, now: datetime) -> Window:
    """The overview's window when none is asked for: the shortest that holds every episode since the
    first (a young install's hour of data fills the 1h plot, not a sliver of 24h); 30d at most."""
    age_s = 0.0 if first_episode is None else (now - first_episode).total_seconds()
    return next((w for w in WINDOWS.values() if age_s <= w.seconds), WINDOWS["30d"])


def _percent(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 1) if whole else None


def _mean(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# (chart id, title, axis unit, the value of one bucket of one version); each pass rate is followed by
# its mean score in [0, 1].
_SERIES = (
    ("requests", "Requests", "requests", lambda p: p.stats.requests),
    ("first-attempt", "First-attempt success", "%", lambda p: _percent(p.stats.first_successes, p.stats.judged)),
    ("first-attempt-score", "Mean first-attempt score", "score", lambda p: _mean(p.stats.first_attempt_score)),
    ("rescues", "Rescued by reflecting (of the failures retried)", "%",
     lambda p: _percent(p.stats.rescued, p.stats.reflected)),
    ("retry-score", "Mean score after reflecting (of the failures retried)", "score",
     lambda p: _mean(p.stats.second_attempt_score)),
    ("latency", "Mean latency per request", "s",
     lambda p: None if p.mean_latency_s is None else round(p.mean_latency_s, 3)),
)


def overview_charts(points: list[TimelinePoint], window: Window, since: datetime) -> list[dict[str, Any]]:
    """`[{"id", "title", "unit", "labels": [bucket start, UTC], "datasets": [{"label": version,
    "data": [value or None per bucket]}]}]`: a chart per series, a line per version; None where a
    version served nothing (or nothing judged), which Chart.js draws as a gap."""
    labels = [(since + timedelta(seconds=i * window.bucket_s)).strftime("%m-%d %H:%M") for i in range(window.buckets)]
    by_version: dict[str, list[TimelinePoint]] = defaultdict(list)
    for point in points:
        by_version[point.stats.version].append(point)
    charts = []
    for chart_id, title, unit, value in _SERIES:
        datasets = []
        for version, version_points in sorted(by_version.items()):
            data: list[float | int | None] = [None] * window.buckets
            for point in version_points:
                data[point.bucket] = value(point)
            datasets.append({"label": version, "data": data})
        charts.append({"id": chart_id, "title": title, "unit": unit, "labels": labels, "datasets": datasets})
    return charts


def round_chart(training: dict[str, Any]) -> dict[str, Any] | None:
    """A training round's reward mean and KL per step (from its report's `training`), or None when it
    took no step."""
    rewards, kls = training.get("reward_mean") or [], training.get("kl") or []
    if not rewards:
        return None
    return {"unit": "reward", "labels": [str(step) for step in range(1, len(rewards) + 1)],
            "datasets": [{"label": "reward mean", "data": rewards},
                         {"label": "KL to the base", "data": kls, "yAxisID": "kl"}]}
