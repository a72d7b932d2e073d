"""`python`: OpenAI's python grader, read so that it is refused with a reason rather than as unknown.

OpenAI runs the grader's `source` (a `grade(sample, item)` function) in its own sandbox image
(https://platform.openai.com/docs/guides/graders, "Python graders"). R3 runs no client code: the spec
parses (OpenAI's `name`, `source`, `image_tag`, an eval's `pass_threshold`), and `admit` refuses it
with a 400 naming `verifier.source` that points to the `webhook` verifier, which has the client's own
endpoint judge the answer, with any code it likes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from verifiers.base import Attempt, TaskContext, Verdict
from verifiers.graders.common import DEFAULT_PASS_THRESHOLD, GraderSpec, PassThreshold
from verifiers.registry import VerifierNotAllowed, VerifierType, register

if TYPE_CHECKING:
    from verifiers.runtime import VerifierRuntime

REFUSAL = ("R3 does not run a python grader's source: run it at an endpoint of your own and attach a "
           "`webhook` verifier, which posts the answer there and reads back {\"success\": bool, \"detail\": str}")


class PythonSpec(GraderSpec):
    type: Literal["python"]
    source: str
    image_tag: str | None = None
    pass_threshold: PassThreshold = DEFAULT_PASS_THRESHOLD

    def refuse(self, runtime: VerifierRuntime) -> None:
        raise VerifierNotAllowed(REFUSAL, param="verifier.source", code="python_grader_not_supported")

    def judge(self, attempt: Attempt, context: TaskContext) -> Verdict:
        """Never reached: `verify` calls `refuse` first."""
        return Verdict.unjudged(REFUSAL)


register(VerifierType(
    PythonSpec, judge=PythonSpec.judge, admit=PythonSpec.refuse, replayable=False,
    summary="OpenAI's `python` grader: refused (R3 runs no client code); use a `webhook` verifier",
))
