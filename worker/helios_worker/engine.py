"""The early-exit engine: continuous batching over the first L layers of a model.

Each decode step runs embed -> layers[:L] with an exit test at every exit layer; a row that
is confident (max softmax >= threshold) leaves the batch there and later layers run only for
the rows still going. A row reaching layer L exits there anyway (greedy exit); below the
threshold that is a confidence breach.

KV of skipped layers (CALM-style state copy): a token that exits at layer e never computes
layers e+1..L, but later tokens attend to its K/V there. We fill them by projecting the
token's exit hidden state through each skipped layer's own input norm and K/V projections
(with its rotary position). This costs two small matmuls per skipped layer instead of a full
layer, and needs no re-computation later (EE-LLM's alternative). The exit hidden state is
kept per position, so layers added later (``set_active_layers``) are filled the same way.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from helios_worker.kv_cache import SlotKVCache
from helios_worker.loading import LoadedModel
from helios_worker.sampling import SamplingParams, sample
from helios_worker.stats import RequestOutput, StepStats, TokenStats


class RequestError(ValueError):
    """A request the engine cannot take (too long, bad parameters)."""


@dataclass(frozen=True)
class EngineConfig:
    max_batch_size: int = 16
    max_seq_len: int = 1024
    exit_threshold: float = 0.8
    early_exit: bool = True
    min_exit_layer: int = 1
    max_prefill_tokens: int = 8192  # padded prompt tokens one step may prefill together
    exit_layers: tuple[int, ...] | None = None  # explicit 1-based exit layers; overrides min_exit_layer
    # Evaluation mode: run every layer for every token, recording the head's confidence and top
    # token at each layer (TokenStats.layer_confidences / layer_tokens); tokens exit only at L.
    probe_layers: bool = False

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_seq_len < 2:
            raise ValueError("max_batch_size must be >= 1 and max_seq_len >= 2")
        if not 0.0 < self.exit_threshold <= 1.0:
            raise ValueError("exit_threshold must be in (0, 1]")
        if self.min_exit_layer < 1 or any(layer < 1 for layer in self.exit_layers or ()):
            raise ValueError("exit layers are 1-based")


@dataclass
class Sequence:
    output: RequestOutput
    params: SamplingParams
    generator: torch.Generator | None
    slot: int = -1
    num_cached: int = 0  # positions whose KV is in the cache
    probe: list[tuple[float, int]] = field(default_factory=list)  # this token's (confidence, top) per layer

    @property
    def last_token(self) -> int:
        return self.output.token_ids[-1]


def _rows(value: Any, index: torch.Tensor) -> Any:
    """Select batch rows of a tensor or of a tuple of tensors (rotary cos/sin); None stays None."""
    if value is None:
        return None
    if isinstance(value, tuple):
        return tuple(v[index] for v in value)
    return value[index]


class Engine:
    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self.loaded = loaded
        self.config = config or EngineConfig()
        self.family = loaded.family
        self.model = loaded.model
        model_config = loaded.config
        max_seq_len = self.config.max_seq_len
        if window := getattr(model_config, "sliding_window", None):
            max_seq_len = min(max_seq_len, window)  # no window masking: stay inside it
        max_seq_len = min(max_seq_len, getattr(model_config, "max_position_embeddings", max_seq_len))
        self.max_seq_len = max_seq_len
        self.active_layers = loaded.num_layers_loaded
        head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // (
            model_config.num_attention_heads
        )
        num_kv_heads = getattr(model_config, "num_key_value_heads", None) or model_config.num_attention_heads
        slots = self.config.max_batch_size
        self.cache = SlotKVCache(
            self.active_layers, slots, num_kv_heads, head_dim, max_seq_len, loaded.dtype, loaded.device
        )
        # [slots, positions, hidden]: the state each token left the stack with (fills added layers)
        self.exit_hidden = torch.zeros(
            slots, max_seq_len, model_config.hidden_size, dtype=loaded.dtype, device=loaded.device
        )
        self.free_slots = list(range(slots))
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.eos_token_ids = self._eos_token_ids()
        self._ids = itertools.count()
        self._probe_states: list[torch.Tensor] = []  # probe mode: [rows, hidden] after each layer

    # --- public API ---------------------------------------------------------------------
    @property
    def exit_layers(self) -> list[int]:
        """1-based layers where the exit test runs; the last active layer always exits."""
        last = self.active_layers
        if self.config.probe_layers:
            return list(range(1, last + 1))
        if not self.config.early_exit:
            return [last]
        chosen = self.config.exit_layers or range(self.config.min_exit_layer, last + 1)
        return sorted({layer for layer in chosen if layer < last} | {last})

    def add_request(
        self, prompt_token_ids: list[int], params: SamplingParams | None = None, request_id: str | None = None
    ) -> str:
        params = params or SamplingParams()
        if not prompt_token_ids:
            raise RequestError("prompt must contain at least one token")
        needed = len(prompt_token_ids) + params.max_new_tokens
        if needed > self.max_seq_len:
            raise RequestError(
                f"prompt ({len(prompt_token_ids)} tokens) + max_new_tokens ({params.max_new_tokens}) "
                f"exceeds the context length {self.max_seq_len}"
            )
        request_id = request_id or f"req-{next(self._ids)}"
        generator = None
        if not params.is_greedy:
            generator = torch.Generator(device=self.loaded.device)
            generator.manual_seed(params.seed if params.seed is not None else torch.seed())
        output = RequestOutput(request_id, list(prompt_token_ids), arrival_time=time.perf_counter())
        self.waiting.append(Sequence(output, params, generator))
        return request_id

    def abort(self, request_id: str) -> None:
        for seq in list(self.waiting):
            if seq.output.request_id == request_id:
                self.waiting.remove(seq)
                self._finish(seq, "abort")
        for seq in self.running:
            if seq.output.request_id == request_id:
                self._finish(seq, "abort")
        self.running = [s for s in self.running if not s.output.finished]

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @torch.inference_mode()
    def step(self) -> tuple[list[RequestOutput], StepStats]:
        """Admit waiting requests (prefill), then one decode step for the others.

        Returns the requests that got a token this step (finished ones flagged) and step stats.
        """
        start = time.perf_counter()
        decoding = list(self.running)
        admitted = self._admit()
        if admitted:
            self._prefill(admitted)
        num_layer_evals = self._decode(decoding) if decoding else 0
        self.running = [s for s in decoding + admitted if not s.output.finished]
        stats = StepStats(
            num_prefills=len(admitted),
            num_decodes=len(decoding),
            num_waiting=len(self.waiting),
            num_running=len(self.running),
            num_layer_evals=num_layer_evals,
            duration_seconds=time.perf_counter() - start,
            kv_cache_usage=sum(s.num_cached for s in self.running) / (self.cache.num_slots * self.max_seq_len),
        )
        return [s.output for s in decoding + admitted], stats

    def generate(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams] | None = None
    ) -> list[RequestOutput]:
        """Run ``prompts`` to completion with continuous batching; outputs in prompt order."""
        all_params = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, all_params, strict=True)]
        done: dict[str, RequestOutput] = {}
        while self.has_unfinished():
            outputs, _ = self.step()
            done.update({o.request_id: o for o in outputs if o.finished})
        return [done[i] for i in ids]

    @torch.inference_mode()
    def set_active_layers(self, num_layers: int) -> None:
        """Use the first ``num_layers`` loaded layers from the next step on.

        Growing fills the new layers' KV for every cached position from the exit hidden
        states (the same scheme as skipped layers), so in-flight sequences stay consistent.
        """
        if not 1 <= num_layers <= self.loaded.num_layers_loaded:
            raise ValueError(f"active layers must be in 1..{self.loaded.num_layers_loaded}, got {num_layers}")
        old = self.active_layers
        self.cache.resize(num_layers)
        self.active_layers = num_layers
        for seq in self.running:
            positions = torch.arange(seq.num_cached, device=self.loaded.device)
            slots = torch.tensor([seq.slot], device=self.loaded.device)
            hidden = self.exit_hidden[seq.slot, : seq.num_cached][None]  # [1, seq, hidden]
            self._fill_kv(range(old, num_layers), hidden, slots, positions[None])

    # --- the hot path -------------------------------------------------------------------
    def _admit(self) -> list[Sequence]:
        """Waiting requests that get a slot now, within the prefill token budget (padded size)."""
        admitted: list[Sequence] = []
        longest = 0
        while self.waiting and self.free_slots:
            longest_if_added = max(longest, len(self.waiting[0].output.prompt_token_ids))
            if admitted and longest_if_added * (len(admitted) + 1) > self.config.max_prefill_tokens:
                break
            seq = self.waiting.popleft()
            seq.slot = self.free_slots.pop(0)
            admitted.append(seq)
            longest = longest_if_added
        return admitted

    def _prefill(self, seqs: list[Sequence]) -> None:
        """Run the prompts through all active layers together; each last position picks a first token.

        Prompts are right-padded to the longest. Pad positions only see real keys before them,
        and the K/V they leave in the cache sit at positions each row's decode overwrites
        before it ever reads them (decode writes position p, then attends to 0..p).
        """
        device = self.loaded.device
        lengths = [len(s.output.prompt_token_ids) for s in seqs]
        width = max(lengths)
        input_ids = torch.zeros(len(seqs), width, dtype=torch.long, device=device)  # [rows, seq]
        for row, seq in enumerate(seqs):
            input_ids[row, : lengths[row]] = torch.tensor(seq.output.prompt_token_ids, device=device)
        positions = torch.arange(width, device=device).expand(len(seqs), width)  # [rows, seq]
        slots = torch.tensor([s.slot for s in seqs], device=device)
        last = torch.tensor(lengths, device=device) - 1  # [rows]: each prompt's last position
        hidden = self.family.embed(self.model, input_ids, positions)  # [rows, seq, hidden]
        pos_in = self.family.position_inputs(self.model, hidden, positions)
        mask = torch.full((width, width), torch.finfo(hidden.dtype).min, dtype=hidden.dtype, device=device)
        mask = mask.triu(1)[None, None]  # [1, 1, seq, seq] additive causal mask, shared by all rows
        self.cache.bind(slots, positions, width)
        exit_layers = set(self.exit_layers)
        undecided = torch.arange(len(seqs), device=device)  # rows whose first token is not chosen yet
        for index, layer in enumerate(self.loaded.layers[: self.active_layers]):
            hidden = self.family.run_layer(layer, hidden, mask, positions, pos_in, self.cache)
            if undecided.numel() and index + 1 in exit_layers:
                last_states = hidden[undecided, last[undecided]][:, None]  # [undecided, 1, hidden]
                decided = self._exit_test(seqs, undecided, last_states, index + 1)
                undecided = undecided[~decided]
        for row, seq in enumerate(seqs):
            self.exit_hidden[seq.slot, : lengths[row]] = hidden[row, : lengths[row]]
            seq.num_cached = lengths[row]

    def _decode(self, seqs: list[Sequence]) -> int:
        """One token for each of ``seqs``; returns the number of decoder layers computed (rows x layers)."""
        device = self.loaded.device
        slots = torch.tensor([s.slot for s in seqs], device=device)
        positions = torch.tensor([s.num_cached for s in seqs], device=device)[:, None]  # [rows, 1]
        input_ids = torch.tensor([s.last_token for s in seqs], device=device)[:, None]  # [rows, 1]
        context_len = int(positions.max()) + 1
        hidden = self.family.embed(self.model, input_ids, positions)  # [rows, 1, hidden]
        pos_in = self.family.position_inputs(self.model, hidden, positions)
        mask = self._decode_mask(positions, context_len, hidden.dtype)  # [rows, 1, 1, context]
        exit_layers = set(self.exit_layers)
        exit_at = torch.full((len(seqs),), self.active_layers, device=device)
        exit_state = torch.empty_like(hidden)
        running = torch.arange(len(seqs), device=device)  # rows still going
        # per-row inputs of the running rows; re-sliced only when rows leave
        run_slots, run_positions, run_mask, run_pos_in = slots, positions, mask, pos_in
        layer_evals = 0
        # The binding (and its contiguity check) holds for every layer until rows leave.
        self.cache.bind(run_slots, run_positions, context_len)
        for index, layer in enumerate(self.loaded.layers[: self.active_layers]):
            hidden = self.family.run_layer(layer, hidden, run_mask, run_positions, run_pos_in, self.cache)
            layer_evals += len(running)
            if index + 1 not in exit_layers:
                continue
            leaving = self._exit_test(seqs, running, hidden, index + 1)
            if not leaving.any():
                continue
            exit_at[running[leaving]] = index + 1
            exit_state[running[leaving]] = hidden[leaving]
            running, hidden = running[~leaving], hidden[~leaving]
            if running.numel() == 0:
                break
            run_slots, run_positions, run_mask = slots[running], positions[running], mask[running]
            run_pos_in = _rows(pos_in, running)
            self.cache.bind(run_slots, run_positions, context_len)
        self._fill_skipped_kv(slots, positions, exit_at, exit_state, pos_in)
        self.exit_hidden[slots, positions[:, 0]] = exit_state[:, 0]
        for seq in seqs:
            seq.num_cached += 1
        return layer_evals

    def _exit_test(self, seqs: list[Sequence], running: torch.Tensor, hidden: torch.Tensor, layer: int):
        """Emit tokens for the running rows that exit at ``layer``; return their mask over ``running``.

        ``hidden`` is [rows, 1, hidden] for the rows in ``running`` (indices into ``seqs``).
        """
        if self.config.probe_layers:
            return self._probe_test(seqs, running, hidden, layer)
        logits = self.family.exit_head(self.model, hidden[:, -1])  # [rows, vocab]
        confidence, greedy = logits.float().softmax(-1).max(-1)
        if layer == self.active_layers:
            leaving = torch.ones_like(confidence, dtype=torch.bool)
        else:
            leaving = confidence >= self.config.exit_threshold
        self._emit_rows(seqs, running, leaving, logits, confidence, greedy, layer)
        return leaving

    def _probe_test(self, seqs: list[Sequence], running: torch.Tensor, hidden: torch.Tensor, layer: int):
        """Evaluation mode: keep every layer's state; at the last layer apply the head to all at once.

        One [layers x rows] head matmul and one host transfer beat a head, a softmax and a sync
        per layer. No row leaves before the last layer, so ``running`` is the same at every layer.
        """
        self._probe_states.append(hidden[:, -1])
        if layer < self.active_layers:
            return torch.zeros(len(running), dtype=torch.bool, device=hidden.device)
        states, self._probe_states = torch.stack(self._probe_states), []  # [layers, rows, hidden]
        logits = self.family.exit_head(self.model, states)  # [layers, rows, vocab]
        confidence, top = logits.float().softmax(-1).max(-1)  # [layers, rows]
        for column, row in enumerate(running.tolist()):
            seqs[row].probe = list(zip(confidence[:, column].tolist(), top[:, column].tolist(), strict=True))
        leaving = torch.ones(len(running), dtype=torch.bool, device=hidden.device)
        self._emit_rows(seqs, running, leaving, logits[-1], confidence[-1], top[-1], layer)
        return leaving

    def _emit_rows(self, seqs, running, leaving, logits, confidence, greedy, layer: int) -> None:
        for row in leaving.nonzero()[:, 0].tolist():
            seq = seqs[int(running[row])]
            token = int(greedy[row]) if seq.params.is_greedy else sample(logits[row], seq.params, seq.generator)
            self._emit(seq, token, float(confidence[row]), layer)

    def _fill_skipped_kv(self, slots, positions, exit_at, exit_state, pos_in) -> None:
        """Write K/V for the layers each row skipped, projected from its exit hidden state."""
        first_skipped = int(exit_at.min())
        for index in range(first_skipped, self.active_layers):
            rows = (exit_at <= index).nonzero()[:, 0]  # rows that exited before layer index+1
            self._fill_kv([index], exit_state[rows], slots[rows], positions[rows], _rows(pos_in, rows))

    def _fill_kv(self, layer_indices, hidden, slots, positions, pos_in=None) -> None:
        if pos_in is None:
            pos_in = self.family.position_inputs(self.model, hidden, positions)
        self.cache.bind(slots, positions, 0)
        for index in layer_indices:
            key, value = self.family.project_kv(self.loaded.layers[index], hidden, pos_in)
            self.cache.write(index, key, value)

    # --- bookkeeping --------------------------------------------------------------------
    def _emit(self, seq: Sequence, token: int, confidence: float, layer: int) -> None:
        output = seq.output
        is_breach = (
            layer == self.active_layers
            and self.active_layers < self.loaded.num_layers_total
            and confidence < self.config.exit_threshold
        )
        output.token_ids.append(token)
        probe, seq.probe = seq.probe, []
        output.token_stats.append(
            TokenStats(
                token,
                layer,
                confidence,
                is_breach,
                layer_confidences=tuple(c for c, _ in probe) or None,
                layer_tokens=tuple(t for _, t in probe) or None,
            )
        )
        if output.first_token_time is None:
            output.first_token_time = time.perf_counter()
        params = seq.params
        if token in params.stop_token_ids or (not params.ignore_eos and token in self.eos_token_ids):
            self._finish(seq, "stop")
        elif len(output.token_ids) >= params.max_new_tokens:
            self._finish(seq, "length")

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.output.finished = True
        seq.output.finish_reason = reason
        seq.output.finish_time = time.perf_counter()
        if seq.slot >= 0:
            self.free_slots.append(seq.slot)
            self.free_slots.sort()  # lowest slots first keeps batches contiguous (cache views)
            seq.slot = -1

    @staticmethod
    def _decode_mask(positions: torch.Tensor, context_len: int, dtype: torch.dtype) -> torch.Tensor:
        span = torch.arange(context_len, device=positions.device)[None, :]  # [1, context]
        blocked = span > positions  # [rows, context]: future and unused cache positions
        mask = torch.zeros(blocked.shape, dtype=dtype, device=positions.device)
        return mask.masked_fill_(blocked, torch.finfo(dtype).min)[:, None, None, :]

    def _eos_token_ids(self) -> set[int]:
        """End-of-sequence ids as HF ``generate`` sees them: generation config first, then model config."""
        for source in (
            getattr(self.model, "generation_config", None),
            self.loaded.config,
            self.loaded.tokenizer,
        ):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                return {value}
            if isinstance(value, list | tuple) and value:
                return {v for v in value if isinstance(v, int)}
        return set()
