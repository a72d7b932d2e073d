from __future__ import annotations

import pytest

from verifiers import Attempt, ExactSpec, TaskContext, parse_spec

# (spec options, content, success, detail fragment)
CASES = [
    ({"expected": "Paris"}, "Paris", True, ""),
    ({"expected": "Paris"}, "  Paris \n", True, ""),
    ({"expected": "New York"}, "New \n\t York", True, ""),
    ({"expected": "Paris"}, "paris", False, 'the answer "paris" is not the expected answer'),
    ({"expected": "Paris", "ignore_case": True}, "PARIS", True, ""),
    ({"expected": "Straße", "ignore_case": True}, "STRASSE", True, ""),  # casefold, not lower
    ({"expected": "Paris", "normalize_whitespace": False}, "Paris ", False, "not the expected answer"),
    ({"expected": "New York", "normalize_whitespace": False}, "New  York", False, "not the expected answer"),
    ({"expected": "New  York", "normalize_whitespace": False}, "New  York", True, ""),
    ({"expected": "Paris"}, "The answer is <answer>Paris</answer>", False, "not the expected answer"),
    ({"expected": "Paris", "extract_answer": True}, "I think <answer>Lyon</answer>, no: <answer> Paris </answer>",
     True, ""),
    ({"expected": "Paris", "extract_answer": True}, "<answer>Paris</answer> or <answer>Lyon</answer>", False,
     '"Lyon" is not'),
    ({"expected": "Paris", "extract_answer": True}, "Paris", False, "no <answer>…</answer> in the content"),
    ({"expected": "Paris", "extract_answer": True}, "<answer>Paris", False, "no <answer>…</answer>"),
    ({"expected": ""}, None, True, ""),
    ({"expected": "Paris"}, None, False, "not the expected answer"),
]


@pytest.mark.parametrize(("options", "content", "success", "detail"), CASES)
def test_exact_verdicts(options, content, success, detail) -> None:
    spec = parse_spec({"type": "exact", **options})
    assert isinstance(spec, ExactSpec)
    verdict = spec.judge(Attempt(content=content), TaskContext())
    assert verdict.success is success, verdict.detail
    assert detail in verdict.detail


def test_the_detail_does_not_reveal_the_expected_answer() -> None:
    spec = parse_spec({"type": "exact", "expected": "Canberra"})
    assert "Canberra" not in spec.judge(Attempt(content="Sydney"), TaskContext()).detail
