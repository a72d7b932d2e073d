"""Prefix caching on the embedded engine (`r3.engines.prefix_cache`): a rescue's reflection and retry
reuse the keys and values of the attempt and reflection before them.

The policy alone (longest match per adapter, never a prompt's last token, one entry per conversation,
the memory bound, an unloaded adapter's entries gone), then the bundled model: two rescues at once, one
on a LoRA adapter and one on the base model held to a JSON schema, give the same greedy tokens with the
cache as without it, reuse what they share, and leave one entry each, freed with their adapter.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from support import next_turn_reuse

from r3.engines.base import GenerationResult, SamplingParams
from r3.engines.prefix_cache import PrefixCache
from r3.reflect_retry import ChatTask, Reflector, Run
from verifiers import VerifierRuntime, parse_spec

# ------------------------------------------------------------------ the policy alone

LAYERS = 2


def kv(tokens: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values that say which token they are for: each position holds its token id."""
    column = torch.tensor(tokens, dtype=torch.float32)[None, None, :, None]
    return [(column.clone(), -column) for _ in range(LAYERS)]


def stored(cache: PrefixCache, adapter: str, prompt: list[int], generated: list[int] = ()) -> None:
    tokens = [*prompt, *generated]
    cache.store(adapter, tokens, len(prompt), lambda: kv(tokens))


def entry_bytes(tokens: int) -> int:
    return LAYERS * 2 * tokens * 4  # float32 keys and values, one head of one dimension


def test_the_longest_prefix_of_the_same_adapter_is_reused_but_never_the_last_token() -> None:
    cache = PrefixCache(max_bytes=1 << 20)
    stored(cache, "a", [1, 2, 3, 4, 5, 6])
    stored(cache, "a", [1, 2, 9])
    stored(cache, "b", [1, 2, 3, 4, 5, 6, 7, 8])

    length, layers = cache.match("a", [1, 2, 3, 4, 7, 7])
    assert length == 4 and len(layers) == LAYERS
    assert layers[0][0].flatten().tolist() == [1, 2, 3, 4] and layers[1][1].flatten().tolist() == [-1, -2, -3, -4]
    assert cache.match("a", [1, 2, 3, 4, 5, 6])[0] == 5  # all but the last: its logits give the first token
    assert cache.match("c", [1, 2, 3])[0] == 0  # another adapter's keys and values are never used
    assert cache.match("a", [7, 1, 2])[0] == 0
    assert (cache.queries, cache.hits) == (6 + 6 + 3 + 3, 4 + 5)


def test_a_conversation_keeps_one_entry_extended_at_each_step() -> None:
    cache = PrefixCache(max_bytes=1 << 20)
    system, question, answer = [1, 2], [3, 4], [5, 6]
    stored(cache, "a", system + question, answer)
    stored(cache, "a", system + [9, 9], [7])  # another conversation sharing the system prompt: both kept
    assert len(cache) == 2
    # The reflection's prompt holds the attempt's whole prompt (its answer encoded again may differ at the end):
    # it replaces the attempt's entry.
    reflection_prompt = system + question + [5, 8, 10]
    stored(cache, "a", reflection_prompt, [11, 12])
    assert len(cache) == 2 and cache.match("a", system + question + answer + [0])[0] == 5
    stored(cache, "a", reflection_prompt + [11, 12, 13], [14])  # the retry replaces the reflection's
    assert len(cache) == 2 and cache.nbytes == entry_bytes(11) + entry_bytes(5)
    stored(cache, "a", reflection_prompt, [11])  # tokens an entry holds already: nothing more is kept
    stored(cache, "a", reflection_prompt, [12])  # another reflection on the same prompt: a turn of its own
    assert len(cache) == 3
    stored(cache, "b", system + question, answer)  # the same tokens on another adapter are other keys and values
    assert len(cache) == 4 and cache.nbytes == sum(map(entry_bytes, (11, 5, 8, 6)))


def test_memory_stays_under_the_bound_least_recently_used_leaving_first() -> None:
    cache = PrefixCache(max_bytes=entry_bytes(10))
    stored(cache, "a", [1, 1, 1, 1])
    stored(cache, "a", [2, 2, 2, 2])
    assert cache.match("a", [1, 1, 1, 9])[0] == 3  # [1...] used now: [2...] is the least recently used
    stored(cache, "a", [3, 3, 3, 3])
    assert len(cache) == 2 and cache.nbytes == entry_bytes(8) <= cache.max_bytes
    assert cache.match("a", [2, 2, 2, 9])[0] == 0 and cache.match("a", [1, 1, 1, 9])[0] == 3

    stored(cache, "a", list(range(100, 111)))  # larger than the whole bound: not kept, nothing evicted for it
    assert len(cache) == 2 and cache.match("a", list(range(100, 111)))[0] == 0

    cache.forget("a")
    assert len(cache) == 0 and cache.nbytes == 0


def test_a_running_requests_entry_is_held_until_it_ends() -> None:
    cache = PrefixCache(max_bytes=entry_bytes(10))
    attempt = [1, 1, 1, 1]
    cache.store("a", attempt, 3, lambda: kv(attempt), conversation="request-1")  # judged now, to be reflected on
    stored(cache, "a", [2, 2, 2, 2])
    stored(cache, "a", [3, 3, 3, 3])  # room needed: the entry no request holds leaves, not the attempt
    assert cache.match("a", [1, 1, 1, 1, 9])[0] == 4 and cache.match("a", [2, 2, 2, 9])[0] == 0
    stored(cache, "a", list(range(100, 107)))  # would fit only by evicting the held attempt: not kept
    assert cache.match("a", list(range(100, 107)))[0] == 0 and cache.nbytes == entry_bytes(8)

    # The reflection extends the attempt and is held in its place; a second request holds the same tokens too.
    reflection = [*attempt, 5, 6]
    cache.store("a", reflection, 5, lambda: kv(reflection), conversation="request-1")
    cache.store("a", attempt, 4, lambda: kv(attempt), conversation="request-2")
    assert len(cache) == 2 and cache.nbytes == entry_bytes(10) and cache.held == 1
    cache.end("request-1")
    stored(cache, "a", [4, 4, 4, 4])  # still held by request 2
    assert cache.match("a", [*reflection, 9])[0] == 6 and cache.match("a", [3, 3, 3, 9])[0] == 0
    cache.end("request-2")  # ended: kept, the least recently used leaving first when room is needed
    stored(cache, "a", [7, 7, 7, 7])
    assert cache.match("a", [*reflection, 9])[0] == 6 and cache.match("a", [4, 4, 4, 9])[0] == 0
    stored(cache, "a", [8, 8, 8, 8, 8, 8])
    assert cache.match("a", [*reflection, 9])[0] == 0 and len(cache) == 1  # room for 6 tokens: both others left


def test_a_cache_needs_room() -> None:
    with pytest.raises(ValueError, match="at least one byte"):
        PrefixCache(0)


# ------------------------------------------------------------------ the transformers engine

GREEDY = SamplingParams(max_tokens=16, temperature=0.0)
NEVER = parse_spec({"type": "exact", "expected": "a sentence no model writes"})  # every attempt fails
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def rescue_tasks() -> list[ChatTask]:
    """A task on adapter "one", and one on the base model whose attempts are held to a JSON schema; each
    fails, is reflected on and retried."""
    return [
        ChatTask(model="smol", adapter="one", messages=[{"role": "user", "content": "Write one sentence about the sea."}],
                 tools=None, tool_choice=None, params=GREEDY, verifier=NEVER),
        ChatTask(model="smol", adapter=None, messages=[{"role": "user", "content": "Name a city by the sea, as JSON."}],
                 tools=None, tool_choice=None, params=SamplingParams(max_tokens=16, temperature=0.0, json_schema=SCHEMA),
                 verifier=NEVER),
    ]


def read_tokens(result: GenerationResult) -> int:
    """The tokens of a finished generation the model has read: a last token cut by max_tokens never is."""
    return result.prompt_tokens + result.completion_tokens - (result.finish_reason == "length")


async def rescues(engine) -> tuple[list[GenerationResult], list[Run]]:
    """Each task's first prompt answered on the other's adapter (keys and values the cache then holds,
    which neither task may use), then both tasks at once, their rows sharing the batch."""
    reflector = Reflector(engine, VerifierRuntime(), reflection_max_tokens=16)
    tasks = rescue_tasks()
    crossed = [await engine.generate(reflector.core.first_prompt(task).for_engine, GREEDY, other.adapter)
               for task, other in zip(tasks, reversed(tasks))]
    return crossed, list(await asyncio.gather(*(reflector.run(Reflector.start(task, tenant=None)) for task in tasks)))


@pytest.fixture(scope="module")
async def engines(model_path: Path, lora_path: Path):
    """The same engine with prefix caching and without it, each with adapter "one"."""
    from r3.engines.transformers_engine import TransformersEngine

    made = {"cached": TransformersEngine(str(model_path), "smol", max_batch_size=4, prefix_cache_memory_bytes=1 << 30),
            "uncached": TransformersEngine(str(model_path), "smol", max_batch_size=4)}
    for engine in made.values():
        await engine.load_adapter("one", lora_path)
    yield made
    for engine in made.values():
        await engine.close()


def kv_bytes_per_token(model_path: Path) -> int:
    """One token's keys and values in every layer of the bundled model, in float32."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * 4


async def test_a_rescue_reuses_its_attempt_and_answers_as_without_the_cache(engines, model_path: Path) -> None:
    cached, uncached = engines["cached"], engines["uncached"]
    assert uncached.prefix_cache is None
    (crossed, with_cache), (crossed_alone, without) = await rescues(cached), await rescues(uncached)
    assert [r.token_ids for r in crossed] == [r.token_ids for r in crossed_alone]

    for run, alone in zip(with_cache, without):
        assert [len(run.turns), len(run.episode.attempts)] == [3, 2]  # attempt, reflection, retry
        assert [t.result.token_ids for t in run.turns] == [t.result.token_ids for t in alone.turns]
        assert [t.result.prompt_tokens for t in run.turns] == [t.result.prompt_tokens for t in alone.turns]
    assert json.loads(with_cache[1].turns[0].text).keys() == {"city"}  # the grammar held the base row's attempt

    # Each reflection re-read at least its attempt's whole prompt from the cache, each retry its reflection's.
    reused = sum(run.turns[0].result.prompt_tokens + run.turns[1].result.prompt_tokens for run in with_cache)
    cache = cached.prefix_cache
    assert cache.hits >= reused
    # What stays is one entry per request, its retry's sequence (which holds all before it), and the
    # crossed generations', within the bound.
    read = sum(read_tokens(run.turns[-1].result) for run in with_cache) + sum(map(read_tokens, crossed))
    assert len(cache) == 4 and cache.nbytes == read * kv_bytes_per_token(model_path) <= cache.max_bytes

    # An unloaded adapter's keys and values go with it: a version loaded under its name never meets them.
    before = cache.nbytes
    await cached.unload_adapter("one")
    assert len(cache) == 2 and cache.nbytes < before

    # The requests have ended: their entries are released at the engine's next step.
    await cached.generate(cached.encode("Hello"), GREEDY)
    assert cache.held == 0


async def test_a_next_turn_reuses_every_token_read_before_it(engines) -> None:
    """The prefix cache keeps a finished sequence whole, its answer too, and the engine reports what a
    prompt reused in its first chunk (`cached_tokens`)."""
    read, cached = await next_turn_reuse(engines["cached"], prompt_tokens=150, answer_tokens=40)
    assert cached == read == 189
    assert (await next_turn_reuse(engines["uncached"]))[1] == 0


@pytest.mark.parametrize(("enable", "max_bytes"), [(True, 1 << 20), (False, 1 << 20)])
async def test_the_server_engine_caches_as_its_settings_say(model_path: Path, enable: bool, max_bytes: int) -> None:
    from r3.engines import create_engine
    from r3.settings import Settings

    engine = await create_engine(Settings(_env_file=None, models_dir=model_path.parent, engine="transformers",
                                          enable_prefix_caching=enable, prefix_cache_memory_bytes=max_bytes))
    try:
        assert (engine.prefix_cache.max_bytes if engine.prefix_cache is not None else None) == (max_bytes if enable else None)
    finally:
        await engine.close()
