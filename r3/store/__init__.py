"""Where episodes live. The interface is what the server needs; `sql.SqlEpisodeStore` implements it
for Postgres and SQLite, and `episode_log.EpisodeLog` puts a journal and the stream in front of it."""

from __future__ import annotations

from typing import Protocol

from r3.episodes import Episode


class EpisodeStore(Protocol):
    async def save(self, episode: Episode) -> None:
        """Insert the episode, or replace its earlier version (attempts and feedback are added over time)."""
        ...

    async def get(self, episode_id: str, tenant: str | None) -> Episode | None:
        """The episode if it exists and belongs to `tenant`."""
        ...

    async def by_completion_id(self, completion_id: str, tenant: str | None) -> tuple[Episode, int] | None:
        """The episode and attempt number that a returned completion id belongs to."""
        ...
