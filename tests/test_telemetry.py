"""Tracing (r3/telemetry.py): each request is a trace of its attempts, reflection, verdicts, judge and
webhook calls and episode write, and each training round is one too; off unless asked for.

The spans are read from the OpenTelemetry SDK's in-memory exporter on a tracer provider installed for
this module (and removed after it); the requests go through the real app with a scripted engine (no
model; the embedded SQLite), judged by a judge and a webhook served on loopback. Exporting is tested
end to end against OTLP collectors served on loopback (gRPC, and HTTP from a server in a process of its
own, which also shows that without the setting no provider is installed and the SDK is never loaded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import httpx
import pytest
from fastapi import FastAPI, Request, Response
from judge_server import COMPLETION_TOKENS, PROMPT_TOKENS_PER_MESSAGE, OpenAICompatibleJudge
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.test.globals_test import reset_trace_globals
from opentelemetry.trace import SpanKind, StatusCode
from support import ScriptedEngine, ThreadedServer

from r3 import telemetry
from r3.settings import ConfigurationError, Settings
from r3.store.store import open_store
from server.app import create_app
from trainer.worker import TrainerWorker

ROOT = Path(__file__).resolve().parent.parent
ADMIN = {"Authorization": "Bearer admin-key"}
ASK = [{"role": "user", "content": "Name a fruit we sell."}]
REFLECTION = "Mangoes are out of stock; I should name apples."
IN_STOCK = {"type": "regex", "pattern": "Apple"}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"  # the W3C Trace Context spec's example


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider for this module: every span, kept in memory as it ends."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    reset_trace_globals()
    trace.set_tracer_provider(provider)
    yield memory
    # The other modules' apps are served untraced again. R3's tracer keeps the provider it found (the
    # API's proxy tracer resolves once), so what it records from now on is dropped, silently.
    memory.shutdown()
    reset_trace_globals()


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    exporter.clear()
    return exporter


@pytest.fixture(autouse=True)
def no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("OTEL_", "R3_OTEL_")):
            monkeypatch.delenv(name)


async def serve(tmp_path: Path, engine: ScriptedEngine, **settings):
    app = create_app(Settings(_env_file=None, data_dir=tmp_path, models_dir=tmp_path, database_url=None,
                              redis_url=None, admin_key="admin-key", **settings), engine=engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r3") as http:
            yield http, app


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    """`parent`'s child spans, in the order they started."""
    return sorted((s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id),
                  key=lambda s: s.start_time)


def named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.name == name), key=lambda s: s.start_time)


def continues(traceparent: str, span: ReadableSpan) -> bool:
    """Whether a W3C `traceparent` header names `span` as the caller's: its trace and its span."""
    _, trace_id, parent_id, _ = traceparent.split("-")
    return (trace_id, parent_id) == (f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}")


# ------------------------------------------------------------------------------------------ requests


@pytest.fixture
async def served(tmp_path: Path, spans: InMemorySpanExporter):
    """The app on a scripted engine whose first answer fails the verifier and whose retry passes,
    serving version r3-v1 of the default scenario."""
    engine = ScriptedEngine(["Mango", REFLECTION, "Apple"])
    async for http, app in serve(tmp_path, engine, adapter_poll_s=0.05):
        files = tmp_path / "trained"
        files.mkdir()
        (files / "adapter_config.json").write_text("{}")
        await app.state.store.registry.register(files, None, {}, [])
        assert (await http.post("/admin/adapters/r3-v1/activate", headers=ADMIN)).status_code == 200
        spans.clear()
        yield http


async def test_a_verified_request_is_one_trace_of_its_attempts_reflection_verdicts_and_episode(
        served, spans: InMemorySpanExporter) -> None:
    answered = await served.post("/v1/chat/completions", json={"model": "r3", "messages": ASK, "verifier": IN_STOCK})
    assert answered.status_code == 200, answered.text
    completion = answered.json()
    episode_id = completion["r3"]["episode_id"]
    assert completion["choices"][0]["message"]["content"] == "Apple" and completion["r3"]["adapter"] == "r3-v1"

    finished = list(spans.get_finished_spans())
    assert len({s.context.trace_id for s in finished}) == 1  # one trace
    (request,) = [s for s in finished if s.parent is None]
    assert (request.name, request.kind) == ("POST /v1/chat/completions", SpanKind.SERVER)
    assert request.attributes["http.status_code"] == 200
    assert {k: request.attributes[k] for k in ("gen_ai.operation.name", "gen_ai.request.model", "r3.episode_id",
                                               "r3.adapter", "r3.scenario")} == {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "r3", "r3.episode_id": episode_id,
        "r3.adapter": "r3-v1", "r3.scenario": "default"}

    first, reflection, retry, write = children(finished, request)
    assert [s.name for s in (first, reflection, retry, write)] == ["r3.attempt", "r3.reflection", "r3.attempt",
                                                                   "r3.episode.write"]
    for number, span in ((1, first), (2, reflection), (2, retry)):
        assert dict(span.attributes) == {"r3.episode_id": episode_id, "r3.adapter": "r3-v1",
                                         "r3.attempt.number": number}
    assert first.end_time <= reflection.start_time and reflection.end_time <= retry.start_time
    assert retry.end_time <= write.start_time and write.end_time <= request.end_time
    assert {k: write.attributes[k] for k in ("r3.episode_id", "r3.adapter", "r3.scenario", "r3.episode.attempts")} == {
        "r3.episode_id": episode_id, "r3.adapter": "r3-v1", "r3.scenario": "default", "r3.episode.attempts": 2}

    # Each attempt: its generation, then its verdict; the reflection: its generation alone.
    (reflected,) = children(finished, reflection)
    generated_first, verified_first = children(finished, first)
    generated_retry, verified_retry = children(finished, retry)
    assert [s.name for s in (generated_first, verified_first, reflected, generated_retry, verified_retry)] == [
        "r3.engine.generate", "r3.verify", "r3.engine.generate", "r3.engine.generate", "r3.verify"]
    assert [(s.attributes["gen_ai.evaluation.name"], s.attributes["gen_ai.evaluation.score.value"],
             s.attributes["gen_ai.evaluation.score.label"]) for s in (verified_first, verified_retry)] == [
        ("regex", 0.0, "fail"), ("regex", 1.0, "pass")]
    assert [s.attributes["r3.reflection"] for s in (generated_first, reflected, generated_retry)] == [
        False, True, False]
    assert generated_retry.attributes["gen_ai.response.id"] == completion["id"]  # the answer is the retry's
    assert generated_retry.attributes["gen_ai.usage.output_tokens"] == len("Apple")  # one token a byte
    assert reflected.attributes["gen_ai.usage.output_tokens"] == len(REFLECTION.encode())
    for generated in (generated_first, reflected, generated_retry):
        assert generated.attributes["gen_ai.request.model"] == "r3"
        assert generated.attributes["r3.adapter"] == "r3-v1"
        assert generated.attributes["gen_ai.response.finish_reasons"] == ("stop",)
        assert generated.attributes["gen_ai.usage.input_tokens"] > 0
        assert "gen_ai.usage.cache_read.input_tokens" not in generated.attributes  # the scripted engine has no cache
        ttft = generated.attributes["gen_ai.server.time_to_first_token"]
        assert 0 <= ttft <= (generated.end_time - generated.start_time) / 1e9


async def test_a_streamed_answer_is_traced_until_its_last_chunk(served, spans: InMemorySpanExporter) -> None:
    """Plain inference streams while the engine generates (the attempt's span is taken up in another task
    than its first event's): its spans are the request's all the same, and the request's ends last."""
    answered = await served.post("/v1/chat/completions", json={"model": "r3", "messages": ASK, "stream": True})
    assert answered.status_code == 200 and answered.text.endswith("data: [DONE]\n\n")
    finished = list(spans.get_finished_spans())
    (request,) = [s for s in finished if s.parent is None]
    attempt, write = children(finished, request)
    (generated,) = children(finished, attempt)
    assert (attempt.name, write.name, generated.name) == ("r3.attempt", "r3.episode.write", "r3.engine.generate")
    assert generated.attributes["gen_ai.usage.output_tokens"] == len("Mango")
    assert generated.attributes["gen_ai.server.time_to_first_token"] >= 0
    assert max(s.end_time for s in finished) == request.end_time


async def test_a_callers_trace_goes_on_in_the_request(served, spans: InMemorySpanExporter) -> None:
    answered = await served.post("/v1/chat/completions", json={"model": "r3", "messages": ASK},
                                 headers={"traceparent": TRACEPARENT})
    assert answered.status_code == 200
    (request,) = named(spans.get_finished_spans(), "POST /v1/chat/completions")
    assert f"{request.context.trace_id:032x}" == TRACEPARENT.split("-")[1]
    assert request.parent.is_remote and f"{request.parent.span_id:016x}" == TRACEPARENT.split("-")[2]


@pytest.fixture(scope="module")
def judge() -> Iterator[tuple[OpenAICompatibleJudge, str]]:
    model_judge = OpenAICompatibleJudge()
    with ThreadedServer(model_judge.app) as url:
        yield model_judge, f"{url}/v1"


async def test_a_judge_call_is_a_client_span_under_its_verdict_and_the_trace_goes_on_in_the_judge(
        tmp_path: Path, judge, spans: InMemorySpanExporter) -> None:
    model_judge, url = judge
    model_judge.reset()
    grader = {"type": "score_model", "name": "capital", "model": "judge", "range": [0, 10], "pass_threshold": 7,
              "input": [{"role": "system", "content": "Score the answer from 0 to 10."},
                        {"role": "user", "content": "Answer: {{ sample.output_text }}"}]}
    async for http, _ in serve(tmp_path, ScriptedEngine(["Paris"]), judge_base_url=url, webhook_allow_loopback=True):
        answered = await http.post("/v1/chat/completions", json={
            "model": "scripted", "messages": [{"role": "user", "content": "The capital of France?"}],
            "verifier": grader})
    assert answered.json()["r3"]["attempts"][0]["score"] == 0.9
    finished = spans.get_finished_spans()
    (verified,) = named(finished, "r3.verify")
    (judged,) = children(finished, verified)
    assert (judged.name, judged.kind, judged.status.status_code) == ("r3.judge", SpanKind.CLIENT, StatusCode.UNSET)
    assert dict(judged.attributes) == {"gen_ai.operation.name": "chat", "gen_ai.request.model": "judge",
                                       "r3.judge.calls": 1, "gen_ai.usage.input_tokens": 2 * PROMPT_TOKENS_PER_MESSAGE,
                                       "gen_ai.usage.output_tokens": COMPLETION_TOKENS}
    assert verified.attributes["gen_ai.evaluation.score.value"] == 0.9
    (_, headers), = model_judge.requests
    assert continues(headers["traceparent"], judged)


async def test_a_failed_judge_call_is_an_error_span_and_an_unjudged_verdict(
        tmp_path: Path, judge, spans: InMemorySpanExporter) -> None:
    _, url = judge
    grader = {"type": "label_model", "name": "right", "model": "refusing", "labels": ["correct", "incorrect"],
              "passing_labels": ["correct"], "input": [{"role": "user", "content": "{{ sample.output_text }}"}]}
    async for http, _ in serve(tmp_path, ScriptedEngine(["Paris"]), judge_base_url=url, webhook_allow_loopback=True):
        answered = await http.post("/v1/chat/completions", json={"model": "scripted", "messages": ASK,
                                                                 "verifier": grader})
    assert answered.json()["r3"]["attempts"][0]["success"] is None
    (verified,) = named(spans.get_finished_spans(), "r3.verify")
    (judged,) = named(spans.get_finished_spans(), "r3.judge")
    assert verified.attributes["gen_ai.evaluation.score.label"] == "unjudged"
    assert "gen_ai.evaluation.score.value" not in verified.attributes
    assert judged.status.status_code == StatusCode.ERROR and "refused" in judged.status.description
    assert judged.attributes["r3.judge.calls"] == 1  # what the failed call cost is kept


class Webhook:
    """A client's verifier endpoint: it passes everything, and keeps each request's headers."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.app = FastAPI()

        @self.app.post("/verify")
        async def verify(request: Request) -> dict:
            self.headers.append(dict(request.headers))
            return {"success": True}


async def test_a_webhook_post_is_an_http_client_span_whose_trace_goes_on_at_the_endpoint(
        tmp_path: Path, spans: InMemorySpanExporter) -> None:
    hook = Webhook()
    with ThreadedServer(hook.app) as url:
        async for http, _ in serve(tmp_path, ScriptedEngine(["Apple"]), webhook_allow_loopback=True):
            answered = await http.post("/v1/chat/completions", json={
                "model": "scripted", "messages": ASK,
                "verifier": {"type": "webhook", "url": f"{url}/verify?token=s3cret"}})
    assert answered.json()["r3"]["attempts"][0]["success"] is True
    finished = spans.get_finished_spans()
    (verified,) = named(finished, "r3.verify")
    (posted,) = children(finished, verified)
    assert (posted.name, posted.kind) == ("POST", SpanKind.CLIENT)
    assert dict(posted.attributes) == {"http.request.method": "POST", "server.address": "127.0.0.1",
                                       "server.port": int(url.rsplit(":", 1)[1]), "url.full": f"{url}/verify",
                                       "http.response.status_code": 200}  # no query: it may hold a secret
    (headers,) = hook.headers
    assert continues(headers["traceparent"], posted)


# ------------------------------------------------------------------------------------------ training


async def test_a_training_round_is_a_trace_of_its_steps(tmp_path: Path, spans: InMemorySpanExporter) -> None:
    """A round with nothing to train on: selected, then skipped, saying why."""
    settings = Settings(_env_file=None, data_dir=tmp_path, models_dir=tmp_path, database_url=None, redis_url=None)
    async with open_store(settings) as store:
        worker = TrainerWorker(settings, store)
        try:
            outcome = await worker.run_round(requested_by="test")
        finally:
            await worker.close()
    finished = spans.get_finished_spans()
    (round_span,) = [s for s in finished if s.parent is None]
    assert round_span.name == "r3.training_round"
    assert dict(round_span.attributes) == {"r3.round_id": outcome.round_id, "r3.scenario": "default",
                                           "r3.round.requested_by": "test", "r3.promoted": False,
                                           "r3.round.skipped": outcome.report["skipped"]}
    assert outcome.report["skipped"].startswith("too few failures")
    (select,) = children(finished, round_span)
    assert select.name == "r3.select"
    assert dict(select.attributes) == {"r3.round.train": 0, "r3.round.heldout": 0, "r3.round.regression": 0,
                                       "r3.round.set_aside": 0}


# ------------------------------------------------------------------------------------------ configuration


def test_tracing_is_off_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(_env_file=None)
    assert telemetry.exporter_names(settings) == [] and telemetry.tracer_provider(settings, "r3-server") is None
    endpoint = Settings(_env_file=None, otel_exporter_otlp_endpoint="http://collector:4317")
    assert telemetry.exporter_names(endpoint) == ["otlp_proto_grpc"]  # the Python SDK's default protocol
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    assert telemetry.exporter_names(endpoint) == ["otlp_proto_http"]
    assert telemetry.exporter_names(settings) == []  # a protocol alone turns nothing on
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert telemetry.exporter_names(settings) == ["otlp_proto_http"]
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console,otlp")
    assert telemetry.exporter_names(settings) == ["console", "otlp_proto_http"]
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert telemetry.exporter_names(endpoint) == []
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert telemetry.exporter_names(endpoint) == []


def test_exporters_that_cannot_be_had_are_said_with_the_variable_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = Settings(_env_file=None, otel_exporter_otlp_endpoint="http://collector:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_OTLP_PROTOCOL='http/json'.*Fix: grpc or http/protobuf"):
        telemetry.tracer_provider(endpoint, "r3-server")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaeger")
    with pytest.raises(ConfigurationError, match="OTEL_TRACES_EXPORTER names 'jaeger'.*console.*otlp_proto_grpc"):
        telemetry.tracer_provider(endpoint, "r3-server")


class GrpcCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector on loopback: the export requests it received."""

    def __init__(self) -> None:
        self.received: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def Export(self, request, context):  # noqa: N802 - the service's method name
        self.received.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class HttpCollector:
    """An OTLP/HTTP trace collector (protobuf) for `ThreadedServer`: the export requests it received."""

    def __init__(self) -> None:
        self.received: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.app = FastAPI()

        @self.app.post("/v1/traces")
        async def export(request: Request) -> Response:
            self.received.append(trace_service_pb2.ExportTraceServiceRequest.FromString(await request.body()))
            return Response(trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
                            media_type="application/x-protobuf")


def exported(received: list[trace_service_pb2.ExportTraceServiceRequest]) -> list[tuple[str, str, dict]]:
    """(service.name, span name, attributes) of every span the collector received."""
    found = []
    for request in received:
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}
                    found.append((service, span.name, attributes))
    return found


def test_the_endpoint_setting_exports_by_otlp_over_grpc_to_the_collector() -> None:
    collector = GrpcCollector()
    collector.server.start()
    try:
        settings = Settings(_env_file=None, otel_exporter_otlp_endpoint=f"http://127.0.0.1:{collector.port}")
        provider = telemetry.tracer_provider(settings, "r3-trainer")
        with provider.get_tracer("test").start_as_current_span("r3.training_round", attributes={"r3.round_id": 7}):
            pass
        provider.shutdown()  # flushes the batch
    finally:
        collector.server.stop(None)
    spans = exported(collector.received)
    assert [(service, name) for service, name, _ in spans] == [("r3-trainer", "r3.training_round")]


def test_the_operators_service_name_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "r3-eu-west")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    provider = telemetry.tracer_provider(Settings(_env_file=None), "r3-server")
    assert provider.resource.attributes["service.name"] == "r3-eu-west"
    provider.shutdown()


SERVER_IN_A_PROCESS = """
import asyncio, json, sys, tempfile
from pathlib import Path

import httpx
from opentelemetry import trace

from support import ScriptedEngine
from r3 import telemetry
from r3.settings import Settings
from server.app import create_app


async def ask(settings):
    app = create_app(settings, engine=ScriptedEngine(lambda prompt, adapter: "Apple"))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r3") as http:
            answered = await http.post("/v1/chat/completions", json={
                "model": "scripted", "messages": [{"role": "user", "content": "A fruit?"}],
                "verifier": {"type": "regex", "pattern": "Apple"}})
    return answered.status_code, answered.json()["r3"]["episode_id"]


async def main(endpoint):
    folder = Path(tempfile.mkdtemp())
    settings = Settings(_env_file=None, data_dir=folder, models_dir=folder, database_url=None, redis_url=None)
    status, _ = await ask(settings)
    off = {"status": status, "provider": type(trace.get_tracer_provider()).__name__,
           "recording": telemetry.tracer.start_span("probe").is_recording(),
           "sdk_loaded": "opentelemetry.sdk.trace" in sys.modules}
    status, episode_id = await ask(settings.model_copy(update={"otel_exporter_otlp_endpoint": endpoint}))
    trace.get_tracer_provider().force_flush()
    on = {"status": status, "episode_id": episode_id, "provider": type(trace.get_tracer_provider()).__name__}
    print(json.dumps({"off": off, "on": on}))


asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.process
def test_a_server_traces_nothing_by_default_and_exports_its_requests_once_the_endpoint_is_set() -> None:
    """In a process of its own (the tracer provider is the process's): a request served without the
    setting installs no provider, loads no SDK, and records nothing; with it (OTLP over HTTP here) the
    request's trace reaches the collector, as the r3-server service."""
    collector = HttpCollector()
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "R3_"))}
    environment |= {"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    with ThreadedServer(collector.app) as url:
        done = subprocess.run([sys.executable, "-c", SERVER_IN_A_PROCESS, url], cwd=ROOT, env=environment,
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said["off"] == {"status": 200, "provider": "ProxyTracerProvider", "recording": False, "sdk_loaded": False}
    assert said["on"]["status"] == 200 and said["on"]["provider"] == "TracerProvider"
    spans = exported(collector.received)
    assert {service for service, _, _ in spans} == {"r3-server"}
    names = [name for _, name, _ in spans]
    assert {"POST /v1/chat/completions", "r3.attempt", "r3.engine.generate", "r3.verify",
            "r3.episode.write"} <= set(names)
    (write,) = [attributes for _, name, attributes in spans if name == "r3.episode.write"]
    assert write["r3.episode_id"] == said["on"]["episode_id"]
