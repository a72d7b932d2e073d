"""OpenAI wire schemas shared by every API surface: what crosses the HTTP boundary, and nothing else.

Each surface keeps its own models beside its serving (`server/chat/protocol.py`,
`server/completions/protocol.py`); here are what they share (the base of every request model,
`stop`, `logit_bias`, usage, a streamed chunk, errors) and the other endpoints' models.

Every field of OpenAI's chat completion request is accepted, and every message and content part
(the fields are those of the `openai` SDK's `CompletionCreateParams` and the types it names);
those R3 cannot honour (`metadata`, `service_tier`, `reasoning_effort`, ...) are accepted and have
no effect, and a part R3's models cannot read (an image, audio, a file) is refused by the route,
saying so. An explicit `null` is the field's default, as OpenAI types them "... or null" and client
wrappers send nulls. A field outside OpenAI's request and R3's extensions, anywhere in the body, is
ignored, as vLLM ignores it, but never silently: the server names it in the `X-R3-Ignored-Fields`
header and a logged warning (`take_unknown_fields`), and with `R3_STRICT_REQUEST_FIELDS` refuses it
(400 naming it). A verifier spec stays strict (`verifiers.base.ClientInput`): a misspelt field
there would change how an answer is judged. Nothing is coerced (`RequestPart`, the base of every
request model): a boolean must be a JSON boolean (`"yes"` or `1` is no `true`), a number a JSON
number (`"0"` or `true` is none; an integer is a number, `5.0` is not an integer). No number may be
NaN or infinite, anywhere in the body (JSON has none; the server refuses them before this: see
`server.errors.refuse_unsound_body`). A free-form
JSON value (a tool's `parameters`, a `response_format` schema, a `verifier`) may nest at most
`verifiers.MAX_JSON_DEPTH` arrays and objects, and a schema must be a valid JSON Schema.
Responses follow OpenAI's: a stream chunk always carries `finish_reason` and `logprobs` (null until
they have a value), and with `include_usage` every chunk carries `usage` (null but in the last).
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from verifiers import depth_problem, schema_shape_problem
from verifiers.base import ClientInput

DEFAULT_FEEDBACK_THRESHOLD = 0.5  # a feedback score passes here when the episode's verifier names no pass_threshold
SHOWN_CHARS = 100  # a client's value quoted back in an error message is cut to about this long


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """A client's value as an error message quotes it (`repr`), cut to `limit` characters: a
    10,000-character model name is not echoed whole."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _a_valid_schema(schema: dict[str, Any]) -> dict[str, Any]:
    # Only the quick checks: checking it against its metaschema takes ~6 µs a byte, too long for the
    # event loop, so the route does that in a worker thread (server.chat.serving).
    problem = schema_shape_problem(schema)
    if problem is not None:
        raise ValueError(problem)
    return schema


def _not_too_deep(value: dict[str, Any]) -> dict[str, Any]:
    problem = depth_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# A JSON Schema a request carries: shallow enough to check and to apply (its validity is checked by the route).
JsonSchema = Annotated[dict[str, Any], AfterValidator(_a_valid_schema)]
# Any other free-form JSON object a request carries: shallow enough to walk.
JsonObject = Annotated[dict[str, Any], AfterValidator(_not_too_deep)]


# ---------------------------------------------------------------- request


class RequestPart(ClientInput):
    """The base of every model a request body is read into: nothing is coerced (`ClientInput`), and
    a field the model does not define is kept aside (`model_extra`) rather than refused, so that the
    server can name it and drop it (`take_unknown_fields`), or refuse it when it is strict about
    fields (`R3_STRICT_REQUEST_FIELDS`)."""

    model_config = ConfigDict(extra="allow")


def take_unknown_fields(model: BaseModel, path: str = "") -> list[str]:
    """Removes every field that `model`'s models do not define, at any depth, and returns their
    paths as an error's `param` names them (`["temprature", "messages.0.foo"]`)."""
    unknown = [_child(path, key) for key in model.model_extra or ()]
    if model.model_extra:
        model.model_extra.clear()
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        where = _child(path, field.alias or name)
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            if isinstance(item, BaseModel):
                unknown += take_unknown_fields(item, where if index is None else f"{where}.{index}")
    return unknown


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class StreamOptions(RequestPart):
    include_usage: StrictBool = False
    include_obfuscation: StrictBool | None = None  # OpenAI's padding of chunks against side channels; no effect


MAX_CHOICES = 8  # `n`: each choice is a generation (and an episode) of its own
MAX_LEGACY_CHOICES = 256  # prompts × n of one legacy completion request (an evaluation tool's batch)


def default_for_null(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """An explicit null is the field's default: OpenAI types these "... or null", and clients send nulls."""
    if value is None:
        return cls.model_fields[info.field_name].get_default(call_default_factory=True)
    return value


_TOKEN_ID = re.compile(r"[0-9]{1,18}")  # ASCII digits only: `str.isdigit` also takes "²" and "١", which `int` does not


def _token_id(key: Any) -> int:
    if not isinstance(key, str) or not _TOKEN_ID.fullmatch(key):
        raise ValueError(f"{shown(key)} is not a token id: write a token id in ASCII digits (at most 18)")
    return int(key)


def _bias(value: float) -> float:
    if not -100 <= value <= 100:
        raise ValueError(f"a bias of {value}: biases are from -100 to 100")
    return value


# `logit_bias` as both completion requests take it: token id (a JSON key, so a string) -> bias added
# to its logit, -100 to 100; read as {int: float}. Whether each id is in the model's vocabulary is
# the route's check (`server.openai.serving.logit_bias_pairs`), which knows the model.
LogitBias = Annotated[
    dict[Annotated[int, PlainValidator(_token_id), WithJsonSchema({"type": "string", "pattern": "^[0-9]{1,18}$"})],
         Annotated[float, AfterValidator(_bias)]],
    Field(description="Token id (a string of ASCII digits) -> bias added to its logit, -100 to 100."),
]


class WithStops(RequestPart):
    """`stop` as both completion requests take it: a string or at most 4, none empty (OpenAI's limit)."""

    stop: str | list[str] | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences")
        if stop == "" or (isinstance(stop, list) and "" in stop):
            raise ValueError("stop sequences must not be empty")
        return stop

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


# ---------------------------------------------------------------- response


def now() -> int:
    return int(time.time())


def _absent_when_none(value: Any) -> bool:
    return value is None


def omitted() -> Any:
    """A field OpenAI leaves out while it has no value (a delta's unchanged parts, R3's extensions)."""
    return Field(None, exclude_if=_absent_when_none)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Streamed(BaseModel):
    usage: Usage | None = None  # sent only with include_usage: null but in the last chunk

    def sse(self, include_usage: bool) -> str:
        """The chunk as a server-sent event; `usage` is in every chunk with `include_usage`, else in none."""
        return f"data: {self.model_dump_json(exclude=None if include_usage else {'usage'})}\n\n"


class FeedbackRequest(RequestPart):
    episode_id: str | None = None
    completion_id: str | None = None
    success: StrictBool | None = Field(None, description="Whether the answer passed. Without it, `score` decides: "
                                                          "passed when it reaches the verifier's pass_threshold "
                                                          f"({DEFAULT_FEEDBACK_THRESHOLD} where it has none).")
    score: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False,
                                description="How good the answer was, in [0, 1]; what training rewards. Without "
                                            "it, success scores 1.0 and failure 0.0.")
    detail: str | None = Field(None, max_length=4000)
    retry: StrictBool = Field(False, description="With a failing verdict, reflect and retry now and return the new "
                                                 "completion.")

    @field_validator("success", "score", mode="before")
    @classmethod
    def _a_verdict_is_not_null(cls, value: Any) -> Any:
        # An explicit null is most often a client's lost value (a parse that failed), not a verdict:
        # refused, where leaving the field out lets the other one decide.
        if value is None:
            raise ValueError("must not be null; leave it out to let the other of success and score decide")
        return value

    @model_validator(mode="after")
    def _one_id(self) -> FeedbackRequest:
        if (self.episode_id is None) == (self.completion_id is None):
            raise ValueError("give exactly one of episode_id and completion_id")
        if self.success is None and self.score is None:
            raise ValueError("give success, score, or both")
        if self.retry and self.success:
            raise ValueError("retry needs success: false")
        return self

    def verdict(self, pass_threshold: float | None) -> tuple[bool, float]:
        """(success, score) as given, the one missing read from the other: a score passes at
        `pass_threshold` (the episode's verifier's, or `DEFAULT_FEEDBACK_THRESHOLD`)."""
        threshold = DEFAULT_FEEDBACK_THRESHOLD if pass_threshold is None else pass_threshold
        success = self.score >= threshold if self.success is None else self.success
        return success, float(success) if self.score is None else self.score


class FeedbackReceipt(BaseModel):
    episode_id: str
    attempt: int
    success: bool
    score: float
    detail: str | None


class FeedbackOut(BaseModel):
    success: bool
    score: float  # as given, or 1.0 / 0.0 from success
    detail: str | None
    received_at: float


class JudgeUsageOut(BaseModel):
    """Model-judge calls made to judge an attempt and their tokens (`score_model`, `label_model`)."""

    calls: int
    prompt_tokens: int
    completion_tokens: int


class AttemptOut(BaseModel):
    attempt: int
    completion_id: str
    content: str | None
    tool_calls: list[dict[str, Any]] | None
    reflection: str | None  # the reflection written before this attempt
    success: bool | None  # None: not judged (no verifier, the client hung up, or the judge failed: see detail)
    score: float | None  # the verdict's score in [0, 1]
    detail: str | None
    feedback: FeedbackOut | None
    judge_usage: JudgeUsageOut | None  # null when no model judged it
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    reflection_tokens: int
    latency_s: float


class EpisodeOut(BaseModel):
    id: str
    object: Literal["episode"] = "episode"
    created_at: float
    model: str
    scenario: str  # the workload whose lineage it served and trains
    category: str | None  # the request's `metadata.category`
    adapter: str  # "base" or the adapter's name
    task_kind: str
    verifier: dict[str, Any] | None
    store: bool
    messages: list[dict[str, Any]] | None
    tools: list[dict[str, Any]] | None
    outcome: bool | None
    score: float | None  # the latest attempt's score (the client's feedback's where given)
    attempts: list[AttemptOut]


class EpisodePage(BaseModel):
    object: Literal["list"] = "list"
    data: list[EpisodeOut]
    next_cursor: str | None  # pass as `after` for the next page; null on the last one


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "r3"
    root: str
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
