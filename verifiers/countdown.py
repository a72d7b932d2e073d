"""`countdown`: an arithmetic expression over the given numbers that equals the target (TinyZero's game).

The answer is the last `<answer>…</answer>` if there is one; otherwise the last run of
expression-looking text that holds an operator (else the last one holding a digit). Of an
equation ("(3+5)*3 = 24") the side with the most numbers is taken.

The expression must use every given number exactly as often as given, integer literals only, the
operators + - * / and parentheses. Unary minus (and plus) is refused: the game is to combine the
numbers as given, so -3 is not 3. Division is exact (fractions.Fraction): intermediate fractions are
fine, and the result must equal the target exactly.

The expression is parsed with `ast.parse(mode="eval")`, never evaluated by Python, and refused
before parsing when it is long, holds any other character, or nests parentheses deeply; the answer
search is linear in the content. Adversarial text therefore costs microseconds, not seconds.
"""

from __future__ import annotations

import ast
import operator
import re
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from typing import Annotated, Literal

from pydantic import Field

from verifiers.answer import last_answer
from verifiers.base import Attempt, SpecBase, TaskContext, UnreadableOutput, Verdict
from verifiers.registry import VerifierType, register

MAX_NUMBER = 10**6
MAX_EXPRESSION_CHARS = 200
MAX_PAREN_DEPTH = 32

_ALLOWED_CHARACTERS = frozenset("0123456789+-*/() ")
_EXPRESSION_RUN = re.compile(r"[0-9(][0-9+\-*/()= \t]*")
_INTEGER = re.compile(r"[0-9]+")
_IMPLICIT_PRODUCT = re.compile(r"[0-9)] ?\(")  # parsed as a call, which Python also warns about
_OPERATORS: dict[type[ast.operator], Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_REFUSED_OPERATORS = {ast.Pow: "**", ast.FloorDiv: "//"}


class CountdownSpec(SpecBase):
    type: Literal["countdown"]
    # Non-negative: with unary minus refused, a negative number could not be written.
    numbers: list[Annotated[int, Field(ge=0, le=MAX_NUMBER)]] = Field(min_length=1, max_length=10)
    target: int

    def judge(self, attempt: Attempt, context: TaskContext) -> Verdict:
        expression = answer_expression(attempt.content or "")
        if expression is None:
            return Verdict(False, "no expression found in the answer")
        try:
            literals, value = evaluate(expression)
        except UnreadableOutput as error:
            return Verdict(False, str(error))
        used, given = Counter(literals), Counter(self.numbers)
        extra, missing = sorted((used - given).elements()), sorted((given - used).elements())
        if extra or missing:
            problems = [f"{label} {values}" for label, values in (("extra", extra), ("missing", missing)) if values]
            return Verdict(False, f"must use exactly the numbers {self.numbers}: {'; '.join(problems)}")
        if value is None:
            return Verdict(False, f"{expression} divides by zero")
        if value != self.target:
            return Verdict(False, f"{expression} equals {value}, not {self.target}")
        return Verdict(True)


def answer_expression(content: str) -> str | None:
    """The expression the answer proposes, or None when there is none."""
    answer = last_answer(content)
    if answer is None:
        answer = _last_expression_run(content)
    if answer is None:
        return None
    if len(answer) > MAX_EXPRESSION_CHARS:
        return answer  # refused by `evaluate`; splitting it first would only cost time
    return max(answer.split("="), key=lambda side: len(_INTEGER.findall(side))).strip()


def _last_expression_run(content: str) -> str | None:
    last_with_digit = last_with_operator = None
    for match in _EXPRESSION_RUN.finditer(content):
        run = match.group()
        if any(c.isdigit() for c in run):
            last_with_digit = run
            if any(c in "+-*/" for c in run):
                last_with_operator = run
    return last_with_operator or last_with_digit


def evaluate(expression: str) -> tuple[list[int], Fraction | None]:
    """The integer literals of `expression` and its exact value (None when it divides by zero).

    Raises UnreadableOutput, with a detail for the model, when the expression is not allowed.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        length = len(expression)
        raise UnreadableOutput(f"the expression is too long ({length} characters; limit {MAX_EXPRESSION_CHARS})")
    expression = " ".join(expression.split())
    for character in expression:
        if character not in _ALLOWED_CHARACTERS:
            raise UnreadableOutput(f"only integers, + - * / and parentheses are allowed, found {character!r}")
    depth = 0
    for character in expression:
        depth += {"(": 1, ")": -1}.get(character, 0)
        if depth > MAX_PAREN_DEPTH:
            raise UnreadableOutput(f"parentheses are nested deeper than {MAX_PAREN_DEPTH}")
    if _IMPLICIT_PRODUCT.search(expression):
        raise UnreadableOutput("write * before '(': implicit multiplication such as 2(3+4) is not allowed")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as error:
        raise UnreadableOutput(f"{expression!r} is not a valid expression ({error.msg})") from error
    literals: list[int] = []
    return literals, _value(tree.body, literals)


def _value(node: ast.expr, literals: list[int]) -> Fraction | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        literals.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _value(node.left, literals), _value(node.right, literals)
        if left is None or right is None or (isinstance(node.op, ast.Div) and right == 0):
            return None
        return _OPERATORS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp):
        raise UnreadableOutput("a sign before a number (unary minus) is not allowed; use the numbers as given")
    if isinstance(node, ast.BinOp) and type(node.op) in _REFUSED_OPERATORS:
        raise UnreadableOutput(f"operator {_REFUSED_OPERATORS[type(node.op)]} is not allowed; use + - * /")
    raise UnreadableOutput(f"{ast.unparse(node)!r} is not allowed; use integers, + - * / and parentheses")


register(VerifierType(
    CountdownSpec, judge=CountdownSpec.judge, task_kind="countdown",
    summary="the answer (in `<answer>…</answer>`, else the last equation) uses each number exactly as "
            "often as given, only `+ - * /` and parentheses, and equals the target exactly",
))
