"""helios calibrate: translators and gates fitted by self-distillation, stored in a sidecar bound
to its model, applied by the engine exactly as a by-hand reference applies them."""

from __future__ import annotations

import json

import pytest
import torch

from helios_operator.cli import main
from helios_worker.calibration import auto_layers, calibrate, fit_translator
from helios_worker.engine import Engine, EngineConfig
from helios_worker.exit_sidecar import MANIFEST_FILE, SidecarError
from helios_worker.loading import load_model
from helios_worker.sampling import SamplingParams
from helios_worker.server.settings import ServerSettings
from helios_worker.server.state import load_exits
from tests.reference_early_exit import HFModel, reference_generate

TEXT = " ".join(
    [
        "the quick brown fox jumps over the lazy dog",
        "def add(a, b): return a + b",
        "kubernetes operators reconcile custom resources",
        "early exit lets easy tokens leave the network sooner",
    ]
    * 40
)


@pytest.fixture(scope="module")
def calibrated(tiny_model, tmp_path_factory):
    """A tiny llama with calibrated exits at layers 1-3, saved and read back."""
    path = tiny_model("llama")
    loaded = load_model(str(path))
    ids = loaded.tokenizer(TEXT).input_ids
    exits = calibrate(loaded, ids[: len(ids) * 3 // 4], ids[len(ids) * 3 // 4 :], [1, 2, 3], precision_target=0.6)
    directory = tmp_path_factory.mktemp("exits")
    exits.save(directory)
    return path, directory, exits


def test_fitting_raises_held_out_agreement(calibrated):
    _, _, exits = calibrated
    for report in exits.manifest.per_layer:
        # a skipped fit (W = 0, b = 0) leaves the translated agreement equal to the raw one
        assert report.agreement_translated > report.agreement_raw
    assert sum(exits.manifest.exit_layer_histogram) == exits.manifest.num_heldout_tokens


def test_translator_fit_recovers_a_known_affine_map():
    torch.manual_seed(0)
    x = torch.randn(2000, 8)
    true_w, true_b = torch.randn(8, 8) * 0.3, torch.randn(8)
    final = x + x @ true_w + true_b
    weight, bias = fit_translator(x, final, ridge=1e-6)
    torch.testing.assert_close(weight, true_w, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(bias, true_b, atol=1e-3, rtol=1e-3)


def test_sidecar_round_trip_and_a_mismatched_one_is_refused(calibrated, tiny_model):
    path, directory, exits = calibrated
    loaded = load_model(str(path), layers=3)
    again = load_exits(loaded, str(directory))
    assert again.manifest == exits.manifest
    for name, tensor in exits.tensors.items():
        torch.testing.assert_close(again.tensors[name], tensor)
    other = load_model(str(tiny_model("qwen2")))  # same sizes, other weights
    with pytest.raises(SidecarError, match="other weights"):
        load_exits(other, str(directory))
    wider = load_model(str(tiny_model("llama", hidden_size=32, intermediate_size=64)))
    with pytest.raises(SidecarError, match="hidden size 64"):
        load_exits(wider, str(directory))
    (directory.parent / "broken").mkdir(exist_ok=True)
    (directory.parent / "broken" / MANIFEST_FILE).write_text("{}")
    with pytest.raises(SidecarError, match="cannot read"):
        load_exits(loaded, str(directory.parent / "broken"))


def test_a_manifest_with_tensors_of_another_calibration_is_refused(calibrated, tmp_path, monkeypatch):
    """A recalibration rewriting a sidecar in place: a reader never pairs one write's manifest with
    another's tensors (it reads again, then refuses), and no temporary file is left behind."""
    import shutil

    import helios_worker.exit_sidecar as sidecar

    path, directory, exits = calibrated
    loaded = load_model(str(path), layers=3)
    mixed = tmp_path / "mixed"
    shutil.copytree(directory, mixed)
    nudged = {name: tensor + 1.0 for name, tensor in exits.tensors.items()}
    sidecar.CalibratedExits(exits.manifest, nudged).save(tmp_path / "other")
    shutil.copy(tmp_path / "other" / sidecar.TENSORS_FILE, mixed / sidecar.TENSORS_FILE)
    monkeypatch.setattr(sidecar, "READ_RETRY_SECONDS", 0.0)
    with pytest.raises(SidecarError, match=r"not the one exits\.json was written with"):
        load_exits(loaded, str(mixed))
    assert sorted(p.name for p in directory.iterdir()) == [sidecar.MANIFEST_FILE, sidecar.TENSORS_FILE]
    # The writer's own pair reads back, and a sidecar from before the digest (no tensors_sha256) still loads.
    assert load_exits(loaded, str(tmp_path / "other")).manifest.tensors_sha256 is not None
    manifest = json.loads((mixed / MANIFEST_FILE).read_text())
    manifest.pop("tensors_sha256")
    (mixed / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert load_exits(loaded, str(mixed)).manifest.tensors_sha256 is None


def test_engine_applies_translators_and_gates_as_a_by_hand_reference(calibrated):
    path, directory, exits = calibrated
    loaded = load_model(str(path), layers=4)
    engine_exits = load_exits(loaded, str(directory))
    engine = Engine(loaded, EngineConfig(exit_layers=(1, 2, 3), max_batch_size=3), exits=engine_exits)
    prompts = [loaded.tokenizer(p).input_ids for p in ("the quick brown", "def add(a, b):", "early exit lets")]
    outputs = engine.generate(prompts, SamplingParams(max_new_tokens=10, ignore_eos=True))

    t = {k: v.double() for k, v in exits.tensors.items()}
    manifest = {r.layer: r for r in exits.manifest.per_layer}

    def translate(layer, h):  # h + h W + b, written out
        return h.double() + h.double() @ t[f"layer.{layer}.translator.weight"] + t[f"layer.{layer}.translator.bias"]

    def gate(layer, h):
        x = translate(layer, h)
        x = x / torch.sqrt((x * x).mean() + 1e-6)
        return float(torch.sigmoid(x @ t[f"layer.{layer}.gate.weight"] + t[f"layer.{layer}.gate.bias"]))

    hf = HFModel(path, 4)
    exited_early = 0
    for prompt, output in zip(prompts, outputs, strict=True):
        tokens, layers = reference_generate(
            hf,
            prompt,
            10,
            0.8,
            [1, 2, 3, 4],
            layer_gate=lambda layer, before, after: gate(layer, after) >= manifest[layer].gate_threshold,
            translate=lambda layer, h: translate(layer, h).float() if layer in manifest else h,
            thresholds={layer: r.confidence_threshold for layer, r in manifest.items()},
        )
        assert output.token_ids == tokens and output.exit_layers == layers
        exited_early += sum(layer < 4 for layer in layers)
    assert exited_early  # the calibrated exits were really taken


def test_skipped_layers_are_filled_from_the_raw_state_not_the_translated_one(calibrated):
    path, directory, _ = calibrated
    loaded = load_model(str(path), layers=4)
    exits = load_exits(loaded, str(directory))
    engine = Engine(loaded, EngineConfig(exit_layers=(1, 2, 3), max_batch_size=1), exits=exits)
    prompt = loaded.tokenizer("the quick brown").input_ids
    engine.add_request(prompt, SamplingParams(max_new_tokens=8, ignore_eos=True))
    while engine.has_unfinished():
        outputs, _ = engine.step()
        if outputs and outputs[0].token_stats[-1].exit_layer < 4 and len(outputs[0].token_ids) > 1:
            stats = outputs[0].token_stats[-1]
            position = len(prompt) + len(outputs[0].token_ids) - 2  # where this token's input was cached
            raw = engine.exit_hidden[0, position][None, None]  # [1, 1, hidden]
            positions = torch.tensor([[position]])
            rotary = loaded.family.rotary(loaded.model, raw, positions)
            key, _ = loaded.family.project_kv(loaded.layers[3], raw, rotary)
            torch.testing.assert_close(engine.cache.keys[3][0, :, position], key[0, :, 0])
            assert stats.exit_layer < 4
            return
    pytest.fail("no token exited early: the test needs one")


def test_calibrate_command_writes_a_sidecar_that_serve_and_generate_use(tiny_model, tmp_path, capsys):
    path = tiny_model("llama")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text(TEXT)
    out = tmp_path / "exits"
    assert (
        main(["calibrate", "--model", str(path), "--texts", str(tmp_path / "texts"), "--out", str(out), "--json"]) == 0
    )
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["layers"] == auto_layers(4) and (out / "exits.safetensors").exists()
    assert main(["generate", "--model", str(path), "--exits", str(out), "--prompt", "the quick", "--json"]) == 0
    settings = ServerSettings.from_sources({"model": str(path)}, {"HELIOS_EXITS": str(out)})
    assert settings.exits == str(out)
    with pytest.raises(ValueError, match="needs calibrated exits"):
        ServerSettings(model=str(path), exit_gate="trained")
    assert main(["calibrate", "--model", str(path), "--texts", str(tmp_path / "missing")]) == 2


def test_evaluation_with_calibrated_exits_reports_their_exit_curves(calibrated):
    from helios_worker.evaluation import evaluate_candidate

    path, directory, exits = calibrated
    prompts = ["the quick brown", "def add(a, b):", "early exit lets"]
    plain = evaluate_candidate(load_model(str(path)), prompts, 8, 0.8)
    report = evaluate_candidate(load_model(str(path)), prompts, 8, 0.8, exits_dir=str(directory))
    assert plain.exits is None and report.exits == exits.manifest.identity
    assert sum(report.exit_layer_histogram) == report.num_tokens
    # the probe's exit indicators name the layer where serving with the same exits takes each
    # prompt's first token (later tokens differ: serving fills skipped layers, the probe does not)
    loaded = load_model(str(path))
    ids = [loaded.tokenizer(p).input_ids for p in prompts]
    sidecar = load_exits(loaded, str(directory))
    probe = Engine(loaded, EngineConfig(probe_layers=True, max_batch_size=3), exits=sidecar)
    probed = probe.generate(ids, SamplingParams(max_new_tokens=1))
    served = Engine(loaded, EngineConfig(exit_layers=(1, 2, 3), max_batch_size=3), exits=sidecar).generate(
        ids, SamplingParams(max_new_tokens=1)
    )
    for probed_output, served_output in zip(probed, served, strict=True):
        indicators = probed_output.token_stats[0].layer_confidences
        first = next((layer for layer, c in enumerate(indicators[:-1], 1) if c == 1.0), 4)
        assert served_output.exit_layers == [first]
