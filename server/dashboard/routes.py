"""The dashboard's pages and actions, under `/dashboard`.

Pages (GET) need a session; actions (POST) need a session and its CSRF token (see `session`).
Every page and action is of one scenario (`r3.store.scenarios`), the one its `?scenario=` names
(`default` without it; an unknown one is a 404 page): each link and form carries it on, and the
header's selector switches it. The numbers come from the same places as the admin API's: the
registry (versions, the audit log) and live stats of `r3.store`, the admin API's own service
(`server.admin_service`, as the typed dependency `AdminDep`) for activation, rollback, training
rounds and the live canary (its numbers, promoting or aborting it: so a click does exactly what the
API call does), and `r3.store.timeline` for the plots.
After an action the browser is redirected (POST, redirect, GET) with a one-shot notice in a cookie.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, unquote, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from r3.reflection import REFLECTION_TEMPLATES
from r3.settings import Settings
from r3.store.canaries import policy
from r3.store.live_stats import version_stats
from r3.store.models import DEFAULT_SCENARIO
from r3.store.registry import lineage as model_of
from r3.store.scenarios import ScenarioInfo, scenario_settings
from r3.store.sql import EpisodeFilter
from r3.store.timeline import first_episode_at, timeline
from server.admin_protocol import Activation
from server.admin_service import AdminService
from server.dashboard import charts, session
from server.dashboard.canary import CanaryPanel
from server.dashboard.format import install_filters
from server.dashboard.lineage import lineage
from server.deps import (AdaptersDep, AdminDep, AuthDep, EpisodeLogDep, EpisodesDep, RegistryDep, SettingsDep,
                         StoreDep)
from server.errors import APIError, clipped
from server.routes.episodes import decode_cursor, encode_cursor

router = APIRouter(prefix=session.PATH, include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
install_filters(templates.env)

EPISODES_PER_PAGE = 50
ROUNDS_SHOWN = 50
ACTIONS_SHOWN = 50
NOTICE_COOKIE = "r3_dashboard_notice"
# Only this server's own scripts, styles and forms; never framed (clickjacking); no episode id leaks
# in a Referer; admin pages are not cached.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Scope:
    """The scenario a page shows and every scenario (`default` first), for the header's selector."""

    scenario: str
    scenarios: list[ScenarioInfo]


class UnknownScenario(Exception):
    """A `?scenario=` that names no scenario: a 404 page (`unknown_scenario`)."""

    def __init__(self, name: str, scenarios: list[ScenarioInfo]) -> None:
        super().__init__(name)
        self.name, self.scenarios = name, scenarios


async def page_scope(store: StoreDep, scenario: str = Query(DEFAULT_SCENARIO)) -> Scope:
    """FastAPI dependency: the scenario the request's `?scenario=` names (raises `UnknownScenario`)."""
    scenarios = await store.scenarios.list_all()
    if not any(s.name == scenario for s in scenarios):
        raise UnknownScenario(scenario, scenarios)
    return Scope(scenario, scenarios)


ScopeDep = Annotated[Scope, Depends(page_scope)]


def _page(request: Request, name: str, scope: Scope | None = None, status: int = 200,
          **context: Any) -> HTMLResponse:
    """A page of `scope`'s scenario, with the session's CSRF token and the pending notice (which it
    then clears)."""
    notice = request.cookies.get(NOTICE_COOKIE)
    response = templates.TemplateResponse(request, name, {
        "csrf": session.csrf_token(request), "notice": unquote(notice) if notice else None,
        "scenario": scope.scenario if scope else None, "scenarios": scope.scenarios if scope else [], **context,
    }, status_code=status, headers=PAGE_HEADERS)
    if notice:
        response.delete_cookie(NOTICE_COOKIE, path=session.PATH)
    return response


async def unknown_scenario(request: Request, error: UnknownScenario) -> HTMLResponse:
    """The answer to `UnknownScenario`: a 404 page whose selector offers the scenarios there are."""
    return _page(request, "missing.html", Scope(DEFAULT_SCENARIO, error.scenarios), status=404,
                 what=f"scenario {clipped(error.name)}")


def _back(request: Request, to: str, scenario: str, notice: str) -> RedirectResponse:
    response = RedirectResponse(f"{session.PATH}{to}?{urlencode({'scenario': scenario})}", status_code=303)
    session.set_cookie(request, response, NOTICE_COOKIE, quote(notice), max_age=60)
    return response


# ------------------------------------------------------------------ login


def _login_page(request: Request, admin_key: str | None, error: str | None = None, status: int = 200) -> HTMLResponse:
    if admin_key is None:
        return _page(request, "disabled.html", status=403)
    token = session.new_login_token()
    response = _page(request, "login.html", status=status, error=error, token=token)
    session.remember_login_token(request, response, token)
    return response


@router.get("/login")
async def login_form(request: Request, auth: AuthDep) -> HTMLResponse:
    return _login_page(request, auth.admin_key)


@router.post("/login")
async def login(request: Request, auth: AuthDep) -> Response:
    if auth.admin_key is None:
        return _login_page(request, None)
    form = await request.form()
    key = form.get("key")
    if not session.login_token_matches(request, form):
        return _login_page(request, auth.admin_key, "The form expired; please log in again.", status=403)
    if not isinstance(key, str) or not session.key_matches(auth.admin_key, key):
        return _login_page(request, auth.admin_key, "That is not the admin key.", status=401)
    response = RedirectResponse(session.PATH, status_code=303)
    session.start(request, response, auth.admin_key)
    return response


@router.post("/logout")
async def logout(registry: RegistryDep, _: FormData = Depends(session.checked_form)) -> RedirectResponse:
    response = RedirectResponse(f"{session.PATH}/login", status_code=303)
    await session.end(response, registry)
    return response


# ------------------------------------------------------------------ overview


@router.get("", dependencies=[Depends(session.required)])
async def overview(request: Request, scope: ScopeDep, service: AdminDep, store: StoreDep, adapters: AdaptersDep,
                   log: EpisodeLogDep, settings: SettingsDep, window: str | None = Query(None)) -> HTMLResponse:
    now, scenario, sessions = datetime.now(UTC), scope.scenario, store.database.sessions
    span = charts.WINDOWS.get(window or "") or charts.fitting_window(await first_episode_at(sessions, scenario), now)
    since = span.start(now)
    points = await timeline(sessions, since, span.bucket_s, span.buckets, scenario)
    recorded = await store.registry.active(scenario)
    return _page(request, "overview.html", scope, window=span, windows=list(charts.WINDOWS),
                 plots=charts.overview_charts(points, span, since),
                 totals=sorted((await version_stats(sessions, since=since, scenario=scenario)).values(),
                               key=lambda s: s.version),
                 active=recorded.name if recorded else "base", serving=adapters.actives.get(scenario) or "base",
                 model=model_of(scenario), backlog=log.backlog, rejected=log.rejected,
                 trainer=await service.training_state(limit=5, scenario=scenario),
                 canary=await canary_panel(service, scope, settings))


# ------------------------------------------------------------------ versions


@router.get("/versions", dependencies=[Depends(session.required)])
async def versions(request: Request, scope: ScopeDep, store: StoreDep, adapters: AdaptersDep, service: AdminDep,
                   settings: SettingsDep) -> HTMLResponse:
    scenario = scope.scenario
    rows = lineage(await store.registry.versions(scenario),
                   await version_stats(store.database.sessions, scenario=scenario))
    return _page(request, "versions.html", scope, rows=rows, active=await store.registry.active(scenario),
                 serving=adapters.actives.get(scenario) or "base", refused=adapters.refused,
                 # its own entries, and those of no scenario (logouts), which concern every scenario
                 actions=await store.registry.actions(ACTIONS_SHOWN, scenario, unscoped=True),
                 canary=await canary_panel(service, scope, settings))


def _served(done: Activation) -> str:
    """What an activation's answer says, as a sentence."""
    said = f"{done.active} is active, this server serves {done.serving}."
    return f"{said} It cannot serve {done.active}: {done.refused}" if done.refused else said


@router.post("/versions/rollback")
async def rollback(request: Request, service: AdminDep, _: FormData = Depends(session.checked_form),
                   scope: Scope = Depends(page_scope)) -> RedirectResponse:
    try:
        done = await service.rollback(scope.scenario)
    except APIError as error:
        return _back(request, "/versions", scope.scenario, f"Rollback refused: {error.message}")
    return _back(request, "/versions", scope.scenario, f"Rolled back: {_served(done)}")


@router.post("/versions/{name}/activate")
async def activate(name: str, request: Request, service: AdminDep, _: FormData = Depends(session.checked_form),
                   scope: Scope = Depends(page_scope)) -> RedirectResponse:
    try:
        done = await service.activate(None if name == "base" else name, reason="activated from the dashboard",
                                      scenario=scope.scenario)
    except APIError as error:
        return _back(request, "/versions", scope.scenario, f"Activation refused: {error.message}")
    return _back(request, "/versions", scope.scenario, _served(done))


# ------------------------------------------------------------------ live canary


async def canary_panel(service: AdminService, scope: Scope, settings: Settings) -> CanaryPanel | None:
    """The scope's live canary (its running one, else its last), as `/admin/canary` answers; None when
    it never had one."""
    try:
        found = await service.canary(scope.scenario)
    except APIError as error:
        if error.code == "no_canary":
            return None
        raise
    if found.state != "running":
        return CanaryPanel.of(found, None)
    training = next(s.training for s in scope.scenarios if s.name == scope.scenario)
    return CanaryPanel.of(found, policy(scenario_settings(settings, training)))


async def _end_canary(request: Request, service: AdminService, scenario: str, promote: bool) -> RedirectResponse:
    """Promote or abort the scenario's running canary as `POST /admin/canary/promote|abort` does; back
    to the versions page, whose audit log shows it."""
    try:
        ended = await service.end_canary(scenario, promote)
    except APIError as error:
        return _back(request, "/versions", scenario, f"{'Promotion' if promote else 'Abort'} refused: {error.message}")
    serving = service.adapters.actives.get(scenario) or "base"
    said = (f"Canary {ended.version} promoted: it is active" if promote
            else f"Canary {ended.version} aborted: {ended.baseline} stays active")
    return _back(request, "/versions", scenario, f"{said}, this server serves {serving}.")


@router.post("/canary/promote")
async def promote_canary(request: Request, service: AdminDep, _: FormData = Depends(session.checked_form),
                         scope: Scope = Depends(page_scope)) -> RedirectResponse:
    return await _end_canary(request, service, scope.scenario, promote=True)


@router.post("/canary/abort")
async def abort_canary(request: Request, service: AdminDep, _: FormData = Depends(session.checked_form),
                       scope: Scope = Depends(page_scope)) -> RedirectResponse:
    return await _end_canary(request, service, scope.scenario, promote=False)


# ------------------------------------------------------------------ training


@router.get("/training", dependencies=[Depends(session.required)])
async def training(request: Request, scope: ScopeDep, service: AdminDep) -> HTMLResponse:
    state = await service.training_state(limit=ROUNDS_SHOWN, scenario=scope.scenario)
    round_charts = {r.round: charts.round_chart((r.report or {}).get("training") or {}) for r in state.rounds}
    return _page(request, "training.html", scope, rounds=state.rounds, round_charts=round_charts,
                 current=state.current, trainer=state.trainer)


@router.post("/training")
async def start_round(request: Request, service: AdminDep, _: FormData = Depends(session.checked_form),
                      scope: Scope = Depends(page_scope)) -> RedirectResponse:
    asked = await service.request_training(scope.scenario)
    said = (f"Round {asked.round} is already {asked.status}; no other was requested." if not asked.new
            else f"Round {asked.round} of scenario {asked.scenario} requested.")
    return _back(request, "/training", scope.scenario, f"{said} Trainer: {asked.trainer.detail}.")


# ------------------------------------------------------------------ episodes


def _moment(text: str | None, errors: list[str], name: str) -> datetime | None:
    """A time from the filter form (`datetime-local`, read as UTC); a bad one is reported and ignored."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        errors.append(f"{name}: {text!r} is not a time (YYYY-MM-DDTHH:MM)")
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@router.get("/episodes", dependencies=[Depends(session.required)])
async def episodes(request: Request, scope: ScopeDep, store: EpisodesDep, registry: RegistryDep, outcome: str = "",
                   version: str = "",
                   task_kind: str = "", tenant: str = "", since: str = "", until: str = "",
                   after: str = "") -> HTMLResponse:
    errors: list[str] = []
    cursor = None
    if after:
        try:
            cursor = decode_cursor(after)
        except APIError:
            errors.append("after: not a page of this list (the first page is shown)")
    where = EpisodeFilter(since=_moment(since, errors, "since"), until=_moment(until, errors, "until"),
                          outcome={"pass": True, "fail": False}.get(outcome), adapter=version or None,
                          task_kind=task_kind or None, tenant=tenant or None, scenario=scope.scenario)
    page = await store.list(where, EPISODES_PER_PAGE, cursor)
    filters = {"scenario": scope.scenario, "outcome": outcome, "version": version, "task_kind": task_kind,
               "tenant": tenant, "since": since, "until": until}
    next_cursor = encode_cursor(page[-1]) if len(page) == EPISODES_PER_PAGE else None
    return _page(request, "episodes.html", scope, episodes=page, filters=filters, errors=errors,
                 next_cursor=next_cursor, versions=["base", *(v.name for v in await registry.versions(scope.scenario))],
                 task_kinds=sorted(REFLECTION_TEMPLATES))


@router.get("/episodes/{episode_id}", dependencies=[Depends(session.required)])
async def episode(request: Request, episode_id: str, scope: ScopeDep, store: EpisodesDep) -> HTMLResponse:
    found = await store.get_any(episode_id)
    if found is None:
        return _page(request, "missing.html", scope, status=404, what=f"episode {clipped(episode_id)}")
    # Its own scenario's, whichever the link said: the selector and the links go on in that one.
    return _page(request, "episode.html", Scope(found.scenario, scope.scenarios), episode=found)
