"""HELIOS's brain: pure functions from evaluation reports and telemetry to decisions.

No I/O and no clocks: the time is always an argument, so every rule is unit-testable.
"""

from helios_operator.policy.adapt import adapt, step
from helios_operator.policy.decision import Decision, DecisionKind, append_decision
from helios_operator.policy.headroom import plan_drop
from helios_operator.policy.memory import max_batch_size, weight_bytes
from helios_operator.policy.predict import Prediction, predict
from helios_operator.policy.reassess import reassessment_due, reselect
from helios_operator.policy.remedies import remedy
from helios_operator.policy.select import NoFeasibleOption, options, select
from helios_operator.policy.state import AdaptState, LayerRaise, apply, initial_state, record, with_reports
from helios_operator.policy.telemetry import Telemetry

__all__ = [
    "AdaptState",
    "Decision",
    "DecisionKind",
    "LayerRaise",
    "NoFeasibleOption",
    "Prediction",
    "Telemetry",
    "adapt",
    "append_decision",
    "apply",
    "initial_state",
    "max_batch_size",
    "options",
    "plan_drop",
    "predict",
    "reassessment_due",
    "record",
    "remedy",
    "reselect",
    "select",
    "step",
    "weight_bytes",
    "with_reports",
]
