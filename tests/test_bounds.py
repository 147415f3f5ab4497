"""95% Wilson bounds against published values, and the report fields built on them.

Reference values: Newcombe, "Two-sided confidence intervals for the single proportion:
comparison of seven methods", Statistics in Medicine 17 (1998) 857-872, Table I, method 3
(Wilson score interval without continuity correction), given there to 4 decimals.
"""

from __future__ import annotations

import json

import pytest

from helios_contracts.bounds import wilson_interval, wilson_lower_bound, wilson_upper_bound
from helios_contracts.reports import EvaluationReport
from tests.report_factory import make_report

NEWCOMBE_TABLE_I = [
    # successes, trials, lower, upper
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
]
Z_SQUARED = 1.959963984540054**2  # 3.8415: the 95% normal quantile, squared


@pytest.mark.parametrize(("successes", "trials", "lower", "upper"), NEWCOMBE_TABLE_I)
def test_wilson_interval_matches_newcombe_1998(successes: int, trials: int, lower: float, upper: float) -> None:
    low, high = wilson_interval(successes / trials, trials)
    assert low == pytest.approx(lower, abs=5e-5)
    assert high == pytest.approx(upper, abs=5e-5)


@pytest.mark.parametrize("trials", [1, 16, 256, 512, 10_000])
def test_bounds_at_the_ends_have_a_closed_form(trials: int) -> None:
    # Worked by hand from the formula at p = 1 and p = 0: the square root is z / 2n, so
    # lower(1) = n / (n + z^2) and upper(0) = z^2 / (n + z^2); the other ends are exact.
    assert wilson_lower_bound(1.0, trials) == pytest.approx(trials / (trials + Z_SQUARED), rel=1e-12)
    assert wilson_upper_bound(0.0, trials) == pytest.approx(Z_SQUARED / (trials + Z_SQUARED), rel=1e-12)
    assert wilson_upper_bound(1.0, trials) == 1.0 and wilson_lower_bound(0.0, trials) == 0.0


def test_bounds_narrow_with_more_tokens_and_bracket_the_rate() -> None:
    # The case: "agreement 1.000" from 16 tokens is only >= 0.806 at 95%; from 512, >= 0.993.
    assert wilson_lower_bound(1.0, 16) == pytest.approx(0.8064, abs=1e-4)
    assert wilson_lower_bound(1.0, 512) == pytest.approx(0.9926, abs=1e-4)
    widths = [wilson_upper_bound(0.9, n) - wilson_lower_bound(0.9, n) for n in (10, 100, 1000, 10_000)]
    assert widths == sorted(widths, reverse=True)
    for n in (10, 100, 1000):
        assert wilson_lower_bound(0.9, n) < 0.9 < wilson_upper_bound(0.9, n)


def test_no_tokens_means_nothing_is_known_and_bad_input_is_rejected() -> None:
    assert wilson_interval(0.5, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="rate"):
        wilson_interval(1.5, 10)
    with pytest.raises(ValueError, match="num_trials"):
        wilson_interval(0.5, -1)


# --- the report fields ------------------------------------------------------------------------


def test_a_report_carries_the_bounds_per_layer() -> None:
    report = make_report(exit_histogram=(10, 5, 1), greedy_agreement=[0.8, 0.9375, 1.0], tokens_per_count=1)
    assert report.num_tokens == 16
    assert report.greedy_agreement_lower_bound_by_layer == pytest.approx(
        [wilson_lower_bound(rate, 16) for rate in (0.8, 0.9375, 1.0)]
    )
    # Breaches: 6 and 1 of 16 tokens at L = 1, 2; none at full depth, where none can happen.
    assert report.breach_rate_upper_bound_by_layer == pytest.approx(
        [wilson_upper_bound(6 / 16, 16), wilson_upper_bound(1 / 16, 16), 0.0]
    )


def test_an_old_report_without_the_bounds_still_loads_and_derives_them() -> None:
    document = make_report(tokens_per_count=1).model_dump(mode="json")
    for name in ("greedy_agreement_lower_bound_by_layer", "breach_rate_upper_bound_by_layer"):
        del document[name]
    for name in ("time_budget_seconds", "is_cut_by_time_budget"):
        del document[name]
    old = EvaluationReport.model_validate_json(json.dumps(document))
    assert (
        old.greedy_agreement_lower_bound_by_layer
        == make_report(tokens_per_count=1).greedy_agreement_lower_bound_by_layer
    )
    assert old.breach_rate_upper_bound_by_layer[0] == pytest.approx(wilson_upper_bound(0.5, 100))
    assert old.time_budget_seconds is None and not old.is_cut_by_time_budget


def test_bounds_given_in_a_report_are_kept_and_must_have_one_entry_per_layer() -> None:
    document = make_report(exit_histogram=(3, 1), tokens_per_count=1).model_dump(mode="json")
    document["greedy_agreement_lower_bound_by_layer"] = [0.5, 0.6]
    assert EvaluationReport.model_validate(document).greedy_agreement_lower_bound_by_layer == [0.5, 0.6]
    document["breach_rate_upper_bound_by_layer"] = [0.5]
    with pytest.raises(ValueError, match="breach_rate_upper_bound_by_layer must have num_layers_total=2"):
        EvaluationReport.model_validate(document)
