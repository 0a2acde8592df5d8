"""Turn pydantic's JSON Schema into a Kubernetes structural OpenAPI v3 schema.

A CRD schema is a restricted dialect: no `$ref`, no `anyOf` with null, no `const`, numeric
exclusive bounds as booleans, and every node typed. Constructs that have no faithful structural
form (discriminated unions, tuples, recursive models, arbitrary unions) are refused with an
error naming the path, so a model change that the CRD cannot express fails `glmops crds`
instead of shipping a schema that silently means something else.
"""

from __future__ import annotations

import copy
from typing import Any

JsonDict = dict[str, Any]

# Keys a structural schema may carry and that we pass through unchanged.
_PASS_THROUGH = {
    "type",
    "description",
    "default",
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "multipleOf",
    "nullable",
    "required",
}
# pydantic annotations with no meaning for the apiserver.
_DROPPED = {"title", "examples", "additionalProperties", "$defs", "readOnly", "writeOnly", "deprecated"}
# Formats the apiserver knows; others are refused rather than silently unchecked.
_FORMATS = {"date-time", "date", "byte", "int32", "int64", "float", "double", "password", "uri", "email", "uuid"}


class SchemaError(ValueError):
    """The model uses a construct that a structural CRD schema cannot express."""

    def __init__(self, path: str, problem: str, fix: str) -> None:
        super().__init__(f"{path or '<root>'}: {problem}; {fix}")
        self.path = path


_FIRST = ("type", "description")
_LAST = ("required", "properties", "additionalProperties", "items")


def to_structural(schema: JsonDict) -> JsonDict:
    """Convert a pydantic JSON Schema (with `$defs`) into a structural CRD schema."""
    defs = schema.get("$defs", {})
    return _canonical(_convert(schema, defs, path="", resolving=()))


def _canonical(node: JsonDict) -> JsonDict:
    """Order keys the same way everywhere (type, description, constraints, children) for readable diffs."""
    def rank(key: str) -> tuple[int, str]:
        if key in _FIRST:
            return (0, str(_FIRST.index(key)))
        if key in _LAST:
            return (2, str(_LAST.index(key)))
        return (1, key)

    out: JsonDict = {}
    for key in sorted(node, key=rank):
        value = node[key]
        if key == "properties":
            value = {name: _canonical(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            value = _canonical(value)
        out[key] = value
    return out


def _resolve_ref(node: JsonDict, defs: JsonDict, path: str, resolving: tuple[str, ...]) -> tuple[JsonDict, tuple[str, ...]]:
    ref = node["$ref"]
    prefix = "#/$defs/"
    if not ref.startswith(prefix):
        raise SchemaError(path, f"reference {ref!r} is not local", "define the type in the same module tree")
    name = ref[len(prefix) :]
    if name in resolving:
        raise SchemaError(path, f"model {name} refers to itself", "recursive models have no CRD form; flatten them")
    target = copy.deepcopy(defs[name])
    # Keys beside the $ref (description, default) describe the field and win over the type's own.
    for key, value in node.items():
        if key != "$ref":
            target[key] = value
    return target, resolving + (name,)


def _strip_null(options: list[JsonDict]) -> list[JsonDict]:
    return [o for o in options if o.get("type") != "null"]


def _convert(node: JsonDict, defs: JsonDict, path: str, resolving: tuple[str, ...]) -> JsonDict:
    if "$ref" in node:
        node, resolving = _resolve_ref(node, defs, path, resolving)

    for bad, fix in (
        ("discriminator", "model the variants as optional sibling fields with a CEL rule"),
        ("oneOf", "model the alternatives as optional sibling fields with a CEL rule"),
        ("prefixItems", "tuples have no CRD form; use a small object with named fields"),
        ("not", "express the constraint as a CEL rule (x-kubernetes-validations)"),
        ("if", "express the constraint as a CEL rule (x-kubernetes-validations)"),
    ):
        if bad in node:
            raise SchemaError(path, f"uses {bad!r}", fix)

    if "anyOf" in node:
        options = _strip_null(node["anyOf"])
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        if outer.get("default", "absent") is None:
            del outer["default"]  # "null means unset": the field is simply optional
        if len(options) == 1:
            merged = dict(options[0])
            merged.update(outer)
            return _convert(merged, defs, path, resolving)
        types = sorted(o.get("type", "") for o in options)
        if types == ["integer", "string"] and all(set(o) <= {"type", "pattern"} for o in options):
            result: JsonDict = {"x-kubernetes-int-or-string": True}
            result.update(_convert_keys(outer, path))
            return result
        raise SchemaError(path, "is a union of several types", "use one type (int | str becomes int-or-string)")

    if "allOf" in node:
        if len(node["allOf"]) != 1:
            raise SchemaError(path, "uses allOf with several parts", "combine the models into one")
        merged = dict(node["allOf"][0])
        merged.update({k: v for k, v in node.items() if k != "allOf"})
        return _convert(merged, defs, path, resolving)

    if "const" in node:
        node = dict(node)
        node["enum"] = [node.pop("const")]
        if "type" not in node:
            node["type"] = _json_type(node["enum"][0], path)

    out = _convert_keys(node, path)
    node_type = node.get("type")

    if node_type is None and not out.get("x-kubernetes-preserve-unknown-fields"):
        if node == {} or set(node) <= {"description", "default", "title"}:
            # Any: free-form value.
            out["x-kubernetes-preserve-unknown-fields"] = True
        else:
            raise SchemaError(path, "has no type", "give the field a concrete type")

    if node_type == "object":
        props = node.get("properties")
        extra = node.get("additionalProperties")
        if props:
            out["properties"] = {
                name: _convert(sub, defs, f"{path}.{name}" if path else name, resolving) for name, sub in props.items()
            }
        elif isinstance(extra, dict) and extra:
            out["additionalProperties"] = _convert(extra, defs, f"{path}[*]", resolving)
        elif extra is not False:
            # dict[str, Any] or a bare object: keep whatever the user wrote.
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif node_type == "array":
        if "items" not in node:
            raise SchemaError(path, "is a list without an item type", "annotate the item type, e.g. list[str]")
        out["items"] = _convert(node["items"], defs, f"{path}[*]", resolving)
        if node.get("uniqueItems"):
            if out["items"].get("type") not in {"string", "integer", "number", "boolean"}:
                raise SchemaError(path, "asks for unique items that are not scalars", "use a list-map keyed by a field")
            out["x-kubernetes-list-type"] = "set"
    return out


def _convert_keys(node: JsonDict, path: str) -> JsonDict:
    out: JsonDict = {}
    for key, value in node.items():
        if key in _PASS_THROUGH:
            if key == "format" and value not in _FORMATS:
                raise SchemaError(path, f"has format {value!r} that Kubernetes does not check", "use a plain string with a pattern")
            out[key] = value
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            if isinstance(value, bool):
                out[key] = value
            else:
                bound = "minimum" if key == "exclusiveMinimum" else "maximum"
                out[bound] = value
                out[key] = True
        elif key.startswith("x-kubernetes-"):
            out[key] = value
        elif key in _DROPPED or key in {"properties", "items", "uniqueItems", "$ref", "const", "anyOf", "allOf"}:
            continue
        else:
            raise SchemaError(path, f"uses the JSON Schema keyword {key!r}", "remove it or express it as a CEL rule")
    return out


def _json_type(value: object, path: str) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    raise SchemaError(path, f"has a constant of unsupported type {type(value).__name__}", "use a scalar constant")
