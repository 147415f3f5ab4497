"""Candidate evaluation: the pure curves on hand-made tokens, then real engine runs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import helios_worker
from helios_contracts.reports import EvaluationReport
from helios_worker.evaluation import (
    NUM_PASSES,
    EvaluationError,
    ProbeRecord,
    evaluate_candidate,
    parse_candidates,
    summarize,
    timing,
)
from helios_worker.evaluation_service import EvaluationService
from helios_worker.loading import load_model
from helios_worker.server.settings import ServerSettings
from helios_worker.stats import RequestOutput

ASSETS = Path(helios_worker.__file__).parent / "assets"
PROMPTS = ["the quick brown fox", "def add(a, b):", "kubernetes operators reconcile custom resources and"]

# N = 3 layers, threshold 0.8. The three kinds of token:
EARLY_WRONG = ProbeRecord((0.9, 0.95, 0.99), (5, 7, 7))  # confident at 1 with a token full depth rejects
LATE_RIGHT = ProbeRecord((0.1, 0.85, 0.5), (3, 3, 3))  # first confident at 2, right everywhere
NEVER_SURE = ProbeRecord((0.1, 0.2, 0.3), (1, 2, 4))  # never confident, right only at full depth


def test_summarize_three_kinds_of_token() -> None:
    curves = summarize([EARLY_WRONG, LATE_RIGHT, NEVER_SURE], num_layers=3, threshold=0.8)
    assert curves["num_tokens"] == 3
    assert curves["exit_layer_histogram"] == [1, 1, 1]
    assert curves["agreement_by_layer"] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert curves["confident_fraction_by_layer"] == pytest.approx([1 / 3, 2 / 3, 1 / 3])
    # L=1: EARLY_WRONG exits at 1 (wrong), LATE_RIGHT forced out at 1 (right), NEVER_SURE at 1 (wrong).
    # L=3: EARLY_WRONG still exits at 1 (wrong), LATE_RIGHT at 2, NEVER_SURE reaches full depth.
    assert curves["greedy_agreement_by_layer"] == pytest.approx([1 / 3, 1 / 3, 2 / 3])
    assert curves["breach_rate_by_layer"] == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert curves["mean_exit_layer_by_layer"] == pytest.approx([1.0, 5 / 3, 2.0])


def test_summarize_counts_confidence_equal_to_threshold_as_confident() -> None:
    curves = summarize([ProbeRecord((0.8, 0.1), (9, 9))], num_layers=2, threshold=0.8)
    assert curves["exit_layer_histogram"] == [1, 0]
    assert curves["breach_rate_by_layer"] == [0.0, 0.0]
    assert curves["mean_exit_layer_by_layer"] == [1.0, 1.0]


def test_summarize_of_nothing_is_all_zero() -> None:
    curves = summarize([], num_layers=4, threshold=0.8)
    assert curves["num_tokens"] == 0
    for name, values in curves.items():
        if name != "num_tokens":
            assert values == [0] * 4, name


def test_summarize_single_layer_model_never_breaches() -> None:
    curves = summarize([ProbeRecord((0.1,), (3,)), ProbeRecord((0.9,), (4,))], num_layers=1, threshold=0.8)
    assert curves["exit_layer_histogram"] == [2]
    assert curves["greedy_agreement_by_layer"] == [1.0]
    assert curves["breach_rate_by_layer"] == [0.0]


def test_summarize_rejects_records_of_the_wrong_depth() -> None:
    with pytest.raises(ValueError, match="record 1 has 2 layers, expected 3"):
        summarize([NEVER_SURE, ProbeRecord((0.1, 0.2), (1, 2))], num_layers=3, threshold=0.8)
    with pytest.raises(ValueError, match="expected 3"):
        summarize([ProbeRecord((0.1, 0.2, 0.3), (1, 2))], num_layers=3, threshold=0.8)


def test_summarize_curves_agree_with_the_histogram_on_random_tokens() -> None:
    rng = random.Random(7)
    n = 6
    records = [
        ProbeRecord(tuple(rng.random() for _ in range(n)), tuple(rng.randrange(3) for _ in range(n)))
        for _ in range(500)
    ]
    curves = summarize(records, num_layers=n, threshold=0.7)
    histogram = curves["exit_layer_histogram"]
    assert sum(histogram) == 500
    for layers in range(1, n + 1):
        exited_by = sum(histogram[:layers]) if layers < n else 500
        # A breach at L < N is exactly "not exited by L"; the mean exit layer follows from the histogram.
        expected_breach = (500 - exited_by) / 500 if layers < n else 0.0
        assert curves["breach_rate_by_layer"][layers - 1] == pytest.approx(expected_breach)
        expected_mean = sum(min(layer, layers) * count for layer, count in enumerate(histogram, 1)) / 500
        assert curves["mean_exit_layer_by_layer"][layers - 1] == pytest.approx(expected_mean)
    assert curves["agreement_by_layer"][-1] == 1.0


def test_timing_from_request_times() -> None:
    first = RequestOutput("a", [1], token_ids=[5, 6, 7], arrival_time=10.0, first_token_time=10.5, finish_time=11.5)
    second = RequestOutput("b", [1], token_ids=[8], arrival_time=10.0, first_token_time=10.25, finish_time=10.25)
    measured = timing([first, second])
    assert measured.tokens_per_second == pytest.approx(4 / 1.5)
    assert measured.time_to_first_token_seconds == pytest.approx(0.375)
    assert measured.time_per_output_token_seconds == pytest.approx(0.5)  # single-token requests have no TPOT
    assert timing([]).tokens_per_second == 0.0


def test_parse_candidates() -> None:
    assert parse_candidates("a, beta=/models/b ,") == [("a", "a"), ("beta", "/models/b")]
    for bad, message in (("", "no candidates"), ("=x", "NAME=REF"), ("a,a", "unique")):
        with pytest.raises(ValueError, match=message):
            parse_candidates(bad)


def test_evaluate_candidate_on_a_tiny_model(tiny_model) -> None:
    loaded = load_model(str(tiny_model("llama")), name="tiny")
    generated: list[int] = []
    report = evaluate_candidate(loaded, [*PROMPTS, "  "], 6, 0.8, progress=generated.append)
    n = loaded.num_layers_total
    assert (report.model, report.num_layers_total, report.num_prompts) == ("tiny", n, 3)
    assert 0 < report.num_tokens <= 3 * 6
    assert sum(report.exit_layer_histogram) == report.num_tokens
    # Both passes decode greedily at full depth, so they produce the same tokens.
    assert sum(generated) == NUM_PASSES * report.num_tokens
    for curve in (report.agreement_by_layer, report.greedy_agreement_by_layer, report.breach_rate_by_layer):
        assert len(curve) == n
    assert report.agreement_by_layer[n - 1] == 1.0
    # Random weights over a 320-token vocabulary are never 80% sure: every token runs to full depth.
    assert report.exit_layer_histogram[-1] == report.num_tokens
    assert report.greedy_agreement_by_layer[n - 1] == 1.0
    assert report.breach_rate_by_layer == [1.0] * (n - 1) + [0.0]
    assert report.mean_exit_layer_by_layer == [float(layers) for layers in range(1, n + 1)]
    assert report.tokens_per_second > 0 and report.time_to_first_token_seconds > 0
    assert report.time_per_output_token_seconds > 0 and report.peak_memory_bytes > 0
    assert report.includes_exit_checks is False and report.energy_per_token_joules is None
    assert report.device == "cpu" and report.evaluated_at is not None
    # fp32, untied: layers and the rest add up to the parameters actually held
    parameter_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    assert report.weight_bytes(n) == parameter_bytes
    assert report.kv_bytes_per_token_per_layer == 2 * 2 * 16 * 4  # K and V, 2 kv heads x 16 dims, fp32


def test_a_time_budget_stops_the_evaluation_and_reports_the_tokens_it_got(tiny_model) -> None:
    loaded = load_model(str(tiny_model("llama")), name="tiny")
    # The first engine step (prefill: one token per prompt) always runs; then the budget is gone.
    cut = evaluate_candidate(loaded, PROMPTS, 6, 0.8, time_budget=1e-6)
    assert cut.is_cut_by_time_budget and cut.time_budget_seconds == 1e-6
    assert cut.num_tokens == cut.num_prompts == len(PROMPTS) == sum(cut.exit_layer_histogram)
    assert cut.tokens_per_second > 0  # the timing pass replayed those tokens
    # Fewer tokens, wider bounds: the same full-depth agreement of 1.0 is only >= n / (n + 3.84).
    assert cut.greedy_agreement_lower_bound_by_layer[-1] == pytest.approx(3 / (3 + 1.959963984540054**2))
    whole = evaluate_candidate(loaded, PROMPTS, 6, 0.8, time_budget=600.0)
    assert not whole.is_cut_by_time_budget and whole.num_tokens > cut.num_tokens
    with pytest.raises(EvaluationError, match="time_budget must be > 0"):
        evaluate_candidate(loaded, PROMPTS, 6, 0.8, time_budget=0.0)


def test_evaluate_candidate_needs_every_layer(tiny_model) -> None:
    loaded = load_model(str(tiny_model("llama")), layers=2)
    with pytest.raises(EvaluationError, match=r"needs all 4 layers .* only 2 are loaded"):
        evaluate_candidate(loaded, PROMPTS, 4, 0.8)


def test_evaluate_candidate_rejects_blank_prompts_and_oversized_replies(tiny_model) -> None:
    loaded = load_model(str(tiny_model("llama")))
    with pytest.raises(EvaluationError, match="no non-empty prompts"):
        evaluate_candidate(loaded, ["", " \n"], 4, 0.8)
    with pytest.raises(EvaluationError, match="must be below the context length 256"):
        evaluate_candidate(loaded, PROMPTS, 300, 0.8)


@pytest.mark.skipif(
    not (ASSETS / "helios-ee-tiny" / "model.safetensors").exists()
    or not (ASSETS / "prompts" / "in_domain.txt").exists(),
    reason="helios-ee-tiny assets are not in this checkout",
)
def test_trained_early_exit_model_agrees_more_with_depth() -> None:
    loaded = load_model("helios-ee-tiny")
    prompts = (ASSETS / "prompts" / "in_domain.txt").read_text().splitlines()[::8]
    report = evaluate_candidate(loaded, prompts, 12, 0.8)
    agreement = report.agreement_by_layer
    n = report.num_layers_total
    assert agreement[0] < agreement[n // 2 - 1] < agreement[n - 1] == 1.0
    assert report.greedy_agreement_by_layer[0] < report.greedy_agreement_by_layer[n - 1]


def test_evaluation_service_reports_through_its_provider(tiny_model) -> None:
    candidates = [("tiny", str(tiny_model("llama"))), ("missing", "/nonexistent/model")]
    service = EvaluationService(candidates[:1], PROMPTS, max_new_tokens=2)
    assert service.provider() == {"status": "pending"}
    service.start()
    assert service.provider()["status"] in {"running", "done"}
    service.join(timeout=60)
    state = service.provider()
    assert state["status"] == "done"
    [report] = [EvaluationReport.model_validate(item) for item in state["reports"]]
    assert report.model == "tiny" and report.num_prompts == 3

    failing = EvaluationService(candidates, PROMPTS, max_new_tokens=2)
    failing.start()
    failing.join(timeout=60)
    state = failing.provider()
    assert state["status"] == "failed" and "/nonexistent/model" in state["reason"]


def test_evaluation_service_reads_the_operator_env() -> None:
    settings = ServerSettings(mode="evaluate", model="/m/own", served_model_name="own", exit_threshold=0.6)
    service = EvaluationService.from_settings(
        settings,
        {
            "HELIOS_EVAL_CANDIDATES": json.dumps(
                [
                    {"name": "a", "model": "/m/a", "exits": "file:///exits/a"},
                    {"name": "b", "model": "org/b", "revision": "v2"},
                ]
            ),
            "HELIOS_EVAL_PROMPTS": '["one", " ", "two"]',
            "HELIOS_MAX_NEW_TOKENS": "5",
            "HELIOS_EVAL_TIME_BUDGET": "45",
        },
    )
    assert service.candidates == [("a", "/m/a"), ("b", "org/b@v2")] and service.prompts == ["one", "two"]
    # A candidate's calibrated exits (the spec's candidates[].exits) are what its evaluation runs with.
    assert service.settings == {
        "max_new_tokens": 5,
        "exit_threshold": 0.6,
        "device": "cpu",
        "time_budget": 45.0,
        "exits": {"a": "/exits/a"},
    }
    # Nothing set: the worker's own model, the packaged prompts (also for an empty list).
    default = EvaluationService.from_settings(settings, {"HELIOS_EVAL_PROMPTS": "[]"})
    assert default.candidates == [("own", "/m/own")] and default.prompts[0] and len(default.prompts) > 3
    assert default.settings["max_new_tokens"] == 32 and default.settings["time_budget"] is None
    assert default.settings["exits"] == {}
    own = ServerSettings(mode="evaluate", model="/m/own", served_model_name="own", exits="/exits/own")
    assert EvaluationService.from_settings(own, {}).settings["exits"] == {"own": "/exits/own"}


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"HELIOS_EVAL_CANDIDATES": "a=/m/a"}, "HELIOS_EVAL_CANDIDATES: Invalid JSON"),
        ({"HELIOS_EVAL_CANDIDATES": '[{"model": "/m/a"}]'}, "HELIOS_EVAL_CANDIDATES: Field required at 0.name"),
        ({"HELIOS_EVAL_CANDIDATES": "[]"}, "HELIOS_EVAL_CANDIDATES: the list is empty"),
        ({"HELIOS_EVAL_PROMPTS": '"one prompt"'}, "HELIOS_EVAL_PROMPTS: Input should be a valid array"),
        ({"HELIOS_MAX_NEW_TOKENS": "0"}, "HELIOS_MAX_NEW_TOKENS: Input should be greater than 0"),
        ({"HELIOS_EVAL_TIME_BUDGET": "0"}, "HELIOS_EVAL_TIME_BUDGET: Input should be greater than 0"),
    ],
)
def test_evaluation_service_names_the_bad_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EvaluationService.from_settings(ServerSettings(mode="evaluate", model="/m/own"), environ)
