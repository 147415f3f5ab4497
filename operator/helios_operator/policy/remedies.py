"""Step 5 of the HELIOS loop: when accuracy slips, add layers or switch model, whichever costs less.

Live traffic can be harder than the evaluation prompts, so the reports' curves are first
corrected by what the windows show: breach rates are scaled by observed / reported rate at
the current L, and disagreement (1 - agreement) by the shadow check's observed / reported
disagreement. Scales never go below 1 (a remedy never assumes traffic got easier) and keep
full depth at agreement 1, which it is by definition. An option *settles* the window when
its corrected agreement meets the floor and its corrected breaches per window are at most
``targetBreachFraction`` x ``maxBreaches``, a margin under the storm limit (hysteresis).
Both are judged at 95% confidence, on the report's Wilson bounds (agreement lower bound,
breach rate upper bound), exactly as ``select`` judges them: a setting select picked
settles its own evaluation data, so the loop never undoes a selection on the data it was
made on.

Cost is the predicted time to serve the tokens until the next reassessment
(``reassessEveryRequests`` x ``maxNewTokens``), including the pause to read new weights at
``loadBandwidth``: the added layers' bytes for more layers, the whole new model's for a
switch. The cheaper settling option wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from helios_operator.policy.decision import Decision
from helios_operator.policy.predict import Prediction, predict
from helios_operator.policy.select import best_option, breach_budget, describe, options
from helios_operator.policy.state import AdaptState
from helios_operator.spec import HeliosDeploymentSpec


@dataclass(frozen=True, slots=True)
class Corrections:
    breach_scale: float
    disagreement_scale: float


def _scale(observed: float, reported: float, num_tokens: int) -> float:
    # A rate measured as 0 over n tokens is below 1/n, not 0: keeps the scale finite.
    return max(1.0, observed / max(reported, 1 / max(num_tokens, 1)))


def corrections(state: AdaptState, spec: HeliosDeploymentSpec) -> Corrections:
    """How much harder live traffic is than the evaluation, from the current windows."""
    report = state.report
    breach_scale = _scale(state.breaches.breach_rate, report.breach_rate_by_layer[state.layers - 1], report.num_tokens)
    disagreement_scale = 1.0
    observed = state.shadow.agreement
    if state.shadow.is_full and observed is not None:
        reported = 1 - report.greedy_agreement_by_layer[state.layers - 1]
        disagreement_scale = _scale(1 - observed, reported, report.num_tokens)
    return Corrections(breach_scale, disagreement_scale)


def corrected_agreement(prediction: Prediction, fix: Corrections) -> float:
    """The agreement's 95% lower bound, with disagreement scaled as live traffic shows it."""
    return max(0.0, 1 - (1 - prediction.agreement_lower_bound) * fix.disagreement_scale)


def breaches_per_window(prediction: Prediction, fix: Corrections, spec: HeliosDeploymentSpec) -> float:
    """Breaches per window at the breach rate's 95% upper bound, scaled as live traffic shows it."""
    return min(1.0, prediction.breach_rate_upper_bound * fix.breach_scale) * spec.monitoring.breach_window_tokens


def breach_target(spec: HeliosDeploymentSpec) -> float:
    return breach_budget(spec)  # the band select stays in too


def settles(prediction: Prediction, fix: Corrections, spec: HeliosDeploymentSpec) -> bool:
    return corrected_agreement(prediction, fix) >= spec.accuracy.min_agreement and breaches_per_window(
        prediction, fix, spec
    ) <= breach_target(spec)


def horizon_tokens(spec: HeliosDeploymentSpec) -> int:
    return spec.evaluation.reassess_every_requests * spec.evaluation.max_new_tokens


def cost_seconds(prediction: Prediction, bytes_to_load: int, spec: HeliosDeploymentSpec) -> float:
    """Load pause plus the time to serve the tokens until the next reassessment."""
    serving = horizon_tokens(spec) / prediction.tokens_per_second if prediction.tokens_per_second > 0 else 0.0
    return bytes_to_load / spec.monitoring.load_bandwidth + serving


def _more_layers(state: AdaptState, spec: HeliosDeploymentSpec, fix: Corrections) -> Prediction | None:
    """Fewest extra layers of the current model that settle the window, if any do."""
    for layers in range(state.layers + 1, state.report.num_layers_total + 1):
        prediction = predict(state.report, layers, spec, state.budget)
        if prediction.max_batch_size != 0 and settles(prediction, fix, spec):
            return prediction
    return None


def _other_model(state: AdaptState, spec: HeliosDeploymentSpec, fix: Corrections) -> Prediction | None:
    others = [report for name, report in state.reports.items() if name != state.model]
    settling = [p for p in options(others, spec, state.budget) if settles(p, fix, spec)]
    return best_option(settling, spec.objective) if settling else None


def _deepest_that_fits(state: AdaptState, spec: HeliosDeploymentSpec) -> Prediction | None:
    for layers in range(state.report.num_layers_total, state.layers, -1):
        prediction = predict(state.report, layers, spec, state.budget)
        if prediction.max_batch_size != 0:
            return prediction
    return None


def remedy(state: AdaptState, spec: HeliosDeploymentSpec, trigger: str) -> Decision:
    """Add layers or switch model to end ``trigger`` (a sentence with the numbers)."""
    fix = corrections(state, spec)
    choices: list[tuple[float, str, Prediction]] = []
    add = _more_layers(state, spec, fix)
    if add is not None:
        added_bytes = (add.layers - state.layers) * state.report.bytes_per_layer
        choices.append((cost_seconds(add, added_bytes, spec), f"add layers to {add.layers}", add))
    switch = _other_model(state, spec, fix)
    if switch is not None:
        action = f"switch to {switch.model} ({switch.layers} layers)"
        choices.append((cost_seconds(switch, switch.weight_bytes, spec), action, switch))
    if choices:
        # Ties go to adding layers (listed first): it keeps the model and its warm KV cache.
        cost, action, chosen = min(choices, key=lambda choice: choice[0])
        others = [f"{other} would take {seconds:.2f} s" for seconds, other, _ in choices if other != action]
        breaches = breaches_per_window(chosen, fix, spec)
        reason = (
            f"{trigger}; {action}: predicted {breaches:.0f} breaches per window, {describe(chosen)}; "
            f"load + {horizon_tokens(spec)} tokens in {cost:.2f} s; "
            + (others[0] if others else "no other option settles it")
        )
        kind = "add_layers" if chosen.model == state.model else "switch_model"
        return Decision.from_prediction(kind, chosen, reason)
    deepest = _deepest_that_fits(state, spec)
    if deepest is not None:
        reason = (
            f"{trigger}; no option is predicted to settle it, so load {deepest.layers} of "
            f"{deepest.layers_total} layers ({describe(deepest)})"
        )
        return Decision.from_prediction("add_layers", deepest, reason)
    current = predict(state.report, state.layers, spec, state.budget)
    reason = f"{trigger}; no deeper setting fits and no other candidate is predicted to do better: holding"
    return Decision.from_prediction("hold", current, reason)
