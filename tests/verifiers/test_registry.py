"""The verifier registry: a new type is one module and one registration; the runtime is handed in once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import httpx
import pytest
from pydantic import BaseModel, ValidationError

from r3.episodes import Episode
from verifiers import (
    Attempt,
    SpecBase,
    TaskContext,
    Verdict,
    VerifierNotAllowed,
    VerifierRuntime,
    VerifierSpec,
    VerifierType,
    WebhookPolicy,
    admit,
    is_replayable,
    parse_spec,
    reference_table,
    register,
    registry,
    verifier_types,
    verify,
)

GUIDE = Path(__file__).parents[2] / "docs" / "guides" / "verifiers.md"


class ShortSpec(SpecBase):
    """A throwaway verifier type, as a new module would define it."""

    type: Literal["short"]
    max_chars: int


def judge_short(spec: ShortSpec, attempt: Attempt, context: TaskContext) -> Verdict:
    length = len(attempt.content or "")
    return Verdict(length <= spec.max_chars, "" if length <= spec.max_chars else f"{length} characters")


@pytest.fixture
def short_type() -> Iterator[VerifierType]:
    """`short` registered for one test, the registry as it was afterwards."""
    before = dict(registry._TYPES)
    try:
        yield register(VerifierType(ShortSpec, judge=judge_short, task_kind="math", replayable=False,
                                    summary="the content is at most `max_chars` long"))
    finally:
        registry._TYPES.clear()
        registry._TYPES.update(before)
        registry._spec_adapter.cache_clear()


async def test_a_registered_type_is_parsed_judged_and_documented(short_type: VerifierType) -> None:
    spec = parse_spec({"type": "short", "max_chars": 3})
    assert isinstance(spec, ShortSpec) and spec.task_kind == "math"
    assert (await verify(spec, Attempt("abc"), TaskContext(), VerifierRuntime())).success
    verdict = await verify(spec, Attempt("abcd"), TaskContext(), VerifierRuntime())
    assert verdict == Verdict(False, "4 characters")
    with pytest.raises(ValidationError) as raised:
        parse_spec({"type": "short", "max_chars": "3"})  # strict, as every spec
    assert raised.value.errors()[0]["loc"] == ("short", "max_chars")
    assert "| `short` | `max_chars` | the content is at most `max_chars` long |" in reference_table()

    class Request(BaseModel):  # a model defined after the registration holds the new type too
        verifier: VerifierSpec

    assert isinstance(Request.model_validate({"verifier": {"type": "short", "max_chars": 1}}).verifier, ShortSpec)


def test_replayable_is_the_types_word(short_type: VerifierType) -> None:
    def recorded(verifier: dict | None) -> Episode:
        return Episode(id="ep", tenant=None, model="m", adapter=None, task_kind="generic", verifier=verifier,
                       store_text=True, messages=[], tools=None, tool_choice=None)

    assert recorded({"type": "exact", "expected": "a"}).replayable
    assert not recorded({"type": "short", "max_chars": 3}).replayable
    assert not recorded(None).replayable
    assert not is_replayable({"type": "retired_type"})  # a type no longer registered cannot be judged again


def test_a_name_is_registered_once(short_type: VerifierType) -> None:
    with pytest.raises(ValueError, match="'short' is registered already"):
        register(VerifierType(ShortSpec, judge=judge_short, summary="again"))
    assert register(short_type) is short_type  # registering the same type again is harmless


def test_a_type_judges_one_way() -> None:
    with pytest.raises(ValueError, match="exactly one of judge and judge_with"):
        VerifierType(ShortSpec, summary="neither")


def test_the_verifiers_guide_lists_every_registered_type() -> None:
    assert [kind.name for kind in verifier_types()] == [
        "tool_schema", "tool_call", "countdown", "json_schema", "regex", "exact", "math", "webhook",
        "string_check", "text_similarity", "multi", "python", "score_model", "label_model"]
    assert reference_table() in GUIDE.read_text()


def test_admission_follows_the_runtime() -> None:
    spec = parse_spec({"type": "webhook", "url": "http://127.0.0.1:9/hook"})
    with pytest.raises(VerifierNotAllowed) as refused:
        admit(spec, VerifierRuntime())
    assert (refused.value.param, refused.value.code) == ("verifier.url", "webhook_not_allowed")
    admit(spec, VerifierRuntime(WebhookPolicy(allow_loopback=True)))
    admit(parse_spec({"type": "exact", "expected": "a"}), VerifierRuntime())  # nothing to refuse


async def test_a_webhook_posts_through_the_runtimes_client_and_backs_off_on_its_sleep() -> None:
    replies = [httpx.Response(503), httpx.Response(200, json={"success": True, "detail": "fine"})]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    def client() -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(lambda request: replies.pop(0)))

    runtime = VerifierRuntime(WebhookPolicy(allowed_hosts=frozenset({"hooks.example.com"})), client, sleep)
    spec = parse_spec({"type": "webhook", "url": "https://hooks.example.com/judge"})
    assert await verify(spec, Attempt("4"), TaskContext(), runtime) == Verdict(True, "fine")
    assert len(waits) == 1 and not replies  # one retry after the 503, backed off on the runtime's clock
