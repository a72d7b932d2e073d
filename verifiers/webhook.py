"""`webhook`: the client's own HTTP endpoint judges the answer.

The server POSTs `{"episode_id", "attempt", "messages", "output": {"content", "tool_calls"}}` and
expects `{"success": bool, "score"?: number in [0, 1], "detail"?: str}` back (without a score, a pass
scores 1.0 and a failure 0.0). Where it may POST is the operator's choice, not
the client's: `check(policy)` (the type's `admit`, given the process's `VerifierRuntime.webhooks`)
refuses any host outside `WebhookPolicy.allowed_hosts` (and loopback unless allowed) before a request
is accepted, and `verifiers.verify` checks again before judging. With a
secret, `X-R3-Signature: sha256=<hex>` is the HMAC-SHA256 of the exact body bytes, so the endpoint
can tell the call came from this server.

Refused or dropped connections and 5xx answers are retried (`max_attempts` in all, with a short backoff);
timeouts, 4xx, redirects (never followed) and malformed replies are not. Each attempt is bounded
by `timeout_s` in total, and replies are read up to 64 KiB. Environment proxies and .netrc are
ignored (`trust_env=False`): a verdict request must go where the policy says, without credentials.
Every failure to get a verdict is a failed verdict ("webhook error: ..."), never an exception.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import httpx
from opentelemetry import propagate, trace
from pydantic import BaseModel, Field, StrictBool, ValidationError, field_validator
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from verifiers.base import Attempt, SpecBase, TaskContext, Verdict
from verifiers.json_text import JsonTextError, read_json
from verifiers.registry import VerifierNotAllowed, VerifierType, register

if TYPE_CHECKING:
    from verifiers.runtime import VerifierRuntime

MAX_URL_CHARS = 2048
MAX_HEADERS = 16
MAX_REPLY_BYTES = 64 * 1024
RETRY_BACKOFF_S = 0.1  # the wait after the first failed try, doubled after each further one

_tracer = trace.get_tracer("verifiers")  # the API's: a no-op until the process installs a tracer provider

_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]{0,1024}")  # printable ASCII: no CR/LF injection
# Headers the server sets itself, or that would change how the request is framed or routed.
_RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "transfer-encoding", "connection", "x-r3-signature", "x-r3-attempt"}
)


class WebhookNotAllowed(VerifierNotAllowed):
    """The webhook's URL is outside the server's policy: a request error, raised before any network call."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="verifier.url", code="webhook_not_allowed")


@dataclass(frozen=True)
class WebhookPolicy:
    allowed_hosts: frozenset[str] = frozenset()  # host names or IP addresses, without ports; any case
    allow_loopback: bool = False
    secret: str | None = None
    timeout_s: float = 5.0
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.max_attempts < 1:
            raise ValueError("WebhookPolicy needs timeout_s > 0 and max_attempts >= 1")


class WebhookReply(BaseModel):
    success: StrictBool
    score: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False, strict=True)  # default: from success
    detail: str = ""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebhookSpec(SpecBase):
    type: Literal["webhook"]
    url: str = Field(max_length=MAX_URL_CHARS)
    headers: dict[str, str] = Field(default_factory=dict, max_length=MAX_HEADERS)

    @field_validator("url")
    @classmethod
    def _absolute_url(cls, url: str) -> str:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as error:
            raise ValueError(f"invalid URL: {error}") from error
        if not parsed.scheme or not parsed.host:
            raise ValueError("the URL must be absolute, with a scheme and a host")
        return url

    @field_validator("headers")
    @classmethod
    def _safe_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
                raise ValueError(f"header {name[:64]!r}: invalid name or value")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by the server")
        return headers

    def check(self, policy: WebhookPolicy) -> None:
        """Raise WebhookNotAllowed unless `policy` lets the server POST to this URL."""
        url = httpx.URL(self.url)
        if url.scheme not in ("http", "https"):
            raise WebhookNotAllowed(f"webhook URL scheme {url.scheme!r} is not allowed; use http or https")
        host = url.host.lower()
        if host in {allowed.lower() for allowed in policy.allowed_hosts}:
            return
        if policy.allow_loopback and is_loopback(host):
            return
        raise WebhookNotAllowed(f"webhook host {host!r} is not allowed by this server")

    async def judge(self, attempt: Attempt, context: TaskContext, runtime: VerifierRuntime) -> Verdict:
        """The endpoint's verdict on `attempt`, posted as `runtime` says (its policy's secret, timeout
        and attempts; its HTTP client). The URL is not checked here: `verifiers.verify` admits it first."""
        policy = runtime.webhooks
        body = request_body(attempt, context)
        headers = {**self.headers, "Content-Type": "application/json", "X-R3-Attempt": str(context.attempt_number)}
        if policy.secret is not None:
            headers["X-R3-Signature"] = signature(policy.secret, body)
        async with runtime.http_client() as client:
            return await self._post(client, body, headers, runtime)

    async def _post(self, client: httpx.AsyncClient, body: bytes, headers: dict[str, str],
                    runtime: VerifierRuntime) -> Verdict:
        policy = runtime.webhooks
        retrying = AsyncRetrying(sleep=runtime.sleep, stop=stop_after_attempt(policy.max_attempts),
                                 wait=wait_exponential(multiplier=RETRY_BACKOFF_S),
                                 retry=retry_if_exception_type(_Retryable), reraise=True)
        try:
            return await retrying(self._post_once, client, body, headers, policy)
        except _Retryable as problem:
            return Verdict(False, f"webhook error: {problem} after {policy.max_attempts} attempts")

    async def _post_once(self, client: httpx.AsyncClient, body: bytes, headers: dict[str, str],
                         policy: WebhookPolicy) -> Verdict:
        """One POST: the verdict, or a failed verdict; raises `_Retryable` for what another try may fix.
        Each POST is an HTTP client span (OpenTelemetry's HTTP semantic conventions), whose trace goes on
        at the endpoint if it traces too (W3C `traceparent`)."""
        attributes = _span_attributes(self.url)
        with _tracer.start_as_current_span("POST", kind=trace.SpanKind.CLIENT, attributes=attributes) as span:
            headers = {**headers}
            propagate.inject(headers)
            try:
                async with asyncio.timeout(policy.timeout_s):
                    status, reply = await _send(client, self.url, body, headers)
            except TimeoutError:
                return _failed(span, "timeout", f"webhook error: no reply within {policy.timeout_s:g} s")
            except (httpx.ConnectError, httpx.RemoteProtocolError) as error:
                raise _Retryable(f"connection failed ({type(error).__name__})") from error
            except httpx.HTTPError as error:
                return _failed(span, type(error).__name__, f"webhook error: {type(error).__name__}: {error}")
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                raise _Retryable(f"HTTP {status}")
            return _verdict(status, reply)


def webhook_client() -> httpx.AsyncClient:
    """The HTTP client a webhook is posted with: no httpx timeout (asyncio.timeout bounds each attempt as
    a whole, however slowly a reply trickles), no redirects followed, no proxies or .netrc."""
    return httpx.AsyncClient(timeout=None, follow_redirects=False, trust_env=False)


class _Retryable(Exception):
    """A refused or dropped connection, or a 5xx: worth another try."""


def _span_attributes(url: str) -> dict[str, str | int]:
    """A webhook POST's span attributes: its server, and its URL without credentials or query (which may
    carry secrets)."""
    parsed = httpx.URL(url)
    return {"http.request.method": "POST", "server.address": parsed.host,
            "server.port": parsed.port or (443 if parsed.scheme == "https" else 80),
            "url.full": str(parsed.copy_with(userinfo=b"", query=None))}


def _failed(span: trace.Span, error_type: str, detail: str) -> Verdict:
    """A failed verdict for a POST that got no reply, said on its span too."""
    span.set_attribute("error.type", error_type)
    span.set_status(trace.StatusCode.ERROR, detail)
    return Verdict(False, detail)


def request_body(attempt: Attempt, context: TaskContext) -> bytes:
    payload = {
        "episode_id": context.episode_id,
        "attempt": context.attempt_number,
        "messages": list(context.messages),
        "output": {
            "content": attempt.content,
            "tool_calls": [{"name": call.name, "arguments": call.arguments} for call in attempt.tool_calls],
        },
    }
    return json.dumps(payload).encode()  # ASCII escapes: even a lone surrogate in a message encodes


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def _send(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes | None]:
    """POST and read the reply; the reply is None when it is larger than MAX_REPLY_BYTES."""
    async with client.stream("POST", url, content=body, headers=headers) as response:
        reply = b""
        async for chunk in response.aiter_bytes():
            reply += chunk
            if len(reply) > MAX_REPLY_BYTES:
                return response.status_code, None
        return response.status_code, reply


def _verdict(status: int, reply: bytes | None) -> Verdict:
    if not 200 <= status < 300:
        kind = " (redirects are not followed)" if 300 <= status < 400 else ""
        return Verdict(False, f"webhook error: HTTP {status}{kind}")
    if reply is None:
        return Verdict(False, f"webhook error: reply larger than {MAX_REPLY_BYTES} bytes")
    try:  # read as R3 reads any JSON it did not write (`read_json`), then checked for its shape
        parsed = WebhookReply.model_validate(read_json(reply.decode()))
    except (UnicodeDecodeError, JsonTextError, ValidationError):
        return Verdict(False, 'webhook error: reply is not JSON of the form '
                              '{"success": bool, "score"?: number in [0, 1], "detail"?: str}')
    return Verdict(parsed.success, parsed.detail, parsed.score)


register(VerifierType(
    WebhookSpec, judge_with=WebhookSpec.judge, admit=lambda spec, runtime: spec.check(runtime.webhooks),
    summary="your endpoint answers `{\"success\": true}` (optionally with a `\"score\"` in [0, 1]) to a POST of the attempt (episode id, attempt number, "
            "conversation, output, tool calls), signed with `X-R3-Signature: sha256=<HMAC>` when "
            "`R3_WEBHOOK_SECRET` is set; only hosts in `R3_WEBHOOK_ALLOWED_HOSTS` (loopback only with "
            "`R3_WEBHOOK_ALLOW_LOOPBACK`)",
))
