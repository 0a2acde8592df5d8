"""Checking tool-call arguments against the tool's JSON schema, without a schema library.

Function schemas in tool definitions use a small part of JSON Schema; this checks that part:
`type` (one or a list), `properties`, `required`, `additionalProperties` (false or a schema),
`enum`, `const`, `items`, `minItems`/`maxItems`, `minLength`/`maxLength`, `minimum`/`maximum`
(and their exclusive forms), `anyOf`/`oneOf` (at least one must match), `allOf`. Keywords outside
it (`pattern`, `format`, `$ref`, ...) are not checked: a sample is never dropped for a rule that
was not understood.
"""

from __future__ import annotations

from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "null": (type(None),),
}


def _has_type(value: Any, name: str) -> bool:
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    if name in ("number", "integer") and isinstance(value, bool):
        return False  # JSON's true is not a number, although Python's bool is an int
    return isinstance(value, _TYPES.get(name, (object,)))


def schema_errors(value: Any, schema: Any, path: str = "arguments") -> list[str]:
    """What in `value` does not match `schema`, one `path: problem` each; empty when it matches."""
    if not isinstance(schema, dict):
        return []  # `true`, or not a schema: nothing to check
    errors: list[str] = []
    expected = schema.get("type")
    if expected is not None:
        names = expected if isinstance(expected, list) else [expected]
        if not any(_has_type(value, n) for n in names if isinstance(n, str)):
            return [f"{path}: expected {' or '.join(map(str, names))}, got {_json_type(value)}"]
    if "enum" in schema and isinstance(schema["enum"], list) and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: must be {schema['const']!r}")
    if isinstance(value, dict):
        errors += _object_errors(value, schema, path)
    elif isinstance(value, list):
        errors += _array_errors(value, schema, path)
    elif isinstance(value, str):
        if isinstance(schema.get("minLength"), int) and len(value) < schema["minLength"]:
            errors.append(f"{path}: shorter than {schema['minLength']} characters")
        if isinstance(schema.get("maxLength"), int) and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']} characters")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        errors += _number_errors(value, schema, path)
    for keyword in ("anyOf", "oneOf"):
        options = schema.get(keyword)
        if isinstance(options, list) and options and all(schema_errors(value, option, path) for option in options):
            errors.append(f"{path}: matches none of the {keyword} alternatives")
    for part in schema.get("allOf") or []:
        errors += schema_errors(value, part, path)
    return errors


def _object_errors(value: dict[str, Any], schema: dict[str, Any], path: str) -> list[str]:
    errors: list[str] = []
    raw_properties = schema.get("properties")
    properties: dict[str, Any] = raw_properties if isinstance(raw_properties, dict) else {}
    for name in schema.get("required") or []:
        if isinstance(name, str) and name not in value:
            errors.append(f"{path}.{name}: required but missing")
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in properties:
            errors += schema_errors(item, properties[key], f"{path}.{key}")
        elif extra is False:
            errors.append(f"{path}.{key}: not a parameter of the tool (allowed: {', '.join(sorted(properties)) or 'none'})")
        elif isinstance(extra, dict):
            errors += schema_errors(item, extra, f"{path}.{key}")
    return errors


def _array_errors(value: list[Any], schema: dict[str, Any], path: str) -> list[str]:
    errors: list[str] = []
    if isinstance(schema.get("minItems"), int) and len(value) < schema["minItems"]:
        errors.append(f"{path}: fewer than {schema['minItems']} items")
    if isinstance(schema.get("maxItems"), int) and len(value) > schema["maxItems"]:
        errors.append(f"{path}: more than {schema['maxItems']} items")
    if isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{path}[{index}]")
    return errors


def _number_errors(value: float, schema: dict[str, Any], path: str) -> list[str]:
    errors: list[str] = []
    for keyword, words in (("minimum", "below"), ("maximum", "above"), ("exclusiveMinimum", "not above"), ("exclusiveMaximum", "not below")):
        bound = schema.get(keyword)
        if not isinstance(bound, (int, float)) or isinstance(bound, bool):
            continue
        broken = {
            "minimum": value < bound,
            "maximum": value > bound,
            "exclusiveMinimum": value <= bound,
            "exclusiveMaximum": value >= bound,
        }[keyword]
        if broken:
            errors.append(f"{path}: {value} is {words} {bound}")
    return errors


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _has_type(value, name):
            return name
    return type(value).__name__
