"""Episodes in a dict: the embedded store until the database store lands (and for tests)."""

from __future__ import annotations

import copy

from r3.episodes import Episode


class InMemoryEpisodeStore:
    def __init__(self) -> None:
        self._episodes: dict[str, Episode] = {}
        self._completions: dict[str, tuple[str, int]] = {}

    async def save(self, episode: Episode) -> None:
        # A copy, so the caller's later changes reach the store only through another save, as with a database.
        self._episodes[episode.id] = copy.deepcopy(episode)
        for attempt in episode.attempts:
            self._completions[attempt.completion_id] = (episode.id, attempt.number)

    async def get(self, episode_id: str, tenant: str | None) -> Episode | None:
        episode = self._episodes.get(episode_id)
        if episode is None or episode.tenant != tenant:
            return None
        return copy.deepcopy(episode)

    async def by_completion_id(self, completion_id: str, tenant: str | None) -> tuple[Episode, int] | None:
        found = self._completions.get(completion_id)
        if found is None:
            return None
        episode = await self.get(found[0], tenant)
        return (episode, found[1]) if episode else None
