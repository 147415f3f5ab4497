"""Step 2 of the HELIOS loop: evaluate a candidate at full depth on real prompts.

Two parts. ``summarize`` is pure: from each generated token's (confidence, top token)
after every layer it derives the curves the policy reads (exit distribution, agreement,
breach rate, mean exit layer as functions of the number of layers loaded). The rest runs
the engine twice on the same prompts: once in probe mode (an exit test after every layer,
which gives the curves) and once as a plain full-depth pass (one head per token), which is
what ``tokens_per_second`` and the latencies are timed on, because the policy scales its
predictions from a plain full-depth token (see ``helios_operator.policy.predict``).

Exit tests are assumed after every layer 1..L, as the engine does by default.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from helios_contracts.reports import EvaluationReport

if TYPE_CHECKING:  # torch stays out of import time: the CLI and the server import this module
    from helios_worker.engine import Engine
    from helios_worker.gpu import GpuTelemetry
    from helios_worker.loading import LoadedModel
    from helios_worker.stats import RequestOutput

# Probe and timed runs generate the same tokens, so a progress bar's total is this times
# prompts x max_new_tokens (an upper bound: requests may stop early at EOS).
NUM_PASSES = 2
MAX_BATCH_SIZE = 16

ProgressCallback = Callable[[int], None]


class EvaluationError(ValueError):
    """An evaluation that cannot run as asked; the message says why."""


class ProbeRecord(NamedTuple):
    """One generated token: the head's max-softmax confidence and top token after layers 1..N."""

    confidences: Sequence[float]
    tokens: Sequence[int]


# --- pure part -------------------------------------------------------------------------


def summarize(records: Sequence[ProbeRecord], num_layers: int, threshold: float) -> dict[str, Any]:
    """The per-layer curves of an EvaluationReport (keys are its field names) plus ``num_tokens``.

    With N = ``num_layers`` and a token's first confident layer f (confidence >= threshold;
    none if never), loading only L layers makes the token exit at e(L) = f if f <= L, else at
    L. Then, for each L (index L-1):
    - ``greedy_agreement_by_layer``: share of tokens whose top token at e(L) is the full-depth one;
    - ``breach_rate_by_layer``: share reaching L unconfident (no f <= L), as the engine counts
      breaches: never at L = N, where the token gets the model's own answer;
    - ``mean_exit_layer_by_layer``: mean e(L).
    The full-depth token is the top token after layer N (the evaluation decodes greedily).
    With no records every curve is 0.
    """
    if num_layers < 1:
        raise ValueError("num_layers must be >= 1")
    histogram = [0] * num_layers
    agree = [0] * num_layers
    confident = [0] * num_layers
    greedy_agree = [0] * num_layers
    breaches = [0] * num_layers
    exit_sum = [0] * num_layers
    for number, record in enumerate(records):
        if len(record.confidences) != num_layers or len(record.tokens) != num_layers:
            raise ValueError(f"record {number} has {len(record.confidences)} layers, expected {num_layers}")
        final = record.tokens[-1]
        first = next((layer for layer, c in enumerate(record.confidences, 1) if c >= threshold), None)
        histogram[(first or num_layers) - 1] += 1
        for layer in range(1, num_layers + 1):
            agree[layer - 1] += record.tokens[layer - 1] == final
            confident[layer - 1] += record.confidences[layer - 1] >= threshold
            is_early = first is not None and first <= layer
            exit_layer = first if is_early else layer
            greedy_agree[layer - 1] += record.tokens[exit_layer - 1] == final
            exit_sum[layer - 1] += exit_layer
            breaches[layer - 1] += not is_early and layer < num_layers
    num_tokens = len(records)

    def share(counts: list[int]) -> list[float]:
        return [count / num_tokens if num_tokens else 0.0 for count in counts]

    return {
        "num_tokens": num_tokens,
        "exit_layer_histogram": histogram,
        "agreement_by_layer": share(agree),
        "confident_fraction_by_layer": share(confident),
        "greedy_agreement_by_layer": share(greedy_agree),
        "breach_rate_by_layer": share(breaches),
        "mean_exit_layer_by_layer": share(exit_sum),
    }


@dataclass(frozen=True)
class Timing:
    tokens_per_second: float
    time_per_output_token_seconds: float
    time_to_first_token_seconds: float


def timing(outputs: Sequence[RequestOutput]) -> Timing:
    """Throughput over the run's wall time; TTFT and TPOT averaged over requests."""
    finished = [o for o in outputs if o.first_token_time is not None and o.finish_time is not None]
    if not finished:
        return Timing(0.0, 0.0, 0.0)
    num_tokens = sum(len(o.token_ids) for o in finished)
    wall = max(o.finish_time for o in finished) - min(o.arrival_time for o in finished)
    ttft = sum(o.first_token_time - o.arrival_time for o in finished) / len(finished)
    # TPOT excludes the first token (that is TTFT) and requests with a single token.
    decode = [(o.finish_time - o.first_token_time) / (len(o.token_ids) - 1) for o in finished if len(o.token_ids) > 1]
    tpot = sum(decode) / len(decode) if decode else 0.0
    return Timing(num_tokens / wall if wall > 0 else 0.0, tpot, ttft)


def parse_candidates(text: str) -> list[tuple[str, str]]:
    """``"REF,NAME=REF,..."`` -> [(name, ref)]; a bare REF is its own name."""
    candidates = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, ref = item.partition("=") if "=" in item else (item, "", item)
        if not name.strip() or not ref.strip():
            raise ValueError(f"bad candidate {item!r}: use REF or NAME=REF")
        candidates.append((name.strip(), ref.strip()))
    if not candidates:
        raise ValueError("no candidates given")
    names = [name for name, _ in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must be unique, got {', '.join(names)}")
    return candidates


# --- running the engine ----------------------------------------------------------------


class _Run:
    """Drives an engine to completion, tracking peak memory and GPU energy per step."""

    def __init__(self, loaded: LoadedModel, telemetry: GpuTelemetry | None, progress: ProgressCallback | None):
        import psutil
        import torch

        self.loaded = loaded
        self.is_cuda = loaded.device.type == "cuda"
        self.gpu_index: int | None = None
        if self.is_cuda:
            index = loaded.device.index
            self.gpu_index = torch.cuda.current_device() if index is None else index
        self.telemetry = telemetry if self.is_cuda and telemetry is not None and telemetry.available else None
        self.progress = progress
        self.process = psutil.Process()
        self.peak_rss = self.process.memory_info().rss
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(loaded.device)

    def generate(self, engine: Engine, prompt_ids: list[list[int]], max_new_tokens: int) -> list[RequestOutput]:
        from helios_worker.sampling import SamplingParams

        params = SamplingParams(max_new_tokens=max_new_tokens)
        request_ids = [engine.add_request(ids, params) for ids in prompt_ids]
        done: dict[str, RequestOutput] = {}
        while engine.has_unfinished():
            outputs, _ = engine.step()
            done.update({o.request_id: o for o in outputs if o.finished})
            if self.telemetry is not None:
                self.telemetry.read()  # integrates power on GPUs without an energy counter
            else:
                self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            if self.progress is not None:
                self.progress(len(outputs))  # every returned request got exactly one token
        return [done[i] for i in request_ids]

    def energy_joules(self) -> float | None:
        return None if self.telemetry is None else self.telemetry.energy_joules(self.gpu_index)

    def peak_memory_bytes(self) -> int:
        """GPU: torch's peak allocation; CPU: the process's peak resident set while stepping."""
        if self.is_cuda:
            import torch

            return int(torch.cuda.max_memory_allocated(self.loaded.device))
        return int(self.peak_rss)

    def device_name(self) -> str:
        if not self.is_cuda:
            return str(self.loaded.device)
        import torch

        return f"{self.loaded.device} ({torch.cuda.get_device_name(self.loaded.device)})"


def _resident_bytes(loaded: LoadedModel) -> tuple[int, int]:
    """(mean bytes of one decoder layer, bytes outside the layers) as loaded on this device.

    Counted from the live tensors rather than the checkpoint, whose dtype may differ from the
    one served (e.g. an fp32 checkpoint served in bf16); tied embeddings are counted once.
    """
    seen: set[int] = set()

    def size(tensors) -> int:
        total = 0
        for tensor in tensors:
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
        return total

    per_layer = [size(layer.parameters()) for layer in loaded.layers]
    shared = size(loaded.model.parameters())  # layers' tensors are already in ``seen``
    return round(sum(per_layer) / len(per_layer)), shared


def _tokenize(loaded: LoadedModel, prompts: Sequence[str]) -> list[list[int]]:
    prompt_ids = [ids for ids in (loaded.tokenizer(p).input_ids for p in prompts if p.strip()) if ids]
    if not prompt_ids:
        raise EvaluationError("no non-empty prompts to evaluate")
    return prompt_ids


def _fit_context(prompt_ids: list[list[int]], max_new_tokens: int, limit: int) -> list[list[int]]:
    """Keep the last tokens of prompts too long for the context (exits are about the reply)."""
    if max_new_tokens >= limit:
        raise EvaluationError(f"max_new_tokens ({max_new_tokens}) must be below the context length {limit}")
    keep = limit - max_new_tokens
    return [ids[-keep:] for ids in prompt_ids]


def evaluate_candidate(
    loaded: LoadedModel,
    prompts: Sequence[str],
    max_new_tokens: int,
    exit_threshold: float,
    name: str | None = None,
    progress: ProgressCallback | None = None,
    telemetry: GpuTelemetry | None = None,
    exits_dir: str | None = None,
) -> EvaluationReport:
    """Run ``prompts`` through ``loaded`` at full depth and report what early exit would do.

    ``progress(n)`` is called after each engine step with the tokens it produced, over both
    passes (see NUM_PASSES). ``telemetry`` gives energy when the model is on a GPU. With
    ``exits_dir`` (helios calibrate) the exit curves are those of the calibrated exits.
    """
    from helios_worker.engine import Engine, EngineConfig

    if loaded.num_layers_loaded != loaded.num_layers_total:
        raise EvaluationError(
            f"evaluation needs all {loaded.num_layers_total} layers of {loaded.name}, "
            f"but only {loaded.num_layers_loaded} are loaded"
        )
    prompt_ids = _tokenize(loaded, prompts)
    # The engine caps the context at the model's limit; prompts are then cut to fit it.
    max_seq_len = max(2, max(len(ids) for ids in prompt_ids) + max_new_tokens)
    batch = min(len(prompt_ids), MAX_BATCH_SIZE)

    exits = None
    if exits_dir is not None:
        from helios_worker.server.state import load_exits

        exits = load_exits(loaded, exits_dir)

    def engine(exits=None, **options: Any) -> Engine:
        config = EngineConfig(max_batch_size=batch, max_seq_len=max_seq_len, exit_threshold=exit_threshold, **options)
        return Engine(loaded, config, exits=exits)

    run = _Run(loaded, telemetry, progress)
    probe = engine(exits, probe_layers=True)
    prompt_ids = _fit_context(prompt_ids, max_new_tokens, probe.max_seq_len)
    probed = run.generate(probe, prompt_ids, max_new_tokens)  # also warms up kernels and allocator
    kv_bytes_per_token_per_layer = probe.cache.bytes_per_token // probe.cache.num_layers
    del probe

    plain = engine(early_exit=False)
    energy_before = run.energy_joules()
    timed = run.generate(plain, prompt_ids, max_new_tokens)
    energy_after = run.energy_joules()
    del plain

    records = [
        ProbeRecord(stats.layer_confidences, stats.layer_tokens)
        for output in probed
        for stats in output.token_stats
        if stats.layer_confidences is not None and stats.layer_tokens is not None
    ]
    curves = summarize(records, loaded.num_layers_total, exit_threshold)
    measured = timing(timed)
    num_timed_tokens = sum(len(o.token_ids) for o in timed)
    energy_per_token = None
    if energy_before is not None and energy_after is not None and num_timed_tokens:
        energy_per_token = (energy_after - energy_before) / num_timed_tokens
    bytes_per_layer, bytes_shared = _resident_bytes(loaded)
    return EvaluationReport(
        model=name or loaded.name,
        model_ref=loaded.ref.ref,
        revision=loaded.ref.revision,
        architecture=loaded.architecture,
        num_layers_total=loaded.num_layers_total,
        exit_threshold=exit_threshold,
        num_prompts=len(prompt_ids),
        **curves,
        tokens_per_second=measured.tokens_per_second,
        includes_exit_checks=False,
        time_per_output_token_seconds=measured.time_per_output_token_seconds,
        time_to_first_token_seconds=measured.time_to_first_token_seconds,
        peak_memory_bytes=run.peak_memory_bytes(),
        bytes_per_layer=bytes_per_layer,
        bytes_shared=bytes_shared,
        kv_bytes_per_token_per_layer=kv_bytes_per_token_per_layer,
        energy_per_token_joules=energy_per_token,
        shape=loaded.shape,
        dtype=str(loaded.dtype).removeprefix("torch."),
        exits=None if exits is None else exits.manifest.identity,
        device=run.device_name(),
        evaluated_at=datetime.now(UTC),
    )


def evaluate_candidates(
    candidates: Sequence[tuple[str, str]],
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    exit_threshold: float,
    device: str = "cpu",
    progress: Callable[[str, int], None] | None = None,
    telemetry: GpuTelemetry | None = None,
    exits: dict[str, str] | None = None,
) -> list[EvaluationReport]:
    """Evaluate each (name, ref) in turn, loading it at full depth and freeing it before the next.

    ``exits`` maps candidate names to calibrated-exit directories.

    ``progress(name, tokens)`` reports tokens as they are generated. Raises ModelRefError /
    ModelLoadError for a candidate that cannot be loaded, EvaluationError for bad settings.
    """
    from helios_worker.loading import load_model

    reports = []
    for name, ref in candidates:
        loaded = load_model(ref, device=device, name=name)
        on_tokens = None if progress is None else (lambda tokens, name=name: progress(name, tokens))
        exits_dir = (exits or {}).get(name)
        reports.append(
            evaluate_candidate(loaded, prompts, max_new_tokens, exit_threshold, name, on_tokens, telemetry, exits_dir)
        )
        del loaded
        _free_memory(device)
    return reports


def _free_memory(device: str) -> None:
    """Give a finished candidate's memory back before the next loads (GPU memory is not freed by del alone)."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def planned_tokens(num_prompts: int, max_new_tokens: int) -> int:
    """Upper bound on the tokens one candidate's evaluation generates (for progress bars)."""
    return NUM_PASSES * num_prompts * max_new_tokens
