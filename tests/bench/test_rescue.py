"""`bench/rescue.py` without a model: how a rescue rate becomes the share of GRPO groups with signal."""

from __future__ import annotations

import itertools

import pytest

from bench.rescue import signal_share


@pytest.mark.parametrize("p", [0.0, 0.1, 0.3, 0.5, 0.9, 1.0])
def test_signal_share_counts_groups_holding_a_pass_and_a_fail(p):
    # Enumerate every outcome of 4 retries: a group carries signal when its rewards are not all equal.
    expected = sum(
        p ** sum(outcome) * (1 - p) ** (4 - sum(outcome))
        for outcome in itertools.product((0, 1), repeat=4)
        if 0 < sum(outcome) < 4
    )
    assert signal_share(p, 4) == pytest.approx(expected)


def test_no_rescues_means_no_signal_and_even_odds_the_most():
    assert signal_share(0.0) == 0.0
    assert signal_share(0.5) == pytest.approx(0.875)
    assert max(signal_share(p / 100) for p in range(101)) == pytest.approx(signal_share(0.5))
