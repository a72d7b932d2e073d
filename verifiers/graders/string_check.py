"""`string_check`: OpenAI's string check grader, a comparison of two rendered templates scored 1 or 0.

As OpenAI's graders guide defines the operations (https://platform.openai.com/docs/guides/graders,
"String check graders"; the `openai` package's `StringCheckGrader`):

- `eq`: the input equals the reference (case-sensitive);
- `ne`: the input differs from the reference (case-sensitive);
- `like`: the input contains the reference (case-sensitive);
- `ilike`: the input contains the reference, ignoring case.

Text is compared as rendered: no trimming, no normalisation (`ilike` compares `str.casefold`ed text).
The detail of a failure quotes neither side: either may be the expected answer (OpenAI's own examples
put it in `input` as often as in `reference`), which the model would copy into its retry.
"""

from __future__ import annotations

from typing import Literal

from verifiers.base import Attempt, TaskContext, Verdict
from verifiers.graders.common import GraderSpec, Sample, TemplateFailure, render, templates
from verifiers.registry import VerifierType, register

_PASSES = {
    "eq": lambda text, reference: text == reference,
    "ne": lambda text, reference: text != reference,
    "like": lambda text, reference: reference in text,
    "ilike": lambda text, reference: reference.casefold() in text.casefold(),
}
_FAILS = {
    "eq": "is not the reference",
    "ne": "is the text it must differ from",
    "like": "does not contain the reference",
    "ilike": "does not contain the reference (ignoring case)",
}


class StringCheckSpec(GraderSpec):
    type: Literal["string_check"]
    input: str  # a template; usually the answer, "{{ sample.output_text }}"
    reference: str  # a template; usually the expected text, "{{ item.reference_answer }}"
    operation: Literal["eq", "ne", "like", "ilike"]

    _templates = templates("input", "reference")

    def judge(self, attempt: Attempt, context: TaskContext) -> Verdict:
        sample = Sample.of(attempt)
        try:
            text, reference = render(self.input, sample, self.item), render(self.reference, sample, self.item)
        except TemplateFailure as error:
            return Verdict(False, str(error))
        if _PASSES[self.operation](text, reference):
            return Verdict(True)
        return Verdict(False, f"{self.name or 'string_check'}: the input {_FAILS[self.operation]}")


register(VerifierType(
    StringCheckSpec, judge=StringCheckSpec.judge,
    summary="OpenAI's `string_check` grader: the rendered `input` equals (`eq`), differs from (`ne`) or "
            "contains (`like`; `ilike` ignoring case) the rendered `reference`; scores 1 or 0",
))
