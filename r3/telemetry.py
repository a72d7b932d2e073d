"""Tracing with OpenTelemetry: off unless the operator asks for it; then each request and each
training round is a trace.

`configure_tracing` installs the OpenTelemetry SDK's `TracerProvider`, exporting through a
`BatchSpanProcessor`, when `R3_OTEL_EXPORTER_OTLP_ENDPOINT` is set, or when the standard variables ask
for it (the OpenTelemetry environment variable specification, read as the Python SDK's own
auto-configuration reads them):

- `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: OTLP to that collector;
- `OTEL_TRACES_EXPORTER`: the exporters named (comma-separated entry points of the group
  `opentelemetry_traces_exporter`: `otlp`, `otlp_proto_grpc`, `otlp_proto_http`, `console`, ...);
  `none` turns tracing off; unset, `otlp`. `otlp` is OTLP over gRPC, or over HTTP with
  `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL=http/protobuf`;
- `OTEL_SDK_DISABLED=true` turns it off whatever else is set.

Otherwise nothing is installed: `tracer` is the API's no-op tracer, whose spans record nothing, and
the SDK and the exporters are never imported. The exporters read the rest of their `OTEL_EXPORTER_OTLP_*`
variables (headers, TLS, timeout, compression) themselves; the SDK reads `OTEL_TRACES_SAMPLER` and the
span limits. The resource's `service.name` is the process's (`r3-server`, `r3-trainer`) unless
`OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names one.

The spans (`docs/guides/production.md`, "Tracing"): a request's server span (FastAPI's
instrumentation) holds `r3.attempt` (each attempt: its `r3.engine.generate`, its `r3.verify`, under it
any `r3.judge` or webhook `POST`), `r3.reflection` (its `r3.engine.generate`) and `r3.episode.write`;
a round's `r3.training_round` holds `r3.select`, `r3.train`, `r3.register`, `r3.gate`, `r3.decide`.
Attributes are R3's (`r3.*`) and, where they fit, the OpenTelemetry GenAI semantic conventions'
(`gen_ai.*`: the inference span's request, usage and response attributes; the evaluation
attributes for a verdict; the model server's time to first token, in seconds).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, Span, SpanKind, Status, StatusCode

from r3.settings import ConfigurationError, Settings
from verifiers import JudgeUsage, Verdict
from verifiers.runtime import JudgeFailed, JudgeReply, JudgeSampling

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider

    from r3.engines.base import SamplingParams
    from r3.episodes import Episode

log = logging.getLogger(__name__)

tracer = trace.get_tracer("r3")

# R3's attributes.
EPISODE_ID = "r3.episode_id"
ADAPTER = "r3.adapter"  # the adapter version that served (absent: the base model)
SCENARIO = "r3.scenario"
ATTEMPT = "r3.attempt.number"
ROUND_ID = "r3.round_id"
CANDIDATE = "r3.candidate"
PROMOTED = "r3.promoted"
# The OpenTelemetry GenAI semantic conventions' (semantic-conventions-genai: inference spans, the
# gen_ai.evaluation.result event's attributes, the gen_ai.server.time_to_first_token metric's name).
OPERATION = "gen_ai.operation.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_ID = "gen_ai.response.id"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CACHED_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"  # of the input tokens, those the prefix cache held
TIME_TO_FIRST_TOKEN = "gen_ai.server.time_to_first_token"  # seconds
EVALUATION_NAME = "gen_ai.evaluation.name"
SCORE_VALUE = "gen_ai.evaluation.score.value"
SCORE_LABEL = "gen_ai.evaluation.score.label"  # pass, fail or unjudged

_EXPORTER_GROUP = "opentelemetry_traces_exporter"
_OTLP_BY_PROTOCOL = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}


def exporter_names(settings: Settings) -> list[str]:
    """The span exporters the settings and the environment ask for (entry point names of
    `opentelemetry_traces_exporter`); none: tracing is off. Raises `ConfigurationError` for an OTLP
    protocol that is neither `grpc` nor `http/protobuf`."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = env.get("OTEL_TRACES_EXPORTER", "").strip()
    endpoint = (settings.otel_exporter_otlp_endpoint or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    if named.lower() == "none" or not (named or endpoint):
        return []
    names = [name.strip() for name in (named or "otlp").split(",") if name.strip()]
    return [_otlp_by_protocol() if name == "otlp" else name for name in names]


def tracer_provider(settings: Settings, service_name: str) -> TracerProvider | None:
    """A `TracerProvider` exporting what `exporter_names` asks for, each exporter behind a
    `BatchSpanProcessor`; None when tracing is off. `R3_OTEL_EXPORTER_OTLP_ENDPOINT` is the OTLP
    exporters' endpoint, as `OTEL_EXPORTER_OTLP_ENDPOINT` is (over HTTP, `/v1/traces` is appended).
    Raises `ConfigurationError` for an exporter no installed package provides."""
    names = exporter_names(settings)
    if not names:
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # The operator's OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win over the process's own name.
    resource = Resource.create({SERVICE_NAME: service_name}).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, settings.otel_exporter_otlp_endpoint)))
    return provider


def configure_tracing(settings: Settings, service_name: str) -> TracerProvider | None:
    """Install `tracer_provider(settings, service_name)` as the process's tracer provider, and
    return it; None when tracing is off, or when a provider is installed already (an embedding
    program's, or an earlier call's: the API takes one per process), which is then left as it is."""
    if _installed():
        return None
    provider = tracer_provider(settings, service_name)
    if provider is not None:
        trace.set_tracer_provider(provider)
        log.info("tracing on: %s spans exported (%s)", service_name, ", ".join(exporter_names(settings)))
    return provider


def instrument_app(app: FastAPI, settings: Settings) -> None:
    """Give each of `app`'s HTTP requests a server span (OpenTelemetry's FastAPI instrumentation: the
    HTTP semantic conventions, the caller's W3C `traceparent` continued), when tracing is on or a
    tracer provider is installed already; else leave `app` alone. /health and /metrics are left out
    unless `OTEL_PYTHON_FASTAPI_EXCLUDED_URLS` says otherwise; so are the spans of each ASGI send and
    receive (one per streamed chunk)."""
    if not (_installed() or exporter_names(settings)):
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls=os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS",
                                                                         "/health,/metrics"),
                                       exclude_spans=["receive", "send"])


# ------------------------------------------------------------------------------------------- spans


@contextmanager
def ended(span: Span) -> Iterator[Span]:
    """`span`, ended when the block ends, an exception that escapes it recorded on it. The span is
    not made current (`within` does that), so the block may be an async generator's and yield: its
    reader may take each item in another task, where a context attached here could not be detached."""
    try:
        yield span
    except Exception as error:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        raise
    finally:
        span.end()


def within(span: Span) -> AbstractContextManager[Span]:
    """A context manager making `span` current for its block (spans started in it are its children),
    without ending it or recording exceptions on it: its owner (`ended`) does."""
    return trace.use_span(span, record_exception=False, set_status_on_exception=False)


def attempt_attributes(episode_id: str, adapter: str | None, number: int) -> dict[str, Any]:
    """An `r3.attempt` (or `r3.reflection` before attempt `number`) span's attributes."""
    return _present({EPISODE_ID: episode_id, ADAPTER: adapter, ATTEMPT: number})


def generation_attributes(model: str, adapter: str | None, params: SamplingParams, completion_id: str,
                          reflecting: bool) -> dict[str, Any]:
    """An `r3.engine.generate` span's attributes when it starts: a text completion (the engine is given
    the rendered prompt) asked for as `model`, on `adapter`, sampled with `params`; an attempt whose
    answer is `completion_id`, or a reflection."""
    return _present({OPERATION: "text_completion", REQUEST_MODEL: model, ADAPTER: adapter, RESPONSE_ID: completion_id,
                     "gen_ai.request.max_tokens": params.max_tokens, "gen_ai.request.temperature": params.temperature,
                     "gen_ai.request.top_p": params.top_p, "gen_ai.request.seed": params.seed,
                     "r3.reflection": reflecting})


def generation_usage(prompt_tokens: int, completion_tokens: int, first_token_s: float | None,
                     cached_tokens: int | None = None) -> dict[str, Any]:
    """What a generation made, as far as it got: its tokens in and out, of its prompt's tokens those whose
    keys and values the prefix cache held (absent when the engine did not say), and the seconds from its
    start to its first token (the engine's queue and the prompt's prefill; absent when none came)."""
    return _present({INPUT_TOKENS: prompt_tokens, CACHED_INPUT_TOKENS: cached_tokens, OUTPUT_TOKENS: completion_tokens,
                     TIME_TO_FIRST_TOKEN: first_token_s})


def episode_attributes(episode: Episode) -> dict[str, Any]:
    """What identifies `episode` on a span: its id, the adapter version that served it, its scenario."""
    return _present({EPISODE_ID: episode.id, ADAPTER: episode.adapter, SCENARIO: episode.scenario})


def describe_request(episode: Episode, model: str) -> None:
    """Name on the current span (a request's server span) the request's `model` and its (first)
    choice's episode: the one its response's `r3.episode_id` names."""
    trace.get_current_span().set_attributes({OPERATION: "chat", REQUEST_MODEL: model, **episode_attributes(episode)})


def describe_round(*, round_id: int | None = None, scenario: str | None = None, requested_by: str | None = None,
                   candidate: str | None = None, promoted: bool | None = None, skipped: str | None = None) -> None:
    """Name on the current span (a training round's) what is known of the round: its id, scenario and
    who asked for it, then its candidate, whether it was promoted, or why it was skipped."""
    trace.get_current_span().set_attributes(_present({
        ROUND_ID: round_id, SCENARIO: scenario, "r3.round.requested_by": requested_by, CANDIDATE: candidate,
        PROMOTED: promoted, "r3.round.skipped": skipped}))


def record_verdict(span: Span, verdict: Verdict) -> None:
    """A verifier's verdict on its `r3.verify` span: its score in [0, 1] and pass, fail or unjudged."""
    label = "unjudged" if verdict.success is None else "pass" if verdict.success else "fail"
    span.set_attributes(_present({SCORE_VALUE: verdict.score, SCORE_LABEL: label}))


Complete = Callable[..., Awaitable[JudgeReply]]  # a model judge's `complete` method


def judge_call(kind: SpanKind) -> Callable[[Complete], Complete]:
    """Wraps a model judge's `complete(self, model, messages, json_schema, sampling)` in an `r3.judge`
    span of `kind` (CLIENT over HTTP, INTERNAL on an engine of this process): the judge model, its
    tries and tokens, a `JudgeFailed` recorded as the span's error."""
    def wrap(complete: Complete) -> Complete:
        @functools.wraps(complete)
        async def traced(judge: Any, model: str, messages: list[dict[str, Any]], json_schema: dict[str, Any],
                         sampling: JudgeSampling) -> JudgeReply:
            with tracer.start_as_current_span("r3.judge", kind=kind,
                                              attributes={OPERATION: "chat", REQUEST_MODEL: model}) as span:
                try:
                    reply = await complete(judge, model, messages, json_schema, sampling)
                except JudgeFailed as failure:
                    _judge_usage(span, failure.usage)
                    raise
                _judge_usage(span, reply.usage)
                return reply
        return traced
    return wrap


def _judge_usage(span: Span, usage: JudgeUsage) -> None:
    span.set_attributes({"r3.judge.calls": usage.calls, INPUT_TOKENS: usage.prompt_tokens,
                         OUTPUT_TOKENS: usage.completion_tokens})


def _present(attributes: dict[str, Any]) -> dict[str, Any]:
    """`attributes` without the None values (an attribute is never null in OpenTelemetry)."""
    return {name: value for name, value in attributes.items() if value is not None}


# ------------------------------------------------------------------------------------------- setup


def _installed() -> bool:
    """Whether a tracer provider is installed (R3's, or that of a program that embeds R3)."""
    return not isinstance(trace.get_tracer_provider(), ProxyTracerProvider | NoOpTracerProvider)


def _otlp_by_protocol() -> str:
    """The entry point `otlp` stands for: gRPC unless the OTLP protocol variables say http/protobuf
    (the Python SDK's auto-configuration's default and rule)."""
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "grpc").strip()
    if protocol not in _OTLP_BY_PROTOCOL:
        raise ConfigurationError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not an OTLP protocol R3 can export "
                                 "traces with. Fix: grpc or http/protobuf")
    return _OTLP_BY_PROTOCOL[protocol]


def _exporter(name: str, endpoint: str | None) -> Any:
    """The span exporter of entry point `name`; an OTLP one sends to `endpoint` (a collector's base
    URL, as OTEL_EXPORTER_OTLP_ENDPOINT is), when given, else where its variables say."""
    found = entry_points(group=_EXPORTER_GROUP, name=name)
    if not found:
        known = ", ".join(sorted(e.name for e in entry_points(group=_EXPORTER_GROUP)))
        raise ConfigurationError(f"OTEL_TRACES_EXPORTER names {name!r}, which no installed package provides. "
                                 f"Fix: one of {known}, or none")
    exporter = next(iter(found)).load()
    if endpoint is None or name not in _OTLP_BY_PROTOCOL.values():
        return exporter()
    if name == "otlp_proto_http":  # its endpoint is the signal's own URL
        endpoint = f"{endpoint.removesuffix('/')}/v1/traces"
    return exporter(endpoint=endpoint)
