"""HeliosDeployment spec/status models: defaults, units, validation with field paths, loading."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from helios_operator.spec import (
    HeliosDeploymentSpec,
    HeliosDeploymentStatus,
    SpecError,
    describe_validation_error,
    load_spec,
    parse_duration,
    parse_quantity,
)

MINIMAL: dict[str, Any] = {"candidates": [{"name": "small", "model": "HuggingFaceTB/SmolLM2-135M"}]}


def spec_with(**fields: Any) -> HeliosDeploymentSpec:
    return HeliosDeploymentSpec.model_validate({**MINIMAL, **fields})


def rejection(**fields: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        spec_with(**fields)
    return describe_validation_error(caught.value)


def test_defaults_are_the_papers() -> None:
    spec = spec_with()
    assert spec.objective == "throughput"
    assert spec.accuracy.min_agreement == 0.98
    assert spec.exit.threshold == 0.8
    assert spec.exit.min_exit_layer is None
    # Not the paper's 5 requests: 8 x 32 = 256 tokens per candidate, so that the 95% bounds mean something.
    assert spec.evaluation.prompts_per_candidate * spec.evaluation.max_new_tokens >= 256
    assert spec.evaluation.time_budget is None
    assert spec.evaluation.reassess_every_requests == 150
    assert spec.evaluation.prompts.kind == "recentTraffic"
    assert spec.monitoring.breach_window_tokens == 100
    assert spec.monitoring.max_breaches == 50
    assert spec.monitoring.interval == 15.0
    assert spec.monitoring.cooldown == 60.0
    assert spec.monitoring.stale_after_seconds == 45.0
    assert spec.monitoring.shadow.fraction == 0.0
    assert spec.replicas == 1
    assert spec.context_tokens == 2048
    assert spec.memory_budget is None


def test_evaluation_time_budget_is_a_duration() -> None:
    assert spec_with(evaluation={"timeBudget": "1m30s"}).evaluation.time_budget == 90.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15s", 15.0), ("500ms", 0.5), ("2m", 120.0), ("1h30m", 5400.0), ("1m30.5s", 90.5), (20, 20.0), ("7", 7.0)],
)
def test_parse_duration(text: Any, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "15x", "s", "1h 30m", "-5s", "5s3", True, [1], -1])
def test_parse_duration_rejects(text: Any) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "num_bytes"),
    [
        ("8Gi", 8 * 2**30),
        ("8GiB", 8 * 2**30),
        ("500M", 500 * 10**6),
        ("1.5Gi", 3 * 2**29),
        ("64Ki", 65536),
        ("1e9", 10**9),
        ("1k", 1000),
        (4096, 4096),
        ("4096", 4096),
        (0.5, 1),  # Kubernetes rounds fractional bytes up
    ],
)
def test_parse_quantity(text: Any, num_bytes: int) -> None:
    assert parse_quantity(text) == num_bytes


@pytest.mark.parametrize("text", ["8Gx", "eight", "8 G i", "-1Gi", "Gi", False, None, float("inf")])
def test_parse_quantity_rejects(text: Any) -> None:
    with pytest.raises(ValueError, match="invalid quantity"):
        parse_quantity(text)


def test_units_are_parsed_inside_the_spec() -> None:
    spec = spec_with(
        memoryBudget="8Gi",
        monitoring={"interval": "30s", "cooldown": "2m", "staleAfter": "90s", "loadBandwidth": "500Mi"},
        evaluation={"reassessInterval": "1h"},
    )
    assert spec.memory_budget == 8 * 2**30
    assert spec.monitoring.interval == 30.0
    assert spec.monitoring.cooldown == 120.0
    assert spec.monitoring.stale_after_seconds == 90.0
    assert spec.monitoring.load_bandwidth == 500 * 2**20
    assert spec.evaluation.reassess_interval == 3600.0


@pytest.mark.parametrize(
    ("fields", "path", "words"),
    [
        ({"candidates": []}, "candidates", "at least 1"),
        ({"candidates": [{"name": f"c{i}", "model": "m"} for i in range(9)]}, "candidates", "at most 8"),
        ({"candidates": [{"name": "a", "model": "m"}, {"name": "a", "model": "n"}]}, "candidates", "'a'"),
        ({"candidates": [{"name": "Big_Model", "model": "m"}]}, "candidates[0].name", "pattern"),
        ({"candidates": [{"name": "a", "model": ""}]}, "candidates[0].model", "at least 1"),
        ({"candidates": [{"name": "a"}]}, "candidates[0].model", "required"),
        ({"objective": "speed"}, "objective", "throughput"),
        ({"accuracy": {"minAgreement": 1.5}}, "accuracy.minAgreement", "less than or equal to 1"),
        ({"exit": {"threshold": 0}}, "exit.threshold", "greater than 0"),
        ({"exit": {"threshold": 1.01}}, "exit.threshold", "less than or equal to 1"),
        ({"exit": {"minExitLayer": 0}}, "exit.minExitLayer", "greater than or equal to 1"),
        ({"evaluation": {"promptsPerCandidate": 0}}, "evaluation.promptsPerCandidate", "greater"),
        ({"evaluation": {"reassessInterval": "0s"}}, "evaluation.reassessInterval", "greater than 0"),
        ({"evaluation": {"timeBudget": "0s"}}, "evaluation.timeBudget", "greater than 0"),
        ({"evaluation": {"timeBudget": "soon"}}, "evaluation.timeBudget", "invalid duration"),
        ({"evaluation": {"timeBudget": "10m", "timeout": "5m"}}, "evaluation", "timeBudget (600 s) must be below"),
        ({"evaluation": {"prompts": {"inline": []}}}, "evaluation.prompts.inline", "at least 1"),
        (
            {"evaluation": {"prompts": {"inline": ["hi"], "configMapRef": {"name": "p"}}}},
            "evaluation.prompts",
            "choose one",
        ),
        ({"evaluation": {"prompts": {"recentTraffic": False}}}, "evaluation.prompts", "no inline"),
        ({"monitoring": {"maxBreaches": 101}}, "monitoring.maxBreaches", "breachWindowTokens (100)"),
        (
            {"monitoring": {"breachWindowTokens": 20, "maxBreaches": 30}},
            "monitoring.maxBreaches",
            "breachWindowTokens (20)",
        ),
        ({"monitoring": {"interval": "soon"}}, "monitoring.interval", "invalid duration"),
        ({"monitoring": {"interval": "0s"}}, "monitoring.interval", "greater than 0"),
        ({"monitoring": {"cooldown": "-1s"}}, "monitoring.cooldown", "invalid duration"),
        ({"monitoring": {"shadow": {"fraction": 2}}}, "monitoring.shadow.fraction", "less than or equal"),
        ({"monitoring": {"headroom": {"stormMemory": "x"}}}, "monitoring.headroom.stormMemory", "duration"),
        ({"replicas": -1}, "replicas", "greater than or equal to 0"),
        ({"memoryBudget": "8Gx"}, "memoryBudget", "invalid quantity"),
        ({"memoryBudget": 0}, "memoryBudget", "greater than 0"),
        ({"contextTokens": 0}, "contextTokens", "greater than or equal to 1"),
        ({"worker": {"resources": {"limits": {"memory": "lots"}}}}, "worker.resources.limits.memory", "pattern"),
        ({"worker": {"env": [{"name": "1BAD"}]}}, "worker.env[0].name", "pattern"),
        (
            {"worker": {"modelVolume": {"claimName": "models", "cacheSizeLimit": "10Gi"}}},
            "worker.modelVolume",
            "cacheSizeLimit",
        ),
        ({"worker": {"hfTokenSecretRef": {"key": "t"}}}, "worker.hfTokenSecretRef.name", "required"),
        ({"unknownField": 1}, "unknownField", "not permitted"),
    ],
)
def test_invalid_values_are_rejected_with_their_field_path(fields: dict[str, Any], path: str, words: str) -> None:
    message = rejection(**fields)
    assert message.startswith(f"{path}: "), message
    assert words in message


def test_snake_case_names_are_accepted_too() -> None:
    spec = HeliosDeploymentSpec.model_validate(
        {**MINIMAL, "memory_budget": "1Gi", "monitoring": {"max_breaches": 10, "breach_window_tokens": 40}}
    )
    assert spec.memory_budget == 2**30
    assert spec.monitoring.max_breaches == 10


def test_worker_resources_keep_kubernetes_quantities() -> None:
    spec = spec_with(
        worker={
            "image": "registry.example/helios-worker:0.1",
            "resources": {"requests": {"cpu": "500m", "memory": "8Gi"}, "limits": {"nvidia.com/gpu": 1}},
            "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
            "modelVolume": {"claimName": "model-cache"},
            "hfTokenSecretRef": {"name": "hf-token"},
        }
    )
    assert spec.worker.resources.limits == {"nvidia.com/gpu": "1"}
    assert spec.worker.resources.requests["cpu"] == "500m"
    assert spec.worker.hf_token_secret_ref is not None and spec.worker.hf_token_secret_ref.key == "token"


def test_prompt_sources() -> None:
    inline = spec_with(evaluation={"prompts": {"inline": ["Hello", "Why is the sky blue?"]}})
    config_map = spec_with(evaluation={"prompts": {"configMapRef": {"name": "eval-prompts"}}})
    assert inline.evaluation.prompts.kind == "inline"
    assert config_map.evaluation.prompts.kind == "configMap"
    assert config_map.evaluation.prompts.config_map_ref is not None
    assert config_map.evaluation.prompts.config_map_ref.key == "prompts"


def test_status_model_round_trips_with_camel_case() -> None:
    status = HeliosDeploymentStatus.model_validate(
        {
            "phase": "Serving",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Serving",
                    "observedGeneration": 3,
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
            "currentModel": "small",
            "currentLayers": 6,
            "layersTotal": 30,
            "lastDecision": {"kind": "select", "model": "small", "layers": 6, "reason": "best"},
        }
    )
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["currentLayers"] == 6
    assert dumped["conditions"][0]["observedGeneration"] == 3
    with pytest.raises(ValidationError, match="phase"):
        HeliosDeploymentStatus.model_validate({"phase": "Running"})
    with pytest.raises(ValidationError, match="status"):
        HeliosDeploymentStatus.model_validate({"conditions": [{"type": "Ready", "status": "yes"}]})


def _properties_without_description(schema: dict[str, Any]) -> list[str]:
    missing = []
    for model_name, model in [*schema.get("$defs", {}).items(), ("(root)", schema)]:
        for field, body in model.get("properties", {}).items():
            if "description" not in body:
                missing.append(f"{model_name}.{field}")
    return missing


def test_every_field_has_a_description_for_the_reference_doc() -> None:
    for model in (HeliosDeploymentSpec, HeliosDeploymentStatus):
        schema = model.model_json_schema(by_alias=True)
        assert _properties_without_description(schema) == []
    spec_schema = HeliosDeploymentSpec.model_json_schema(by_alias=True)
    assert spec_schema["properties"]["memoryBudget"]["description"].startswith("Bytes per worker")
    assert spec_schema["$defs"]["MonitoringSpec"]["properties"]["interval"]["default"] == "15s"


def test_load_spec_reads_a_manifest(tmp_path) -> None:
    path = tmp_path / "helios.yaml"
    path.write_text(
        "apiVersion: helios.dev/v1alpha1\n"
        "kind: HeliosDeployment\n"
        "metadata: {name: demo}\n"
        "spec:\n"
        "  candidates:\n"
        "    - {name: small, model: HuggingFaceTB/SmolLM2-135M}\n"
        "  objective: latency\n"
        "  memoryBudget: 8Gi\n"
    )
    spec = load_spec(path)
    assert spec.objective == "latency"
    assert spec.memory_budget == 8 * 2**30


def test_load_spec_reads_a_bare_json_spec(tmp_path) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**MINIMAL, "monitoring": {"maxBreaches": 20}}))
    assert load_spec(path).monitoring.max_breaches == 20


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("kind: Deployment\napiVersion: apps/v1\nspec: {}\n", "kind"),
        ("apiVersion: helios.dev/v1alpha1\nkind: HeliosDeployment\nspec: {candidates: []}\n", "spec.candidates"),
        ("- just\n- a list\n", "expected a mapping"),
        ("candidates: [unclosed\n", "not valid YAML"),
        ('{"candidates": [{"name": "a", "model": "m"}], "replicas": -2}', "replicas"),
    ],
)
def test_load_spec_errors_name_the_file_and_field(tmp_path, content: str, words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value).startswith(str(path))
    assert words in str(caught.value)


def test_load_spec_missing_file(tmp_path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "absent.yaml")
