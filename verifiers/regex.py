"""`regex`: the content, stripped of surrounding whitespace, must match a regular expression.

Patterns run on the `regex` package rather than `re`: its syntax is `re`'s, but a match can be given
a time limit (and it releases the GIL while it matches). The pattern is the client's own, and one
like `(a|aa)+$` backtracks exponentially, so every match stops after `MATCH_TIMEOUT_S` (regex checks
its clock now and then: a timed-out match may run a little longer) and the verdict is a failure that
says so. The pattern is limited to 1,000 characters and the content checked to 20,000 (longer
content fails).
"""

from __future__ import annotations

from typing import Literal

import regex
from pydantic import Field, field_validator

from verifiers.base import Attempt, SpecBase, TaskContext, Verdict
from verifiers.registry import VerifierType, register

MAX_PATTERN_CHARS = 1000
MAX_CONTENT_CHARS = 20_000
MATCH_TIMEOUT_S = 0.2

RegexFlag = Literal["IGNORECASE", "MULTILINE", "DOTALL"]


class RegexSpec(SpecBase):
    type: Literal["regex"]
    pattern: str = Field(max_length=MAX_PATTERN_CHARS)
    mode: Literal["fullmatch", "search"] = "fullmatch"
    flags: list[RegexFlag] = Field(default_factory=list)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            regex.compile(pattern)
        except regex.error as error:
            raise ValueError(f"invalid regular expression: {error}") from error
        return pattern

    def compiled(self) -> regex.Pattern:
        flags = 0
        for name in self.flags:
            flags |= getattr(regex, name)
        return regex.compile(self.pattern, flags)  # `regex` caches compiled patterns

    def judge(self, attempt: Attempt, context: TaskContext) -> Verdict:
        content = (attempt.content or "").strip()
        if len(content) > MAX_CONTENT_CHARS:
            too_long = f"content is too long to check ({len(content)} characters; limit {MAX_CONTENT_CHARS})"
            return Verdict(False, too_long)
        pattern = self.compiled()
        match = pattern.fullmatch if self.mode == "fullmatch" else pattern.search
        try:
            matched = match(content, timeout=MATCH_TIMEOUT_S)
        except TimeoutError:
            return Verdict(False, f"the pattern took longer than {MATCH_TIMEOUT_S:g} s on the answer, so it was not checked")
        if matched:
            return Verdict(True)
        how = "does not match" if self.mode == "fullmatch" else "contains no match for"
        return Verdict(False, f"the answer {how} the pattern {self.pattern!r}")


register(VerifierType(
    RegexSpec, judge=RegexSpec.judge,
    summary="the content matches (`mode`: `fullmatch` or `search`)",
))
