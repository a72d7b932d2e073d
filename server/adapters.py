"""Hot-swap: keeping the engine's adapters in step with the version the database marks active.

The server hears of a promotion from the registry's events (`r3.store.registry.adapter_events`:
Redis pub/sub) and, as a safety net, polls the database; at start it loads whatever is active. A swap loads the new version under its own name (never reusing
one: vLLM keys its prefix cache by name), checks its files' sha256 first, and then flips the
active pointer — one assignment, so a request sees either the old version or the new one. Each
request pins the version it started with for all its attempts; a version that is no longer active
is unloaded once no request uses it and a grace period has passed, so a rollback within that
period is instant.

A version that cannot be served (its files no longer match their sha256, are missing, or the
engine refuses them: truncated, or shaped for another model) is recorded in `refused` with the
reason, logged once and not tried again: serving stays on what it has, and the next version
activated is taken. No failure of one sync stops the polling or the listening.

Every scenario (`r3.store.scenarios`) has its own active version, swapped, pinned, drained and
unloaded exactly so; the engine serves the versions of all of them side by side. A scenario with a
live canary (`r3.store.canaries`) serves its canary version to a share of the requests that name
the scenario without pinning a version, chosen by their request id (`r3.canary.in_canary`), so every
replica splits alike.

Model names a request may use:
    the served model id, or "r3"   the active version of the caller's scenario: its API key's default
                                   scenario, else `default` (the base model if none is active)
    "<scenario>"                   that scenario's active version
    "base"                         the base model, no adapter
    "r3@v3" or "r3-v3"             that version of the default scenario, loaded on demand if it is in the
    "<scenario>@v3"                registry; "<scenario>@v3" (or "<scenario>-v3") one of another scenario
    a name from R3_LORA_MODULES    that adapter
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from r3.canary import in_canary
from r3.engines.base import Engine, EngineError
from r3.store.models import DEFAULT_SCENARIO
from r3.store.registry import (
    DEFAULT_LINEAGE,
    AdapterRegistry,
    Version,
    adapter_events,
    adapter_sha256,
    model_name,
    scenario_of_lineage,
    version_of,
)
from server.errors import UnknownModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    """What a request's `model` names: the scenario it serves (its episode's) and the adapter (None:
    the base model); `canary`: True when its scenario's live canary serves it, False when the current
    version does while a canary runs, None otherwise (no canary, or a pinned version)."""

    scenario: str
    adapter: str | None
    canary: bool | None = None


@dataclass(frozen=True)
class LiveCanary:
    version: str
    fraction: float


class AdapterManager:
    def __init__(self, engine: Engine, registry: AdapterRegistry, redis_url: str | None = None,
                 poll_s: float = 2.0, grace_s: float = 60.0, static_adapters: frozenset[str] = frozenset()) -> None:
        self.engine, self.registry = engine, registry
        self.redis_url, self.poll_s, self.grace_s = redis_url, poll_s, grace_s
        self.static_adapters = static_adapters  # R3_LORA_MODULES: loaded at start, never swapped out
        self.actives: dict[str, str | None] = {DEFAULT_SCENARIO: None}  # scenario -> the version it serves
        self.canaries: dict[str, LiveCanary] = {}  # scenario -> its running canary, loaded
        self.refused: dict[str, str] = {}  # version name -> why it cannot be served
        self.on_swap: Callable[[], None] = lambda: None  # e.g. a metrics counter
        self._in_use: Counter[str] = Counter()
        self._retired_at: dict[str, float] = {}
        self._lock = asyncio.Lock()  # one swap at a time
        self._tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.sync()
        self._tasks = [asyncio.create_task(self._poll_forever(), name="adapter-poll")]
        if self.redis_url:
            self._tasks.append(asyncio.create_task(self._listen_forever(), name="adapter-events"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def active(self) -> str | None:
        """The version the default scenario serves now (None: the base model)."""
        return self.actives.get(DEFAULT_SCENARIO)

    # ------------------------------------------------------------------ requests

    def resolve(self, model: str, scenario: str | None = None, request_id: str | None = None) -> Served:
        """The scenario and adapter a request's `model` names now; `scenario` is the caller's default
        (its API key's), which `r3` and the served id mean; `request_id` places an unpinned request on
        its scenario's canary or not. Raises `UnknownModel` for a name that is none of those in the
        module's list (an unknown scenario included)."""
        default = scenario if scenario in self.actives else DEFAULT_SCENARIO
        if model in (self.engine.model_id, DEFAULT_LINEAGE):
            return self._unpinned(default, request_id)
        if model == "base":
            return Served(default, None)
        if model in self.static_adapters:
            return Served(default, model)
        if model in self.actives:
            return self._unpinned(model, request_id)
        if (version := version_of(model)) is not None:
            lineage = version.rsplit("-v", 1)[0]
            if scenario_of_lineage(lineage) in self.actives:
                return Served(scenario_of_lineage(lineage), version)
        raise UnknownModel(model)

    def _unpinned(self, scenario: str, request_id: str | None) -> Served:
        canary = self.canaries.get(scenario)
        if canary is None:
            return Served(scenario, self.actives[scenario])
        if request_id is not None and in_canary(request_id, canary.fraction):
            return Served(scenario, canary.version, canary=True)
        return Served(scenario, self.actives[scenario], canary=False)

    @asynccontextmanager
    async def pin(self, model: str, scenario: str | None = None, request_id: str | None = None) -> AsyncIterator[Served]:
        """What `model` names (`resolve`), its adapter held loaded until the block ends (all of a
        request's attempts)."""
        served = self.resolve(model, scenario, request_id)
        adapter = served.adapter
        if adapter is None:
            yield served
            return
        self._in_use[adapter] += 1  # counted before any await: a swap cannot unload it underneath
        try:
            if adapter not in self.engine.adapters():
                await self._load_pinned_version(adapter, model)
            yield served
        finally:
            self._in_use[adapter] -= 1
            if not self._in_use[adapter]:
                del self._in_use[adapter]

    async def _load_pinned_version(self, name: str, model: str) -> None:
        version = await self.registry.get(name)
        if version is None or not version.servable:
            raise UnknownModel(model)
        async with self._lock:
            if name not in self.engine.adapters():
                await self._load(version)
                self._retired_at.setdefault(name, time.monotonic())  # not active: unload when idle

    def served_models(self) -> list[str]:
        """Loaded registry versions, as clients may name them."""
        return [model_name(name) for name in self.engine.adapters()
                if name not in self.static_adapters and version_of(name) is not None]

    # ------------------------------------------------------------------ swapping

    async def sync(self) -> None:
        """Make each scenario's active version in the registry the one served (and unload idle old ones)."""
        async with self._lock:  # read and swap as one step: a stale read must not undo a newer swap
            try:
                scenarios = await self.registry.scenario_names()
                versions = await self.registry.actives()
                canaries = await self.registry.running_canaries()
            except Exception as error:  # noqa: BLE001 - the database being down must not stop serving
                log.warning("could not read the active adapter versions (%s); serving %s", error,
                            self._serving())
                return
            for scenario in scenarios:
                self.actives.setdefault(scenario, None)
                await self._swap_to(scenario, versions.get(scenario))
            await self._follow_canaries(canaries)
            await self._unload_idle()

    async def _follow_canaries(self, running: dict[str, tuple[Version, float]]) -> None:
        """Serve each scenario's running canary (loading its version first), and stop serving ended ones."""
        for scenario in set(self.canaries) - set(running):
            ended = self.canaries.pop(scenario)
            self._retired_at.setdefault(ended.version, time.monotonic())
            log.info("scenario %s: the canary %s ended", scenario, ended.version)
        for scenario, (version, fraction) in running.items():
            if (scenario in self.canaries and self.canaries[scenario].version == version.name) \
                    or version.name in self.refused:
                continue
            if version.name not in self.engine.adapters():
                try:
                    await self._load(version)
                except (EngineError, ValueError, OSError) as error:
                    self.refused[version.name] = str(error)
                    log.error("refusing canary version %s: %s", version.name, error)
                    continue
            self._retired_at.pop(version.name, None)
            self.canaries[scenario] = LiveCanary(version.name, fraction)
            log.info("scenario %s: canary %s serves %g of its unpinned requests", scenario, version.name, fraction)

    def _serving(self) -> str:
        return ", ".join(f"{scenario}: {name or 'base'}" for scenario, name in self.actives.items())

    async def _swap_to(self, scenario: str, version: Version | None) -> None:
        target, current = (version.name if version else None), self.actives[scenario]
        if target == current or target in self.refused:
            return
        if target is not None and target not in self.engine.adapters():
            try:
                await self._load(version)
            except (EngineError, ValueError, OSError) as error:
                self.refused[target] = str(error)
                log.error("refusing adapter version %s: %s; scenario %s serves %s", target, error, scenario,
                          current or "base")
                return
        self.actives[scenario] = target  # the swap itself: one assignment
        self._retired_at.pop(target, None)
        if current is not None:
            self._retired_at[current] = time.monotonic()
        self.on_swap()
        log.info("scenario %s serves adapter version %s (was %s)", scenario, target or "base", current or "base")

    async def _load(self, version: Version) -> None:
        actual = await asyncio.to_thread(adapter_sha256, Path(version.path))
        if actual != version.sha256:
            raise ValueError(f"sha256 of {version.path} is {actual}, the registry says {version.sha256}")
        await self.engine.load_adapter(version.name, Path(version.path))

    async def _unload_idle(self) -> None:
        now = time.monotonic()
        for name, since in list(self._retired_at.items()):
            serving = {*self.actives.values(), *(canary.version for canary in self.canaries.values())}
            if name not in serving and not self._in_use[name] and now - since >= self.grace_s:
                del self._retired_at[name]
                if name in self.engine.adapters():
                    try:
                        await self.engine.unload_adapter(name)
                    except Exception as error:  # noqa: BLE001 - e.g. a request pinned it meanwhile
                        self._retired_at[name] = now
                        log.info("keeping %s loaded for now: %s", name, error)

    async def _sync_and_go_on(self) -> None:
        """`sync`, logging whatever it raises: one failed sync must not end the loop that called it."""
        try:
            await self.sync()
        except Exception:  # noqa: BLE001 - the next sync may succeed; a dead loop never would
            log.exception("adapter sync failed; serving %s", self._serving())

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            await self._sync_and_go_on()

    async def _listen_forever(self) -> None:
        """Sync at each adapter event. Redis being down is the store's to log and retry; the polling goes on."""
        async with aclosing(adapter_events(self.redis_url, retry_s=self.poll_s)) as events:
            async for event in events:  # an event only wakes a sync: the database says what is active
                log.info("adapter event: %s is active in scenario %s", event.active or "base", event.scenario)
                await self._sync_and_go_on()
