"""Exit decisions that pay: gated heads, real per-row work, EOS, and exit states kept per slot."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helios_worker.engine import Engine, EngineConfig
from helios_worker.exit_plan import ExitProfile
from helios_worker.gates import LinearGate, SaturationGate, make_gate
from helios_worker.loading import load_model
from helios_worker.sampling import SamplingParams
from tests.reference_early_exit import HFModel, reference_generate, saturation_gate

PROMPTS = ["the quick brown fox", "def add(a, b):", "kubernetes operators reconcile custom resources and"]
GREEDY = SamplingParams(max_new_tokens=12, ignore_eos=True)


def _ids(loaded) -> list[list[int]]:
    return [loaded.tokenizer(p).input_ids for p in PROMPTS]


class CountingFamily:
    """The engine's family with every LM-head call's row count recorded."""

    def __init__(self, family) -> None:
        self._family = family
        self.head_rows: list[int] = []

    def __getattr__(self, name):
        return getattr(self._family, name)

    def exit_head(self, model, hidden):
        self.head_rows.append(hidden.shape[0])
        return self._family.exit_head(model, hidden)


class RecordingGate(SaturationGate):
    """Saturation, plus how many rows it saw and passed at each call."""

    def __init__(self, threshold: float) -> None:
        super().__init__(threshold)
        self.seen: list[float] = []
        self.passed_rows = 0

    def passes(self, layer, before, after):
        cos = F.cosine_similarity(before.float(), after.float(), dim=-1)
        self.seen += cos.tolist()
        passed = super().passes(layer, before, after)
        self.passed_rows += int(passed.sum())
        return passed


def _median_cosine(loaded) -> float:
    probe = RecordingGate(1.0)
    Engine(loaded, EngineConfig(exit_threshold=0.3, max_batch_size=3), gate=probe).generate(_ids(loaded), GREEDY)
    return float(torch.tensor(probe.seen).median())


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
def test_gated_heads_run_only_on_passing_rows_and_match_the_oracle(tiny_model, arch):
    path = tiny_model(arch)
    loaded = load_model(str(path), layers=4)
    threshold = _median_cosine(loaded)  # about half the rows pass: both branches are exercised
    gate = RecordingGate(threshold)
    engine = Engine(loaded, EngineConfig(exit_threshold=0.3, max_batch_size=3), gate=gate)
    counting = CountingFamily(engine.family)
    engine.family = counting
    ids = _ids(loaded)
    outputs = engine.generate(ids, GREEDY)

    tokens_reaching_last = sum(1 for o in outputs for stats in o.token_stats if stats.exit_layer == 4)
    # prefill runs every row through every layer: its last-layer head covers rows still undecided
    assert sum(counting.head_rows) == gate.passed_rows + tokens_reaching_last
    assert 0 < gate.passed_rows < len(gate.seen)  # the gate really filtered
    hf = HFModel(path, 4)
    for prompt, output in zip(ids, outputs, strict=True):
        tokens, exits = reference_generate(hf, prompt, 12, 0.3, engine.exit_layers, gate=saturation_gate(threshold))
        assert output.token_ids == tokens
        assert output.exit_layers == exits


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_layers_computed_per_step_are_the_sum_of_exit_layers(tiny_model, arch):
    loaded = load_model(str(tiny_model(arch)), layers=4)
    engine = Engine(loaded, EngineConfig(exit_threshold=0.1, max_batch_size=3))
    ids = [engine.add_request(p, GREEDY) for p in _ids(loaded)]
    decode_layer_evals, done = 0, {}
    while engine.has_unfinished():
        outputs, stats = engine.step()
        decode_layer_evals += stats.num_layer_evals
        done.update({o.request_id: o for o in outputs if o.finished})
    # each request's first token comes from prefill; every later one from a decode step
    decoded_exits = [layer for i in ids for layer in done[i].exit_layers[1:]]
    assert len(set(decoded_exits)) > 1  # rows really left at different layers
    assert decode_layer_evals == sum(decoded_exits)


def test_eos_ends_a_request_where_hf_generate_stops(tiny_model):
    path = tiny_model("llama")
    prompt = load_model(str(path)).tokenizer(PROMPTS[0]).input_ids
    free_running = Engine(load_model(str(path)), EngineConfig(early_exit=False)).generate([prompt], GREEDY)[0]
    eos = free_running.token_ids[3]  # a token the model really emits, made its end of sequence
    stop_at = free_running.token_ids.index(eos)
    eos_path = tiny_model("llama", eos_token_id=eos)
    loaded = load_model(str(eos_path))
    output = Engine(loaded, EngineConfig(early_exit=False)).generate([prompt], SamplingParams(max_new_tokens=12))[0]
    assert output.finish_reason == "stop"
    assert output.token_ids == free_running.token_ids[: stop_at + 1]
    hf = HFModel(eos_path)
    tokens, _ = reference_generate(hf, prompt, 12, 1.0, [4], eos_token_id=eos)
    assert output.token_ids == tokens


def test_a_request_finishing_on_its_first_token_leaves_other_slots_alone(tiny_model):
    """It used to write its prompt's exit states into slot -1, which another sequence owned."""
    loaded = load_model(str(tiny_model("llama")), layers=4)
    prompt_a = loaded.tokenizer(PROMPTS[2]).input_ids
    prompt_b = list(reversed(prompt_a))  # as long as A's: it would cover every position of A's states
    config = EngineConfig(exit_threshold=0.3, max_batch_size=2)

    def run(with_b: bool) -> list[int]:
        engine = Engine(loaded, config)
        engine.set_active_layers(2)
        # X takes slot 0 and leaves after two tokens; A holds slot 1, the last slot (= slot -1)
        engine.add_request(prompt_b, SamplingParams(max_new_tokens=2, ignore_eos=True), request_id="x")
        engine.add_request(prompt_a, GREEDY, request_id="a")
        outputs = {}
        for step in range(40):
            if step == 3 and with_b:  # B gets slot 0 and is done after its first token
                engine.add_request(prompt_b, SamplingParams(max_new_tokens=1, ignore_eos=True), request_id="b")
            if step == 5:  # added layers are filled from the stored exit states
                engine.set_active_layers(4)
            done, _ = engine.step()
            outputs.update({o.request_id: o for o in done if o.finished})
            if not engine.has_unfinished():
                break
        assert not with_b or outputs["b"].token_ids
        return outputs["a"].token_ids

    assert run(with_b=True) == run(with_b=False)


def test_auto_exit_layers_come_from_the_profile_and_never_without_one(tiny_model):
    loaded = load_model(str(tiny_model("llama")))
    plain = Engine(loaded, EngineConfig(exit_layers="auto"))
    assert plain.exit_layers == [4]  # no profile: greedy exit at L only
    # every token confident at layer 2: one exit there pays at batch 1
    profile = ExitProfile(exit_threshold=0.8, num_layers_total=4, exit_layer_histogram=[0, 100, 0, 0])
    engine = Engine(loaded, EngineConfig(exit_layers="auto", exit_profile=profile))
    assert engine.exit_layers == [2, 4]
    # never below min_exit_layer: the same tokens leave at 3 instead
    later = EngineConfig(exit_layers="auto", exit_profile=profile, min_exit_layer=3)
    assert Engine(loaded, later).exit_layers == [3, 4]
    # a batch of 16 at a long context: rows dominate, the exit still pays
    assert Engine(loaded, EngineConfig(exit_layers="auto", exit_profile=profile)).exit_layers_for(16, 1024) == [2, 4]
    assert Engine(loaded, EngineConfig(exit_layers=(1, 3))).exit_layers == [1, 3, 4]
    assert Engine(loaded, EngineConfig(exit_layers="none")).exit_layers == [4]


def test_gates_by_name_and_the_trained_gate_interface():
    assert make_gate("none").passes(3, torch.ones(2, 4), torch.ones(2, 4)) is None
    saturated = make_gate("saturation", 0.9)
    before = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    after = torch.tensor([[2.0, 0.1], [0.0, 1.0]])  # the first barely turned, the second turned 90 degrees
    assert saturated.passes(2, before, after).tolist() == [True, False]
    gate = LinearGate({2: (torch.tensor([1.0, -1.0]), torch.tensor(0.0))}, threshold=0.5)
    assert gate.passes(2, before, torch.tensor([[3.0, 0.0], [0.0, 3.0]])).tolist() == [True, False]
    assert gate.passes(3, before, after).tolist() == [False, False]  # no weights for layer 3
    with pytest.raises(ValueError, match="helios calibrate"):
        make_gate("trained")
    with pytest.raises(ValueError, match="unknown exit gate"):
        make_gate("magic")


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_attention_by_runs_of_slots_matches_the_oracle(tiny_model, monkeypatch, arch):
    """Rows leaving from the middle of a long-context batch attend per run of slots; tokens stay exact."""
    import helios_worker.batch
    from helios_worker.llama_block import LlamaBlock

    monkeypatch.setattr(helios_worker.batch, "RUNS_MIN_CONTEXT", 1)  # short test prompts count as long
    calls = []
    attend_run = LlamaBlock._attend_run
    monkeypatch.setattr(LlamaBlock, "_attend_run", lambda self, *a: calls.append(1) or attend_run(self, *a))
    path = tiny_model(arch)
    loaded = load_model(str(path), layers=4)
    more = ["early exit lets easy tokens", "the lazy dog", "def add(a, b): return a + b and"]
    prompts = [loaded.tokenizer(p).input_ids for p in PROMPTS + more]  # 6 rows of different lengths
    hf = HFModel(path, 4)
    for threshold in (0.1, 0.3):
        engine = Engine(loaded, EngineConfig(exit_threshold=threshold, max_batch_size=6))
        outputs = engine.generate(prompts, GREEDY)
        for prompt, output in zip(prompts, outputs, strict=True):
            assert (output.token_ids, output.exit_layers) == reference_generate(
                hf, prompt, 12, threshold, engine.exit_layers
            )
    assert calls  # the runs path really ran
