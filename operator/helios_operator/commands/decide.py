"""Choose the model and layer count to serve from evaluation reports (HELIOS step 3)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from helios_contracts.errors import UserError
from helios_contracts.reports import EvaluationReport
from helios_operator.policy import Decision, select
from helios_operator.spec import (
    HeliosDeploymentSpec,
    SpecError,
    describe_validation_error,
    load_spec,
)

_FLAG_FOR_FIELD = {
    "objective": "--objective",
    "contextTokens": "--context-tokens",
    "memoryBudget": "--memory-budget",
    "accuracy.minAgreement": "--min-agreement",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reports", required=True, metavar="FILE", help="JSON list of evaluation reports.")
    parser.add_argument("--spec", metavar="FILE", help="HeliosDeployment (or its spec) to take settings from.")
    parser.add_argument(
        "--objective", choices=["throughput", "latency", "energy", "batchSize"], help="Default: throughput."
    )
    parser.add_argument("--min-agreement", metavar="A", help="Accuracy floor in [0, 1]. Default: 0.98.")
    parser.add_argument(
        "--memory-budget", metavar="BYTES", help="Bytes for weights and KV cache, e.g. 8GiB or 8589934592."
    )
    parser.add_argument("--context-tokens", metavar="N", help="Context length per batch slot. Default: 2048.")
    parser.add_argument("--json", action="store_true", help="Print the decision as JSON.")


def run(args: argparse.Namespace) -> int:
    reports = read_reports(Path(args.reports))
    spec = build_spec(args, reports)
    budget = spec.memory_budget
    try:
        decision = select(reports, spec, budget)
    except ValueError as error:
        raise UserError(str(error)) from error
    print(json.dumps(decision_json(decision, spec, budget), indent=2) if args.json else _human(decision))
    return 0


def read_reports(path: Path) -> list[EvaluationReport]:
    """The reports in ``path``, or a UserError that says what is wrong with the file."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(document, list) or not document:
        raise UserError(f"{path} must hold a non-empty JSON list of evaluation reports")
    reports = []
    for index, item in enumerate(document):
        try:
            reports.append(EvaluationReport.model_validate(item))
        except ValidationError as error:
            raise UserError(f"{path}: report [{index}]: {describe_validation_error(error)}") from error
    return reports


def _candidate_name(model: str, taken: set[str]) -> str:
    # Spec candidate names are RFC 1123 labels; report names may be repo ids like Org/Model.
    base = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:55] or "candidate"
    name, suffix = base, 1
    while name in taken:
        suffix += 1
        name = f"{base}-{suffix}"
    taken.add(name)
    return name


def build_spec(args: argparse.Namespace, reports: list[EvaluationReport]) -> HeliosDeploymentSpec:
    """The spec from --spec (or defaults with the reports as candidates), overridden by the flags."""
    if args.spec:
        try:
            document: dict[str, Any] = load_spec(args.spec).model_dump(by_alias=True, exclude_unset=True)
        except SpecError as error:
            raise UserError(str(error)) from error
    else:
        taken: set[str] = set()
        document = {
            "candidates": [
                {"name": _candidate_name(r.model, taken), "model": r.model_ref, "revision": r.revision} for r in reports
            ]
        }
    overrides = {
        "objective": args.objective,
        "contextTokens": args.context_tokens,
        "memoryBudget": args.memory_budget,
    }
    document.update({key: value for key, value in overrides.items() if value is not None})
    if args.min_agreement is not None:
        document.setdefault("accuracy", {})["minAgreement"] = args.min_agreement
    try:
        return HeliosDeploymentSpec.model_validate(document)
    except ValidationError as error:
        # The spec file was valid on its own, so a problem here comes from a flag: name the flag.
        message = describe_validation_error(error)
        for field, flag in _FLAG_FOR_FIELD.items():
            message = message.replace(f"{field}: ", f"{flag}: ")
        raise UserError(message) from error


def decision_json(decision: Decision, spec: HeliosDeploymentSpec, budget: int | None) -> dict[str, Any]:
    return {
        **decision.model_dump(mode="json", exclude={"timestamp"}),
        "objective": spec.objective,
        "min_agreement": spec.accuracy.min_agreement,
        "memory_budget_bytes": budget,
        "context_tokens": spec.context_tokens,
    }


def _human(decision: Decision) -> str:
    batch = "unknown (no memory budget)" if decision.max_batch_size is None else str(decision.max_batch_size)
    return "\n".join(
        [
            f"model:      {decision.model}",
            f"layers:     {decision.layers} of {decision.layers_total}",
            f"throughput: {decision.tokens_per_second:.1f} tokens/s (predicted)",
            f"agreement:  {decision.agreement:.3f} (>= {decision.agreement_lower_bound:.3f} at 95%, "
            f"n={decision.num_tokens} evaluation tokens)",
            f"breaches:   {decision.breach_rate:.3f} per token (<= {decision.breach_rate_upper_bound:.3f} at 95%)",
            f"max batch:  {batch}",
            f"reason:     {decision.reason}",
        ]
    )
