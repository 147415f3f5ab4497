"""Contract tests of the Kubernetes API emulator, driven by the real kubectl and kopf."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from helios_operator.crds import crd_files
from tests.k8s_admission import go_value
from tests.k8s_emulator import parse_label_selector, strategic_merge_patch

if TYPE_CHECKING:  # imported for real by pytest_plugins, which lets pytest rewrite its asserts
    from tests.k8s_fixtures import K8sApi, OperatorFactory

pytest_plugins = ["tests.k8s_fixtures"]  # the k8s_api and kopf_operator fixtures

SMOKE_OPERATOR = Path(__file__).with_name("kopf_smoke_operator.py")
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.test.helios.dev}
spec:
  group: test.helios.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd], categories: [helios-test]}
  versions:
    - name: v1
      served: true
      storage: true
      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
      subresources:
        status: {}
        scale: {specReplicasPath: .spec.size, statusReplicasPath: .status.size}
      additionalPrinterColumns:
        - {name: Phase, type: string, jsonPath: .status.phase}
        - {name: Size, type: integer, jsonPath: .spec.size}
        - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
"""

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - {name: main, image: "nginx:1.0", ports: [{containerPort: 80}]}
        - {name: sidecar, image: "busybox:1.0"}
"""


def widget(name: str, size: int = 1) -> str:
    return f"apiVersion: test.helios.dev/v1\nkind: Widget\nmetadata: {{name: {name}}}\nspec: {{size: {size}}}\n"


def configmap(name: str, labels: dict[str, str] | None = None, **meta: Any) -> str:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels or {}, **meta}}
    return json.dumps(body)


def wait_until(condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def exists(k8s_api: K8sApi, *target: str) -> bool:
    return k8s_api.kubectl("get", *target, "--ignore-not-found", "-o", "name").stdout.strip() != ""


# --- pure helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("tier=web", {"tier": "web"}, True),
        ("tier!=web", {"tier": "web"}, False),
        ("tier in (web, db),!canary", {"tier": "db"}, True),
        ("tier in (web, db),!canary", {"tier": "db", "canary": "1"}, False),
        ("tier notin (web)", {}, True),
        ("tier", {}, False),
    ],
)
def test_label_selector_semantics(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_label_selector(selector)(labels) is expected


def test_strategic_merge_patch_merges_named_lists_and_drops_directives() -> None:
    current = {"containers": [{"name": "a", "image": "1", "ports": [80]}, {"name": "b", "image": "1"}]}
    patch = {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}], "containers": [{"name": "a", "image": "2"}]}
    assert strategic_merge_patch(current, patch) == {
        "containers": [{"name": "a", "image": "2", "ports": [80]}, {"name": "b", "image": "1"}]
    }


# --- kubectl against the emulator ---------------------------------------------------------------


@pytest.mark.timeout(60)
def test_kubectl_deployment_lifecycle(k8s_api: K8sApi) -> None:
    assert "deployment.apps/web created" in k8s_api.apply(DEPLOYMENT).stdout
    first = k8s_api.kubectl_json("get", "deployment", "web")
    assert first["metadata"]["uid"] and first["metadata"]["generation"] == 1

    # Re-applying a changed manifest is a strategic merge patch: the sidecar and ports survive.
    assert "configured" in k8s_api.apply(DEPLOYMENT.replace("nginx:1.0", "nginx:2.0")).stdout
    containers = k8s_api.kubectl_json("get", "deploy", "web")["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in containers] == [("main", "nginx:2.0"), ("sidecar", "busybox:1.0")]
    assert containers[0]["ports"] == [{"containerPort": 80}]

    k8s_api.kubectl(
        "patch", "deployment", "web", "--type=json", "-p", '[{"op":"replace","path":"/spec/replicas","value":3}]'
    )
    patched = k8s_api.kubectl_json("get", "deployment", "web")
    assert patched["spec"]["replicas"] == 3 and patched["metadata"]["generation"] == 3

    assert 'deployment.apps "web" deleted' in k8s_api.kubectl("delete", "deployment", "web").stdout
    missing = k8s_api.kubectl("get", "deployment", "web", check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


@pytest.mark.timeout(60)
def test_custom_resource_crud_with_short_name_and_printer_columns(k8s_api: K8sApi) -> None:
    k8s_api.apply(WIDGET_CRD)
    k8s_api.apply(widget("w1", size=2))
    k8s_api.kubectl("patch", "wd", "w1", "--subresource=status", "--type=merge", "-p", '{"status":{"phase":"Ready"}}')

    table = k8s_api.kubectl("get", "wd").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "SIZE", "AGE"]
    assert table[1].split()[:3] == ["w1", "Ready", "2"]
    assert "widget.test.helios.dev/w1" in k8s_api.kubectl("get", "helios-test", "-o", "name").stdout

    k8s_api.kubectl("patch", "widget", "w1", "--type=merge", "-p", '{"spec":{"size":5}}')
    assert k8s_api.kubectl_json("get", "widgets.test.helios.dev", "w1")["spec"]["size"] == 5
    refused = k8s_api.kubectl("patch", "wd", "w1", "-p", '{"spec":{"size":6}}', check=False)
    assert refused.returncode != 0  # strategic merge patch is not for custom resources

    k8s_api.kubectl("delete", "wd", "w1")
    assert not exists(k8s_api, "wd", "w1")


@pytest.mark.timeout(60)
def test_status_and_scale_subresources_and_generation(k8s_api: K8sApi) -> None:
    k8s_api.apply(WIDGET_CRD)
    k8s_api.apply(widget("w1", size=1))
    created = k8s_api.kubectl_json("get", "wd", "w1")
    assert created["metadata"]["generation"] == 1

    # /status touches only status, and does not bump generation.
    status_patch = '{"spec":{"size":9},"status":{"phase":"Ready"}}'
    k8s_api.kubectl("patch", "wd", "w1", "--subresource=status", "--type=merge", "-p", status_patch)
    after_status = k8s_api.kubectl_json("get", "wd", "w1")
    assert after_status["status"] == {"phase": "Ready"} and after_status["spec"] == {"size": 1}
    assert after_status["metadata"]["generation"] == 1
    assert int(after_status["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])

    # The main endpoint ignores status, and a spec change bumps generation.
    k8s_api.kubectl("patch", "wd", "w1", "--type=merge", "-p", '{"spec":{"size":2},"status":{"phase":"Lost"}}')
    after_spec = k8s_api.kubectl_json("get", "wd", "w1")
    assert after_spec["status"] == {"phase": "Ready"} and after_spec["spec"] == {"size": 2}
    assert after_spec["metadata"]["generation"] == 2

    # /scale maps onto .spec.size.
    k8s_api.kubectl("scale", "wd", "w1", "--replicas=4")
    scaled = k8s_api.kubectl_json("get", "wd", "w1")
    assert scaled["spec"]["size"] == 4 and scaled["metadata"]["generation"] == 3


@pytest.mark.timeout(60)
def test_deleting_an_owner_collects_its_dependents(k8s_api: K8sApi) -> None:
    k8s_api.apply(configmap("owner"))
    owner_uid = k8s_api.kubectl_json("get", "cm", "owner")["metadata"]["uid"]
    owner_ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
    k8s_api.apply(configmap("child", ownerReferences=[owner_ref]))
    child_uid = k8s_api.kubectl_json("get", "cm", "child")["metadata"]["uid"]
    child_ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "child", "uid": child_uid}
    k8s_api.apply(configmap("grandchild", ownerReferences=[child_ref]))
    k8s_api.apply(configmap("bystander"))

    k8s_api.kubectl("delete", "cm", "owner")
    names = {item["metadata"]["name"] for item in k8s_api.kubectl_json("get", "cm")["items"]}
    assert names == {"bystander"}


@pytest.mark.timeout(60)
def test_finalizers_hold_deletion_until_removed(k8s_api: K8sApi) -> None:
    k8s_api.apply(configmap("held", finalizers=["test.helios.dev/hold"]))
    k8s_api.kubectl("delete", "cm", "held", "--wait=false")
    held = k8s_api.kubectl_json("get", "cm", "held")
    assert held["metadata"]["deletionTimestamp"]

    k8s_api.kubectl("patch", "cm", "held", "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    assert not exists(k8s_api, "cm", "held")


@pytest.mark.timeout(60)
def test_label_and_field_selectors_filter_lists(k8s_api: K8sApi) -> None:
    k8s_api.apply(configmap("web-1", {"tier": "web"}))
    k8s_api.apply(configmap("web-canary", {"tier": "web", "canary": "true"}))
    k8s_api.apply(configmap("db-1", {"tier": "db"}))

    def names(*selector: str) -> set[str]:
        return {item["metadata"]["name"] for item in k8s_api.kubectl_json("get", "cm", *selector)["items"]}

    assert names("-l", "tier=web") == {"web-1", "web-canary"}
    assert names("-l", "tier in (web,db),!canary") == {"web-1", "db-1"}
    assert names("--field-selector", "metadata.name=db-1") == {"db-1"}
    assert names("-A", "-l", "tier=db") == {"db-1"}


@pytest.mark.timeout(60)
def test_watch_reports_added_modified_deleted(k8s_api: K8sApi) -> None:
    k8s_api.apply(configmap("watched", {"watch": "me"}))
    command = [k8s_api.kubectl_path, f"--kubeconfig={k8s_api.kubeconfig}", f"--cache-dir={k8s_api.cache_dir}"]
    command += ["get", "cm", "-l", "watch=me", "--watch", "--output-watch-events", "-o", "json"]
    watcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    threading.Thread(target=_read_json_stream, args=(watcher, events), daemon=True).start()
    try:
        assert events.get(timeout=15)["type"] == "ADDED"
        k8s_api.kubectl("label", "cm", "watched", "extra=yes")
        modified = events.get(timeout=15)
        assert modified["type"] == "MODIFIED" and modified["object"]["metadata"]["labels"]["extra"] == "yes"
        k8s_api.kubectl("delete", "cm", "watched")
        assert events.get(timeout=15)["type"] == "DELETED"
    finally:
        watcher.kill()
        watcher.wait(timeout=10)


def _read_json_stream(process: subprocess.Popen[str], sink: queue.Queue[dict[str, Any]]) -> None:
    """kubectl prints one pretty-printed JSON document per event; split them as they come."""
    decoder, buffer = json.JSONDecoder(), ""
    assert process.stdout is not None
    for line in process.stdout:
        buffer += line
        try:
            event, end = decoder.raw_decode(buffer.strip())
        except json.JSONDecodeError:
            continue
        sink.put(event)
        buffer = buffer.strip()[end:]


# --- kopf against the emulator -------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_kopf_operator_creates_child_and_status(k8s_api: K8sApi, kopf_operator: OperatorFactory) -> None:
    k8s_api.apply(WIDGET_CRD)
    with kopf_operator(SMOKE_OPERATOR) as runner:
        k8s_api.apply(widget("w1", size=3))
        wait_until(lambda: exists(k8s_api, "cm", "w1-config"), what="the child ConfigMap")
        child = k8s_api.kubectl_json("get", "cm", "w1-config")
        assert child["data"] == {"size": "3"}
        assert child["metadata"]["ownerReferences"][0]["kind"] == "Widget"
        wait_until(lambda: k8s_api.kubectl_json("get", "wd", "w1").get("status", {}).get("phase") == "Ready")
        assert k8s_api.kubectl_json("get", "wd", "w1")["metadata"]["finalizers"] == [KOPF_FINALIZER]

        # kopf releases its finalizer, then the garbage collector takes the child.
        k8s_api.kubectl("delete", "wd", "w1", timeout=30)
        wait_until(lambda: not exists(k8s_api, "cm", "w1-config"), what="the child's garbage collection")
    assert runner.exit_code == 0 and runner.exception is None
    assert "Handler 'create_child' succeeded" in runner.output


# --- admission: the CRD's schema and CEL rules, as a real API server applies them ----------------------

HD_PATH = "/apis/helios.dev/v1alpha1/namespaces/default/heliosdeployments"


def heliosdeployment(name: str = "demo", **spec: Any) -> dict[str, Any]:
    candidates = [{"name": "small", "model": "org/small"}]
    return {
        "apiVersion": "helios.dev/v1alpha1",
        "kind": "HeliosDeployment",
        "metadata": {"name": name},
        "spec": {"candidates": candidates, **spec},
    }


def call(k8s_api: K8sApi, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, dict[str, Any]]:
    """One raw HTTP request to the emulator: the status code and the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    content_type = {"PATCH": "application/merge-patch+json"}.get(method, "application/json")
    request = urllib.request.Request(k8s_api.url + path, data, {"Content-Type": content_type, **headers}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def helios_crds(k8s_api: K8sApi) -> K8sApi:
    for text in crd_files().values():
        k8s_api.apply(text)
    return k8s_api


LONG_NAME = "a" * 64
# (manifest, what kubectl prints) for what a real API server refuses
REFUSED = {
    "fractional interval": (
        heliosdeployment(monitoring={"interval": 0.4}),
        'spec.monitoring.interval: Invalid value: "number": spec.monitoring.interval in body must be of type '
        'integer,string: "number"',
    ),
    "interval banana": (
        heliosdeployment(monitoring={"interval": "banana"}),
        'spec.monitoring.interval: Invalid value: "banana": spec.monitoring.interval in body should match',
    ),
    "quantity lots": (
        heliosdeployment(memoryBudget="lots"),
        'spec.memoryBudget: Invalid value: "lots": spec.memoryBudget in body should match',
    ),
    "name with a dot": (
        heliosdeployment(name="demo.v2"),
        'metadata.name: Invalid value: "object": must be a valid Service name',
    ),
    "name starting with a digit": (
        heliosdeployment(name="1demo"),
        'metadata.name: Invalid value: "object": must be a valid Service name',
    ),
    "name of 64 characters": (
        heliosdeployment(name=LONG_NAME),
        "metadata.name: Too long: may not be more than 63 bytes",
    ),
    "CEL: maxBreaches above the window": (
        heliosdeployment(monitoring={"breachWindowTokens": 20, "maxBreaches": 30}),
        'spec.monitoring.maxBreaches: Invalid value: "object": maxBreaches must be <= breachWindowTokens',
    ),
    "CEL: two prompt sources": (
        heliosdeployment(evaluation={"prompts": {"inline": ["hi"], "recentTraffic": True}}),
        'spec.evaluation.prompts: Invalid value: "object": choose one prompt source',
    ),
    "enum": (
        heliosdeployment(objective="fastest"),
        'spec.objective: Unsupported value: "fastest": supported values: "throughput", "latency", "energy", '
        '"batchSize"',
    ),
    "minimum": (
        heliosdeployment(replicas=-1),
        "spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0",
    ),
    "required": ({**heliosdeployment(), "spec": {"objective": "latency"}}, "spec.candidates: Required value"),
    "unknown field": (heliosdeployment(replica=2), 'strict decoding error: unknown field "spec.replica"'),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_admission_refuses_what_a_real_server_refuses(helios_crds: K8sApi, case: str) -> None:
    manifest, printed = REFUSED[case]
    error = helios_crds.apply_error(yaml.safe_dump(manifest))
    assert printed in error
    if "strict decoding" not in printed:
        assert f'The HeliosDeployment "{manifest["metadata"]["name"]}" is invalid' in error
    assert not helios_crds.kubectl_json("get", "hd")["items"]


@pytest.mark.timeout(60)
def test_an_invalid_object_is_a_422_status_with_a_cause_per_field(helios_crds: K8sApi) -> None:
    manifest = heliosdeployment(monitoring={"interval": "banana", "cooldown": 0.5})
    code, status = call(helios_crds, "POST", HD_PATH, manifest)
    assert code == 422
    assert status["kind"] == "Status" and status["status"] == "Failure" and status["reason"] == "Invalid"
    assert status["message"].startswith('HeliosDeployment.helios.dev "demo" is invalid: [spec.monitoring.')
    assert 'spec.monitoring.interval: Invalid value: "banana": spec.monitoring.interval in body' in status["message"]
    details = status["details"]
    assert (details["name"], details["group"], details["kind"]) == ("demo", "helios.dev", "HeliosDeployment")
    causes = {cause["field"]: cause for cause in details["causes"]}
    assert causes["spec.monitoring.interval"]["reason"] == "FieldValueInvalid"
    assert causes["spec.monitoring.interval"]["message"].startswith('Invalid value: "banana": ')
    assert causes["spec.monitoring.cooldown"]["reason"] == "FieldValueTypeInvalid"
    # A type error blocks the CEL rules, which the server then says it did not check.
    assert causes["<nil>"]["message"].endswith("correct the existing errors to complete validation")


@pytest.mark.timeout(60)
def test_admission_applies_defaults_and_prunes_unknown_fields(helios_crds: K8sApi) -> None:
    manifest = heliosdeployment(monitoring={"interval": "2s"}, worker={"tolerance": 1})
    applied = helios_crds.kubectl("apply", "--validate=warn", "-f", "-", input=yaml.safe_dump(manifest))
    assert 'Warning: unknown field "spec.worker.tolerance"' in applied.stderr
    spec = helios_crds.kubectl_json("get", "hd", "demo")["spec"]
    assert spec["objective"] == "throughput" and spec["replicas"] == 1 and spec["contextTokens"] == 2048
    assert spec["monitoring"]["interval"] == "2s"  # given
    assert spec["monitoring"]["cooldown"] == "60s" and spec["monitoring"]["maxBreaches"] == 50  # defaulted
    assert "tolerance" not in spec["worker"]  # pruned
    assert "evaluation" not in spec  # no default for a whole object: only inside one that is given


@pytest.mark.timeout(60)
def test_every_kind_of_write_is_admitted(helios_crds: K8sApi) -> None:
    helios_crds.apply(yaml.safe_dump(heliosdeployment()))
    bad = '{"spec":{"monitoring":{"interval":"soon"}}}'
    merge = helios_crds.kubectl("patch", "hd", "demo", "--type=merge", "-p", bad, check=False)
    assert merge.returncode != 0 and 'spec.monitoring.interval: Invalid value: "soon"' in merge.stderr
    json_patch = '[{"op":"add","path":"/spec/replicas","value":-2}]'
    refused = helios_crds.kubectl("patch", "hd", "demo", "--type=json", "-p", json_patch, check=False)
    assert refused.returncode != 0 and "spec.replicas: Invalid value: -2" in refused.stderr
    status = '{"status":{"phase":"Sleeping"}}'
    refused = helios_crds.kubectl(
        "patch", "hd", "demo", "--subresource=status", "--type=merge", "-p", status, check=False
    )
    assert refused.returncode != 0 and 'status.phase: Unsupported value: "Sleeping"' in refused.stderr
    code, answer = call(helios_crds, "PATCH", f"{HD_PATH}/demo/scale", {"spec": {"replicas": -1}})
    assert code == 422 and answer["details"]["causes"][0]["field"] == "spec.replicas"
    replaced = helios_crds.kubectl_json("get", "hd", "demo")
    replaced["spec"]["monitoring"] = {"interval": "banana"}
    refused = helios_crds.kubectl("replace", "-f", "-", input=json.dumps(replaced), check=False)
    assert refused.returncode != 0 and 'Invalid value: "banana"' in refused.stderr
    # A status the schema admits is stored, pruned of what it does not declare.
    status = '{"status":{"phase":"Serving","kopf":{"progress":{}}}}'
    helios_crds.kubectl("patch", "hd", "demo", "--subresource=status", "--type=merge", "-p", status)
    assert helios_crds.kubectl_json("get", "hd", "demo")["status"]["phase"] == "Serving"
    assert "kopf" not in helios_crds.kubectl_json("get", "hd", "demo")["status"]
    assert helios_crds.kubectl_json("get", "hd", "demo")["spec"]["replicas"] == 1  # nothing refused was stored


@pytest.mark.timeout(60)
def test_a_crd_whose_cel_rule_does_not_compile_is_refused(k8s_api: K8sApi) -> None:
    broken = WIDGET_CRD.replace(
        "schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}",
        "schema: {openAPIV3Schema: {type: object, x-kubernetes-validations: [{rule: 'self.size >'}]}}",
    )
    error = k8s_api.apply_error(broken)
    assert "x-kubernetes-validations[0].rule" in error and "compilation failed" in error


@pytest.mark.parametrize(("value", "printed"), [(0.4, "0.4"), (-1, "-1"), (1.0, "1"), ("x", '"x"'), (None, '"null"')])
def test_bad_values_are_printed_as_go_prints_them(value: Any, printed: str) -> None:
    assert go_value(value) == printed
