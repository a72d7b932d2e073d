"""r3.stats: the Wilson interval every report uses."""

import pytest

from r3.stats import Z95, wilson


def test_wilson_interval_matches_known_values() -> None:
    low, high = wilson(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    low, high = wilson(0, 10)  # the upper end is z² / (n + z²)
    assert low == 0.0 and high == pytest.approx(Z95**2 / (10 + Z95**2))
    low, high = wilson(10, 10)
    assert high == pytest.approx(1.0) and low == pytest.approx(1 - Z95**2 / (10 + Z95**2))
    assert wilson(0, 0) == (0.0, 1.0)
