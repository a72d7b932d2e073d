"""The engine suite: the same cases against both engines (transformers + peft, and vLLM on the CPU).

Each engine is started once for the whole test session (vLLM takes ~45 s) and shared with the
server tests that run on it (`engines` in conftest.py).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema
import pytest
from support import TIME, WEATHER, make_lora, make_model, next_turn_reuse, truncated_copy

from r3.chat_format import parse_tool_calls, render_prompt
from r3.engines.base import Engine, EngineError, PromptTooLongError, SamplingParams, UnknownAdapterError
from r3.engines.vllm_engine import CPU_BLOCK_SIZE, VllmEngine
from r3.structured_output import structural_tag

GREEDY = SamplingParams(max_tokens=12, temperature=0.0)


@pytest.fixture(scope="module")
async def engine(started_engine: Engine, lora_path: Path):
    engine = started_engine
    await engine.load_adapter("lora-a", lora_path)
    yield engine
    for name in engine.adapters():
        await engine.unload_adapter(name)


def prompt(engine: Engine, text: str) -> str:
    return render_prompt(engine.tokenizer, [{"role": "user", "content": text}]).text


def assert_same_generation(a, b) -> None:
    """Same tokens; logprobs equal up to float reordering from batch shape (about 1e-6 seen)."""
    assert a.token_ids == b.token_ids and a.text == b.text and a.finish_reason == b.finish_reason
    assert [t.logprob for t in a.tokens] == pytest.approx([t.logprob for t in b.tokens], abs=1e-4)


async def test_stream_reassembles_to_the_whole_generation(engine) -> None:
    p = prompt(engine, "Name three colours.")
    whole = await engine.generate(p, GREEDY)
    chunks = [chunk async for chunk in engine.stream(p, GREEDY)]
    assert "".join(c.text for c in chunks) == whole.text
    assert [t.token_id for c in chunks for t in c.tokens] == whole.token_ids
    assert chunks[-1].finish_reason == whole.finish_reason and all(c.finish_reason is None for c in chunks[:-1])
    assert whole.prompt_tokens == len(engine.encode(p)) and whole.completion_tokens == len(whole.token_ids)
    # The first chunk says how long the prompt was, so no caller tokenizes it again.
    assert [c.prompt_length for c in chunks] == [whole.prompt_tokens] + [None] * (len(chunks) - 1)


async def test_token_texts_and_logprobs_describe_the_output(engine) -> None:
    result = await engine.generate(prompt(engine, "Say hello."), SamplingParams(max_tokens=8, temperature=0, top_logprobs=3))
    assert "".join(t.token for t in result.tokens) == result.text
    for token in result.tokens:
        assert token.logprob <= 0 and len(token.top) == 3
        # greedy: the chosen token is the most likely one
        assert (token.top[0].token_id, token.top[0].token) == (token.token_id, token.token)
        assert token.top[0].logprob == pytest.approx(token.logprob)


async def test_an_adapter_changes_the_output_and_the_base_stays_the_base(engine) -> None:
    p = prompt(engine, "What is the capital of France?")
    base = await engine.generate(p, GREEDY)
    adapted = await engine.generate(p, GREEDY, adapter="lora-a")
    assert [t.logprob for t in base.tokens[:1]] != pytest.approx([t.logprob for t in adapted.tokens[:1]], abs=1e-3)
    assert_same_generation(await engine.generate(p, GREEDY), base)


async def test_concurrent_requests_for_base_and_adapter_each_get_what_they_get_alone(engine) -> None:
    short, long = prompt(engine, "Hi"), prompt(engine, "Write one sentence about the sea and the moon, please.")
    alone = [await engine.generate(short, GREEDY), await engine.generate(long, GREEDY, adapter="lora-a"),
             await engine.generate(long, GREEDY)]
    together = await asyncio.gather(engine.generate(short, GREEDY), engine.generate(long, GREEDY, adapter="lora-a"),
                                    engine.generate(long, GREEDY))
    for a, b in zip(alone, together):
        assert_same_generation(a, b)


async def test_a_request_joining_a_running_batch_gets_what_it_gets_alone(engine) -> None:
    long_params = SamplingParams(max_tokens=24, temperature=0.0)
    first, second = prompt(engine, "Tell me a story about a cat."), prompt(engine, "2+2=?")
    first_alone = await engine.generate(first, long_params, adapter="lora-a")
    second_alone = await engine.generate(second, GREEDY)

    stream = engine.stream(first, long_params, adapter="lora-a")
    pieces = [await anext(stream)]  # the first request is decoding now
    second_result = await engine.generate(second, GREEDY)  # joins its batch mid-flight
    pieces += [chunk async for chunk in stream]
    assert_same_generation(second_result, second_alone)
    assert [t.token_id for c in pieces for t in c.tokens] == first_alone.token_ids


async def test_stop_strings_end_the_text_before_them(engine) -> None:
    p = prompt(engine, "What is the capital of France?")
    full = await engine.generate(p, GREEDY)
    word = full.text.split()[2]
    stopped = await engine.generate(p, SamplingParams(max_tokens=12, temperature=0, stop=(word,)))
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.index(word)]
    chunks = [c async for c in engine.stream(p, SamplingParams(max_tokens=12, temperature=0, stop=(word,)))]
    assert "".join(c.text for c in chunks) == stopped.text


async def test_max_tokens_limits_the_length(engine) -> None:
    result = await engine.generate(prompt(engine, "Count from one to one hundred."), SamplingParams(max_tokens=5, temperature=0))
    assert result.finish_reason == "length" and result.completion_tokens == 5


async def test_a_seed_makes_sampling_repeatable(engine) -> None:
    p = prompt(engine, "Write a word.")
    params = SamplingParams(max_tokens=16, temperature=1.0, seed=7)
    first, second = await asyncio.gather(engine.generate(p, params), engine.generate(p, params))
    assert first.token_ids == second.token_ids
    others = [await engine.generate(p, SamplingParams(max_tokens=16, temperature=1.0, seed=s)) for s in (8, 9)]
    assert any(o.token_ids != first.token_ids for o in others)


async def test_unknown_and_unloaded_adapters_are_refused(engine, lora_path: Path) -> None:
    p = prompt(engine, "Hi")
    with pytest.raises(UnknownAdapterError):
        await engine.generate(p, GREEDY, adapter="nope")
    base_before = await engine.generate(p, GREEDY)
    await engine.load_adapter("lora-b", lora_path)
    assert set(engine.adapters()) == {"lora-a", "lora-b"}
    await engine.unload_adapter("lora-b")
    with pytest.raises(UnknownAdapterError):
        await engine.generate(p, GREEDY, adapter="lora-b")
    assert_same_generation(await engine.generate(p, GREEDY), base_before)


async def test_unloading_the_last_adapter_restores_the_plain_base(engine, lora_path: Path) -> None:
    p = prompt(engine, "Hi")
    await engine.unload_adapter("lora-a")
    before = await engine.generate(p, GREEDY)
    await engine.load_adapter("only", lora_path)
    await engine.unload_adapter("only")
    assert engine.adapters() == {}
    assert_same_generation(await engine.generate(p, GREEDY), before)
    await engine.load_adapter("lora-a", lora_path)


async def test_a_prompt_longer_than_the_context_is_refused(engine) -> None:
    with pytest.raises(PromptTooLongError):
        await engine.generate(prompt(engine, "word " * engine.max_model_len), GREEDY)
    assert (await engine.generate(prompt(engine, "Hi"), GREEDY)).completion_tokens > 0


async def test_a_folder_that_is_not_an_adapter_is_refused_and_serving_goes_on(engine, tmp_path: Path, lora_path: Path) -> None:
    with pytest.raises(EngineError, match="adapter_config.json"):
        await engine.load_adapter("broken", tmp_path)
    with pytest.raises(EngineError, match="already loaded"):
        await engine.load_adapter("lora-a", lora_path)
    assert set(engine.adapters()) == {"lora-a"}
    assert (await engine.generate(prompt(engine, "Hi"), GREEDY, adapter="lora-a")).completion_tokens > 0


async def test_an_adapter_in_use_is_not_unloaded(engine) -> None:
    stream = engine.stream(prompt(engine, "Tell me a story."), SamplingParams(max_tokens=16, temperature=0), adapter="lora-a")
    await anext(stream)
    with pytest.raises(EngineError, match="in use"):
        await engine.unload_adapter("lora-a")
    assert [c async for c in stream][-1].finish_reason is not None
    assert "lora-a" in engine.adapters()


async def test_a_tiny_temperature_is_greedy_and_fails_no_one_else(engine) -> None:
    # 1e-38 overflows logits divided by it: it must read as greedy, and never fail the batch it joins.
    tiny_prompt, other_prompt = prompt(engine, "Name three colours."), prompt(engine, "Write a word.")
    seeded = SamplingParams(max_tokens=12, temperature=0.8, seed=3)
    greedy, other_alone = await engine.generate(tiny_prompt, GREEDY), await engine.generate(other_prompt, seeded)
    tiny, other = await asyncio.gather(
        engine.generate(tiny_prompt, SamplingParams(max_tokens=12, temperature=1e-38)),
        engine.generate(other_prompt, seeded))
    assert_same_generation(tiny, greedy)
    assert other.token_ids == other_alone.token_ids


async def test_a_base_request_batched_with_adapters_in_every_slot_gets_the_base(engine, model_path: Path,
                                                                               tmp_path: Path) -> None:
    # The vLLM session engine has max_loras=2: lora-a and lora-c fill every slot.
    await engine.load_adapter("lora-c", make_lora(model_path, tmp_path / "c", seed=99, rank=8, alpha=16,
                                                  target_modules=("q_proj", "v_proj")))
    try:
        p = prompt(engine, "What is the capital of France?")
        alone = await engine.generate(p, GREEDY)
        together = await asyncio.gather(engine.generate(p, GREEDY), engine.generate(p, GREEDY, adapter="lora-a"),
                                        engine.generate(p, GREEDY, adapter="lora-c"))
        assert_same_generation(together[0], alone)
    finally:
        await engine.unload_adapter("lora-c")


async def test_an_adapter_for_a_model_of_another_size_is_refused_and_serving_goes_on(engine, model_path: Path,
                                                                                     tmp_path: Path) -> None:
    # A smaller hidden size: vLLM would copy its tensors into zero-padded slots and serve it silently.
    other_model = make_model(model_path, tmp_path / "other-model", hidden_size=512, num_attention_heads=8,
                             intermediate_size=1024, num_hidden_layers=2)
    adapter = make_lora(other_model, tmp_path / "other-lora", seed=5, target_modules=("q_proj", "v_proj"))
    with pytest.raises(EngineError, match=r"another model .*hidden_size 512 \(this model: 576\)"):
        await engine.load_adapter("other", adapter)

    # Claiming our model as its base, it is caught by its tensors' shapes.
    config = adapter / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": str(model_path)}))
    with pytest.raises(EngineError, match=r"tensor base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.lora_A"
                                          r"\.weight has shape \[4, 512\], but module .* has 576 inputs"):
        await engine.load_adapter("other", adapter)
    assert set(engine.adapters()) == {"lora-a"}
    assert (await engine.generate(prompt(engine, "Hi"), GREEDY, adapter="lora-a")).completion_tokens > 0


async def test_a_truncated_adapter_is_an_engine_error_and_serving_goes_on(engine, lora_path: Path,
                                                                          tmp_path: Path) -> None:
    p = prompt(engine, "Hi")
    before = await engine.generate(p, GREEDY, adapter="lora-a")
    with pytest.raises(EngineError, match="cannot read the weights of adapter 'cut'"):
        await engine.load_adapter("cut", truncated_copy(lora_path, tmp_path / "cut"))
    assert set(engine.adapters()) == {"lora-a"}
    assert_same_generation(await engine.generate(p, GREEDY, adapter="lora-a"), before)


CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
        "additionalProperties": False}


async def test_a_json_schema_constrains_the_output(engine) -> None:
    p = prompt(engine, "What is the capital of France? Answer in JSON.")
    result = await engine.generate(p, SamplingParams(max_tokens=40, temperature=0.0, json_schema=CITY))
    assert result.finish_reason == "stop"
    assert set(json.loads(result.text)) == {"city"}


# ------------------------------------------------------------------ issue 16: both engines constrain decoding


def tool_prompt(engine: Engine, tool_choice) -> str:
    return render_prompt(engine.tokenizer, [{"role": "user", "content": "What is the weather in Paris?"}],
                         [WEATHER, TIME], tool_choice, constrained_decoding=True).engine_input


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
async def test_a_forced_tool_call_names_an_offered_tool_and_ends_the_answer(engine, tool_choice) -> None:
    tag = structural_tag([WEATHER, TIME], tool_choice, False, None)
    result = await engine.generate(tool_prompt(engine, tool_choice),
                                   SamplingParams(max_tokens=60, temperature=0.0, structural_tag=tag))
    assert result.finish_reason == "stop"  # the call ended the answer, long before max_tokens
    [call] = parse_tool_calls(result.text, {"get_weather", "get_time"}).tool_calls
    assert call.name in ({"get_time"} if isinstance(tool_choice, dict) else {"get_weather", "get_time"})
    tool = WEATHER if call.name == "get_weather" else TIME
    jsonschema.validate(json.loads(call.arguments), tool["function"]["parameters"])


NO_PARAMETERS = {"type": "function", "function": {"name": "get_time", "description": "The current time."}}


async def test_a_forced_call_of_a_function_without_parameters_ends_with_empty_arguments(engine) -> None:
    """Issue 24.3: omitted `parameters` are an empty parameter list, and the grammar's whitespace is
    bounded, so the call is `{}` and ends the answer (not keys the model invents, or blank lines)."""
    choice = {"type": "function", "function": {"name": "get_time"}}
    tag = structural_tag([NO_PARAMETERS], choice, False, None)
    text = render_prompt(engine.tokenizer, [{"role": "user", "content": "What time is it?"}], [NO_PARAMETERS],
                         choice, constrained_decoding=True).engine_input
    result = await engine.generate(text, SamplingParams(max_tokens=40, temperature=0.0, structural_tag=tag))
    assert result.finish_reason == "stop"
    [call] = parse_tool_calls(result.text, {"get_time"}).tool_calls
    assert call.name == "get_time" and json.loads(call.arguments) == {}


async def test_an_empty_object_schema_gives_an_empty_object_that_ends(engine) -> None:
    p = prompt(engine, "Answer in JSON.")
    schema = {"type": "object", "properties": {}}
    result = await engine.generate(p, SamplingParams(max_tokens=32, temperature=0.0, json_schema=schema))
    assert result.finish_reason == "stop" and json.loads(result.text) == {}


async def test_a_constrained_row_leaves_its_batch_mates_as_they_are_alone(engine) -> None:
    free = prompt(engine, "Name three colours.")
    alone = await engine.generate(free, GREEDY)
    tag = structural_tag([WEATHER, TIME], "required", False, None)
    together, held = await asyncio.gather(
        engine.generate(free, GREEDY),
        engine.generate(tool_prompt(engine, "required"), SamplingParams(max_tokens=40, temperature=0, structural_tag=tag)))
    assert_same_generation(together, alone)
    assert parse_tool_calls(held.text, {"get_weather", "get_time"}).tool_calls


async def test_logit_bias_steers_the_choice_and_logprobs_stay_the_models(engine) -> None:
    p = prompt(engine, "Write the word cat ten times.")
    plain = await engine.generate(p, SamplingParams(max_tokens=1, temperature=0, top_logprobs=2))
    runner_up = plain.tokens[0].top[1]
    runner_up_id, runner_up_logprob = runner_up.token_id, runner_up.logprob
    biased = await engine.generate(p, SamplingParams(max_tokens=1, temperature=0,
                                                     logit_bias=((runner_up_id, 100.0),)))
    assert biased.token_ids == [runner_up_id]
    assert biased.tokens[0].logprob == pytest.approx(runner_up_logprob, abs=1e-4)  # before the bias, as vLLM's


async def test_penalties_discourage_repeating_tokens(engine) -> None:
    p = prompt(engine, "Write the word cat ten times.")

    def most_repeats(result) -> int:
        return max(result.token_ids.count(token) for token in result.token_ids)

    plain = await engine.generate(p, SamplingParams(max_tokens=20, temperature=0))
    for penalty in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
        penalised = await engine.generate(p, SamplingParams(max_tokens=20, temperature=0, **penalty))
        assert most_repeats(penalised) < most_repeats(plain), penalty


async def test_a_next_turn_reuses_the_answer_before_it(engine) -> None:
    """A rescue's reflection begins with its attempt's prompt and answer. vLLM reuses them in whole KV
    blocks, of `CPU_BLOCK_SIZE` tokens on the CPU: with vLLM's CPU default of 128, a 150-token prompt
    and its 40-token answer were reused only up to token 128, the answer not at all. The transformers
    engine of this suite keeps no prefix cache (test_prefix_cache.py has one that does): nothing reused."""
    read, cached = await next_turn_reuse(engine, "lora-a", prompt_tokens=150, answer_tokens=40)
    if isinstance(engine, VllmEngine):
        assert cached == read // CPU_BLOCK_SIZE * CPU_BLOCK_SIZE == 160  # 10 of the answer's tokens too
    else:
        assert cached == 0
