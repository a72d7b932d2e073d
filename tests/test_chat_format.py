"""Tool-call rendering and parsing, on recorded model outputs."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from r3.chat_format import call_id, parse_tool_calls, render_prompt, with_call_ids

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def calls(text: str) -> list[tuple[str, dict]]:
    return [(c.name, json.loads(c.arguments)) for c in parse_tool_calls(text).tool_calls]


# ------------------------------------------------------------------ parsing

@pytest.mark.parametrize(
    ("output", "expected_calls", "expected_content"),
    [
        # a clean Hermes call
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
         [("get_weather", {"city": "Paris"})], None),
        # text around the call is kept as content
        ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\nDone.',
         [("get_weather", {"city": "Oslo"})], "Let me check. Done."),
        # several calls
        ('<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>\n<tool_call>{"name": "b", "arguments": {}}</tool_call>',
         [("a", {"x": 1}), ("b", {})], None),
        # the closing tag cut off by max_tokens
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}',
         [("get_weather", {"city": "Rome"})], None),
        # "parameters" instead of "arguments", and arguments given as a JSON string
        ('<tool_call>{"name": "f", "parameters": {"k": "v"}}</tool_call>', [("f", {"k": "v"})], None),
        ('<tool_call>{"name": "f", "arguments": "{\\"k\\": 2}"}</tool_call>', [("f", {"k": 2})], None),
        # bare JSON, fenced and not, alone and in a list
        ('{"name": "get_weather", "arguments": {"city": "Lima"}}', [("get_weather", {"city": "Lima"})], None),
        ('```json\n{"name": "get_weather", "arguments": {"city": "Lima"}}\n```', [("get_weather", {"city": "Lima"})], None),
        ('[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"y": [1, 2]}}]', [("a", {}), ("b", {"y": [1, 2]})], None),
        ('Sure: {"name": "a", "arguments": {"q": "x"}} is the call.', [("a", {"q": "x"})], "Sure: is the call."),
    ],
)
def test_parses_valid_calls(output: str, expected_calls: list, expected_content: str | None) -> None:
    parsed = with_call_ids(parse_tool_calls(output), "chatcmpl-0123456789abcdef")
    assert calls(output) == expected_calls
    assert parsed.content == expected_content
    assert [c.id for c in parsed.tool_calls] == [call_id("chatcmpl-0123456789abcdef", i)
                                                 for i in range(len(expected_calls))]
    assert all(c.id.startswith("call_") for c in parsed.tool_calls)
    assert len({c.id for c in parsed.tool_calls}) == len(parsed.tool_calls)


@pytest.mark.parametrize(
    "output",
    [
        "The weather in Paris is sunny.",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"</tool_call>',  # truncated JSON
        '<tool_call>{"arguments": {"city": "Paris"}}</tool_call>',  # no name
        '<tool_call>{"name": "", "arguments": {}}</tool_call>',  # empty name
        '<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>',  # arguments not an object
        '{"city": "Paris"}',  # JSON, but not a call
        "<tool_call>not json at all</tool_call>",
    ],
)
def test_malformed_calls_stay_in_the_content(output: str) -> None:
    parsed = parse_tool_calls(output)
    assert parsed.tool_calls == []
    assert parsed.content == output


def test_a_malformed_block_beside_a_good_one_is_kept_as_text() -> None:
    output = '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{broken</tool_call>'
    parsed = parse_tool_calls(output)
    assert [c.name for c in parsed.tool_calls] == ["a"]
    assert parsed.content == "<tool_call>{broken</tool_call>"


def test_arguments_are_a_json_string() -> None:
    parsed = parse_tool_calls('<tool_call>{"name": "f", "arguments": {"n": 1.5, "s": "é"}}</tool_call>')
    assert isinstance(parsed.tool_calls[0].arguments, str)
    assert json.loads(parsed.tool_calls[0].arguments) == {"n": 1.5, "s": "é"}


# ------------------------------------------------------------------ rendering

@pytest.fixture(scope="module")
def tokenizer(model_path):
    return AutoTokenizer.from_pretrained(model_path)


def test_tools_go_into_a_hermes_system_prompt_when_the_template_has_no_tools(tokenizer) -> None:
    prompt = render_prompt(tokenizer, [{"role": "user", "content": "Weather in Paris?"}], [WEATHER])
    assert "<tools>" in prompt.text and json.dumps(WEATHER["function"]) in prompt.text
    assert prompt.text.startswith("<|im_start|>system\nYou are a function calling AI model.")
    assert prompt.text.endswith("<|im_start|>assistant\n")
    assert prompt.assistant_prefix == ""


def test_a_system_message_keeps_its_text_and_gains_the_tools(tokenizer) -> None:
    prompt = render_prompt(tokenizer, [{"role": "system", "content": "Be terse."},
                                       {"role": "user", "content": "Hi"}], [WEATHER])
    assert prompt.text.count("<|im_start|>system") == 1
    assert "Be terse.\n\nYou are a function calling AI model." in prompt.text


def test_tool_choice_none_renders_no_tools(tokenizer) -> None:
    plain = render_prompt(tokenizer, [{"role": "user", "content": "Hi"}])
    none = render_prompt(tokenizer, [{"role": "user", "content": "Hi"}], [WEATHER], "none")
    assert none == plain and "<tools>" not in none.text


def test_required_and_named_tool_choice_prefill_the_call(tokenizer) -> None:
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    required = render_prompt(tokenizer, messages, [WEATHER], "required")
    assert required.assistant_prefix == '<tool_call>\n{"name": "'
    assert "You must call at least one of these functions." in required.text
    named = render_prompt(tokenizer, messages, [WEATHER], {"type": "function", "function": {"name": "get_weather"}})
    assert named.assistant_prefix == '<tool_call>\n{"name": "get_weather", "arguments": '
    # what the model writes after the prefix parses as the named call
    assert calls(named.assistant_prefix + '{"city": "Paris"}}\n</tool_call>') == [("get_weather", {"city": "Paris"})]


def test_earlier_tool_calls_and_results_are_rendered_the_way_the_model_writes_them(tokenizer) -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Paris?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
    ]
    text = render_prompt(tokenizer, messages, [WEATHER]).text
    assert "Weather in Paris?" in text
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>' in text
    assert "<|im_start|>tool\n<tool_response>\n18C, sunny\n</tool_response><|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


# ------------------------------------------------------------------ issue 16: only offered tools, as written


@pytest.mark.parametrize(
    "output",
    [
        '{"name": "Alice", "age": 30}',  # JSON with a name, echoed as asked: data, not a call to "Alice"
        '{"name": "Alice", "arguments": {"age": 30}}',  # shaped like a call, of a tool never offered
        '<tool_call>\n{"name": "send_email", "arguments": {"to": "x"}}\n</tool_call>',
        '[{"name": "get_weather", "arguments": {}}, {"name": "delete_everything", "arguments": {}}]',
    ],
)
def test_only_calls_of_offered_tools_are_calls(output: str) -> None:
    parsed = parse_tool_calls(output, {"get_weather"})
    assert parsed.tool_calls == [] and parsed.content == output


def test_a_call_of_an_offered_tool_keeps_its_arguments_as_written() -> None:
    written = '{"city":"Paris",  "units": "metric"}'
    parsed = parse_tool_calls(f'<tool_call>\n{{"name": "get_weather", "arguments": {written}}}\n</tool_call>',
                              {"get_weather"})
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [("get_weather", written)]


def test_an_engine_that_constrains_decoding_gets_no_prefill(tokenizer) -> None:
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        prompt = render_prompt(tokenizer, messages, [WEATHER], choice, constrained_decoding=True)
        assert prompt.assistant_prefix == "" and prompt.engine_input == prompt.text
