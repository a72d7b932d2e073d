"""The dashboard's login: a signed session cookie, and a CSRF token that every form sends back.

Logging in with the admin key (`R3_ADMIN_KEY`) sets the cookie `r3_dashboard`: a signed, timed
token (itsdangerous) holding the session's CSRF token; the admin key itself never leaves the login
form. The cookie is HttpOnly, SameSite=Strict, scoped to `/dashboard`, and Secure when the page
was served over https (behind a TLS proxy, run uvicorn with `--proxy-headers`). Over plain http —
a laptop, the tests — the browser would not send a Secure cookie back, so it goes without.

The signing key is derived from the admin key, so every replica behind one load balancer accepts
the others' cookies, and changing `R3_ADMIN_KEY` ends every session. A session lasts `MAX_AGE_S`.

Logging out ends the session on the server too, not only in the browser: a copy of the cookie is
worth nothing after it. The cookie holds the moment its session started, and a logout is recorded
in the admin audit log (`admin_actions`, action `logout`), which every replica reads; a session that
started before the latest logout is over. There is one admin (whoever holds the admin key), so a
logout ends every dashboard session of that admin, in any browser: a "not before" for the admin.

Every POST carries the session's CSRF token in a hidden field (`csrf`); the login form, made
before any session exists, carries a token that must match a short-lived cookie of its own
(double submit). SameSite=Strict alone would keep other sites' forms out of a session in today's
browsers; the token keeps them out in any browser.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.datastructures import FormData

from r3.store.registry import AdapterRegistry
from server.deps import AuthDep, RegistryDep

PATH = "/dashboard"
COOKIE = "r3_dashboard"
LOGIN_COOKIE = "r3_dashboard_login"
MAX_AGE_S = 12 * 3600
LOGIN_MAX_AGE_S = 3600  # how long a login form stays usable
LOGOUT_ACTION = "logout"  # in the audit log: dashboard sessions that started before it are over


class LoginRequired(Exception):
    """No valid session: the browser is sent to the login form."""


class FormRefused(Exception):
    """A POST without the session's CSRF token (a 403)."""


@dataclass(frozen=True)
class Session:
    csrf: str  # the token this session's forms must send back
    started: float  # when it logged in (Unix time)


def key_matches(admin_key: str | None, candidate: str) -> bool:
    """Whether `candidate` is the admin key (never, when the server has none), compared in constant time."""
    return admin_key is not None and hmac.compare_digest(candidate.encode(), admin_key.encode())


def _signer(key: str) -> URLSafeTimedSerializer:
    secret = hmac.new(key.encode(), b"r3 dashboard session", hashlib.sha256).digest()
    return URLSafeTimedSerializer(secret, salt="r3-dashboard")


async def current(request: Request, admin_key: str | None, registry: AdapterRegistry) -> Session | None:
    """The request's session, or None (no cookie, a forged or expired one, the admin key changed, or
    a logout since it started). Looked up once per request."""
    if hasattr(request.state, "dashboard_session"):
        return request.state.dashboard_session
    request.state.dashboard_session = found = await _valid_session(request.cookies.get(COOKIE), admin_key, registry)
    return found


def csrf_token(request: Request) -> str | None:
    """The CSRF token of the session `current` found for this request (None: none was, or none looked up)."""
    found = getattr(request.state, "dashboard_session", None)
    return found.csrf if found else None


async def _valid_session(token: str | None, admin_key: str | None, registry: AdapterRegistry) -> Session | None:
    if admin_key is None or token is None:
        return None
    try:
        data = _signer(admin_key).loads(token, max_age=MAX_AGE_S)
    except BadSignature:  # SignatureExpired is one too
        return None
    if not isinstance(data, dict) or not isinstance(data.get("csrf"), str) \
            or not isinstance(data.get("started"), int | float) or isinstance(data["started"], bool):
        return None
    if data["started"] <= await _last_logout(registry):
        return None
    return Session(csrf=data["csrf"], started=float(data["started"]))


async def _last_logout(registry: AdapterRegistry) -> float:
    """When the admin last logged out of the dashboard (Unix time; 0 if never)."""
    at = await registry.last_action_at(LOGOUT_ACTION)
    return at.timestamp() if at is not None else 0.0


def start(request: Request, response: Response, admin_key: str) -> Session:
    """Log in: set a new session's cookie on `response` (the caller checked the admin key)."""
    session = Session(csrf=secrets.token_urlsafe(32), started=time.time())
    cookie = _signer(admin_key).dumps({"csrf": session.csrf, "started": session.started})
    set_cookie(request, response, COOKIE, cookie, MAX_AGE_S)
    response.delete_cookie(LOGIN_COOKIE, path=PATH)
    return session


async def end(response: Response, registry: AdapterRegistry) -> None:
    """Log out: every session started until now is over (recorded for every replica), and the cookie goes."""
    await registry.record_action(
        "dashboard", LOGOUT_ACTION, reason="logged out of the dashboard: its sessions started before now are ended")
    response.delete_cookie(COOKIE, path=PATH)


def new_login_token() -> str:
    return secrets.token_urlsafe(32)


def remember_login_token(request: Request, page: Response, token: str) -> None:
    """Set the login form's token in the cookie the form's POST must come with."""
    set_cookie(request, page, LOGIN_COOKIE, token, LOGIN_MAX_AGE_S)


def login_token_matches(request: Request, form: FormData) -> bool:
    cookie, sent = request.cookies.get(LOGIN_COOKIE), form.get("csrf")
    return bool(cookie) and isinstance(sent, str) and hmac.compare_digest(cookie.encode(), sent.encode())


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path=PATH, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


async def required(request: Request, auth: AuthDep, registry: RegistryDep) -> Session:
    """FastAPI dependency for the pages: the session (raises `LoginRequired`)."""
    session = await current(request, auth.admin_key, registry)
    if session is None:
        raise LoginRequired
    return session


async def checked_form(request: Request, session: Annotated[Session, Depends(required)]) -> FormData:
    """FastAPI dependency for the actions: the posted form, once the session and its CSRF token are
    checked (raises `LoginRequired`, `FormRefused`)."""
    form = await request.form()
    sent = form.get("csrf")
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise FormRefused
    return form
