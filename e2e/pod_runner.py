"""A pod runner for a cluster without nodes: plays kubelet and the Deployment controller on 127.0.0.1.

Against an API server that stores objects but runs no controllers (the test's emulator), it
makes HELIOS's children real:

* Deployment controller: every Deployment owned by a HeliosDeployment keeps ``spec.replicas``
  pods of its template; a template change rolls with maxSurge 1, maxUnavailable 0 (the new
  pod first, an old one deleted only once the new one is ready).
* kubelet: every pod of such a Deployment, and every pod a HeliosDeployment owns directly
  (evaluation pods), runs as a real ``helios serve`` process with the container's env, on a
  free port (and its control API on a second one); the pod gets the ``helios.dev/endpoint`` and
  ``helios.dev/control-endpoint`` annotations, phase Running, podIP
  127.0.0.1 and a Ready condition that follows the worker's ``/ready``. A deleted pod's
  process gets SIGTERM (after a short pre-stop delay, so routers stop sending it requests)
  and SIGKILL by PID when it does not drain in time; ``stop`` ends every process.
* Job controller: every Job owned by a HeliosDeployment (calibration Jobs) gets one pod of its
  template, owned by the Job; its command runs to completion as a process with the container's
  env, and its exit sets the pod Succeeded or Failed (the log tail as termination message, as
  ``FallbackToLogsOnError`` does) and the Job's ``succeeded``/``failed`` count with a
  Complete/Failed condition; ``activeDeadlineSeconds`` fails it with DeadlineExceeded.
* Volumes: a path under a volume mount is moved into the pod's own directory, except under a
  PersistentVolumeClaim's mount, which maps to one directory per claim that every pod mounting
  the claim shares (so a Job's output is what later pods read); a ConfigMap volume is written out
  as files. Paths are mapped in env values (JSON values too) and in a Job's command.

Run ``python -m e2e.pod_runner --kubeconfig PATH`` beside an operator, or use ``PodRunner``
from a test (``start``/``stop``).
"""

from __future__ import annotations

import argparse
import base64
import calendar
import contextlib
import hashlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import kubernetes

from helios_operator.k8s.kube import MERGE_PATCH, Kube, KubeError
from helios_operator.k8s.manifests import CONTROL_ENDPOINT_ANNOTATION, ENDPOINT_ANNOTATION
from helios_operator.k8s.workers import is_ready
from helios_operator.local.supervisor import free_port

Body = dict[str, Any]
log = logging.getLogger("helios.e2e.pod_runner")

HASH_LABEL = "pod-template-hash"
MANAGED_BY = {"app.kubernetes.io/managed-by": "helios-operator"}
POLL_SECONDS = 0.25
PRE_STOP_SECONDS = 2.0  # a deleted pod keeps serving this long, as endpoint removal propagates
GRACE_SECONDS = 30.0  # terminationGracePeriodSeconds: SIGTERM, then SIGKILL


@dataclass
class PodProcess:
    """The container of one pod: a ``helios serve`` process and the port it listens on."""

    pod: str
    process: subprocess.Popen
    url: str
    log_path: Path
    control_url: str | None = None  # the control API's listener, when the pod asks for one
    is_ready: bool = False
    has_exited: bool = False
    pre_stop: float | None = None  # the container's preStop sleep, if it has one
    failure_threshold: int = 1  # the readiness probe's failureThreshold: misses before the pod turns unready
    misses: int = 0  # readiness probes missed in a row
    grace: float | None = None  # the pod's terminationGracePeriodSeconds, if set


def pre_stop_sleep(pod: Mapping[str, Any]) -> float | None:
    """Seconds of a ``preStop: exec: [sleep, N]`` hook, the only kind the worker pods use."""
    command = (((pod["spec"]["containers"][0].get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get(
        "command"
    )
    return float(command[1]) if command and command[0] == "sleep" and len(command) == 2 else None


def template_hash(template: Mapping[str, Any]) -> str:
    """The ReplicaSet controller's pod-template-hash: pods of one template share it."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def owner_kinds(body: Mapping[str, Any]) -> set[str]:
    return {ref.get("kind", "") for ref in body["metadata"].get("ownerReferences") or []}


def owned_by(body: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    uid = owner["metadata"]["uid"]
    return any(ref.get("uid") == uid for ref in body["metadata"].get("ownerReferences") or [])


def controlled_pod(kind: str, controller: Mapping[str, Any], name: str, labels: Mapping[str, str]) -> Body:
    """A pod of the controller's (a Deployment's or a Job's) template, owned by it as its controller.
    ``kind`` is "apps/v1/Deployment" or "batch/v1/Job" (list items carry no kind of their own)."""
    meta, template = controller["metadata"], controller["spec"]["template"]
    api_version, _, kind_name = kind.rpartition("/")
    owner = {
        "apiVersion": api_version,
        "kind": kind_name,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    metadata = {
        "name": name,
        "namespace": meta["namespace"],
        "labels": {**(template.get("metadata", {}).get("labels") or {}), **labels},
        "annotations": dict(template.get("metadata", {}).get("annotations") or {}),
        "ownerReferences": [owner],
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}


def build_pod(deployment: Mapping[str, Any], pod_hash: str) -> Body:
    """A pod of the Deployment's template, owned by the Deployment (the ReplicaSet is skipped)."""
    name = f"{deployment['metadata']['name']}-{pod_hash[:8]}-{secrets.token_hex(3)}"
    return controlled_pod("apps/v1/Deployment", deployment, name, {HASH_LABEL: pod_hash})


def rollout_step(deployment: Mapping[str, Any], pods: list[Body]) -> tuple[bool, str | None]:
    """One Deployment controller step: (create a pod of the current template?, the pod to delete).

    maxSurge 1, maxUnavailable 0: at most replicas + 1 pods; a ready pod is deleted only while
    the ready pods left still number ``replicas``. Not-ready pods go first.
    """
    replicas = int(deployment["spec"].get("replicas", 1))
    current_hash = template_hash(deployment["spec"]["template"])
    current = [p for p in pods if p["metadata"]["labels"].get(HASH_LABEL) == current_hash]
    old = [p for p in pods if p not in current]
    num_ready = sum(is_ready(p) for p in pods)
    is_create = len(current) < replicas and len(pods) < replicas + 1
    num_extra = max(0, len(current) - replicas)
    surplus = sorted(old, key=is_ready) or sorted(current, key=is_ready)[:num_extra]
    for pod in surplus:
        if not is_ready(pod) or num_ready - 1 >= replicas:
            return is_create, pod["metadata"]["name"]
    return is_create, None


JOB_NAME_LABEL = "job-name"
CONTROLLER_UID_LABEL = "controller-uid"
TERMINATION_LOG_CHARS = 2048  # kubelet's FallbackToLogsOnError keeps at most 2048 bytes or 80 lines


def build_job_pod(job: Mapping[str, Any]) -> Body:
    """The pod of a Job's template, owned by the Job and labelled as the Job controller labels it."""
    meta = job["metadata"]
    labels = {JOB_NAME_LABEL: meta["name"], CONTROLLER_UID_LABEL: meta["uid"]}
    return controlled_pod("batch/v1/Job", job, f"{meta['name']}-{secrets.token_hex(3)}", labels)


def _job_condition(type_: str, reason: str, message: str) -> Body:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": now,
        "lastTransitionTime": now,
    }


def job_status(job: Mapping[str, Any], pods: list[Body], now: float) -> Body | None:
    """The Job controller's status for ``job`` given its pods, or None when it has nothing to change.

    One pod, no retries (HELIOS's Jobs have backoffLimit 0): the pod's end is the Job's end.
    """
    status = job.get("status") or {}
    if any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in status.get("conditions") or []
    ):
        return None
    phases = [(p.get("status") or {}).get("phase") for p in pods]
    if "Succeeded" in phases:
        condition = _job_condition("Complete", "Completed", "")
        return {
            "succeeded": 1,
            "active": 0,
            "conditions": [condition],
            "completionTime": condition["lastTransitionTime"],
        }
    if "Failed" in phases:
        message = "Job has reached the specified backoff limit"
        return {"failed": 1, "active": 0, "conditions": [_job_condition("Failed", "BackoffLimitExceeded", message)]}
    deadline = job["spec"].get("activeDeadlineSeconds")
    started = status.get("startTime")
    if deadline is not None and started is not None:
        began = calendar.timegm(time.strptime(started, "%Y-%m-%dT%H:%M:%SZ"))
        if now - began > float(deadline):
            message = "Job was active longer than specified deadline"
            return {"active": 0, "conditions": [_job_condition("Failed", "DeadlineExceeded", message)]}
    if started is None:
        return {"active": len(pods), "startTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
    return None


class MissingReference(ValueError):
    """An env var refers to a ConfigMap key that does not exist (kubelet: CreateContainerConfigError)."""


# "ConfigMap/NAME" or "Secret/NAME" -> its data (a Secret's decoded), None if there is no such object
ConfigMapData = Callable[[str], Mapping[str, str] | None]


CLAIMS_DIR = "_claims"  # beside the pods' directories; "_" is in no pod name


def mount_dirs(pod: Mapping[str, Any], workdir: Path, claims: Path | None = None) -> dict[str, Path]:
    """mountPath -> the directory that stands for it: inside ``workdir`` (the pod's own), or for a
    PersistentVolumeClaim ``claims/<claimName>`` (default: ``workdir.parent/_claims``), shared by every
    pod that mounts the claim."""
    claims = claims if claims is not None else workdir.parent / CLAIMS_DIR
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    dirs = {}
    for mount in pod["spec"]["containers"][0].get("volumeMounts") or []:
        claim = (volumes.get(mount["name"]) or {}).get("persistentVolumeClaim")
        if claim is not None:
            dirs[mount["mountPath"]] = claims / claim["claimName"] / mount.get("subPath", "")
        else:
            dirs[mount["mountPath"]] = workdir / mount["mountPath"].lstrip("/")
    return dirs


def map_path(value: str, dirs: Mapping[str, Path]) -> str:
    """``value`` with a leading mount path replaced by its directory (the longest mount that matches);
    in a JSON list or object, every string in it."""
    if value[:1] in "[{":
        try:
            document = json.loads(value)
        except ValueError:
            return value
        return json.dumps(_map_json(document, dirs))
    for mount in sorted(dirs, key=len, reverse=True):
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return str(dirs[mount] / value[len(mount) :].lstrip("/"))
    return value


def _map_json(document: Any, dirs: Mapping[str, Path]) -> Any:
    if isinstance(document, str):
        return map_path(document, dirs) if document.startswith("/") else document
    if isinstance(document, list):
        return [_map_json(item, dirs) for item in document]
    if isinstance(document, dict):
        return {key: _map_json(item, dirs) for key, item in document.items()}
    return document


def container_env(
    pod: Mapping[str, Any], workdir: Path, config_maps: ConfigMapData = lambda _: None, claims: Path | None = None
) -> dict[str, str]:
    """The container's env as kubelet resolves it at start: ConfigMap and Secret key references read through
    ``config_maps``, paths under its volume mounts moved to the directories that stand for them (``mount_dirs``)."""
    container = pod["spec"]["containers"][0]
    dirs = mount_dirs(pod, workdir, claims)
    env = {}
    for var in container.get("env") or []:
        value = str(var.get("value", ""))
        source = var.get("valueFrom") or {}
        if ref := source.get("configMapKeyRef") or source.get("secretKeyRef"):
            kind = "ConfigMap" if "configMapKeyRef" in source else "Secret"
            data = config_maps(f"{kind}/{ref['name']}") or {}
            if ref["key"] not in data:
                raise MissingReference(f"{kind} {ref['name']} has no key {ref['key']!r}")
            value = data[ref["key"]]
        elif source:
            continue  # fieldRef and the rest: not used by the workers this runner starts
        env[var["name"]] = map_path(value, dirs)
    return env


def serve_command(pod: Mapping[str, Any]) -> list[str]:
    """The container command, with the image's entry point (``helios-worker``) run by this Python."""
    command = list(pod["spec"]["containers"][0].get("command") or ["helios-worker", "serve"])
    if command[0] == "helios-worker":
        command = [sys.executable, "-m", "helios_worker.cli", *command[1:]]
    return command


def start_container(pod: Mapping[str, Any], workdir: Path, config_maps: ConfigMapData = lambda _: None) -> PodProcess:
    """kubelet starting the pod's container: ``helios serve`` on a free port of 127.0.0.1."""
    name = pod["metadata"]["name"]
    pod_dir = workdir / name
    pod_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = {key: value for key, value in os.environ.items() if not key.startswith("HELIOS_")}
    resolved = container_env(pod, pod_dir, config_maps)
    env = {**base, **resolved, "HELIOS_HOST": "127.0.0.1", "HELIOS_PORT": str(port)}
    control_url = None
    if "HELIOS_CONTROL_PORT" in resolved:  # the pod's second container port, on a free port here too
        env["HELIOS_CONTROL_PORT"] = str(control_port := free_port())
        control_url = f"http://127.0.0.1:{control_port}"
    log_path = pod_dir / "worker.log"
    with log_path.open("wb") as output:
        process = subprocess.Popen(
            serve_command(pod), env=env, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    log.info("pod %s: started pid %d on port %d", name, process.pid, port)
    grace = pod["spec"].get("terminationGracePeriodSeconds")
    url = f"http://127.0.0.1:{port}"
    return PodProcess(name, process, url, log_path, control_url, pre_stop=pre_stop_sleep(pod), grace=grace)


def write_config_map_volumes(pod: Mapping[str, Any], dirs: Mapping[str, Path], config_maps: ConfigMapData) -> None:
    """kubelet's ConfigMap volumes: each key a file in the mount's directory (an ``optional`` one that is
    missing: an empty directory)."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    for mount in pod["spec"]["containers"][0].get("volumeMounts") or []:
        source = (volumes.get(mount["name"]) or {}).get("configMap")
        if source is None:
            continue
        data = config_maps(f"ConfigMap/{source['name']}")
        if data is None and not source.get("optional"):
            raise MissingReference(f"ConfigMap {source['name']} not found (volume {mount['name']})")
        directory = dirs[mount["mountPath"]]
        directory.mkdir(parents=True, exist_ok=True)
        for key, value in (data or {}).items():
            (directory / key).write_text(value, encoding="utf-8")


def start_job_container(
    pod: Mapping[str, Any], workdir: Path, config_maps: ConfigMapData, claims: Path | None = None
) -> PodProcess:
    """kubelet starting a Job pod's container: its command (paths mapped like env values), run to completion."""
    name = pod["metadata"]["name"]
    pod_dir = workdir / name
    pod_dir.mkdir(parents=True, exist_ok=True)
    dirs = mount_dirs(pod, pod_dir, claims)
    for directory in dirs.values():
        directory.mkdir(parents=True, exist_ok=True)
    write_config_map_volumes(pod, dirs, config_maps)
    base = {key: value for key, value in os.environ.items() if not key.startswith("HELIOS_")}
    env = {**base, **container_env(pod, pod_dir, config_maps, claims)}
    # The container's own arguments see its mounts; the interpreter standing in for the image's entry
    # point is this machine's, and stays as it is (a virtualenv under /tmp is not the pod's /tmp).
    container = pod["spec"]["containers"][0]
    args = [map_path(arg, dirs) if arg.startswith("/") else arg for arg in container.get("command") or []]
    command = serve_command({"spec": {"containers": [{**container, "command": args or None}]}})
    log_path = pod_dir / "container.log"
    with log_path.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.info("job pod %s: started pid %d: %s", name, process.pid, " ".join(command[2:]))
    return PodProcess(name, process, "", log_path)


def job_pod_status(container: PodProcess, container_name: str) -> Body:
    """Running, then Succeeded or Failed by exit status, with the log's tail as termination message."""
    code = container.process.poll()
    if code is None:
        return {"phase": "Running", "podIP": "127.0.0.1"}
    tail = container.log_path.read_text(encoding="utf-8", errors="replace")[-TERMINATION_LOG_CHARS:]
    terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
    if code != 0:
        terminated["message"] = tail
    ready = {"type": "Ready", "status": "False", "reason": "PodCompleted"}
    return {
        "phase": "Succeeded" if code == 0 else "Failed",
        "podIP": "127.0.0.1",
        "conditions": [ready],
        "containerStatuses": [{"name": container_name, "ready": False, "state": {"terminated": terminated}}],
    }


def stop_container(container: PodProcess, pre_stop: float, grace: float) -> int | None:
    """kubelet stopping a deleted pod: pre-stop delay, SIGTERM (the worker drains), SIGKILL by PID after ``grace``."""
    process = container.process
    time.sleep(pre_stop)
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        return process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        return process.wait(10)


def is_answering(url: str) -> bool:
    """The readiness probe: GET /ready answers 200."""
    try:
        return httpx.get(f"{url}/ready", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def pod_status(container: PodProcess) -> Body:
    """What kubelet reports: Running on 127.0.0.1, Ready as the probe says (Failed once the process exits)."""
    if container.has_exited:
        code = container.process.returncode
        ready = {"type": "Ready", "status": "False", "reason": "ContainerExited", "message": f"exit status {code}"}
        return {"phase": "Failed", "podIP": "127.0.0.1", "conditions": [ready]}
    ready = {"type": "Ready", "status": "True" if container.is_ready else "False"}
    return {"phase": "Running", "podIP": "127.0.0.1", "conditions": [ready]}


class PodRunner:
    """Deployment controller and kubelet for one namespace, polling the API server from a thread."""

    def __init__(self, kube: Kube, namespace: str, workdir: Path, pre_stop: float = PRE_STOP_SECONDS) -> None:
        self.kube, self.namespace, self.workdir, self.pre_stop = kube, namespace, workdir, pre_stop
        self.containers: dict[str, PodProcess] = {}
        self.started: list[int] = []  # every PID this runner started, for a last kill by PID
        self.stopping: list[threading.Thread] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pod-runner", daemon=True)
        self.errors: list[str] = []

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path | str, namespace: str, workdir: Path, **kwargs: Any) -> PodRunner:
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        return cls(Kube(kubernetes.client.ApiClient(configuration)), namespace, workdir, **kwargs)

    @property
    def pids(self) -> list[int]:
        return [c.process.pid for c in self.containers.values()]

    def start(self) -> PodRunner:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling and end every process this runner started (SIGKILL by PID after a short grace)."""
        self._stop.set()
        self._thread.join(timeout=30)
        for container in list(self.containers.values()):
            stop_container(container, pre_stop=0.0, grace=5.0)
        for thread in self.stopping:
            thread.join(timeout=GRACE_SECONDS + 15)
        self.containers.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except (KubeError, OSError, ValueError) as error:  # the API server restarting, say: retry
                log.warning("pod runner step failed: %r", error)
                self.errors.append(repr(error))
            self._stop.wait(POLL_SECONDS)

    def step(self) -> None:
        """One pass: Deployments to pods, pods to processes, processes to pod status."""
        for deployment in self._list("/apis/apps/v1", "deployments"):
            if "HeliosDeployment" in owner_kinds(deployment):
                self.sync_deployment(deployment)
        for job in self._list("/apis/batch/v1", "jobs"):
            if "HeliosDeployment" in owner_kinds(job):
                self.sync_job(job)
        pods = {p["metadata"]["name"]: p for p in self._list("/api/v1", "pods") if self._is_runnable(p)}
        for name in set(self.containers) - set(pods):
            self.kill(name)
        for pod in pods.values():
            if "Job" in owner_kinds(pod):
                self.sync_job_pod(pod)
            else:
                self.sync_pod(pod)

    def _list(self, prefix: str, plural: str, labels: Mapping[str, str] = MANAGED_BY) -> list[Body]:
        selector = ",".join(f"{key}={value}" for key, value in labels.items())
        path = f"{prefix}/namespaces/{self.namespace}/{plural}"
        return self.kube.request("GET", path, query={"labelSelector": selector}).get("items", [])

    @staticmethod
    def _is_runnable(pod: Mapping[str, Any]) -> bool:
        return not pod["metadata"].get("deletionTimestamp") and bool(
            owner_kinds(pod) & {"HeliosDeployment", "Deployment", "Job"}
        )

    def sync_deployment(self, deployment: Body) -> None:
        """The Deployment controller's step for one Deployment (see ``rollout_step``)."""
        selector = deployment["spec"]["selector"]["matchLabels"]
        pods = [
            p
            for p in self._list("/api/v1", "pods", selector)
            if owned_by(p, deployment) and not p["metadata"].get("deletionTimestamp")
        ]
        is_create, doomed = rollout_step(deployment, pods)
        if is_create:
            pod = build_pod(deployment, template_hash(deployment["spec"]["template"]))
            self.kube.apply(pod)
            log.info("deployment %s: created pod %s", deployment["metadata"]["name"], pod["metadata"]["name"])
        if doomed is not None:
            self.kube.delete("Pod", self.namespace, doomed)
            log.info("deployment %s: deleted pod %s", deployment["metadata"]["name"], doomed)

    def sync_pod(self, pod: Body) -> None:
        """kubelet's step for one pod: start its container once, then report what the probe sees."""
        name = pod["metadata"]["name"]
        container = self.containers.get(name)
        if container is None:
            try:
                container = start_container(pod, self.workdir, self._config_map_data)
            except MissingReference as error:  # kubelet retries such a pod; so does the next pass
                log.info("pod %s: %s", name, error)
                return
            self.containers[name] = container
            self.started.append(container.process.pid)
            annotations = {ENDPOINT_ANNOTATION: container.url}
            if container.control_url is not None:
                annotations[CONTROL_ENDPOINT_ANNOTATION] = container.control_url
            self._patch(name, {"metadata": {"annotations": annotations}})
            self._patch(name, {"status": pod_status(container)}, subresource="/status")
            return
        container.has_exited = container.process.poll() is not None
        # As kubelet: one answer makes a pod ready; it turns unready after failureThreshold misses in a
        # row (a busy worker missing one 1-second probe keeps its endpoint), or at once when it exited.
        answered = not container.has_exited and is_answering(container.url)
        container.misses = 0 if answered else container.misses + 1
        container.is_ready = answered or (
            container.is_ready and not container.has_exited and container.misses < container.failure_threshold
        )
        wanted = pod_status(container)
        if ((pod.get("status") or {}).get("phase"), is_ready(pod)) != (wanted["phase"], container.is_ready):
            self._patch(name, {"status": wanted}, subresource="/status")

    def sync_job(self, job: Body) -> None:
        """The Job controller's step for one Job: its pod once, then its status from the pod's."""
        pods = [p for p in self._list("/api/v1", "pods", {JOB_NAME_LABEL: job["metadata"]["name"]}) if owned_by(p, job)]
        status = job_status(job, pods, time.time())
        if not pods and not (job.get("status") or {}).get("conditions"):
            pod = build_job_pod(job)
            self.kube.apply(pod)
            log.info("job %s: created pod %s", job["metadata"]["name"], pod["metadata"]["name"])
        if status is not None:
            if any(c["reason"] == "DeadlineExceeded" for c in status.get("conditions", [])):
                for pod in pods:  # the controller ends the pods of a Job past its deadline
                    self.kube.delete("Pod", self.namespace, pod["metadata"]["name"])
            path = f"/apis/batch/v1/namespaces/{self.namespace}/jobs/{job['metadata']['name']}/status"
            self.kube.request("PATCH", path, body={"status": status}, content_type=MERGE_PATCH)

    def sync_job_pod(self, pod: Body) -> None:
        """kubelet's step for a Job's pod: run its command once; report Running, then how it ended."""
        name = pod["metadata"]["name"]
        container = self.containers.get(name)
        if container is None:
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                return  # ended before this runner started: kubelet does not run it again
            try:
                container = start_job_container(pod, self.workdir, self._config_map_data, self.workdir / CLAIMS_DIR)
            except MissingReference as error:
                log.info("pod %s: %s", name, error)
                return
            self.containers[name] = container
            self.started.append(container.process.pid)
        wanted = job_pod_status(container, pod["spec"]["containers"][0]["name"])
        if (pod.get("status") or {}).get("phase") != wanted["phase"]:
            self._patch(name, {"status": wanted}, subresource="/status")

    def _config_map_data(self, key: str) -> Mapping[str, str] | None:
        kind, _, name = key.partition("/")
        data = (self.kube.get(kind, self.namespace, name) or {}).get("data")
        if kind == "Secret" and data is not None:
            return {k: base64.b64decode(v).decode() for k, v in data.items()}
        return data

    def _patch(self, name: str, body: Body, subresource: str = "") -> None:
        path = f"/api/v1/namespaces/{self.namespace}/pods/{name}{subresource}"
        try:
            self.kube.request("PATCH", path, body=body, content_type=MERGE_PATCH)
        except KubeError as error:
            if error.status != 404:  # deleted since it was listed: the next pass stops its process
                raise

    def kill(self, name: str) -> None:
        """The pod is gone from the API: stop its process in the background (pre-stop, SIGTERM, SIGKILL)."""
        container = self.containers.pop(name)
        log.info("pod %s deleted: stopping pid %d", name, container.process.pid)
        # The pod's own preStop sleep and grace period, as kubelet runs them (the runner's defaults otherwise).
        pre_stop = container.pre_stop if container.pre_stop is not None else self.pre_stop
        grace = max(0.0, float(container.grace) - pre_stop) if container.grace is not None else GRACE_SECONDS
        args = (container, pre_stop, grace)
        thread = threading.Thread(target=stop_container, args=args, daemon=True)
        thread.start()
        self.stopping.append(thread)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--workdir", default="helios-pods")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    runner = PodRunner.from_kubeconfig(args.kubeconfig, args.namespace, Path(args.workdir)).start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        runner.stop()


if __name__ == "__main__":
    main()
