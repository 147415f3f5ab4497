"""``spec.worker.podTemplate`` merged onto a pod HELIOS generated: one pure function for every pod.

Evaluation pods and the serving Deployment's pod template both go through ``overlay_pod``, so
a pod scheduled for evaluation lands where its serving twin will (same nodes, tolerations,
runtime class, pull secrets and sidecars).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from helios_operator.podtemplate import PodTemplate

Manifest = dict[str, Any]

# How each podTemplate.spec field meets HELIOS's: appended after its entries, or set.
APPENDED = ("tolerations", "topologySpreadConstraints", "imagePullSecrets", "volumes", "containers", "initContainers")
SET = ("affinity", "runtimeClassName", "priorityClassName", "schedulerName")


def overlay_pod(metadata: Mapping[str, Any], spec: Mapping[str, Any], template: PodTemplate) -> Manifest:
    """``{"metadata", "spec"}`` of a pod: HELIOS's ``metadata`` and ``spec`` with ``template`` merged on.

    Lists are appended, single values set; nodeSelector, labels and annotations are merged with
    HELIOS's keys winning (validation already rejects the user keys that would clash); the pod
    securityContext is merged key by key with the user's keys winning, so one can change fsGroup
    and keep the rest of HELIOS's hardening.
    """
    overlay = template.spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    merged: Manifest = dict(spec)
    for key in APPENDED:
        if key in overlay:
            merged[key] = [*spec.get(key, []), *overlay[key]]
    for key in SET:
        if key in overlay:
            merged[key] = overlay[key]
    if "nodeSelector" in overlay:
        merged["nodeSelector"] = {**overlay["nodeSelector"], **spec.get("nodeSelector", {})}
    if "securityContext" in overlay:
        merged["securityContext"] = {**spec.get("securityContext", {}), **overlay["securityContext"]}
    pod_metadata: Manifest = dict(metadata)
    for key, extra in (("labels", template.metadata.labels), ("annotations", template.metadata.annotations)):
        if extra:
            pod_metadata[key] = {**extra, **metadata.get(key, {})}
    return {"metadata": pod_metadata, "spec": merged}
