"""Loading reads only what the first L layers need, and says clearly what is wrong."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from helios_worker.loading import Checkpoint, ModelLoadError, load_model, resize_layers
from helios_worker.model_refs import ModelRefError
from helios_worker.scoring import sequence_logits


@pytest.fixture(scope="module")
def wide_model(tiny_model):
    """Layers dominate this checkpoint (small vocab, wide layers), like a real multi-billion model."""
    return tiny_model("llama", num_hidden_layers=8, hidden_size=512, intermediate_size=2048)


def test_bytes_loaded_scale_with_layers_not_depth(wide_model):
    total = Checkpoint.open(wide_model).total_bytes
    quarter = load_model(str(wide_model), layers=2)
    full = load_model(str(wide_model))
    assert full.bytes_loaded == total
    assert quarter.bytes_loaded <= 0.30 * total
    assert quarter.bytes_loaded == quarter.shared_bytes + sum(quarter.layer_bytes[:2])
    assert quarter.weight_bytes() == quarter.bytes_loaded
    # layers >= L do not exist at all, not even on the meta device
    assert len(quarter.layers) == 2
    assert sum(p.numel() for p in quarter.model.parameters()) < 0.3 * sum(p.numel() for p in full.model.parameters())


RSS_PROBE = textwrap.dedent(
    """
    import gc, json, sys, psutil, torch
    from helios_worker.loading import load_model
    from helios_worker.scoring import sequence_logits
    load_model(sys.argv[1], layers=1)  # imports and one-off allocations out of the way
    gc.collect()
    before = psutil.Process().memory_info().rss
    loaded = load_model(sys.argv[1], layers=int(sys.argv[2]))
    sequence_logits(loaded, [1, 2, 3])  # CPU tensors may stay file-mapped until used: touch every weight
    gc.collect()
    print(json.dumps({"rss_growth": psutil.Process().memory_info().rss - before}))
    """
)


def _rss_growth(path, layers: int) -> int:
    result = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, str(path), str(layers)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])["rss_growth"]


@pytest.mark.slow
def test_resident_memory_grows_with_loaded_layers(wide_model):
    growth_2 = _rss_growth(wide_model, 2)
    growth_8 = _rss_growth(wide_model, 8)
    layer_bytes = Checkpoint.open(wide_model).total_bytes / 8  # roughly; the shared part is small here
    assert growth_8 - growth_2 > 4 * layer_bytes  # six more layers' worth of memory
    assert growth_2 < 0.4 * growth_8


def test_sharded_checkpoint_and_unprefixed_names(tiny_model, tmp_path):
    sharded = tiny_model("opt", max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").exists()
    loaded = load_model(str(sharded), layers=3)
    assert loaded.num_layers_loaded == 3

    # Original OPT/GPT-2 checkpoints name tensors without the base-model prefix.
    plain = tiny_model("gpt2")
    for name in plain.iterdir():
        if name.suffix != ".safetensors":
            (tmp_path / name.name).write_bytes(name.read_bytes())
    tensors = load_file(plain / "model.safetensors")
    renamed = {k.removeprefix("transformer."): v.contiguous() for k, v in tensors.items()}
    save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})
    stripped = load_model(str(tmp_path), layers=2)
    reference = load_model(str(plain), layers=2)
    assert torch.equal(sequence_logits(stripped, [5, 6, 7]), sequence_logits(reference, [5, 6, 7]))


def test_grow_in_place_equals_fresh_load(tiny_model):
    path = tiny_model("qwen3")
    grown = load_model(str(path), layers=1)
    bytes_read = resize_layers(grown, 3)
    assert bytes_read == sum(grown.layer_bytes[1:3])
    fresh = load_model(str(path), layers=3)
    assert torch.equal(sequence_logits(grown, [3, 4, 5, 6]), sequence_logits(fresh, [3, 4, 5, 6]))
    resize_layers(grown, 2)
    assert grown.num_layers_loaded == 2


@pytest.mark.parametrize(
    ("ref", "layers", "message"),
    [
        ("/no/such/dir", None, "not found: tried a built-in alias"),
        ("org/not-in-cache", None, "local Hugging Face cache"),
        ("", None, "empty model reference"),
    ],
)
def test_bad_references_say_what_was_tried(ref, layers, message):
    with pytest.raises(ModelRefError, match=message):
        load_model(ref, layers)


def test_layer_bounds_and_unsupported_architecture(tiny_model, tmp_path):
    path = tiny_model("llama")
    for layers in (0, 5):
        with pytest.raises(ModelLoadError, match="layers must be between 1 and 4"):
            load_model(str(path), layers)
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "t5"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises((ModelLoadError, ModelRefError), match="t5"):
        load_model(str(tmp_path))
