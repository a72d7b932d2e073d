"""The dashboard's pages and actions, under `/dashboard`.

Pages (GET) need a session; actions (POST) need a session and its CSRF token (see `session`).
The numbers come from the same places as the admin API's: the registry and live stats of
`r3.store`, the admin API's own service (`server.admin_service`, as the typed dependency `AdminDep`)
for activation, rollback, training rounds and the audit log (so a click does exactly what the API
call does), and `r3.store.timeline` for the plots. After an action
the browser is redirected (POST, redirect, GET) with a one-shot notice in a cookie.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from r3.reflection import REFLECTION_TEMPLATES
from r3.store.live_stats import version_stats
from r3.store.sql import EpisodeFilter
from r3.store.timeline import first_episode_at, timeline
from server.admin_protocol import Activation
from server.dashboard import charts, session
from server.dashboard.format import install_filters
from server.dashboard.lineage import lineage
from server.deps import AdaptersDep, AdminDep, AuthDep, EpisodeLogDep, EpisodesDep, RegistryDep, StoreDep
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


def _page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page, with the session's CSRF token and the pending notice (which it then clears)."""
    notice = request.cookies.get(NOTICE_COOKIE)
    response = templates.TemplateResponse(request, name, {
        "csrf": session.csrf_token(request), "notice": unquote(notice) if notice else None, **context,
    }, status_code=status, headers=PAGE_HEADERS)
    if notice:
        response.delete_cookie(NOTICE_COOKIE, path=session.PATH)
    return response


def _back(request: Request, to: str, notice: str) -> RedirectResponse:
    response = RedirectResponse(f"{session.PATH}{to}", status_code=303)
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
async def overview(request: Request, service: AdminDep, store: StoreDep, adapters: AdaptersDep,
                   log: EpisodeLogDep, window: str | None = Query(None)) -> HTMLResponse:
    now = datetime.now(UTC)
    sessions = store.database.sessions
    span = charts.WINDOWS.get(window or "") or charts.fitting_window(await first_episode_at(sessions), now)
    since = span.start(now)
    points = await timeline(sessions, since, span.bucket_s, span.buckets)
    recorded = await store.registry.active()
    return _page(request, "overview.html", window=span, windows=list(charts.WINDOWS),
                 plots=charts.overview_charts(points, span, since),
                 totals=sorted((await version_stats(sessions, since=since)).values(),
                               key=lambda s: s.version),
                 active=recorded.name if recorded else "base", serving=adapters.active or "base",
                 backlog=log.backlog, rejected=log.rejected,
                 trainer=await service.training_state(limit=5))


# ------------------------------------------------------------------ versions


@router.get("/versions", dependencies=[Depends(session.required)])
async def versions(request: Request, service: AdminDep, store: StoreDep, adapters: AdaptersDep) -> HTMLResponse:
    recorded = await store.registry.active()
    rows = lineage(await store.registry.versions(), await version_stats(store.database.sessions))
    return _page(request, "versions.html", rows=rows, active=recorded,
                 serving=adapters.active or "base", refused=adapters.refused,
                 actions=(await service.actions(ACTIONS_SHOWN)).data)


def _served(done: Activation) -> str:
    """What an activation's answer says, as a sentence."""
    said = f"{done.active} is active, this server serves {done.serving}."
    return f"{said} It cannot serve {done.active}: {done.refused}" if done.refused else said


@router.post("/versions/rollback")
async def rollback(request: Request, service: AdminDep,
                   _: FormData = Depends(session.checked_form)) -> RedirectResponse:
    try:
        done = await service.rollback()
    except APIError as error:
        return _back(request, "/versions", f"Rollback refused: {error.message}")
    return _back(request, "/versions", f"Rolled back: {_served(done)}")


@router.post("/versions/{name}/activate")
async def activate(name: str, request: Request, service: AdminDep,
                   _: FormData = Depends(session.checked_form)) -> RedirectResponse:
    try:
        done = await service.activate(None if name == "base" else name, reason="activated from the dashboard")
    except APIError as error:
        return _back(request, "/versions", f"Activation refused: {error.message}")
    return _back(request, "/versions", _served(done))


# ------------------------------------------------------------------ training


@router.get("/training", dependencies=[Depends(session.required)])
async def training(request: Request, service: AdminDep) -> HTMLResponse:
    state = await service.training_state(limit=ROUNDS_SHOWN)
    round_charts = {r.round: charts.round_chart((r.report or {}).get("training") or {}) for r in state.rounds}
    return _page(request, "training.html", rounds=state.rounds, round_charts=round_charts, current=state.current,
                 trainer=state.trainer)


@router.post("/training")
async def start_round(request: Request, service: AdminDep,
                      _: FormData = Depends(session.checked_form)) -> RedirectResponse:
    asked = await service.request_training()
    said = (f"Round {asked.round} is already {asked.status}; no other was requested." if not asked.new
            else f"Round {asked.round} requested.")
    return _back(request, "/training", f"{said} Trainer: {asked.trainer.detail}.")


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
async def episodes(request: Request, store: EpisodesDep, registry: RegistryDep, outcome: str = "", version: str = "",
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
                          task_kind=task_kind or None, tenant=tenant or None)
    page = await store.list(where, EPISODES_PER_PAGE, cursor)
    filters = {"outcome": outcome, "version": version, "task_kind": task_kind, "tenant": tenant, "since": since,
               "until": until}
    next_cursor = encode_cursor(page[-1]) if len(page) == EPISODES_PER_PAGE else None
    return _page(request, "episodes.html", episodes=page, filters=filters, errors=errors, next_cursor=next_cursor,
                 versions=["base", *(v.name for v in await registry.versions())],
                 task_kinds=sorted(REFLECTION_TEMPLATES))


@router.get("/episodes/{episode_id}", dependencies=[Depends(session.required)])
async def episode(request: Request, episode_id: str, store: EpisodesDep) -> HTMLResponse:
    found = await store.get_any(episode_id)
    if found is None:
        return _page(request, "missing.html", status=404, what=f"episode {clipped(episode_id)}")
    return _page(request, "episode.html", episode=found)
