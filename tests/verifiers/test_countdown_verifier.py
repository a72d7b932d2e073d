from __future__ import annotations

import operator
import time
from datetime import timedelta
from fractions import Fraction
from math import floor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from verifiers import Attempt, CountdownSpec, TaskContext, Verdict, parse_spec


def judge(numbers: list[int], target: int, content: str | None) -> Verdict:
    spec = parse_spec({"type": "countdown", "numbers": numbers, "target": target})
    assert isinstance(spec, CountdownSpec)
    return spec.judge(Attempt(content=content), TaskContext())


# (numbers, target, content, success, detail fragment)
CASES = [
    ([3, 5, 3], 24, "<answer>(3+5)*3</answer>", True, ""),
    ([3, 5, 3], 24, "<answer>3*(5+3)</answer>", True, ""),
    ([3, 5, 3], 24, "  <answer>\n (3 + 5)\n * 3 \n</answer>  ", True, ""),
    ([3, 5, 3], 25, "<answer>(3+5)*3</answer>", False, "(3+5)*3 equals 24, not 25"),
    # Division is exact: intermediate fractions reach the target.
    ([1, 3, 4, 6], 24, "<answer>6/(1-3/4)</answer>", True, ""),
    ([1, 5, 5, 5], 24, "<answer>5*(5-1/5)</answer>", True, ""),
    ([2, 3], 1, "<answer>2/3</answer>", False, "2/3 equals 2/3, not 1"),
    ([1, 1, 3, 4], 12, "<answer>3*4/(1-1)</answer>", False, "divides by zero"),
    # The numbers: each exactly as often as given.
    ([3, 5], 9, "<answer>3+3+3</answer>", False, "must use exactly the numbers [3, 5]: extra [3, 3]; missing [5]"),
    ([3, 5, 7], 8, "<answer>3+5</answer>", False, "missing [7]"),
    ([3, 5], 15, "<answer>3*5*1</answer>", False, "extra [1]"),
    ([3, 5], 35, "<answer>35</answer>", False, "extra [35]; missing [3, 5]"),
    ([24], 24, "<answer>24</answer>", True, ""),
    ([3, 5], -2, "<answer>3-5</answer>", True, ""),
    # Only integer literals, + - * / and parentheses.
    ([3, 5], 8, "<answer>3.0+5</answer>", False, "found '.'"),
    ([3, 5], 8, "<answer>3 + 5.</answer>", False, "found '.'"),
    ([2, 3], 8, "<answer>2**3</answer>", False, "operator ** is not allowed"),
    ([7, 2], 3, "<answer>7//2</answer>", False, "operator // is not allowed"),
    ([7, 2], 1, "<answer>7%2</answer>", False, "found '%'"),
    ([3, 5], 8, "<answer>__import__('os').system('true')</answer>", False, "found '_'"),
    ([3, 5], 8, "<answer>int(3)+5</answer>", False, "found 'i'"),
    ([3, 5], 15, "<answer>(3)(5)</answer>", False, "implicit multiplication"),
    ([3, 5], 15, "<answer>3 (5)</answer>", False, "implicit multiplication"),
    ([3, 5], 8, "<answer>()</answer>", False, "'()' is not allowed"),
    ([16], 16, "<answer>0x10</answer>", False, "found 'x'"),
    ([10], 10, "<answer>1_0</answer>", False, "found '_'"),
    ([3, 5], 8, "<answer>03+5</answer>", False, "not a valid expression"),
    ([3, 5], 8, "<answer>3+</answer>", False, "not a valid expression"),
    ([3, 5], 8, "<answer>3 5</answer>", False, "not a valid expression"),
    ([3, 5], 8, "<answer></answer>", False, "not a valid expression"),
    ([3, 5], 8, "<answer>\uff13+5</answer>", False, "found '\uff13'"),  # a fullwidth digit
    # Unary minus (and plus) is refused: the numbers are used as given.
    ([3, 5], 2, "<answer>-3+5</answer>", False, "unary minus"),
    ([3, 5], 8, "<answer>+3+5</answer>", False, "unary minus"),
    ([3, 5], 8, "<answer>3--5</answer>", False, "unary minus"),
    # Where the answer is: the last <answer>, else the last expression in the text; of an equation, its
    # side with the numbers.
    ([3, 5], 8, "<answer>3*5</answer> no wait <answer>3+5</answer>", True, ""),
    ([3, 5], 8, "<answer>3+5</answer> no wait <answer>3*5</answer>", False, "3*5 equals 15, not 8"),
    ([3, 5, 3], 24, "(3+5)*3 = 24", True, ""),
    ([3, 5, 3], 24, "24 = (3+5)*3", True, ""),
    ([3, 5, 3], 24, "<answer>(3+5)*3 = 24</answer>", True, ""),
    ([3, 5, 3], 24, "Let me think.\nSo (3 + 5) * 3 = 24.\nThe answer is 24.", True, ""),
    ([3, 5, 3], 24, "First 3 + 5 = 8, then 8 * 3 = 24", False, "extra [8]"),
    ([24], 24, "It is 24", True, ""),
    ([3, 5], 8, "I do not know.", False, "no expression found"),
    ([3, 5], 8, None, False, "no expression found"),
    ([3, 5], 8, "<answer>3+5", True, ""),  # no complete tag: the text's last expression
]


@pytest.mark.parametrize(("numbers", "target", "content", "success", "detail"), CASES)
def test_countdown_verdicts(numbers, target, content, success, detail) -> None:
    verdict = judge(numbers, target, content)
    assert verdict.success is success, verdict.detail
    assert detail in verdict.detail


ADVERSARIAL = [
    ("<answer>" + "1+" * 5000 + "1</answer>", "too long"),
    ("(" * 500 + "1" + ")" * 500, "too long"),
    ("<answer>" + "(" * 500 + "1" + ")" * 500 + "</answer>", "too long"),
    ("<answer>" + "(" * 40 + "1" + ")" * 40 + "</answer>", "nested deeper than 32"),
    ("<answer>" + "9" * 10_000 + "</answer>", "too long"),
    ("<answer>" * 20_000, "no expression found"),
    ("<answer>1</answer>" * 5_000, "missing [2]"),
    ("</answer>" * 20_000 + "<answer>", "no expression found"),
    ("1+" * 50_000, "too long"),
    ("= " * 50_000, "no expression found"),
    ("(" * 100_000, "no expression found"),
    ("1" * 100_000, "too long"),
    ("x" * 1_000_000, "no expression found"),
]


@pytest.mark.parametrize(("content", "detail"), ADVERSARIAL, ids=[f"{c[:12]}…{len(c)}" for c, _ in ADVERSARIAL])
def test_adversarial_answers_fail_fast(content: str, detail: str) -> None:
    started = time.perf_counter()
    verdict = judge([1, 2], 3, content)
    assert time.perf_counter() - started < 0.5
    assert not verdict.success
    assert detail in verdict.detail


def test_limits_are_named() -> None:
    assert "too long" in judge([1], 1, "<answer>" + "1+" * 150 + "1</answer>").detail
    assert "nested deeper than 32" in judge([1], 1, "<answer>" + "(" * 33 + "1" + ")" * 33 + "</answer>").detail
    assert judge([1], 1, "<answer>" + "(" * 32 + "1" + ")" * 32 + "</answer>").success


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"type": "countdown", "target": 3}, "numbers"),
        ({"type": "countdown", "numbers": [1, 2]}, "target"),
        ({"type": "countdown", "numbers": [], "target": 3}, "numbers"),
        ({"type": "countdown", "numbers": list(range(11)), "target": 3}, "numbers"),
        ({"type": "countdown", "numbers": [10**6 + 1], "target": 3}, "numbers"),
        ({"type": "countdown", "numbers": [-1, 4], "target": 3}, "numbers"),
        ({"type": "countdown", "numbers": [1.5], "target": 3}, "numbers"),
        ({"type": "countdown", "numbers": [1, 2], "target": 3.5}, "target"),
    ],
)
def test_invalid_specs_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_spec(data)
    assert any(field in error["loc"] for error in raised.value.errors())


# --- properties ---------------------------------------------------------------------------------

OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}



@st.composite
def expressions(draw: st.DrawFn) -> tuple[list[int], str, Fraction | None]:
    """A random fully parenthesised expression over random numbers, and its exact value (None: ÷0)."""
    numbers = draw(st.lists(st.integers(0, 60), min_size=1, max_size=6))

    def build(leaves: list[int]) -> tuple[str, Fraction | None]:
        if len(leaves) == 1:
            return str(leaves[0]), Fraction(leaves[0])
        split = draw(st.integers(1, len(leaves) - 1))
        (left, a), (right, b) = build(leaves[:split]), build(leaves[split:])
        symbol = draw(st.sampled_from(sorted(OPERATORS)))
        divides_by_zero = a is None or b is None or (symbol == "/" and b == 0)
        return f"({left}{symbol}{right})", None if divides_by_zero else OPERATORS[symbol](a, b)

    text, value = build(numbers)
    return draw(st.permutations(numbers)), text, value


@settings(max_examples=200, deadline=None)
@given(expression=expressions())
def test_random_expressions_are_judged_by_their_exact_value(expression) -> None:
    numbers, text, value = expression
    content = f"<answer>{text}</answer>"
    if value is None:
        assert "divides by zero" in judge(numbers, 0, content).detail
    elif value.denominator == 1:
        assert judge(numbers, int(value), content).success
        assert not judge(numbers, int(value) + 1, content).success
    else:
        assert not judge(numbers, floor(value), content).success


@settings(max_examples=300, deadline=timedelta(milliseconds=200))
@given(
    content=st.text(max_size=2000)
    | st.text(alphabet="0123456789+-*/()= \n.<>answer/", max_size=2000)
    | st.lists(st.sampled_from(["<answer>", "</answer>", "(", ")", "1", "+", "*", "/", "=", "-", "\n"]),
               max_size=400).map("".join)
)
def test_any_text_is_judged_quickly_without_raising(content: str) -> None:
    verdict = judge([1, 2, 3], 6, content)
    assert isinstance(verdict, Verdict)
    assert verdict.success == (verdict.detail == "")
