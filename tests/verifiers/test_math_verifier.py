from __future__ import annotations

import pytest
from pydantic import ValidationError

from verifiers import Attempt, MathSpec, TaskContext, parse_spec

# (spec options, content, success, detail fragment)
CASES = [
    ({"expected": "0.5"}, "1/2", True, ""),
    ({"expected": "1/2"}, ".5", True, ""),
    ({"expected": "1/2"}, "2/4", True, ""),
    ({"expected": "1/2"}, "0.50", True, ""),
    ({"expected": "1/2"}, "1 / 2", True, ""),
    ({"expected": "-3"}, "-3.0", True, ""),
    ({"expected": "3"}, "+3", True, ""),
    ({"expected": "1000"}, "1,000", True, ""),
    ({"expected": "1,234,567.5"}, "1234567.5", True, ""),
    ({"expected": "-3/4"}, "-0.75", True, ""),
    ({"expected": "1/3"}, "0.333", False, 'the answer "0.333" is not the expected value'),
    ({"expected": "1/3", "tolerance": 0.001}, "0.333", True, ""),
    ({"expected": "1/3", "tolerance": 0.0001}, "0.333", False, "not the expected value"),
    ({"expected": "2"}, "3", False, "not the expected value"),
    # Extraction: the <answer>, else the last number.
    ({"expected": "42"}, "Adding them up gives 40 + 2 = 42.", True, ""),
    ({"expected": "42"}, "It is 42, or maybe 41.", False, '"41" is not the expected value'),
    ({"expected": "42"}, "<answer>42</answer> though 41 was close", True, ""),
    ({"expected": "42"}, "<answer>x = 42</answer>", True, ""),
    ({"expected": "1/2"}, "<answer>1/2</answer>", True, ""),
    ({"expected": "42"}, "<answer>forty-two</answer>", False, 'the answer "forty-two" is not a number'),
    ({"expected": "42"}, "<answer></answer> 42", False, "is not a number"),
    ({"expected": "42"}, "I do not know", False, "is not a number"),
    ({"expected": "42"}, None, False, "is not a number"),
    ({"expected": "123"}, "1,2,3", False, '"3" is not the expected value'),
    ({"expected": "5"}, "5%", True, ""),  # the last number is 5
    ({"expected": "1000"}, "1e3", False, '"3" is not the expected value'),
    ({"expected": "1"}, "1/0", False, "is not a number"),
    ({"expected": "7"}, "9" * 10_000, False, "is not a number"),
    # Without extraction, the whole content must be the number.
    ({"expected": "42", "extract_answer": False}, " 42\n", True, ""),
    ({"expected": "42", "extract_answer": False}, "The answer is 42", False, "is not a number"),
    ({"expected": "42", "extract_answer": False}, "<answer>42</answer>", False, "is not a number"),
]


@pytest.mark.parametrize(("options", "content", "success", "detail"), CASES)
def test_math_verdicts(options, content, success, detail) -> None:
    spec = parse_spec({"type": "math", **options})
    assert isinstance(spec, MathSpec)
    verdict = spec.judge(Attempt(content=content), TaskContext())
    assert verdict.success is success, verdict.detail
    assert detail in verdict.detail


def test_the_detail_does_not_reveal_the_expected_value() -> None:
    spec = parse_spec({"type": "math", "expected": "8675309"})
    assert "8675309" not in spec.judge(Attempt(content="<answer>12</answer>"), TaskContext()).detail


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"type": "math", "expected": "forty-two"}, "expected"),
        ({"type": "math", "expected": "1,2"}, "expected"),
        ({"type": "math", "expected": "1/0"}, "expected"),
        ({"type": "math", "expected": "1e3"}, "expected"),
        ({"type": "math", "expected": "1" * 101}, "expected"),
        ({"type": "math", "expected": 42}, "expected"),
        ({"type": "math"}, "expected"),
        ({"type": "math", "expected": "1", "tolerance": -0.1}, "tolerance"),
        ({"type": "math", "expected": "1", "tolerance": float("inf")}, "tolerance"),
    ],
)
def test_invalid_specs_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_spec(data)
    assert any(field in error["loc"] for error in raised.value.errors())
