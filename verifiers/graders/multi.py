"""`multi`: OpenAI's multigrader, a formula (`calculate_output`) over the scores of named sub-graders.

As OpenAI's graders guide defines it (https://platform.openai.com/docs/guides/graders, "Multigraders"):
`graders` is an object mapping a name to a grader of any other type (a multigrader may not nest
another; the `openai` package's `MultiGrader` types `graders` as one grader, but the guide's examples
and the API take the object), and `calculate_output` computes the score from the sub-graders' scores,
each read by its name. The formula may use numbers, the sub-graders' names, parentheses, the
operators `+ - * /` and `^` (power, as the guide writes it, binding tighter than `*` and right to
left; `**` is read as power too) and the guide's functions `min`, `max`, `abs`, `floor`, `ceil`,
`exp`, `sqrt`, `log` (natural). It is read with Python's `ast` into that grammar alone and evaluated
by a walker over it, never by `eval`; anything else it names is refused when the spec is read (a 400
naming `verifier.calculate_output`). Every value is a float, so no formula can build a huge integer.

R3's additions: the multigrader's `item` is what every sub-grader's templates read (a sub-grader
needs none of its own, and one it has must be the same); `pass_threshold` (default 0.5, the middle of
the scale: in the guide's own example an answer with the right email scores 0.5 to 1) decides whether
the answer is retried. The score is the formula's value clamped to [0, 1]; a formula that fails on
the scores (a division by zero, `log(0)`, an infinite value) scores 0, as OpenAI scores an invalid
grade. The sub-graders judge concurrently; if any of them cannot judge (an unjudged verdict), neither
can the multigrader. Its detail gives each sub-score, then the details of the sub-graders that failed.
"""

from __future__ import annotations

import ast
import asyncio
import math
from collections.abc import Callable, Mapping
from functools import reduce
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import ConfigDict, Field, GetCoreSchemaHandler, ValidationInfo, field_serializer, field_validator
from pydantic_core import CoreSchema

from verifiers.base import Attempt, JudgeUsage, TaskContext, Verdict
from verifiers.graders.common import DEFAULT_PASS_THRESHOLD, GraderSpec, PassThreshold
from verifiers.registry import VerifierNotAllowed, VerifierType, admit, register, verifier_types, verify

if TYPE_CHECKING:
    from verifiers.runtime import VerifierRuntime

MAX_FORMULA_CHARS = 500  # a formula nests at most this deep, well within Python's recursion limit

FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil, "exp": math.exp,
    "sqrt": math.sqrt, "log": math.log,
}
_ONE_ARGUMENT = frozenset(FUNCTIONS) - {"min", "max"}
_OPERATORS: dict[type, Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.Pow: lambda a, b: a**b,
}


class _SubGraders:
    """Pydantic reads an annotation marked with this as the union (on `type`) of every registered grader
    type but `multi`, when `MultiSpec`'s schema is built: on first use, once every type is registered."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        specs = tuple(kind.spec for kind in verifier_types()
                      if issubclass(kind.spec, GraderSpec) and kind.spec is not MultiSpec)
        return handler.generate_schema(Annotated[Union[specs], Field(discriminator="type")])  # noqa: UP007


def _formula(text: str) -> ast.expr:
    """`calculate_output` read into its grammar; `ValueError` saying what it may not use."""
    if len(text) > MAX_FORMULA_CHARS:
        raise ValueError(f"the formula is longer than {MAX_FORMULA_CHARS} characters")
    try:
        return ast.parse(text.replace("^", "**"), mode="eval").body
    except SyntaxError as error:
        raise ValueError(f"the formula is not an expression: {error.msg}") from None
    except (RecursionError, MemoryError):
        raise ValueError("the formula nests too deeply") from None


def _check_formula(node: ast.expr, names: Mapping[str, Any] | None) -> None:
    """Raise `ValueError` unless `node` uses only the formula's grammar and, where `names` is given, names
    only its keys."""
    for child in ast.walk(node):
        if isinstance(child, ast.Call):
            if not (isinstance(child.func, ast.Name) and child.func.id in FUNCTIONS) or child.keywords:
                raise ValueError(f"the formula may call {', '.join(FUNCTIONS)} only")
            count = len(child.args)
            if (child.func.id in _ONE_ARGUMENT and count != 1) or count == 0:
                takes = "one number" if child.func.id in _ONE_ARGUMENT else "numbers"
                raise ValueError(f"{child.func.id}() takes {takes}")
            if any(isinstance(argument, ast.Starred) for argument in child.args):
                raise ValueError("the formula may not unpack (*)")
        elif isinstance(child, ast.Name):
            if child.id in FUNCTIONS:
                continue  # a call's function, checked above; a bare function name fails below
            if names is not None and child.id not in names:
                raise ValueError(f"the formula names {child.id!r}, which is neither one of the graders "
                                 f"({', '.join(names) or 'none'}) nor a function ({', '.join(FUNCTIONS)})")
        elif isinstance(child, ast.Constant):
            if not isinstance(child.value, int | float) or isinstance(child.value, bool):
                raise ValueError(f"the formula may use numbers, not {child.value!r}")
        elif isinstance(child, ast.BinOp):
            if type(child.op) not in _OPERATORS:
                raise ValueError("the formula's operators are + - * / and ^")
        elif isinstance(child, ast.UnaryOp):
            if not isinstance(child.op, ast.UAdd | ast.USub):
                raise ValueError("the formula's operators are + - * / and ^")
        elif not isinstance(child, ast.Load | ast.operator | ast.unaryop):
            raise ValueError("the formula may use numbers, the graders' names, + - * / ^, parentheses and "
                             f"{', '.join(FUNCTIONS)}")
    called = {id(child.func) for child in ast.walk(node) if isinstance(child, ast.Call)}
    for child in ast.walk(node):  # a function's name anywhere but as a call's function
        if isinstance(child, ast.Name) and child.id in FUNCTIONS and id(child) not in called:
            raise ValueError(f"{child.id} is a function: call it, as {child.id}(…)")


def evaluate(node: ast.expr, scores: Mapping[str, float]) -> float:
    """A checked formula's value for the sub-graders' `scores`. Raises `ArithmeticError` or `ValueError`
    where it is undefined (a division by zero, `sqrt(-1)`, `exp(1000)`)."""
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return float(scores[node.id])
    if isinstance(node, ast.UnaryOp):
        value = evaluate(node.operand, scores)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        value = _OPERATORS[type(node.op)](evaluate(node.left, scores), evaluate(node.right, scores))
        if isinstance(value, complex):  # a negative number to a fractional power
            raise ValueError("a negative number to a fractional power")
        return value
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    return float(FUNCTIONS[node.func.id](*(evaluate(argument, scores) for argument in node.args)))


class MultiSpec(GraderSpec):
    model_config = ConfigDict(defer_build=True)  # its sub-graders' union is read once every type is registered

    type: Literal["multi"]
    graders: Annotated[dict[str, Annotated[GraderSpec, _SubGraders()]], Field(min_length=1)]
    calculate_output: str
    pass_threshold: PassThreshold = DEFAULT_PASS_THRESHOLD

    @field_validator("graders", mode="before")
    @classmethod
    def _read_the_items(cls, graders: Any, info: ValidationInfo) -> Any:
        """Each sub-grader reads the multigrader's `item` (given to it here, so its templates are checked
        against it)."""
        if not isinstance(graders, dict) or "item" not in info.data:
            return graders
        item = info.data["item"]
        given = {}
        for key, grader in graders.items():
            if isinstance(grader, dict):
                if grader.get("type") == "multi":
                    raise ValueError("a multigrader's graders may not be multigraders (as on OpenAI)")
                if "item" in grader and grader["item"] != item:
                    raise ValueError(f"{key}: a sub-grader reads the multigrader's `item`; give it there")
                grader = {**grader, "item": item}
            given[key] = grader
        return given

    @field_serializer("graders")
    def _without_items(self, graders: dict[str, GraderSpec], info: Any) -> dict[str, Any]:
        """The sub-graders as written: without the `item` each was given (the multigrader's)."""
        return {key: grader.model_dump(mode=info.mode, by_alias=info.by_alias, exclude={"item"})
                for key, grader in graders.items()}

    @field_validator("calculate_output")
    @classmethod
    def _formula_of_the_graders(cls, text: str, info: ValidationInfo) -> str:
        _check_formula(_formula(text), info.data.get("graders"))
        return text

    async def judge(self, attempt: Attempt, context: TaskContext, runtime: VerifierRuntime) -> Verdict:
        verdicts = dict(zip(self.graders, await asyncio.gather(
            *(verify(grader, attempt, context, runtime) for grader in self.graders.values())), strict=True))
        usages = [verdict.usage for verdict in verdicts.values() if verdict.usage is not None]
        usage = reduce(JudgeUsage.__add__, usages) if usages else None
        if unjudged := [f"{key}: {verdict.detail}" for key, verdict in verdicts.items() if verdict.success is None]:
            return Verdict.unjudged(f"{self.name or 'multi'} could not judge: " + "; ".join(unjudged), usage)
        scores = {key: verdict.score for key, verdict in verdicts.items()}
        shown = ", ".join(f"{key} {score:.3f}" for key, score in scores.items())
        failed = "".join(f"; {key}: {verdict.detail}" for key, verdict in verdicts.items()
                         if verdict.failed and verdict.detail)
        try:
            score = evaluate(_formula(self.calculate_output), scores)
        except (ArithmeticError, ValueError) as error:
            return Verdict(False, f"{self.name or 'multi'}: {shown}; calculate_output failed ({error}), "
                                  f"so it scores 0{failed}", 0.0, usage)
        if not math.isfinite(score):
            return Verdict(False, f"{self.name or 'multi'}: {shown}; calculate_output is {score}, not a number, "
                                  f"so it scores 0{failed}", 0.0, usage)
        score = min(1.0, max(0.0, score))
        verdict = "passes" if score >= self.pass_threshold else "is below"
        return Verdict.graded(score, self.pass_threshold, f"{self.name or 'multi'}: {shown} → {score:.3f} {verdict} "
                              f"the pass threshold {self.pass_threshold:g}{failed}", usage)

    def admit(self, runtime: VerifierRuntime) -> None:
        """Each sub-grader's own check; a refusal names the sub-grader's field
        (`verifier.graders.<name>.<field>`)."""
        for key, grader in self.graders.items():
            try:
                admit(grader, runtime)
            except VerifierNotAllowed as error:
                param = f"verifier.graders.{key}" + error.param.removeprefix("verifier")
                raise VerifierNotAllowed(str(error), param=param, code=error.code) from error


register(VerifierType(
    MultiSpec, judge_with=MultiSpec.judge, admit=MultiSpec.admit,
    summary="OpenAI's `multi` grader: the score is `calculate_output`, a formula over the scores of the named "
            "`graders` (+ - * / ^, min, max, abs, floor, ceil, exp, sqrt, log); passes from `pass_threshold` "
            "(default 0.5)",
))
