"""The operator's dashboard: web pages over what R3 is doing, behind the admin key.

`install(app)` mounts it on the FastAPI app: the pages under `/dashboard`, their static files (the
vendored Chart.js, the page script, the style sheet) under `/dashboard/static`, and the answers to
a missing session (to the login form), to a form without its CSRF token (403) and to an unknown
`?scenario=` (a 404 page).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from server.dashboard.routes import UnknownScenario, router, unknown_scenario
from server.dashboard.session import PATH, FormRefused, LoginRequired


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(f"{PATH}/static", StaticFiles(directory=Path(__file__).parent / "static"), name="dashboard-static")
    app.add_exception_handler(LoginRequired, _to_login)
    app.add_exception_handler(FormRefused, _refused)
    app.add_exception_handler(UnknownScenario, unknown_scenario)


async def _to_login(_: Request, __: Exception) -> RedirectResponse:
    return RedirectResponse(f"{PATH}/login", status_code=303)


async def _refused(_: Request, __: Exception) -> PlainTextResponse:
    return PlainTextResponse("This form is not from your dashboard session (its CSRF token is missing or wrong); "
                             "reload the page and try again.", status_code=403)
