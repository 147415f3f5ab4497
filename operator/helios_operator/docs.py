"""The HeliosDeployment field reference, generated from the pydantic models' descriptions.

`helios docs` writes it to docs/heliosdeployment-reference.md; a test keeps the committed file
current, so the reference never drifts from the models (or the CRD built from the same models).
One section per object (spec first, then the status the operator writes), one table row per
field: YAML name, type, default, constraints and the field's ``description``. Rules that span
fields come from the CRD's CEL rules (``crds.CEL_RULES``), which the validators mirror.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, BeforeValidator, WithJsonSchema
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from helios_operator.crds import CEL_RULES, VERSION
from helios_operator.heliosstatus import OperatorStatus
from helios_operator.spec import API_GROUP, KIND, HeliosDeploymentSpec, parse_duration, parse_quantity

REFERENCE_PATH = "docs/heliosdeployment-reference.md"

_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", datetime: "timestamp"}
_UNITS = {parse_duration: "duration", parse_quantity: "quantity"}
# (metadata attribute, how a constraint reads)
_CONSTRAINTS = (
    ("ge", ">= {}"),
    ("gt", "> {}"),
    ("le", "<= {}"),
    ("lt", "< {}"),
    ("min_length", "min length {}"),
    ("max_length", "max length {}"),
    ("pattern", "pattern `{}`"),
)


def _unit(metadata: list[Any]) -> str | None:
    for item in metadata:
        if isinstance(item, BeforeValidator) and item.func in _UNITS:
            return _UNITS[item.func]
    return None


def _is_kept_as_given(metadata: list[Any]) -> bool:
    """A Kubernetes object the CRD stores as given (x-kubernetes-preserve-unknown-fields)."""
    return any(
        isinstance(item, WithJsonSchema) and (item.json_schema or {}).get("x-kubernetes-preserve-unknown-fields")
        for item in metadata
    )


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in typing.get_args(annotation):
        yield from _models_in(argument)


def _type(annotation: Any, metadata: list[Any], anchors: dict[type[BaseModel], str]) -> str:
    """How a field's type reads in the reference, e.g. 'list of [Candidate](#...)' or 'duration'."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        return _type(base, [*extra, *metadata], anchors)
    if unit := _unit(metadata):
        return unit
    if _is_kept_as_given(metadata):
        return "Kubernetes object"
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return " or ".join(_type(option, metadata, anchors) for option in options)
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin is list:
        return "list of " + _type(typing.get_args(annotation)[0], [], anchors)
    if origin is dict:
        return "map of string to " + _type(typing.get_args(annotation)[1], [], anchors)
    if annotation in anchors:
        return f"[object](#{anchors[annotation]})"
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if annotation is object or annotation is Any:
        return "any"
    raise TypeError(f"no reference type for {annotation!r}")


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        return "see below" if isinstance(value, BaseModel) else f"`{value!r}`".replace("'", "")
    if field.default is PydanticUndefined:
        return "**required**"
    if field.default is None:
        return "unset"
    if field.default == "":
        return '`""`'
    if isinstance(field.default, bool):
        return f"`{str(field.default).lower()}`"
    return f"`{field.default}`"


def _constraints(metadata: list[Any]) -> str:
    found = []
    for item in metadata:
        for attribute, text in _CONSTRAINTS:
            value = getattr(item, attribute, None)
            if value is not None:
                found.append(text.format(value))
    return ", ".join(found)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _sections(model: type[BaseModel], path: str, seen: set[type[BaseModel]]) -> list[tuple[str, type[BaseModel]]]:
    """(YAML path, model) for ``model`` and every object below it, depth-first; each model once."""
    if model in seen:
        return []
    seen.add(model)
    sections = [(path, model)]
    for name, field in model.model_fields.items():
        suffix = "[]" if typing.get_origin(_strip_optional(field.annotation)) is list else ""
        for child in _models_in(field.annotation):
            sections += _sections(child, f"{path}.{field.alias or name}{suffix}", seen)
    return sections


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(options) == 1:
            return options[0]
    return annotation


def _anchor(path: str) -> str:
    return path.replace(".", "").replace("[]", "").lower()


def _section(path: str, model: type[BaseModel], anchors: dict[type[BaseModel], str]) -> list[str]:
    lines = [f"### `{path}`", ""]
    if model.__doc__:
        lines += [model.__doc__.strip(), ""]
    lines += ["| Field | Type | Default | Constraints | Description |", "| --- | --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        if not field.description:
            raise ValueError(f"{model.__name__}.{name} has no description; every field needs one")
        row = (
            f"`{field.alias or name}`",
            _type(field.annotation, field.metadata, anchors),
            _default(field),
            _constraints(field.metadata),
            field.description,
        )
        lines.append("| " + " | ".join(_cell(cell) for cell in row) + " |")
    rules = [rule["message"] for rule in CEL_RULES.get(model.__name__, [])]
    if rules:
        lines += ["", "Rules across fields: " + "; ".join(rules) + "."]
    return [*lines, ""]


def field_reference() -> str:
    """The whole reference as Markdown."""
    parts = [("spec", HeliosDeploymentSpec), ("status", OperatorStatus)]
    seen: set[type[BaseModel]] = set()
    sections = [section for path, model in parts for section in _sections(model, path, seen)]
    anchors = {model: _anchor(path) for path, model in sections}
    lines = [
        "<!-- Generated by `helios docs` from helios_operator/spec.py and heliosstatus.py. Do not edit. -->",
        f"# {KIND} reference ({API_GROUP}/{VERSION})",
        "",
        f"Every field of a `{KIND}`, generated from the pydantic models that also generate the CRD",
        "(`crds/heliosdeployments.yaml`) and that the operator validates specs with. Durations are",
        "strings such as `15s`, `2m` or `1h30m` (or seconds as a number); quantities are Kubernetes",
        "quantities such as `8Gi` or `500M` (or a number of bytes).",
        "",
        "## Spec",
        "",
    ]
    for path, model in sections:
        if path == "status":
            lines += ["## Status", "", "Written by the operator; read it with `kubectl get hd NAME -o yaml`.", ""]
        lines += _section(path, model, anchors)
    return "\n".join(lines).rstrip("\n") + "\n"
