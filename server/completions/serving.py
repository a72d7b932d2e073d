"""Serving `POST /v1/completions` (`OpenAIServingCompletion`): OpenAI's legacy text completion, as
vLLM serves it: a prompt in, its continuation out, with `logprobs` and `echo`.

It is how evaluation tools such as lm-evaluation-harness score a served model (a prompt echoed
with its tokens' logprobs, `max_tokens` 0 to score only), which is how a user checks an adapter
for forgetting. It is plain inference: no chat template, no verifier, no reflection, and it is not
recorded as an episode (episodes are conversations). Each prompt gets `n` choices (choice
`prompt_index * n + i`, with seed `seed + i`, as vLLM numbers and seeds them).
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from r3.engines.base import Engine, GenerationChunk, SamplingParams, TokenLogprob
from r3.engines.token_bytes import own_bytes, token_name
from r3.reflect_retry import completion_id
from server.completions.protocol import Completion, CompletionChoice, CompletionLogprobs, CompletionRequest
from server.deps import Services
from server.errors import APIError
from server.openai.serving import all_of, logit_bias_pairs, token_bytes
from server.openai.sse import interleaved
from server.protocol import Usage, now


@dataclass(frozen=True)
class CompletionJobs:
    """A checked legacy completion request, ready to run: the choices to make, and how to write them."""

    body: CompletionRequest
    jobs: list[_Job]
    answer: _Answer
    scenario: str | None = None  # the caller's default scenario (its API key's), which `r3` means


class OpenAIServingCompletion:
    """`POST /v1/completions` over this server's services: `prepare` a request, then answer it `full`
    or `stream` it."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.engine: Engine = services.engine

    async def prepare(self, body: CompletionRequest, scenario: str | None = None) -> CompletionJobs:
        """Checks everything the request asks for before any generation starts. Raises `UnknownModel`
        (404) for a model this server does not serve, `APIError` (400) for a prompt that is not text or
        token ids of this vocabulary, or that leaves no room for `max_tokens` in the context."""
        self.services.adapters.resolve(body.model, scenario)  # an unknown model is a 404 before anything starts
        jobs = await asyncio.to_thread(_jobs, self.engine, body)
        vocabulary = await token_bytes(self.engine) if body.logprobs is not None else ()
        answer = _Answer(body, completion_id().replace("chatcmpl-", "cmpl-", 1), now(), vocabulary)
        return CompletionJobs(body, jobs, answer, scenario)

    async def full(self, request: CompletionJobs) -> Completion:
        """The whole response: every choice made."""
        body, jobs, answer = request.body, request.jobs, request.answer
        async with self.services.adapters.pin(body.model, request.scenario) as served:
            made = await all_of(_make(self.engine, job, served.adapter) for job in jobs)
        return Completion(id=answer.id, created=answer.created, model=body.model,
                          choices=[answer.choice(job, result, whole=True) for job, result in zip(jobs, made)],
                          usage=answer.usage(jobs, made))

    async def stream(self, request: CompletionJobs) -> AsyncIterator[str]:
        """The response as SSE chunks, each choice's as the engine makes them (interleaved); then, with
        `include_usage`, the usage chunk."""
        body, jobs, answer = request.body, request.jobs, request.answer
        made = [_Made() for _ in jobs]
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def event(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
            return Completion(id=answer.id, created=answer.created, model=body.model, choices=choices,
                              usage=usage).sse(include_usage)

        async def choice_events(job: _Job, result: _Made, adapter: str | None) -> AsyncIterator[str]:
            first = True
            async for chunk in _follow(self.engine, job, adapter, result):
                yield event([answer.piece(job, chunk, echo=first)])
                first = False

        async with self.services.adapters.pin(body.model, request.scenario) as served:
            async for chunk in interleaved([choice_events(job, result, served.adapter)
                                            for job, result in zip(jobs, made)]):
                yield chunk
        if include_usage:
            yield event([], answer.usage(jobs, made))


@dataclass(frozen=True)
class _Job:
    """One choice to make: which, of which prompt, with what."""

    index: int
    prompt: str  # as echoed
    prompt_ids: list[int]  # as the engine reads it
    first_token: str  # the prompt's first token, which nothing predicts (its logprob is null)
    params: SamplingParams
    score_only: bool  # max_tokens 0: one token is generated (engines make at least one) and dropped


@dataclass
class _Made:
    """What the engine made of a job so far."""

    text: str = ""
    tokens: list[TokenLogprob] = field(default_factory=list)
    prompt_tokens: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str = "length"


def _jobs(engine: Engine, body: CompletionRequest) -> list[_Job]:
    """The choices to make, prompt by prompt. Raises `APIError` (400) for a prompt that is not text or
    token ids of this vocabulary, or that leaves no room for `max_tokens` in the context."""
    params = SamplingParams(temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=body.stop_sequences,
                            top_logprobs=body.logprobs or 0, presence_penalty=body.presence_penalty,
                            frequency_penalty=body.frequency_penalty,
                            logit_bias=logit_bias_pairs(body.logit_bias, engine),
                            prompt_logprobs=body.logprobs if body.echo else None)
    jobs = []
    for number, (prompt, prompt_ids) in enumerate(_prompts(engine, body.prompt)):
        if engine.max_model_len - len(prompt_ids) < max(body.max_tokens, 1):
            raise APIError(400, f"the prompt takes {len(prompt_ids)} tokens and max_tokens is {body.max_tokens}; this "
                           f"model's context is {engine.max_model_len}", param="prompt", code="context_length_exceeded")
        for i in range(body.n):
            seed = None if body.seed is None else body.seed + i
            jobs.append(_Job(number * body.n + i, prompt, prompt_ids, engine.tokenizer.decode(prompt_ids[:1]),
                             replace(params, max_tokens=max(body.max_tokens, 1), seed=seed), body.max_tokens == 0))
    return jobs


def _prompts(engine: Engine, prompt: str | list[Any]) -> list[tuple[str, list[int]]]:
    """Each prompt as (its text, its token ids). A text is tokenized; token ids are kept as given and
    scored as given (lm-evaluation-harness sends ids so that a context and its continuation are split
    where it split them, which tokenizing their text again need not keep), their text decoded from them.
    Raises `APIError` (400) for an id outside this model's vocabulary."""
    if isinstance(prompt, str) or all(isinstance(item, int) for item in prompt):
        prompt = [prompt]
    prompts = []
    for item in prompt:
        if isinstance(item, str):
            prompts.append((item, engine.encode(item)))
            continue
        if any(not 0 <= token < len(engine.tokenizer) for token in item):
            raise APIError(400, "prompt holds a token id outside this model's vocabulary", param="prompt")
        prompts.append((engine.tokenizer.decode(item), list(item)))
    return prompts


async def _make(engine: Engine, job: _Job, adapter: str | None) -> _Made:
    made = _Made()
    async for _ in _follow(engine, job, adapter, made):
        pass
    return made


async def _follow(engine: Engine, job: _Job, adapter: str | None, made: _Made) -> AsyncIterator[GenerationChunk]:
    """The engine's chunks of `job`, kept in `made` as they come (a score-only job's generation left out)."""
    async for chunk in engine.stream(job.prompt_ids, job.params, adapter):
        made.prompt_tokens += chunk.prompt_tokens or []
        if job.score_only:
            chunk = replace(chunk, text="", tokens=[])
        made.text += chunk.text
        made.tokens += chunk.tokens
        made.finish_reason = "length" if job.score_only else chunk.finish_reason or made.finish_reason
        yield chunk


@dataclass(frozen=True)
class _Answer:
    """How the choices of one request are written."""

    body: CompletionRequest
    id: str
    created: int
    vocabulary: Sequence[bytes] = ()  # the bytes of each token id, for logprobs

    def choice(self, job: _Job, made: _Made, whole: bool) -> CompletionChoice:
        echoed = self._echoed(job, made.prompt_tokens) if self.body.echo else []
        return CompletionChoice(index=job.index, text=(job.prompt if self.body.echo else "") + made.text,
                                logprobs=self._logprobs(echoed + self._rows(made.tokens)),
                                finish_reason=made.finish_reason if whole else None)

    def piece(self, job: _Job, chunk: GenerationChunk, echo: bool) -> CompletionChoice:
        """A streamed chunk of `job` (the first one with the echoed prompt, when asked)."""
        echoed = echo and self.body.echo
        text, tokens = ("", []) if job.score_only else (chunk.text, chunk.tokens)
        rows = (self._echoed(job, chunk.prompt_tokens or []) if echoed else []) + self._rows(tokens)
        finish = ("length" if job.score_only else chunk.finish_reason) if chunk.finish_reason else None
        return CompletionChoice(index=job.index, text=(job.prompt if echoed else "") + text,
                                logprobs=self._logprobs(rows), finish_reason=finish)

    def usage(self, jobs: Sequence[_Job], made: Sequence[_Made]) -> Usage:
        """Each prompt's tokens once, every choice's generated tokens."""
        prompt = sum(len(job.prompt_ids) for job in jobs if job.index % self.body.n == 0)
        completion = sum(len(result.tokens) for result in made)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    def _echoed(self, job: _Job, prompt_tokens: list[TokenLogprob]) -> list[_Row]:
        """The prompt's rows: its first token (which nothing predicts) with no logprob, then the scored ones."""
        if self.body.logprobs is None:
            return []
        first = own_bytes(self.vocabulary, job.prompt_ids[0], job.first_token)
        return [(first, token_name(first), None, None), *self._rows(prompt_tokens)]

    def _rows(self, tokens: list[TokenLogprob]) -> list[_Row]:
        """Each token's row, named by its own bytes as the chat logprobs name it (`token_name`), so the
        pieces of a character differ; its alternatives include the token itself, as vLLM's do."""
        def name(token: TokenLogprob) -> str:
            return token_name(own_bytes(self.vocabulary, token.token_id, token.token))

        return [(own_bytes(self.vocabulary, t.token_id, t.token), name(t), t.logprob,
                 {**{name(a): a.logprob for a in t.top}, name(t): t.logprob}) for t in tokens]

    def _logprobs(self, rows: list[_Row]) -> CompletionLogprobs | None:
        """The legacy logprobs of `rows`; a token's `text_offset` is where in the text the character it
        begins, or is part of, starts (its bytes read in order, as they rejoin into the text)."""
        if self.body.logprobs is None:
            return None
        reader = codecs.getincrementaldecoder("utf-8")(errors="replace")
        offsets, offset = [], 0
        for raw, *_ in rows:
            offsets.append(offset)
            offset += len(reader.decode(raw))
        return CompletionLogprobs(tokens=[name for _, name, _, _ in rows], token_logprobs=[lp for *_, lp, _ in rows],
                                  top_logprobs=[top for *_, top in rows], text_offset=offsets)


# A token as the legacy logprobs list it: its bytes, its name, its logprob, the most likely tokens with theirs.
_Row = tuple[bytes, str, float | None, dict[str, float] | None]
