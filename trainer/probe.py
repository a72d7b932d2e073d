"""The general-capability probe: does a candidate adapter still know what the base model knows?

The gate's other checks replay the deployment's own traffic; a LoRA update may also cost knowledge
that no logged request asks for. An operator may supply a file of multiple-choice items
(`R3_GATE_PROBE_FILE`), JSON Lines, one item a line:

    {"question": "Question: What is the capital of France?\\nAnswer:", "choices": ["Paris", "Rome"], "answer": 0}

`answer` is the index of the right choice. R3 ships no such data: items of an existing benchmark
(MMLU, ARC, HellaSwag), written out in this shape, serve.

Items are scored as lm-evaluation-harness scores a task of `output_type: multiple_choice`: each
choice is a continuation of the question, `loglikelihood(question, " " + choice)` (the harness's
default `target_delimiter`, no chat template), summed over the continuation's tokens, in nats; then
- `acc`: whether the choice of the highest log-likelihood is the answer;
- `acc_norm`: the same with each log-likelihood divided by its choice's length in characters;
- `acc_bytes`: divided by its length in UTF-8 bytes instead.
The first highest wins a tie, as `numpy.argmax`. Sources: lm-eval's docs/writing_tasks/
scoring_and_metrics.md (the default metrics of a multiple-choice task); `ConfigurableTask.
construct_requests` and `process_results` in lm_eval/api/task.py; `acc_fn`, `acc_norm_fn` and
`acc_bytes_fn` in lm_eval/api/_metrics/ll.py. Tokens as the harness's `HFLM._encode_pair`
(lm_eval/models/huggingface.py) makes them: trailing whitespace of the question moves to the
continuation, and the continuation is what follows the question's own tokens in the tokens of the
two together.

An `r3` engine scores them (`SamplingParams.prompt_logprobs`), through an adapter or the base model,
so the probe runs wherever the gate runs. The candidate is compared with the base model, not with the
active adapter: a capability lost a little in each round would pass a round-by-round comparison.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from r3.engines.base import Engine, PromptTooLongError, SamplingParams
from r3.stats import wilson
from trainer.gate import beyond

TARGET_DELIMITER = " "  # lm-eval's default `target_delimiter`, between the question and a choice


class ProbeError(ValueError):
    """A probe file that cannot be read, or an item the model cannot score; the message names the
    file's line."""


class ProbeItem(BaseModel):
    """One multiple-choice item: `choices[answer]` is the right continuation of `question`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    question: str
    choices: list[Annotated[str, Field(min_length=1)]] = Field(min_length=2)
    answer: int

    @field_validator("question")
    @classmethod
    def _not_blank(cls, question: str) -> str:
        if not question.strip():
            raise ValueError("the question is blank")
        return question

    @field_validator("choices")
    @classmethod
    def _distinct(cls, choices: list[str]) -> list[str]:
        if len(set(choices)) < len(choices):
            raise ValueError("two choices are the same: the right one could not be told from its twin")
        return choices

    @field_validator("answer")
    @classmethod
    def _a_choice(cls, answer: int, info: ValidationInfo) -> int:
        choices = info.data.get("choices")
        if choices is not None and not 0 <= answer < len(choices):
            raise ValueError(f"{answer} is not the index of one of the {len(choices)} choices "
                             f"(0 to {len(choices) - 1})")
        return answer


def read_probe(path: Path) -> list[ProbeItem]:
    """The items of the JSON Lines file at `path`, item i on line i + 1. Raises `ProbeError` naming the
    file and each line that is not an item (not JSON, a field missing, unknown or of the wrong type, a
    blank question or choice, fewer than 2 choices, two alike, an answer that indexes none), or when
    the file cannot be read or holds no item."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ProbeError(f"the probe file {path} cannot be read: {error}") from None
    items, errors = [], []
    for number, line in enumerate(lines, start=1):
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            errors.append(f"line {number}: not JSON ({error.msg}, column {error.colno})")
            continue
        try:
            items.append(ProbeItem.model_validate(data))
        except ValidationError as error:
            errors.append(f"line {number}: " + "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"] for e in error.errors()))
    if errors:
        raise ProbeError(f"the probe file {path} has lines that are not items ({{\"question\": str, \"choices\": "
                         f"[str, ...], \"answer\": int}}): " + "; ".join(errors))
    if not items:
        raise ProbeError(f"the probe file {path} holds no item")
    return items


@dataclass(frozen=True)
class ProbeResult:
    adapter: str | None  # None: the base model
    loglikelihoods: list[list[float]]  # item -> choice -> its summed log-likelihood (nats)
    acc: float
    acc_norm: float  # by characters
    acc_bytes: float  # by UTF-8 bytes

    def metrics(self) -> dict[str, float]:
        return {"acc": self.acc, "acc_norm": self.acc_norm, "acc_bytes": self.acc_bytes}


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context's tokens, continuation's tokens) as lm-eval's `HFLM._encode_pair` makes them: the
    context's trailing whitespace goes to the continuation (a BPE tokenizer joins a space to the word
    after it), and the continuation is what follows the context's own tokens in the tokens of both."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = encode(context)
    return context_ids, encode(context + continuation)[len(context_ids):]


async def score_probe(engine: Engine, items: Sequence[ProbeItem], adapter: str | None = None) -> ProbeResult:
    """The model's (`adapter`, or the base model for None) log-likelihood of every choice of every
    item, and its `acc`, `acc_norm` and `acc_bytes` over them (in [0, 1]). The engine batches them:
    all run at once. Raises `ProbeError` for an item too long for the model's context (lm-eval
    would cut the question's start; a probe that cannot see its question measures nothing)."""
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)

    async def loglikelihood(number: int, item: ProbeItem, choice: str) -> float:
        context, continuation = encode_pair(engine.encode, item.question, TARGET_DELIMITER + choice)
        try:
            chunks = [chunk async for chunk in engine.stream(context + continuation, params, adapter)]
        except PromptTooLongError:
            raise ProbeError(f"the probe's item on line {number}, with choice {choice!r}, is "
                             f"{len(context) + len(continuation)} tokens: too long for the model's context of "
                             f"{engine.max_model_len} (scoring takes one token more)") from None
        return sum(token.logprob for token in chunks[0].prompt_tokens[-len(continuation):])

    flat = await asyncio.gather(*(loglikelihood(number, item, choice)
                                  for number, item in enumerate(items, start=1) for choice in item.choices))
    loglikelihoods, start = [], 0
    for item in items:
        loglikelihoods.append(flat[start:start + len(item.choices)])
        start += len(item.choices)

    def accuracy(length: Callable[[str], int]) -> float:
        right = 0
        for item, scores in zip(items, loglikelihoods):
            normed = [score / length(choice) for score, choice in zip(scores, item.choices)]
            right += max(range(len(normed)), key=normed.__getitem__) == item.answer  # the first of equals
        return right / len(items)

    return ProbeResult(adapter=adapter, loglikelihoods=loglikelihoods, acc=accuracy(lambda choice: 1),
                       acc_norm=accuracy(len), acc_bytes=accuracy(lambda choice: len(choice.encode())))


def probe_decision(candidate_acc: float, base_acc: float, n: int, max_drop: float) -> tuple[bool, dict[str, Any]]:
    """(whether the candidate passes, the numbers): it fails when its accuracy (`acc`, in [0, 1]) on
    the `n` probe items is lower than the base model's by more than `max_drop`.

    The bound is on the measured fall, with no allowance for chance: both models are scored on the
    same items without sampling, so the fall on this file is exact, and the file is the operator's
    own definition of the capability; an allowance would let a small file excuse any fall. Its
    resolution is 1 / `n` (one item): a `max_drop` under it refuses any lost item. The Wilson
    intervals (`r3.stats.wilson`) say what each accuracy tells of the capability beyond the file.
    Raises `ValueError` for `n` < 1."""
    if n < 1:
        raise ValueError("a probe needs at least one item")
    drop = base_acc - candidate_acc
    passed = not beyond(drop, max_drop)
    return passed, {"n": n, "candidate_acc": candidate_acc, "base_acc": base_acc, "drop": drop, "max_drop": max_drop,
                    "candidate_ci95": wilson(round(candidate_acc * n), n), "base_ci95": wilson(round(base_acc * n), n),
                    "refused": not passed}


async def run_probe(engine: Engine, items: Sequence[ProbeItem], candidate: str,
                    max_drop: float) -> tuple[bool, dict[str, Any]]:
    """The probe of the adapter `candidate` against the base model, both on `engine`:
    `probe_decision`'s outcome, its numbers with each model's `acc`, `acc_norm` and `acc_bytes`
    (`"candidate"`, `"base"`). Pass it to `trainer.gate.decide` as `probe`."""
    base_result, candidate_result = await asyncio.gather(score_probe(engine, items, None),
                                                         score_probe(engine, items, candidate))
    passed, numbers = probe_decision(candidate_result.acc, base_result.acc, len(items), max_drop)
    return passed, {**numbers, "candidate": candidate_result.metrics(), "base": base_result.metrics()}
