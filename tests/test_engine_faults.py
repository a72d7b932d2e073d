"""Faults in the transformers engine stay with the requests they belong to, and serving goes on.

A forward pass is made to fail by wrapping the model's `forward`; everything else is real. Every
wait has a timeout: a request that is never answered is the failure these tests exist to catch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from support import make_lora

from r3.chat_format import render_prompt
from r3.engines import transformers_engine
from r3.engines.base import EngineError, SamplingParams

GREEDY = SamplingParams(max_tokens=12, temperature=0.0)
ANSWER_WITHIN_S = 120


@pytest.fixture
def engine(transformers_engine):
    assert transformers_engine.adapters() == {}  # the model is the plain base: its forward is the one wrapped
    return transformers_engine


def prompt(engine, text: str) -> str:
    return render_prompt(engine.tokenizer, [{"role": "user", "content": text}]).text


async def answer(coroutine):
    return await asyncio.wait_for(coroutine, ANSWER_WITHIN_S)


def fail_forward_once(monkeypatch: pytest.MonkeyPatch, engine, when: Callable[[torch.Tensor], bool]) -> None:
    """Make the first forward pass whose `input_ids` ([rows, tokens]) satisfy `when` raise."""
    model = engine._model
    forward = model.forward
    failed = []

    def failing_forward(*args, input_ids: torch.Tensor, **kwargs):
        if not failed and when(input_ids):
            failed.append(input_ids)
            raise RuntimeError("injected forward failure")
        return forward(*args, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(model, "forward", failing_forward)


def is_prefill(input_ids: torch.Tensor) -> bool:
    return input_ids.shape[1] > 1


def is_decode(input_ids: torch.Tensor) -> bool:
    return input_ids.shape[1] == 1


async def test_a_failing_prefill_fails_its_request_and_the_engine_goes_on(engine, monkeypatch) -> None:
    p = prompt(engine, "Name three colours.")
    expected = await answer(engine.generate(p, GREEDY))
    fail_forward_once(monkeypatch, engine, is_prefill)
    with pytest.raises(EngineError, match="injected forward failure"):
        await answer(engine.generate(p, GREEDY))
    assert (await answer(engine.generate(p, GREEDY))).token_ids == expected.token_ids


async def test_a_failing_prefill_leaves_the_requests_already_decoding_alone(engine, monkeypatch) -> None:
    long_params = SamplingParams(max_tokens=24, temperature=0.0)
    first, second = prompt(engine, "Tell me a story about a cat."), prompt(engine, "2+2=?")
    first_alone = await answer(engine.generate(first, long_params))

    stream = engine.stream(first, long_params)
    pieces = [await answer(anext(stream))]  # the first request is decoding now
    fail_forward_once(monkeypatch, engine, is_prefill)
    with pytest.raises(EngineError, match="injected forward failure"):
        await answer(engine.generate(second, GREEDY))  # its prefill, joining the batch, fails
    pieces += await answer(_rest(stream))
    assert [t.token_id for c in pieces for t in c.tokens] == first_alone.token_ids


async def test_a_failing_decode_step_fails_its_request_and_the_engine_goes_on(engine, monkeypatch) -> None:
    p = prompt(engine, "Name three colours.")
    expected = await answer(engine.generate(p, GREEDY))
    fail_forward_once(monkeypatch, engine, is_decode)
    with pytest.raises(EngineError, match="injected forward failure"):
        await answer(engine.generate(p, GREEDY))
    assert (await answer(engine.generate(p, GREEDY))).token_ids == expected.token_ids


async def test_a_row_whose_sampling_raises_fails_alone(engine, monkeypatch) -> None:
    sample = transformers_engine._sample

    def sample_failing_for_seed_13(logits, params, generator):
        if params.seed == 13:
            raise RuntimeError("injected sampling failure")
        return sample(logits, params, generator)

    monkeypatch.setattr(transformers_engine, "_sample", sample_failing_for_seed_13)
    long_params = SamplingParams(max_tokens=24, temperature=0.0)
    p = prompt(engine, "Tell me a story about a cat.")
    alone = await answer(engine.generate(p, long_params))

    stream = engine.stream(p, long_params)
    pieces = [await answer(anext(stream))]  # decoding now: the failing row joins its batch
    with pytest.raises(EngineError, match="injected sampling failure"):
        await answer(engine.generate(p, SamplingParams(max_tokens=12, seed=13)))
    pieces += await answer(_rest(stream))
    assert [t.token_id for c in pieces for t in c.tokens] == alone.token_ids


async def test_unloading_the_first_adapter_keeps_an_adapter_on_other_modules_serving(engine, model_path: Path,
                                                                                     tmp_path: Path) -> None:
    # peft 0.21.2 left its active adapter on the deleted one here, and every forward raised KeyError.
    on_q = make_lora(model_path, tmp_path / "q", seed=1, target_modules=("q_proj",))
    on_v = make_lora(model_path, tmp_path / "v", seed=2, target_modules=("v_proj",))
    p = prompt(engine, "What is the capital of France?")
    base = await answer(engine.generate(p, GREEDY))
    await engine.load_adapter("on-q", on_q)
    await engine.load_adapter("on-v", on_v)
    try:
        through_v = await answer(engine.generate(p, GREEDY, adapter="on-v"))
        await engine.unload_adapter("on-q")
        assert (await answer(engine.generate(p, GREEDY, adapter="on-v"))).token_ids == through_v.token_ids
        assert (await answer(engine.generate(p, GREEDY))).token_ids == base.token_ids
    finally:
        for name in engine.adapters():
            await engine.unload_adapter(name)


async def _rest(stream) -> list:
    return [chunk async for chunk in stream]
