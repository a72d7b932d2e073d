"""`tool_call`: the produced tool calls must be exactly the expected ones (APIGen-style exact match).

Arguments are compared as JSON values with their types: 1 ≠ "1", true ≠ 1, and 1 ≠ 1.0 unless
`numeric_tolerance` is set (then any two numbers within it are equal). Objects compare by key set
(order never matters), arrays element by element. Calls match as a multiset — in any order unless
`ordered` — so duplicated calls must be produced as often as expected.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from verifiers.base import (
    Attempt,
    SpecBase,
    TaskContext,
    UnreadableOutput,
    Verdict,
    quote,
)
from verifiers.json_text import parse_arguments

# Bounds on the client's spec, which also bound the recursion of the comparison and the matching.
MAX_EXPECTED_CALLS = 128
MAX_EXPECTED_DEPTH = 64


class ExpectedCall(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    arguments: dict[str, Any]

    @field_validator("arguments")
    @classmethod
    def _not_too_deep(cls, arguments: dict[str, Any]) -> dict[str, Any]:
        if nesting_depth(arguments) > MAX_EXPECTED_DEPTH:
            raise ValueError(f"arguments are nested deeper than {MAX_EXPECTED_DEPTH} levels")
        return arguments


class ToolCallSpec(SpecBase):
    type: Literal["tool_call"]
    expected: list[ExpectedCall] = Field(min_length=1, max_length=MAX_EXPECTED_CALLS)
    ordered: bool = False
    numeric_tolerance: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    @property
    def task_kind(self) -> str:
        return "function_calling"

    def judge(self, attempt: Attempt, context: TaskContext) -> Verdict:
        produced = attempt.tool_calls
        if len(produced) != len(self.expected):
            return Verdict(False, f"expected {_calls(len(self.expected))}, got {len(produced)}")
        try:
            arguments = [parse_arguments(call) for call in produced]
        except UnreadableOutput as error:
            return Verdict(False, str(error))
        calls = [(call.name, args) for call, args in zip(produced, arguments, strict=True)]
        mismatch = self._ordered_mismatch(calls) if self.ordered else self._unordered_mismatch(calls)
        return Verdict(mismatch is None, mismatch or "")

    def _call_mismatch(self, expected: ExpectedCall, name: str, arguments: dict[str, Any]) -> str | None:
        if name != expected.name:
            return f"called {name}, expected {expected.name}"
        difference = value_difference(expected.arguments, arguments, "", self.numeric_tolerance)
        return None if difference is None else f"{name}: {difference}"

    def _ordered_mismatch(self, calls: list[tuple[str, dict[str, Any]]]) -> str | None:
        for position, (expected, (name, arguments)) in enumerate(zip(self.expected, calls, strict=True), start=1):
            mismatch = self._call_mismatch(expected, name, arguments)
            if mismatch is not None:
                return f"call {position}: {mismatch}" if len(calls) > 1 else mismatch
        return None

    def _unordered_mismatch(self, calls: list[tuple[str, dict[str, Any]]]) -> str | None:
        # Matching, not first-fit: with a tolerance, "equal" is not transitive, so greedy pairing can miss.
        fits = [[self._call_mismatch(expected, *call) is None for call in calls] for expected in self.expected]
        pairs = maximum_matching(fits)
        unmatched_expected = [e for i, e in enumerate(self.expected) if i not in pairs]
        if not unmatched_expected:
            return None
        unmatched_calls = [call for j, call in enumerate(calls) if j not in pairs.values()]
        missing = unmatched_expected[0]
        # Explain the miss against a leftover call of the same name when there is one.
        for name, arguments in unmatched_calls:
            if name == missing.name:
                return self._call_mismatch(missing, name, arguments)
        others = ", ".join(sorted({name for name, _ in unmatched_calls}))
        return f"no call to {missing.name} (unexpected: {others})"


def value_difference(expected: Any, actual: Any, path: str, tolerance: float | None) -> str | None:
    """How `actual` differs from `expected` as JSON values, or None when they are equal."""
    where = f"argument '{path}'"
    if isinstance(expected, dict) and isinstance(actual, dict):
        return _object_difference(expected, actual, path, tolerance)
    if isinstance(expected, list) and isinstance(actual, list):
        if len(actual) != len(expected):
            return f"{where} has {len(actual)} items, expected {len(expected)}"
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            difference = value_difference(want, got, f"{path}[{index}]", tolerance)
            if difference is not None:
                return difference
        return None
    if _scalars_equal(expected, actual, tolerance):
        return None
    # The expected value stays secret: a retry that could copy it would pass without having learned anything.
    return f"{where} is {quote(actual)}, which is wrong"


def _object_difference(expected: dict, actual: dict, path: str, tolerance: float | None) -> str | None:
    def name(key: str) -> str:
        return f"'{path}.{key}'" if path else f"'{key}'"

    for key in expected:
        if key not in actual:
            return f"missing argument {name(key)}"
    for key in actual:
        if key not in expected:
            return f"unexpected argument {name(key)}"
    for key, want in expected.items():
        difference = value_difference(want, actual[key], f"{path}.{key}" if path else key, tolerance)
        if difference is not None:
            return difference
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _scalars_equal(expected: Any, actual: Any, tolerance: float | None) -> bool:
    if _is_number(expected) and _is_number(actual):
        if tolerance is None:
            return type(expected) is type(actual) and expected == actual
        try:
            # Fractions: exact, and no OverflowError for integers beyond the range of floats.
            return abs(Fraction(expected) - Fraction(actual)) <= Fraction(tolerance)
        except (OverflowError, ValueError):  # an infinity or NaN has no Fraction
            return expected == actual
    return type(expected) is type(actual) and expected == actual


def nesting_depth(value: Any) -> int:
    """How many arrays/objects deep a JSON value goes, computed without recursion."""
    depth, level = 0, [value]
    while level:
        containers = [v for v in level if isinstance(v, dict | list)]
        if not containers:
            break
        depth += 1
        level = [child for c in containers for child in (c.values() if isinstance(c, dict) else c)]
    return depth


def maximum_matching(fits: list[list[bool]]) -> dict[int, int]:
    """A maximum bipartite matching (Kuhn's algorithm): row index → column index, for rows that fit."""
    column_owner: dict[int, int] = {}

    def assign(row: int, seen: set[int]) -> bool:
        for column, fit in enumerate(fits[row]):
            if fit and column not in seen:
                seen.add(column)
                if column not in column_owner or assign(column_owner[column], seen):
                    column_owner[column] = row
                    return True
        return False

    for row in range(len(fits)):
        assign(row, set())
    return {row: column for column, row in column_owner.items()}


def _calls(count: int) -> str:
    return f"{count} call" if count == 1 else f"{count} calls"
