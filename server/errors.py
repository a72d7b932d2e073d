"""OpenAI-style errors: every failure leaves as `{"error": {message, type, param, code}}`."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from r3.engines.base import EngineError, PromptTooLongError, UnknownAdapterError
from server.protocol import ErrorDetail, ErrorResponse

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.param, self.code)


class UnknownModel(APIError):
    """A request's `model` names nothing this server serves."""

    def __init__(self, model: str) -> None:
        super().__init__(404, f"the model {model!r} does not exist; GET /v1/models lists them",
                         type="not_found_error", param="model", code="model_not_found")


def error_response(status: int, message: str, type: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=message, type=type, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status)


def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    # Of a union's alternatives, the error that got furthest into the input says most.
    first = max(error.errors(), key=lambda e: len(e.get("loc", ())))
    param = _param_path(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return error_response(400, "the request body is not valid JSON", code="invalid_json")
    message = first.get("msg", "invalid request")
    return error_response(400, f"{param}: {message}" if param else message, param=param)


_TYPE_BRANCHES = {"str", "int", "float", "bool", "dict", "list"}
_ROLE_TAGS = {"system", "developer", "user", "assistant", "tool"}


def _param_path(location: tuple) -> str | None:
    """`("body", "messages", 0, "user", "content", "str")` → `"messages.0.content"`.

    Pydantic puts the tag of a discriminated union (a message's role, after its index) and the
    branch of a plain union (a type name) into the location; a client wants the field it sent.
    """
    parts: list[str] = []
    for position, part in enumerate(location[1:]):
        after_index = position > 0 and isinstance(location[position], int)
        if (after_index and part in _ROLE_TAGS) or (parts and (part in _TYPE_BRANCHES or "[" in str(part))):
            continue
        parts.append(str(part))
    return ".".join(parts) or None


def _engine_error(_: Request, error: EngineError) -> JSONResponse:
    if isinstance(error, UnknownAdapterError):
        return error_response(404, str(error), param="model", code="model_not_found")
    if isinstance(error, PromptTooLongError):
        return error_response(400, str(error), param="messages", code="context_length_exceeded")
    return error_response(400, str(error))


def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    return error_response(error.status_code, str(error.detail), type=kind)


def _database_error(_: Request, error: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", error)
    return error_response(503, "the episode database is unavailable; try again shortly", type="server_error",
                          code="database_unavailable")


def _unexpected_error(_: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=error)
    return error_response(500, "internal server error", type="server_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, lambda _, error: error.response())
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for unavailable in (OperationalError, InterfaceError, DisconnectionError, ConnectionError):
        app.add_exception_handler(unavailable, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)


class BodySizeLimit:
    """ASGI middleware: a body over `max_bytes` gets a 413 before it is read into memory."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, receive, send)
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"the request body is larger than {self.max_bytes} bytes",
                                  code="request_too_large")
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass
