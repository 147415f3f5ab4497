"""The Helm chart (charts/helios), rendered and linted by real Helm (helm-python-sdk binds Helm's Go
SDK as a shared library: no helm binary, no cluster).

What is checked: defaults render and lint clean; each toggle changes what it should; the values
schema rejects unknown keys and wrong types; rendered objects pass the Kubernetes API's own
OpenAPI schemas (kubernetes-validate, offline); RBAC rules equal the operator's one list
(k8s/rbac.py); the chart's CRDs are the generated ones; the operator's flags and environment are
ones `helios operator` and ``OperatorConfig`` understand; names fit in 63 characters; the
Grafana dashboard only queries metrics the worker exports.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry

from helios_operator.chart import chart_files
from helios_operator.cli import build_parser
from helios_operator.k8s import manifests
from helios_operator.k8s.config import DEFAULT_WORKER_IMAGE, OperatorConfig
from helios_operator.k8s.rbac import rules
from helios_operator.spec import HeliosDeployment
from helios_worker.gpu import GpuReading, GpuTelemetry
from helios_worker.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parent.parent
CHART_DIR = ROOT / "charts" / "helios"
NAMESPACE = "helios-system"
EXAMPLE = ROOT / "examples" / "cpu-tiny.yaml"
KUBE_VERSION = "1.33.0"  # a supported API server version with schemas in kubernetes-validate
LONGEST_RELEASE = "a-very-long-release-name-that-helm-still-accepts-53-c"  # Helm's limit: 53


@pytest.fixture(scope="module")
def chart() -> helm.Chart:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(
    chart: helm.Chart, values: dict[str, Any] | None = None, name: str = "helios", namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    """The rendered objects (NOTES.txt left out), in template order."""
    objects = []
    for path, text in sorted(chart.render(values or {}, name=name, namespace=namespace).items()):
        if not path.endswith(".txt"):
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {var["name"]: var.get("value", var.get("valueFrom")) for var in container["env"]}


def kinds(objects: list[dict[str, Any]]) -> set[str]:
    return {obj["kind"] for obj in objects}


# --- defaults ---------------------------------------------------------------------------------


def test_defaults_lint_clean_and_render_the_operator(chart) -> None:
    report = helm.lint(CHART_DIR, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []  # 2 = warning, 3 = error
    objects = render(chart)
    assert sorted(obj["kind"] for obj in objects) == sorted(
        [
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "Role",  # namespaced by default (least privilege); cluster-wide is opt-in
            "RoleBinding",
            "NetworkPolicy",
            "Deployment",
            "ServiceAccount",
        ]
    )


def test_operator_deployment_runs_helios_operator_securely(chart) -> None:
    objects = render(chart)
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = operator_container(objects)
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["image"] == "ghcr.io/helios-llm/helios-operator:0.1.0"

    args = container["args"]
    assert args[0] == "operator"
    assert "--liveness=http://0.0.0.0:8080/healthz" in args
    assert "--standalone" in args
    parsed = build_parser().parse_args(args)  # flags `helios operator` really has
    assert parsed.standalone and parsed.namespace == ["$(HELIOS_WATCH_NAMESPACE)"]  # namespaced by default
    probe = container["livenessProbe"]["httpGet"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert probe["path"] == "/healthz" and ports[probe["port"]] == 8080
    assert pod["serviceAccountName"] == only(objects, "ServiceAccount")["metadata"]["name"]


def test_operator_environment_is_what_operator_config_reads(chart, monkeypatch) -> None:
    assert env_of(operator_container(render(chart)))["HELIOS_WORKER_IMAGE"] == DEFAULT_WORKER_IMAGE
    values = {
        "operator": {"tickSeconds": 2.5, "evaluationPollSeconds": 7, "httpTimeoutSeconds": 1.5},
        "worker": {
            "image": {"repository": "registry.local/worker", "tag": "dev"},
            "resources": {"requests": {"cpu": "2"}, "limits": {"nvidia.com/gpu": 1, "memory": "16Gi"}},
        },
    }
    assert "HELIOS_DEFAULT_WORKER_RESOURCES" not in env_of(operator_container(render(chart)))
    env = env_of(operator_container(render(chart, values)))
    for name, value in env.items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
        elif value == {"fieldRef": {"fieldPath": "metadata.namespace"}}:  # the downward API
            monkeypatch.setenv(name, NAMESPACE)
    config = OperatorConfig.from_env()
    assert config.worker_image == "registry.local/worker:dev"
    assert (config.tick_seconds, config.evaluation_poll_seconds, config.http_timeout_seconds) == (2.5, 7.0, 1.5)
    resources = config.default_worker_resources
    assert resources.requests == {"cpu": "2"} and resources.limits["memory"] == "16Gi"
    assert str(resources.limits["nvidia.com/gpu"]) == "1"


def test_image_digest_wins_over_tag(chart) -> None:
    digest = "sha256:" + "ab" * 32
    values = {"operator": {"image": {"digest": digest}}, "worker": {"image": {"digest": digest}}}
    container = operator_container(render(chart, values))
    assert container["image"] == f"ghcr.io/helios-llm/helios-operator@{digest}"
    assert env_of(container)["HELIOS_WORKER_IMAGE"] == f"ghcr.io/helios-llm/helios-worker@{digest}"


def test_peering_drops_standalone(chart) -> None:
    args = operator_container(render(chart, {"operator": {"peering": True, "verbose": True}}))["args"]
    assert "--standalone" not in args
    assert build_parser().parse_args(args).verbose


# --- CRDs ---------------------------------------------------------------------------------------


def test_crds_are_the_generated_ones_and_kept_by_default(chart) -> None:
    crds = {crd["metadata"]["name"]: crd for crd in of_kind(render(chart), "CustomResourceDefinition")}
    generated = {}
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        generated[crd["metadata"]["name"]] = crd
    assert crds.keys() == generated.keys()
    for name, crd in crds.items():
        assert crd["spec"] == generated[name]["spec"], f"{name}: the rendered CRD differs from crds/"
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_crds_toggles(chart) -> None:
    assert not of_kind(render(chart, {"crds": {"enabled": False}}), "CustomResourceDefinition")
    for crd in of_kind(render(chart, {"crds": {"keep": False}}), "CustomResourceDefinition"):
        assert "annotations" not in crd["metadata"]


def test_chart_crd_copies_equal_crds_dir() -> None:
    copies = sorted(path.name for path in (CHART_DIR / "files" / "crds").glob("*.yaml"))
    assert copies == sorted(path.name for path in (ROOT / "crds").glob("*.yaml"))
    for name in copies:
        assert (CHART_DIR / "files" / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/helios/files/crds/{name} is stale: run `helios docs`"
        )


def test_generated_chart_files_are_current() -> None:
    for relative, text in chart_files().items():
        assert (ROOT / relative).read_text(encoding="utf-8") == text, f"{relative} is stale: run `helios docs`"


# --- RBAC ---------------------------------------------------------------------------------------


def test_cluster_wide_rbac_equals_the_operators_list(chart) -> None:
    objects = render(chart, {"rbac": {"clusterWide": True}})
    role = only(objects, "ClusterRole")
    assert role["rules"] == rules()
    binding = only(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": only(objects, "ServiceAccount")["metadata"]["name"], "namespace": NAMESPACE}
    ]
    assert not of_kind(objects, "Role") and not of_kind(objects, "RoleBinding")


def test_namespaced_rbac_watches_the_release_namespace(chart) -> None:
    objects = render(chart)  # the default
    assert not {"ClusterRole", "ClusterRoleBinding"} & kinds(objects)
    role = only(objects, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == rules()
    binding = only(objects, "RoleBinding")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"]["kind"] == "Role" and binding["roleRef"]["name"] == role["metadata"]["name"]

    container = operator_container(objects)
    assert env_of(container)["HELIOS_WATCH_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert "--namespace=$(HELIOS_WATCH_NAMESPACE)" in container["args"]  # Kubernetes expands $(VAR) in args
    assert build_parser().parse_args(container["args"]).namespace == ["$(HELIOS_WATCH_NAMESPACE)"]


def test_namespaced_rbac_for_listed_namespaces(chart) -> None:
    values = {"rbac": {"clusterWide": False}, "operator": {"watchNamespaces": ["team-a", "team-b"]}}
    objects = render(chart, values)
    assert sorted(role["metadata"]["namespace"] for role in of_kind(objects, "Role")) == ["team-a", "team-b"]
    for binding in of_kind(objects, "RoleBinding"):
        assert binding["subjects"][0]["namespace"] == NAMESPACE  # the operator's own ServiceAccount
    container = operator_container(objects)
    assert build_parser().parse_args(container["args"]).namespace == ["team-a", "team-b"]
    assert "HELIOS_WATCH_NAMESPACE" not in env_of(container)


def test_operator_network_policy_admits_only_the_health_port(chart) -> None:
    objects = render(chart)
    policy = only(objects, "NetworkPolicy")["spec"]
    pod_labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}]
    assert operator_container(objects)["ports"][0]["containerPort"] == 8080
    assert "NetworkPolicy" not in kinds(render(chart, {"operator": {"networkPolicy": {"enabled": False}}}))


def test_worker_control_port_admits_only_the_operator_pod(chart, monkeypatch) -> None:
    """The chart tells the operator who it is; the policy it then makes per HeliosDeployment selects
    that deployment's worker pods and admits the operator's own pod, and only it, to the control port."""
    objects = render(chart)
    for name, value in env_of(operator_container(objects)).items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
        elif value == {"fieldRef": {"fieldPath": "metadata.namespace"}}:
            monkeypatch.setenv(name, NAMESPACE)
    peer = OperatorConfig.from_env().control_peer
    assert peer is not None and peer.namespace == NAMESPACE
    operator_pod_labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert peer.pod_labels.items() <= operator_pod_labels.items()
    metadata = {"name": "d", "namespace": "ml", "uid": "u"}
    owner = {"apiVersion": "helios.dev/v1alpha1", "kind": "HeliosDeployment", "metadata": metadata}
    policy = manifests.build_control_network_policy(owner, peer.namespace, peer.pod_labels)
    kubernetes_validate.validate(policy, "1.33.0", strict=True)
    spec = HeliosDeployment.model_validate(yaml.safe_load(EXAMPLE.read_text())).spec
    candidate = spec.candidates[0]
    worker_pods = [
        manifests.build_deployment(owner, spec, candidate, 2, "img")["spec"]["template"],
        manifests.build_evaluation_pod(owner, spec, candidate, 1, ["p"], "img"),
    ]
    for pod in worker_pods:
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
        open_rule, control_rule = policy["spec"]["ingress"]
        assert open_rule == {"ports": [{"port": ports["http"], "protocol": "TCP"}]}  # the OpenAI API: anyone
        assert control_rule["ports"] == [{"port": ports["control"], "protocol": "TCP"}]
    (peer_rule,) = control_rule["from"]
    assert peer_rule["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": NAMESPACE}
    assert peer_rule["podSelector"]["matchLabels"].items() <= operator_pod_labels.items()
    # Switched off: the operator is not told, and makes none.
    off = render(chart, {"worker": {"controlNetworkPolicy": {"enabled": False}}})
    assert "HELIOS_OPERATOR_CONTROL_NETWORK_POLICY" not in env_of(operator_container(off))


def test_control_network_policy_needs_the_operator_identity(monkeypatch) -> None:
    monkeypatch.setenv("HELIOS_OPERATOR_CONTROL_NETWORK_POLICY", "1")
    monkeypatch.delenv("HELIOS_OPERATOR_NAMESPACE", raising=False)
    with pytest.raises(ValueError, match="lock the operator out"):
        OperatorConfig.from_env()


def test_pod_runs_as_the_images_user(chart) -> None:
    dockerfile = (ROOT / "operator" / "Dockerfile").read_text(encoding="utf-8")
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    assert user is not None
    context = only(render(chart), "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"]) == (int(user[1]), int(user[2]))


def test_rbac_and_service_account_can_be_left_out(chart) -> None:
    values = {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "existing"}}
    objects = render(chart, values)
    assert kinds(objects) == {"CustomResourceDefinition", "Deployment", "NetworkPolicy"}
    assert only(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "existing"


# --- metrics and dashboard ------------------------------------------------------------------------


def _selects_worker_pods(selector: dict[str, str]) -> bool:
    labels = manifests.base_labels("demo")
    return selector.items() <= labels.items()


def test_monitors_are_off_by_default_and_select_the_workers(chart) -> None:
    assert not {"PodMonitor", "ServiceMonitor"} & kinds(render(chart))
    values = {"metrics": {"podMonitor": {"enabled": True}}, "rbac": {"clusterWide": True}}
    pod_monitor = only(render(chart, values), "PodMonitor")
    assert _selects_worker_pods(pod_monitor["spec"]["selector"]["matchLabels"])
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] == "http"
    # The operator's worker Service forwards to the same named container port.
    service = manifests.build_service({"metadata": {"name": "demo", "namespace": "ns", "uid": "u"}})
    assert service["spec"]["ports"][0]["targetPort"] == endpoint["port"]

    values = {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "rbac": {"clusterWide": False},
    }
    service_monitor = only(render(chart, values), "ServiceMonitor")
    selector = service_monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert service_monitor["metadata"]["labels"]["release"] == "prom"
    assert service_monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert service_monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_dashboard_configmap_toggle(chart) -> None:
    assert "ConfigMap" not in kinds(render(chart))
    values = {"dashboard": {"enabled": True, "namespace": "monitoring", "annotations": {"grafana_folder": "HELIOS"}}}
    configmap = only(render(chart, values), "ConfigMap")
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "HELIOS"}
    shipped = json.loads((CHART_DIR / "files" / "dashboard.json").read_text(encoding="utf-8"))
    assert json.loads(configmap["data"]["helios.json"]) == shipped


class _OneFakeGpu(GpuTelemetry):
    """Telemetry with one reading, so the GPU metric families are exported too."""

    def read(self) -> list[GpuReading]:
        return [GpuReading(index=0, name="fake", memory_used_bytes=1, power_watts=100.0, energy_joules=5.0)]


def exported_metric_names() -> set[str]:
    """Series names a worker's /metrics carries, from the worker's own metric definitions."""
    registry = CollectorRegistry()
    WorkerMetrics(registry, "demo", num_layers_total=4, telemetry=_OneFakeGpu(reason="test"))
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}


def dashboard_queries() -> list[str]:
    dashboard = json.loads((CHART_DIR / "files" / "dashboard.json").read_text(encoding="utf-8"))
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queries += [variable["definition"] for variable in dashboard["templating"]["list"] if "definition" in variable]
    return queries


def test_dashboard_queries_only_metrics_the_worker_exports() -> None:
    exported = exported_metric_names()
    assert {
        "helios_exit_layer_bucket",
        "helios_confidence_breaches_total",
        "helios_gpu_energy_joules_total",
    } <= exported
    used = {name for query in dashboard_queries() for name in re.findall(r"\bhelios_[a-z0-9_]+", query)}
    assert used, "the dashboard queries no helios_ metric"
    assert used <= exported, f"not exported by the worker: {sorted(used - exported)}"


def test_dashboard_has_the_helios_panels() -> None:
    queries = " ".join(re.sub(r"\{[^}]*\}", "", query) for query in dashboard_queries())  # without selectors
    for needed in (
        "rate(helios_exit_layer_bucket[5m])",
        "rate(helios_confidence_breaches_total[5m])) / sum by (model) (rate(helios_generated_tokens_total[5m])",
        "helios_layers_loaded",
        "histogram_quantile(0.99, sum by (le, model) (rate(helios_time_to_first_token_seconds_bucket[5m])))",
        "histogram_quantile(0.99, sum by (le, model) (rate(helios_time_per_output_token_seconds_bucket[5m])))",
        "rate(helios_gpu_energy_joules_total[5m])",
        "helios_gpu_power_watts",
    ):
        assert needed in queries, needed
    dashboard = json.loads((CHART_DIR / "files" / "dashboard.json").read_text(encoding="utf-8"))
    assert any(panel["type"] == "heatmap" for panel in dashboard["panels"])


# --- values and schema -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": 2}, "replicaCount"),
        ({"operator": {"replicas": 2}}, "replicas"),
        ({"metrics": {"podMonitor": {"enable": True}}}, "enable"),
        ({"crds": {"enabled": "yes"}}, "/crds/enabled"),
        ({"operator": {"tickSeconds": "fast"}}, "/operator/tickSeconds"),
        ({"operator": {"tickSeconds": 0}}, "/operator/tickSeconds"),
        ({"operator": {"watchNamespaces": "team-a"}}, "/operator/watchNamespaces"),
        ({"operator": {"watchNamespaces": ["Team_A"]}}, "/operator/watchNamespaces/0"),
        ({"metrics": {"serviceMonitor": {"interval": 15}}}, "/metrics/serviceMonitor/interval"),
        ({"dashboard": {"labels": {"grafana_dashboard": 1}}}, "/dashboard/labels/grafana_dashboard"),
    ],
)
def test_schema_rejects_bad_values(chart, values, complaint) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(complaint)):
        chart.render(values, name="helios", namespace=NAMESPACE)
    assert helm.lint(CHART_DIR, values)["errors"], "helm lint accepted bad values"


def _schema_objects(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, schema)] if "properties" in schema else []
    for key, sub in schema.get("properties", {}).items():
        found += _schema_objects(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        found += _schema_objects(schema["items"], f"{path}[]")
    return found


def test_schema_is_closed_and_matches_values_yaml(chart) -> None:
    schema = chart.schema
    for path, node in _schema_objects(schema):
        assert node.get("additionalProperties") is False, f"{path or 'values'}: unknown keys would be accepted"
        assert node.get("type") == "object"
    defaults = chart.values
    chart.validate_schema(defaults)

    def compare(values: dict[str, Any], node: dict[str, Any], path: str) -> None:
        assert set(values) == set(node["properties"]), f"{path}: values.yaml and the schema list different keys"
        for key, value in values.items():
            if "properties" in node["properties"][key]:
                compare(value, node["properties"][key], f"{path}.{key}")

    compare(defaults, schema, "values")


def test_every_value_is_documented_with_a_comment(chart) -> None:
    """Each key the schema declares has a comment line right above it in values.yaml."""
    declared = {
        f"{path}.{key}".lstrip(".")
        for path, node in _schema_objects(chart.schema)
        if "[]" not in path  # list items have no defaults to comment
        for key in node["properties"]
    }
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing keys
    previous = ""
    undocumented, seen = [], set()
    for line in (CHART_DIR / "values.yaml").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^( *)([A-Za-z][\w./-]*):", line)
        if match:
            while stack and stack[-1][0] >= len(match[1]):
                stack.pop()
            stack.append((len(match[1]), match[2]))
            path = ".".join(key for _, key in stack)
            if path in declared:
                seen.add(path)
                if not previous.lstrip().startswith("#"):
                    undocumented.append(path)
        if line.strip():
            previous = line
    assert not undocumented, f"values.yaml keys without a comment right above: {undocumented}"
    assert seen == declared, f"declared in the schema but not in values.yaml: {sorted(declared - seen)}"


# --- Kubernetes schemas, names, NOTES -------------------------------------------------------------------

VARIANTS = [
    {},
    {"rbac": {"clusterWide": False}, "operator": {"watchNamespaces": ["team-a", "team-b"]}},
    {
        "dashboard": {"enabled": True},
        "imagePullSecrets": [{"name": "regcred"}],
        "commonLabels": {"team": "ml"},
        "operator": {
            "extraEnv": [{"name": "EXTRA", "value": "1"}],
            "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {}},
            "priorityClassName": "system-cluster-critical",
            "podAnnotations": {"a": "b"},
        },
    },
]
NO_SCHEMA_GROUPS = ("monitoring.coreos.com/",)  # Prometheus Operator CRs: no offline schema


@pytest.mark.parametrize("values", VARIANTS, ids=["defaults", "namespaced", "everything-on"])
def test_rendered_objects_pass_the_kubernetes_schemas(chart, values) -> None:
    everything = {**values, "metrics": {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True}}}
    for obj in render(chart, everything):
        if obj["apiVersion"].startswith(NO_SCHEMA_GROUPS):
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {error.message} at {list(error.path)}")


def test_kubernetes_schema_check_can_fail(chart) -> None:
    (deployment,) = of_kind(render(chart), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSeconds"] = "often"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def test_names_fit_in_63_characters_with_the_longest_release(chart) -> None:
    helm.validate_release_name(LONGEST_RELEASE)
    assert len(LONGEST_RELEASE) == 53
    values = {"dashboard": {"enabled": True}, "metrics": {"podMonitor": {"enabled": True}}}
    for extra in ({}, {"rbac": {"clusterWide": False}}):
        objects = render(chart, {**values, **extra}, name=LONGEST_RELEASE)
        names = {obj["metadata"]["name"] for obj in objects}
        assert any(name.startswith(LONGEST_RELEASE[:40]) for name in names)
        for obj in objects:
            meta = obj["metadata"]
            if obj["kind"] != "CustomResourceDefinition":  # CRD names are fixed by the API group
                assert len(meta["name"]) <= 63, meta["name"]
                assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta["name"]), meta["name"]
            for value in meta.get("labels", {}).values():
                assert len(value) <= 63, value
    # Distinct components keep distinct names after the cut.
    objects = render(chart, values, name=LONGEST_RELEASE)
    assert len({(obj["kind"], obj["metadata"]["name"]) for obj in objects}) == len(objects)


def test_notes_give_next_steps_with_a_valid_example(chart) -> None:
    notes = chart.render({}, name="helios", namespace=NAMESPACE)["helios/templates/NOTES.txt"]
    for step in ("kubectl get hd", "kubectl get heliosstatus", "kubectl apply -f -"):
        assert step in notes
    example = textwrap.dedent(notes.split("cat <<'YAML' | kubectl apply -f -\n")[1].split("     YAML\n")[0])
    HeliosDeployment.model_validate(yaml.safe_load(example))
    namespaced = chart.render({"rbac": {"clusterWide": False}}, name="helios", namespace=NAMESPACE)
    assert f"in: {NAMESPACE}" in namespaced["helios/templates/NOTES.txt"]
    no_crds = chart.render({"crds": {"enabled": False}}, name="helios", namespace=NAMESPACE)
    assert "helios crds" in no_crds["helios/templates/NOTES.txt"]
