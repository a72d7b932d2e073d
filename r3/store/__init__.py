"""Where episodes live. The interface is what the server needs; `sql.SqlEpisodeStore` implements it
for Postgres and SQLite, and `episode_log.EpisodeLog` puts a journal and the stream in front of it.

The store is the only API the server and the trainer share, and neither writes SQL or Redis commands
of its own: training rounds and the trainer's queries are `rounds.TrainingRounds`, the episode
stream's producer and consumer are in `stream`, adapter versions, their events (publisher and
subscriber) and the admin audit log in `registry`. The failures a caller catches are named in `errors`."""

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
