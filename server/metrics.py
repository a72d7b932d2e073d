"""Prometheus metrics (`GET /metrics`): requests, attempts, verdicts and scores per version, reflect-retry
rescues, model-judge calls and tokens, latency, swaps, rollbacks, training rounds by status (counted
in the database at each scrape: the trainer is another process), the episode log's backlog and
refused episodes, and whether its journal can be written.

`Metrics.scrape` brings the gauges read from elsewhere up to date and gives the text a scrape answers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from r3.episodes import Episode
from r3.store.episode_log import EpisodeLog
from r3.store.errors import DatabaseUnavailable
from r3.store.rounds import TrainingRounds


SCORE_BUCKETS = tuple(tenth / 10 for tenth in range(1, 11))  # 0.1 … 1.0; a pass/fail check fills only 0.1 and 1.0


class Metrics:
    """One registry per app, so several apps in one process (tests, benchmarks) keep apart."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("r3_requests", "Chat completions served", ["version"], registry=r)
        self.attempts = Counter("r3_attempts", "Attempts generated (first attempts and retries)", ["version"], registry=r)
        self.verdicts = Counter("r3_verdicts", "Verifier verdicts: pass, fail, or unjudged (the verifier's judge "
                                "could give none: a model judge down, timed out or unreadable)", ["version", "verdict"],
                                registry=r)
        self.verdict_scores = Histogram("r3_verdict_score", "Verifier scores of judged attempts, in [0, 1] (1 or 0 "
                                        "from a pass/fail check), by attempt: first or retry", ["version", "attempt"],
                                        registry=r, buckets=SCORE_BUCKETS)
        self.rescues = Counter("r3_rescues", "Requests whose retry passed after a failed attempt", ["version"],
                               registry=r)
        self.judge_calls = Counter("r3_judge_calls", "Model-judge calls made judging attempts (score_model, "
                                   "label_model), tries again included", ["version"], registry=r)
        self.judge_tokens = Counter("r3_judge_tokens", "Tokens of those calls, as the judge counted them: what it "
                                    "read (prompt) and wrote (completion)", ["version", "kind"], registry=r)
        self.latency = Histogram("r3_request_seconds", "Chat completion latency, all attempts included",
                                 ["reflected"], registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120))
        self.swaps = Counter("r3_adapter_swaps", "Changes of the served adapter version", registry=r)
        self.swaps_requested = Counter("r3_adapter_activations", "Activations asked for", ["actor"], registry=r)
        self.rollbacks = Counter("r3_auto_rollbacks", "Automatic rollbacks", registry=r)
        self.training_rounds = Gauge("r3_training_rounds", "Training rounds by status", ["status"], registry=r)
        self.backlog = Gauge("r3_episode_log_backlog", "Episodes recorded but not yet in the database", registry=r)
        self.rejected = Gauge("r3_episode_log_rejected", "Episodes the database refused since the start, "
                              "set aside in the journal's rejected.jsonl", registry=r)
        self.journal_writable = Gauge("r3_episode_journal_writable", "1 while the episode journal takes "
                                      "episodes, 0 while it cannot (its disk full or read-only: requests get "
                                      "a 503)", registry=r)

    def observe(self, episode: Episode, seconds: float) -> None:
        version = episode.adapter or "base"
        self.requests.labels(version).inc()
        self.attempts.labels(version).inc(len(episode.attempts))
        for attempt in episode.attempts:
            if attempt.success is not None:
                self.verdicts.labels(version, "pass" if attempt.success else "fail").inc()
            elif attempt.unjudged:
                self.verdicts.labels(version, "unjudged").inc()
            if attempt.score is not None:
                self.verdict_scores.labels(version, "first" if attempt.number == 1 else "retry").observe(attempt.score)
            if attempt.judge_calls:
                self.judge_calls.labels(version).inc(attempt.judge_calls)
                self.judge_tokens.labels(version, "prompt").inc(attempt.judge_prompt_tokens)
                self.judge_tokens.labels(version, "completion").inc(attempt.judge_completion_tokens)
        if len(episode.attempts) > 1 and episode.attempts[-1].success:
            self.rescues.labels(version).inc()
        self.latency.labels(str(len(episode.attempts) > 1).lower()).observe(seconds)

    async def scrape(self, episode_log: EpisodeLog, rounds: TrainingRounds) -> bytes:
        """Every metric in Prometheus' text format (`CONTENT_TYPE_LATEST`), once the gauges kept
        elsewhere are read: the episode log's backlog, refused episodes and journal, the rounds by status."""
        self.backlog.set(episode_log.backlog)
        self.rejected.set(episode_log.rejected)
        self.journal_writable.set(episode_log.unrecordable() is None)
        try:
            counts = await rounds.count_by_status()
        except DatabaseUnavailable:  # the database is down: the rest is still served, rounds as last seen
            counts = {}
        for status, count in counts.items():
            self.training_rounds.labels(status).set(count)
        return generate_latest(self.registry)
