"""OpenAI-style errors: every failure leaves as `{"error": {message, type, param, code}}`.

Also the checks that refuse a request before FastAPI validates it: a body over the size limit
(413), and text that is not valid Unicode (400).
"""

from __future__ import annotations

import logging
import re
from typing import Any

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


class ClientGone(APIError):
    """The client hung up before its answer was ready; nobody reads this response (499, as nginx logs it)."""

    def __init__(self) -> None:
        super().__init__(499, "the client closed the request before the answer was ready",
                         code="client_closed_request")


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
        reason = first.get("ctx", {}).get("error")
        return error_response(400, "the request body is not valid JSON" + (f": {reason}" if reason else ""),
                              code="invalid_json")
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
    """ASGI middleware: a body over `max_bytes` gets a 413, whether its length is declared or it comes chunked.

    The body is read here (up to the limit) before the app runs. Enforced while the app reads, the
    limit would surface inside FastAPI's body parsing, which answers any error there with a 400.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # gone before its body was sent: there is no one to answer
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._reject(scope, receive, send)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"the request body is larger than {self.max_bytes} bytes",
                                  code="request_too_large")
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app the whole `body` at once, then the client's later messages
    (its `http.disconnect`, which tells a running request that nobody waits for it any more)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


# How a UTF-16 surrogate can be written in a JSON body: escaped (\ud800), or encoded raw (which
# Python's json module decodes with "surrogatepass"). A body without either holds none.
_SURROGATE_IN_JSON = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


async def refuse_unencodable_text(request: Request) -> None:
    """Refuse (`APIError` 400, naming the param) a JSON body whose text holds a lone surrogate.

    Such a string is not Unicode text: a tokenizer raises on it, and neither UTF-8 nor a database
    can hold it. A body that is not JSON is left to FastAPI to refuse.
    """
    body = await request.body()
    if not _SURROGATE_IN_JSON.search(body):
        return
    try:
        value = await request.json()  # cached: FastAPI validates this very parse
    except (ValueError, RecursionError):
        return  # not JSON: FastAPI refuses it (400)
    path = lone_surrogate_at(value)
    if path is not None:
        where = path or "the request body"
        raise APIError(400, f"{where}: holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its pair), "
                       "which is not Unicode text", param=path or None, code="invalid_unicode")


def lone_surrogate_at(value: Any) -> str | None:
    """The path (`"messages.0.content"`; `""` for the value itself) of a string or key in a JSON value
    that holds a lone surrogate, or None when all its text is valid Unicode."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str) and not _is_unicode(item):
            return path
        children = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        for key, child in children:
            child_path = f"{path}.{key}" if path else str(key)
            if not _is_unicode(child_path):  # the key itself: named escaped, so the error can be sent
                return child_path.encode("utf-8", "backslashreplace").decode()
            stack.append((child_path, child))
    return None


def _is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
