"""Wire schemas of R3's own API: `/admin/*`, `/health`, and the response docs of the OpenAI routes.

Apart from `server.protocol` (OpenAI's wire format) and from the routes' logic, as vLLM keeps its
entrypoints' protocol apart. The admin routes declare these as `response_model`, which checks and
writes them (`server.admin_service` returns them, to the routes and the dashboard alike). A time is written as Python's `isoformat()` (`+00:00`, as FastAPI's encoder
writes it), not pydantic's `Z`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from r3.store.models import DEFAULT_SCENARIO, VersionStatus
from r3.store.rounds import RoundStatus
from server.chat.protocol import ChatCompletion
from server.completions.protocol import Completion
from server.protocol import FeedbackReceipt, omitted
from verifiers.base import ClientInput

Timestamp = Annotated[datetime, PlainSerializer(datetime.isoformat, return_type=str, when_used="json"),
                      WithJsonSchema({"type": "string", "format": "date-time"})]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]  # unavailable: not ready for requests (a 503), `reason` says why
    model: str  # the served base model's id
    reason: str | None = None


# ---------------------------------------------------------------- adapter versions


class LiveStats(BaseModel):
    """A version's live numbers (`r3.store.live_stats.VersionStats`): pass rates and, beside each, the
    mean score in [0, 1] (a pass/fail check scores 1 or 0; client feedback overrides the verifier). A
    version no request was served with has only `requests` (0) and the rates and means (null); the
    counts are there once it has served one."""

    version: str | None = omitted()  # "base" or the adapter's name
    requests: int
    judged: int | None = omitted()  # episodes with a verdict on their first attempt
    first_successes: int | None = omitted()
    reflected: int | None = omitted()  # episodes that went to a second attempt
    rescued: int | None = omitted()  # of those, the ones whose final attempt passed
    successes: int | None = omitted()  # episodes whose final verdict is a pass
    # Episodes with a verifier but no verdict on their first attempt: its judge could give none (a
    # model judge down, timed out or unreadable), or the client hung up before it was judged. Neither
    # passes nor failures: in none of the rates or means.
    unjudged: int | None = omitted()
    first_scored: int | None = omitted()  # episodes whose first attempt has a score
    first_score_total: float | None = omitted()  # those scores added up
    retries_scored: int | None = omitted()  # episodes that went to a second attempt whose final attempt has a score
    retry_score_total: float | None = omitted()
    scored: int | None = omitted()  # episodes whose final attempt has a score
    score_total: float | None = omitted()
    first_attempt_success: float | None  # first_successes / judged
    second_attempt_success: float | None  # rescued / reflected
    success: float | None  # successes / judged
    first_attempt_score: float | None  # the mean first-attempt score: first_score_total / first_scored
    second_attempt_score: float | None  # the mean final score of retried episodes: retry_score_total / retries_scored
    score: float | None  # the mean final score: score_total / scored


class AdapterVersionOut(BaseModel):
    name: str
    status: VersionStatus
    parent: str | None  # null: trained from the base model
    created_at: Timestamp
    promoted_at: Timestamp | None
    sha256: str
    gate: dict[str, Any] | None  # the promotion gate's numbers
    training: dict[str, Any] | None  # the training round's summary
    episodes_used: int
    live: LiveStats


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    scenario: str = DEFAULT_SCENARIO  # whose lineage this is
    active: str | None  # the version this server serves in it; null: the base model
    data: list[AdapterVersionOut]
    base: LiveStats


class Activation(BaseModel):
    scenario: str = DEFAULT_SCENARIO  # the lineage whose active version changed
    active: str  # the version now active in the registry ("base": none)
    serving: str  # what this server serves
    refused: str | None  # why this server cannot serve the active version; null when it can


# ---------------------------------------------------------------- training rounds


class TrainerStatus(BaseModel):
    """Whether a trainer is there to take up requested rounds, as this server knows it."""

    running: bool | None = Field(description="true: an `r3 train` runs beside this server (`r3 serve` started "
                                 "it); false: it is not running now (it died, and is started again); null: none "
                                 "runs beside this server (R3_TRAINER=off), so this server cannot tell")
    detail: str = Field(description="the same in a sentence, with what to do")
    pid: int | None = None
    restarts: int = Field(0, description="times it was started again after it died")
    log: str | None = Field(None, description="the file its output goes to")


class TrainingRequested(BaseModel):
    round: int
    scenario: str = DEFAULT_SCENARIO
    status: RoundStatus
    new: bool  # false: a round was already requested or running, and this is that one
    trainer: TrainerStatus  # whether anything will take the round up


class TrainingRoundOut(BaseModel):
    round: int
    scenario: str = DEFAULT_SCENARIO  # whose episodes it trains on, whose lineage it extends
    status: RoundStatus
    requested_by: str  # "schedule" or "admin"
    requested_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    candidate: str | None
    promoted: bool | None
    report: dict[str, Any] | None
    error: str | None
    owner: str | None = None  # the trainer that ran it (host, pid, id)
    heartbeat_at: Timestamp | None = None  # when that trainer last said the round was alive


class SetAsideEpisodeOut(BaseModel):
    """An episode a training round could not run again as a task (its stored verifier is not valid)."""

    episode_id: str
    tenant: str | None
    round: int | None  # the round that set it aside
    reason: str
    at: Timestamp


class SetAsideList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SetAsideEpisodeOut]  # the latest first


class TrainingState(BaseModel):
    current: TrainingRoundOut | None  # the round requested or running, if any
    last: TrainingRoundOut | None  # the last one finished or failed, if any
    rounds: list[TrainingRoundOut]  # the latest first
    trainer: TrainerStatus


# ---------------------------------------------------------------- live numbers and the audit log


class EpisodeLogState(BaseModel):
    backlog: int  # episodes recorded but not yet in the database
    rejected: int  # episodes the database refused since the start (in the journal's rejected.jsonl)


class StatsReport(BaseModel):
    window_s: float
    active: str
    versions: dict[str, LiveStats]
    refused_versions: dict[str, str]  # version -> why this server cannot serve it
    episode_log: EpisodeLogState


class AdminActionOut(BaseModel):
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    at: Timestamp
    actor: str
    scenario: str | None = None  # the lineage it changed (null: none)
    action: str
    from_version: str | None = Field(alias="from")
    to: str | None
    reason: str | None


class AdminActionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdminActionOut]  # the latest first


# ---------------------------------------------------------------- the OpenAI routes' answers

_EVENT_STREAM = {"text/event-stream": {"schema": {"type": "string", "description": "server-sent events, each "
                                                  "`data: <chunk>`, then `data: [DONE]`"}}}

# `responses=` of the routes whose answer is a stream or one of two objects (their `response_model` is
# None, so that their answer is written as built).
CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ChatCompletion, "description": "The completion; with `stream: true`, its chunks as "
                                                  "server-sent events", "content": _EVENT_STREAM}}
COMPLETION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Completion, "description": "The completion; with `stream: true`, its chunks as server-sent "
                                              "events", "content": _EVENT_STREAM}}
FEEDBACK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": FeedbackReceipt | ChatCompletion,
          "description": "The receipt; with `retry: true`, the retry's completion"}}


# ---------------------------------------------------------------- scenarios


class ScenarioOut(BaseModel):
    """A workload with its own adapter lineage (`r3.store.scenarios`)."""

    name: str
    description: str
    training: dict[str, Any]  # overrides of R3_TRAIN_* and R3_GATE_* by field name
    created_at: Timestamp
    active: str | None  # the version this server serves in it; null: the base model
    model: str  # what a client names as `model` to be served by it ("r3" for the default scenario)


class ScenarioList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ScenarioOut]


class ScenarioCreate(ClientInput):
    name: str = Field(description="Lowercase letters, digits, '_' and inner '-', starting with a letter; at most "
                                  "40; not r3 or base, not ending in -v<number>.")
    description: str = Field("", max_length=4000)
    training: dict[str, Any] = Field(default_factory=dict,
                                     description='Training overrides by setting field name, e.g. '
                                                 '{"train_num_generations": 8, "gate_alpha": 0.01}.')


class ScenarioConfigure(ClientInput):
    description: str | None = Field(None, max_length=4000)
    training: dict[str, Any] = Field(description="Replaces the scenario's training overrides.")


# ---------------------------------------------------------------- live canaries


class CanaryComparison(BaseModel):
    """One outcome, canary against current (`r3.canary.Comparison`)."""

    measure: Literal["first_attempt_score", "rescue_rate"]
    canary_n: int
    canary_mean: float
    current_n: int
    current_mean: float
    difference: float
    low: float  # the difference's always-valid confidence interval now
    high: float
    worse_statistic: float  # log Λ(0): at or above `boundary` (and a negative difference), the canary is worse
    not_worse_statistic: float  # log Λ(−margin): at or above `boundary`, it is not worse than the margin
    boundary: float  # log(2 / alpha)
    worse: bool
    not_worse: bool


class CanaryOut(BaseModel):
    scenario: str
    version: str  # the canary
    baseline: str  # the version it is compared with ("base": the base model)
    fraction: float  # its share of the scenario's unpinned requests
    state: str  # running, promoted, aborted, gave_up, superseded
    started_at: Timestamp
    decided_at: Timestamp | None
    decided_by: str | None
    decision: str | None  # the test's decision now (running) or when it ended
    reason: str | None
    comparisons: list[CanaryComparison]
