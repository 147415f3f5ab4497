"""The generated CRDs: structural, in step with the pydantic models, and current in crds/.

``jsonschema`` (Draft 4, whose boolean ``exclusiveMinimum`` matches OpenAPI v3) stands in for
the API server's schema validation; ``nullable`` is translated to a null type as the server
reads it. The CEL rules run in the emulator's admission (tests/k8s_admission.py, with a real CEL
runtime); here they are checked to be cheap and to forbid what pydantic forbids.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from helios_operator.cli import main
from helios_operator.crds import crd_files, helios_deployment_crd, helios_status_crd, structural_schema
from helios_operator.heliosstatus import CandidateEvaluation, HeliosStatusReport
from helios_operator.policy import predict
from helios_operator.spec import (
    DURATION_PATTERN,
    MAX_CANDIDATES,
    QUANTITY_PATTERN,
    HeliosDeploymentSpec,
    parse_duration,
    parse_quantity,
)
from tests.k8s_admission import CustomResourceSchema, Rejected
from tests.report_factory import make_report, make_spec

CRDS_DIR = Path(__file__).resolve().parent.parent / "crds"
STRUCTURAL_KEYS = {
    "type",
    "format",
    "description",
    "default",
    "nullable",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "items",
    "properties",
    "required",
    "additionalProperties",
    "anyOf",
}
INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def api_server_view(schema: Any) -> Any:
    """The schema as plain JSON Schema: ``nullable: true`` becomes a null-allowing type."""
    if isinstance(schema, list):
        return [api_server_view(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: api_server_view(value) for key, value in schema.items() if key != "nullable"}
    if schema.get("nullable"):
        if "type" in result:
            result["type"] = [result["type"], "null"]
        if "enum" in result:
            result["enum"] = [*result["enum"], None]
    return result


def spec_validator() -> jsonschema.Draft4Validator:
    root = helios_deployment_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft4Validator(api_server_view(root["properties"]["spec"]))


def walk(schema: Any, path: str = "$") -> list[tuple[str, dict[str, Any]]]:
    nodes = []
    if isinstance(schema, dict):
        nodes.append((path, schema))
        for key, value in schema.get("properties", {}).items():
            nodes += walk(value, f"{path}.{key}")
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                nodes += walk(schema[key], f"{path}[{key}]")
    return nodes


VALID_SPECS = [
    {"candidates": [{"name": "small", "model": "facebook/layerskip-llama3.2-1B"}]},
    {
        "candidates": [{"name": "a", "model": "org/a", "revision": None}, {"name": "b", "model": "org/b"}],
        "objective": "latency",
        "memoryBudget": "8Gi",
        "monitoring": {"interval": 5, "staleAfter": "1m", "maxBreaches": 10, "breachWindowTokens": 20},
        "evaluation": {"prompts": {"inline": ["hello"]}, "reassessInterval": "30m"},
        "worker": {"resources": {"limits": {"nvidia.com/gpu": "1", "memory": "16Gi"}}, "env": [{"name": "X"}]},
    },
]

INVALID_SPECS = {
    "no candidates": {"candidates": []},
    "missing candidates": {},
    "bad candidate name": {"candidates": [{"name": "Not_A_Label", "model": "m"}]},
    "unknown objective": {"candidates": [{"name": "a", "model": "m"}], "objective": "fastest"},
    "agreement above one": {"candidates": [{"name": "a", "model": "m"}], "accuracy": {"minAgreement": 1.5}},
    "threshold zero": {"candidates": [{"name": "a", "model": "m"}], "exit": {"threshold": 0}},
    "negative replicas": {"candidates": [{"name": "a", "model": "m"}], "replicas": -1},
    "interval is a list": {"candidates": [{"name": "a", "model": "m"}], "monitoring": {"interval": [1]}},
    "bad resource quantity": {
        "candidates": [{"name": "a", "model": "m"}],
        "worker": {"resources": {"limits": {"memory": "lots"}}},
    },
}


@pytest.mark.parametrize("spec", VALID_SPECS)
def test_valid_specs_are_accepted_by_schema_and_pydantic(spec: dict[str, Any]) -> None:
    spec_validator().validate(spec)
    HeliosDeploymentSpec.model_validate(spec)


@pytest.mark.parametrize("name", sorted(INVALID_SPECS))
def test_invalid_specs_are_rejected_by_schema_and_pydantic(name: str) -> None:
    spec = INVALID_SPECS[name]
    assert list(spec_validator().iter_errors(spec)), f"the schema accepted {name}"
    with pytest.raises(ValidationError):
        HeliosDeploymentSpec.model_validate(spec)


@pytest.mark.parametrize("crd", [helios_deployment_crd(), helios_status_crd()], ids=["hd", "heliosstatus"])
def test_schemas_are_structural(crd: dict[str, Any]) -> None:
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text = yaml.safe_dump(root)
    assert "$ref" not in text and "$defs" not in text and "'null'" not in text
    for path, node in walk(root):
        keys = {key for key in node if not key.startswith("x-kubernetes-")}
        assert keys <= STRUCTURAL_KEYS, f"{path}: not structural: {sorted(keys - STRUCTURAL_KEYS)}"
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == INT_OR_STRING, path
        else:
            assert "type" in node, f"{path}: every node needs a type"
            assert "anyOf" not in node, f"{path}: anyOf only under int-or-string"
        assert not isinstance(node.get("exclusiveMinimum"), int | float) or isinstance(
            node.get("exclusiveMinimum"), bool
        ), f"{path}: exclusiveMinimum must be boolean in OpenAPI v3"
        if "default" in node:
            jsonschema.Draft4Validator(api_server_view(node)).validate(node["default"])


def test_cross_field_rules_are_cel_validations() -> None:
    spec = structural_schema(HeliosDeploymentSpec)
    rules = {
        "spec": spec["x-kubernetes-validations"],
        "monitoring": spec["properties"]["monitoring"]["x-kubernetes-validations"],
        "prompts": spec["properties"]["evaluation"]["properties"]["prompts"]["x-kubernetes-validations"],
        "modelVolume": spec["properties"]["worker"]["properties"]["modelVolume"]["x-kubernetes-validations"],
    }
    assert "exists_one" in rules["spec"][0]["rule"]
    assert "self.maxBreaches <= " in rules["monitoring"][0]["rule"]
    assert len(rules["prompts"]) == 2 and "claimName" in rules["modelVolume"][0]["rule"]
    # What the rules forbid, pydantic forbids too (the operator's Invalid condition relies on it).
    for bad in (
        {"candidates": [{"name": "a", "model": "m"}, {"name": "a", "model": "n"}]},
        {"candidates": [{"name": "a", "model": "m"}], "monitoring": {"breachWindowTokens": 10, "maxBreaches": 11}},
        {
            "candidates": [{"name": "a", "model": "m"}],
            "evaluation": {"prompts": {"inline": ["x"], "recentTraffic": True}},
        },
        {
            "candidates": [{"name": "a", "model": "m"}],
            "worker": {"modelVolume": {"claimName": "c", "cacheSizeLimit": 1}},
        },
    ):
        with pytest.raises(ValidationError):
            HeliosDeploymentSpec.model_validate(bad)


def test_durations_and_quantities_are_int_or_string_with_defaults() -> None:
    monitoring = structural_schema(HeliosDeploymentSpec)["properties"]["monitoring"]["properties"]
    assert monitoring["interval"]["x-kubernetes-int-or-string"] is True
    assert monitoring["interval"]["default"] == "15s"
    assert monitoring["staleAfter"]["nullable"] is True
    assert monitoring["targetBreachFraction"] == {
        **monitoring["targetBreachFraction"],
        "minimum": 0.0,
        "exclusiveMinimum": True,
        "maximum": 1.0,
    }


def test_printer_columns_and_subresources() -> None:
    version = helios_deployment_crd()["spec"]["versions"][0]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert [n for n, c in columns.items() if not c.get("priority")] == [
        "Model",
        "Layers",
        "Phase",
        "Ready",
        "Replicas",
        "Age",
    ]
    assert [n for n, c in columns.items() if c.get("priority") == 1] == ["Objective", "Breach rate", "Tokens/s"]
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    status_props = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for column in columns.values():  # every status column points at a field the schema keeps
        if column["jsonPath"].startswith(".status.") and "[" not in column["jsonPath"]:
            assert column["jsonPath"].split(".")[2] in status_props, column["name"]
    status_columns = {c["name"]: c for c in helios_status_crd()["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert [n for n, c in status_columns.items() if not c.get("priority")] == [
        "Deployment",
        "Model",
        "Layers",
        "Breach rate",
        "Tokens/s",
        "Last decision",
        "Age",
    ]
    # kubectl get heliosstatus -o wide: the evidence the served setting was chosen on.
    assert [n for n, c in status_columns.items() if c.get("priority") == 1] == [
        "Agreement",
        "Agreement 95% low",
        "Breach rate 95% high",
        "Eval tokens",
    ]
    served = helios_status_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"][
        "properties"
    ]["served"]["properties"]
    for name in ("Agreement", "Agreement 95% low", "Breach rate 95% high", "Eval tokens"):
        path = status_columns[name]["jsonPath"]
        assert path.startswith(".status.served.") and path.split(".")[3] in served, name


def test_heliosstatus_repeats_the_served_row_with_its_bounds_for_printer_columns() -> None:
    reports = [make_report("alpha", tokens_per_count=1), make_report("beta", tokens_per_count=1)]
    spec = make_spec()
    rows = [
        CandidateEvaluation.from_prediction(predict(report, 3, spec, None), report.model_ref, report.model == "beta")
        for report in reports
    ]
    report = HeliosStatusReport(model="beta", layers="3/8", phase="Serving", candidates=rows)
    assert report.served == rows[1] and report.served.num_tokens == 100
    assert report.served.agreement_lower_bound == reports[1].greedy_agreement_lower_bound_by_layer[2]
    assert report.served.breach_rate_upper_bound == reports[1].breach_rate_upper_bound_by_layer[2]
    assert HeliosStatusReport(candidates=[rows[0]]).served is None  # nothing chosen yet
    root = helios_status_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    validator = jsonschema.Draft4Validator(api_server_view(root["properties"]["status"]))
    validator.validate(report.model_dump(mode="json", by_alias=True, exclude_none=True))


def test_heliosstatus_schema_accepts_what_the_model_dumps() -> None:
    root = helios_status_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    validator = jsonschema.Draft4Validator(api_server_view(root["properties"]["status"]))
    report = HeliosStatusReport(model="a", layers="3/8", phase="Serving")
    validator.validate(report.model_dump(mode="json", by_alias=True))
    broken = copy.deepcopy(report.model_dump(mode="json", by_alias=True))
    broken["phase"] = "Sleeping"
    assert list(validator.iter_errors(broken))


def test_crds_directory_is_up_to_date() -> None:
    for name, text in crd_files().items():
        path = CRDS_DIR / name
        assert path.exists(), f"crds/{name} is missing: run `helios crds --output-dir crds`"
        assert path.read_text(encoding="utf-8") == text, f"crds/{name} is stale: run `helios crds --output-dir crds`"


def test_helios_crds_prints_every_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds"]) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["metadata"]["name"] for d in documents] == ["heliosdeployments.helios.dev", "heliosstatuses.helios.dev"]


# --- patterns and the name rule (what admission checks before the operator sees a spec) -------------

DURATIONS = {
    "admitted": ["15s", "500ms", "2m", "1h30m", "1m30.5s", "1.s", ".5s", "7", "2.5", "1e3", "90"],
    "refused": ["", "banana", "15x", "s", "1h 30m", "-5s", "5s3", "0.4s5", "1e999", "1.2.3"],
    "parsed, yet refused by the server": [" 15s", "+5", "1_0"],  # Python's float() is lenient
}
QUANTITIES = {
    "admitted": ["8Gi", "8GiB", "500M", "1.5Gi", "64Ki", "1e9", "1k", "4096", "8 Gi", ".5Ki"],
    "refused": ["lots", "8Gx", "-1Gi", "Gi", "8 G i", "1.5.5", "8gi", ""],
    "parsed, yet refused by the server": [" 8Gi"],
}


@pytest.mark.parametrize(
    ("pattern", "parse", "cases"),
    [(DURATION_PATTERN, parse_duration, DURATIONS), (QUANTITY_PATTERN, parse_quantity, QUANTITIES)],
    ids=["duration", "quantity"],
)
def test_int_or_string_patterns_admit_what_the_parsers_read(pattern: str, parse: Any, cases: Any) -> None:
    for text in cases["admitted"]:
        assert re.search(pattern, text), text
        parse(text)
    for text in cases["refused"]:
        assert not re.search(pattern, text), text
        with pytest.raises(ValueError):
            parse(text)
    for text in cases["parsed, yet refused by the server"]:
        assert not re.search(pattern, text), text
        parse(text)


@settings(max_examples=300, deadline=None)
@given(st.from_regex(DURATION_PATTERN, fullmatch=True).filter(lambda text: len(text) < 30))
def test_every_duration_the_pattern_admits_parses(text: str) -> None:
    assert parse_duration(text) >= 0


@settings(max_examples=300, deadline=None)
@given(st.from_regex(QUANTITY_PATTERN, fullmatch=True).filter(lambda text: len(text) < 30))
def test_every_quantity_the_pattern_admits_parses(text: str) -> None:
    assert parse_quantity(text) >= 0


def test_duration_and_quantity_fields_carry_their_patterns() -> None:
    root = helios_deployment_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    found = {
        path: node["pattern"]
        for path, node in walk(root)
        if node.get("x-kubernetes-int-or-string") and "pattern" in node
    }
    assert found["$.spec.monitoring.interval"] == DURATION_PATTERN
    assert found["$.spec.memoryBudget"] == QUANTITY_PATTERN
    assert found["$.spec.worker.shmSize"] == QUANTITY_PATTERN
    untyped = [path for path, node in walk(root) if node.get("x-kubernetes-int-or-string") and "pattern" not in node]
    assert untyped == [], f"int-or-string fields without a pattern: {untyped}"


def test_a_heliosdeployment_name_must_be_a_service_name_and_the_rule_is_cheap() -> None:
    root = helios_deployment_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    [rule] = root["x-kubernetes-validations"]
    assert rule["fieldPath"] == ".metadata.name" and "self.metadata.name" in rule["rule"]
    # The strings and lists rules walk are bounded, so the server's CEL cost estimate stays small.
    assert root["properties"]["metadata"]["properties"]["name"]["maxLength"] == 63
    assert root["properties"]["spec"]["properties"]["candidates"]["maxItems"] == MAX_CANDIDATES
    assert root["properties"]["spec"]["properties"]["candidates"]["items"]["properties"]["name"]["maxLength"] <= 63
    schema = CustomResourceSchema(root, "helios.dev", "v1alpha1", "HeliosDeployment")
    body = {
        "apiVersion": "helios.dev/v1alpha1",
        "kind": "HeliosDeployment",
        "spec": {"candidates": VALID_SPECS[0]["candidates"]},
    }
    for name in ("demo", "a", "llama-3-ee", "x" * 63):
        schema.admit({**body, "metadata": {"name": name}})
    for name in ("demo.v2", "1demo", "demo-", "x" * 64):
        with pytest.raises(Rejected, match=r"metadata\.name"):
            schema.admit({**body, "metadata": {"name": name}})
