"""95% Wilson score bounds for a rate measured on n evaluation tokens.

A decision taken on 16 tokens ("agreement 1.000") is not one taken on 512; the bounds say
how far the true rate can be from the measured one. Wilson's interval (Wilson 1927; method 3
in Newcombe 1998) stays inside [0, 1] and is not degenerate at a rate of 0 or 1, where the
plain normal interval collapses to a point, which is exactly where early-exit rates sit.

It treats the n tokens as independent draws. Tokens of one reply are correlated, so the true
uncertainty is somewhat larger; the bound is a floor on caution, not a guarantee.
"""

from __future__ import annotations

import math

# Two-sided 95%: the 97.5th percentile of the standard normal distribution.
Z_95 = 1.959963984540054


def wilson_interval(rate: float, num_trials: int, z: float = Z_95) -> tuple[float, float]:
    """(lower, upper) bound of a proportion measured as ``rate`` over ``num_trials`` trials.

    With no trials nothing is known: (0, 1).
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    if num_trials < 0:
        raise ValueError(f"num_trials must be >= 0, got {num_trials}")
    if num_trials == 0:
        return 0.0, 1.0
    n = num_trials
    spread = z * z / n
    center = (rate + spread / 2) / (1 + spread)
    half_width = z * math.sqrt(rate * (1 - rate) / n + spread / (4 * n)) / (1 + spread)
    # At a rate of 0 (1) the lower (upper) bound is exactly 0 (1); rounding would miss it by an ulp.
    lower = 0.0 if rate == 0.0 else max(0.0, center - half_width)
    upper = 1.0 if rate == 1.0 else min(1.0, center + half_width)
    return lower, upper


def wilson_lower_bound(rate: float, num_trials: int) -> float:
    """The true rate is at least this, at 95% confidence (two-sided interval's lower end)."""
    return wilson_interval(rate, num_trials)[0]


def wilson_upper_bound(rate: float, num_trials: int) -> float:
    """The true rate is at most this, at 95% confidence (two-sided interval's upper end)."""
    return wilson_interval(rate, num_trials)[1]
