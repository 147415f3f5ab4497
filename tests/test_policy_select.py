"""Memory model, predictions and the initial selection (HELIOS step 3), on hand-built reports."""

from __future__ import annotations

import pytest

from helios_operator.policy import (
    Decision,
    NoFeasibleOption,
    append_decision,
    max_batch_size,
    options,
    predict,
    select,
    weight_bytes,
)
from helios_operator.policy.predict import head_cost_layers
from tests.report_factory import MB, NO_BREACH_BUDGET, make_report, make_spec, ramp

GiB = 2**30


# --- memory -----------------------------------------------------------------------------


def test_weight_bytes_are_shared_plus_loaded_layers() -> None:
    report = make_report(bytes_per_layer=100 * MB, bytes_shared=50 * MB)
    assert weight_bytes(report, 3) == 350 * MB
    assert weight_bytes(report, 8) == report.weight_bytes(8)


def test_max_batch_is_free_memory_over_kv_per_sequence() -> None:
    report = make_report(bytes_per_layer=100 * MB, bytes_shared=50 * MB, kv_bytes_per_token_per_layer=1000)
    # free = 1000 MB - 350 MB = 650 MB; one sequence = 1000 B * 3 layers * 2048 tokens = 6.144 MB
    assert max_batch_size(report, 3, 1000 * MB, 2048) == 650 * MB // (1000 * 3 * 2048) == 105
    # Fewer layers: less weight and less KV per sequence, so a larger batch.
    assert max_batch_size(report, 1, 1000 * MB, 2048) == 850 * MB // (1000 * 2048)


def test_max_batch_is_zero_when_weights_do_not_fit_and_none_without_budget() -> None:
    report = make_report(bytes_per_layer=100 * MB, bytes_shared=50 * MB)
    assert max_batch_size(report, 8, 800 * MB, 2048) == 0
    assert max_batch_size(report, 8, 850 * MB, 2048) == 0  # weights fit, not one sequence
    assert max_batch_size(report, 8, None, 2048) is None
    assert max_batch_size(make_report(kv_bytes_per_token_per_layer=0), 8, GiB, 2048) is None


# --- predict ----------------------------------------------------------------------------


def test_predict_reads_the_curves_at_L() -> None:
    report = make_report(exit_histogram=(50, 30, 10, 10))
    prediction = predict(report, 2, make_spec(), None)
    assert prediction.agreement == report.greedy_agreement_by_layer[1]
    assert prediction.breach_rate == pytest.approx(0.2)  # 10 + 10 of 100 tokens not confident by layer 2
    assert prediction.mean_exit_layer == pytest.approx(1.5)  # 50 at 1, 50 at 2
    assert prediction.layers_total == 4
    assert prediction.weight_bytes == report.weight_bytes(2)


def test_throughput_scales_with_compute_fraction_without_head_cost() -> None:
    report = make_report(exit_histogram=(50, 30, 10, 10), tokens_per_second=100.0)
    spec = make_spec()  # headCostLayers 0
    prediction = predict(report, 2, spec, None)
    assert prediction.tokens_per_second == pytest.approx(100.0 * 4 / 1.5)
    assert prediction.time_per_output_token_seconds == pytest.approx(0.01 * 1.5 / 4)
    full = predict(report, 4, spec, None)
    assert full.mean_exit_layer == pytest.approx(1.8)
    assert full.tokens_per_second == pytest.approx(100.0 * 4 / 1.8)


def test_exit_checks_cost_head_time() -> None:
    report = make_report(exit_histogram=(50, 30, 10, 10), tokens_per_second=100.0)
    spec = make_spec(exit={"headCostLayers": 2.0})
    # work(2) = 1.5 layers + 2 * 1.5 checks = 4.5; work(full) = 4 + 2 = 6
    assert predict(report, 2, spec, None).tokens_per_second == pytest.approx(100.0 * 6 / 4.5)
    # Exit tests start at layer 2: a token exiting at mean 1.8 (clamped by L=4) makes 0.8 checks -> at least 1.
    late = make_spec(exit={"headCostLayers": 2.0, "minExitLayer": 2})
    assert predict(report, 4, late, None).tokens_per_second == pytest.approx(100.0 * 6 / (1.8 + 2 * 1))


def test_head_cost_is_estimated_from_weight_bytes_when_unset() -> None:
    report = make_report(bytes_per_layer=10 * MB, bytes_shared=60 * MB)
    spec = make_spec(exit={"headCostLayers": None})
    assert head_cost_layers(report, spec) == pytest.approx(3.0)
    assert head_cost_layers(make_report(bytes_per_layer=0), spec) == 0.0


def test_energy_scales_like_time_and_stays_unknown_without_gpu() -> None:
    report = make_report(exit_histogram=(50, 30, 10, 10), energy_per_token_joules=2.0)
    assert predict(report, 2, make_spec(), None).energy_per_token_joules == pytest.approx(2.0 * 1.5 / 4)
    assert predict(make_report(), 2, make_spec(), None).energy_per_token_joules is None


@pytest.mark.parametrize("layers", [0, 9])
def test_predict_rejects_layers_out_of_range(layers: int) -> None:
    with pytest.raises(ValueError, match=r"1\.\.8"):
        predict(make_report(), layers, make_spec(), None)


# --- select -----------------------------------------------------------------------------


def test_accuracy_floor_is_respected_even_when_fewer_layers_are_faster() -> None:
    report = make_report(greedy_agreement=[0.90, 0.95, 0.97, 0.981, 0.99, 0.995, 0.999, 1.0])
    decision = select([report], make_spec(candidates=["alpha"]), None)
    assert decision.kind == "select"
    assert (decision.model, decision.layers) == ("alpha", 4)
    assert decision.agreement == pytest.approx(0.981)
    faster = predict(report, 3, make_spec(), None)
    assert faster.tokens_per_second > decision.tokens_per_second  # a faster option was refused
    assert "0.98" in decision.reason and "4 of 8 layers" in decision.reason


def test_lower_floor_allows_fewer_layers() -> None:
    report = make_report(greedy_agreement=[0.90, 0.95, 0.97, 0.981, 0.99, 0.995, 0.999, 1.0])
    spec = make_spec(candidates=["alpha"], accuracy={"minAgreement": 0.94}, monitoring=NO_BREACH_BUDGET)
    assert select([report], spec, None).layers == 2


def test_throughput_picks_the_fastest_candidate() -> None:
    slow = make_report("alpha", tokens_per_second=100.0)
    fast = make_report("beta", tokens_per_second=300.0)
    decision = select([slow, fast], make_spec(), None)
    assert decision.model == "beta"
    assert decision.tokens_per_second == pytest.approx(
        predict(fast, decision.layers, make_spec(), None).tokens_per_second
    )


def test_latency_picks_the_lowest_time_per_token() -> None:
    # alpha has the higher measured throughput (it batched) but the slower single-token step.
    alpha = make_report("alpha", tokens_per_second=300.0, time_per_output_token_seconds=0.030)
    beta = make_report("beta", tokens_per_second=200.0, time_per_output_token_seconds=0.010)
    assert select([alpha, beta], make_spec(objective="throughput"), None).model == "alpha"
    decision = select([alpha, beta], make_spec(objective="latency"), None)
    assert decision.model == "beta"
    assert "lowest time per token" in decision.reason


def test_energy_picks_the_lowest_energy_per_token() -> None:
    hungry = make_report("alpha", tokens_per_second=300.0, energy_per_token_joules=5.0)
    frugal = make_report("beta", tokens_per_second=100.0, energy_per_token_joules=1.0)
    decision = select([hungry, frugal], make_spec(objective="energy"), None)
    assert decision.model == "beta"
    assert decision.energy_per_token_joules is not None
    assert "not measured" not in decision.reason


def test_energy_without_measurements_uses_time_per_token_and_says_so() -> None:
    slow = make_report("alpha", tokens_per_second=100.0)
    fast = make_report("beta", tokens_per_second=300.0)
    decision = select([slow, fast], make_spec(objective="energy"), None)
    assert decision.model == "beta"
    assert "energy not measured" in decision.reason


def test_batch_size_picks_the_largest_batch() -> None:
    big_kv = make_report("alpha", tokens_per_second=300.0, kv_bytes_per_token_per_layer=4000)
    small_kv = make_report("beta", tokens_per_second=100.0, kv_bytes_per_token_per_layer=500)
    spec = make_spec(objective="batchSize")
    decision = select([big_kv, small_kv], spec, 2 * GiB)
    assert decision.model == "beta"
    assert decision.max_batch_size == max_batch_size(small_kv, decision.layers, 2 * GiB, 2048)
    assert decision.max_batch_size is not None and decision.max_batch_size > 0
    assert f"max batch {decision.max_batch_size}" in decision.reason


def test_batch_size_needs_a_budget() -> None:
    with pytest.raises(ValueError, match="memory budget"):
        select([make_report()], make_spec(objective="batchSize"), None)


def test_ties_go_to_fewer_layers() -> None:
    # Every token exits by layer 2, so throughput is the same for L = 2..8; the floor is met from 4.
    agreement = [0.90, 0.95, 0.97, 0.99, 0.99, 0.995, 1.0, 1.0]
    report = make_report(exit_histogram=(60, 40, 0, 0, 0, 0, 0, 0), greedy_agreement=agreement)
    predictions = [p for p in options([report], make_spec(), None) if p.layers >= 4]
    assert len({p.tokens_per_second for p in predictions}) == 1
    assert select([report], make_spec(candidates=["alpha"]), None).layers == 4


def test_ties_then_go_to_less_memory() -> None:
    heavy = make_report("alpha", bytes_shared=500 * MB)
    light = make_report("beta", bytes_shared=100 * MB)
    assert select([heavy, light], make_spec(), None).model == "beta"
    assert select([light, heavy], make_spec(), None).model == "beta"


def test_when_nothing_meets_the_floor_the_most_accurate_is_chosen_and_said() -> None:
    alpha = make_report("alpha", greedy_agreement=ramp(0.5, 0.93, 8), tokens_per_second=500.0)
    beta = make_report("beta", greedy_agreement=ramp(0.6, 0.95, 8))
    decision = select([alpha, beta], make_spec(), None)
    assert (decision.model, decision.layers) == ("beta", 8)
    assert decision.agreement == pytest.approx(0.95)
    assert "no option reaches agreement 0.98" in decision.reason
    assert "most accurate" in decision.reason


def test_options_that_do_not_fit_the_budget_are_skipped() -> None:
    report = make_report(bytes_per_layer=100 * MB, bytes_shared=50 * MB, greedy_agreement=[1.0] * 8)
    # 400 MB: weights of 3 layers (350 MB) + 3 * 2048 * 1000 B KV fit; 4 layers (450 MB) do not.
    feasible = options([report], make_spec(), 400 * MB)
    assert [p.layers for p in feasible] == [1, 2, 3]
    decision = select([report], make_spec(objective="batchSize", monitoring=NO_BREACH_BUDGET), 400 * MB)
    assert decision.layers == 1


def test_nothing_fits_raises_with_the_sizes() -> None:
    report = make_report(bytes_per_layer=100 * MB, bytes_shared=50 * MB)
    with pytest.raises(NoFeasibleOption, match="needs 150000000 bytes of weights"):
        select([report], make_spec(), 100 * MB)


def test_min_exit_layer_bounds_the_layers_loaded() -> None:
    report = make_report(greedy_agreement=[1.0] * 8)
    decision = select([report], make_spec(candidates=["alpha"], exit={"minExitLayer": 3}), None)
    assert decision.layers == 3


def test_select_rejects_empty_and_duplicate_reports() -> None:
    with pytest.raises(ValueError, match="no evaluation reports"):
        select([], make_spec(), None)
    with pytest.raises(ValueError, match="more than one report for alpha"):
        select([make_report("alpha"), make_report("alpha")], make_spec(), None)


# --- decision history -------------------------------------------------------------------


def _decision(layers: int) -> Decision:
    return Decision(kind="hold", model="alpha", layers=layers, reason="test")


def test_history_keeps_the_newest_entries() -> None:
    history: tuple[Decision, ...] = ()
    for layers in range(1, 8):
        history = append_decision(history, _decision(layers), limit=3)
    assert [d.layers for d in history] == [5, 6, 7]
    with pytest.raises(ValueError, match="limit"):
        append_decision(history, _decision(1), limit=0)


def test_decision_summary_for_status() -> None:
    summary = _decision(4).summary()
    assert (summary.kind, summary.model, summary.layers, summary.reason) == ("hold", "alpha", 4, "test")
