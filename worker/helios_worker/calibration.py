"""Self-distillation of exits for a stock model: the model's own last layer is the teacher.

For each exit layer l, from the frozen model's hidden states on plain text:
- a translator h -> h + h W + b (tuned lens), fitted in closed form by ridge regression
  towards the last layer's state, so the shared head reads a state like the one it was
  trained on;
- a gate: logistic regression on the RMS-normalised translated state, predicting "the head's
  top-1 here equals the last layer's top-1", which decides who gets the head at all;
- the translated head's confidence threshold at which exits reach ``precision_target`` on a
  validation split, and the gate threshold that keeps GATE_RECALL of those exits.
Everything is then measured on held-out text the fit never saw (``ExitManifest.per_layer``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import torch

from helios_worker.exit_sidecar import (
    CalibratedExits,
    ExitManifest,
    LayerReport,
    gate_probability,
    rms_normalise,
    weights_fingerprint,
)
from helios_worker.kv_cache import SlotKVCache
from helios_worker.loading import LoadedModel
from helios_worker.scoring import forward

Pair = tuple[torch.Tensor, torch.Tensor]
RIDGE = 1e-2  # ridge strength, relative to the mean feature variance
GATE_L2 = 1e-3
GATE_STEPS = 200
MAX_AUTO_LAYERS = 12
NEVER = 1.01  # a threshold no probability reaches: the layer is not used
GATE_RECALL = 0.9  # share of the tokens that would exit that the gate must still send to the head


@dataclass
class States:
    """Hidden states after chosen layers, the last layer's state and its top-1, for a run of tokens."""

    by_layer: dict[int, torch.Tensor]  # layer -> [tokens, hidden] float32
    final: torch.Tensor  # [tokens, hidden] last layer, before the final norm
    final_top: torch.Tensor  # [tokens]


def auto_layers(num_layers: int) -> list[int]:
    """Up to MAX_AUTO_LAYERS layers spread over the upper three quarters (early layers rarely agree)."""
    first = max(1, num_layers // 4)
    candidates = list(range(first, num_layers))
    if len(candidates) <= MAX_AUTO_LAYERS:
        return candidates
    step = len(candidates) / MAX_AUTO_LAYERS
    return sorted({candidates[int(i * step)] for i in range(MAX_AUTO_LAYERS)})


@torch.inference_mode()
def collect_states(
    loaded: LoadedModel,
    token_ids: Sequence[int],
    layers: Sequence[int],
    window: int = 256,
    progress: Callable[[int], None] | None = None,
) -> States:
    """Run the model over ``token_ids`` in causal windows and keep the states after ``layers``."""
    wanted = set(layers)
    by_layer: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    finals, tops = [], []
    cache = SlotKVCache.for_model(loaded, num_slots=1, max_seq_len=window)

    def keep(layer: int, states: torch.Tensor) -> None:
        if layer in wanted:
            by_layer[layer].append(states.float().cpu())

    for start in range(0, len(token_ids) - 1, window):
        chunk = list(token_ids[start : start + window])
        final = forward(loaded, chunk, cache, on_layer=keep)
        finals.append(final.float().cpu())
        tops.append(loaded.family.exit_head(loaded.model, final).argmax(-1).cpu())
        if progress is not None:
            progress(len(chunk))
    return States({layer: torch.cat(chunks) for layer, chunks in by_layer.items()}, torch.cat(finals), torch.cat(tops))


def fit_translator(
    states: torch.Tensor, final: torch.Tensor, ridge: float = RIDGE
) -> tuple[torch.Tensor, torch.Tensor]:
    """W, b minimising |final - (h + h W + b)|^2 + lambda |W|^2 (closed form, float64)."""
    x = states.double()
    mean_x, mean_y = x.mean(0), (final.double() - x).mean(0)
    xc, yc = x - mean_x, final.double() - x - mean_y
    gram = xc.T @ xc
    lam = ridge * gram.diagonal().mean()
    weight = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ yc)
    bias = mean_y - mean_x @ weight
    return weight.float(), bias.float()


def fit_gate(
    features: torch.Tensor, labels: torch.Tensor, steps: int = GATE_STEPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression (L-BFGS, L2) on RMS-normalised translated states, as ``gate_probability`` reads them.

    Fitted on standardised features; the standardisation is folded back into (w, b).
    """
    x = rms_normalise(features.float()).clone()  # a normal tensor: states may come from inference mode
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    weight = torch.zeros(z.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=True)
    target = labels.float()
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = z @ weight + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target) + GATE_L2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    w = (weight / std).detach()
    return w, (bias - (mean * w).sum()).detach()


def choose_threshold(probabilities: torch.Tensor, correct: torch.Tensor, precision_target: float) -> float:
    """The lowest probability at which the passing tokens' precision is >= ``precision_target`` at one
    sigma (Wilson lower bound: a few lucky tokens do not open a layer); NEVER if none is."""
    order = torch.argsort(probabilities, descending=True)
    hits = correct[order].double().cumsum(0)
    counts = torch.arange(1, len(order) + 1, dtype=torch.float64)
    share, z = hits / counts, 1.0
    lower = (share + z * z / (2 * counts) - z * torch.sqrt(share * (1 - share) / counts + z * z / (4 * counts**2))) / (
        1 + z * z / counts
    )
    precise = (lower >= precision_target).nonzero()
    if precise.numel() == 0:
        return NEVER
    last = int(precise[-1])  # the largest set of top-probability tokens that is still precise enough
    return float(probabilities[order[last]])


def calibrate(
    loaded: LoadedModel,
    train_ids: Sequence[int],
    heldout_ids: Sequence[int],
    layers: Sequence[int],
    precision_target: float = 0.95,
    progress: Callable[[int], None] | None = None,
) -> CalibratedExits:
    """Fit translators and gates at ``layers`` on ``train_ids``; measure them on ``heldout_ids``."""
    if loaded.num_layers_loaded != loaded.num_layers_total:
        raise ValueError("calibration needs every layer loaded: the last layer is the teacher")
    layers = sorted({layer for layer in layers if 1 <= layer < loaded.num_layers_total})
    if not layers:
        raise ValueError(f"no exit layer to calibrate below the last ({loaded.num_layers_total})")
    train = collect_states(loaded, train_ids, layers, progress=progress)
    heldout = collect_states(loaded, heldout_ids, layers, progress=progress)
    head = _confidence_and_top(loaded)
    split = int(0.8 * len(train.final))  # the gate's threshold is chosen on the last fifth
    tensors: dict[str, torch.Tensor] = {}
    reports: list[LayerReport] = []
    first_exit = torch.full((len(heldout.final),), loaded.num_layers_total)
    for layer in layers:
        weight, bias = fit_translator(train.by_layer[layer][:split], train.final[:split])
        translated = train.by_layer[layer] + train.by_layer[layer] @ weight + bias
        confidence, top = head(translated)
        correct = top == train.final_top
        gate_w, gate_b = fit_gate(translated[:split], correct[:split])
        # on the validation fifth: the confidence that reaches the precision target, then the
        # gate threshold that still sends GATE_RECALL of those confident tokens to the head
        confidence_threshold = choose_threshold(confidence[split:], correct[split:], precision_target)
        gate = gate_probability(gate_w, gate_b, translated[split:])
        would_exit = gate[confidence[split:] >= confidence_threshold]
        gate_threshold = float(torch.quantile(would_exit, 1 - GATE_RECALL)) if would_exit.numel() else NEVER
        raw = heldout.by_layer[layer]
        held = raw + raw @ weight + bias
        held_confidence, held_top = head(held)
        held_correct = held_top == heldout.final_top
        gated = gate_probability(gate_w, gate_b, held) >= gate_threshold
        passed = gated & (held_confidence >= confidence_threshold)
        first_exit = torch.where(passed & (first_exit == loaded.num_layers_total), layer, first_exit)
        reports.append(
            LayerReport(
                layer=layer,
                agreement_raw=float((head(raw)[1] == heldout.final_top).float().mean()),
                agreement_translated=float(held_correct.float().mean()),
                gate_threshold=gate_threshold,
                confidence_threshold=confidence_threshold,
                gate_pass_rate=float(gated.float().mean()),
                pass_rate=float(passed.float().mean()),
                precision=float(held_correct[passed].float().mean()) if passed.any() else 0.0,
            )
        )
        tensors |= {
            f"layer.{layer}.translator.weight": weight,
            f"layer.{layer}.translator.bias": bias,
            f"layer.{layer}.gate.weight": gate_w,
            f"layer.{layer}.gate.bias": gate_b,
        }
    histogram = torch.bincount(first_exit - 1, minlength=loaded.num_layers_total).tolist()
    manifest = ExitManifest(
        model_ref=loaded.ref.ref,
        weights_fingerprint=weights_fingerprint(sorted(set(loaded.checkpoint.files.values()))),
        num_layers_total=loaded.num_layers_total,
        hidden_size=loaded.config.hidden_size,
        layers=layers,
        precision_target=precision_target,
        num_train_tokens=len(train.final),
        num_heldout_tokens=len(heldout.final),
        per_layer=reports,
        exit_layer_histogram=histogram,
        created_at=datetime.now(UTC),
    )
    return CalibratedExits(manifest, tensors)


def _confidence_and_top(loaded: LoadedModel, chunk: int = 1024) -> Callable[[torch.Tensor], Pair]:
    """The shared final norm + LM head's (max softmax, top-1) for CPU states, in chunks (20k tokens of
    logits would not fit)."""
    family, model = loaded.family, loaded.model

    def head(states: torch.Tensor) -> Pair:
        confidences, tops = [], []
        for start in range(0, len(states), chunk):
            part = states[start : start + chunk].to(device=loaded.device, dtype=loaded.dtype)
            confidence, top = family.exit_head(model, part).float().softmax(-1).max(-1)
            confidences.append(confidence.cpu())
            tops.append(top.cpu())
        return torch.cat(confidences), torch.cat(tops)

    return head
