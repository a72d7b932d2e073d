"""Where R3's state lives: the only API the server and the trainer share. Neither writes SQL or Redis
commands of its own.

- `sql.SqlEpisodeStore`: episodes in Postgres or SQLite; `episode_log.EpisodeLog` puts a journal
  and the stream in front of it (what the server records through).
- `rounds.TrainingRounds`: training rounds and the trainer's queries.
- `stream`: the episode stream's producer and consumer.
- `registry`: adapter versions, their events (publisher and subscriber) and the admin audit log.
- `keys`: API keys. `errors`: the failures a caller catches, by name (`DatabaseUnavailable`).
"""
