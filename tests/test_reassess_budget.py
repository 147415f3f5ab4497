"""Reassessment within budget: a busy service does not reassess more often than the spec allows."""

from __future__ import annotations

from datetime import timedelta

from tests.report_factory import make_spec
from tests.test_policy_adapt import T0, alpha, observe, serving


def test_no_reassessment_within_the_minimum_interval_however_many_requests() -> None:
    spec = make_spec(candidates=["alpha"], evaluation={"minReassessInterval": "10m"})
    state = serving(3, [alpha()], spec)
    assert observe(state, spec, T0 + timedelta(minutes=9), requests=10_000) is None
    decision = observe(state, spec, T0 + timedelta(minutes=10), requests=10_000)
    assert decision is not None and decision.kind == "reassess" and "10000 requests" in decision.reason


def test_the_default_minimum_interval_is_five_minutes() -> None:
    spec = make_spec(candidates=["alpha"])
    assert spec.evaluation.min_reassess_interval == 300.0
    state = serving(3, [alpha()], spec)
    assert observe(state, spec, T0 + timedelta(minutes=4), requests=1_000) is None
