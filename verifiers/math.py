"""`math`: the answer must be a number equal to the expected one (exactly, or within `tolerance`).

Numbers are read exactly (fractions.Fraction), so "0.5", ".5", "1/2" and "2/4" are all one value.
Accepted forms: an optional sign, digits with an optional decimal part ("3", "3.25", ".5"),
thousands separators only when well-formed ("1,000", "12,345.5"; "1,00" is not a number, so "1,2,3"
reads as three numbers), and a fraction of two such numbers ("3/4", "-1.5/2"). No exponents,
percentages, LaTeX or words. The answer is the last `<answer>…</answer>` when `extract_answer` and
there is one, else the content; of that text, the whole if it is a number, else its last number.
With `extract_answer` false the whole content must be the number. Numbers longer than 100
characters are refused.

The detail never repeats the expected value (see `exact`).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Literal

from pydantic import Field, field_validator

from verifiers.answer import last_answer
from verifiers.base import Attempt, SpecBase, TaskContext, Verdict, quote
from verifiers.registry import VerifierType, register

MAX_NUMBER_CHARS = 100

_UNSIGNED = r"(?:(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?|\.[0-9]+)"
_NUMBER = re.compile(rf"[+-]?{_UNSIGNED}(?:[ \t]*/[ \t]*{_UNSIGNED})?")


def parse_number(text: str) -> Fraction | None:
    """The exact value of `text` when the whole of it is one number, else None."""
    text = text.strip()
    if len(text) > MAX_NUMBER_CHARS or not _NUMBER.fullmatch(text):
        return None
    numerator, _, denominator = re.sub(r"[\s,]", "", text).partition("/")
    value = Fraction(numerator)
    if denominator:
        divisor = Fraction(denominator)
        return None if divisor == 0 else value / divisor
    return value


def last_number(text: str) -> str | None:
    last = None
    for match in _NUMBER.finditer(text):
        last = match.group()
    return last


class MathSpec(SpecBase):
    type: Literal["math"]
    expected: str
    extract_answer: bool = True
    tolerance: float = Field(default=0, ge=0, allow_inf_nan=False)

    @field_validator("expected")
    @classmethod
    def _is_number(cls, expected: str) -> str:
        if parse_number(expected) is None:
            raise ValueError(f"{expected!r} is not a number (e.g. 42, -0.5, 3/4, 1,000)")
        return expected

    def judge(self, attempt: Attempt, context: TaskContext) -> Verdict:
        text = (attempt.content or "").strip()
        if self.extract_answer:
            tagged = last_answer(text)
            text = text if tagged is None else tagged
        number = text
        if self.extract_answer and parse_number(text) is None:
            number = last_number(text) or ""
        answer = parse_number(number)
        if answer is None:
            return Verdict(False, f"the answer {quote(text)} is not a number")
        expected = parse_number(self.expected)
        assert expected is not None  # checked when the spec was parsed
        if abs(answer - expected) <= Fraction(self.tolerance):
            return Verdict(True)
        return Verdict(False, f"the answer {quote(number.strip())} is not the expected value")


register(VerifierType(
    MathSpec, judge=MathSpec.judge, task_kind="math",
    summary="the answer is numerically equal (`0.5` == `1/2`)",
))
