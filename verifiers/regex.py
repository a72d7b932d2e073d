"""`regex`: the content, stripped of surrounding whitespace, must match a regular expression.

Python's `re` has no time limit, and a pattern like `(a+)+$` backtracks exponentially. The pattern is
the client's own, limited to 1,000 characters, and the content checked is limited to 20,000
characters (longer content fails); that bounds ordinary patterns, not catastrophic ones. A server
that accepts patterns from untrusted clients should judge them out of process.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from verifiers.base import Attempt, SpecBase, TaskContext, Verdict

MAX_PATTERN_CHARS = 1000
MAX_CONTENT_CHARS = 20_000

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
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"invalid regular expression: {error}") from error
        return pattern

    def compiled(self) -> re.Pattern[str]:
        flags = re.NOFLAG
        for name in self.flags:
            flags |= re.RegexFlag[name]
        return re.compile(self.pattern, flags)  # `re` caches compiled patterns

    def judge(self, attempt: Attempt, context: TaskContext) -> Verdict:
        content = (attempt.content or "").strip()
        if len(content) > MAX_CONTENT_CHARS:
            too_long = f"content is too long to check ({len(content)} characters; limit {MAX_CONTENT_CHARS})"
            return Verdict(False, too_long)
        pattern = self.compiled()
        matched = pattern.fullmatch(content) if self.mode == "fullmatch" else pattern.search(content)
        if matched:
            return Verdict(True)
        how = "does not match" if self.mode == "fullmatch" else "contains no match for"
        return Verdict(False, f"the answer {how} the pattern {self.pattern!r}")
