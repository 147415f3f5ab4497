"""A local Kubernetes API server for contract tests, without a cluster.

It is kmock's ``KubernetesEmulator`` (from kopf's author) with the glue that kopf and the real
``kubectl`` need. kmock supplies the HTTP plumbing, the request parsing, the Kubernetes ``Status``
error bodies, the discovery scaffold with bundled built-in resources, the DSL for extra test
reactions (``emulator['get /x'] << 500``), and the per-object history (``emulator.objects``).
This module replaces kmock's naive "merge the JSON" state changes with what the real API server
does; every ``KubeApiEmulator`` method that fixes a gap says in its docstring what the server does.

Supported: CRDs (apply one, then CRUD its kinds, discovery with shortNames and categories, the
``status`` and ``scale`` subresources, ``additionalPrinterColumns`` as a Table), any built-in kind
kmock knows (Pods, Services, ConfigMaps, Events, Deployments, Jobs, Leases, Namespaces, ...),
namespaced and cluster-wide list/watch with ``resourceVersion`` resumption, bookmarks and
``timeoutSeconds``, label and field selectors, merge / strategic-merge (approximate) / JSON patch,
PUT with optimistic concurrency, DELETE with finalizers, ownerReference garbage collection and
namespace cascade, server-set ``uid`` / ``creationTimestamp`` / ``resourceVersion`` / ``generation``.
Custom resources are admitted as a real server admits them: pruned, defaulted and validated
against the CRD's structural schema and its CEL rules, with the server's 422 error shape
(``tests/k8s_admission.py``). Requests are authenticated by bearer token and authorized by the
RBAC objects stored here, with 401/403 in the server's words (``tests/k8s_rbac.py``).

Not supported (tests must not rely on them): validation of built-in kinds, admission webhooks,
TLS (so kubectl, which sends no token over plain HTTP, is the admin; ``--as`` impersonates), CRD
version conversion (each served version is its own store), ``dryRun``, server-side apply,
``deletecollection``, list pagination (everything comes in one page), Protobuf (so kubectl's
typed generators such as ``kubectl create configmap`` get a 415; use ``kubectl apply -f`` /
``create -f``), controllers (nothing schedules Pods or rolls out Deployments), built-in printer
columns (built-in kinds show only Name and Age), foreground deletion (it behaves like background),
namespace existence checks, and watch DELETED events for objects that merely stop matching a
label selector. Every kind gets ``metadata.generation``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import json
import re
import secrets
import socket
import threading
import uuid
import warnings
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import yaml

from tests import k8s_rbac as rbac
from tests.k8s_admission import CustomResourceSchema, Rejected, crd_schemas

Body = dict[str, Any]
ObjectKey = tuple[kmock.resource, str | None, str]
LabelMatcher = Callable[[Mapping[str, str]], bool]

CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
RBAC_KINDS = [
    kmock.resource("rbac.authorization.k8s.io", "v1", plural)
    for plural in ("roles", "clusterroles", "rolebindings", "clusterrolebindings")
]
ADMIN_TOKEN = "emulator-dummy-token"  # what write_kubeconfig writes: the test's own kubectl is an admin
BLOCK_OWNER_DELETION = (
    "cannot set blockOwnerDeletion if an ownerReference refers to a resource you can't set finalizers on"
)
NAMESPACES = kmock.resource("", "v1", "namespaces")
WATCH_CONTENT_TYPE = "application/json;stream=watch"
PROTOBUF_REFUSAL = {
    "apiVersion": "v1",
    "kind": "Status",
    "status": "Failure",
    "code": 415,
    "reason": "UnsupportedMediaType",
    "message": "the emulator reads JSON only; use `kubectl apply -f` / `create -f` instead of typed generators",
}
STANDARD_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
# Built-in kinds whose /scale maps onto .spec.replicas (label selectors are not rendered for them).
BUILTIN_SCALE_PATHS = {
    kmock.resource("apps", "v1", plural): (".spec.replicas", ".status.replicas", None)
    for plural in ("deployments", "replicasets", "statefulsets")
}


def api_error(code: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    """Build an error whose ``reason`` is a real ``StatusReason``.

    kmock's own errors use free-text reasons ("Object Not Found"); kubectl and client-go decide
    by ``reason`` (``NotFound``, ``AlreadyExists``, ``Conflict``, ...), so ``kubectl apply`` could
    not tell "absent, create it" from a failure.
    """
    return kmock.KubernetesError(status=code, reason=reason, message=message, details=details or None)


def now_rfc3339() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def human_age(timestamp: str | None) -> str:
    """Render a timestamp as kubectl's AGE column does ("42s", "5m", "3h", "2d")."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    seconds = max(0, int((datetime.datetime.now(tz=datetime.UTC) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# ---------------------------------------------------------------------------------------------
# Patches (pure)
# ---------------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """An approximation of strategic merge patch, enough for ``kubectl apply`` / ``patch``.

    The real server merges lists by per-field merge keys from the Go types. Here every list of
    objects that all carry ``name`` is merged by ``name`` (containers, env, volumes, ports with
    names), ``$setElementOrder/<list>`` fixes membership and order, ``$patch: delete`` removes
    an element, other ``$`` directives are dropped, and other lists are replaced.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif _is_named_list(value) and _is_named_list(result.get(key)):
            order = patch.get(f"$setElementOrder/{key}")
            result[key] = _merge_named_lists(result[key], value, order)
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _is_named_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) and "name" in item for item in value)


def _merge_named_lists(current: list[Body], patch: list[Body], order: list[Body] | None) -> list[Body]:
    merged = {item["name"]: item for item in current}
    for item in patch:
        if item.get("$patch") == "delete":
            merged.pop(item["name"], None)
        else:
            merged[item["name"]] = strategic_merge_patch(merged.get(item["name"]), item)
    names = [entry["name"] for entry in order] if order else list(merged)
    return [merged[name] for name in names if name in merged]


def json_patch(target: Body, operations: Any) -> Body:
    """RFC 6902 JSON patch; a failed ``test`` is 422, which kopf reads as "retry on a fresh body"."""
    if not isinstance(operations, list):
        raise api_error(400, "BadRequest", "a JSON patch must be a list of operations")
    try:
        return jsonpatch.apply_patch(target, operations)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise api_error(422, "Invalid", f"the JSON patch cannot be applied: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Selectors and JSON paths (pure)
# ---------------------------------------------------------------------------------------------

_LABEL_REQUIREMENT = re.compile(
    r"^\s*(?P<neg>!?)\s*(?P<key>[\w./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[\w.-]*)|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$"
)


def split_selector(text: str) -> list[str]:
    """Split a selector at the commas that are not inside ``in (a, b)`` parentheses."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [part for part in parts if part.strip()]


def parse_label_selector(text: str | None) -> LabelMatcher:
    """Compile a label selector (``a=b,c!=d,e in (x,y),f notin (z),g,!h``) into a predicate."""
    checks = [_parse_label_requirement(part) for part in split_selector(text or "")]
    return lambda labels: all(check(labels) for check in checks)


def _parse_label_requirement(text: str) -> LabelMatcher:
    match = _LABEL_REQUIREMENT.match(text)
    if match is None:
        raise api_error(400, "BadRequest", f"unable to parse requirement: {text!r}")
    key, op, value, setop = match["key"], match["op"], match["value"], match["setop"]
    if match["neg"]:
        return lambda labels: key not in labels
    if op in ("=", "=="):
        return lambda labels: labels.get(key) == value
    if op == "!=":
        return lambda labels: labels.get(key) != value
    if setop:
        values = {item.strip() for item in match["values"].split(",")}
        if setop == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    return lambda labels: key in labels


def lookup_path(body: Any, dotted: str) -> Any:
    """Follow ``.a.b.c`` (or ``a.b.c``) through nested dicts; None when any step is absent."""
    for part in dotted.strip(".").split("."):
        body = body.get(part) if isinstance(body, dict) else None
    return body


def field_value_text(value: Any) -> str:
    """Field selectors compare strings; Go prints booleans in lower case."""
    if isinstance(value, bool):
        return str(value).lower()
    return "" if value is None else str(value)


def parse_field_selector(text: str | None) -> Callable[[Body], bool]:
    """Compile a field selector. Any dotted path works (the real server allows only a few)."""
    checks: list[Callable[[Body], bool]] = []
    for part in split_selector(text or ""):
        match = re.fullmatch(r"\s*([\w./-]+)\s*(==|=|!=)\s*(.*?)\s*", part)
        if match is None:
            raise api_error(400, "BadRequest", f"invalid field selector: {part!r}")
        path, op, expected = match.groups()
        equal = op != "!="
        checks.append(lambda body, p=path, e=expected, eq=equal: (field_value_text(lookup_path(body, p)) == e) == eq)
    return lambda body: all(check(body) for check in checks)


_JSON_PATH_STEP = re.compile(
    r"\.(?P<field>[\w-]+)|\[(?P<index>\d+)\]|\[\?\(@\.(?P<fkey>[\w.-]+)\s*==\s*[\"'](?P<fvalue>[^\"']*)[\"']\)\]"
)


def eval_json_path(body: Body, expression: str) -> Any:
    """Evaluate the JSONPath subset printer columns use: ``.a.b``, ``[0]``, ``[?(@.k=="v")]``."""
    expression = expression.strip().removeprefix("{").removesuffix("}")
    candidates: list[Any] = [body]
    for step in _JSON_PATH_STEP.finditer(expression):
        candidates = [found for item in candidates for found in _json_path_step(item, step)]
    return candidates[0] if candidates else None


def _json_path_step(item: Any, step: re.Match[str]) -> list[Any]:
    if step["field"] is not None:
        return [item[step["field"]]] if isinstance(item, dict) and step["field"] in item else []
    if step["index"] is not None:
        index = int(step["index"])
        return [item[index]] if isinstance(item, list) and index < len(item) else []
    elements = item if isinstance(item, list) else []
    return [el for el in elements if field_value_text(lookup_path(el, step["fkey"])) == step["fvalue"]]


# ---------------------------------------------------------------------------------------------
# Watches
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class WatchSubscription:
    """One open watch request: what it wants, and a queue of events for it (None = close)."""

    resource: kmock.resource
    namespace: str | None
    labels: LabelMatcher
    fields: Callable[[Body], bool]
    queue: asyncio.Queue[Body | None] = field(default_factory=asyncio.Queue)

    def wants(self, resource: kmock.resource, body: Body) -> bool:
        meta = body.get("metadata", {})
        return (
            resource == self.resource
            and (self.namespace is None or meta.get("namespace") == self.namespace)
            and self.labels(meta.get("labels") or {})
            and self.fields(body)
        )


# ---------------------------------------------------------------------------------------------
# The emulator
# ---------------------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class KubeApiEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the state changes of a real API server (see the module docstring)."""

    bookmark_interval: float = 5.0
    event_log_size: int = 4096
    _last_rv: int = attrs.field(default=0, init=False)
    _event_log: deque[tuple[int, kmock.resource, Body]] = attrs.field(init=False)
    _watches: list[WatchSubscription] = attrs.field(factory=list, init=False)
    _schemas: dict[kmock.resource, CustomResourceSchema] = attrs.field(factory=dict, init=False)
    # bearer token -> who sends it; issue_token() adds one. No token: the admin; an unknown one: 401.
    tokens: dict[str, rbac.User] = attrs.field(factory=lambda: {ADMIN_TOKEN: rbac.ADMIN})
    # (user, what was asked, whether it was granted) for every request RBAC decided (admins skip RBAC)
    audit: list[tuple[str, rbac.Attributes, bool]] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._event_log = deque(maxlen=self.event_log_size)
        # kmock knows resources only once objects exist; kubectl and kopf discover first.
        with warnings.catch_warnings():  # kmock 0.8 reads its bundle with a deprecated API
            warnings.simplefilter("ignore", DeprecationWarning)
            self.resources.load_bundled()
        # kmock guesses no action for PUT, so a replace would fall through to "404 endpoint".
        self.fallback[kmock.method.PUT] << self._serve_replace
        self.fallback["get /openapi/v3"] << self._serve_openapi_root
        self.fallback["get", re.compile(r"/openapi/v3/(apis?/.+)")] << self._serve_openapi_group_version
        self._seed_namespace("default")

    # -- plumbing -------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Refuse Protobuf bodies clearly; route ``/api/v1/namespaces[/name]`` to Namespaces.

        kubectl's typed generators (``kubectl create configmap ...``) send Protobuf, which
        nothing here can decode; a 415 says so instead of a confusing "bad JSON" error
        (``kubectl create/apply -f`` send JSON and work).

        kmock's path parser reads ``namespaces/<x>`` as a namespace scope only, so the
        Namespace objects themselves were unreachable (and ``/api/v1/namespaces`` crashed it).
        The path is rewritten to ``namespaces//namespaces/<x>``: an empty scope, which this
        class treats as cluster scope, followed by the kind and the name.
        """
        if raw_request.headers.get("Content-Type", "").startswith("application/vnd.kubernetes.protobuf"):
            return aiohttp.web.json_response(PROTOBUF_REFUSAL, status=415)
        match = re.fullmatch(r"/api/v1/namespaces(/[^/]+(?:/status|/finalize)?)?", raw_request.path)
        if match:
            rewritten = raw_request.rel_url.with_path("/api/v1/namespaces//namespaces" + (match[1] or ""))
            raw_request = raw_request.clone(rel_url=rewritten)
        return await super().__call__(raw_request)

    async def _serve_server_version(self, request: kmock.Request) -> kmock.Payload:
        """Claim a current version: kmock's v1.26 makes kubectl warn about version skew."""
        return {"major": "1", "minor": "36", "gitVersion": "v1.36.0-emulator", "platform": "linux/amd64"}

    async def _serve_openapi_root(self, request: kmock.Request) -> kmock.Payload:
        """List one OpenAPI v3 document per served group/version.

        Without OpenAPI, ``kubectl apply`` stops with "failed to download openapi". The documents
        only declare that PATCH takes ``fieldValidation``, so kubectl delegates validation to the
        server (which, being an emulator, validates nothing) instead of needing real schemas.
        """
        paths = {_api_path(r).lstrip("/"): {"serverRelativeURL": f"/openapi/v3{_api_path(r)}"} for r in self.resources}
        return {"paths": paths}

    async def _serve_openapi_group_version(self, request: kmock.Request) -> kmock.Payload:
        """One group/version's OpenAPI v3 document: a PATCH operation per kind, nothing more."""
        wanted = request.url.path.removeprefix("/openapi/v3")
        paths = {
            f"{_api_path(r)}/{r.plural}/{{name}}": {"patch": _openapi_patch_operation(r, self.resources[r])}
            for r in self.resources
            if _api_path(r) == wanted
        }
        if not paths:
            raise api_error(404, "NotFound", f"no OpenAPI document for {wanted}")
        return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.36.0"}, "paths": paths}

    async def _serve_version(self, request: kmock.Request) -> kmock.Payload:
        """APIResourceList for one group/version, with subresources described as the server does.

        kmock copied shortNames and categories onto ``pods/status`` and the like, and kubectl
        then found every short name ambiguous ("the server doesn't have a resource type cm").
        """
        resources = [r for r in self._get_resources() if request.resource.check(r)]
        if not resources:
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        entries = [entry for r in resources for entry in _discovery_entries(r, self.resources[r])]
        return {
            "apiVersion": "v1",
            "kind": "APIResourceList",
            "groupVersion": _api_version(request.resource),
            "resources": entries,
        }

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """Authenticate and authorize, then skip ``KubernetesEmulator._handle``, which merges
        every write into the stored JSON.

        The state changes happen in the ``_serve_*`` fallbacks below instead, so a test's own
        kmock reactions still take priority over the emulated server. kmock accepted any token;
        the server answers 401 to an unknown one and 403 to what RBAC does not grant.
        """
        user = self._user(request)
        if not user.is_admin and request.resource is not None and request.resource.plural:
            self._authorize(user, self._attributes(request))
        return await kmock.KubernetesScaffold._handle(self, request)

    # -- authentication and authorization -----------------------------------------------------

    def issue_token(self, user: rbac.User) -> str:
        """A bearer token that authenticates as ``user`` (e.g. a ServiceAccount) from now on."""
        token = secrets.token_urlsafe(24)
        self.tokens[token] = user
        return token

    def _user(self, request: kmock.Request) -> rbac.User:
        """Who sent the request: its bearer token's user, acting as ``Impersonate-User`` if set.

        kubectl sends no token over plain HTTP, so a request without one is the test's admin
        (the emulator serves no TLS); an unknown token is a 401, as on a cluster. An admin may
        impersonate anyone (``kubectl --as=system:serviceaccount:NS:NAME``), so a test sees what
        kubectl prints for that user.
        """
        scheme, _, token = _header(request, "Authorization").partition(" ")
        user = self.tokens.get(token) if scheme.lower() == "bearer" else rbac.ADMIN if not token else None
        if user is None:
            raise api_error(401, "Unauthorized", "Unauthorized")
        impersonated = _header(request, "Impersonate-User")
        if impersonated and user.is_admin:
            return rbac.User.named(impersonated)
        return user

    def _attributes(self, request: kmock.Request) -> rbac.Attributes:
        resource = request.resource
        info = self.resources.get(resource)
        namespace = (request.namespace or None) if info is None or info.namespaced else None
        is_watch = request.params.get("watch") in ("true", "1")
        verb = rbac.request_verb(str(request.method.value), request.name is not None, is_watch)
        return rbac.Attributes(
            verb, resource.group or "", resource.plural, request.subresource, namespace, request.name
        )

    def _is_allowed(self, user: rbac.User, attributes: rbac.Attributes) -> bool:
        rbac_objects = [body for kind in RBAC_KINDS for _, body in self._live_items(kind)]
        allowed = rbac.authorize(user, attributes, rbac_objects)
        self.audit.append((user.name, attributes, allowed))
        return allowed

    def _authorize(self, user: rbac.User, attributes: rbac.Attributes) -> None:
        """403 Forbidden unless a Role or ClusterRole bound to ``user`` grants ``attributes``."""
        if not self._is_allowed(user, attributes):
            raise _forbidden(attributes, rbac.forbidden_reason(user, attributes))

    def _check_owner_references(self, request: kmock.Request, body: Body, old: Body | None) -> None:
        """Setting ``blockOwnerDeletion`` needs ``update`` on the owner's ``finalizers``.

        That is the OwnerReferencesPermissionEnforcement admission plugin, on in most clusters;
        admins are exempt, as everything is allowed to them.
        """
        user = self._user(request)
        for ref in [] if user.is_admin else rbac.owner_references_to_check(body, old):
            owner = self._resource_of(ref.get("apiVersion", ""), ref.get("kind", ""))
            if owner is None:
                continue
            namespace = body["metadata"].get("namespace") if self.resources[owner].namespaced else None
            finalizers = rbac.Attributes(
                "update", owner.group or "", owner.plural, "finalizers", namespace, ref["name"]
            )
            if not self._is_allowed(user, finalizers):
                written = rbac.Attributes(
                    "create",
                    request.resource.group or "",
                    request.resource.plural,
                    None,
                    namespace,
                    body["metadata"]["name"],
                )
                raise _forbidden(written, f"{BLOCK_OWNER_DELETION}: {rbac.forbidden_reason(user, finalizers)}")

    def _resource_of(self, api_version: str, kind: str) -> kmock.resource | None:
        group, _, version = api_version.rpartition("/")
        for resource, info in self.resources.items():
            if info.kind == kind and (resource.group or "") == group and resource.version == version:
                return resource
        return None

    def _get_resources(self) -> list[kmock.resource]:
        """Discovery lists registered kinds only, not kinds of leftover (deleted) objects."""
        return kmock.KubernetesScaffold._get_resources(self)

    def close_watches(self) -> None:
        """End every open watch stream, so that the HTTP server can shut down promptly."""
        for watch in self._watches:
            watch.queue.put_nowait(None)

    @property
    def resource_version(self) -> str:
        return str(self._last_rv)

    # -- storage ---------------------------------------------------------------------------

    def _info(self, request: kmock.Request) -> kmock.ResourceInfo:
        if request.resource not in self.resources:
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        return self.resources[request.resource]

    def _key(self, request: kmock.Request, name: str | None = None) -> ObjectKey:
        namespaced = self.resources[request.resource].namespaced
        namespace = (request.namespace or None) if namespaced else None
        return (request.resource, namespace, name or request.name or "")

    def _live(self, key: ObjectKey) -> Body | None:
        if key in self.objects and not self.objects[key].deleted:
            return copy.deepcopy(self.objects[key].raw)
        return None

    def _require(self, key: ObjectKey) -> Body:
        body = self._live(key)
        if body is None:
            resource, _, name = key
            qualified = f"{resource.plural}.{resource.group}" if resource.group else resource.plural
            raise api_error(404, "NotFound", f'{qualified} "{name}" not found', name=name, kind=resource.plural)
        return body

    def _live_items(self, resource: kmock.resource | None = None) -> Iterator[tuple[ObjectKey, Body]]:
        for key, obj in list(self.objects.items()):
            if (resource is None or key[0] == resource) and not obj.deleted:
                yield key, copy.deepcopy(obj.raw)

    def _next_rv(self) -> str:
        self._last_rv += 1
        return str(self._last_rv)

    def _store(self, key: ObjectKey, body: Body, event_type: str) -> None:
        """Persist a new version, then tell the event log and the open watches."""
        if key in self.objects:
            self.objects[key].history.append(copy.deepcopy(body))
        else:
            self.objects[key] = copy.deepcopy(body)
        self._broadcast(key[0], event_type, body)

    def _forget(self, key: ObjectKey, body: Body) -> None:
        self.objects[key].delete()  # kmock's soft deletion keeps the history for assertions
        self._broadcast(key[0], "DELETED", body)

    def _broadcast(self, resource: kmock.resource, event_type: str, body: Body) -> None:
        event = {"type": event_type, "object": copy.deepcopy(body)}
        self._event_log.append((self._last_rv, resource, event))
        for watch in self._watches:
            if watch.wants(resource, body):
                watch.queue.put_nowait(event)

    def _seed_namespace(self, name: str) -> None:
        meta = self._new_metadata({"name": name}, namespace=None)
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": meta, "status": {"phase": "Active"}}
        self._store((NAMESPACES, None, name), body, "ADDED")

    # -- reads -----------------------------------------------------------------------------

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        """GET one object; ``/scale`` is rendered as an ``autoscaling/v1`` Scale."""
        info = self._info(request)
        body = self._require(self._key(request))
        if request.subresource == "scale":
            return self._scale_view(request.resource, body)
        if request.subresource not in (None, "status"):
            raise api_error(404, "NotFound", f"no subresource {request.subresource!r}")
        if _wants_table(request):
            return self._table(request, info, [body])
        return body

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        """LIST with selectors; ``kind: <Kind>List`` and the list ``resourceVersion`` are filled in.

        kmock returned ``resourceVersion: "..."`` and no ``kind``; kopf resumes its watch from the
        list's resourceVersion and kubectl decodes by ``kind``.
        """
        info = self._info(request)
        items = self._select(request)
        if _wants_table(request):
            return self._table(request, info, items)
        return {
            "apiVersion": _api_version(request.resource),
            "kind": f"{info.kind}List",
            "metadata": {"resourceVersion": self.resource_version},
            "items": items,
        }

    def _select(self, request: kmock.Request) -> list[Body]:
        watch = self._subscription(request)
        return [body for key, body in self._live_items(request.resource) if watch.wants(key[0], body)]

    def _subscription(self, request: kmock.Request) -> WatchSubscription:
        fields = request.params.get("fieldSelector", "")
        if request.name:  # a watch on a named URL is a watch on that one name
            fields = ",".join(filter(None, [fields, f"metadata.name={request.name}"]))
        return WatchSubscription(
            resource=request.resource,
            namespace=request.namespace or None,
            labels=parse_label_selector(request.params.get("labelSelector")),
            fields=parse_field_selector(fields),
        )

    # -- watches ---------------------------------------------------------------------------

    async def _serve_watch(self, request: kmock.Request) -> kmock.Payload:
        """WATCH as the API server streams it.

        kmock replayed every object as ADDED on each (re)connection, ignored
        ``resourceVersion``, ``timeoutSeconds`` and ``allowWatchBookmarks``, and answered with
        a plain JSON content type; kubectl needs ``application/json;stream=watch``, and kopf
        resumes from a resourceVersion and treats a stream without bookmarks as dead after 70 s.
        """
        self._info(request)
        headers = {"Content-Type": WATCH_CONTENT_TYPE}
        return kmock.Response(headers=headers, payload=self._watch_stream(request))

    async def _watch_stream(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        # Snapshot and subscribe with no await in between: nothing can slip through the gap.
        watch = self._subscription(request)
        backlog = self._watch_backlog(request, watch)
        self._watches.append(watch)
        try:
            yield b""  # send the headers now, even if no event comes for a while
            for event in backlog:
                yield event
            if request.params.get("sendInitialEvents") == "true":
                yield self._bookmark(request.resource, initial_events_end=True)
            async for event in self._live_events(request, watch):
                yield event
        finally:
            self._watches.remove(watch)

    def _watch_backlog(self, request: kmock.Request, watch: WatchSubscription) -> list[Body]:
        since = request.params.get("resourceVersion", "")
        if not since.isdigit() or since == "0" or request.params.get("sendInitialEvents") == "true":
            return [{"type": "ADDED", "object": body} for body in self._select(request)]
        oldest = self._event_log[0][0] if self._event_log else self._last_rv
        if len(self._event_log) == self._event_log.maxlen and int(since) < oldest:
            gone = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired"}
            return [{"type": "ERROR", "object": {**gone, "message": f"too old resource version: {since}"}}]
        return [
            copy.deepcopy(event)
            for rv, resource, event in self._event_log
            if rv > int(since) and watch.wants(resource, event["object"])
        ]

    async def _live_events(self, request: kmock.Request, watch: WatchSubscription) -> AsyncIterator[Body]:
        loop = asyncio.get_running_loop()
        timeout = float(request.params.get("timeoutSeconds") or 1800)
        deadline = loop.time() + timeout
        bookmarks = request.params.get("allowWatchBookmarks") == "true"
        while (remaining := deadline - loop.time()) > 0:
            try:
                event = await asyncio.wait_for(watch.queue.get(), min(remaining, self.bookmark_interval))
            except TimeoutError:
                if bookmarks and deadline > loop.time():
                    yield self._bookmark(request.resource)
                continue
            if event is None:
                return
            yield event

    def _bookmark(self, resource: kmock.resource, initial_events_end: bool = False) -> Body:
        meta: Body = {"resourceVersion": self.resource_version}
        if initial_events_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        kind = self.resources[resource].kind
        return {"type": "BOOKMARK", "object": {"apiVersion": _api_version(resource), "kind": kind, "metadata": meta}}

    # -- create ----------------------------------------------------------------------------

    async def _serve_create(self, request: kmock.Request) -> kmock.Payload:
        """POST: the server owns ``uid``, ``creationTimestamp``, ``resourceVersion``, ``generation``.

        kmock stored the body as sent. The server also fills ``generateName`` (kopf posts its
        Events that way), drops ``status`` where a status subresource exists, and answers 201.
        """
        info = self._info(request)
        if request.subresource:
            raise api_error(405, "MethodNotAllowed", f"POST to {request.subresource!r} is not supported")
        body = _require_object(request.data)
        meta = body.setdefault("metadata", {})
        name = meta.get("name") or _generated_name(meta.get("generateName"))
        key = self._key(request, name)
        _check_namespace(info, request.namespace, meta.get("namespace"))
        if self._live(key) is not None:
            qualified = f"{request.resource.plural}.{request.resource.group}".rstrip(".")
            raise api_error(409, "AlreadyExists", f'{qualified} "{name}" already exists', name=name)
        body.update(apiVersion=_api_version(request.resource), kind=info.kind)
        body["metadata"] = self._new_metadata({**meta, "name": name}, namespace=key[1])
        if "status" in info.subresources and request.resource != CRDS:
            body.pop("status", None)
        if request.resource == CRDS:
            self._accept_crd(body)
        body, warnings = self._admit(request, body, None)
        self._check_owner_references(request, body, None)
        self._store(key, body, "ADDED")
        if request.resource == CRDS:
            self._register_crd(None, body)
        return kmock.Response(status=201, payload=body, headers=_warning_headers(warnings))

    def _new_metadata(self, meta: Body, namespace: str | None) -> Body:
        meta = {k: v for k, v in meta.items() if k not in ("deletionTimestamp", "generateName")}
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
        meta.update(resourceVersion=self._next_rv())
        if namespace is not None:
            meta["namespace"] = namespace
        return meta

    # -- update ----------------------------------------------------------------------------

    async def _serve_update(self, request: kmock.Request) -> kmock.Payload:
        """PATCH, by the patch type in Content-Type, as the API server dispatches it.

        kmock treated every PATCH as a dict merge: JSON patches (kopf's finalizer edits, guarded
        by a ``test`` on resourceVersion) were lost, and status/spec separation was ignored.
        Strategic merge patch is refused for custom resources with 415, as the real server does.
        """
        info = self._info(request)
        key = self._key(request)
        current = self._require(key)
        content_type = _header(request, "Content-Type").split(";")[0].strip()
        is_scale = request.subresource == "scale"
        base = self._scale_view(request.resource, current) if is_scale else current
        if content_type == "application/json-patch+json":
            patched = json_patch(base, request.data)
        elif content_type == "application/strategic-merge-patch+json":
            if _is_custom(request.resource):
                raise api_error(415, "UnsupportedMediaType", "strategic merge patch is not supported here")
            patched = strategic_merge_patch(base, _require_object(request.data))
        elif content_type in ("application/merge-patch+json", "application/json"):
            patched = merge_patch(base, _require_object(request.data))
        else:
            raise api_error(415, "UnsupportedMediaType", f"unsupported patch type {content_type!r}")
        return self._write_update(request, info, key, current, patched)

    async def _serve_replace(self, request: kmock.Request) -> kmock.Payload:
        """PUT replaces the whole object (or the whole status / scale)."""
        if not request.name:
            raise api_error(405, "MethodNotAllowed", "PUT needs an object name")
        info = self._info(request)
        key = self._key(request)
        current = self._require(key)
        return self._write_update(request, info, key, current, _require_object(request.data))

    def _write_update(
        self, request: kmock.Request, info: kmock.ResourceInfo, key: ObjectKey, old: Body, new: Body
    ) -> kmock.Payload:
        """Apply the server's rules to an update, then store it (or finish a pending deletion).

        * ``/status`` changes only ``status``; the main endpoint keeps ``status`` as it was
          when the kind has a status subresource; ``/scale`` changes only the replicas path.
        * ``metadata.generation`` grows when anything but metadata (and status, where it is a
          subresource) changes; ``resourceVersion`` grows on every real change, not on no-ops.
        * A sent ``resourceVersion`` that is not the current one is a 409 Conflict.
        * Server-owned metadata (uid, creationTimestamp, deletionTimestamp) cannot be changed,
          finalizers cannot be added once deletion started, and removing the last finalizer of
          a deleting object removes the object.
        * A custom resource is admitted as a whole (pruned, defaulted, validated: ``_admit``),
          whichever endpoint changed it.
        """
        sent_rv = (new.get("metadata") or {}).get("resourceVersion")
        if request.subresource != "scale" and sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
            raise api_error(409, "Conflict", "the object has been modified; apply your changes to the latest version")
        new = self._scope_update(request, info, old, new)
        new["metadata"] = _keep_server_metadata(old["metadata"], new.get("metadata") or {})
        _refuse_new_finalizers(old, new)
        if request.resource == CRDS:
            self._accept_crd(new)
        new, warnings = self._admit(request, new, old)
        self._check_owner_references(request, new, old)
        if new == old:
            return kmock.Response(
                payload=self._scale_view(request.resource, old) if request.subresource == "scale" else old,
                headers=_warning_headers(warnings),
            )
        if _content(new, info) != _content(old, info):
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        new["metadata"]["resourceVersion"] = self._next_rv()
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._remove(key, new)
        else:
            self._store(key, new, "MODIFIED")
            if request.resource == CRDS:
                self._register_crd(old, new)
        body = self._scale_view(request.resource, new) if request.subresource == "scale" else new
        return kmock.Response(payload=body, headers=_warning_headers(warnings))

    def _scope_update(self, request: kmock.Request, info: kmock.ResourceInfo, old: Body, new: Body) -> Body:
        if request.subresource == "status":
            return {**old, "status": new.get("status")} if "status" in new else _without(old, "status")
        if request.subresource == "scale":
            replicas = (new.get("spec") or {}).get("replicas")
            spec_path = self._scale_paths(request.resource)[0]
            return _set_path(old, spec_path, replicas)
        if request.subresource is not None:
            raise api_error(404, "NotFound", f"no subresource {request.subresource!r}")
        new = {**new, "apiVersion": old["apiVersion"], "kind": old["kind"]}
        if "status" in info.subresources:
            return {**new, "status": old["status"]} if "status" in old else _without(new, "status")
        return new

    def _admit(self, request: kmock.Request, body: Body, old: Body | None) -> tuple[Body, list[str]]:
        """Prune, default and validate a custom resource against its CRD (``tests.k8s_admission``).

        kmock stored whatever was sent. The server answers a 422 ``Invalid`` naming each bad
        field (a 400 for unknown fields under ``?fieldValidation=Strict``) and otherwise stores
        the pruned, defaulted object, with a ``Warning`` header per unknown field it dropped.
        """
        schema = self._schemas.get(request.resource)
        if schema is None:
            return body, []
        try:
            return schema.admit(body, old, request.params.get("fieldValidation", ""))
        except Rejected as rejected:
            raise api_error(rejected.status, rejected.reason, rejected.message, **rejected.details) from None

    # -- delete ----------------------------------------------------------------------------

    async def _serve_delete(self, request: kmock.Request) -> kmock.Payload:
        """DELETE with finalizers, preconditions and garbage collection.

        kmock honoured finalizers but collected no dependents. The server sets
        ``deletionTimestamp`` (and bumps ``generation``) while finalizers remain, removes the
        object when they are gone, then the garbage collector deletes every object whose
        ``ownerReferences`` no longer point at a live owner (``propagationPolicy: Orphan``
        instead strips those references).
        """
        self._info(request)
        key = self._key(request)
        current = self._require(key)
        options = {**(request.data if isinstance(request.data, dict) else {}), **request.params}
        _check_preconditions(current, options.get("preconditions") or {})
        return self._delete(key, current, options.get("propagationPolicy") or "Background")

    def _delete(self, key: ObjectKey, body: Body, policy: str) -> Body:
        meta = body["metadata"]
        if not meta.get("finalizers"):
            meta["resourceVersion"] = self._next_rv()
            self._remove(key, body, policy)
        elif not meta.get("deletionTimestamp"):
            meta.update(deletionTimestamp=now_rfc3339(), deletionGracePeriodSeconds=0)
            meta.update(generation=meta.get("generation", 1) + 1, resourceVersion=self._next_rv())
            self._store(key, body, "MODIFIED")
        return body

    def _remove(self, key: ObjectKey, body: Body, policy: str = "Background") -> None:
        """Drop the object for good, then whatever depended on it."""
        self._forget(key, body)
        if key[0] == CRDS:
            self._unregister_crd(body)
        if key[0] == NAMESPACES:
            self._delete_where(lambda k, _: k[1] == key[2])
        if policy == "Orphan":
            self._orphan_dependents(body["metadata"]["uid"])
        else:
            self._collect_garbage()

    def _collect_garbage(self) -> None:
        """Delete objects whose owners are all gone, as the garbage collector does (repeatedly)."""
        live_uids = {body["metadata"]["uid"] for _, body in self._live_items()}

        def is_orphaned(_: ObjectKey, body: Body) -> bool:
            owners = body["metadata"].get("ownerReferences") or []
            return bool(owners) and not any(ref.get("uid") in live_uids for ref in owners)

        self._delete_where(is_orphaned)

    def _delete_where(self, predicate: Callable[[ObjectKey, Body], bool]) -> None:
        for key, body in list(self._live_items()):
            if predicate(key, body) and self._live(key) is not None:
                self._delete(key, self._require(key), "Background")

    def _orphan_dependents(self, owner_uid: str) -> None:
        for key, body in list(self._live_items()):
            owners = body["metadata"].get("ownerReferences") or []
            if any(ref.get("uid") == owner_uid for ref in owners):
                body["metadata"]["ownerReferences"] = [ref for ref in owners if ref.get("uid") != owner_uid]
                body["metadata"]["resourceVersion"] = self._next_rv()
                self._store(key, body, "MODIFIED")

    # -- custom resource definitions --------------------------------------------------------

    def _accept_crd(self, crd: Body) -> None:
        """Mark a CRD Established at once (there is no apiextensions controller to wait for)."""
        names = crd.get("spec", {}).get("names", {})
        expected = f"{names.get('plural')}.{crd.get('spec', {}).get('group')}"
        if crd["metadata"].get("name") != expected:
            raise api_error(422, "Invalid", f"metadata.name must be spec.names.plural+'.'+spec.group: {expected!r}")
        try:
            crd_schemas(crd)  # a CEL rule that does not compile rejects the CRD, as on the server
        except Rejected as rejected:
            raise api_error(rejected.status, rejected.reason, rejected.message) from None
        conditions = (crd.get("status") or {}).get("conditions") or [
            {"type": kind, "status": "True", "reason": reason, "lastTransitionTime": now_rfc3339()}
            for kind, reason in (("NamesAccepted", "NoConflicts"), ("Established", "InitialNamesAccepted"))
        ]
        versions = [v["name"] for v in crd["spec"].get("versions", []) if v.get("storage")]
        crd["status"] = {"acceptedNames": names, "conditions": conditions, "storedVersions": versions}

    def _register_crd(self, old: Body | None, crd: Body) -> None:
        """Serve the CRD's kinds in discovery, so kubectl and kopf can find them."""
        if old is not None:
            self._unregister_crd(old, delete_objects=False)
        spec = crd["spec"]
        names = spec["names"]
        schemas = crd_schemas(crd)
        for version in spec.get("versions", []):
            if not version.get("served", True):
                continue
            if version["name"] in schemas:
                self._schemas[kmock.resource(spec["group"], version["name"], names["plural"])] = schemas[
                    version["name"]
                ]
            self.resources[kmock.resource(spec["group"], version["name"], names["plural"])] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular") or names["kind"].lower(),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                verbs=set(STANDARD_VERBS),
                shortnames=set(names.get("shortNames", [])),
                categories=set(names.get("categories", [])),
                subresources=set((version.get("subresources") or {}).keys()),
            )

    def _unregister_crd(self, crd: Body, delete_objects: bool = True) -> None:
        spec = crd["spec"]
        for version in spec.get("versions", []):
            resource = kmock.resource(spec["group"], version["name"], spec["names"]["plural"])
            if delete_objects:  # they go with their definition, finalizers or not (simplified)
                for key, body in list(self._live_items(resource)):
                    self._forget(key, body)
            if resource in self.resources:
                del self.resources[resource]
            self._schemas.pop(resource, None)

    def _crd_version(self, resource: kmock.resource) -> Body | None:
        crd = self._live((CRDS, None, f"{resource.plural}.{resource.group}"))
        versions = (crd or {}).get("spec", {}).get("versions", [])
        return next((v for v in versions if v["name"] == resource.version), None)

    # -- scale -----------------------------------------------------------------------------

    def _scale_paths(self, resource: kmock.resource) -> tuple[str, str, str | None]:
        if resource in BUILTIN_SCALE_PATHS:
            return BUILTIN_SCALE_PATHS[resource]
        scale = ((self._crd_version(resource) or {}).get("subresources") or {}).get("scale")
        if scale is None:
            raise api_error(404, "NotFound", f"{resource.plural} has no scale subresource")
        return scale["specReplicasPath"], scale["statusReplicasPath"], scale.get("labelSelectorPath")

    def _scale_view(self, resource: kmock.resource, body: Body) -> Body:
        spec_path, status_path, selector_path = self._scale_paths(resource)
        meta = {
            k: body["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion") if k in body["metadata"]
        }
        status: Body = {"replicas": lookup_path(body, status_path) or 0}
        if selector_path and lookup_path(body, selector_path):
            status["selector"] = lookup_path(body, selector_path)
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": meta,
            "spec": {"replicas": lookup_path(body, spec_path) or 0},
            "status": status,
        }

    # -- tables ----------------------------------------------------------------------------

    def _table(self, request: kmock.Request, info: kmock.ResourceInfo, items: list[Body]) -> Body:
        """Answer ``Accept: application/json;as=Table`` (what ``kubectl get`` asks for).

        kmock always sent the raw objects, and kubectl then printed only NAME. The server
        renders the CRD's ``additionalPrinterColumns`` (dates as ages), or Name + Age.
        """
        columns = self._printer_columns(request.resource)
        definitions = [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}]
        definitions += [
            {
                "name": col["name"],
                "type": col.get("type", "string"),
                "format": col.get("format", ""),
                "description": col.get("description", ""),
                "priority": col.get("priority", 0),
            }
            for col in columns
        ]
        rows = [
            {
                "cells": [item["metadata"]["name"], *(_cell(item, col) for col in columns)],
                "object": _row_object(item, request.params.get("includeObject")),
            }
            for item in items
        ]
        return {
            "apiVersion": "meta.k8s.io/v1",
            "kind": "Table",
            "metadata": {"resourceVersion": self.resource_version},
            "columnDefinitions": definitions,
            "rows": rows,
        }

    def _printer_columns(self, resource: kmock.resource) -> list[Body]:
        version = self._crd_version(resource) if _is_custom(resource) else None
        columns = (version or {}).get("additionalPrinterColumns")
        if columns is None:
            return [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
        return columns


# ---------------------------------------------------------------------------------------------
# Small helpers for the emulator (pure)
# ---------------------------------------------------------------------------------------------


def _discovery_entries(resource: kmock.resource, info: kmock.ResourceInfo) -> list[Body]:
    main = {
        "name": resource.plural,
        "singularName": info.singular or resource.plural,
        "namespaced": bool(info.namespaced),
        "kind": info.kind,
        "verbs": sorted(info.verbs),
        "shortNames": sorted(info.shortnames),
        "categories": sorted(info.categories),
    }
    subresources = [
        {
            "name": f"{resource.plural}/{sub}",
            "singularName": "",
            "namespaced": bool(info.namespaced),
            "kind": "Scale" if sub == "scale" else info.kind,
            **({"group": "autoscaling", "version": "v1"} if sub == "scale" else {}),
            "verbs": ["get", "patch", "update"],
        }
        for sub in sorted(info.subresources)
    ]
    return [main, *subresources]


def _api_path(resource: kmock.resource) -> str:
    return f"/apis/{resource.group}/{resource.version}" if resource.group else f"/api/{resource.version}"


def _openapi_patch_operation(resource: kmock.resource, info: kmock.ResourceInfo) -> Body:
    return {
        "x-kubernetes-group-version-kind": {"group": resource.group, "version": resource.version, "kind": info.kind},
        "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
        "responses": {"200": {"description": "OK"}},
    }


def _api_version(resource: kmock.resource) -> str:
    return f"{resource.group}/{resource.version}" if resource.group else resource.version


def _is_custom(resource: kmock.resource) -> bool:
    return "." in (resource.group or "") and not resource.group.endswith(".k8s.io")


def _header(request: kmock.Request, name: str) -> str:
    return next((value for key, value in request.headers.items() if key.lower() == name.lower()), "")


def _wants_table(request: kmock.Request) -> bool:
    return "as=Table" in _header(request, "Accept")


def _require_object(data: Any) -> Body:
    if not isinstance(data, dict):
        raise api_error(400, "BadRequest", "the request body must be a JSON object")
    return copy.deepcopy(data)


def _check_namespace(info: kmock.ResourceInfo, url_namespace: str | None, body_namespace: str | None) -> None:
    if info.namespaced and not url_namespace:
        raise api_error(400, "BadRequest", "a namespaced object must be created under /namespaces/<ns>/")
    if info.namespaced and body_namespace and body_namespace != url_namespace:
        raise api_error(400, "BadRequest", "the namespace of the object does not match the request URL")


def _generated_name(prefix: str | None) -> str:
    if not prefix:
        raise api_error(422, "Invalid", "metadata.name or metadata.generateName is required")
    return prefix + secrets.token_hex(3)[:5]


def _forbidden(attributes: rbac.Attributes, reason: str) -> kmock.KubernetesError:
    details = {"name": attributes.name, "group": attributes.group, "kind": attributes.resource}
    message = rbac.forbidden_message(attributes, reason)
    return api_error(403, "Forbidden", message, **{key: value for key, value in details.items() if value is not None})


def _warning_headers(warnings: list[str]) -> dict[str, str]:
    """Warnings as the server sends them (``299 - "text"``), which kubectl prints as ``Warning: text``."""
    return {"Warning": ", ".join(f"299 - {json.dumps(text)}" for text in warnings)} if warnings else {}


def _without(body: Body, key: str) -> Body:
    return {k: v for k, v in body.items() if k != key}


def _set_path(body: Body, dotted: str, value: Any) -> Body:
    result = copy.deepcopy(body)
    *parents, leaf = dotted.strip(".").split(".")
    node = result
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return result


def _content(body: Body, info: kmock.ResourceInfo) -> Body:
    """What ``generation`` tracks: everything except metadata (and status if a subresource)."""
    ignored = {"metadata", "status"} if "status" in info.subresources else {"metadata"}
    return {k: v for k, v in body.items() if k not in ignored}


def _keep_server_metadata(old: Body, new: Body) -> Body:
    owned = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation")
    kept = {k: old[k] for k in (*owned, "name", "namespace", "resourceVersion") if k in old}
    return {**{k: v for k, v in new.items() if k not in owned}, **kept}


def _refuse_new_finalizers(old: Body, new: Body) -> None:
    if not old["metadata"].get("deletionTimestamp"):
        return
    added = set(new["metadata"].get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
    if added:
        raise api_error(422, "Invalid", f"no new finalizers can be added while deleting: {sorted(added)}")


def _check_preconditions(body: Body, preconditions: Body) -> None:
    for field_name in ("uid", "resourceVersion"):
        expected = preconditions.get(field_name)
        if expected and expected != body["metadata"].get(field_name):
            raise api_error(409, "Conflict", f"precondition failed: {field_name} is not {expected!r}")


def _cell(item: Body, column: Body) -> Any:
    value = eval_json_path(item, column["jsonPath"])
    if column.get("type") == "date":
        return human_age(value) if isinstance(value, str) else "<unknown>"
    return value if value is not None or column.get("type") != "string" else ""


def _row_object(item: Body, include: str | None) -> Body:
    if include == "Object":
        return item
    if include == "None":
        return {}
    meta = item["metadata"]
    return {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": meta}


# ---------------------------------------------------------------------------------------------
# Running it: a background thread with its own event loop, and a kubeconfig
# ---------------------------------------------------------------------------------------------


def write_kubeconfig(path: Path, server_url: str, namespace: str = "default", token: str = ADMIN_TOKEN) -> Path:
    """Point kubectl and the Kubernetes clients at the emulator (plain HTTP), as the admin by default.

    A token from ``KubeApiEmulator.issue_token`` logs in as its user instead (the Python clients
    send it; kubectl sends no token over plain HTTP, so it stays the admin: use ``--as``).
    """
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server_url}}],
        "users": [{"name": "emulator", "user": {"token": token}}],
        "contexts": [
            {"name": "emulator", "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace}}
        ],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


class EmulatorThread:
    """Serve a ``KubeApiEmulator`` on 127.0.0.1 from a daemon thread until ``stop()``.

    A thread (not the test's loop) because kubectl runs as a blocking subprocess and
    ``KopfRunner`` runs its own loop in yet another thread.
    """

    def __init__(self, emulator: KubeApiEmulator | None = None, startup_timeout: float = 10.0) -> None:
        self.emulator = emulator or KubeApiEmulator()
        self._startup_timeout = startup_timeout
        self._socket = socket.create_server(("127.0.0.1", 0))  # bound now, so the port is known
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="k8s-emulator", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self) -> EmulatorThread:
        self._thread.start()
        if not self._started.wait(self._startup_timeout) or self._failure is not None:
            raise RuntimeError("the Kubernetes API emulator did not start") from self._failure
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("the Kubernetes API emulator did not stop")

    def internal_errors(self) -> list[BaseException]:
        """Server-side crashes (500s); expected API errors (404, 409, ...) are not listed."""
        return [e for e in self.emulator.errors if not isinstance(e, kmock.KubernetesError)]

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start() instead of dying silently
            self._failure = exc
            self._started.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        async with self.emulator:
            # Cancel a handler when its client goes away, or idle watches would linger.
            server = aiohttp.web.Server(self.emulator, handler_cancellation=True)
            runner = aiohttp.web.ServerRunner(server, shutdown_timeout=1.0)
            await runner.setup()
            await aiohttp.web.SockSite(runner, self._socket).start()
            self._started.set()
            try:
                await self._stopping.wait()
            finally:
                self.emulator.close_watches()
                await runner.cleanup()


@contextlib.contextmanager
def running_emulator(workdir: Path) -> Iterator[tuple[EmulatorThread, Path]]:
    """Start an emulator, write ``workdir/kubeconfig`` for it, and stop it on exit."""
    server = EmulatorThread().start()
    try:
        yield server, write_kubeconfig(workdir / "kubeconfig", server.url)
    finally:
        server.stop()
