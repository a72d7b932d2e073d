"""`exact`: the answer must equal an expected string, after optional normalisation.

The detail never repeats the expected answer: the model would copy it into its retry, which would
then pass without the reflection having taught anything.
"""

from __future__ import annotations

from typing import Literal

from verifiers.answer import last_answer
from verifiers.base import Attempt, SpecBase, TaskContext, Verdict, quote
from verifiers.registry import VerifierType, register


class ExactSpec(SpecBase):
    type: Literal["exact"]
    expected: str
    extract_answer: bool = False  # compare the last <answer>…</answer> instead of the whole content
    ignore_case: bool = False
    normalize_whitespace: bool = True  # collapse runs of whitespace and strip the ends

    def normalized(self, text: str) -> str:
        if self.normalize_whitespace:
            text = " ".join(text.split())
        return text.casefold() if self.ignore_case else text

    def judge(self, attempt: Attempt, context: TaskContext) -> Verdict:
        answer = attempt.content or ""
        if self.extract_answer:
            answer = last_answer(answer)
            if answer is None:
                return Verdict(False, "no <answer>…</answer> in the content")
        if self.normalized(answer) == self.normalized(self.expected):
            return Verdict(True)
        return Verdict(False, f"the answer {quote(answer)} is not the expected answer")


register(VerifierType(
    ExactSpec, judge=ExactSpec.judge,
    summary="the content (or its `<answer>`) equals the expected text",
))
