"""The embedded engine's chunked prefill: a prompt enters its KV cache a chunk a step, within the step's
token budget, while the running rows keep decoding, and it gets what it gets prefilled in one piece.

The chunked engine here has a budget of 16 tokens a step; the session engine (`transformers_engine`,
budget 512) prefills these prompts in one piece. `record` logs the chunked engine's steps as it takes
them (its prefill chunks and decode steps, and how many positions the LM head ran on in each forward
pass), passing everything through, so the tests read what the engine did, not the clock.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from r3.chat_format import render_prompt
from r3.engines.base import EngineError, SamplingParams
from r3.engines.transformers_engine import TransformersEngine

BUDGET = 16
ANSWER_WITHIN_S = 120  # a request never answered is a failure, not a hang
GREEDY = SamplingParams(max_tokens=12, temperature=0.0)
STORY = " ".join(f"Box {i} is {colour} and holds {i * 3} marbles." for i, colour in
                 enumerate(["red", "green", "blue", "yellow", "black", "white", "purple", "orange"] * 2))


@pytest.fixture(scope="module")
async def chunked(model_path: Path):
    engine = TransformersEngine(str(model_path), "smol", max_batch_size=4, max_num_batched_tokens=BUDGET)
    yield engine
    await engine.close()


@dataclass
class Step:
    kind: str  # "prefill": a chunk of one prompt; "decode": a token for each running row
    rows: int
    tokens: int  # per row
    prompt_length: int = 0  # a prefill chunk's prompt's


@dataclass
class EngineLog:
    steps: list[Step] = field(default_factory=list)
    lm_head_positions: list[int] = field(default_factory=list)  # per row, in each forward pass

    def chunks(self, prompt_length: int) -> list[int]:
        """The sizes of the prefill chunks of a prompt `prompt_length` tokens long, in order."""
        return [s.tokens for s in self.steps if s.kind == "prefill" and s.prompt_length == prompt_length]


@pytest.fixture
def record(monkeypatch: pytest.MonkeyPatch):
    """`record(engine)` starts logging `engine`'s steps into the `EngineLog` it returns."""

    def start(engine: TransformersEngine) -> EngineLog:
        log = EngineLog()
        prefill, decode, forward = engine._prefill, engine._decode, engine._model.forward

        def logged_prefill(part, take):
            log.steps.append(Step("prefill", 1, take, len(part.sequences[0].prompt_ids)))
            return prefill(part, take)

        def logged_decode(batch):
            log.steps.append(Step("decode", len(batch.sequences), 1))
            return decode(batch)

        def logged_forward(*args, **kwargs):
            output = forward(*args, **kwargs)
            log.lm_head_positions.append(output.logits.shape[1])
            return output

        monkeypatch.setattr(engine, "_prefill", logged_prefill)
        monkeypatch.setattr(engine, "_decode", logged_decode)
        monkeypatch.setattr(engine._model, "forward", logged_forward)
        return log

    return start


def prompt(engine: TransformersEngine, text: str) -> str:
    return render_prompt(engine.tokenizer, [{"role": "user", "content": text}]).text


async def answer(coroutine):
    return await asyncio.wait_for(coroutine, ANSWER_WITHIN_S)


async def collect(stream) -> list:
    return [chunk async for chunk in stream]


def assert_same_generation(a, b) -> None:
    """Same tokens; logprobs equal up to float reordering (chunked attention sums in another order)."""
    assert a.token_ids == b.token_ids and a.text == b.text and a.finish_reason == b.finish_reason
    assert [t.logprob for t in a.tokens] == pytest.approx([t.logprob for t in b.tokens], abs=1e-4)


def in_chunks_of(size: int, length: int) -> list[int]:
    return [size] * (length // size) + [length % size] * bool(length % size)


async def test_a_prompt_prefilled_in_chunks_gets_what_it_gets_in_one_piece(chunked, transformers_engine,
                                                                           record) -> None:
    p = prompt(chunked, "Which box holds the most marbles? " + STORY)
    length = len(chunked.encode(p))
    params = SamplingParams(max_tokens=16, temperature=0.0, top_logprobs=2)
    log = record(chunked)
    chunk_by_chunk = await answer(chunked.generate(p, params))
    assert log.chunks(length) == in_chunks_of(BUDGET, length)
    one_piece = await answer(transformers_engine.generate(p, params))
    assert_same_generation(chunk_by_chunk, one_piece)
    for mine, theirs in zip(chunk_by_chunk.tokens, one_piece.tokens):
        assert [alt.token_id for alt in mine.top] == [alt.token_id for alt in theirs.top]
        assert [alt.logprob for alt in mine.top] == pytest.approx([alt.logprob for alt in theirs.top], abs=1e-4)


async def test_the_lm_head_runs_only_after_the_prompts_last_position(chunked, record) -> None:
    log = record(chunked)
    await answer(chunked.generate(prompt(chunked, STORY), GREEDY))
    assert len(log.chunks(len(chunked.encode(prompt(chunked, STORY))))) > 1
    assert set(log.lm_head_positions) == {1}  # never a [positions, vocab] block, in prefill or decode


async def test_prompt_logprobs_are_the_models_own_chunk_by_chunk(chunked, transformers_engine, record) -> None:
    """As `echo` with `logprobs` reports them: each prompt token after the first, scored as the model run
    on the whole prompt at once scores it (the reference), whether the engine prefilled it in chunks or not."""
    p = prompt(chunked, "Count the boxes. " + STORY)
    ids = chunked.encode(p)
    with chunked._lock, torch.inference_mode():  # the engine's own weights, between two of its steps
        reference = torch.log_softmax(chunked._model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
    expected = reference.gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1).tolist()
    expected_top = reference.topk(3, dim=-1).values.flatten().tolist()
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=3)

    log = record(chunked)
    for engine in (chunked, transformers_engine):
        chunks = await answer(collect(engine.stream(p, params)))
        scored = chunks[0].prompt_tokens
        assert [t.token_id for t in scored] == ids[1:]
        assert [t.logprob for t in scored] == pytest.approx(expected, abs=1e-4)
        assert [alt.logprob for t in scored for alt in t.top] == pytest.approx(expected_top, abs=1e-4)
    # Chunk by chunk: the LM head never ran on more positions than a chunk has.
    assert log.chunks(len(ids)) == in_chunks_of(BUDGET, len(ids)) and max(log.lm_head_positions) == BUDGET


async def test_a_running_stream_keeps_decoding_while_a_long_prompt_is_prefilled(chunked, transformers_engine,
                                                                              record) -> None:
    # No end of sequence: the short stream outlasts the long prompt's prefill.
    endless = SamplingParams(max_tokens=2000, temperature=0.0, logit_bias=((chunked.tokenizer.eos_token_id, -100.0),))
    long_prompt = prompt(chunked, "Which box holds the most marbles? " + STORY)
    length = len(chunked.encode(long_prompt))
    long_alone = await answer(transformers_engine.generate(long_prompt, GREEDY))

    stream = chunked.stream(prompt(chunked, "Count from one to one thousand."), endless)
    await answer(anext(stream))  # the short request is decoding now
    log = record(chunked)
    long_request = asyncio.ensure_future(chunked.generate(long_prompt, GREEDY))
    short_tokens = 0
    async for chunk in stream:
        short_tokens += len(chunk.tokens)
        if long_request.done():
            break
    await stream.aclose()
    assert_same_generation(await answer(long_request), long_alone)

    # Until the long request decodes beside it: the short row's decode step, then a chunk of the long
    # prompt as big as the budget leaves (one token goes to that row), step after step.
    steps = log.steps[:next(i for i, s in enumerate(log.steps) if s.kind == "decode" and s.rows == 2)]
    steps = steps[next(i for i, s in enumerate(steps) if s.kind == "prefill") - 1:]
    assert [(s.kind, s.rows, s.tokens) for s in steps[::2]] == [("decode", 1, 1)] * (len(steps) // 2)
    assert [s.tokens for s in steps[1::2]] == in_chunks_of(BUDGET - 1, length) == log.chunks(length)
    assert len(log.chunks(length)) >= 5 and short_tokens >= len(log.chunks(length))


async def test_a_request_cancelled_while_its_prompt_is_prefilled_stops_there(chunked, monkeypatch) -> None:
    long_prompt = prompt(chunked, STORY)
    length = len(chunked.encode(long_prompt))
    prefill, chunks = chunked._prefill, []
    in_first_chunk, client_gone = threading.Event(), threading.Event()

    def prefill_held_at_the_first_chunk(part, take):
        chunks.append((len(part.sequences[0].prompt_ids), take))
        if len(chunks) == 1:  # the engine waits here until the client has hung up
            in_first_chunk.set()
            client_gone.wait(ANSWER_WITHIN_S)
        return prefill(part, take)

    monkeypatch.setattr(chunked, "_prefill", prefill_held_at_the_first_chunk)
    request = asyncio.ensure_future(chunked.generate(long_prompt, GREEDY))
    assert await asyncio.to_thread(in_first_chunk.wait, ANSWER_WITHIN_S)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    client_gone.set()
    hi = prompt(chunked, "Hi")
    assert (await answer(chunked.generate(hi, GREEDY))).completion_tokens > 0  # its slot is free, the engine goes on
    assert [take for prompt_length, take in chunks if prompt_length == length] == [BUDGET]


@pytest.mark.parametrize("empty", ["", []])
async def test_an_empty_prompt_is_refused_and_the_engine_goes_on(chunked, empty) -> None:
    # Nothing to prefill: it would wait for a chunk forever, holding a batch slot.
    with pytest.raises(EngineError, match="empty"):
        await answer(chunked.generate(empty, GREEDY))
    assert (await answer(chunked.generate(prompt(chunked, "Hi"), GREEDY))).completion_tokens > 0


def test_a_budget_smaller_than_the_batch_is_refused(model_path: Path) -> None:
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        TransformersEngine(str(model_path), "smol", max_batch_size=8, max_num_batched_tokens=4)
