"""The committed helios-ee-small model: a compute-bound bf16 Llama whose in-domain tokens exit early.

It loads through the project's loader (the built-in alias), its README states what its training
report measured, and the engine, placing exit tests from the shipped exit profile, lets in-domain
tokens leave before the last layer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

import helios_worker
from helios_worker.engine import Engine, EngineConfig
from helios_worker.exit_plan import find_profile
from helios_worker.loading import LoadedModel, load_model
from helios_worker.sampling import SamplingParams
from helios_worker.training.early_exit import read_prompts
from helios_worker.training.readme import first_layer_reaching

ASSETS = Path(helios_worker.__file__).parent / "assets"
MODEL_DIR = ASSETS / "helios-ee-small"
MAX_FILE_BYTES = 64_000_000
IN_DOMAIN = "in_domain.txt"
NUM_NEW_TOKENS = 16


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    # One thread: two spin-wait on each other when the CPU is shared, which is slower.
    torch.set_num_threads(1)
    return load_model("helios-ee-small")


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return json.loads((MODEL_DIR / "early_exit_profile.json").read_text())


def test_is_a_compute_bound_bf16_llama_under_64_mb(loaded: LoadedModel) -> None:
    shape = loaded.shape
    assert loaded.architecture == "llama" and loaded.num_layers_total >= 12
    assert shape.hidden_size >= 384 and loaded.config.tie_word_embeddings
    weights = MODEL_DIR / "model.safetensors"
    assert weights.stat().st_size <= MAX_FILE_BYTES
    assert json.loads((MODEL_DIR / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(weights, framework="pt") as stored:
        assert {stored.get_slice(name).get_dtype() for name in stored.keys()} == {"BF16"}  # noqa: SIM118


def table_rows(readme: str, header_start: str) -> list[list[str]]:
    """The cells of each body row of the README table whose header line starts with ``header_start``."""
    lines = readme.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_readme_states_the_measured_numbers(report: dict[str, Any]) -> None:
    readme = (MODEL_DIR / "README.md").read_text()
    assert report["command"] in readme and f"--steps {report['num_steps']}" in readme
    assert f"{report['train_minutes']:.1f} minutes of training" in readme
    assert report["config"]["num_layers"] >= 12 and report["dtype"] == "bfloat16"

    profile = [[str(p["layer"]), f"{p['agreement_with_last']:.3f}"] for p in report["profile"]]
    assert [row[:2] for row in table_rows(readme, "| layer | agreement with last")] == profile

    evaluations = report["prompt_evaluations"]
    expected = []
    for i in range(report["config"]["num_layers"]):
        row = [str(i + 1)]
        for e in evaluations.values():
            row += [f"{e['greedy_agreement_by_layer'][i]:.3f}", f"{e['mean_exit_layer_by_layer'][i]:.2f}"]
        expected.append(row)
    assert table_rows(readme, "| L |") == expected
    histogram = table_rows(readme, "| layer | `")
    assert [[int(c) for c in row[1:]] for row in histogram[:-1]] == [
        list(counts) for counts in zip(*(e["exit_layer_histogram"] for e in evaluations.values()), strict=True)
    ]
    assert histogram[-1][1:] == [f"{e['mean_first_confident_layer']:.2f}" for e in evaluations.values()]
    in_domain = evaluations[IN_DOMAIN]
    if (layer := first_layer_reaching(in_domain["greedy_agreement_by_layer"])) is not None:
        assert f"reaches 0.95 at L = {layer} of" in readme


def test_shipped_exit_profile_is_the_in_domain_evaluation(report: dict[str, Any]) -> None:
    shipped = json.loads((MODEL_DIR / "helios_exit_profile.json").read_text())
    in_domain = report["prompt_evaluations"][IN_DOMAIN]
    assert shipped["model"] == "helios-ee-small" and shipped["num_layers_total"] == report["config"]["num_layers"]
    assert shipped["exit_layer_histogram"] == in_domain["exit_layer_histogram"]
    # In-domain traffic must exit early: most tokens are confident before the last layer.
    assert in_domain["mean_first_confident_layer"] < report["config"]["num_layers"] / 2
    out_of_domain = report["prompt_evaluations"]["out_of_domain.txt"]
    assert out_of_domain["mean_first_confident_layer"] > in_domain["mean_first_confident_layer"] + 3


def test_engine_exits_in_domain_tokens_before_the_last_layer(loaded: LoadedModel) -> None:
    profile, _ = find_profile(loaded.ref.path, loaded.num_layers_total)
    assert profile is not None  # helios_exit_profile.json in the model directory
    config = EngineConfig(max_batch_size=1, max_seq_len=128, exit_layers="auto", exit_profile=profile)
    engine = Engine(loaded, config)
    prompt = read_prompts(ASSETS / "prompts" / IN_DOMAIN)[0]
    [output] = engine.generate([loaded.tokenizer(prompt).input_ids], SamplingParams(max_new_tokens=NUM_NEW_TOKENS))
    assert len(output.exit_layers) == NUM_NEW_TOKENS
    assert min(output.exit_layers) < loaded.num_layers_total
    assert sum(output.exit_layers) / len(output.exit_layers) < loaded.num_layers_total - 2
