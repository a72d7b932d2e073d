"""The webhook verifier against a real HTTP server on a loopback port, which records the requests it
receives and answers with scripted replies."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError

from verifiers import (
    Attempt,
    TaskContext,
    ToolCall,
    WebhookNotAllowed,
    VerifierRuntime,
    WebhookPolicy,
    WebhookSpec,
    parse_spec,
    verify,
)


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b'{"success": true}'
    headers: tuple[tuple[str, str], ...] = ()
    hang: bool = False  # never answer (until the test ends)


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


@dataclass
class HookServer:
    port: int = 0
    replies: list[Reply] = field(default_factory=lambda: [Reply()])  # in turn; the last one repeats
    requests: list[ReceivedRequest] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readline()).decode()
            if not request_line:
                return
            method, path, _ = request_line.split(" ", 2)
            headers: dict[str, str] = {}
            while (line := (await reader.readline()).decode()) not in ("\r\n", "\n", ""):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(ReceivedRequest(method, path, headers, body))
            reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
            if reply.hang:
                await self.release.wait()
                return
            extra = "".join(f"{name}: {value}\r\n" for name, value in reply.headers)
            writer.write(
                f"HTTP/1.1 {reply.status} Scripted\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(reply.body)}\r\n{extra}Connection: close\r\n\r\n".encode() + reply.body
            )
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def hook_server() -> AsyncIterator[HookServer]:
    hooks = HookServer()
    server = await asyncio.start_server(hooks.handle, "127.0.0.1", 0)
    hooks.port = server.sockets[0].getsockname()[1]
    try:
        yield hooks
    finally:
        hooks.release.set()
        server.close()
        await server.wait_closed()


SECRET = "s3cret"
LOOPBACK = VerifierRuntime(WebhookPolicy(allow_loopback=True, secret=SECRET, timeout_s=2.0))
ATTEMPT = Attempt(content="It is sunny.", tool_calls=(ToolCall("get_weather", '{"city": "Paris"}'),))
CONTEXT = TaskContext(
    # A lone surrogate, as a client's JSON escape can produce: the body must still encode.
    messages=({"role": "user", "content": "Weather in Paris? \ud83c"},), episode_id="ep-123", attempt_number=2
)


def webhook(url: str, **fields) -> WebhookSpec:
    spec = parse_spec({"type": "webhook", "url": url, **fields})
    assert isinstance(spec, WebhookSpec)
    return spec


@pytest.mark.parametrize(
    ("body", "success", "detail"),
    [
        (b'{"success": true}', True, ""),
        (b'{"success": true, "detail": "fine"}', True, "fine"),
        (b'{"success": false, "detail": "the city should be Lyon"}', False, "the city should be Lyon"),
        (b'{"success": false, "detail": "' + b"x" * 1000 + b'"}', False, "xxxx"),
        (b'{"success": false, "extra": 1}', False, ""),
    ],
)
async def test_the_webhook_verdict_passes_through(hook_server: HookServer, body: bytes, success: bool,
                                                  detail: str) -> None:
    hook_server.replies = [Reply(body=body)]
    verdict = await verify(webhook(hook_server.url()), ATTEMPT, CONTEXT, LOOPBACK)
    assert verdict.success is success
    assert verdict.detail.startswith(detail)
    assert len(verdict.detail) <= 300


async def test_the_request_carries_the_attempt_and_a_verifiable_signature(hook_server: HookServer) -> None:
    spec = webhook(hook_server.url("/judge?task=7"), headers={"Authorization": "Bearer client-token"})
    assert (await spec.judge(ATTEMPT, CONTEXT, LOOPBACK)).success
    [request] = hook_server.requests
    assert (request.method, request.path) == ("POST", "/judge?task=7")
    assert json.loads(request.body) == {
        "episode_id": "ep-123",
        "attempt": 2,
        "messages": [{"role": "user", "content": "Weather in Paris? \ud83c"}],
        "output": {
            "content": "It is sunny.",
            "tool_calls": [{"name": "get_weather", "arguments": '{"city": "Paris"}'}],
        },
    }
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-r3-attempt"] == "2"
    assert request.headers["authorization"] == "Bearer client-token"
    expected = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["x-r3-signature"], f"sha256={expected}")
    wrong = hmac.new(b"other", request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-r3-signature"] != f"sha256={wrong}"


async def test_without_a_secret_nothing_is_signed(hook_server: HookServer) -> None:
    runtime = VerifierRuntime(WebhookPolicy(allow_loopback=True))
    assert (await webhook(hook_server.url()).judge(Attempt(content=None), TaskContext(), runtime)).success
    [request] = hook_server.requests
    assert "x-r3-signature" not in request.headers
    assert json.loads(request.body)["output"] == {"content": None, "tool_calls": []}


async def test_server_errors_are_retried_until_one_answers(hook_server: HookServer) -> None:
    hook_server.replies = [Reply(500, b"oops"), Reply(503, b""), Reply(body=b'{"success": true, "detail": "third"}')]
    verdict = await webhook(hook_server.url()).judge(ATTEMPT, CONTEXT, LOOPBACK)
    assert verdict.success and verdict.detail == "third"
    assert len(hook_server.requests) == 3
    assert len({request.body for request in hook_server.requests}) == 1


async def test_retries_are_bounded(hook_server: HookServer) -> None:
    hook_server.replies = [Reply(502, b"bad gateway")]
    verdict = await webhook(hook_server.url()).judge(ATTEMPT, CONTEXT, LOOPBACK)
    assert not verdict.success
    assert verdict.detail == "webhook error: HTTP 502 after 3 attempts"
    assert len(hook_server.requests) == 3


async def test_a_refused_connection_is_retried_then_fails() -> None:
    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    verdict = await webhook(f"http://127.0.0.1:{port}/hook").judge(ATTEMPT, CONTEXT, LOOPBACK)
    assert not verdict.success
    assert verdict.detail == "webhook error: connection failed (ConnectError) after 3 attempts"


async def test_a_slow_webhook_times_out_without_retry(hook_server: HookServer) -> None:
    hook_server.replies = [Reply(hang=True)]
    runtime = VerifierRuntime(WebhookPolicy(allow_loopback=True, timeout_s=0.3))
    started = time.perf_counter()
    verdict = await webhook(hook_server.url()).judge(ATTEMPT, CONTEXT, runtime)
    assert time.perf_counter() - started < 2
    assert not verdict.success
    assert verdict.detail == "webhook error: no reply within 0.3 s"
    assert len(hook_server.requests) == 1


@pytest.mark.parametrize(
    ("reply", "detail"),
    [
        (Reply(body=b"not json"), "reply is not JSON of the form"),
        (Reply(body=b'{"success": "yes"}'), "reply is not JSON of the form"),
        (Reply(body=b'{"success": 1}'), "reply is not JSON of the form"),
        (Reply(body=b'{"detail": "no success field"}'), "reply is not JSON of the form"),
        (Reply(body=b'[{"success": true}]'), "reply is not JSON of the form"),
        (Reply(body=b'{"success": true, "detail": 5}'), "reply is not JSON of the form"),
        (Reply(body=b'{"success": true, "pad": ' + b"[" * 65 + b"]" * 65 + b"}"), "reply is not JSON of the form"),
        (Reply(body=b'{"success": true, "pad": NaN}'), "reply is not JSON of the form"),
        (Reply(body=b'{"success": true, "detail": "\xff"}'), "reply is not JSON of the form"),
        (Reply(body=b'{"success": true, "score": 1.5}'), "reply is not JSON of the form"),
        (Reply(body=b'{"success": false, "score": "0.5"}'), "reply is not JSON of the form"),
        (Reply(body=b'{"success": true, "pad": "' + b"x" * 70_000 + b'"}'), "reply larger than 65536 bytes"),
        (Reply(404, b'{"success": true}'), "HTTP 404"),
        (Reply(401, b""), "HTTP 401"),
        (Reply(302, b"", headers=(("Location", "/elsewhere"),)), "HTTP 302 (redirects are not followed)"),
    ],
)
async def test_bad_replies_are_failed_verdicts_without_retry(hook_server: HookServer, reply: Reply,
                                                             detail: str) -> None:
    hook_server.replies = [reply]
    verdict = await webhook(hook_server.url()).judge(ATTEMPT, CONTEXT, LOOPBACK)
    assert not verdict.success
    assert verdict.detail.startswith("webhook error: ")
    assert detail in verdict.detail
    assert len(hook_server.requests) == 1


@pytest.mark.parametrize(("body", "success", "score"), [
    (b'{"success": false, "score": 0.25, "detail": "a quarter right"}', False, 0.25),
    (b'{"success": true, "score": 1}', True, 1.0),
    (b'{"success": true}', True, 1.0),
    (b'{"success": false}', False, 0.0),
])
async def test_a_webhook_may_grade_the_answer(hook_server: HookServer, body: bytes, success: bool,
                                              score: float) -> None:
    hook_server.replies = [Reply(body=body)]
    verdict = await webhook(hook_server.url()).judge(ATTEMPT, CONTEXT, LOOPBACK)
    assert (verdict.success, verdict.score) == (success, score)


ALLOWED = WebhookPolicy(allowed_hosts=frozenset({"hooks.example.com", "10.0.0.7"}))


@pytest.mark.parametrize(
    ("url", "policy"),
    [
        ("https://evil.example.com/hook", ALLOWED),
        ("https://hooks.example.com.evil.net/hook", ALLOWED),
        ("https://evil.net/hooks.example.com", ALLOWED),
        ("https://hooks.example.com@evil.net/hook", ALLOWED),
        ("ftp://hooks.example.com/hook", ALLOWED),
        ("file://hooks.example.com/etc/passwd", ALLOWED),
        ("http://127.0.0.1:8000/hook", ALLOWED),
        ("http://localhost:8000/hook", ALLOWED),
        ("http://[::1]:8000/hook", ALLOWED),
        ("http://169.254.169.254/latest/meta-data", ALLOWED),
        ("http://10.0.0.8/hook", ALLOWED),
        ("http://127.0.0.1:8000/hook", WebhookPolicy()),
        ("http://hooks.example.com/hook", WebhookPolicy(allow_loopback=True)),
        ("ftp://127.0.0.1/hook", WebhookPolicy(allow_loopback=True)),
        ("http://127.0.0.1.evil.net/hook", WebhookPolicy(allow_loopback=True)),
        ("http://localhost.evil.net/hook", WebhookPolicy(allow_loopback=True)),
    ],
)
def test_hosts_outside_the_policy_are_refused(url: str, policy: WebhookPolicy) -> None:
    with pytest.raises(WebhookNotAllowed):
        webhook(url).check(policy)


@pytest.mark.parametrize(
    ("url", "policy"),
    [
        ("https://hooks.example.com/hook", ALLOWED),
        ("http://HOOKS.Example.com:8080/a?b=c", ALLOWED),
        ("http://10.0.0.7/hook", ALLOWED),
        ("http://hooks.example.com/hook", WebhookPolicy(allowed_hosts=frozenset({"Hooks.Example.COM"}))),
        ("http://127.0.0.1:8000/hook", WebhookPolicy(allow_loopback=True)),
        ("http://127.8.9.10/hook", WebhookPolicy(allow_loopback=True)),
        ("http://localhost/hook", WebhookPolicy(allow_loopback=True)),
        ("http://[::1]:9/hook", WebhookPolicy(allow_loopback=True)),
    ],
)
def test_hosts_inside_the_policy_are_accepted(url: str, policy: WebhookPolicy) -> None:
    webhook(url).check(policy)


async def test_a_refused_host_is_never_contacted(hook_server: HookServer) -> None:
    spec = webhook(hook_server.url())
    for policy in (WebhookPolicy(), ALLOWED, WebhookPolicy(allowed_hosts=frozenset({"localhost"}))):
        with pytest.raises(WebhookNotAllowed):
            await verify(spec, ATTEMPT, CONTEXT, VerifierRuntime(policy))
    # The server handles connections in order: after this allowed call, any earlier one would show.
    assert (await verify(spec, ATTEMPT, CONTEXT, LOOPBACK)).success
    assert len(hook_server.requests) == 1


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"type": "webhook"}, "url"),
        ({"type": "webhook", "url": "/relative/hook"}, "url"),
        ({"type": "webhook", "url": "hooks.example.com"}, "url"),
        ({"type": "webhook", "url": "http://"}, "url"),
        ({"type": "webhook", "url": "https://hooks.example.com/" + "a" * 3000}, "url"),
        ({"type": "webhook", "url": "https://hooks.example.com", "headers": {"X-R3-Signature": "sha256=forged"}},
         "headers"),
        ({"type": "webhook", "url": "https://hooks.example.com", "headers": {"content-length": "0"}}, "headers"),
        ({"type": "webhook", "url": "https://hooks.example.com", "headers": {"X-A": "1\r\nX-Injected: 1"}}, "headers"),
        ({"type": "webhook", "url": "https://hooks.example.com", "headers": {"Bad Name": "1"}}, "headers"),
        ({"type": "webhook", "url": "https://hooks.example.com", "headers": {f"X-{i}": "1" for i in range(17)}},
         "headers"),
        ({"type": "webhook", "url": "https://hooks.example.com", "secret": "mine"}, "secret"),
    ],
)
def test_invalid_specs_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_spec(data)
    assert any(field in error["loc"] for error in raised.value.errors())


@pytest.mark.parametrize("fields", [{"timeout_s": 0}, {"max_attempts": 0}])
def test_a_policy_needs_a_positive_timeout_and_an_attempt(fields: dict) -> None:
    with pytest.raises(ValueError):
        WebhookPolicy(**fields)
