"""The K/V the engine writes for a layer a token skipped is what the real layer would write.

The oracle is HF's own decoder layer, run on the same hidden state into a scratch cache
(tests/reference_early_exit.py): nothing of the engine's projection code is reused, so a fill
without rotary, without the input norm or with the wrong head layout fails here.
"""

from __future__ import annotations

import pytest
import torch

from helios_worker.loading import load_model
from tests.conftest import ARCHITECTURES
from tests.reference_early_exit import HFModel


@pytest.mark.parametrize("arch", ARCHITECTURES)
@torch.inference_mode()
def test_skipped_layer_fill_equals_what_the_real_layer_writes(tiny_model, arch):
    path = tiny_model(arch)
    loaded, hf = load_model(str(path)), HFModel(path)
    torch.manual_seed(0)
    hidden = torch.randn(1, 5, loaded.config.hidden_size) * 3  # [1, seq, hidden], far from unit norm
    positions = torch.arange(7, 12)[None]  # not starting at 0: rotary must use the real positions
    rotary = loaded.family.rotary(loaded.model, hidden, positions)
    for index in range(loaded.num_layers_loaded):
        key, value = loaded.family.project_kv(loaded.layers[index], hidden, rotary)
        want_key, want_value = hf.written_kv(index, hidden, positions)
        torch.testing.assert_close(key, want_key, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(value, want_value, rtol=1e-5, atol=1e-5)
