"""The early-exit engine: continuous batching over the first L layers of a model.

Each decode step runs embed -> layers[:L] with an exit test at every exit layer; a row that
is confident (max softmax >= threshold) leaves the batch there and later layers run only for
the rows still going. A row reaching layer L exits there anyway (greedy exit); below the
threshold that is a confidence breach. The exit test is gated (``helios_worker.gates``): an
O(hidden) check picks the rows that get the LM head at all.

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

import torch

from helios_contracts.memory_model import DEFAULT_MAX_PREFILL_TOKENS, LayerChangeRefused, MemoryModelError, plan_memory
from helios_worker.batch import DecodeBatch, prepare_decode, prepare_prefill
from helios_worker.exit_plan import DEFAULT_MAX_EXITS, EXIT_LAYER_MODES, ExitProfile, choose_exit_layers
from helios_worker.exit_sidecar import CalibratedExits
from helios_worker.gates import GATE_NAMES, ExitGate, make_gate
from helios_worker.kv_cache import SlotKVCache
from helios_worker.loading import LoadedModel, resize_layers
from helios_worker.logprobs import LogprobCollector, LogprobTarget
from helios_worker.sampling import SamplingParams, sample
from helios_worker.stats import RequestOutput, StepStats, TokenLogprobs, TokenStats

# Prompt positions per LM-head call when a request asks for its prompt's logprobs ([rows, vocab]
# logits at a time, not the whole prompt's).
PROMPT_LOGPROB_ROWS = 256


class RequestError(ValueError):
    """A request the engine cannot take (too long, bad parameters)."""


@dataclass(frozen=True)
class EngineConfig:
    max_batch_size: int = 16
    max_seq_len: int = 1024
    exit_threshold: float = 0.8
    early_exit: bool = True
    min_exit_layer: int = 1
    max_prefill_tokens: int = DEFAULT_MAX_PREFILL_TOKENS  # padded prompt tokens one step may prefill together
    # Where exit tests run below the last layer: "all" (every layer from min_exit_layer), "none"
    # (greedy exit at L only), "auto" (chosen from exit_profile; none without one), or explicit
    # 1-based layers.
    exit_layers: tuple[int, ...] | str = "all"
    exit_profile: ExitProfile | None = None
    max_exits: int = DEFAULT_MAX_EXITS  # at most this many intermediate exits with "auto"
    # Evaluation mode: run every layer for every token, recording the head's confidence and top
    # token at each layer (TokenStats.layer_confidences / layer_tokens); tokens exit only at L.
    probe_layers: bool = False
    # Bytes for weights, KV cache and activations (helios_contracts.memory_model): the cache holds
    # as many sequences as fit, at most max_batch_size. None: max_batch_size slots.
    memory_budget: int | None = None
    exit_gate: str = "none"  # helios_worker.gates.GATE_NAMES
    gate_threshold: float | None = None  # None: the gate's own default

    def __post_init__(self) -> None:
        if self.exit_gate not in GATE_NAMES:
            raise ValueError(f"exit_gate must be one of {', '.join(GATE_NAMES)}, got {self.exit_gate!r}")
        if self.max_batch_size < 1 or self.max_seq_len < 2:
            raise ValueError("max_batch_size must be >= 1 and max_seq_len >= 2")
        if not 0.0 < self.exit_threshold <= 1.0:
            raise ValueError("exit_threshold must be in (0, 1]")
        if isinstance(self.exit_layers, str):
            if self.exit_layers not in EXIT_LAYER_MODES:
                raise ValueError(f"exit_layers must be all, none, auto or a tuple of layers, got {self.exit_layers!r}")
        elif any(layer < 1 for layer in self.exit_layers):
            raise ValueError("exit layers are 1-based")
        if self.min_exit_layer < 1 or self.max_exits < 0:
            raise ValueError("min_exit_layer must be >= 1 and max_exits >= 0")


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


class Engine:
    def __init__(
        self,
        loaded: LoadedModel,
        config: EngineConfig | None = None,
        gate: ExitGate | None = None,
        exits: CalibratedExits | None = None,
    ) -> None:
        self.loaded = loaded
        self.config = config or EngineConfig()
        # Calibrated exits (helios calibrate): their translators feed the head, their gate decides.
        self.exits = exits
        self.gate = gate or exits or make_gate(self.config.exit_gate, self.config.gate_threshold)
        self._gate_pass = None if exits is None else {r.layer: r.gate_pass_rate for r in exits.manifest.per_layer}
        self.family = loaded.family
        self.model = loaded.model
        model_config = loaded.config
        max_seq_len = self.config.max_seq_len
        if window := getattr(model_config, "sliding_window", None):
            max_seq_len = min(max_seq_len, window)  # no window masking: stay inside it
        max_seq_len = min(max_seq_len, getattr(model_config, "max_position_embeddings", max_seq_len))
        self.max_seq_len = max_seq_len
        self.active_layers = loaded.num_layers_loaded
        self.memory_plan = self._plan(self.active_layers)  # MemoryModelError when not one sequence fits
        slots = self.memory_plan.max_num_seqs
        self.cache = SlotKVCache.for_model(loaded, slots, max_seq_len, self.active_layers)
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
        self._num_head_rows = 0  # rows that went through the LM head this step
        self._logprobs = LogprobCollector()  # this step's logprobs, for the requests that asked
        self._exit_layers_at: dict[tuple[int, int, int], list[int]] = {}  # (layers, rows, context) -> exits

    # --- public API ---------------------------------------------------------------------
    @property
    def num_slots(self) -> int:
        """Sequences the KV cache holds at once now."""
        return self.cache.num_slots

    @property
    def exit_layers(self) -> list[int]:
        """1-based layers where the exit test runs for one sequence; the last active layer always exits."""
        return self.exit_layers_for(rows=1, context_tokens=1)

    def exit_layers_for(self, rows: int, context_tokens: int) -> list[int]:
        """Exit layers for a step of ``rows`` sequences at about ``context_tokens`` of context.

        Only ``auto`` depends on them (``helios_worker.exit_plan``): at batch 1 an exit skips
        every later layer, at batch 16 only once all rows have left, and a long context makes
        each row's layers dearer. Plans are cached per (layers, rows, context rounded up to a
        power of two).
        """
        last = self.active_layers
        if self.config.probe_layers:
            return list(range(1, last + 1))
        if not self.config.early_exit:
            return [last]
        key = (last, rows, 1 << max(0, context_tokens - 1).bit_length())
        if key not in self._exit_layers_at:
            chosen = self._intermediate_exits(last, rows, key[2])
            self._exit_layers_at[key] = [*sorted({layer for layer in chosen if layer < last}), last]
        return self._exit_layers_at[key]

    def _intermediate_exits(self, last: int, rows: int, context_tokens: int):
        mode, config = self.config.exit_layers, self.config
        if not isinstance(mode, str):
            return mode
        if mode == "all":
            return range(config.min_exit_layer, last)
        if mode == "none":
            return ()
        # auto: the profile given, else the calibrated exits' own held-out histogram, else no exits
        if config.exit_profile is not None:
            histogram = config.exit_profile.exit_layer_histogram
        elif self.exits is not None:
            histogram = self.exits.manifest.exit_layer_histogram
        else:
            return ()
        costs = self.loaded.step_costs(context_tokens)
        return choose_exit_layers(
            histogram, last, costs, rows, config.max_exits, config.min_exit_layer, gate_pass=self._gate_pass
        )

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
        self._num_head_rows = 0
        self._logprobs.clear()  # a failed step's leftovers
        if admitted:
            self._prefill(admitted)
        num_layer_evals = self._decode(decoding) if decoding else 0
        self._logprobs.flush()
        self.running = [s for s in decoding + admitted if not s.output.finished]
        stats = StepStats(
            num_prefills=len(admitted),
            num_decodes=len(decoding),
            num_waiting=len(self.waiting),
            num_running=len(self.running),
            num_layer_evals=num_layer_evals,
            num_head_rows=self._num_head_rows,
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
            positions = torch.arange(seq.num_cached, device=self.loaded.device)[None]  # [1, seq]
            slots = torch.tensor([seq.slot], device=self.loaded.device)
            hidden = self.exit_hidden[seq.slot, : seq.num_cached][None]  # [1, seq, hidden]
            rotary = self.family.rotary(self.model, hidden, positions)
            for index in range(old, num_layers):
                self._write_projected_kv(index, hidden, slots, positions, rotary)

    @torch.inference_mode()
    def change_layers(self, num_layers: int) -> int:
        """Load or drop layers to serve ``num_layers``, within the memory budget; return bytes read.

        The cache is resized to what the budget holds at the new depth: growing first gives
        up slots (moving running sequences into the slots that stay), then loads the layers;
        shrinking frees the layers first, then gives the freed bytes back as slots. When
        fewer sequences would fit than are running, LayerChangeRefused says so and nothing
        changes.
        """
        total = self.loaded.num_layers_total
        if not 1 <= num_layers <= total:
            raise ValueError(f"layers must be between 1 and {total}, got {num_layers}")
        try:
            plan = self._plan(num_layers)
        except MemoryModelError as error:
            raise LayerChangeRefused(str(error)) from None
        if plan.max_num_seqs < len(self.running):
            raise LayerChangeRefused(
                f"{num_layers} layers leave room for {plan.max_num_seqs} sequences in the memory budget of "
                f"{plan.budget_bytes} bytes, and {len(self.running)} are running; try again when fewer are"
            )
        bytes_read = 0
        if num_layers > self.loaded.num_layers_loaded:
            self._resize_slots(plan.max_num_seqs)
            bytes_read = resize_layers(self.loaded, num_layers)
            self.set_active_layers(num_layers)
        else:
            self.set_active_layers(num_layers)
            resize_layers(self.loaded, num_layers)
            self._resize_slots(plan.max_num_seqs)
        self.memory_plan = plan
        return bytes_read

    def _plan(self, num_layers: int):
        return plan_memory(
            self.loaded.shape,
            num_layers,
            self.config.memory_budget,
            itemsize=self.loaded.dtype.itemsize,
            max_seq_len=self.max_seq_len,
            max_batch_size=self.config.max_batch_size,
            max_prefill_tokens=max(self.config.max_prefill_tokens, self.max_seq_len),
        )

    def _resize_slots(self, num_slots: int) -> None:
        """Hold ``num_slots`` sequences; running ones in slots that go away move to free ones first."""
        if num_slots == self.cache.num_slots:
            return
        free = [slot for slot in self.free_slots if slot < num_slots]
        for seq in self.running:
            if seq.slot >= num_slots:
                target = free.pop(0)
                self.cache.move_slot(seq.slot, target)
                self.exit_hidden[target] = self.exit_hidden[seq.slot]
                seq.slot = target
        used = {seq.slot for seq in self.running}
        self.cache.resize_slots(num_slots)
        old = self.exit_hidden
        self.exit_hidden = old.new_zeros(num_slots, *old.shape[1:])
        keep = min(num_slots, old.shape[0])
        self.exit_hidden[:keep] = old[:keep]
        del old
        self.free_slots = [slot for slot in range(num_slots) if slot not in used]

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
        before it ever reads them (decode writes position p, then attends to 0..p). Prompt
        logprobs, where asked for, come from the last layer's states; a request for no new
        tokens ends here.
        """
        device = self.loaded.device
        lengths = [len(s.output.prompt_token_ids) for s in seqs]
        slots = [s.slot for s in seqs]  # kept: a request finishing on its first token frees its slot
        width = max(lengths)
        input_ids = torch.zeros(len(seqs), width, dtype=torch.long, device=device)  # [rows, seq]
        for row, seq in enumerate(seqs):
            input_ids[row, : lengths[row]] = torch.tensor(seq.output.prompt_token_ids, device=device)
        positions = torch.arange(width, device=device).expand(len(seqs), width)  # [rows, seq]
        hidden = self.family.embed(self.model, input_ids, positions)  # [rows, seq, hidden]
        batch = prepare_prefill(slots, positions, hidden.dtype, self._rotary_for(hidden))
        last = torch.tensor(lengths, device=device) - 1  # [rows]: each prompt's last position
        exit_layers = set(self.exit_layers_for(len(seqs), width))
        undecided = [row for row, seq in enumerate(seqs) if seq.params.max_new_tokens > 0]  # no first token yet
        for index, layer in enumerate(self.loaded.layers[: self.active_layers]):
            before = hidden
            hidden = self.family.run_layer(layer, hidden, batch, self.cache)
            if undecided and index + 1 in exit_layers:
                rows = torch.tensor(undecided, device=device)
                state_in = before[rows, last[rows]][:, None]  # [undecided, 1, hidden]
                state_out = hidden[rows, last[rows]][:, None]
                leaving = set(self._exit_test(seqs, undecided, state_in, state_out, index + 1))
                undecided = [row for i, row in enumerate(undecided) if i not in leaving]
        for row, seq in enumerate(seqs):
            if seq.params.prompt_logprobs is not None:
                self._prompt_logprobs(seq, hidden[row, : lengths[row] - 1])
            if seq.params.max_new_tokens == 0:
                self._finish(seq, "length")
            if not seq.output.finished:
                self.exit_hidden[slots[row], : lengths[row]] = hidden[row, : lengths[row]]
            seq.num_cached = lengths[row]

    def _prompt_logprobs(self, seq: Sequence, states: torch.Tensor) -> None:
        """Logprobs of prompt tokens 2.. from the last layer's ``states`` [prompt - 1, hidden]."""
        prompt, num_top = seq.output.prompt_token_ids, seq.params.prompt_logprobs
        into: list[TokenLogprobs | None] = [None]  # the first prompt token has no context to be predicted from
        seq.output.prompt_logprobs = into
        for start in range(0, states.shape[0], PROMPT_LOGPROB_ROWS):
            chunk = states[start : start + PROMPT_LOGPROB_ROWS]
            if self.exits is not None:  # the head reads what the last layer's exit reads
                chunk = self.exits.translate(self.active_layers, chunk)
            targets = [LogprobTarget(into, token, num_top) for token in prompt[start + 1 : start + 1 + len(chunk)]]
            self._logprobs.add(self.family.exit_head(self.model, chunk), targets)

    def _decode(self, seqs: list[Sequence]) -> int:
        """One token for each of ``seqs``; returns the number of decoder layers computed (rows x layers)."""
        device = self.loaded.device
        seqs = sorted(seqs, key=lambda seq: seq.slot)  # rows in slot order: runs of slots are runs of rows
        input_ids = torch.tensor([s.last_token for s in seqs], device=device)[:, None]  # [rows, 1]
        positions = [s.num_cached for s in seqs]
        hidden = self.family.embed(self.model, input_ids, torch.tensor(positions, device=device)[:, None])
        batch = full = prepare_decode([s.slot for s in seqs], positions, device, hidden.dtype, self._rotary_for(hidden))
        exit_layers = set(self.exit_layers_for(len(seqs), batch.context_len))
        exit_at = [self.active_layers] * len(seqs)
        exit_state = torch.empty_like(hidden)  # [rows, 1, hidden]: each row's state when it left
        running = list(range(len(seqs)))  # rows (indices into seqs) still going
        layer_evals = 0
        for index, layer in enumerate(self.loaded.layers[: self.active_layers]):
            before = hidden
            hidden = self.family.run_layer(layer, hidden, batch, self.cache)
            layer_evals += hidden.shape[0]
            if index + 1 not in exit_layers:
                continue
            leaving = self._exit_test(seqs, running, before, hidden, index + 1)
            if not leaving:
                continue
            for i in leaving:
                exit_at[running[i]] = index + 1
            exit_state[torch.tensor([running[i] for i in leaving], device=device)] = hidden[
                torch.tensor(leaving, device=device)
            ]
            gone = set(leaving)
            keep = [i for i in range(len(running)) if i not in gone]
            if not keep:
                break
            running = [running[i] for i in keep]
            hidden = hidden[torch.tensor(keep, device=device)]
            batch = batch.select(keep)
        self._fill_skipped_kv(full, exit_at, exit_state)
        self.exit_hidden[full.slots, full.positions[:, 0]] = exit_state[:, 0]
        for seq in seqs:
            seq.num_cached += 1
        return layer_evals

    def _rotary_for(self, hidden: torch.Tensor):
        return lambda positions: self.family.rotary(self.model, hidden, positions)

    def _exit_test(
        self, seqs: list[Sequence], running: list[int], before: torch.Tensor, after: torch.Tensor, layer: int
    ) -> list[int]:
        """Emit tokens for the rows that exit at ``layer``; return their indices into ``running``.

        ``before``/``after`` are [rows, 1, hidden]: the layer's input and output for the rows in
        ``running`` (indices into ``seqs``). Only rows the gate passes get the head; at the last
        layer every row does (greedy exit).
        """
        if self.config.probe_layers:
            return self._probe_test(seqs, running, after, layer)
        is_last = layer == self.active_layers
        states = after[:, -1]  # [rows, hidden]
        if self.exits is not None:  # calibrated exits: gate and head both read the translated state
            states = self.exits.translate(layer, states)
            passed = None if is_last else self.exits.passes_translated(layer, states)
        else:
            passed = None if is_last else self.gate.passes(layer, before[:, -1], states)  # [rows] bool or None
        if passed is None:  # every row gets the head
            candidates = list(range(len(running)))
        else:
            candidates = passed.nonzero()[:, 0].tolist()
            if not candidates:
                return []
            if len(candidates) < len(running):
                states = states[passed]
        self._num_head_rows += len(candidates)
        logits = self.family.exit_head(self.model, states)  # [candidates, vocab]
        confidence, greedy = (t.tolist() for t in logits.float().softmax(-1).max(-1))
        threshold = self.config.exit_threshold
        if self.exits is not None:  # calibrated per layer for a precision target
            threshold = self.exits.confidence_threshold(layer, threshold)
        leaving, asked = [], []  # asked: (candidate index, where the logprobs go) for rows that want them
        for j, row in enumerate(candidates):
            if not is_last and confidence[j] < threshold:
                continue
            seq = seqs[running[row]]
            token = greedy[j] if seq.params.is_greedy else sample(logits[j], seq.params, seq.generator)
            if seq.params.logprobs is not None:
                asked.append((j, LogprobTarget(seq.output.logprobs, token, seq.params.logprobs)))
            self._emit(seq, token, confidence[j], layer)
            leaving.append(row)
        if asked:  # from the distribution the token was just chosen from: this exit layer's
            rows = torch.tensor([j for j, _ in asked], device=logits.device)
            self._logprobs.add(logits[rows], [target for _, target in asked])
        return leaving

    def _probe_test(self, seqs: list[Sequence], running: list[int], hidden: torch.Tensor, layer: int) -> list[int]:
        """Evaluation mode: keep every layer's state; at the last layer apply the head to all at once.

        One [layers x rows] head matmul and one host transfer beat a head, a softmax and a sync
        per layer. No row leaves before the last layer, so ``running`` is the same at every layer.
        """
        self._probe_states.append(hidden[:, -1])
        if layer < self.active_layers:
            return []
        states, self._probe_states = torch.stack(self._probe_states), []  # [layers, rows, hidden]
        if self.exits is not None:  # the head reads translated states, as when serving
            states = torch.stack([self.exits.translate(index + 1, state) for index, state in enumerate(states)])
        logits = self.family.exit_head(self.model, states)  # [layers, rows, vocab]
        self._num_head_rows += states.shape[0] * states.shape[1]
        confidence, top = logits.float().softmax(-1).max(-1)  # [layers, rows]
        if self.exits is not None:
            confidence = self._calibrated_exit_indicators(states, confidence)
        for column, row in enumerate(running):
            seq = seqs[row]
            seq.probe = list(zip(confidence[:, column].tolist(), top[:, column].tolist(), strict=True))
            greedy = int(top[-1, column])
            token = greedy if seq.params.is_greedy else sample(logits[-1, column], seq.params, seq.generator)
            if seq.params.logprobs is not None:
                target = LogprobTarget(seq.output.logprobs, token, seq.params.logprobs)
                self._logprobs.add(logits[-1, column][None], [target])
            self._emit(seq, token, float(confidence[-1, column]), layer)
        return list(range(len(running)))

    def _calibrated_exit_indicators(self, states: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
        """Probe mode with calibrated exits: 1.0 where a token would exit (gate and the layer's own
        confidence threshold), else 0.0; the last layer keeps its confidence. Any exit threshold in
        (0, 1] then reads these as the calibrated exit rule (``evaluation.summarize``)."""
        indicators = torch.zeros_like(confidence)
        for index in range(confidence.shape[0] - 1):
            layer = index + 1
            if self.exits.has(layer):
                passed = self.exits.passes_translated(layer, states[index])
                threshold = self.exits.confidence_threshold(layer, self.config.exit_threshold)
                indicators[index] = (passed & (confidence[index] >= threshold)).float()
        indicators[-1] = confidence[-1]
        return indicators

    def _fill_skipped_kv(self, batch: DecodeBatch, exit_at: list[int], exit_state: torch.Tensor) -> None:
        """Write K/V for the layers each row skipped, projected from its exit hidden state."""
        device = exit_state.device
        for index in range(min(exit_at), self.active_layers):
            rows = [row for row, layer in enumerate(exit_at) if layer <= index]  # exited before layer index+1
            index_rows = torch.tensor(rows, device=device)
            rotary = None if batch.rotary is None else tuple(t[index_rows] for t in batch.rotary)
            self._write_projected_kv(
                index, exit_state[index_rows], batch.slots[index_rows], batch.positions[index_rows], rotary
            )

    def _write_projected_kv(self, index: int, hidden, slots, positions, rotary) -> None:
        """Cache, at layer ``index``, the K/V it would compute for input ``hidden`` [rows, seq, hidden]."""
        key, value = self.family.project_kv(self.loaded.layers[index], hidden, rotary)
        self.cache.write(index, slots, positions, key, value)

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
