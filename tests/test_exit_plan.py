"""The exit plan: where exit tests pay, from a measured profile and what a step costs."""

from __future__ import annotations

import json

import pytest

from helios_worker.exit_plan import (
    ExitProfileError,
    StepCosts,
    choose_exit_layers,
    expected_cost,
    find_profile,
    parse_exit_layers,
    parse_histogram,
)
from helios_worker.server.settings import ServerSettings, SettingsError

CHEAP_HEAD = StepCosts(head=0.5)


def test_cost_with_no_exits_is_every_layer_and_one_head():
    assert expected_cost([10, 0, 0, 5], 4, [], StepCosts(head=2.0)) == pytest.approx(4 + 2.0)
    # batch 1: a token leaving at 2 passes 2 layers and pays the head there, not at 4
    assert expected_cost([10, 0, 0, 0], 4, [2], StepCosts(head=2.0)) == pytest.approx(2 + 2.0)
    # one that stays pays the head at 2 for nothing, then all 4 layers and the last head
    assert expected_cost([0, 0, 0, 10], 4, [2], StepCosts(head=2.0)) == pytest.approx(4 + 2 * 2.0)


def test_tokens_leave_at_the_first_tested_layer_at_or_after_their_first_confident_one():
    # half confident at 1, half never: testing at 3 catches the first half at 3
    assert expected_cost([5, 0, 0, 0, 5], 5, [3], StepCosts(head=0.0)) == pytest.approx((3 + 5) / 2)


def test_exits_go_where_the_profile_has_mass_and_only_when_heads_pay():
    histogram = [0, 0, 90, 0, 0, 0, 0, 10]
    assert choose_exit_layers(histogram, 8, CHEAP_HEAD) == (3,)
    # a head for every token reaching 3, only 10% of which leave there: dearer than the layers saved
    assert choose_exit_layers([0, 0, 10, 0, 0, 0, 0, 90], 8, StepCosts(head=9.0)) == ()
    assert choose_exit_layers([0] * 8, 8, CHEAP_HEAD) == ()  # an empty profile places nothing
    assert choose_exit_layers(histogram, 8, CHEAP_HEAD, min_exit_layer=5) == (5,)
    assert choose_exit_layers(histogram, 3, CHEAP_HEAD) == ()  # L=3: the mass is at the last layer anyway


def test_at_most_max_exits():
    histogram = [0, 20, 0, 0, 20, 0, 0, 20, 0, 0, 20, 0, 0, 0, 0, 20]
    assert choose_exit_layers(histogram, 16, StepCosts(head=0.01)) == (2, 5, 8, 11)
    assert len(choose_exit_layers(histogram, 16, StepCosts(head=0.01), max_exits=2)) == 2
    assert choose_exit_layers(histogram, 16, StepCosts(head=0.01), max_exits=0) == ()


def test_a_batch_keeps_reading_weights_until_every_row_has_left():
    """At batch 16 an exit that half the tokens take saves little weight reading; long contexts make rows count."""
    histogram = [0, 0, 50, 0, 0, 0, 0, 50]
    weights_only = StepCosts(head=1.0, fill=0.1)
    assert choose_exit_layers(histogram, 8, weights_only, rows=1) == (3,)
    assert choose_exit_layers(histogram, 8, weights_only, rows=16) == ()
    long_context = StepCosts(head=1.0, fill=0.1, row=0.5)
    assert choose_exit_layers(histogram, 8, long_context, rows=16) == (3,)
    one = expected_cost(histogram, 8, [3], weights_only, rows=1)
    many = expected_cost(histogram, 8, [3], weights_only, rows=16)
    assert many < one  # weights are shared by the batch


def test_parsing_exit_layers_and_histograms():
    assert parse_exit_layers("auto") == "auto"
    assert parse_exit_layers(" 6,4 ") == (4, 6)
    for bad in ("0", "x", "", "4,,-1"):
        with pytest.raises(ValueError):
            parse_exit_layers(bad)
    assert parse_histogram("1,0,3") == [1, 0, 3]
    with pytest.raises(ValueError):
        parse_histogram("1,-2")


def test_profiles_from_a_report_file_the_model_dir_or_a_histogram(tmp_path):
    report = {"model": "m", "exit_threshold": 0.8, "num_layers_total": 3, "exit_layer_histogram": [1, 2, 3], "x": 1}
    (tmp_path / "report.json").write_text(json.dumps([report]))
    profile, source = find_profile(tmp_path, 3, path=str(tmp_path / "report.json"))
    assert profile.exit_layer_histogram == [1, 2, 3] and "6 tokens" in source
    assert find_profile(tmp_path, 3) == (None, "no exit profile")
    (tmp_path / "helios_exit_profile.json").write_text(json.dumps(report))
    assert find_profile(tmp_path, 3)[0].num_tokens == 6
    assert find_profile(tmp_path, 3, histogram="0,0,9")[0].exit_layer_histogram == [0, 0, 9]
    with pytest.raises(ExitProfileError, match="has 3 layers; the model has 4"):
        find_profile(tmp_path, 4)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ExitProfileError, match="cannot read"):
        find_profile(tmp_path, 3, path=str(tmp_path / "bad.json"))


def test_worker_settings_validate_exit_flags():
    settings = ServerSettings.from_sources({"model": "m"}, {"HELIOS_EXIT_GATE": "saturation"})
    assert settings.exit_layers == "auto" and settings.exit_gate == "saturation"
    with pytest.raises(SettingsError, match="--exit-layers"):
        ServerSettings.from_sources({"model": "m", "exit_layers": "banana"}, {})
    with pytest.raises(SettingsError, match="HELIOS_EXIT_GATE"):
        ServerSettings.from_sources({"model": "m"}, {"HELIOS_EXIT_GATE": "magic"})
    with pytest.raises(SettingsError, match="HELIOS_EXIT_HISTOGRAM"):
        ServerSettings.from_sources({"model": "m"}, {"HELIOS_EXIT_HISTOGRAM": "1,a"})


def test_a_trained_gate_makes_only_the_rows_it_passes_pay_the_head():
    histogram = [0, 0, 30, 0, 0, 0, 0, 70]
    dear_head = StepCosts(head=3.0)
    assert choose_exit_layers(histogram, 8, dear_head) == ()  # every row reaching 3 would pay it
    assert choose_exit_layers(histogram, 8, dear_head, gate_pass={3: 0.32}) == (3,)  # a tight gate
    assert choose_exit_layers(histogram, 8, dear_head, gate_pass={3: 1.0}) == ()  # a gate passing all is none
