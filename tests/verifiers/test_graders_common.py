"""The graders' templates: what `sample` and `item` hold, what is refused when the spec is read, and
the walls that bound what a template can build."""

from __future__ import annotations

import pytest

from verifiers import Attempt, ToolCall
from verifiers.graders.common import MAX_INTEGER_BITS, MAX_RENDERED_CHARS, Sample, TemplateFailure, check_template, \
    render

JSON_ANSWER = Attempt('{"email": "ann@example.com", "tags": ["a", "b"], "items": 3}')
TOOL_ANSWER = Attempt(None, (ToolCall("get_weather", '{"city": "Paris"}', "call_1"),))
PROSE = Attempt("It is sunny.")


@pytest.mark.parametrize(
    ("template", "attempt", "item", "rendered"),
    [
        ("{{ sample.output_text }}", PROSE, {}, "It is sunny."),
        ("{{ sample.output_text }}", Attempt(None), {}, ""),  # no content: empty text
        ("{{ sample.output_json.email }}", JSON_ANSWER, {}, "ann@example.com"),
        ("{{ sample.output_json.tags[1] }}", JSON_ANSWER, {}, "b"),
        ("{{ sample.output_json['tags'][0] }}", JSON_ANSWER, {}, "a"),
        # `.key` reads the key, not the dict method of that name
        ("{{ sample.output_json.items }}", JSON_ANSWER, {}, "3"),
        ("{{ sample.output_tools[0].function.name }}", TOOL_ANSWER, {}, "get_weather"),
        ("{{ sample.output_tools[0].function.arguments }}", TOOL_ANSWER, {}, '{"city": "Paris"}'),
        ("{{ sample.output_tools[0].id }} {{ sample.output_tools[0].type }}", TOOL_ANSWER, {}, "call_1 function"),
        ("{{ sample.output_tools | length }}", PROSE, {}, "0"),
        ("{{ item.reference_answer }}", PROSE, {"reference_answer": "Paris"}, "Paris"),
        ("{{ item.rows[1].name }}", PROSE, {"rows": [{"name": "a"}, {"name": "b"}]}, "b"),
        ('{"smiles": "{{ item.smiles }}"}', PROSE, {"smiles": "CCO"}, '{"smiles": "CCO"}'),
        ("{{ item.answer | lower | trim }}", PROSE, {"answer": "  PARIS "}, "paris"),
        ("{{ sample.output_json | tojson }}", Attempt('["é", 2]'), {}, '["é", 2]'),
        ("{% if sample.output_json is defined %}json{% else %}prose{% endif %}", PROSE, {}, "prose"),
        ("{% if sample.output_json is defined %}json{% else %}prose{% endif %}", JSON_ANSWER, {}, "json"),
        ("{{ item.n * 2 + 1 }} {{ 2 ** 10 }} {{ 7 % 3 }} {{ item.n ~ '!' }}", PROSE, {"n": 4}, "9 1024 1 4!"),
        ("{{ 'ab' * 3 }}", PROSE, {}, "ababab"),
    ],
)
def test_templates_render_the_sample_and_the_item(template, attempt, item, rendered) -> None:
    check_template(template, item)
    assert render(template, Sample.of(attempt), item) == rendered


@pytest.mark.parametrize(
    ("template", "attempt", "reason"),
    [
        ("{{ sample.output_json.email }}", PROSE, "the answer is not the JSON the grader reads"),
        ("{{ sample.output_json }}", PROSE, "the answer is not the JSON the grader reads"),
        ("{% if sample.output_json.email %}x{% endif %}", PROSE, "the answer is not the JSON the grader reads"),
        ("{{ sample.output_json.phone }}", JSON_ANSWER, "the answer lacks what the grader's template reads"),
        ("{{ sample.output_tools[0].function.name }}", PROSE, "the answer lacks what the grader's template reads"),
        ("{{ sample.output_json.email + 1 }}", JSON_ANSWER, "takes numbers"),
        ("{{ sample.output_json | tojson }}", PROSE, "the answer is not the JSON the grader reads"),
    ],
)
def test_a_template_that_reads_what_the_answer_lacks_fails_on_that_answer(template, attempt, reason) -> None:
    check_template(template, {})  # not the spec's fault: it is read
    with pytest.raises(TemplateFailure, match=reason):
        render(template, Sample.of(attempt), {})


@pytest.mark.parametrize(
    ("template", "item", "reason"),
    [
        ("{{ item.reference }}", {"answer": "x"}, "reads item.reference, which the spec's `item` does not have"),
        ("{{ item.rows[2] }}", {"rows": [1, 2]}, r"reads item.rows\[2\]"),
        ("{{ item.a.b.c }}", {"a": {"b": {}}}, "reads item.a.b.c"),
        ("{{ item.keys }}", {"a": 1}, "reads item.keys"),
        ("{{ reference }}", {}, "reads `item` and `sample` only"),
        ("{{ sample.choices[0] }}", {}, "`sample` has output_text, output_json, output_tools, not 'choices'"),
        ("{{ sample.output_text", {}, "not valid"),
        ("{% for row in item.rows %}{{ row }}{% endfor %}", {"rows": []}, "not {% for %}"),
        ("{% set x = 1 %}", {}, r"not {% set %}"),
        ("{% macro m() %}{% endmacro %}", {}, r"not {% macro %}"),
        ("{{ sample.output_text.upper() }}", {}, "not a call"),
        ("{{ range(10) }}", {}, "not a call"),
        ("{{ [item.a] }}", {"a": 1}, "not a list"),
        ("{{ item.a | center(1000000000) }}", {"a": "x"}, "No filter named 'center'"),
        ("{% include 'other' %}", {}, r"not {% include %}"),
        ("{{ item.rows | tojson(indent=100000000) }}", {"rows": [1]}, "not a keyword argument"),
        ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", {}, "too deeply"),
    ],
)
def test_a_template_the_grader_cannot_run_is_refused_when_read(template, item, reason) -> None:
    with pytest.raises(ValueError, match=reason):
        check_template(template, item)


def test_a_path_with_a_computed_key_is_checked_up_to_that_key() -> None:
    check_template("{{ item.rows[sample.output_text] }}", {"rows": {}})
    with pytest.raises(ValueError, match="reads item.table"):
        check_template("{{ item.table[sample.output_text].x }}", {"rows": {}})


@pytest.mark.parametrize(
    ("template", "item", "wall"),
    [
        ("{{ 'x' * 100000000 }}", {}, f"longer than {MAX_RENDERED_CHARS} characters"),
        ("{{ item.text * 3 }}", {"text": "x" * 30_000}, f"longer than {MAX_RENDERED_CHARS} characters"),
        ("{{ item.text + item.text + item.text }}", {"text": "x" * 30_000}, "longer than"),
        ("{{ item.text ~ item.text ~ item.text }}", {"text": "x" * 30_000}, "longer than"),
        ("{{ 10 ** 100000000 }}", {}, f"more than {MAX_INTEGER_BITS} bits"),
        ("{{ 9 ** (9 ** 9) }}", {}, f"more than {MAX_INTEGER_BITS} bits"),
        ("{{ item.big * item.big }}", {"big": 2**4000}, f"more than {MAX_INTEGER_BITS} bits"),
        ("{{ '%999999999s' % 1 }}", {}, "takes numbers"),
        ("{{ item.rows * 100000000 }}", {"rows": [1]}, "text times a whole number"),
        ("{{ item.rows + item.rows }}", {"rows": [1]}, "takes numbers or text"),
        ("{{ item.rows | tojson(100000000) }}", {"rows": [1, 2]}, "takes 1 positional argument"),  # no indent
        # no single value over the limit, but the rendered text is
        ("{{ item.text }}{{ item.text }}{{ item.text }}", {"text": "x" * 30_000},
         f"renders more than {MAX_RENDERED_CHARS} characters"),
    ],
)
def test_what_a_template_builds_is_bounded(template, item, wall) -> None:
    check_template(template, item)
    with pytest.raises(TemplateFailure, match=wall):
        render(template, Sample.of(PROSE), item)


def test_the_sandbox_keeps_python_internals_out_of_reach() -> None:
    template = "{{ sample.output_text.__class__.__mro__ }}"
    check_template(template, {})
    with pytest.raises(TemplateFailure):
        render(template, Sample.of(PROSE), {})
    with pytest.raises(ValueError, match="reads item.__class__"):
        check_template("{{ item.__class__ }}", {"a": 1})


def test_output_json_is_read_whenever_the_content_is_json() -> None:
    assert Sample.of(Attempt(' {"a": [1, 2.5, null]} ')).output_json == {"a": [1, 2.5, None]}
    assert Sample.of(Attempt("42")).output_json == 42
    with pytest.raises(TemplateFailure, match="not the JSON"):
        render("{{ sample.output_json }}", Sample.of(Attempt("NaN")), {})  # not standard JSON
