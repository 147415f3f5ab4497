"""Drift detection between the children HELIOS wants and the live objects (pure)."""

from __future__ import annotations

from helios_operator.k8s.drift import drifted_paths, owned_content

DESIRED = {
    "kind": "Deployment",
    "metadata": {"name": "demo", "labels": {"app": "helios"}, "ownerReferences": [{"uid": "1"}]},
    "spec": {
        "replicas": 2,
        "template": {
            "spec": {"containers": [{"name": "worker", "image": "w:1", "env": [{"name": "A", "value": "1"}]}]}
        },
    },
}


def live(**spec_changes) -> dict:
    body = {
        "kind": "Deployment",
        "metadata": {"name": "demo", "uid": "x", "resourceVersion": "9", "labels": {"app": "helios", "extra": "y"}},
        "spec": {
            "replicas": 2,
            "strategy": {"type": "RollingUpdate"},  # a server default HELIOS never wrote
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "worker",
                            "image": "w:1",
                            "imagePullPolicy": "IfNotPresent",
                            "env": [{"name": "A", "value": "1"}],
                        }
                    ]
                }
            },
        },
        "status": {"readyReplicas": 1},
    }
    body["spec"].update(spec_changes)
    return body


def test_server_defaults_and_foreign_metadata_are_not_drift() -> None:
    assert drifted_paths(owned_content(DESIRED), live()) == []


def test_owned_fields_that_changed_or_vanished_are_drift() -> None:
    edited = live()
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "evil"
    assert drifted_paths(owned_content(DESIRED), edited) == ["spec.template.spec.containers[0].image"]
    assert drifted_paths(owned_content(DESIRED), live(replicas=3)) == ["spec.replicas"]
    removed = live()
    del removed["metadata"]["labels"]["app"]
    assert drifted_paths(owned_content(DESIRED), removed) == ["metadata.labels.app"]
    extra_env = live()
    extra_env["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "B", "value": "2"})
    assert drifted_paths(owned_content(DESIRED), extra_env) == ["spec.template.spec.containers[0].env"]


def test_values_the_api_server_normalises_compare_by_text() -> None:
    desired = {"kind": "Service", "metadata": {}, "spec": {"ports": [{"port": 8000, "targetPort": "http"}]}}
    assert (
        drifted_paths(
            owned_content(desired),
            {"kind": "Service", "metadata": {}, "spec": {"ports": [{"port": "8000", "targetPort": "http"}]}},
        )
        == []
    )


def test_a_helios_status_report_is_compared_with_its_status() -> None:
    report = {"kind": "HeliosStatus", "metadata": {}, "status": {"phase": "Serving"}}
    assert drifted_paths(
        owned_content(report), {"kind": "HeliosStatus", "metadata": {}, "status": {"phase": "Evaluating"}}
    ) == ["status.phase"]
