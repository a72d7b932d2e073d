"""`score_model` and `label_model`: a chat model judges the answer (OpenAI's model graders, accepted as written).

Source: OpenAI's graders guide, https://platform.openai.com/docs/guides/graders ("Model graders",
"Score model grader outputs"), and the `openai` package's `ScoreModelGrader` and `LabelModelGrader`
(`openai.types.graders`). Which model judges, and where, is the operator's (`VerifierRuntime.judge`:
an OpenAI-compatible server at `R3_JUDGE_BASE_URL`, else this server's own model; `r3.judge`).

The grader's `input` messages are templates (`verifiers.graders.common`), rendered for the answer and
the spec's `item`, and sent to the judge as its conversation, with the answer's shape held by
structured outputs (`response_format` `json_schema`, strict). The shape is the one OpenAI's guide
documents for `score_model`: `{"steps": [{"description", "conclusion"}...], "result": number}`,
the steps first so the judge reasons before it scores (a grader's prompt may name both fields, as the
guide suggests). `label_model` has the same shape, its `result` one of the grader's `labels`.

- `score_model`: the score is `result` in the grader's `range` (default [0, 1]), truncated to the
  range as OpenAI truncates it (the guide: "The output of the grader will be truncated to the given
  range"), then scaled to R3's [0, 1]. It passes from `pass_threshold`, in the range's units
  (default: the middle of the range).
- `label_model`: the answer passes, and scores 1, when the judge's label is one of `passing_labels`;
  else it fails, scoring 0.

The steps' conclusions become the verdict's detail, which a failed answer's reflection is shown. A
judge that gives no readable answer (down, timed out after its retries, refusing, cut off by its
token limit, or answering outside the shape) leaves the attempt *unjudged* (`Verdict.unjudged`),
where OpenAI's graders score 0: R3 neither retries nor trains on the judge's own failure. Every
verdict carries the calls and tokens the judging took (`JudgeUsage`). A template that reads what the
answer lacks fails the answer without asking the judge (`common.TemplateFailure`). R3's judges read
text: image and audio content is refused when the spec is read.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from verifiers.base import Attempt, ClientInput, JudgeUsage, TaskContext, Verdict
from verifiers.graders.common import DEFAULT_PASS_THRESHOLD, GraderSpec, Sample, TemplateFailure, check_template, render
from verifiers.json_text import JsonTextError, read_json
from verifiers.registry import VerifierNotAllowed, VerifierType, register
from verifiers.runtime import JudgeFailed, JudgeSampling

if TYPE_CHECKING:
    from verifiers.runtime import VerifierRuntime

MAX_MESSAGES = 32
MAX_LABELS = 64

_STEP_SCHEMA = {"type": "object", "properties": {"description": {"type": "string"}, "conclusion": {"type": "string"}},
                "required": ["description", "conclusion"], "additionalProperties": False}


def output_schema(result: dict[str, Any]) -> dict[str, Any]:
    """The judge's answer as OpenAI's `response_format.json_schema` (strict): reasoning steps, then
    `result` under the `result` schema given."""
    return {"name": "grader_output", "strict": True, "schema": {
        "type": "object", "properties": {"steps": {"type": "array", "items": _STEP_SCHEMA}, "result": result},
        "required": ["steps", "result"], "additionalProperties": False}}


class TextContent(ClientInput):
    """A text part of a grader message's content (`input_text`, or `output_text` for what a model said)."""

    type: Literal["input_text", "output_text"]
    text: str


Content = str | TextContent


class GraderMessage(ClientInput):
    """One of a model grader's `input` messages: a role and content whose text is templates."""

    role: Literal["system", "developer", "user", "assistant"]
    content: Content | list[Content]
    type: Literal["message"] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, content: Any) -> Any:
        for part in content if isinstance(content, list) else [content]:
            if isinstance(part, dict) and part.get("type") in ("input_image", "input_audio"):
                raise ValueError(f"{part['type']} content is not supported: R3's model judges read text")
        return content

    def texts(self) -> list[str]:
        parts = self.content if isinstance(self.content, list) else [self.content]
        return [part if isinstance(part, str) else part.text for part in parts]

    def rendered(self, sample: Sample, item: dict[str, Any]) -> dict[str, str]:
        """The message as the judge reads it: its text parts rendered and joined by newlines. Raises
        `TemplateFailure` (see `common.render`)."""
        return {"role": self.role, "content": "\n".join(render(text, sample, item) for text in self.texts())}


class SamplingParamsSpec(ClientInput):
    """How the judge samples (OpenAI's grader `sampling_params`); unset: the judge's own defaults
    (the in-process judge: temperature 1, top_p 1, at most R3_DEFAULT_MAX_TOKENS tokens)."""

    max_completions_tokens: int | None = Field(None, ge=1)
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    seed: int | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)

    def judge_sampling(self) -> JudgeSampling:
        return JudgeSampling(self.temperature, self.top_p, self.seed, self.max_completions_tokens,
                             self.reasoning_effort)


class ModelGraderSpec(GraderSpec):
    """What both model graders have: the judge's conversation (`input`, templates) and its `model`."""

    input: list[GraderMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    model: str = Field(min_length=1, max_length=256)

    @field_validator("input")
    @classmethod
    def _templates(cls, messages: list[GraderMessage], info: ValidationInfo) -> list[GraderMessage]:
        for index, message in enumerate(messages):
            for text in message.texts():
                try:
                    check_template(text, info.data.get("item"))
                except ValueError as error:
                    raise ValueError(f"input[{index}]: {error}") from None
        return messages

    def sampling(self) -> JudgeSampling:
        return JudgeSampling()

    async def ask(self, attempt: Attempt, runtime: VerifierRuntime,
                  result: dict[str, Any]) -> tuple[_Answer, JudgeUsage] | Verdict:
        """The judge's answer on `attempt`, its `result` under the `result` schema, and what it cost;
        or the verdict without one: a failure when a template reads what the answer lacks, else
        unjudged."""
        try:
            messages = [message.rendered(Sample.of(attempt), self.item) for message in self.input]
        except TemplateFailure as error:
            return Verdict(False, str(error))
        assert runtime.judge is not None  # `verify` admits the spec first (`_admit`)
        try:
            reply = await runtime.judge.complete(self.model, messages, output_schema(result), self.sampling())
        except JudgeFailed as failure:
            return Verdict.unjudged(str(failure), failure.usage)
        try:
            return _Answer.model_validate(read_json(reply.text)), reply.usage
        except (JsonTextError, ValidationError):
            return Verdict.unjudged('judge error: its answer is not JSON of the form {"steps": [{"description", '
                                    f'"conclusion"}}...], "result": ...}}: {_clipped(reply.text)}', reply.usage)


class _Step(BaseModel):
    model_config = ConfigDict(extra="ignore")

    description: str
    conclusion: str


class _Answer(BaseModel):
    """The judge's answer, read leniently: a judge that does not enforce `strict` may add fields."""

    model_config = ConfigDict(extra="ignore")

    steps: list[_Step]
    result: Any  # checked by each grader against its own schema

    @property
    def rationale(self) -> str:
        return " ".join(step.conclusion.strip() for step in self.steps if step.conclusion.strip())


def _number(value: Any) -> float | None:
    """A JSON number as a finite float; None for anything else (a boolean is not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    return number if math.isfinite(number) else None


def _clipped(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _admit(spec: ModelGraderSpec, runtime: VerifierRuntime) -> None:
    if runtime.judge is None:
        raise VerifierNotAllowed(f"{spec.type} needs a model judge, and this process has none",
                                 param="verifier.model", code="judge_unavailable")
    problem = runtime.judge.model_problem(spec.model)
    if problem is not None:
        raise VerifierNotAllowed(problem, param="verifier.model", code="model_not_found")


Number = Annotated[float, Field(allow_inf_nan=False)]


class ScoreModelSpec(ModelGraderSpec):
    """OpenAI's `score_model`: the judge scores the answer in `range`; it passes from `pass_threshold`."""

    type: Literal["score_model"]
    range: list[Number] = Field(default_factory=lambda: [0.0, 1.0], min_length=2, max_length=2)
    sampling_params: SamplingParamsSpec | None = None
    pass_threshold: Number | None = None  # in the range's units; None: its middle

    @field_validator("range")
    @classmethod
    def _increasing(cls, bounds: list[float]) -> list[float]:
        if not bounds[0] < bounds[1]:
            raise ValueError(f"range is [low, high] with low < high, not {bounds}")
        return bounds

    @field_validator("pass_threshold")
    @classmethod
    def _threshold_in_range(cls, threshold: float | None, info: ValidationInfo) -> float | None:
        low, high = info.data.get("range", (-math.inf, math.inf))  # without a valid range, that is the error
        if threshold is not None and not low <= threshold <= high:
            raise ValueError(f"pass_threshold {threshold:g} is outside the range [{low:g}, {high:g}]")
        return threshold

    def sampling(self) -> JudgeSampling:
        return self.sampling_params.judge_sampling() if self.sampling_params else JudgeSampling()

    @property
    def pass_score(self) -> float:
        """`pass_threshold` on R3's [0, 1] scale (None: the range's middle, 0.5)."""
        return DEFAULT_PASS_THRESHOLD if self.pass_threshold is None else self.scaled(self.pass_threshold)

    def scaled(self, value: float) -> float:
        """`value`, in the range's units, on R3's [0, 1] scale; truncated to the range first."""
        low, high = self.range
        return (min(high, max(low, value)) - low) / (high - low)

    async def judge(self, attempt: Attempt, context: TaskContext, runtime: VerifierRuntime) -> Verdict:
        asked = await self.ask(attempt, runtime, {"type": "number"})
        if isinstance(asked, Verdict):
            return asked
        answer, usage = asked
        result = _number(answer.result)
        if result is None:
            return Verdict.unjudged(f"judge error: its result is not a number: {_clipped(repr(answer.result))}",
                                    usage)
        low, high = self.range
        threshold = self.pass_score
        said = f"scored {result:g} in [{low:g}, {high:g}]"
        return Verdict.graded(self.scaled(result), threshold,
                              f"{said}: {answer.rationale}" if answer.rationale else said, usage)


class LabelModelSpec(ModelGraderSpec):
    """OpenAI's `label_model`: the judge labels the answer with one of `labels`; it passes with one of
    `passing_labels`."""

    type: Literal["label_model"]
    labels: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(min_length=1, max_length=MAX_LABELS)
    passing_labels: list[str] = Field(min_length=1, max_length=MAX_LABELS)

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be distinct")
        return labels

    @field_validator("passing_labels")
    @classmethod
    def _passing_are_labels(cls, passing: list[str], info: ValidationInfo) -> list[str]:
        unknown = [label for label in passing if label not in info.data.get("labels", passing)]
        if unknown:
            raise ValueError(f"passing_labels must be a subset of labels; {unknown} are not labels")
        return passing

    async def judge(self, attempt: Attempt, context: TaskContext, runtime: VerifierRuntime) -> Verdict:
        asked = await self.ask(attempt, runtime, {"type": "string", "enum": list(self.labels)})
        if isinstance(asked, Verdict):
            return asked
        answer, usage = asked
        label = answer.result
        if not isinstance(label, str) or label not in self.labels:
            return Verdict.unjudged(f"judge error: its label {_clipped(repr(label))} is not one of the grader's "
                                    "labels", usage)
        passed = label in self.passing_labels
        said = f"labelled {label!r} ({'a passing label' if passed else 'not a passing label'})"
        return Verdict(passed, f"{said}: {answer.rationale}" if answer.rationale else said, usage=usage)


register(VerifierType(
    ScoreModelSpec, judge_with=ScoreModelSpec.judge, admit=_admit,
    summary="a chat model (`R3_JUDGE_BASE_URL`'s, else this server's own, as `base`), given the rendered `input` "
            "messages, scores the answer in `range` at or above `pass_threshold` (default: the range's middle); "
            "its score, scaled to [0, 1], is the attempt's. A judge that fails leaves the attempt unjudged",
))
register(VerifierType(
    LabelModelSpec, judge_with=LabelModelSpec.judge, admit=_admit,
    summary="a chat model (as `score_model`'s) labels the answer with one of `labels`, and the label is one of "
            "`passing_labels` (score 1, else 0). A judge that fails leaves the attempt unjudged",
))
