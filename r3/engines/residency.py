"""Which registered LoRA adapters an engine holds in memory: at most `capacity`, least recently used leaving first.

An engine registers any number of adapters (`Engine.load_adapter`: a name and a folder) but keeps
only `R3_MAX_RESIDENT_ADAPTERS` of them resident, their weights in the model; a request for one that
is not waits while it is loaded again. This is the transformers engine's bookkeeping: the order in
which resident adapters were last used and which one to evict. vLLM keeps its own, the same policy
(`LRUCacheWorkerLoRAManager`: `max_cpu_loras` adapters in CPU memory, `max_loras` of them in GPU slots).
"""

from __future__ import annotations

from collections.abc import Collection


class Residency:
    def __init__(self, capacity: int) -> None:
        """At most `capacity` (≥ 1) adapters resident; ValueError otherwise."""
        if capacity < 1:
            raise ValueError(f"at least one adapter must fit in memory, not {capacity}")
        self.capacity = capacity
        # Least recently used first. A tuple, replaced whole, so another thread may read it while it changes.
        self.order: tuple[str, ...] = ()

    def __contains__(self, name: object) -> bool:
        return name in self.order

    def __len__(self) -> int:
        return len(self.order)

    @property
    def full(self) -> bool:
        return len(self.order) >= self.capacity

    def use(self, name: str) -> None:
        """`name` is resident and was used just now: the last to leave."""
        self.order = (*(n for n in self.order if n != name), name)

    def drop(self, name: str) -> None:
        """`name` is no longer resident (evicted or unregistered); nothing if it was not."""
        self.order = tuple(n for n in self.order if n != name)

    def victim(self, busy: Collection[str], wanted: Collection[str] = ()) -> str | None:
        """The adapter to evict to make room for another: the least recently used one that no running
        request uses (`busy`: never evicted), preferring one no waiting request asks for (`wanted`: it
        would be loaded again at once); None when every resident adapter is busy."""
        idle = [name for name in self.order if name not in busy]
        return next((name for name in idle if name not in wanted), idle[0] if idle else None)
