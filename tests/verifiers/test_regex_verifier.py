from __future__ import annotations

import pytest
from pydantic import ValidationError

from verifiers import Attempt, RegexSpec, TaskContext, parse_spec

# (spec options, content, success, detail fragment)
CASES = [
    ({"pattern": r"\d{3}-\d{4}"}, "555-1234", True, ""),
    ({"pattern": r"\d{3}-\d{4}"}, "  555-1234\n", True, ""),  # surrounding whitespace is stripped
    ({"pattern": r"\d{3}-\d{4}"}, "call 555-1234", False, r"the answer does not match the pattern '\\d{3}-\\d{4}'"),
    ({"pattern": r"\d{3}-\d{4}", "mode": "search"}, "call 555-1234 now", True, ""),
    ({"pattern": r"\d{3}-\d{4}", "mode": "search"}, "call me", False, "contains no match for the pattern"),
    ({"pattern": "yes"}, "YES", False, "does not match"),
    ({"pattern": "yes", "flags": ["IGNORECASE"]}, "YES", True, ""),
    ({"pattern": "^b$", "mode": "search"}, "a\nb\nc", False, "contains no match"),
    ({"pattern": "^b$", "mode": "search", "flags": ["MULTILINE"]}, "a\nb\nc", True, ""),
    ({"pattern": "a.c"}, "a\nc", False, "does not match"),
    ({"pattern": "a.c", "flags": ["DOTALL"]}, "a\nc", True, ""),
    ({"pattern": "A.C", "flags": ["DOTALL", "IGNORECASE"]}, "a\nc", True, ""),
    ({"pattern": ".*"}, None, True, ""),  # no content is the empty string
    ({"pattern": ".+"}, None, False, "does not match"),
    ({"pattern": "a*"}, "a" * 20_000, True, ""),
    ({"pattern": "a*"}, "a" * 20_001, False, "content is too long to check (20001 characters; limit 20000)"),
    # Catastrophic backtracking stops at the time limit instead of holding the event loop.
    ({"pattern": "(a|aa)+$"}, "a" * 40 + "!", False, "the pattern took longer than 0.2 s on the answer"),
]


@pytest.mark.parametrize(("options", "content", "success", "detail"), CASES)
def test_regex_verdicts(options, content, success, detail) -> None:
    spec = parse_spec({"type": "regex", **options})
    assert isinstance(spec, RegexSpec)
    verdict = spec.judge(Attempt(content=content), TaskContext())
    assert verdict.success is success, verdict.detail
    assert detail in verdict.detail


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"type": "regex", "pattern": "(unclosed"}, "pattern"),
        ({"type": "regex", "pattern": "*"}, "pattern"),
        ({"type": "regex", "pattern": "a" * 1001}, "pattern"),
        ({"type": "regex"}, "pattern"),
        ({"type": "regex", "pattern": "a", "mode": "match"}, "mode"),
        ({"type": "regex", "pattern": "a", "flags": ["VERBOSE"]}, "flags"),
    ],
)
def test_invalid_specs_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_spec(data)
    assert any(field in error["loc"] for error in raised.value.errors())
