"""Properties of the policy over random evaluation reports, floors and budgets (hypothesis).

Reports are built from integer counts, as a worker measures them (an exit histogram over n
evaluation tokens, n from 8 to 600, and per layer the number of tokens agreeing with full
depth), so the telemetry that "looks like the evaluation" is exactly the evaluation's data.
Each property says why it must hold; they are the issue's promises about ``select``:

- it never storms on its own evaluation data: select, then adapt on that data, changes nothing;
- the accuracy floor holds at the 95% lower bound, not at the point estimate;
- the choice is monotone in the floor and in the memory budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from helios_contracts.reports import EvaluationReport
from helios_operator.policy import (
    Decision,
    NoFeasibleOption,
    Prediction,
    Telemetry,
    adapt,
    initial_state,
    options,
    predict,
    record,
    reselect,
    select,
)
from helios_operator.policy.select import objective_value
from helios_operator.spec import HeliosDeploymentSpec
from tests.report_factory import MB, make_report, make_spec

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NAMES = ("alpha", "beta", "gamma")
OBJECTIVES = ("throughput", "latency", "energy", "batchSize")
# Fast, reproducible in CI (no example database in the checkout), and still 150 fresh problems.
PROPERTY = settings(max_examples=150, deadline=None, database=None, derandomize=True)


# --- strategies ---------------------------------------------------------------------------


def _split(draw: st.DrawFn, total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` random non-negative counts."""
    cuts = sorted(draw(st.lists(st.integers(0, total), min_size=parts - 1, max_size=parts - 1)))
    return [high - low for low, high in pairwise([0, *cuts, total])]


@st.composite
def exit_histograms(draw: st.DrawFn, num_layers: int, num_tokens: int) -> list[int]:
    """Tokens per first confident layer (the last entry also holds the never confident).

    Most tokens are confident by some layer k, and ``late`` ones only after it: any number, or
    (as in a trained early-exit model) at most 2%, which is the traffic that lets headroom drop
    layers, so the fixed point is tested where a drop is possible.
    """
    late = draw(st.integers(0, num_tokens) | st.integers(0, num_tokens // 50))
    early_layers = draw(st.integers(1, num_layers - 1))
    return _split(draw, num_tokens - late, early_layers) + _split(draw, late, num_layers - early_layers)


@st.composite
def reports(draw: st.DrawFn, name: str, has_energy: bool) -> EvaluationReport:
    num_layers = draw(st.integers(2, 8))
    num_tokens = draw(st.integers(8, 600))
    # The breach and mean-exit curves follow from the histogram, as the worker derives them.
    histogram = draw(exit_histograms(num_layers, num_tokens))
    # Tokens disagreeing with full depth at each L: from none to a third of them, so that
    # floors up to 0.99 are sometimes met at 95% and sometimes only by the point estimate;
    # usually fewer with more layers, as in real models, but not always.
    most = draw(st.integers(0, num_tokens // 20) | st.integers(0, num_tokens // 3))
    counts = st.lists(st.integers(0, most), min_size=num_layers, max_size=num_layers)
    disagreeing = draw(counts.map(lambda values: sorted(values, reverse=True)) | counts)
    return make_report(
        name,
        exit_histogram=histogram,
        greedy_agreement=[1 - count / num_tokens for count in disagreeing],
        tokens_per_count=1,
        tokens_per_second=draw(st.floats(10.0, 1000.0)),
        bytes_per_layer=draw(st.integers(1, 200)) * MB,
        bytes_shared=draw(st.integers(0, 300)) * MB,
        kv_bytes_per_token_per_layer=draw(st.integers(1, 4000)),
        energy_per_token_joules=draw(st.floats(0.01, 10.0)) if has_energy else None,
    )


@st.composite
def specs(draw: st.DrawFn, names: Sequence[str], objective: str | None = None) -> HeliosDeploymentSpec:
    return make_spec(
        candidates=names,
        objective=objective or draw(st.sampled_from(OBJECTIVES)),
        accuracy={"minAgreement": draw(st.sampled_from((0.8, 0.9, 0.95, 0.98)) | st.floats(0.5, 0.99))},
        exit={"headCostLayers": draw(st.floats(0.0, 3.0)), "minExitLayer": draw(st.none() | st.integers(1, 3))},
        monitoring={
            "breachWindowTokens": 100,
            "maxBreaches": draw(st.integers(0, 100)),
            "targetBreachFraction": draw(st.floats(0.1, 1.0)),
        },
    )


budgets = st.integers(100, 3000).map(lambda megabytes: megabytes * MB)


@st.composite
def problems(draw: st.DrawFn, objective: str | None = None) -> tuple[list[EvaluationReport], HeliosDeploymentSpec]:
    """Reports of one to three candidates (energy measured for all or for none) and a spec."""
    names = NAMES[: draw(st.integers(1, len(NAMES)))]
    has_energy = draw(st.booleans())
    return [draw(reports(name, has_energy)) for name in names], draw(specs(names, objective))


def _budget_for(draw: st.DrawFn, spec: HeliosDeploymentSpec) -> int | None:
    # batchSize needs a budget; the others also run without one (everything fits).
    return draw(budgets) if spec.objective == "batchSize" else draw(st.none() | budgets)


def _select_or_none(
    reports: Sequence[EvaluationReport], spec: HeliosDeploymentSpec, budget: int | None
) -> Decision | None:
    try:
        return select(reports, spec, budget, T0)
    except NoFeasibleOption:  # nothing fits: a clear error, not a choice to test
        return None


def _with_floor(spec: HeliosDeploymentSpec, floor: float) -> HeliosDeploymentSpec:
    return spec.model_copy(update={"accuracy": spec.accuracy.model_copy(update={"min_agreement": floor})})


def _breach_limit(spec: HeliosDeploymentSpec) -> float:
    return spec.monitoring.target_breach_fraction * spec.monitoring.max_breaches


def _predicted_breaches(prediction: Prediction | Decision, spec: HeliosDeploymentSpec) -> float:
    assert prediction.breach_rate_upper_bound is not None
    return prediction.breach_rate_upper_bound * spec.monitoring.breach_window_tokens


def _is_inside_budget(prediction: Prediction | Decision, spec: HeliosDeploymentSpec) -> bool:
    return _predicted_breaches(prediction, spec) <= _breach_limit(spec)


def _meets_floor(prediction: Prediction | Decision, spec: HeliosDeploymentSpec) -> bool:
    assert prediction.agreement_lower_bound is not None
    return prediction.agreement_lower_bound >= spec.accuracy.min_agreement


# --- select never storms on its own data ------------------------------------------------------


def _evaluation_as_telemetry(report: EvaluationReport, layers: int, capacity: int, at: datetime) -> Telemetry:
    """The evaluation's own tokens served at ``layers``, repeated until they fill ``capacity`` tokens.

    A token whose first confident layer is beyond L exits at L, unconfident (a breach), except
    at full depth, where the engine counts no breaches; shadow matches are the tokens whose
    exit token is the full-depth one, i.e. the greedy agreement at L.
    """
    histogram = report.exit_layer_histogram
    folded = [*histogram[: layers - 1], sum(histogram[layers - 1 :])]
    breaches = sum(histogram[layers:]) if layers < report.num_layers_total else 0
    matches = round(report.greedy_agreement_by_layer[layers - 1] * report.num_tokens)
    repeats = math.ceil(capacity / report.num_tokens) + 1
    return Telemetry(
        observed_at=at,
        model=report.model,
        layers=layers,
        num_new_tokens=report.num_tokens * repeats,
        num_new_breaches=breaches * repeats,
        num_new_requests=0,
        exit_histogram=[count * repeats for count in folded],
        num_shadow_tokens=report.num_tokens * repeats,
        num_shadow_matches=matches * repeats,
    )


@PROPERTY
@given(data=st.data())
def test_select_then_adapt_on_its_own_evaluation_data_changes_nothing(data: st.DataObject) -> None:
    """No storm, no shadow remedy, no drop, no switch on the data the selection was made on.

    Why it must hold: the choice is predicted inside the breach budget at the breach rate's upper
    bound, which is at least the rate the data shows, and the budget is at most the storm limit;
    the shadow check sees the point agreement, at least the lower bound that met the floor; and
    a drop to L' < L needs L' to meet the same floor and budget at the same bounds (``settles``),
    but then select would have taken L': fewer layers of one model never do worse on any
    objective (less work and memory per token), and ties go to fewer layers. When select could
    not stay inside the budget or reach the floor it says so, and then the loop may act.
    """
    reports, spec = data.draw(problems())
    budget = _budget_for(data.draw, spec)
    decision = _select_or_none(reports, spec, budget)
    if decision is None:
        return
    if not _is_inside_budget(decision, spec):
        assert "no option keeps predicted breaches within" in decision.reason
        return
    if not _meets_floor(decision, spec):
        assert "no option reaches agreement" in decision.reason
        return
    state = initial_state(decision, reports, spec, budget, T0)
    later = T0 + timedelta(seconds=spec.monitoring.cooldown + 1)  # past the selection's cooldown
    capacity = max(spec.monitoring.breach_window_tokens, spec.monitoring.shadow.window_tokens)
    telemetry = _evaluation_as_telemetry(state.report, decision.layers, capacity, later)
    state = record(state, telemetry)
    assert state.breaches.is_full and state.shadow.is_full  # every rule has its full window to judge
    assert adapt(state, telemetry, spec, later) is None
    assert reselect(state, reports, spec, later).kind == "hold"  # a reassessment on that data keeps it


# --- the floor at the lower bound -------------------------------------------------------------


@PROPERTY
@given(data=st.data())
def test_the_floor_holds_at_the_lower_bound(data: st.DataObject) -> None:
    """If any option that fits is inside the breach budget with its agreement's 95% lower bound at
    the floor, the choice is such an option; a point estimate at the floor is not enough. If none
    reaches the floor at 95%, the reason says so."""
    reports, spec = data.draw(problems())
    budget = _budget_for(data.draw, spec)
    decision = _select_or_none(reports, spec, budget)
    if decision is None:
        return
    fitting = options(reports, spec, budget)
    inside = [p for p in fitting if _is_inside_budget(p, spec)]
    if any(_meets_floor(p, spec) for p in inside):
        assert _is_inside_budget(decision, spec) and _meets_floor(decision, spec), decision.reason
        assert f"meeting agreement >= {spec.accuracy.min_agreement:g} at 95%" in decision.reason
    elif inside:
        assert _is_inside_budget(decision, spec)
        assert "no option reaches agreement" in decision.reason
        best = max(p.agreement_lower_bound for p in inside)
        assert decision.agreement_lower_bound == best  # then the most accurate, at 95% as well
    assert f"n={decision.num_tokens})" in decision.reason


# --- monotone in the floor and in the memory budget --------------------------------------------


@PROPERTY
@given(data=st.data())
def test_raising_the_floor_never_lowers_the_chosen_lower_bound(data: st.DataObject) -> None:
    """For floors f1 <= f2: lower bound of select at f2 >= lower bound of select at f1.

    Why: the breach filter does not depend on the floor, so both choose from the same options S.
    The options meeting f2 are a subset of those meeting f1. If the f1 choice c1 also meets f2,
    it is the best of the smaller set too, so c2 = c1. If it does not, lb(c1) < f2, and c2
    either meets f2 (lb(c2) >= f2 > lb(c1)) or no option does and c2 has the highest lower
    bound in S. Either way lb(c2) >= lb(c1). (The objective may get worse: that is the price.)
    """
    reports, spec = data.draw(problems())
    budget = _budget_for(data.draw, spec)
    low, high = sorted((data.draw(st.floats(0.5, 0.999)), data.draw(st.floats(0.5, 0.999))))
    at_low = _select_or_none(reports, _with_floor(spec, low), budget)
    at_high = _select_or_none(reports, _with_floor(spec, high), budget)
    if at_low is None or at_high is None:
        assert at_low is None and at_high is None  # fitting does not depend on the floor
        return
    assert at_high.agreement_lower_bound is not None and at_low.agreement_lower_bound is not None
    assert at_high.agreement_lower_bound >= at_low.agreement_lower_bound


def _rank(decision: Decision, reports: Sequence[EvaluationReport], spec: HeliosDeploymentSpec, budget: int | None):
    """Select's own order, smaller is better: breaches beyond the budget, agreement short of the
    floor at 95% (then the higher lower bound), then the objective at this budget."""
    report = {r.model: r for r in reports}[decision.model]
    prediction = predict(report, decision.layers, spec, budget)
    breaches = _predicted_breaches(prediction, spec)
    outside = 0.0 if breaches <= _breach_limit(spec) else breaches
    short = (0, 0.0) if _meets_floor(prediction, spec) else (1, -prediction.agreement_lower_bound)
    proxy = any(r.energy_per_token_joules is None for r in reports)
    return outside, short, -objective_value(prediction, spec.objective, proxy)


@PROPERTY
@given(data=st.data())
def test_more_memory_never_makes_the_choice_worse(data: st.DataObject) -> None:
    """For budgets b1 <= b2 (None: unlimited): rank(select at b2) <= rank(select at b1), in select's
    own order (breach excess, floor deficit at 95%, objective).

    Why: select is the minimum of that order over the options that fit (ties then go to fewer
    layers and bytes). Every option that fits b1 fits b2, so the minimum over the larger set
    is no worse; and the b1 choice ranks no worse at b2 than at b1, because breaches and
    agreement do not depend on memory and the objective does not either, except the batch
    size, which only grows with more memory. Not "more layers" or "another model": with more
    memory a safer option may appear, and select then prefers it to a faster one.
    """
    reports, spec = data.draw(problems())
    small = data.draw(budgets)
    large = data.draw(st.integers(small, 4000 * MB) | (st.none() if spec.objective != "batchSize" else st.nothing()))
    at_small = _select_or_none(reports, spec, small)
    if at_small is None:
        return
    at_large = _select_or_none(reports, spec, large)
    assert at_large is not None, "an option that fits a budget fits a larger one"
    assert _rank(at_large, reports, spec, large) <= _rank(at_small, reports, spec, small)


def test_the_strategies_reach_the_interesting_cases() -> None:
    """Guard against properties that pass because their interesting cases are never drawn: the
    fixed point with fewer layers to drop to, and an option whose point estimate meets the floor
    while its 95% lower bound does not."""
    seen = {"fixed point": 0, "could drop": 0, "bound binds": 0}

    @PROPERTY
    @given(data=st.data())
    def count(data: st.DataObject) -> None:
        reports, spec = data.draw(problems())
        budget = _budget_for(data.draw, spec)
        decision = _select_or_none(reports, spec, budget)
        if decision is None:
            return
        floor = spec.accuracy.min_agreement
        inside = [p for p in options(reports, spec, budget) if _is_inside_budget(p, spec)]
        seen["bound binds"] += any(p.agreement >= floor > p.agreement_lower_bound for p in inside)
        if _is_inside_budget(decision, spec) and _meets_floor(decision, spec):
            seen["fixed point"] += 1
            seen["could drop"] += decision.layers > (spec.exit.min_exit_layer or 1)

    count()
    assert seen["fixed point"] >= 50 and seen["could drop"] >= 30 and seen["bound binds"] >= 30, seen
