"""The model judge of the model graders (`score_model`, `label_model`): `verifiers.runtime.ModelJudge`.

Which model judges is the operator's choice (`model_judge`):

- With `R3_JUDGE_BASE_URL` (an OpenAI-compatible `/v1` base: OpenAI, vLLM, another R3), `HttpJudge`
  POSTs `{base}/chat/completions` with `response_format: {"type": "json_schema", ...}`, so a judge
  that supports structured outputs answers under the grader's schema. Its host must pass the webhook
  allow-list (`R3_WEBHOOK_ALLOWED_HOSTS`, loopback with `R3_WEBHOOK_ALLOW_LOOPBACK`), checked when the
  settings are read (`r3.settings.Settings`). The grader's `model` names a model of that server.
- Without it, the judge is this process's own engine (`EngineJudge`), the answer held to the schema by
  its constrained decoding. The grader's `model` is `base` (the base model) or an `R3_LORA_MODULES`
  adapter: weights that stay as they are, so serving, the trainer's rollouts and the gate all judge
  alike. `r3` and the served id are refused: they follow the adapter being trained, a judge the
  policy would be trained to please (OpenAI's guide warns of "grader hacking"). The server judges on
  the engine it serves with; a trainer, which serves nothing, on an engine of its own built at its
  first judgement (`EmbeddedJudge`).

Each judgement is one call, bounded by `R3_JUDGE_TIMEOUT_S`; at most `R3_JUDGE_MAX_CONCURRENCY`
calls run at once in a process. Over HTTP, refused or dropped connections, 5xx and 429 answers are
tried again (`R3_JUDGE_MAX_ATTEMPTS` tries in all, backing off as webhooks do); a timeout, another
4xx, a reply that is not a chat completion, a refusal or an answer cut by its token limit is not.
Every failure is `JudgeFailed`, which the graders turn into an unjudged verdict.
"""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

import httpx
from opentelemetry import propagate
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from r3.chat_format import render_prompt
from r3.engines import create_engine
from r3.engines.base import Engine, EngineError, SamplingParams
from r3.settings import Settings
from r3.telemetry import judge_call
from verifiers.base import JudgeUsage
from verifiers.runtime import JudgeFailed, JudgeReply, JudgeSampling, ModelJudge
from verifiers.webhook import RETRY_BACKOFF_S, WebhookPolicy, is_loopback, webhook_client

BASE_MODEL = "base"  # the name the in-process judge knows the base model by, as requests do
MAX_REPLY_BYTES = 1024 * 1024  # a judge's chat completion is read up to this size
RETRY_STATUSES = frozenset({429})  # and every 5xx: worth another try (rate limited, overloaded)

T = TypeVar("T")


def judge_url_problem(base_url: str, policy: WebhookPolicy) -> str | None:
    """Why this server may not call a judge at `base_url` under the webhook `policy` (its host is
    neither allowed nor, where the policy allows loopback, a loopback address), or None."""
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL as error:
        return f"not a URL ({error})"
    if url.scheme not in ("http", "https") or not url.host:
        return "not an absolute http(s) URL"
    host = url.host.lower()
    if host in {allowed.lower() for allowed in policy.allowed_hosts} or (policy.allow_loopback and is_loopback(host)):
        return None
    if is_loopback(host):
        return f"its host {host!r} is a loopback host, and R3_WEBHOOK_ALLOW_LOOPBACK is off"
    return f"its host {host!r} is not in R3_WEBHOOK_ALLOWED_HOSTS"


def model_judge(settings: Settings, engine: Engine | None = None) -> ModelJudge:
    """The process's model judge from its settings: `HttpJudge` with `R3_JUDGE_BASE_URL`, else
    `EngineJudge` on `engine` (the server's), else (a trainer) the process's `EmbeddedJudge`."""
    if settings.judge_base_url is not None:
        return HttpJudge(settings.judge_base_url,
                         settings.judge_api_key.get_secret_value() if settings.judge_api_key else None,
                         settings.judge_timeout_s, settings.judge_max_attempts, settings.judge_max_concurrency)
    if engine is not None:
        return EngineJudge(engine, settings.lora_modules, settings.judge_timeout_s,
                           settings.judge_max_concurrency, settings.default_max_tokens)
    return EmbeddedJudge.of(settings)


class _PerLoop(Generic[T]):
    """One `T` per event loop: asyncio's primitives belong to the loop they first wait on, and the
    trainer judges each step in a loop of its own (`asyncio.run`)."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._made: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        if loop not in self._made:
            self._made[loop] = self._make()
        return self._made[loop]


# --------------------------------------------------------------------------------------------- HTTP


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")  # a chat completion carries much more than what is read


class _Message(_Lenient):
    content: str | None = None
    refusal: str | None = None


class _Choice(_Lenient):
    message: _Message
    finish_reason: str | None = None


class _Usage(_Lenient):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Completion(_Lenient):
    choices: list[_Choice] = Field(min_length=1)
    usage: _Usage | None = None


class _Retryable(Exception):
    """A refused or dropped connection, a 5xx or a 429: worth another try."""


class HttpJudge:
    """A judge behind an OpenAI-compatible chat completions API at `base_url` (e.g.
    `https://api.openai.com/v1`), called with `api_key` as a bearer token when given. Each try is
    bounded by `timeout_s` in all; `max_attempts` tries at most; `max_concurrency` calls at once."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 30.0, max_attempts: int = 3,
                 max_concurrency: int = 8, client: Callable[[], httpx.AsyncClient] = webhook_client,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.timeout_s, self.max_attempts = timeout_s, max_attempts
        self._client, self._sleep = client, sleep
        self._limit = _PerLoop(lambda: asyncio.Semaphore(max_concurrency))

    def model_problem(self, model: str) -> str | None:
        return None  # the judge's server knows its models: an unknown one is its 4xx, an unjudged attempt

    @judge_call(SpanKind.CLIENT)
    async def complete(self, model: str, messages: list[dict[str, Any]], json_schema: dict[str, Any],
                       sampling: JudgeSampling) -> JudgeReply:
        body = {"model": model, "messages": messages,
                "response_format": {"type": "json_schema", "json_schema": json_schema},
                **{name: value for name, value in vars(sampling).items() if value is not None}}
        content = json.dumps(body).encode()
        headers = dict(self._headers)
        propagate.inject(headers)  # the trace goes on in a judge that traces (W3C traceparent)
        calls = 0
        retrying = AsyncRetrying(sleep=self._sleep, stop=stop_after_attempt(self.max_attempts),
                                 wait=wait_exponential(multiplier=RETRY_BACKOFF_S),
                                 retry=retry_if_exception_type(_Retryable), reraise=True)
        async with self._limit.get(), self._client() as client:
            try:
                async for attempt in retrying:
                    with attempt:
                        calls += 1
                        return await self._post(client, content, headers, calls)
            except _Retryable as problem:
                raise JudgeFailed(f"judge error: {problem} after {calls} attempts", JudgeUsage(calls)) from None
        raise AssertionError("unreachable: tenacity returns or raises")

    async def _post(self, client: httpx.AsyncClient, content: bytes, headers: dict[str, str], calls: int) -> JudgeReply:
        """One try: the judge's reply. Raises `_Retryable` for what another try may fix, else `JudgeFailed`."""
        try:
            async with asyncio.timeout(self.timeout_s):
                status, reply = await _read(client, self.url, content, headers)
        except TimeoutError:
            raise JudgeFailed(f"judge error: no reply within {self.timeout_s:g} s", JudgeUsage(calls)) from None
        except (httpx.ConnectError, httpx.RemoteProtocolError) as error:
            raise _Retryable(f"connection failed ({type(error).__name__})") from error
        except httpx.HTTPError as error:
            raise JudgeFailed(f"judge error: {type(error).__name__}: {error}", JudgeUsage(calls)) from error
        if status >= 500 or status in RETRY_STATUSES:
            raise _Retryable(f"HTTP {status}")
        if reply is None:
            raise JudgeFailed(f"judge error: reply larger than {MAX_REPLY_BYTES} bytes", JudgeUsage(calls))
        if not 200 <= status < 300:
            raise JudgeFailed(f"judge error: HTTP {status}{_error_message(reply)}", JudgeUsage(calls))
        try:
            completion = _Completion.model_validate_json(reply)
        except ValidationError:
            raise JudgeFailed("judge error: the reply is not a chat completion", JudgeUsage(calls)) from None
        usage = completion.usage or _Usage()
        spent = JudgeUsage(calls, usage.prompt_tokens, usage.completion_tokens)
        choice = completion.choices[0]
        if choice.message.refusal:
            raise JudgeFailed(f"the judge refused: {choice.message.refusal}", spent)
        if choice.finish_reason == "length":
            raise JudgeFailed("the judge's answer was cut off by its token limit "
                              "(sampling_params.max_completions_tokens)", spent)
        return JudgeReply(choice.message.content or "", spent)


async def _read(client: httpx.AsyncClient, url: str, content: bytes,
                headers: dict[str, str]) -> tuple[int, bytes | None]:
    """POST and read the reply; the reply is None when it is larger than MAX_REPLY_BYTES."""
    async with client.stream("POST", url, content=content, headers=headers) as response:
        reply = b""
        async for chunk in response.aiter_bytes():
            reply += chunk
            if len(reply) > MAX_REPLY_BYTES:
                return response.status_code, None
        return response.status_code, reply


def _error_message(reply: bytes) -> str:
    """An OpenAI error object's message (`{"error": {"message"}}`), as ": message", or nothing."""
    try:
        message = json.loads(reply)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""
    return f": {message}" if isinstance(message, str) else ""


# --------------------------------------------------------------------------------------------- in process


class EngineJudge:
    """A judge on an engine of this process: the grader's `model` is `base` (no adapter) or one of
    `adapters` (loaded on the engine under that name). The answer is held to the schema by the
    engine's constrained decoding (both of R3's engines; on one without it the answer is only read
    against the schema), the conversation rendered by the model's chat template. Each call
    is bounded by `timeout_s` and `max_tokens` (unless the grader's `max_completions_tokens` says
    otherwise); `max_concurrency` calls at once."""

    def __init__(self, engine: Engine, adapters: Iterable[str] = (), timeout_s: float = 30.0,
                 max_concurrency: int = 8, max_tokens: int = 512) -> None:
        self.engine, self.adapters = engine, frozenset(adapters)
        self.timeout_s, self.max_tokens = timeout_s, max_tokens
        self._limit = _PerLoop(lambda: asyncio.Semaphore(max_concurrency))

    def model_problem(self, model: str) -> str | None:
        return _in_process_model_problem(model, self.adapters)

    @judge_call(SpanKind.INTERNAL)
    async def complete(self, model: str, messages: list[dict[str, Any]], json_schema: dict[str, Any],
                       sampling: JudgeSampling) -> JudgeReply:
        problem = self.model_problem(model)
        if problem is not None:  # admitted elsewhere (a recorded episode, another server's settings)
            raise JudgeFailed(problem)
        params = SamplingParams(
            max_tokens=sampling.max_completion_tokens or self.max_tokens,
            json_schema=json_schema["schema"] if self.engine.supports_json_schema else None,
            temperature=1.0 if sampling.temperature is None else sampling.temperature,  # OpenAI's defaults
            top_p=1.0 if sampling.top_p is None else sampling.top_p, seed=sampling.seed)
        prompt = render_prompt(self.engine.tokenizer, messages)
        try:
            async with self._limit.get(), asyncio.timeout(self.timeout_s):
                result = await self.engine.generate(prompt.engine_input, params, None if model == BASE_MODEL else model)
        except TimeoutError:
            raise JudgeFailed(f"judge error: no answer within {self.timeout_s:g} s", JudgeUsage(1)) from None
        except EngineError as error:
            raise JudgeFailed(f"judge error: {error}", JudgeUsage(1)) from error
        spent = JudgeUsage(1, result.prompt_tokens, result.completion_tokens)
        if result.finish_reason == "length":
            raise JudgeFailed(f"the judge's answer was cut off at {result.completion_tokens} tokens "
                              "(sampling_params.max_completions_tokens)", spent)
        return JudgeReply(result.text, spent)


def _in_process_model_problem(model: str, adapters: frozenset[str]) -> str | None:
    if model == BASE_MODEL or model in adapters:
        return None
    named = ", ".join(f"`{name}`" for name in sorted(adapters))
    return (f"model {model!r} cannot judge here: without R3_JUDGE_BASE_URL the judge is this server's own model, "
            f"named `base`{f' or an R3_LORA_MODULES adapter ({named})' if named else ''}; the adapter being "
            "trained (`r3`, the served id) never judges. Set R3_JUDGE_BASE_URL to judge with another model")


class EmbeddedJudge:
    """The in-process judge of a process that serves nothing (the trainer): an `EngineJudge` on an
    engine of its own, on `R3_DEVICE`, with `R3_MODEL` and `R3_LORA_MODULES`, built at the first call
    and kept for the process's life; one per process and settings (`of`). It is always the transformers
    engine: vLLM would claim `R3_GPU_MEMORY_UTILIZATION` of the GPU the trainer trains on. An engine
    that cannot start makes each call fail (`JudgeFailed`) until one can."""

    _made: dict[str, EmbeddedJudge] = {}
    _making = threading.Lock()

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.model_copy(update={"engine": "transformers", "served_model_name": "judge"})
        self.adapters = frozenset(settings.lora_modules)
        self._judge: EngineJudge | None = None
        self._building = threading.Lock()  # one engine, whichever thread's loop asks first

    @classmethod
    def of(cls, settings: Settings) -> EmbeddedJudge:
        """The process's embedded judge for `settings` (what builds its engine: model, device, dtype,
        adapters, limits), made once."""
        key = settings.model_dump_json(include={"model", "models_dir", "device", "dtype", "max_model_len",
                                                "max_batch_size", "max_num_batched_tokens", "lora_modules",
                                                "judge_timeout_s", "judge_max_concurrency", "default_max_tokens"})
        with cls._making:
            return cls._made.setdefault(key, cls(settings))

    def model_problem(self, model: str) -> str | None:
        return _in_process_model_problem(model, self.adapters)

    async def complete(self, model: str, messages: list[dict[str, Any]], json_schema: dict[str, Any],
                       sampling: JudgeSampling) -> JudgeReply:
        judge = self._judge or await asyncio.to_thread(self._build)
        return await judge.complete(model, messages, json_schema, sampling)

    def _build(self) -> EngineJudge:
        """The judge on its engine, started here (in a worker thread: loading takes seconds) unless it is."""
        with self._building:
            if self._judge is None:
                settings = self.settings
                try:  # the engine belongs to no event loop: one of this thread's starts it
                    engine = asyncio.run(create_engine(settings))
                except Exception as error:  # noqa: BLE001 - any failure to start is the judge being down
                    raise JudgeFailed(f"judge error: its engine did not start: {error}") from error
                self._judge = EngineJudge(engine, self.adapters, settings.judge_timeout_s,
                                          settings.judge_max_concurrency, settings.default_max_tokens)
            return self._judge
