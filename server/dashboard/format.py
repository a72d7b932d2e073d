"""How the dashboard's templates write numbers, times, JSON (Jinja filters) and links (`href`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, pass_context
from jinja2.runtime import Context

from r3.episodes import ABANDONED, AttemptRecord, Episode
from server.dashboard.lineage import Rate


def when(moment: datetime | float | None) -> str:
    """A moment (an aware or UTC-naive datetime, or Unix seconds) as UTC text; "—" for none."""
    if moment is None:
        return "—"
    if isinstance(moment, int | float):
        moment = datetime.fromtimestamp(moment, UTC)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # SQLite gives back UTC without its offset
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def rate(value: Rate | None) -> str:
    """"41.2% (7/17, 95% CI 21.6–64.0%)"."""
    if value is None:
        return "—"
    low, high = value.interval
    return f"{100 * value.value:.1f}% ({value.successes}/{value.n}, 95% CI {100 * low:.1f}–{100 * high:.1f}%)"


def number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def score(value: float | None) -> str:
    """A score in [0, 1] (or a mean of scores) to three places: "0.750"; "—" for none."""
    return "—" if value is None else f"{value:.3f}"


def verdict(success: bool | None) -> str:
    return {True: "pass", False: "fail", None: "not judged"}[success]


def outcome(episode: Episode) -> str:
    """An episode's outcome in a word: its latest attempt's verdict (`attempt_verdict`, the client's
    feedback overriding the verifier's), or "not judged" when it has no attempt."""
    return attempt_verdict(episode.latest, with_feedback=True) if episode.attempts else verdict(None)


def attempt_verdict(attempt: AttemptRecord, with_feedback: bool = False) -> str:
    """An attempt's verdict in a word: pass, fail, unjudged (the verifier could give no verdict, its
    detail says why), abandoned (its client hung up during it, before it was answered), or not judged
    (no verifier). `with_feedback`: the client's feedback, where given, overrides the verifier's."""
    if attempt.finish_reason == ABANDONED:
        return ABANDONED
    if with_feedback and attempt.feedback:
        return verdict(attempt.feedback.success)
    return "unjudged" if attempt.unjudged else verdict(attempt.success)


def signed(value: float | None, digits: int = 3) -> str:
    """A change, with its sign: "+0.125", "-0.040"; "—" for none."""
    return "—" if value is None else f"{value:+.{digits}f}"


@pass_context
def href(context: Context, path: str, **params: Any) -> str:
    """`path` with the page's scenario (the template's `scenario`) and `params` (empty ones left out)
    as its query: every link of a page stays in its scenario."""
    query = {"scenario": context.get("scenario"), **params}
    query = {name: value for name, value in query.items() if value not in (None, "")}
    return f"{path}?{urlencode(query)}" if query else path


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def install_filters(environment: Environment) -> None:
    environment.filters.update(when=when, percent=percent, rate=rate, number=number, score=score, signed=signed,
                               verdict=verdict, outcome=outcome, attempt_verdict=attempt_verdict,
                               pretty_json=pretty_json)
    environment.globals.update(href=href)
