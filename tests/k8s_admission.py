"""Admission of custom resources as the API server does it: prune, default, validate, then CEL.

The emulator hands every create, update and patch of a custom resource (merge, JSON or a PUT;
the main endpoint, ``/status`` and ``/scale`` alike) to ``CustomResourceSchema.admit`` with the
served version's ``openAPIV3Schema``, which works in the server's order:

1. **pruning**: fields the structural schema does not declare are dropped (they are kept under
   ``x-kubernetes-preserve-unknown-fields``; ``metadata`` keeps the ObjectMeta fields). With
   ``?fieldValidation=Strict``, which ``kubectl apply`` sends, a dropped field is a 400 "strict
   decoding error"; otherwise (the server's default, ``Warn``) each becomes a ``Warning`` header;
2. **defaulting**: a null in a field that is not ``nullable`` is dropped, then every absent
   field with a ``default`` gets it (nested defaults included);
3. **validation** against the schema: types (int-or-string too), ``format`` (date-time, date,
   byte), ``pattern``, ``enum``, bounds, lengths, item counts, required fields, and the RFC 1123
   subdomain rule for ``metadata.name``;
4. the **``x-kubernetes-validations`` CEL rules**, each where its node is present (``oldSelf``
   rules on updates only), with ``message``, ``messageExpression``, ``fieldPath`` and
   ``reason``. As on the server, they are skipped when step 3 found a blocking error (a wrong
   type, a missing required field, an unsupported value, too long, too many).

Errors are rendered as Kubernetes' ``field.Error`` renders them and answered as a 422 ``Invalid``
Status whose ``details.causes`` name each field, so kubectl prints what a cluster prints.
Not emulated: the CEL cost budget, validation ratcheting of unchanged values on update,
``x-kubernetes-list-type``, embedded-resource metadata, Kubernetes' CEL library extensions
(``quantity()``, ``isSorted()``, ...), and formats other than the three above (accepted).
"""

from __future__ import annotations

import base64
import copy
import datetime
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cel

Body = dict[str, Any]
Schema = dict[str, Any]

OBJECT_META_FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
NOT_CHECKED = (
    "some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation"
)
_OMITTED = object()


class Rejected(Exception):
    """An API error for the emulator to answer with: HTTP status, Status reason, message, details."""

    def __init__(self, status: int, reason: str, message: str, details: Body | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.details = status, reason, message, details or {}


# ---------------------------------------------------------------------------------------------
# Field errors, rendered as k8s.io/apimachinery/pkg/util/validation/field renders them
# ---------------------------------------------------------------------------------------------

# error type -> (what the message says, the cause's reason, whether CEL rules are then skipped)
_ERROR_TYPES = {
    "invalid": ("Invalid value", "FieldValueInvalid", False),
    "type": ("Invalid value", "FieldValueTypeInvalid", True),
    "required": ("Required value", "FieldValueRequired", True),
    "unsupported": ("Unsupported value", "FieldValueNotSupported", True),
    "too_long": ("Too long", "FieldValueTooLong", True),
    "too_many": ("Too many", "FieldValueTooMany", True),
    "forbidden": ("Forbidden", "FieldValueForbidden", False),
    "duplicate": ("Duplicate value", "FieldValueDuplicate", False),
}
_WITHOUT_VALUE = frozenset({"required", "forbidden", "too_long"})


@dataclass(frozen=True)
class FieldError:
    field: str  # "spec.monitoring.interval"; "" is the object itself (printed "<nil>")
    kind: str  # a key of _ERROR_TYPES
    detail: str = ""
    value: Any = _OMITTED

    @property
    def is_blocking(self) -> bool:
        return _ERROR_TYPES[self.kind][2]

    @property
    def body(self) -> str:
        text = _ERROR_TYPES[self.kind][0]
        if self.kind not in _WITHOUT_VALUE and self.value is not _OMITTED:
            text += f": {go_value(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field or '<nil>'}: {self.body}"

    def cause(self) -> Body:
        return {"reason": _ERROR_TYPES[self.kind][1], "message": self.body, "field": self.field or "<nil>"}


def go_value(value: Any) -> str:
    """A bad value as Go's ``%v`` (numbers, booleans) or ``%q`` (strings, and null as "null") prints it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_number(value)
    if value is None:
        return '"null"'
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(json.dumps(value))  # Go prints its raw struct; a quoted JSON is as telling


def go_number(value: float | int) -> str:
    """Go's ``%v`` of a float64: 1 for 1.0, 0.4, 1e+21."""
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e21):
        return str(int(value))
    return repr(value)  # shortest round-trip digits, "1e-07" style exponents, as Go's


def invalid_object(kind: str, group: str, name: str, errors: list[FieldError]) -> Rejected:
    """The 422 the server answers: ``Kind.group "name" is invalid: <error>`` or ``[<e1>, <e2>]``."""
    listed = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(error) for error in errors) + "]"
    details = {"name": name, "group": group, "kind": kind, "causes": [error.cause() for error in errors]}
    return Rejected(422, "Invalid", f'{kind}.{group} "{name}" is invalid: {listed}', details)


def child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# ---------------------------------------------------------------------------------------------
# 1-2. Pruning and defaulting (in place)
# ---------------------------------------------------------------------------------------------


def prune(value: Any, schema: Schema, path: str = "", is_root: bool = True) -> list[str]:
    """Drop what the structural schema does not declare; return the dropped fields' paths."""
    dropped: list[str] = []
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            dropped += prune(item, schema["items"], f"{path}[{index}]", is_root=False)
    if not isinstance(value, dict) or schema.get("x-kubernetes-int-or-string"):
        return dropped
    properties = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    keeps_unknown = schema.get("x-kubernetes-preserve-unknown-fields") or extra is True
    for key in list(value):
        if is_root and key in ("apiVersion", "kind"):
            continue
        if is_root and key == "metadata" and isinstance(value[key], dict):
            dropped += [child("metadata", k) for k in list(value[key]) if k not in OBJECT_META_FIELDS]
            value[key] = {k: v for k, v in value[key].items() if k in OBJECT_META_FIELDS}
        elif key in properties:
            dropped += prune(value[key], properties[key], child(path, key), is_root=False)
        elif isinstance(extra, dict):
            dropped += prune(value[key], extra, f"{path}[{key}]", is_root=False)
        elif not keeps_unknown:
            del value[key]
            dropped.append(child(path, key))
    return dropped


def apply_defaults(value: Any, schema: Schema) -> None:
    """Drop nulls the schema does not allow, fill in ``default``s, and recurse (defaults too)."""
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(item, schema["items"])
    if not isinstance(value, dict) or schema.get("x-kubernetes-int-or-string"):
        return
    properties = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    for key in list(value):
        sub = properties.get(key, extra if isinstance(extra, dict) else None)
        if sub is not None and value[key] is None and not sub.get("nullable"):
            del value[key]  # replaced by its default below, if it has one
    for key, sub in properties.items():
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
    for key in value:
        sub = properties.get(key, extra if isinstance(extra, dict) else None)
        if sub is not None:
            apply_defaults(value[key], sub)


# ---------------------------------------------------------------------------------------------
# 3. Schema validation (OpenAPI v3, as kube-openapi words its errors)
# ---------------------------------------------------------------------------------------------


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return {dict: "object", list: "array", str: "string"}[type(value)]


def _types_of(schema: Schema) -> tuple[str, ...]:
    if schema.get("x-kubernetes-int-or-string"):
        return ("integer", "string")
    return (schema["type"],) if "type" in schema else ()


def _has_type(value: Any, types: tuple[str, ...]) -> bool:
    actual = json_type(value)
    is_float_int = actual == "number" and math.isfinite(value) and float(value).is_integer()
    return actual in types or (actual == "integer" and "number" in types) or (is_float_int and "integer" in types)


def validate(value: Any, schema: Schema, path: str) -> list[FieldError]:
    """Every schema violation of ``value`` (at ``path``), in kube-openapi's wording."""
    if value is None:
        if schema.get("nullable") or not _types_of(schema):
            return []
        return [_type_error(value, schema, path)]
    types = _types_of(schema)
    if types and not _has_type(value, types):
        return [_type_error(value, schema, path)]
    errors = _value_errors(value, schema, path)
    for keyword in ("allOf", "anyOf", "oneOf"):
        if keyword in schema and not schema.get("x-kubernetes-int-or-string"):
            errors += _combination_errors(value, schema[keyword], keyword, path)
    if isinstance(value, dict):
        errors += _object_errors(value, schema, path)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            errors += validate(item, schema["items"], f"{path}[{index}]")
    return errors


def _type_error(value: Any, schema: Schema, path: str) -> FieldError:
    actual = json_type(value)
    expected = ",".join(_types_of(schema))
    return FieldError(path, "type", f"{path} in body must be of type {expected}: {json.dumps(actual)}", actual)


def _value_errors(value: Any, schema: Schema, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(go_value(option) for option in schema["enum"])
        errors.append(FieldError(path, "unsupported", f"supported values: {supported}", value))
    if isinstance(value, str):
        errors += _string_errors(value, schema, path)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        errors += _number_errors(value, schema, path)
    elif isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(FieldError(path, "too_many", f"must have at most {schema['maxItems']} items", len(value)))
        if "minItems" in schema and len(value) < schema["minItems"]:
            detail = f"{path} in body should have at least {schema['minItems']} items"
            errors.append(FieldError(path, "invalid", detail, len(value)))
    return errors


def _string_errors(value: str, schema: Schema, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(FieldError(path, "too_long", f"may not be more than {schema['maxLength']} bytes"))
    if "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(
            FieldError(path, "invalid", f"{path} in body should be at least {schema['minLength']} chars long", value)
        )
    if "pattern" in schema and re.search(schema["pattern"], value) is None:
        errors.append(FieldError(path, "invalid", f"{path} in body should match '{schema['pattern']}'", value))
    if not _has_format(value, schema.get("format", "")):
        errors.append(
            FieldError(
                path, "invalid", f"{path} in body must be of type {schema['format']}: {json.dumps(value)}", value
            )
        )
    return errors


def _has_format(value: str, format_: str) -> bool:
    try:
        if format_ == "date-time":
            datetime.datetime.fromisoformat(value)
        elif format_ == "date":
            datetime.date.fromisoformat(value)
        elif format_ == "byte":
            base64.b64decode(value, validate=True)
    except ValueError:
        return False
    return True


def _number_errors(value: float, schema: Schema, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    if "minimum" in schema:
        low, is_exclusive = schema["minimum"], schema.get("exclusiveMinimum") is True
        if value < low or (is_exclusive and value == low):
            words = "greater than" if is_exclusive else "greater than or equal to"
            errors.append(FieldError(path, "invalid", f"{path} in body should be {words} {go_number(low)}", value))
    if "maximum" in schema:
        high, is_exclusive = schema["maximum"], schema.get("exclusiveMaximum") is True
        if value > high or (is_exclusive and value == high):
            words = "less than" if is_exclusive else "less than or equal to"
            errors.append(FieldError(path, "invalid", f"{path} in body should be {words} {go_number(high)}", value))
    if schema.get("multipleOf") and not float(value / schema["multipleOf"]).is_integer():
        detail = f"{path} in body should be a multiple of {go_number(schema['multipleOf'])}"
        errors.append(FieldError(path, "invalid", detail, value))
    return errors


def _object_errors(value: Body, schema: Schema, path: str) -> list[FieldError]:
    errors = [FieldError(child(path, key), "required") for key in schema.get("required", []) if key not in value]
    properties = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    for key, item in value.items():
        if key in properties:
            errors += validate(item, properties[key], child(path, key))
        elif isinstance(extra, dict):
            errors += validate(item, extra, f"{path}[{key}]")
    return errors


def _combination_errors(value: Any, options: list[Schema], keyword: str, path: str) -> list[FieldError]:
    passing = [not validate(value, option, path) for option in options]
    ok = {"allOf": all(passing), "anyOf": any(passing), "oneOf": passing.count(True) == 1}[keyword]
    if ok:
        return []
    words = {"allOf": "all", "anyOf": "at least one", "oneOf": "exactly one"}[keyword]
    return [
        FieldError(
            path, "invalid", f"{path} in body must validate {words} schema ({keyword.removesuffix('Of')}Of)", value
        )
    ]


def validate_metadata(metadata: Body) -> list[FieldError]:
    """What ObjectMeta validation says of a custom resource's name (an RFC 1123 subdomain)."""
    name = metadata.get("name")
    if not name:
        return [FieldError("metadata.name", "required", "name or generateName is required")]
    if len(name) > 253:
        return [FieldError("metadata.name", "invalid", "must be no more than 253 characters", name)]
    if not DNS1123_SUBDOMAIN.match(name):
        return [FieldError("metadata.name", "invalid", DNS1123_SUBDOMAIN_MESSAGE, name)]
    return []


# ---------------------------------------------------------------------------------------------
# 4. CEL rules (x-kubernetes-validations)
# ---------------------------------------------------------------------------------------------


# A rule's ``reason`` -> the error it reports (FieldValueInvalid, the default, is "invalid").
_RULE_REASONS = {
    "FieldValueForbidden": "forbidden",
    "FieldValueRequired": "required",
    "FieldValueDuplicate": "duplicate",
}


@dataclass(frozen=True)
class CelRule:
    """One compiled ``x-kubernetes-validations`` entry."""

    source: Body
    program: Any  # cel.Program
    message_program: Any | None
    is_transition: bool  # refers to oldSelf: evaluated on updates only

    @classmethod
    def compile(cls, rule: Body, where: str) -> CelRule:
        try:
            program = cel.compile(rule["rule"])
            message = cel.compile(rule["messageExpression"]) if rule.get("messageExpression") else None
        except ValueError as error:
            raise Rejected(
                422, "Invalid", f"{where}: Invalid value: {json.dumps(rule['rule'])}: compilation failed: {error}"
            ) from None
        return cls(rule, program, message, "oldSelf" in program.variables())

    def check(self, value: Any, old: Any, schema: Schema, path: str) -> FieldError | None:
        """None if the rule holds, else the error the server reports for it."""
        field_path = path
        for part in (self.source.get("fieldPath") or "").strip(".").split("."):
            field_path = child(field_path, part) if part else field_path
        context = {"self": value, **({"oldSelf": old} if self.is_transition else {})}
        try:
            result = self.program.execute(context)
        except (KeyError, ValueError, TypeError, RuntimeError, ArithmeticError) as error:
            detail = f"{_cel_error_text(error)} evaluating rule: {self.source['rule']}"
            return FieldError(field_path, "invalid", detail, schema.get("type", ""))
        if result is True:
            return None
        kind = _RULE_REASONS.get(self.source.get("reason", ""), "invalid")
        detail = "" if kind == "duplicate" else self._message(context)
        return FieldError(field_path, kind, detail, schema.get("type", ""))

    def _message(self, context: Body) -> str:
        if self.message_program is not None:
            try:
                text = self.message_program.execute(context)
            except (KeyError, ValueError, TypeError, RuntimeError, ArithmeticError):
                text = None
            if isinstance(text, str) and text.strip():
                return text
        return self.source.get("message") or f"failed rule: {self.source['rule'].strip()}"


def _cel_error_text(error: Exception) -> str:
    if isinstance(error, KeyError):
        return f"no such key: {error.args[0] if error.args else ''}"
    return str(error)


def cel_value(value: Any, schema: Schema) -> Any:
    """``value`` as CEL sees it: ``number`` fields are doubles even when written as 1."""
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        return {
            key: cel_value(item, properties.get(key, extra if isinstance(extra, dict) else {}))
            for key, item in value.items()
        }
    if isinstance(value, list):
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        return [cel_value(item, items) for item in value]
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _rule_nodes(schema: Schema, where: str) -> Iterator[tuple[Schema, str]]:
    """Every schema node, with the CRD field path an error in its rules is reported at."""
    yield schema, where
    for key, sub in (schema.get("properties") or {}).items():
        yield from _rule_nodes(sub, f"{where}.properties[{key}]")
    for keyword in ("items", "additionalProperties"):
        if isinstance(schema.get(keyword), dict):
            yield from _rule_nodes(schema[keyword], f"{where}.{keyword}")


# ---------------------------------------------------------------------------------------------
# The whole admission of one served version
# ---------------------------------------------------------------------------------------------


class CustomResourceSchema:
    """A served version's ``openAPIV3Schema`` with its CEL rules compiled (once, when the CRD is stored)."""

    def __init__(self, schema: Schema, group: str, version: str, kind: str, where: str = "openAPIV3Schema") -> None:
        self.schema, self.group, self.version, self.kind = schema, group, version, kind
        self.rules: dict[int, list[CelRule]] = {}  # id(schema node) -> its rules
        for node, node_where in _rule_nodes(schema, where):
            rules = node.get("x-kubernetes-validations") or []
            self.rules[id(node)] = [
                CelRule.compile(rule, f"{node_where}.x-kubernetes-validations[{index}].rule")
                for index, rule in enumerate(rules)
            ]

    def admit(self, obj: Body, old: Body | None = None, field_validation: str = "") -> tuple[Body, list[str]]:
        """The object the server would store, and its warnings; raises ``Rejected`` as the server refuses."""
        obj = copy.deepcopy(obj)
        name = (obj.get("metadata") or {}).get("name", "")
        dropped = prune(obj, self.schema)
        if dropped and field_validation == "Strict":
            unknown = ", ".join(f"unknown field {json.dumps(path)}" for path in dropped)
            where = f'{self.kind} in version "{self.version}" cannot be handled as a {self.kind}'
            message = f"{where}: strict decoding error: {unknown}"
            raise Rejected(400, "BadRequest", message)
        warnings = [] if field_validation == "Ignore" else [f"unknown field {json.dumps(path)}" for path in dropped]
        apply_defaults(obj, self.schema)
        errors = validate_metadata(obj.get("metadata") or {}) + validate(obj, self.schema, "")
        if any(error.is_blocking for error in errors):
            errors.append(FieldError("", "invalid", NOT_CHECKED, None))
        else:
            errors += self._rule_errors(self._cel_root(obj), self._cel_root(old) if old else None, self.schema, "")
        if errors:
            raise invalid_object(self.kind, self.group, name, errors)
        return obj, warnings

    def _cel_root(self, obj: Body) -> Body:
        """The root ``self``: metadata shows only name and generateName to CEL."""
        meta = obj.get("metadata") or {}
        return {**obj, "metadata": {k: meta[k] for k in ("name", "generateName") if k in meta}}

    def _rule_errors(self, value: Any, old: Any, schema: Schema, path: str) -> list[FieldError]:
        if value is None:
            return []
        errors: list[FieldError] = []
        for rule in self.rules.get(id(schema), []):
            if rule.is_transition and old is None:
                continue
            error = rule.check(cel_value(value, schema), cel_value(old, schema), schema, path)
            if error is not None:
                errors.append(error)
        if isinstance(value, dict):
            properties = schema.get("properties") or {}
            extra = schema.get("additionalProperties")
            old_map = old if isinstance(old, dict) else {}
            for key, item in value.items():
                if key in properties:
                    errors += self._rule_errors(item, old_map.get(key), properties[key], child(path, key))
                elif isinstance(extra, dict):
                    errors += self._rule_errors(item, old_map.get(key), extra, f"{path}[{key}]")
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for index, item in enumerate(value):  # atomic lists: items have no oldSelf
                errors += self._rule_errors(item, None, schema["items"], f"{path}[{index}]")
        return errors


def crd_schemas(crd: Body) -> dict[str, CustomResourceSchema]:
    """Served version name -> its compiled schema; a rule that does not compile rejects the CRD."""
    spec = crd["spec"]
    schemas = {}
    for index, version in enumerate(spec.get("versions", [])):
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if schema is None or not version.get("served", True):
            continue
        where = f"spec.versions[{index}].schema.openAPIV3Schema"
        try:
            schemas[version["name"]] = CustomResourceSchema(
                schema, spec["group"], version["name"], spec["names"]["kind"], where
            )
        except Rejected as error:
            name = crd["metadata"].get("name", "")
            raise Rejected(
                422, "Invalid", f'CustomResourceDefinition.apiextensions.k8s.io "{name}" is invalid: {error.message}'
            ) from None
    return schemas
