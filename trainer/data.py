"""Training and evaluation items from recorded episodes.

A `Failure` is a request whose first attempt failed under a verifier the trainer can run again: the
request, that failed attempt (kept fixed: the trainer learns to reflect on it, not to answer
afresh), and why it failed. A `Success` is a request whose first attempt passed; the gate replays
those to check that a new adapter still gets them right the first time, family by family
(`LoggedRequest.family`, `retained_set`).

Items are keyed by their prompt: the request's messages and tools. `split` hashes that key, so an
item lands on the same side in every round; a held-out prompt is never trained on, however many
times it recurs in the log.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Any, TypeVar

from r3.episodes import AttemptRecord, Episode
from r3.reflect_retry import recorded_task
from r3.reflection import FailedAttempt, assistant_message


@dataclass(frozen=True)
class LoggedRequest:
    """A logged request, as much of it as is needed to run it again and judge the answer (a
    `r3.reflect_retry.RecordedRequest`: `recorded_task` makes it a task)."""

    episode_id: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    tool_choice: str | dict[str, Any] | None
    verifier: dict[str, Any]
    task_kind: str
    sampling: dict[str, Any]
    category: str | None = field(default=None, kw_only=True)  # the client's `metadata.category`

    @property
    def family(self) -> str:
        """The task family the gate checks it in: its verifier's type, and the client's category where
        it named one (`"tool_call/weather"`; `"exact"`)."""
        kind = self.verifier["type"]
        return f"{kind}/{self.category}" if self.category else kind


@dataclass(frozen=True)
class Success(LoggedRequest):
    """A request whose first attempt passed its verifier."""


@dataclass(frozen=True)
class Failure(LoggedRequest):
    """A request whose first attempt failed its verifier, with that attempt and the reason."""

    failed_attempt: dict[str, Any]  # the OpenAI assistant message: content and tool_calls
    detail: str  # what the verifier (or the client's feedback) said was wrong

    def failed(self, reflection: str | None = None) -> FailedAttempt:
        """The recorded failed attempt as the reflect-retry protocol takes it (with `reflection`, if written)."""
        return FailedAttempt(self.failed_attempt, self.detail, reflection)


Item = TypeVar("Item", Failure, Success)


def failures_from_episodes(episodes: Iterable[Episode]) -> list[Failure]:
    """Episodes whose first attempt failed and can be judged again: verifier recorded, text stored,
    not abandoned."""
    failures = []
    for episode in episodes:
        if not _replayable(episode):
            continue
        first = episode.attempt(1)
        # The verifier must have failed it too: a failure only the client's feedback saw would be
        # "fixed" in training by repeating the very answer the client rejected.
        if first.passed is not False or first.success is not False:
            continue
        failures.append(Failure(
            episode_id=episode.id, messages=episode.messages, tools=episode.tools, tool_choice=episode.tool_choice,
            failed_attempt=assistant_message(first.content, first.tool_calls), detail=_detail(first),
            verifier=episode.verifier, task_kind=episode.task_kind, sampling=episode.sampling,
            category=episode.category,
        ))
    return failures


def first_attempt_successes(episodes: Iterable[Episode]) -> list[Success]:
    """Episodes whose first attempt passed its verifier (and no client feedback said otherwise)."""
    return [
        Success(episode_id=episode.id, messages=episode.messages, tools=episode.tools,
                tool_choice=episode.tool_choice, verifier=episode.verifier, task_kind=episode.task_kind,
                sampling=episode.sampling, category=episode.category)
        for episode in episodes
        if _replayable(episode) and episode.attempt(1).passed is True and episode.attempt(1).success is True
    ]


def _replayable(episode: Episode) -> bool:
    # An abandoned episode's attempts were cut off (or never judged) when its client hung up.
    return (episode.replayable and episode.store_text and episode.messages is not None
            and bool(episode.attempts) and not episode.abandoned)


def _detail(attempt: AttemptRecord) -> str:
    if attempt.feedback is not None and attempt.feedback.detail:
        return attempt.feedback.detail  # the client's own error text says more than a verdict would
    return attempt.detail or ""


def prompt_key(item: Failure | Success) -> str:
    """The prompt as the model saw it (messages and tools), canonically serialised."""
    return json.dumps({"messages": item.messages, "tools": item.tools}, sort_keys=True, ensure_ascii=False)


def dedupe(items: Iterable[Item]) -> list[Item]:
    """The first item of each prompt."""
    seen: dict[str, Item] = {}
    for item in items:
        seen.setdefault(prompt_key(item), item)
    return list(seen.values())


def is_heldout(item: Failure | Success, heldout_fraction: float) -> bool:
    """Whether the item's prompt belongs to the held-out side: a fixed function of the prompt."""
    digest = hashlib.sha256(prompt_key(item).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < heldout_fraction


def split(failures: Iterable[Failure], heldout_fraction: float) -> tuple[list[Failure], list[Failure]]:
    """(train, held-out), deduplicated by prompt; a prompt's side never changes between rounds."""
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ValueError("heldout_fraction must lie in [0, 1]")
    unique = dedupe(failures)
    train = [failure for failure in unique if not is_heldout(failure, heldout_fraction)]
    heldout = [failure for failure in unique if is_heldout(failure, heldout_fraction)]
    return train, heldout


def balance(failures: Sequence[Failure], factor: float = 2.0) -> list[Failure]:
    """At most `factor` × (the rarest task kind's count) failures of each kind, interleaved by kind.

    A log is usually dominated by one kind of task; trained on as it comes, the adapter would learn
    to reflect on that kind only. Capping keeps the rare kinds' share; interleaving round-robin (in
    log order within a kind) keeps every prefix of the result balanced too, so a round that stops
    early has still seen every kind.
    """
    by_kind = _grouped(failures, lambda failure: failure.task_kind)
    if not by_kind:
        return []
    cap = max(1, int(min(len(kind) for kind in by_kind.values()) * factor))
    return _interleaved(kind[:cap] for kind in by_kind.values())


def retained_set(successes: Iterable[Success], size: int) -> list[Success]:
    """The gate's retained set: at most `size` of `successes`, one prompt each, stratified by task
    family (`LoggedRequest.family`) with equal allocation: taken round-robin across the families (in
    log order within one) until `size` are taken, so that a family has as many items as the rest
    allow, not the share the log gives it. The gate tests each family on its own (`trainer.gate.decide`),
    and a test on a rare family has power only if the family has items; a proportional sample would
    leave a family with 2% of the traffic 1 item of 64.
    """
    by_family = _grouped(dedupe(successes), lambda success: success.family)
    return _interleaved(by_family.values())[:size]


def _grouped(items: Iterable[Item], key: Callable[[Item], str]) -> dict[str, list[Item]]:
    groups: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return groups


def _interleaved(groups: Iterable[Sequence[Item]]) -> list[Item]:
    """The groups' items round-robin: every prefix of the result takes from each group in turn."""
    return [item for row in zip_longest(*groups) for item in row if item is not None]


def runnable(items: Iterable[Item]) -> tuple[list[Item], dict[str, str]]:
    """(the items that can be run again as tasks, {episode id: why not} for the others): an episode
    whose stored verifier or sampling no longer validates (a NaN stored as null, a field of another
    version) cannot be trained or judged on, and must not fail the round for everyone else's."""
    usable, refused = [], {}
    for item in items:
        try:
            recorded_task(item)
        except (ValueError, TypeError) as error:  # pydantic's ValidationError is a ValueError
            refused[item.episode_id] = f"its stored request cannot be run again: {' '.join(str(error).split())}"
        else:
            usable.append(item)
    return usable, refused

