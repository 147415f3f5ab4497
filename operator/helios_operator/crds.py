"""The CustomResourceDefinitions, generated from the pydantic models (never hand-edited).

``model_json_schema`` gives JSON Schema 2020-12 with ``$ref``s and ``anyOf [X, null]``; the
API server wants a *structural* OpenAPI v3 schema: every node typed, no ``$ref``, nullability
as ``nullable``, boolean ``exclusiveMinimum``, int-or-string as ``x-kubernetes-int-or-string``.
``structural_schema`` does that translation; rules that span fields, which a per-field schema
cannot say, are added as CEL ``x-kubernetes-validations`` on the model that owns the fields.
``helios crds`` prints the result; ``crds/*.yaml`` are its output and a test keeps them current.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from helios_operator.heliosstatus import HELIOS_STATUS_KIND, HeliosStatusReport, HeliosStatusSpec, OperatorStatus
from helios_operator.spec import _K8S_QUANTITY, API_GROUP, KIND, HeliosDeploymentSpec, MonitoringSpec

VERSION = "v1alpha1"
CATEGORY = "helios"
Schema = dict[str, Any]

_DEFAULT_WINDOW = MonitoringSpec.model_fields["breach_window_tokens"].default

# CEL rules per pydantic model name: what the model's validators check across fields. Each stays cheap
# for the API server's static CEL cost estimate, which refuses a CRD whose rule could cost more than
# its per-rule limit: the lists a rule iterates and the strings it matches have a schema bound
# (candidates: maxItems 8, so the uniqueness check is at most 64 comparisons; metadata.name: maxLength
# 63), and the other rules only read a few fields.
CEL_RULES: dict[str, list[Schema]] = {
    "HeliosDeploymentSpec": [
        {
            "rule": "self.candidates.all(c, self.candidates.exists_one(d, d.name == c.name))",
            "message": "candidate names must be unique",
            "fieldPath": ".candidates",
        },
        {
            "rule": "!has(self.exit) || !has(self.exit.gate) || self.exit.gate != 'saturation' || "
            "self.candidates.all(c, !has(c.exits) && !has(c.calibrate))",
            "message": "exit.gate saturation cannot be combined with calibrated exits, whose trained gate decides",
            "fieldPath": ".exit.gate",
        },
    ],
    "MonitoringSpec": [
        {
            "rule": "!has(self.maxBreaches) || self.maxBreaches <= "
            f"(has(self.breachWindowTokens) ? self.breachWindowTokens : {_DEFAULT_WINDOW})",
            "message": "maxBreaches must be <= breachWindowTokens",
            "fieldPath": ".maxBreaches",
        }
    ],
    "PromptSource": [
        {
            "rule": "(has(self.inline) ? 1 : 0) + (has(self.configMapRef) ? 1 : 0) + "
            "(has(self.recentTraffic) && self.recentTraffic ? 1 : 0) <= 1",
            "message": "choose one prompt source: inline, configMapRef or recentTraffic",
        },
        {
            "rule": "!has(self.recentTraffic) || self.recentTraffic || has(self.inline) || has(self.configMapRef)",
            "message": "recentTraffic is false and no inline prompts or configMapRef are given",
        },
    ],
    "Candidate": [
        {
            "rule": "!(has(self.exits) && has(self.calibrate))",
            "message": "give exits or calibrate, not both",
        }
    ],
    "CalibrationTexts": [
        {
            "rule": "has(self.configMapRef) != has(self.path)",
            "message": "give exactly one of configMapRef or path",
        }
    ],
    "ModelVolume": [
        {
            "rule": "!(has(self.claimName) && has(self.cacheSizeLimit))",
            "message": "cacheSizeLimit applies to the emptyDir cache; remove it or claimName",
        }
    ],
}

# A Pod resource quantity as Kubernetes' own CRDs type it ("1", 1, "500m", "8Gi"). pydantic loses
# the pattern of spec.K8sQuantity behind its BeforeValidator, so it is put back here.
QUANTITY_SCHEMA: Schema = {
    "x-kubernetes-int-or-string": True,
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "pattern": _K8S_QUANTITY.pattern,
}
_QUANTITY_MAPS = {"ResourceRequirements": ("requests", "limits")}

# The operator names a Service (and label values) after a HeliosDeployment, so its name must be an
# RFC 1035 label of at most 63 characters, stricter than the RFC 1123 subdomain the server checks.
# A root rule, as CEL sees only metadata.name and generateName; declaring both as strings makes the
# server use this schema's maxLength for the rule's cost (and fieldPath can then name the field).
SERVICE_NAME_METADATA: Schema = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 63}, "generateName": {"type": "string"}},
}
SERVICE_NAME_RULE: Schema = {
    "rule": "self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
    "message": "must be a valid Service name: at most 63 lowercase letters, digits or '-', starting with a letter "
    "and ending with a letter or digit (RFC 1035), because HELIOS names the serving Service after it",
    "fieldPath": ".metadata.name",
}

# JSON Schema keywords that mean nothing to the API server (or that it refuses).
_DROPPED = frozenset({"title", "$defs", "gt", "ge", "lt", "le"})


def structural_schema(model: type[BaseModel]) -> Schema:
    """The model's JSON schema as a structural OpenAPI v3 schema for a CRD."""
    raw = model.model_json_schema(by_alias=True)
    defs = raw.get("$defs", {})
    return _convert(raw, defs, model.__name__)


def _convert(node: Schema, defs: dict[str, Schema], name: str | None = None) -> Schema:
    if "$ref" in node:
        ref_name = node["$ref"].rsplit("/", 1)[-1]
        inlined = _convert(defs[ref_name], defs, ref_name)
        extra = _convert({k: v for k, v in node.items() if k != "$ref"}, defs)
        return {**inlined, **extra}
    if node.get("x-kubernetes-int-or-string"):
        # Numeric bounds are checked by pydantic after parsing "15s" or "8Gi"; the schema types it and
        # its pattern (spec.DURATION_PATTERN, QUANTITY_PATTERN) checks the string form.
        kept = {key: node[key] for key in ("description", "default", "pattern") if node.get(key) is not None}
        return {**kept, "x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
    options = node.get("anyOf")
    if options and any(option == {"type": "null"} for option in options):
        non_null = [option for option in options if option != {"type": "null"}]
        if len(non_null) != 1:
            raise ValueError(f"cannot express a union of {len(non_null)} types structurally: {node}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return {**_convert(non_null[0], defs), **_convert(rest, defs), "nullable": True}
    result: Schema = {}
    for key, value in node.items():
        if key in _DROPPED or (key == "default" and value is None):
            continue
        if key == "additionalProperties":
            if isinstance(value, dict):
                result[key] = _convert(value, defs)
            continue  # `false` (extra="forbid"): the server prunes unknown fields instead
        if key == "properties":
            result[key] = {prop: _convert(sub, defs) for prop, sub in value.items()}
        elif key == "items":
            result[key] = _convert(value, defs)
        elif key == "const":
            result["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            result["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            result[key] = True
        else:
            result[key] = value
    if "properties" in result:
        result.setdefault("type", "object")
    for prop in _QUANTITY_MAPS.get(name or "", ()):
        result["properties"][prop]["additionalProperties"] = QUANTITY_SCHEMA
    if name in CEL_RULES:
        result["x-kubernetes-validations"] = CEL_RULES[name]
    return result


def _root_schema(
    spec: type[BaseModel], status: type[BaseModel], description: str, names_a_service: bool = False
) -> Schema:
    root: Schema = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "helios.dev/v1alpha1"},
            "kind": {"type": "string", "description": "The kind of the object."},
            "metadata": SERVICE_NAME_METADATA if names_a_service else {"type": "object"},
            "spec": structural_schema(spec),
            "status": structural_schema(status),
        },
    }
    if names_a_service:
        root["x-kubernetes-validations"] = [SERVICE_NAME_RULE]
    return root


def _column(name: str, type_: str, path: str, description: str, priority: int = 0) -> Schema:
    column = {"name": name, "type": type_, "jsonPath": path, "description": description}
    return {**column, "priority": priority} if priority else column


_AGE = _column("Age", "date", ".metadata.creationTimestamp", "Time since creation.")


def helios_deployment_crd() -> Schema:
    version = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {
            "openAPIV3Schema": _root_schema(
                HeliosDeploymentSpec,
                OperatorStatus,
                "Early-exit LLM serving that HELIOS adapts to its traffic.",
                names_a_service=True,
            )
        },
        "subresources": {
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        },
        "additionalPrinterColumns": [
            _column("Model", "string", ".status.currentModel", "Candidate being served."),
            _column("Layers", "string", ".status.layers", "Layers loaded of the total."),
            _column("Phase", "string", ".status.phase", "Lifecycle phase."),
            _column("Ready", "string", '.status.conditions[?(@.type=="Ready")].status', "Ready condition."),
            _column("Replicas", "integer", ".status.replicas", "Worker replicas."),
            _AGE,
            _column("Objective", "string", ".spec.objective", "What is optimised.", priority=1),
            _column("Breach rate", "number", ".status.breachRate", "Breaches per token in the window.", priority=1),
            _column("Tokens/s", "number", ".status.tokensPerSecond", "Tokens per second, all workers.", priority=1),
        ],
    }
    return _crd("heliosdeployments", "heliosdeployment", KIND, ["hd"], version)


def helios_status_crd() -> Schema:
    version = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {
            "openAPIV3Schema": _root_schema(
                HeliosStatusSpec,
                HeliosStatusReport,
                "What the HELIOS operator saw and decided for one HeliosDeployment (written by the operator only).",
            )
        },
        "additionalPrinterColumns": [
            _column("Deployment", "string", ".spec.deployment", "The HeliosDeployment."),
            _column("Model", "string", ".status.model", "Candidate being served."),
            _column("Layers", "string", ".status.layers", "Layers loaded of the total."),
            _column("Breach rate", "number", ".status.telemetry.breachRate", "Breaches per token in the window."),
            _column("Tokens/s", "number", ".status.telemetry.tokensPerSecond", "Tokens per second, all workers."),
            _column("Last decision", "string", ".status.lastDecision.kind", "Kind of the last decision."),
            _AGE,
            # -o wide: what the served setting was chosen on, with the 95% bounds select compared.
            _column("Agreement", "number", ".status.served.agreement", "Evaluated agreement with full depth.", 1),
            _column("Agreement 95% low", "number", ".status.served.agreementLowerBound", "Its 95% lower bound.", 1),
            _column(
                "Breach rate 95% high",
                "number",
                ".status.served.breachRateUpperBound",
                "95% upper bound of the evaluated breach rate.",
                1,
            ),
            _column("Eval tokens", "integer", ".status.served.numTokens", "Evaluation tokens behind them.", 1),
        ],
    }
    return _crd("heliosstatuses", "heliosstatus", HELIOS_STATUS_KIND, [], version)


def _crd(plural: str, singular: str, kind: str, short_names: list[str], version: Schema) -> Schema:
    names: Schema = {"plural": plural, "singular": singular, "kind": kind, "listKind": f"{kind}List"}
    if short_names:
        names["shortNames"] = short_names
    names["categories"] = [CATEGORY]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{API_GROUP}"},
        "spec": {"group": API_GROUP, "scope": "Namespaced", "names": names, "versions": [version]},
    }


HEADER = "# Generated by `helios crds` from helios_operator/spec.py and heliosstatus.py. Do not edit.\n"


def render(crd: Schema) -> str:
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=120, allow_unicode=True)


def crd_files() -> dict[str, str]:
    """File name in crds/ -> its content."""
    return {
        "heliosdeployments.yaml": render(helios_deployment_crd()),
        "heliosstatuses.yaml": render(helios_status_crd()),
    }
