"""`tool_call`: the produced tool calls must be the expected ones (APIGen exact match, BFCL's possible answers).

Each expected call names a function and gives its arguments as patterns (`verifiers.argument_patterns`):
literal JSON values, `{"$one_of": [...]}` for several acceptable values, `"$optional": true` for an
argument that may be left out, the same rules inside objects and arrays. `expected: []` means that
no call is the right answer (BFCL's irrelevance categories): only an answer without calls passes.

Values compare as BFCL's AST checker compares them, by where they sit (`argument_patterns.Place`,
from ast_checker.py's `type_checker`, `string_checker`, `list_checker`, `dict_checker`): an argument
must have the type the offered tool's schema gives it (where it is a `number`, 5 equals 5.0; where
an `integer`, 70.0 is refused; untyped, the expected value's JSON type: 1 ≠ 1.0, true ≠ 1), and so
must an array argument's items (with no integer allowed for a `number`); inside an object, at any
depth, values compare with Python's `==` (50.0 equals 50, 1 equals true). `numeric_tolerance` makes
any two numbers within it equal. `strings: "normalized"` compares strings the way BFCL does, where
BFCL does (case and " ,./-_*^" ignored down to an object argument's values and an array argument's
items; exact deeper); `"exact"` is the default. An optional argument given as `[]` or `""` may match
BFCL's optional mark `""`. The rules in full are in `verifiers.argument_patterns`; the differences
that remain are listed in docs/guides/verifiers.md, "Where `tool_call` differs from BFCL".

Several calls match as a multiset — in any order unless `ordered` — through a maximum bipartite
matching, so duplicated calls must be produced as often as expected. BFCL's parallel checker pairs
greedily instead (ast_checker.py, `parallel_function_checker_no_order`); with `$one_of` a greedy
pairing can miss a valid assignment that the matching finds, so R3 passes a superset of what BFCL passes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from verifiers.argument_patterns import Comparison, arguments_difference, arguments_problem
from verifiers.base import (
    Attempt,
    ClientInput,
    SpecBase,
    TaskContext,
    UnreadableOutput,
    Verdict,
)
from verifiers.json_text import parse_arguments
from verifiers.registry import VerifierType, register
from verifiers.schema import MAX_JSON_DEPTH, nesting_depth
from verifiers.tool_schema import offered_functions

# Bounds on the client's spec, which also bound the recursion of the comparison and the matching.
MAX_EXPECTED_CALLS = 128


class ExpectedCall(ClientInput):
    model_config = ConfigDict(frozen=True)

    name: str
    arguments: dict[str, Any]  # argument name → pattern

    @field_validator("arguments")
    @classmethod
    def _well_formed(cls, arguments: dict[str, Any]) -> dict[str, Any]:
        if nesting_depth(arguments) > MAX_JSON_DEPTH:
            raise ValueError(f"arguments are nested deeper than {MAX_JSON_DEPTH} levels")
        problem = arguments_problem(arguments)
        if problem is not None:
            raise ValueError(problem)
        return arguments


class ToolCallSpec(SpecBase):
    type: Literal["tool_call"]
    expected: list[ExpectedCall] = Field(max_length=MAX_EXPECTED_CALLS)
    ordered: bool = False
    numeric_tolerance: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    strings: Literal["exact", "normalized"] = "exact"

    def judge(self, attempt: Attempt, context: TaskContext) -> Verdict:
        produced = attempt.tool_calls
        if not self.expected:
            if produced:
                names = ", ".join(sorted({call.name for call in produced}))
                return Verdict(False, f"expected no tool call, got {_calls(len(produced))} ({names})")
            return Verdict(True)
        if len(produced) != len(self.expected):
            return Verdict(False, f"expected {_calls(len(self.expected))}, got {len(produced)}")
        try:
            arguments = [parse_arguments(call) for call in produced]
        except UnreadableOutput as error:
            return Verdict(False, str(error))
        calls = [(call.name, args) for call, args in zip(produced, arguments, strict=True)]
        judge = _CallJudge(self, context)
        mismatch = judge.ordered_mismatch(calls) if self.ordered else judge.unordered_mismatch(calls)
        return Verdict(mismatch is None, mismatch or "")


class _CallJudge:
    """Compares produced calls with a spec's expected ones, typing numbers by the request's tools."""

    def __init__(self, spec: ToolCallSpec, context: TaskContext) -> None:
        self.expected = spec.expected
        self.comparison = Comparison(normalize_strings=spec.strings == "normalized", tolerance=spec.numeric_tolerance)
        self.schemas = {name: function.parameters for name, function in offered_functions(context.tools).items()}

    def call_mismatch(self, expected: ExpectedCall, name: str, arguments: dict[str, Any]) -> str | None:
        if name != expected.name:
            return f"called {name}, expected {expected.name}"
        difference = arguments_difference(expected.arguments, arguments, self.schemas.get(name), self.comparison)
        return None if difference is None else f"{name}: {difference}"

    def ordered_mismatch(self, calls: list[tuple[str, dict[str, Any]]]) -> str | None:
        for position, (expected, (name, arguments)) in enumerate(zip(self.expected, calls, strict=True), start=1):
            mismatch = self.call_mismatch(expected, name, arguments)
            if mismatch is not None:
                return f"call {position}: {mismatch}" if len(calls) > 1 else mismatch
        return None

    def unordered_mismatch(self, calls: list[tuple[str, dict[str, Any]]]) -> str | None:
        # A matching, not first-fit: with alternatives or a tolerance, one call can fit several expected ones.
        fits = [[self.call_mismatch(expected, *call) is None for call in calls] for expected in self.expected]
        pairs = maximum_matching(fits)
        unmatched_expected = [e for i, e in enumerate(self.expected) if i not in pairs]
        if not unmatched_expected:
            return None
        unmatched_calls = [call for j, call in enumerate(calls) if j not in pairs.values()]
        missing = unmatched_expected[0]
        # Explain the miss against a leftover call of the same name when there is one.
        for name, arguments in unmatched_calls:
            if name == missing.name:
                return self.call_mismatch(missing, name, arguments)
        others = ", ".join(sorted({name for name, _ in unmatched_calls}))
        return f"no call to {missing.name} (unexpected: {others})"


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


register(VerifierType(
    ToolCallSpec, judge=ToolCallSpec.judge, task_kind="function_calling",
    summary="the calls match the `expected` ones (`[{name, arguments}]`), whose arguments may hold several "
            "acceptable values, optional arguments and nested rules; `expected: []`: no call is right "
            "([details](#function-calling-specs-tool_call))",
))
