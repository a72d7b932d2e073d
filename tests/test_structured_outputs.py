"""Issue 16: what an answer is held to (`r3.structured_output`, checked with xgrammar's own matcher on
the bundled model's vocabulary), and tool calls streamed as they are written (`r3.tool_call_stream`)."""

from __future__ import annotations

import json
import random

import pytest
import xgrammar as xgr
from transformers import AutoTokenizer

from r3.chat_format import parse_tool_calls
from r3.structured_output import MAX_JSON_WHITESPACE, grammar_problem, grammar_tag, structural_tag
from r3.tool_call_stream import ArgumentsPiece, CallStart, ContentPiece, ToolCallStream

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}}
TOOLS = [WEATHER, TIME]
PARIS = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
UTC = '<tool_call>\n{"name": "get_time", "arguments": {"timezone": "UTC"}}\n</tool_call>'


@pytest.fixture(scope="module")
def compiler(model_path) -> xgr.GrammarCompiler:
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    return xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tokenizer), max_threads=1)


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "text", "taken"),
    [
        ("required", True, PARIS, True),
        ("required", True, f"{PARIS}\n{UTC}", True),
        ("required", False, f"{PARIS}\n{UTC}", False),  # parallel_tool_calls: false, one call at most
        ("required", True, "It is sunny.", False),  # a call is required
        ("required", True, '<tool_call>\n{"name": "send_email", "arguments": {}}\n</tool_call>', False),
        ("required", True, '<tool_call>\n{"name": "get_weather", "arguments": {"town": "Paris"}}\n</tool_call>', False),
        ({"type": "function", "function": {"name": "get_time"}}, True, UTC, True),
        ({"type": "function", "function": {"name": "get_time"}}, True, PARIS, False),  # the named one only
        ("auto", True, "It is sunny.", True),
        ("auto", True, f"Let me look. {PARIS}", True),
        ("auto", True, '<tool_call>\n{"name": "Alice", "arguments": {}}\n</tool_call>', False),
    ],
)
def test_the_tool_grammar_takes_calls_of_offered_tools_only(compiler, tool_choice, parallel, text, taken) -> None:
    tag = structural_tag(TOOLS, tool_choice, parallel, None)
    matcher = xgr.GrammarMatcher(compiler.compile_structural_tag(json.dumps(tag)))
    whole = matcher.accept_string(text) and matcher.accept_token(2)  # 2: <|im_end|>, the end of sequence
    assert whole == taken


def test_a_forced_call_is_the_whole_answer(compiler) -> None:
    tag = structural_tag(TOOLS, {"type": "function", "function": {"name": "get_weather"}}, True, None)
    matcher = xgr.GrammarMatcher(compiler.compile_structural_tag(json.dumps(tag)))
    assert matcher.accept_string(PARIS)
    bitmask = xgr.allocate_token_bitmask(1, 49152)
    matcher.fill_next_token_bitmask(bitmask)
    allowed = [i for i in range(49152) if bitmask[0, i // 32] >> (i % 32) & 1]
    assert allowed == [2]  # once the call is written, only the end of the answer may follow


def test_with_tools_and_a_response_format_the_answer_is_calls_or_the_schema(compiler) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    tag = structural_tag(TOOLS, "auto", True, schema)
    for text, taken in ((PARIS, True), ('{"answer": "sunny"}', True), ("It is sunny.", False)):
        matcher = xgr.GrammarMatcher(compiler.compile_structural_tag(json.dumps(tag)))
        assert (matcher.accept_string(text) and matcher.accept_token(2)) == taken


def test_no_tools_or_none_is_no_tool_grammar() -> None:
    assert structural_tag(None, "auto", True, None) is None
    assert structural_tag(TOOLS, "none", True, {"type": "object"}) is None


def test_a_schema_no_grammar_can_hold_is_told() -> None:
    assert grammar_problem(grammar_tag(None, {"type": "object"})) is None
    assert "nonsense" in grammar_problem(grammar_tag(None, {"type": "nonsense"}))
    assert grammar_problem(structural_tag(TOOLS, "required", True, None)) is None


NO_PARAMETERS_TOOL = {"type": "function", "function": {"name": "get_time"}}
FORCED = {"type": "function", "function": {"name": "get_time"}}


@pytest.mark.parametrize(
    ("text", "taken"),
    [
        ('<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>', True),
        ('<tool_call>\n{"name": "get_time", "arguments": { }}\n</tool_call>', True),
        ('<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>', False),  # no invented keys
        ('<tool_call>\n{"name": "get_time", "arguments": {\n\n\n}}\n</tool_call>', False),  # whitespace bounded
    ],
)
def test_a_function_without_parameters_takes_empty_arguments(compiler, text, taken) -> None:
    """Issue 24.3: omitted `parameters` are an empty parameter list (OpenAI's reading), so a forced
    call's arguments are `{}` and the grammar then ends the answer."""
    matcher = xgr.GrammarMatcher(compiler.compile_structural_tag(json.dumps(structural_tag([NO_PARAMETERS_TOOL],
                                                                                          FORCED, True, None))))
    assert (matcher.accept_string(text) and matcher.accept_token(2)) == taken


@pytest.mark.parametrize("tools", [None, TOOLS])
def test_whitespace_in_json_is_bounded_in_every_grammar(compiler, tools) -> None:
    """Issue 24.3: an empty-object answer cannot be padded with newlines until max_tokens; at most
    MAX_JSON_WHITESPACE whitespace characters stand in a row, in a plain response_format and beside tools."""
    schema = {"type": "object", "properties": {}, "additionalProperties": False}
    tag = grammar_tag(structural_tag(tools, "auto", True, schema), schema)

    def takes(text: str) -> bool:
        matcher = xgr.GrammarMatcher(compiler.compile_structural_tag(json.dumps(tag)))
        return matcher.accept_string(text) and matcher.accept_token(2)

    assert takes("{" + " " * MAX_JSON_WHITESPACE + "}")
    assert not takes("{" + "\n" * (MAX_JSON_WHITESPACE + 1) + "}")


# ------------------------------------------------------------------ streamed tool calls

WELL_FORMED = [
    PARIS,
    f"{PARIS}\n{UTC}",
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa\\"ris}", "days": [1, {"x": "]"}]}}\n</tool_call>',
    f"Let me check.\n{PARIS}\nDone.",
    '{"name": "get_weather", "arguments": {"city": "Lima"}}',
    '```json\n{"name": "get_weather", "arguments": {"city": "Lima"}}\n```',
    '[{"name": "get_weather", "arguments": {}}]',
    '{"name": "Alice", "age": 30}',
    "  The weather is nice.  ",
]


def streamed(text: str, cuts: list[int]) -> tuple[list, tuple]:
    """The events of `text` fed in pieces cut at `cuts`, and what they add up to."""
    stream = ToolCallStream({"get_weather", "get_time"})
    events = [event for start, end in zip([0, *cuts], [*cuts, len(text)]) for event in stream.feed(text[start:end])]
    events += stream.finish(parse_tool_calls(text, {"get_weather", "get_time"}))
    calls: dict[int, list[str]] = {}
    for event in events:
        if isinstance(event, CallStart):
            calls[event.index] = [event.name, ""]
        elif isinstance(event, ArgumentsPiece):
            calls[event.index][1] += event.text  # a KeyError here would be arguments before their name
    content = "".join(event.text for event in events if isinstance(event, ContentPiece)) or None
    return events, (content, [tuple(calls[index]) for index in sorted(calls)])


@pytest.mark.parametrize("text", WELL_FORMED)
def test_a_streamed_answer_adds_up_to_the_whole_answer_however_it_is_cut(text: str) -> None:
    whole = parse_tool_calls(text, {"get_weather", "get_time"})
    expected = (whole.content, [(call.name, call.arguments) for call in whole.tool_calls])
    rng = random.Random(16)
    for cuts in [list(range(1, len(text))), []] + [sorted(rng.sample(range(1, len(text)), 6)) for _ in range(50)]:
        assert streamed(text, cuts)[1] == expected, cuts


def test_a_call_streams_its_name_first_then_its_arguments_as_they_are_written() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "units": "metric"}}\n</tool_call>'
    stream = ToolCallStream({"get_weather"})
    per_piece = [stream.feed(text[i:i + 8]) for i in range(0, len(text), 8)]
    name_at = next(i for i, events in enumerate(per_piece) if any(isinstance(e, CallStart) for e in events))
    argument_pieces = [e for events in per_piece for e in events if isinstance(e, ArgumentsPiece)]
    assert per_piece[name_at][0] == CallStart(0, "get_weather")
    assert len(argument_pieces) > 3  # in pieces, not in one delta at the end
    assert "".join(e.text for e in argument_pieces) == '{"city": "Paris", "units": "metric"}'
    assert stream.finish(parse_tool_calls(text, {"get_weather"})) == []  # all of it was already sent


def test_content_streams_before_any_call() -> None:
    stream = ToolCallStream({"get_weather"})
    assert stream.feed("The weather ") == [ContentPiece("The weather")]  # the space may yet stand beside a call
    assert stream.feed("is nice") == [ContentPiece(" is nice")]
    assert stream.feed(". <tool_c") == [ContentPiece(".")]  # maybe a call: held


def test_a_call_cut_short_was_sent_as_far_as_it_got_and_the_whole_answer_keeps_it_as_content() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rom'  # max_tokens ran out
    events, _ = streamed(text, list(range(1, len(text))))
    assert events[0] == CallStart(0, "get_weather")
    assert "".join(e.text for e in events if isinstance(e, ArgumentsPiece)) == '{"city": "Rom'
    assert not any(isinstance(e, ContentPiece) for e in events)
    whole = parse_tool_calls(text, {"get_weather"})
    assert whole.tool_calls == [] and whole.content == text  # a returned call's arguments are whole JSON
