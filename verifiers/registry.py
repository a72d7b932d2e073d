"""The verifier registry: every verifier type, registered by its own module (as TRL's reward functions
are named and registered).

A type is its spec model (a `SpecBase` whose `type` field is a one-value Literal: the name clients
send), how it judges, the task kind its reflections are asked for in (`r3.reflection`'s templates)
and whether the trainer may judge it again offline (`replayable`). `parse_spec`, `verify` and the
table of verifiers in the docs are all read from here, so adding a verifier type touches its module,
its line in `verifiers/__init__.py`'s list of built-in modules, and its tests.
"""

from __future__ import annotations

import asyncio
import typing
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field, GetCoreSchemaHandler, TypeAdapter
from pydantic_core import CoreSchema

from verifiers.base import Attempt, SpecBase, TaskContext, Verdict

if TYPE_CHECKING:
    from verifiers.runtime import VerifierRuntime

JUDGE_THREADS = 2
JUDGE_TIMEOUT_S = 5.0  # a judge's patterns stop sooner (`PATTERN_BUDGET_S`); this bounds everything else
_judges = ThreadPoolExecutor(JUDGE_THREADS, thread_name_prefix="r3-judge")


class VerifierNotAllowed(Exception):
    """A spec this server will not run (its webhook's host is outside the operator's policy): a request
    error, raised before any work. `param` names the spec's field at fault (e.g. "verifier.url")."""

    def __init__(self, message: str, param: str = "verifier", code: str = "verifier_not_allowed") -> None:
        super().__init__(message)
        self.param, self.code = param, code


@dataclass(frozen=True)
class VerifierType:
    """One kind of verifier. Exactly one of `judge` and `judge_with` is given:

    - `judge(spec, attempt, context) -> Verdict`: CPU work on the spec and the answer; `verify` runs
      it in a judging thread, for at most `JUDGE_TIMEOUT_S`.
    - `judge_with(spec, attempt, context, runtime) -> Awaitable[Verdict]`: work that needs the
      process's `VerifierRuntime` (the network, a model); awaited on the caller's event loop, it
      bounds its own time.

    `admit(spec, runtime)`, if given, raises `VerifierNotAllowed` for a spec this server will not
    run; `admit` calls it when a request arrives and `verify` again before judging.
    """

    spec: type[SpecBase]
    summary: str  # when an answer passes, in a sentence: the docs' table of verifiers
    judge: Callable[[Any, Attempt, TaskContext], Verdict] | None = None
    judge_with: Callable[[Any, Attempt, TaskContext, VerifierRuntime], Awaitable[Verdict]] | None = None
    admit: Callable[[Any, VerifierRuntime], None] | None = None
    task_kind: str = "generic"
    replayable: bool = True  # the trainer and the gate may judge its episodes again, long after the request

    def __post_init__(self) -> None:
        if (self.judge is None) == (self.judge_with is None):
            raise ValueError(f"verifier type {self.name!r} needs exactly one of judge and judge_with")

    @property
    def name(self) -> str:
        """The `type` clients send: the one value of the spec's `type` Literal."""
        (name,) = typing.get_args(self.spec.model_fields["type"].annotation)
        return name


_TYPES: dict[str, VerifierType] = {}


def register(kind: VerifierType) -> VerifierType:
    """Add a verifier type (once: a second type of the same name is a `ValueError`)."""
    if _TYPES.get(kind.name, kind) is not kind:
        raise ValueError(f"a verifier type named {kind.name!r} is registered already")
    _TYPES[kind.name] = kind
    _spec_adapter.cache_clear()
    return kind


def verifier_types() -> tuple[VerifierType, ...]:
    """Every registered type, in the order registered."""
    return tuple(_TYPES.values())


def verifier_type(spec: SpecBase | str) -> VerifierType:
    """The registered type of a spec (or of a type name). Raises `KeyError` for an unknown name."""
    return _TYPES[spec if isinstance(spec, str) else spec.type]


def spec_union() -> Any:
    """The discriminated union (on `type`) of every spec model registered so far, as a pydantic type."""
    specs = tuple(kind.spec for kind in _TYPES.values())
    return Annotated[Union[specs], Field(discriminator="type")]  # noqa: UP007


class _Registered:
    """Pydantic reads an annotation marked with this as `spec_union()` when the model using it is built."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return handler.generate_schema(spec_union())


# A spec of any registered type: `parse_spec`'s result, and a field type for a model that holds one
# (built into that model when the model is defined, so register a type before defining such a model).
VerifierSpec = Annotated[SpecBase, _Registered()]


@cache
def _spec_adapter() -> TypeAdapter:
    return TypeAdapter(VerifierSpec)  # rebuilt after each registration


def parse_spec(data: dict[str, Any]) -> VerifierSpec:
    """The registered spec `data` (a client's `verifier` object, or a recorded one) describes. Raises
    pydantic's `ValidationError`, whose `loc` starts with the spec's type and names the field."""
    return _spec_adapter().validate_python(data)


def is_replayable(data: dict[str, Any] | None) -> bool:
    """Whether a recorded verifier (`Episode.verifier`: a spec as JSON) is of a registered type that
    the trainer may judge again. None (no verifier) and unknown types are not."""
    kind = _TYPES.get(data.get("type")) if isinstance(data, dict) else None
    return kind is not None and kind.replayable


def admit(spec: SpecBase, runtime: VerifierRuntime) -> None:
    """Raise `VerifierNotAllowed` unless this server (its `runtime`) may run `spec`."""
    check = verifier_type(spec).admit
    if check is not None:
        check(spec, runtime)


async def verify(spec: SpecBase, attempt: Attempt, context: TaskContext, runtime: VerifierRuntime) -> Verdict:
    """`spec`'s verdict on `attempt`. A local judge runs in a judging thread; one that takes longer than
    `JUDGE_TIMEOUT_S` is a failed verdict saying so (one still queued then never runs; a running one
    ends by itself). Cancelling this cancels a judge that has not started. Raises `VerifierNotAllowed`
    for a spec the runtime refuses (which `admit` should have refused with the request)."""
    kind = verifier_type(spec)
    admit(spec, runtime)
    if kind.judge_with is not None:
        return await kind.judge_with(spec, attempt, context, runtime)
    judging = asyncio.get_running_loop().run_in_executor(_judges, kind.judge, spec, attempt, context)
    try:
        return await asyncio.wait_for(judging, JUDGE_TIMEOUT_S)
    except TimeoutError:
        return Verdict(False, f"judging the answer took longer than {JUDGE_TIMEOUT_S:g} s, so it was not checked")
