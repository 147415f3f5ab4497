"""Which layers get an exit test: chosen from a measured exit profile, never guessed.

An exit test costs a head (final norm + LM head: on SmolLM2 as much as ~7-11 decoder
layers), so testing everywhere makes early exit slower than not exiting. Given the
evaluation's histogram of each token's *first confident layer*, ``choose_exit_layers`` picks
at most K layers where the layers a token saves pay for the heads every token reaching that
layer pays. Without a profile there are no intermediate exits (greedy exit at L only): a
stock model's intermediate heads emit garbage (SmolLM2 from layer 1 emits whitespace).

The profile is an EvaluationReport (``helios evaluate --json``): only its model,
threshold, depth and ``exit_layer_histogram`` are read. Pure and torch-free: the operator's
policy can use the same choice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

PROFILE_FILE = "helios_exit_profile.json"  # looked for in the model directory
DEFAULT_MAX_EXITS = 4
EXIT_LAYER_MODES = ("auto", "none", "all")
# An exit must save at least this share of a step's predicted work: the model leaves out the
# bookkeeping of rows leaving (index selects, state copies), which costs a few per cent.
MIN_SAVING = 0.05


class ExitProfileError(ValueError):
    """A profile that cannot be read or does not fit the model."""


class ExitProfile(BaseModel):
    """The part of an EvaluationReport that places exit tests."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: str = ""
    exit_threshold: float = Field(gt=0.0, le=1.0)
    num_layers_total: int = Field(ge=1)
    exit_layer_histogram: list[int] = Field(
        description="Index l-1: tokens whose first confident layer is l (never-confident tokens count at N)."
    )

    @property
    def num_tokens(self) -> int:
        return sum(self.exit_layer_histogram)


def read_profile(path: Path) -> ExitProfile:
    """An EvaluationReport JSON, or a list holding exactly one (what ``helios evaluate --json`` prints)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExitProfileError(f"cannot read exit profile {path}: {error}") from None
    if isinstance(data, list):
        if len(data) != 1:
            raise ExitProfileError(f"exit profile {path} holds {len(data)} reports; give a file with one")
        data = data[0]
    try:
        profile = ExitProfile.model_validate(data)
    except ValidationError as error:
        raise ExitProfileError(f"exit profile {path} is not an evaluation report: {error.errors()[0]['msg']}") from None
    if len(profile.exit_layer_histogram) != profile.num_layers_total:
        raise ExitProfileError(f"exit profile {path}: histogram has {len(profile.exit_layer_histogram)} layers")
    return profile


@dataclass(frozen=True)
class StepCosts:
    """What a decode step pays, in units of one decoder layer's weight reads (decode is memory-bound).

    A layer, a head or a K/V fill reads its weights once for the whole batch (``1``, ``head``,
    ``fill``); on top, each row a layer runs for reads its context's K/V (``row``) and each
    row a head runs for writes a vocabulary of logits (``head_row``). Hence the batch effect:
    a layer's weights are read as long as *any* row still runs it, so at batch 16 an exit
    saves layers only when every row has left, while at batch 1 it saves them all.
    """

    head: float
    head_row: float = 0.0
    row: float = 0.0
    fill: float = 0.0


def exit_distribution(histogram: Sequence[int], num_layers: int, exits: Sequence[int]) -> dict[int, float]:
    """P(a token leaves at tested layer t), tests at ``exits`` (below ``num_layers``) and at ``num_layers``.

    A token whose first confident layer is f leaves at the first tested layer >= f (at
    ``num_layers`` if none, or if f is beyond it). Assumes a token stays confident once it is.
    """
    tested = [*sorted({e for e in exits if e < num_layers}), num_layers]
    total = sum(histogram)
    shares = dict.fromkeys(tested, 0.0)
    if total == 0:
        shares[num_layers] = 1.0
        return shares
    for first, count in enumerate(histogram, 1):
        if count:
            shares[next(t for t in tested if t >= min(first, num_layers))] += count / total
    return shares


def expected_cost(
    histogram: Sequence[int],
    num_layers: int,
    exits: Sequence[int],
    costs: StepCosts,
    rows: int = 1,
    gate_pass: Mapping[int, float] | None = None,
) -> float:
    """Expected work per token of a decode step over ``rows`` independent rows (see ``StepCosts``).

    ``gate_pass``: with a trained gate, the share of tokens it sends to the head at each layer
    (measured at calibration); only those rows pay the head at an intermediate test, and its
    weights are read when at least one of them does.
    """
    shares = exit_distribution(histogram, num_layers, exits)
    work, left = 0.0, 0.0  # left: P(a row has exited before the current layer)
    for layer in range(1, num_layers + 1):
        alive = 1.0 - left
        anyone_alive = 1.0 - left**rows
        work += anyone_alive + rows * alive * costs.row
        if layer in shares and gate_pass is not None and layer < num_layers:
            share = min(alive, gate_pass.get(layer, 0.0))
            work += costs.head * (1.0 - (1.0 - share) ** rows) + rows * share * costs.head_row
        elif layer in shares:
            work += costs.head * anyone_alive + rows * alive * costs.head_row
        if left > 0:  # rows that left earlier get this layer's K/V projected
            work += costs.fill * (1.0 - alive**rows)
        left += shares.get(layer, 0.0)
    return work / rows


def choose_exit_layers(
    histogram: Sequence[int],
    num_layers: int,
    costs: StepCosts,
    rows: int = 1,
    max_exits: int = DEFAULT_MAX_EXITS,
    min_exit_layer: int = 1,
    gate_pass: Mapping[int, float] | None = None,
) -> tuple[int, ...]:
    """Up to ``max_exits`` layers in [min_exit_layer, num_layers) that lower ``expected_cost`` the most.

    Greedy: add the layer that saves the most work while it saves at least ``MIN_SAVING`` of
    the current cost. An empty histogram (no profile tokens) gives no exits.
    """
    if num_layers < 1 or max_exits < 0 or rows < 1 or costs.head < 0:
        raise ValueError("num_layers >= 1, rows >= 1, max_exits >= 0 and a head cost >= 0 are required")
    chosen: list[int] = []
    cost = expected_cost(histogram, num_layers, chosen, costs, rows, gate_pass)
    candidates = [layer for layer in range(max(1, min_exit_layer), min(num_layers, len(histogram) + 1))]
    if gate_pass is not None:  # a trained gate lets tokens exit only where it was calibrated
        candidates = [layer for layer in candidates if layer in gate_pass]
    while len(chosen) < max_exits:
        trials = [
            (expected_cost(histogram, num_layers, [*chosen, c], costs, rows, gate_pass), c)
            for c in candidates
            if c not in chosen
        ]
        if not trials:
            break
        best_cost, best = min(trials)
        if best_cost > cost * (1.0 - MIN_SAVING):
            break
        chosen.append(best)
        cost = best_cost
    return tuple(sorted(chosen))


def parse_histogram(text: str) -> list[int]:
    """``103,49,291`` -> counts (the form the operator passes in ``HELIOS_EXIT_HISTOGRAM``)."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"an exit histogram is comma-separated token counts, one per layer (got {text!r})") from None
    if any(count < 0 for count in counts):
        raise ValueError(f"exit histogram counts must be >= 0 (got {text!r})")
    return counts


def find_profile(
    model_dir: Path, num_layers_total: int, path: str | None = None, histogram: str | None = None, threshold=None
) -> tuple[ExitProfile | None, str]:
    """The exit profile to serve with, and where it came from (for the log).

    Order: an explicit ``histogram`` (from the operator's evaluation), an explicit ``path``, then
    ``PROFILE_FILE`` in the model directory. A profile for another depth is refused.
    """
    if histogram is not None:
        profile = ExitProfile(
            exit_threshold=threshold or 1.0,
            num_layers_total=num_layers_total,
            exit_layer_histogram=parse_histogram(histogram),
        )
        source = "the exit histogram given"
    elif path is not None:
        profile, source = read_profile(Path(path)), path
    elif (model_dir / PROFILE_FILE).exists():
        profile, source = read_profile(model_dir / PROFILE_FILE), str(model_dir / PROFILE_FILE)
    else:
        return None, "no exit profile"
    if len(profile.exit_layer_histogram) != num_layers_total:
        raise ExitProfileError(
            f"exit profile ({source}) has {len(profile.exit_layer_histogram)} layers; the model has {num_layers_total}"
        )
    return profile, f"{source} ({profile.num_tokens} tokens)"


def describe_exits(mode: str | tuple[int, ...], profile: ExitProfile | None, source: str) -> str:
    """One log line saying where tokens may exit, so that a user sees why (or why not)."""
    if mode == "auto":
        if profile is None:
            return (
                "no exit profile: greedy exit at the last loaded layer only (give --exit-profile with a "
                "'helios evaluate --json' report, or --exit-layers)"
            )
        return f"exit layers chosen per batch shape from {source}"
    if mode == "none":
        return "no intermediate exits: greedy exit at the last loaded layer only"
    if mode == "all":
        return "exit tests at every layer from --min-exit-layer"
    return f"exit tests at layers {','.join(map(str, mode))}"


def parse_exit_layers(text: str) -> str | tuple[int, ...]:
    """``auto`` | ``none`` | ``all`` | a comma-separated list of 1-based layers."""
    value = text.strip().lower()
    if value in EXIT_LAYER_MODES:
        return value
    try:
        layers = tuple(sorted({int(part) for part in value.split(",") if part.strip()}))
    except ValueError:
        raise ValueError(f"exit layers must be auto, none, all or a list like 4,8 (got {text!r})") from None
    if not layers or layers[0] < 1:
        raise ValueError(f"exit layers are 1-based (got {text!r})")
    return layers
