"""OpenAI-style errors: every failure leaves as `{"error": {message, type, param, code}}`.

Also the checks that refuse a request before FastAPI validates it: a body over the size limit
(413, raised while the body is read, so a route that checks its caller first answers a caller
without a valid key 401 without reading it), and a JSON body holding what no JSON text should
(400): text that is not valid Unicode, a number that is NaN or infinite, a body not in UTF-8. And
the unknown-field policy: a field no request model defines is ignored and named in the
`X-R3-Ignored-Fields` header (`ignore_unknown_fields`, `IgnoredFieldsHeader`), or refused when
`R3_STRICT_REQUEST_FIELDS` is on.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from r3.engines.base import EngineError, PromptTooLongError, UnknownAdapterError
from r3.store.errors import DatabaseUnavailable, JournalUnavailable
from server.protocol import SHOWN_CHARS, ErrorDetail, ErrorResponse, RequestPart, shown, take_unknown_fields
from verifiers.base import validation_message
from verifiers.schema import MAX_JSON_DEPTH

log = logging.getLogger(__name__)

# What a 503 asks a client to wait before trying again (its Retry-After header), in seconds: the
# journal and the database come back by themselves, and a client should not hammer them meanwhile.
RETRY_AFTER_S = 5


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
        super().__init__(404, f"the model {shown(model)} does not exist; GET /v1/models lists them",
                         type="not_found_error", param="model", code="model_not_found")


class RequestTooLarge(StarletteHTTPException):
    """The body is over `R3_MAX_REQUEST_BYTES` (413). Raised by `BodySizeLimit`'s `receive` while the
    app reads the body: an HTTPException, which FastAPI's body parsing lets through as it is."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is larger than {max_bytes} bytes")


def clipped(text: str, limit: int = SHOWN_CHARS) -> str:
    """A client's text (a param's path) as an error message shows it: cut to `limit` characters."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_response(status: int, message: str, type: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=message, type=type, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def unavailable_response(message: str, code: str) -> JSONResponse:
    """503 with `Retry-After`: a service this request needs is down for now, not broken."""
    return error_response(503, message, type="server_error", code=code,
                          headers={"Retry-After": str(RETRY_AFTER_S)})


# What pydantic says when the body as a whole is no object: missing (empty, or `null`), or another type.
_NOT_AN_OBJECT = {"missing", "model_attributes_type", "model_type", "dict_type"}


def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    # Of a union's alternatives, the error that got furthest into the input says most.
    first = max(error.errors(), key=lambda e: len(e.get("loc", ())))
    location = tuple(first.get("loc", ()))
    param = param_path(location, error.body, first.get("type"))
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error")
        return error_response(400, "the request body is not valid JSON" + (f": {reason}" if reason else ""),
                              code="invalid_json")
    if location == ("body",) and first.get("type") in _NOT_AN_OBJECT:
        return error_response(400, "the request body must be a JSON object")
    message = validation_message(first)
    return error_response(400, f"{clipped(param)}: {message}" if param else message, param=param)


def param_path(location: tuple, body: Any, error_type: str | None) -> str | None:
    """The param a validation error's location names, as the client wrote it:
    `("body", "messages", 0, "user", "content", "str")` → `"messages.0.content"`.

    Pydantic puts into a location the tag of a discriminated union (a message's role, a part's or a
    tool call's type) and the branch of a plain union (`str`, `list[TextPart]`). Read beside the
    `body` the client sent, a part is kept where it names a field or an item of it, or is the field
    found missing (the last part of a `missing` error); a tag is what the value's own `role` or
    `type` says, followed by one of its fields (a `{"type": "function", "function": ...}` call's
    first `function` is its tag, the second its field).
    """
    if location[:1] != ("body",):  # a query, path or header parameter: its name
        return ".".join(str(part) for part in location[1:]) or None
    rest = location[1:]
    node, parts = body, []
    for position, part in enumerate(rest):
        following = rest[position + 1] if position + 1 < len(rest) else None
        if following is None and error_type == "missing":
            parts.append(str(part))
        elif isinstance(node, dict):
            is_tag = part in (node.get("role"), node.get("type")) and (following in node or part not in node)
            if not is_tag and part in node:
                parts.append(str(part))
                node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            parts.append(str(part))
            node = node[part]
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


def _database_error(_: Request, error: DatabaseUnavailable) -> JSONResponse:
    log.warning("database unavailable: %s", error.orig)
    return unavailable_response("the episode database is unavailable; try again shortly", "database_unavailable")


def _journal_error(_: Request, error: JournalUnavailable) -> JSONResponse:
    log.error("%s", error)
    return unavailable_response(f"{error}; try again shortly", "journal_unavailable")


def _unexpected_error(_: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=error)
    return error_response(500, "internal server error", type="server_error")


def _too_large(_: Request, error: RequestTooLarge) -> JSONResponse:
    return error_response(413, str(error.detail), code="request_too_large")


_REF = "#/components/schemas/{model}"
BAD_REQUEST = {"description": "The request is invalid (OpenAI's error object)",
               "content": {"application/json": {"schema": {"$ref": _REF.format(model="ErrorResponse")}}}}


def describe_errors_as_sent(app: FastAPI) -> None:
    """Make `app`'s OpenAPI document say what a bad request gets: FastAPI documents a 422 with its
    own validation schema on every route that reads input, but R3 answers 400 with `ErrorResponse`
    (`_validation_error`), as OpenAI does."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        for methods in document.get("paths", {}).values():
            for operation in methods.values():
                if operation.get("responses", {}).pop("422", None) is not None:
                    operation["responses"].setdefault("400", BAD_REQUEST)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        _, error_schemas = models_json_schema([(ErrorResponse, "serialization")], ref_template=_REF)
        schemas.update(error_schemas["$defs"])
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, lambda _, error: error.response())
    app.add_exception_handler(RequestTooLarge, _too_large)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DatabaseUnavailable, _database_error)
    app.add_exception_handler(JournalUnavailable, _journal_error)
    app.add_exception_handler(Exception, _unexpected_error)
    describe_errors_as_sent(app)


class BodySizeLimit:
    """ASGI middleware: a body over `max_bytes` gets a 413, whether its length is declared or it comes chunked.

    The limit is enforced as the app reads the body (its `receive` raises `RequestTooLarge`), not
    before the app runs: a route that needs a key checks the caller before it reads anything
    (`server.auth.CheckedRoute`), so a client without a valid key hears 401 whatever it sends, and
    only a known caller hears about its body. A declared length over the limit is refused at the
    first read, without waiting for the body; a chunked one once the bytes read pass the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        declared_too_large = declared is not None and declared.isdigit() and int(declared) > self.max_bytes
        size = 0

        async def limited() -> Message:
            nonlocal size
            if declared_too_large:
                raise RequestTooLarge(self.max_bytes)
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.max_bytes:
                    raise RequestTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited, send)


IGNORED_FIELDS_HEADER = "X-R3-Ignored-Fields"
MOST_FIELDS_NAMED = 20  # in the header and the warning: a body may hold thousands


def ignore_unknown_fields(request: Request, body: RequestPart, strict: bool) -> None:
    """The unknown-field policy, for a route's request `body` (before it does anything with it):
    every field no model of it defines, at any depth (`take_unknown_fields`: `temprature`,
    `messages.0.foo`), is dropped, and named in a logged warning and in the response's
    `X-R3-Ignored-Fields` header (set by `IgnoredFieldsHeader`, on whatever the response is), so
    a misspelt parameter costs a warning, not a broken client. With `strict`
    (`R3_STRICT_REQUEST_FIELDS`), the first is refused instead: `APIError` 400 naming it (`param`,
    code `unknown_parameter`, as OpenAI's)."""
    unknown = take_unknown_fields(body)
    if not unknown:
        return
    if strict:
        raise APIError(400, f"{clipped(unknown[0])}: unknown parameter (this server refuses fields it does not "
                       "know)", param=unknown[0], code="unknown_parameter")
    named = [clipped(path) for path in unknown[:MOST_FIELDS_NAMED]]
    log.warning("%s %s: ignored %d field(s) it does not know: %s", request.method, request.url.path, len(unknown),
                ", ".join(named))
    request.state.r3_ignored_fields = named


class IgnoredFieldsHeader:
    """ASGI middleware: the response to a request whose body held fields the server ignored
    (`ignore_unknown_fields`) names them in `X-R3-Ignored-Fields` (at most `MOST_FIELDS_NAMED`),
    comma-separated, each percent-encoded (RFC 3986) so that any key fits a header. Whatever the
    response is: an answer, a stream, an error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def naming_them(message: Message) -> None:
            ignored = scope.get("state", {}).get("r3_ignored_fields")  # what `request.state` holds
            if message["type"] == "http.response.start" and ignored:
                value = ",".join(quote(path, safe="") for path in ignored)
                message["headers"] = [*message.get("headers", ()), (IGNORED_FIELDS_HEADER.lower().encode(),
                                                                     value.encode())]
            await send(message)

        await self.app(scope, receive, naming_them)


# How a UTF-16 surrogate can be written in a JSON body: escaped (\ud800), or encoded raw (which
# Python's json module decodes with "surrogatepass"). A body without either holds none.
# (Two patterns: each one starts with a literal, which the regex engine skips to; one alternation of
# both is tried at every byte, ~13 ms a MB.)
_SURROGATE_IN_JSON = (re.compile(rb"\\u[dD][89a-fA-F]"), re.compile(rb"\xed[\xa0-\xbf]"))
# How Python's json module can come to a float that is not finite: its NaN and Infinity extensions,
# an exponent (1e999), or an integer part of 309 digits or more (the largest float has 309). A body
# without any of these holds no such number. Searched for as plain bytes, with every digit written
# as 0 first: a regex of digit classes took ~30 ms a MB, on the event loop; this takes ~5 ms a MB.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NON_FINITE_IN_JSON = (b"NaN", b"Infinity", b"0e", b"0E", b"0" * 309)


def _may_be_unsound(body: bytes) -> bool:
    """Whether `body` may hold a lone surrogate or a number that is not finite (linear: ~15 ms for 3 MB)."""
    digits = body.translate(_DIGITS_AS_ZERO)
    return (any(pattern.search(body) for pattern in _SURROGATE_IN_JSON)
            or any(text in digits for text in _NON_FINITE_IN_JSON))


# How deep a body may nest before it is refused unparsed: Python's json and pydantic recurse once a
# level (about 1,000 levels exhaust the stack), while a value nested past `MAX_JSON_DEPTH` but within
# this is parsed and refused by its field's own check, which names it precisely (`tools.0.function.parameters`).
BODY_MAX_DEPTH = 8 * MAX_JSON_DEPTH
# A JSON string, a bracket or a colon: what the depth scan reads (a bracket inside a string is text).
_JSON_STRUCTURE = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}:]', re.DOTALL)
# The encodings Python's json module reads a UTF-8 body in (with its byte order mark, which RFC 8259
# lets a parser ignore); `json.detect_encoding` is how it tells them from UTF-16 and UTF-32.
_UTF_8 = {"utf-8", "utf-8-sig"}


async def refuse_unsound_body(request: Request) -> None:
    """Refuse (`APIError` 400, naming the param) a JSON body that holds what no JSON text may:

    - an encoding other than UTF-8 (code `invalid_encoding`): RFC 8259, section 8.1, says JSON
      exchanged between systems MUST be UTF-8. Python's json module would read UTF-16 and UTF-32
      too, and the checks below read the body's bytes as UTF-8;
    - text with a lone UTF-16 surrogate (`"\\ud800"` without its pair): not Unicode text, which a
      tokenizer raises on and neither UTF-8 nor a database can hold (code `invalid_unicode`);
    - a number that is NaN or infinite (`NaN`, `Infinity`, `1e999`, which Python's json reads but
      JSON has not): a schema or pattern holding one would be judged with it and stored as null
      (code `invalid_number`).
    - bytes that are not UTF-8 (a Latin-1 `caf\\xe9`): code `invalid_encoding`, naming the byte and its offset;
    - nesting deeper than `BODY_MAX_DEPTH` arrays and objects, which Python's json and pydantic
      recurse once a level to read (code `too_deep`, param: the top-level field holding it). A value
      nested less deeply but past `MAX_JSON_DEPTH` is refused by its field's own check, naming it.

    One walk over the whole body, free-form values (`verifier`, tool `parameters`, ...) included,
    so no field's validator has to repeat it. A body that is not JSON is left to FastAPI to refuse.
    """
    try:
        body = await request.body()  # over the size limit: `RequestTooLarge` (413), from `BodySizeLimit`
    except ClientDisconnect:
        raise ClientGone from None  # hung up while sending its body: nobody to answer
    if json.detect_encoding(body) not in _UTF_8:
        raise APIError(400, "the request body is not UTF-8: JSON exchanged between systems must be UTF-8 "
                       "(RFC 8259, section 8.1)", code="invalid_encoding")
    try:
        text = body.decode("utf-8")  # a byte order mark is valid UTF-8: offsets count from the body's first byte
    except UnicodeDecodeError as error:
        raise APIError(400, f"the request body is not UTF-8: byte 0x{body[error.start]:02x} at offset {error.start} "
                       "is not valid UTF-8; JSON exchanged between systems must be UTF-8 (RFC 8259, section 8.1)",
                       code="invalid_encoding") from None
    if (field := _field_nested_too_deeply(text)) is not None:
        where = clipped(field) if field else "the request body"
        raise APIError(400, f"{where}: nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects",
                       param=field or None, code="too_deep")
    if not _may_be_unsound(body):
        return
    try:
        value = await request.json()  # cached: FastAPI validates this very parse
    except (ValueError, RecursionError):
        return  # not JSON: FastAPI refuses it (400)
    found = unsound_value_at(value)
    if found is None:
        return
    path, problem = found
    where = clipped(path) if path else "the request body"
    if problem == "surrogate":
        raise APIError(400, f"{where}: holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its pair), "
                       "which is not Unicode text", param=path or None, code="invalid_unicode")
    raise APIError(400, f"{where}: {problem} is not a number JSON can hold: numbers must be finite",
                   param=path or None, code="invalid_number")


def _field_nested_too_deeply(text: str) -> str | None:
    """Where a JSON body `text` nests more than `BODY_MAX_DEPTH` arrays and objects: the top-level
    field holding the first such place (`""` when the body is no object, or the place is before any
    key), or None when it nests no deeper. Read without parsing, and only to that place."""
    if text.count("[") + text.count("{") <= BODY_MAX_DEPTH:  # too few brackets to nest that deep
        return None
    depth, field, last_string = 0, "", ""
    for token in _JSON_STRUCTURE.finditer(text):
        symbol = token.group()
        if symbol in ("[", "{"):
            depth += 1
            if depth > BODY_MAX_DEPTH:
                return field
        elif symbol in ("]", "}"):
            depth -= 1
        elif symbol == ":":
            if depth == 1:  # a key of the body's own object, as written (escapes and all)
                field = last_string[1:-1]
        else:
            last_string = symbol
    return None


def unsound_value_at(value: Any) -> tuple[str, str] | None:
    """The first (in document order) string, key or number in a JSON value that JSON text cannot
    hold, as (its path, `"messages.0.content"`, `""` for the value itself; what is wrong: `"surrogate"`
    for text with a lone surrogate, else the number as Python's json writes it, `NaN`, `Infinity`,
    `-Infinity`), or None when there is none. Iterative, so any depth; a path is made only for a
    container, or for what is wrong."""
    if not isinstance(value, dict | list):  # a body that is one scalar (`-2e16`): only itself to check
        problem = _scalar_problem(value)
        return None if problem is None else ("", problem)
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, container = stack.pop()
        children = container.items() if isinstance(container, dict) else enumerate(container)
        nested: list[tuple[str, Any]] = []
        for key, child in children:
            if isinstance(key, str) and not _is_unicode(key):  # named escaped, so the error can be sent
                return _child(path, key).encode("utf-8", "backslashreplace").decode(), "surrogate"
            if isinstance(child, dict | list):
                nested.append((_child(path, key), child))
            elif (problem := _scalar_problem(child)) is not None:
                return _child(path, key), problem
        stack.extend(reversed(nested))
    return None


def _child(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _scalar_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return None if _is_unicode(value) else "surrogate"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return None


def _is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
