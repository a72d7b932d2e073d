"""Small statistics shared by the gate's reports, the dashboard, `r3 replay` and the benchmarks."""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile: a two-sided 95% interval


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a rate of `k` successes in `n` trials, as (low, high) in [0, 1];
    (0, 1) when `n` is 0. Sound for small `n` and for rates of 0 or 1, unlike the normal
    approximation. Source: E. B. Wilson, "Probable inference, the law of succession, and statistical
    inference", JASA 22 (1927)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def sign_test_p_value(wins: int, losses: int) -> float:
    """The exact one-sided sign test on paired outcomes (McNemar's exact test when outcomes are
    pass/fail): P(X ≥ wins), X ~ Binomial(wins + losses, 1/2).

    `wins`: pairs in which the second of two versions did better; `losses`: pairs in which it did
    worse. Ties say nothing about which is better and are left out; 1.0 when every pair is a tie.
    Source: W. J. Dixon and A. M. Mood, "The statistical sign test", JASA 41 (1946); Q. McNemar,
    Psychometrika 12 (1947)."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: hypothesis i is rejected with the
    family-wise error rate (the chance of rejecting any true one) at most α when its adjusted p-value
    is below α. Valid whatever the dependence between the tests, and never less powerful than
    Bonferroni's (which multiplies every p-value by their number).

    The k-th smallest p-value (k from 0) is multiplied by (m − k), capped at 1, and made no smaller
    than the one before it. Source: S. Holm, "A simple sequentially rejective multiple test
    procedure", Scandinavian Journal of Statistics 6 (1979); adjusted p-values as in S. P. Wright,
    "Adjusted p-values for simultaneous inference", Biometrics 48 (1992)."""
    m = len(p_values)
    adjusted = [1.0] * m
    running = 0.0
    for k, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - k) * p_values[i]))
        adjusted[i] = running
    return adjusted
