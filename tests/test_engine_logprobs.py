"""Logprobs in the engine: only for requests that ask, each from its own exit layer, prompts in chunks.

On helios-ee-tiny with an exit test at every layer, so rows of one step leave at different layers.
"""

from __future__ import annotations

import pytest
import torch

from helios_worker import engine as engine_module
from helios_worker.engine import Engine, EngineConfig
from helios_worker.loading import load_model
from helios_worker.sampling import SamplingParams
from helios_worker.scoring import sequence_logits


@pytest.fixture(scope="module")
def loaded():
    torch.set_num_threads(1)
    return load_model("helios-ee-tiny")


def engine_for(loaded) -> Engine:
    return Engine(loaded, EngineConfig(exit_layers="all", max_seq_len=128, max_batch_size=4))


def test_a_mixed_batch_computes_only_what_each_request_asked(loaded):
    tokenizer = loaded.tokenizer
    prompts = [tokenizer(text).input_ids for text in ("count from 41 : 41 42", "The return", "letters : c d e")]
    asking = SamplingParams(max_new_tokens=8, ignore_eos=True, logprobs=2)
    params = [
        asking,
        SamplingParams(max_new_tokens=6, ignore_eos=True),
        SamplingParams(max_new_tokens=0, prompt_logprobs=1),
    ]
    with_logprobs, without, prompt_only = engine_for(loaded).generate(prompts, params)
    [alone] = engine_for(loaded).generate(prompts[:1], asking)

    assert len(set(with_logprobs.exit_layers)) > 1  # rows leave at several layers
    assert with_logprobs.token_ids == alone.token_ids
    for batched, single in zip(with_logprobs.logprobs, alone.logprobs, strict=True):
        assert batched.token_id == single.token_id
        assert batched.logprob == pytest.approx(single.logprob, abs=1e-5)
        assert [token for token, _ in batched.top] == [token for token, _ in single.top]
        assert len(batched.top) == 2 and batched.top[0] == (batched.token_id, batched.logprob)  # greedy: the top one

    assert without.logprobs == [] and without.prompt_logprobs is None  # nothing computed
    assert (prompt_only.token_ids, prompt_only.finish_reason) == ([], "length")
    assert prompt_only.prompt_logprobs[0] is None
    assert [entry.token_id for entry in prompt_only.prompt_logprobs[1:]] == prompts[2][1:]


def test_prompt_logprobs_in_chunks_equal_one_full_depth_pass(loaded, monkeypatch):
    monkeypatch.setattr(engine_module, "PROMPT_LOGPROB_ROWS", 3)  # several head calls for one prompt
    prompt = loaded.tokenizer("spell owl : o w l | spell cat : c a t").input_ids
    [output] = engine_for(loaded).generate([prompt], SamplingParams(max_new_tokens=0, prompt_logprobs=3))
    expected = sequence_logits(loaded, prompt).float().log_softmax(-1)[:-1]  # row i predicts token i + 1
    entries = output.prompt_logprobs[1:]
    assert len(entries) == len(prompt) - 1
    for entry, row, token in zip(entries, expected, prompt[1:], strict=True):
        assert entry.logprob == pytest.approx(float(row[token]), abs=1e-5)
        values, ids = row.topk(3)
        assert [token for token, _ in entry.top] == ids.tolist()
        assert [value for _, value in entry.top] == pytest.approx(values.tolist(), abs=1e-5)
