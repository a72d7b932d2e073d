"""Where R3's state lives: the only API the server and the trainer share. Neither writes SQL or Redis
commands of its own.

- `store.open_store(settings)`: the one way a process connects; a `Store` with the parts below.
- `sql.SqlEpisodeStore`: episodes in Postgres or SQLite; `episode_log.EpisodeLog` puts a journal
  and the stream in front of it (what the server records through).
- `rounds.TrainingRounds`: training rounds and the trainer's queries.
- `stream`: the episode stream's producer and consumer.
- `registry`: adapter versions, their events (publisher and subscriber) and the admin audit log.
- `keys`: API keys. `errors`: the failures a caller catches, by name (`DatabaseUnavailable`).
- `models`: the schema, and `VersionStatus` (an adapter version's status; a round's is `rounds.RoundStatus`).
"""
