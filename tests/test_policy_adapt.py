"""The monitoring loop (HELIOS steps 5-6): windows, storms, headroom, shadow, cooldown, staleness."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from pydantic import ValidationError

from helios_contracts.reports import EvaluationReport
from helios_operator.policy import (
    AdaptState,
    Decision,
    LayerRaise,
    Telemetry,
    adapt,
    apply,
    initial_state,
    record,
    reselect,
    select,
    step,
    with_reports,
)
from helios_operator.policy.window import BreachEntry, BreachWindow, ShadowEntry, ShadowWindow
from helios_operator.spec import HeliosDeploymentSpec
from tests.report_factory import MB, NO_BREACH_BUDGET, make_report, make_spec

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CHANGES = {"select", "add_layers", "drop_layers", "switch_model"}
# breach rate by L: 0.70 0.50 0.35 0.24 0.15 0.07 0.02 0.00; the floor 0.98 is met from L = 3
# (at 95%: the bounds of the factory's 100,000 tokens lie within 0.002 of these rates).
HISTOGRAM = (30, 20, 15, 11, 9, 8, 5, 2)
AGREEMENT = [0.90, 0.95, 0.985, 0.99, 0.995, 0.998, 1.0, 1.0]


def alpha(**overrides: Any) -> EvaluationReport:
    return make_report("alpha", **{"exit_histogram": HISTOGRAM, "greedy_agreement": AGREEMENT, **overrides})


def beta(**overrides: Any) -> EvaluationReport:
    return make_report("beta", **{"exit_histogram": HISTOGRAM, "greedy_agreement": AGREEMENT, **overrides})


def serving(
    layers: int,
    reports: list[EvaluationReport],
    spec: HeliosDeploymentSpec,
    *,
    model: str = "alpha",
    since: datetime = T0,
) -> AdaptState:
    decision = Decision(kind="select", model=model, layers=layers, reason="test")
    return initial_state(decision, reports, spec, None, since)


def scrape(
    state: AdaptState,
    at: datetime,
    *,
    tokens: int = 100,
    breaches: int = 0,
    requests: int = 0,
    histogram: list[int] | None = None,
    shadow: tuple[int, int] = (0, 0),
) -> Telemetry:
    if histogram is None:  # breaches exit (unconfident) at L, the rest at layer 1
        histogram = [tokens - breaches] + [0] * (state.layers - 2) + [breaches] if state.layers > 1 else [tokens]
    return Telemetry(
        observed_at=at,
        model=state.model,
        layers=state.layers,
        num_new_tokens=tokens,
        num_new_breaches=breaches,
        num_new_requests=requests,
        exit_histogram=histogram,
        num_shadow_tokens=shadow[0],
        num_shadow_matches=shadow[1],
    )


def observe(state: AdaptState, spec: HeliosDeploymentSpec, at: datetime, **counts: Any) -> Decision | None:
    telemetry = scrape(state, at, **counts)
    return adapt(record(state, telemetry), telemetry, spec, at)


LATER = T0 + timedelta(minutes=5)  # past the cooldown of the initial selection


# --- windows ----------------------------------------------------------------------------


def test_breach_window_keeps_the_last_w_tokens_pro_rata() -> None:
    window = BreachWindow(100)
    window = window.add(BreachEntry(80, 40, (40.0, 40.0)))
    window = window.add(BreachEntry(60, 6, (54.0, 6.0)))
    assert window.num_tokens == pytest.approx(100)
    # The newest 60 tokens whole, plus half of the older scrape's 80.
    assert window.num_breaches == pytest.approx(6 + 20)
    assert window.exit_histogram() == pytest.approx((54 + 20, 6 + 20))
    assert window.is_full
    assert window.add(BreachEntry(0, 0)) is window
    assert window.add(BreachEntry(100, 1)).num_breaches == pytest.approx(1)


def test_breach_window_histogram_unknown_when_a_scrape_lacked_it() -> None:
    window = BreachWindow(100).add(BreachEntry(50, 0, (50.0,))).add(BreachEntry(10, 0))
    assert window.exit_histogram() is None
    assert not window.is_full
    assert BreachWindow(100).exit_histogram() is None


def test_shadow_window_agreement() -> None:
    window = ShadowWindow(50).add(ShadowEntry(40, 40)).add(ShadowEntry(20, 10))
    assert window.num_tokens == pytest.approx(50)
    assert window.agreement == pytest.approx((30 + 10) / 50)
    assert ShadowWindow(50).agreement is None


# --- telemetry and state ---------------------------------------------------------------


def test_telemetry_rejects_inconsistent_counts() -> None:
    base = {"observed_at": T0, "model": "alpha", "layers": 2, "num_new_tokens": 10, "num_new_requests": 1}
    with pytest.raises(ValidationError, match="num_new_breaches"):
        Telemetry(**base, num_new_breaches=11)
    with pytest.raises(ValidationError, match="layers=2"):
        Telemetry(**base, num_new_breaches=0, exit_histogram=[10])
    with pytest.raises(ValidationError, match="sum"):
        Telemetry(**base, num_new_breaches=0, exit_histogram=[5, 4])
    with pytest.raises(ValidationError, match="num_shadow_matches"):
        Telemetry(**base, num_new_breaches=0, num_shadow_tokens=1, num_shadow_matches=2)
    with pytest.raises(ValidationError, match="timezone"):
        Telemetry(**{**base, "observed_at": datetime(2026, 1, 1)}, num_new_breaches=0)


def test_record_counts_a_scrape_once_and_only_for_the_current_setting() -> None:
    spec = make_spec()
    state = serving(3, [alpha(), beta()], spec)
    telemetry = scrape(state, LATER, tokens=40, breaches=4, requests=3)
    once = record(state, telemetry)
    assert (once.breaches.num_tokens, once.breaches.num_breaches) == (40, 4)
    assert once.num_requests_since_assessment == 3
    assert record(once, telemetry) == once  # the same scrape again
    other = telemetry.model_copy(update={"layers": 4, "exit_histogram": [], "observed_at": LATER + timedelta(1)})
    assert record(once, other) == once  # a worker still on another layer count


def test_apply_moves_to_the_new_setting_with_fresh_windows() -> None:
    spec = make_spec()
    state = record(serving(3, [alpha(), beta()], spec), scrape(serving(3, [alpha()], spec), LATER, breaches=60))
    added = apply(state, Decision(kind="add_layers", model="alpha", layers=6, reason="t"), LATER)
    assert (added.layers, added.breaches.num_tokens, added.last_change_at) == (6, 0, LATER)
    assert added.last_raise == LayerRaise("alpha", 3, LATER)
    switched = apply(added, Decision(kind="switch_model", model="beta", layers=4, reason="t"), LATER)
    assert (switched.model, switched.layers, switched.report.model) == ("beta", 4, "beta")
    assert apply(state, None, LATER) is state
    assert apply(state, Decision(kind="hold", model="alpha", layers=3, reason="t"), LATER) is state
    with pytest.raises(ValueError, match="gamma"):
        apply(state, Decision(kind="switch_model", model="gamma", layers=1, reason="t"), LATER)
    with pytest.raises(ValueError, match="alpha"):
        with_reports(state, [beta()])
    assert with_reports(state, [alpha(tokens_per_second=5.0)]).report.tokens_per_second == 5.0


# --- stale telemetry --------------------------------------------------------------------


def test_stale_telemetry_holds_and_says_so() -> None:
    spec = make_spec()  # stale after 3 x 15 s
    state = serving(3, [alpha()], spec)
    old = scrape(state, LATER, breaches=90)  # a storm, but we cannot trust it any more
    decision = adapt(record(state, old), old, spec, LATER + timedelta(seconds=90))
    assert decision is not None and decision.kind == "hold"
    assert (decision.model, decision.layers) == ("alpha", 3)
    assert "telemetry stale" in decision.reason and "90 s" in decision.reason and "45 s" in decision.reason


def test_missing_telemetry_holds() -> None:
    spec = make_spec()
    decision = adapt(serving(3, [alpha()], spec), None, spec, LATER)
    assert decision is not None and decision.kind == "hold" and "no telemetry" in decision.reason
    assert decision.timestamp == LATER


def test_fresh_telemetry_within_the_limit_is_used() -> None:
    spec = make_spec(monitoring={"staleAfter": "2m"})
    state = serving(3, [alpha()], spec)
    telemetry = scrape(state, LATER, breaches=90)
    decision = adapt(record(state, telemetry), telemetry, spec, LATER + timedelta(seconds=90))
    assert decision is not None and decision.kind == "add_layers"


def test_telemetry_from_another_setting_holds_while_the_change_finishes() -> None:
    spec = make_spec()
    state = serving(3, [alpha()], spec)
    telemetry = Telemetry(
        observed_at=LATER, model="alpha", layers=2, num_new_tokens=10, num_new_breaches=9, num_new_requests=0
    )
    decision = adapt(record(state, telemetry), telemetry, spec, LATER)
    assert decision is not None and decision.kind == "hold" and "waiting" in decision.reason


# --- breach storms ----------------------------------------------------------------------


def test_no_action_at_or_under_the_breach_limit() -> None:
    spec = make_spec()
    assert observe(serving(3, [alpha()], spec), spec, LATER, breaches=50) is None


def test_breach_storm_adds_the_fewest_layers_that_settle_the_window() -> None:
    spec = make_spec()
    big_beta = beta(bytes_per_layer=1000 * MB)  # switching means reading ~8 GB
    decision = observe(serving(3, [alpha(), big_beta], spec), spec, LATER, breaches=60)
    assert decision is not None and decision.kind == "add_layers"
    # Observed 0.60 vs reported 0.35 at L=3: rates scale by 1.71; 25 breaches allowed (0.5 x 50):
    # L=5 -> 0.15 x 1.71 x 100 = 26 (too many), L=6 -> 12.
    assert (decision.model, decision.layers) == ("alpha", 6)
    assert "breach storm: 60 breaches in the last 100 tokens > 50" in decision.reason
    assert "12 breaches per window" in decision.reason
    assert "switch to beta" in decision.reason  # the alternative and its cost are stated
    assert decision.timestamp == LATER


def test_breach_storm_switches_when_switching_costs_less() -> None:
    spec = make_spec()
    small_fast_beta = beta(bytes_per_layer=10 * MB, tokens_per_second=1000.0)
    decision = observe(serving(3, [alpha(), small_fast_beta], spec), spec, LATER, breaches=60)
    assert decision is not None and decision.kind == "switch_model"
    assert (decision.model, decision.layers) == ("beta", 6)
    assert "add layers to 6 would take" in decision.reason


@pytest.mark.parametrize(("bandwidth", "kind"), [("200Mi", "add_layers"), ("1Gi", "switch_model")])
def test_load_bandwidth_decides_between_adding_layers_and_switching(bandwidth: str, kind: str) -> None:
    # beta serves twice as fast but is ~6 GB to read; alpha needs only 3 more 100 MB layers.
    # 1 GiB/s: 5.6 s load + 4800 tokens / 542 tok/s = 14.5 s beats 0.3 s + 4800 / 271 = 18 s.
    # 200 MiB/s: 28.8 s of loading makes adding layers cheaper.
    spec = make_spec(monitoring={"loadBandwidth": bandwidth})
    reports = [alpha(), beta(bytes_per_layer=1000 * MB, tokens_per_second=200.0)]
    decision = observe(serving(3, reports, spec), spec, LATER, breaches=60)
    assert decision is not None and decision.kind == kind


def test_storm_with_nothing_that_settles_loads_all_layers_then_holds() -> None:
    hard = make_report("alpha", exit_histogram=(10, 0, 0, 0, 0, 0, 0, 90), num_unconfident=90)
    spec = make_spec(candidates=["alpha"])
    decision = observe(serving(3, [hard], spec), spec, LATER, breaches=95)
    assert decision is not None and (decision.kind, decision.layers) == ("add_layers", 8)
    assert "no option is predicted to settle it" in decision.reason
    at_full_depth = observe(serving(8, [hard], spec), spec, LATER, breaches=95)
    assert at_full_depth is not None and at_full_depth.kind == "hold"
    assert at_full_depth.layers == 8


def test_storm_remedy_respects_the_memory_budget() -> None:
    spec = make_spec(candidates=["alpha"])
    report = alpha()
    decision = Decision(kind="select", model="alpha", layers=3, reason="t")
    # 600 MB holds 5 layers (550 MB) and a few sequences, not 6.
    state = initial_state(decision, [report], spec, 600 * MB, T0)
    result = observe(state, spec, LATER, breaches=60)
    assert result is not None and result.kind == "add_layers" and result.layers == 5
    assert result.max_batch_size is not None and result.max_batch_size > 0


# --- shadow check -----------------------------------------------------------------------


def test_shadow_agreement_below_the_floor_adds_layers() -> None:
    spec = make_spec(candidates=["alpha"], monitoring={"shadow": {"fraction": 0.1, "windowTokens": 50}})
    state = serving(3, [alpha()], spec)
    # Reported agreement at L=3 is 0.985 (1.5% disagree); live it is 0.96 (4%): disagreement x 2.67.
    # Settles where 2.67 x (1 - agreement) <= 0.02, i.e. agreement >= 0.9925: L=5 (0.995).
    decision = observe(state, spec, LATER, breaches=10, shadow=(50, 48))
    assert decision is not None and (decision.kind, decision.layers) == ("add_layers", 5)
    assert "shadow check: 0.960 of the last 50 sampled tokens" in decision.reason


def test_shadow_check_waits_for_a_full_window_and_passes_at_the_floor() -> None:
    spec = make_spec(candidates=["alpha"], monitoring={"shadow": {"fraction": 0.1, "windowTokens": 50}})
    state = serving(3, [alpha()], spec)
    assert observe(state, spec, LATER, breaches=10, shadow=(20, 15)) is None  # only 20 of 50 sampled
    assert observe(state, spec, LATER, breaches=10, shadow=(50, 49)) is None  # 0.98 meets the floor


# --- headroom ---------------------------------------------------------------------------


def test_headroom_drops_to_the_fewest_layers_that_stay_accurate_and_calm() -> None:
    spec = make_spec(candidates=["alpha"])
    state = serving(6, [alpha()], spec)
    decision = observe(state, spec, LATER, histogram=[70, 30, 0, 0, 0, 0])
    # L=2 misses the floor (0.95); L=3 would breach 35 per window (> 25); L=4: 24, agreement 0.99.
    assert decision is not None and (decision.kind, decision.layers) == ("drop_layers", 4)
    assert "headroom" in decision.reason and "0.0% exited beyond layer 4" in decision.reason


def test_headroom_needs_a_full_window_a_histogram_and_an_empty_tail() -> None:
    spec = make_spec(candidates=["alpha"])
    state = serving(6, [alpha()], spec)
    assert observe(state, spec, LATER, tokens=60, histogram=[60, 0, 0, 0, 0, 0]) is None
    assert observe(state, spec, LATER, histogram=[]) is None
    # 10% of tokens still reach layers 5-6 (5% layer 6): they would become breaches.
    assert observe(state, spec, LATER, histogram=[70, 20, 0, 0, 5, 5]) is None


def test_headroom_never_returns_to_a_layer_count_that_just_proved_too_few() -> None:
    spec = make_spec(candidates=["alpha"])
    state = replace(serving(6, [alpha()], spec), last_raise=LayerRaise("alpha", 4, T0))
    calm = {"histogram": [70, 30, 0, 0, 0, 0]}
    decision = observe(state, spec, LATER, **calm)
    assert decision is not None and decision.layers == 5
    after_memory = T0 + timedelta(minutes=11)
    decision = observe(state, spec, after_memory, **calm)
    assert decision is not None and decision.layers == 4


# --- cooldown and hysteresis -------------------------------------------------------------


def test_cooldown_blocks_changes_right_after_one() -> None:
    spec = make_spec(candidates=["alpha"])
    state = serving(3, [alpha()], spec, since=T0)
    assert observe(state, spec, T0 + timedelta(seconds=30), breaches=60) is None
    decision = observe(state, spec, T0 + timedelta(seconds=60), breaches=60)
    assert decision is not None and decision.kind == "add_layers"


def _oscillate(spec: HeliosDeploymentSpec, num_scrapes: int = 80) -> list[tuple[datetime, int, int]]:
    """Traffic that flips between hard and easy every 4 scrapes; returns (time, from, to) changes."""
    report = alpha()
    state = serving(3, [report], spec)
    changes = []
    for index in range(1, num_scrapes + 1):
        now = T0 + timedelta(seconds=15 * index)
        if (index // 4) % 2 == 0:  # hard: 1.8x the reported breach rate at the current L
            breaches = round(min(1.0, 1.8 * report.breach_rate_by_layer[state.layers - 1]) * 100)
            telemetry = scrape(state, now, breaches=breaches)
        else:  # easy: every token confident at layer 1
            telemetry = scrape(state, now, histogram=[100] + [0] * (state.layers - 1))
        before = state.layers
        state, decision = step(state, telemetry, spec, now)
        if decision is not None and decision.kind in CHANGES:
            changes.append((now, before, decision.layers))
    return changes


def test_oscillating_traffic_does_not_make_helios_flap() -> None:
    spec = make_spec(candidates=["alpha"])
    changes = _oscillate(spec)
    assert changes, "the first storm must be answered"
    assert len(changes) <= 2
    times = [T0] + [time for time, _, _ in changes]
    assert all(later - earlier >= timedelta(seconds=60) for earlier, later in pairwise(times))
    # Never back to 3 layers, the count that produced the storm.
    assert all(to != 3 for _, _, to in changes)
    assert changes[0][1:] == (3, 6)


def test_without_cooldown_and_hysteresis_the_same_traffic_flaps() -> None:
    # Shows the oscillation test has teeth: the guards above are what keep the loop stable.
    spec = make_spec(
        candidates=["alpha"],
        monitoring={"cooldown": "0s", "targetBreachFraction": 1.0, "headroom": {"stormMemory": "0s"}},
    )
    changes = _oscillate(spec)
    assert len(changes) >= 6
    assert {(before, after) for _, before, after in changes} == {(3, 4), (4, 3)}


# --- reassessment -----------------------------------------------------------------------


def test_reassess_every_n_requests() -> None:
    spec = make_spec(candidates=["alpha"])
    state = serving(3, [alpha()], spec)
    now = LATER
    state, decision = step(state, scrape(state, now, requests=100), spec, now)
    assert decision is None
    now += timedelta(seconds=15)
    state, decision = step(state, scrape(state, now, requests=60), spec, now)
    assert decision is not None and decision.kind == "reassess"
    assert (decision.model, decision.layers) == ("alpha", 3)
    assert "160 requests since the last assessment (every 150)" in decision.reason
    assert state.num_requests_since_assessment == 0 and state.last_assessment_at == now
    now += timedelta(seconds=15)
    state, decision = step(state, scrape(state, now, requests=149), spec, now)
    assert decision is None


def test_reassess_after_the_interval() -> None:
    spec = make_spec(candidates=["alpha"], evaluation={"reassessInterval": "10m"})
    state = serving(3, [alpha()], spec)
    assert observe(state, spec, T0 + timedelta(minutes=9), requests=1) is None
    decision = observe(state, spec, T0 + timedelta(minutes=10), requests=1)
    assert decision is not None and decision.kind == "reassess" and "600 s" in decision.reason


def test_a_storm_outranks_a_due_reassessment() -> None:
    spec = make_spec(candidates=["alpha"])
    decision = observe(serving(3, [alpha()], spec), spec, LATER, breaches=60, requests=500)
    assert decision is not None and decision.kind == "add_layers"


def test_reselect_keeps_the_current_setting_within_the_improvement_margin() -> None:
    spec = make_spec(monitoring=NO_BREACH_BUDGET)
    state = serving(3, [alpha(), beta()], spec)
    decision = reselect(state, [alpha(), beta(tokens_per_second=103.0)], spec, LATER)
    assert decision.kind == "hold" and (decision.model, decision.layers) == ("alpha", 3)
    assert "only 3.0% better" in decision.reason


def test_reselect_switches_when_another_candidate_is_clearly_better() -> None:
    spec = make_spec(monitoring=NO_BREACH_BUDGET)
    state = serving(3, [alpha(), beta()], spec)
    decision = reselect(state, [alpha(), beta(tokens_per_second=150.0)], spec, LATER)
    assert decision.kind == "switch_model" and (decision.model, decision.layers) == ("beta", 3)
    assert decision.reason.startswith("reassessment: ")
    same = reselect(state, [alpha(), beta()], spec, LATER)
    assert same.kind == "hold" and "still the best" in same.reason


def test_reselect_adds_layers_when_the_current_count_lost_accuracy() -> None:
    spec = make_spec(candidates=["alpha"])
    state = serving(3, [alpha()], spec)
    drifted = alpha(greedy_agreement=[0.85, 0.9, 0.95, 0.981, 0.99, 0.995, 1.0, 1.0])
    decision = reselect(state, [drifted], spec, LATER)
    assert decision.kind == "add_layers" and decision.layers == 4
    with pytest.raises(ValueError, match="alpha"):
        reselect(state, [beta()], spec, LATER)


def test_initial_state_from_select() -> None:
    spec = make_spec(monitoring=NO_BREACH_BUDGET)
    reports = [alpha(), beta(tokens_per_second=300.0)]
    decision = select(reports, spec, None, T0)
    state = initial_state(decision, reports, spec, None, T0)
    assert (state.model, state.layers, state.last_change_at) == ("beta", 3, T0)
    assert state.breaches.capacity == 100 and state.shadow.capacity == 200
    with pytest.raises(ValueError, match="gamma"):
        initial_state(Decision(kind="select", model="gamma", layers=1, reason="t"), reports, spec, None, T0)


# --- selection inside the breach budget (select and adapt share one band) ----------------


def _traffic_like_the_evaluation(state: AdaptState, tokens: int = 100) -> dict[str, Any]:
    """A scrape whose exits and breaches are the evaluation's own, at the served depth."""
    histogram = list(state.report.exit_layer_histogram)
    layers = state.layers
    truncated = [*histogram[: layers - 1], sum(histogram[layers - 1 :])]
    total = sum(truncated)
    counts = [round(tokens * c / total) for c in truncated]
    counts[-1] += tokens - sum(counts)
    breaches = round(tokens * state.report.breach_rate_by_layer[layers - 1])
    return {"tokens": tokens, "breaches": breaches, "histogram": counts}


@pytest.mark.parametrize("objective", ["throughput", "latency", "energy"])
@pytest.mark.parametrize("max_breaches", [10, 30, 50])
def test_select_then_adapt_on_the_same_data_is_a_fixed_point(objective, max_breaches) -> None:
    spec = make_spec(candidates=["alpha"], objective=objective, monitoring={"maxBreaches": max_breaches})
    reports = [alpha()]
    decision = select(reports, spec, None, T0)
    assert decision.breach_rate * 100 <= 0.5 * max_breaches  # inside the band adapt settles into
    state = initial_state(decision, reports, spec, None, T0)
    for minute in range(5, 10):  # a full window and more of traffic that looks like the evaluation
        outcome = observe(state, spec, T0 + timedelta(minutes=minute), **_traffic_like_the_evaluation(state))
        assert outcome is None or outcome.kind not in CHANGES, outcome
        state = record(state, scrape(state, T0 + timedelta(minutes=minute), **_traffic_like_the_evaluation(state)))


def test_select_says_so_when_no_option_stays_inside_the_breach_budget() -> None:
    # 400 MB holds at most 3 layers, and at 3 layers most tokens still reach L unconfident
    report = alpha(bytes_per_layer=100 * MB, bytes_shared=50 * MB, exit_histogram=(5, 5, 5, 0, 0, 0, 0, 85))
    spec = make_spec(candidates=["alpha"], accuracy={"minAgreement": 0.9})
    decision = select([report], spec, 400 * MB, T0)
    assert decision.layers == 3  # the fewest breaches of what fits
    assert "no option keeps predicted breaches within 25 per 100 tokens" in decision.reason
    everything_fits = select([report], spec, None, T0)
    assert everything_fits.layers == 8 and "no option keeps" not in everything_fits.reason
