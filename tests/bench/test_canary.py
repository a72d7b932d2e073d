"""`bench/canary.py` in small: the live canary's real decision code on simulated outcomes (no model)."""

from __future__ import annotations

from bench.canary import CASES, simulate, summary
from r3.canary import CanaryDecision, CanaryPolicy

CANARIES = 40
AT_MARGIN, WORSE, BETTER = (next(c for c in CASES if c.shift == shift and c.max_episodes is None)
                            for shift in (-0.02, -0.05, 0.05))


def test_a_canary_worse_by_the_margin_is_not_promoted() -> None:
    """The test promotes one at most alpha / 2 of the time (0.025 here): 4 of 40 is far beyond that."""
    run = simulate(AT_MARGIN, CANARIES, seed=11)
    assert run.count(CanaryDecision.PROMOTE) <= 4
    assert run.count(CanaryDecision.ABORT) >= CANARIES // 2  # it is worse: most are found so
    assert summary(run, CanaryPolicy().alpha)["false_promotion_within_alpha"]


def test_a_clearly_worse_canary_is_aborted_and_a_better_one_promoted_early() -> None:
    worse, better = simulate(WORSE, CANARIES, seed=12), simulate(BETTER, CANARIES, seed=13)
    assert worse.count(CanaryDecision.ABORT) == CANARIES
    assert better.count(CanaryDecision.PROMOTE) >= CANARIES - 2
    policy = CanaryPolicy()
    for run in (worse, better):  # long before the limit, and counted in the canary's own episodes
        quartiles = summary(run, policy.alpha)["canary_episodes_quartiles"]
        assert quartiles[2] < policy.max_episodes / 2
        assert (run.canary_episodes < run.episodes).all()
