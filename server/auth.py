"""Who is calling: API keys map to tenants; the admin key guards `/admin/*`.

With no key configured anywhere (no `R3_API_KEYS`, none ever created with `r3 keys create`) the
server is open, but only to loopback clients, so the embedded default is safe on a laptop. Once a
key has been created the server stays closed, even after every key is revoked. A database key is
looked up on every request, uncached, so `r3 keys revoke` refuses it at once on every replica.

The API's routes are `CheckedRoute`s: the caller is checked before the body is read, so a client
without a valid key is told so (401) whatever it sent.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Request, Response, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from r3.store import keys
from r3.store.keys import ApiKeys, KeyInfo
from r3.store.errors import DatabaseUnavailable
from server.errors import APIError, refuse_unsound_body


# The key as the OpenAPI document declares it (`Authorization: Bearer <key>`). It raises nothing
# (`auto_error=False`): the `Authenticator` answers a missing or wrong key with OpenAI's 401 error
# object, and `CheckedRoute` makes sure it does so before the body is read (a 401 before a 413).
bearer = HTTPBearer(auto_error=False, scheme_name="APIKey",
                    description="An API key (`R3_API_KEYS` or `r3 keys create`); `/admin/*` takes the admin key "
                                "(`R3_ADMIN_KEY`). With no key configured, loopback clients need none.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


class Authenticator:
    def __init__(self, configured_keys: list[str], admin_key: str | None, database_keys: ApiKeys) -> None:
        self.configured = {key: keys.tenant_of_configured_key(key) for key in configured_keys}
        self.admin_key, self.database_keys = admin_key, database_keys
        self._keys_created: bool | None = None  # None: not known yet

    async def warm_up(self) -> None:
        """Learn at start whether keys exist, so a database outage later does not block open mode."""
        await self._database_has_keys()

    async def tenant(self, request: Request) -> str | None:
        """The caller's tenant id (None in open mode), or a 401. A database key's default scenario, if it
        has one, is kept for the request (`caller_scenario`)."""
        if not self.configured and not await self._database_has_keys():
            if not _is_loopback(request):
                raise APIError(401, "no API keys are configured, so only loopback clients are served; "
                               "create one with `r3 keys create`", type="authentication_error",
                               code="invalid_api_key")
            return None  # open mode: whatever key the SDK sends is ignored
        key = _bearer(request)
        if key is None:
            raise APIError(401, "missing API key: send Authorization: Bearer <key>",
                           type="authentication_error", code="invalid_api_key")
        if key in self.configured:
            return self.configured[key]
        found = await self._database_caller(key)
        if found is None:
            raise APIError(401, "invalid API key", type="authentication_error", code="invalid_api_key")
        request.state.scenario = found.default_scenario
        return found.tenant

    def require_admin(self, request: Request) -> None:
        if self.admin_key is None:
            raise APIError(403, "the admin API is disabled: set R3_ADMIN_KEY", type="permission_error")
        key = _bearer(request)
        if key is None or not hmac.compare_digest(key.encode(), self.admin_key.encode()):
            raise APIError(401, "the admin API needs the admin key", type="authentication_error",
                           code="invalid_api_key")

    async def _database_has_keys(self) -> bool:
        if self._keys_created:
            return True  # keys are revoked, never deleted: once one was created, the server stays closed
        try:
            self._keys_created = await self.database_keys.any_created()
        except DatabaseUnavailable:
            if self._keys_created is None:
                raise  # never known: a 503, rather than guessing open or closed
            return False  # the database is down: keep the last answer (none yet), so serving goes on
        return self._keys_created

    async def _database_caller(self, key: str) -> KeyInfo | None:
        # Not cached: one indexed read a request, and a revoked key is refused from the next request on.
        return await self.database_keys.caller(key)


def _bearer(request: Request) -> str | None:
    """The bearer key, read by `HTTPBearer`'s rule (a missing header, another scheme or no key: None)."""
    scheme, key = get_authorization_scheme_param(request.headers.get("authorization"))
    return key or None if scheme.lower() == "bearer" else None


def _is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# `credentials` (`bearer`'s answer) puts the scheme in the OpenAPI document; the `Authenticator` reads
# the same header by the same rule, so `CheckedRoute` can call these with the request alone.


async def tenant(request: Request, credentials: Credentials = None) -> str | None:
    """FastAPI dependency: the calling tenant (looked up once per request; raises `APIError` 401)."""
    if not hasattr(request.state, "tenant"):
        request.state.tenant = await request.app.state.auth.tenant(request)
    return request.state.tenant


def caller_scenario(request: Request) -> str | None:
    """The scenario the caller's API key names as its default (None: none, or no key), once `tenant`
    has run for the request: what `model: "r3"` means for it."""
    return getattr(request.state, "scenario", None)


async def admin(request: Request, credentials: Credentials = None) -> None:
    """FastAPI dependency: only the admin key passes (raises `APIError` 401 or 403)."""
    request.app.state.auth.require_admin(request)


class CheckedRoute(APIRoute):
    """A route that refuses a request before FastAPI reads its body: first a caller without a valid
    key (its `tenant` or `admin` dependency, run early), then text no tokenizer or database can hold.

    FastAPI parses a JSON body before it runs any dependency, so without this a keyless client that
    sent malformed JSON would be answered 400 (bad JSON) instead of 401.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        caller_checks = [d.call for d in self.dependant.dependencies if d.call in (tenant, admin)]
        takes_body = self.body_field is not None

        async def checked(request: Request) -> Response:
            for check in caller_checks:
                await check(request)
            if takes_body:
                await refuse_unsound_body(request)
            return await handler(request)

        return checked
