"""Schema-driven validation of plain JSON objects (and decoded Avro records) against an Avro schema.

Wire JSON is plain JSON, not Avro's JSON encoding: a union value is the bare value. A compiled
validator checks one object against one event schema version and returns its values resolved to
the latest event schema (fields the version lacks take their defaults), or raises
`SchemaViolation` naming the reason code and the field path.

Fields that no event schema version defines are ignored, as Avro schema resolution ignores writer
fields the reader lacks: `EventValidator.resolve` returns their names beside the values, so callers
can count them. A field that a later version defines, sent under an earlier `schema_version`, is still
a SCHEMA_MISMATCH: ignoring it would silently change the event (a `revision` without
`"schema_version": 2` would otherwise read as revision 0).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from labelbeam.schemas import registry

MISSING_FIELD = "MISSING_FIELD"
SCHEMA_MISMATCH = "SCHEMA_MISMATCH"

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_ONE_MS = dt.timedelta(milliseconds=1)

Checker = Callable[[Any, str], Any]


class SchemaViolation(ValueError):
    """An object does not fit a schema. `path` names the field, e.g. "labels[2]"."""

    def __init__(self, reason: str, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.reason = reason
        self.path = path


class UnknownFields(SchemaViolation):
    """Top-level fields that no event schema version defines (`names`, sorted). Not an error under
    Avro resolution: `EventValidator.resolve` ignores them."""

    def __init__(self, names: tuple[str, ...]):
        super().__init__(SCHEMA_MISMATCH, names[0], "unknown field for every event schema version")
        self.names = names


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__)


def _mismatch(path: str, expected: str, value: Any) -> SchemaViolation:
    return SchemaViolation(SCHEMA_MISMATCH, path, f"expected {expected}, got {_json_type(value)}")


def _integer_checker(bounds: tuple[int, int], name: str, timestamp_millis: bool) -> Checker:
    low, high = bounds

    def check(value, path):
        if timestamp_millis and isinstance(value, dt.datetime):
            # fastavro decodes timestamp-millis to an aware datetime; keep the wire's integer millis.
            return (value - _EPOCH) // _ONE_MS
        if type(value) is not int:
            raise _mismatch(path, name, value)
        if not low <= value <= high:
            raise SchemaViolation(SCHEMA_MISMATCH, path, f"{value} out of range for {name}")
        return value
    return check


def _check_string(value, path):
    if type(value) is not str:
        raise _mismatch(path, "string", value)
    return value


# Largest finite magnitudes. NaN and infinities are rejected: NaN != NaN would make identical
# retries look like conflicting copies, and a float beyond float32 would silently become inf.
_FLOAT_MAX = {"float": 3.4028234663852886e38, "double": 1.7976931348623157e308}


def _number_checker(kind: str) -> Checker:
    limit = _FLOAT_MAX[kind]

    def check(value, path):
        if type(value) is int:
            try:
                value = float(value)
            except OverflowError:
                raise SchemaViolation(SCHEMA_MISMATCH, path, f"integer too large for {kind}") from None
        elif type(value) is not float:
            raise _mismatch(path, "number", value)
        if not -limit <= value <= limit:
            raise SchemaViolation(SCHEMA_MISMATCH, path, f"{value!r} is not a finite {kind}")
        return value
    return check


def _check_boolean(value, path):
    if type(value) is not bool:
        raise _mismatch(path, "boolean", value)
    return value


def _check_null(value, path):
    if value is not None:
        raise _mismatch(path, "null", value)
    return None


def _check_bytes(value, path):
    if isinstance(value, (bytes, str)):
        return value
    raise _mismatch(path, "bytes", value)


def compile_checker(schema: Any) -> Checker:
    """A function (value, path) -> normalized value for a parsed Avro (sub)schema."""
    if isinstance(schema, list):
        return _union_checker(schema)
    if isinstance(schema, str):
        schema = {"type": schema}
    kind = schema["type"]
    logical = schema.get("logicalType")
    if kind == "string":
        return _check_string
    if kind == "int":
        return _integer_checker(_INT32, "int", False)
    if kind == "long":
        return _integer_checker(_INT64, "long", logical in ("timestamp-millis", "timestamp-micros"))
    if kind in ("float", "double"):
        return _number_checker(kind)
    if kind == "boolean":
        return _check_boolean
    if kind == "null":
        return _check_null
    if kind == "bytes":
        return _check_bytes
    if kind == "enum":
        return _enum_checker(schema)
    if kind == "array":
        return _array_checker(compile_checker(schema["items"]))
    if kind == "map":
        return _map_checker(compile_checker(schema["values"]))
    if kind == "record":
        return _record_checker(schema)
    if isinstance(kind, (dict, list)):
        return compile_checker(kind)
    raise ValueError(f"unsupported Avro type {kind!r} in schema")


def _union_checker(branches: list[Any]) -> Checker:
    nullable = any(branch == "null" or branch == {"type": "null"} for branch in branches)
    checkers = [compile_checker(b) for b in branches if not (b == "null" or b == {"type": "null"})]
    expected = " or ".join((["null"] if nullable else []) + [_branch_name(b) for b in branches if b != "null"])

    def check(value, path):
        if value is None:
            if nullable:
                return None
            raise _mismatch(path, expected, value)
        for checker in checkers:
            try:
                return checker(value, path)
            except SchemaViolation:
                continue
        raise _mismatch(path, expected, value)
    return check


def _branch_name(branch: Any) -> str:
    if isinstance(branch, str):
        return branch
    return branch.get("name", branch["type"]) if isinstance(branch, dict) else "union"


def _enum_checker(schema: dict[str, Any]) -> Checker:
    symbols = frozenset(schema["symbols"])
    listing = "|".join(schema["symbols"])

    def check(value, path):
        if type(value) is not str or value not in symbols:
            shown = repr(value) if isinstance(value, str) else _json_type(value)
            raise SchemaViolation(SCHEMA_MISMATCH, path, f"expected one of {listing}, got {shown}")
        return value
    return check


def _array_checker(item_checker: Checker) -> Checker:
    def check(value, path):
        if type(value) is not list:
            raise _mismatch(path, "array", value)
        return [item_checker(item, f"{path}[{i}]") for i, item in enumerate(value)]
    return check


def _map_checker(value_checker: Checker) -> Checker:
    def check(value, path):
        if type(value) is not dict:
            raise _mismatch(path, "object", value)
        return {key: value_checker(item, f"{path}.{key}") for key, item in value.items()}
    return check


_NO_DEFAULT = object()


def _record_fields(schema: dict[str, Any]) -> list[tuple[str, Checker, Any]]:
    return [(f["name"], compile_checker(f["type"]), f.get("default", _NO_DEFAULT)) for f in schema["fields"]]


def _record_checker(schema: dict[str, Any]) -> Checker:
    fields = _record_fields(schema)
    names = frozenset(name for name, _, _ in fields)

    def check(value, path):
        if type(value) is not dict:
            raise _mismatch(path, "object", value)
        unknown = sorted(set(value) - names)
        if unknown:
            raise SchemaViolation(SCHEMA_MISMATCH, f"{path}.{unknown[0]}", "unknown field")
        out = {}
        for name, checker, default in fields:
            field_path = f"{path}.{name}"
            if name in value:
                out[name] = checker(value[name], field_path)
            elif default is _NO_DEFAULT:
                raise SchemaViolation(MISSING_FIELD, field_path, "required field is missing")
            else:
                out[name] = default
        return out
    return check


class EventValidator:
    """Validates a top-level event object against one wire version; resolves it to the latest version.

    `validate(obj)` returns a tuple of values in the latest schema's field order; it raises
    UnknownFields for fields no version defines, and `resolve(obj)` ignores those. Top-level keys
    in `ignored_keys` (the JSON envelope's `schema_version`) are not schema fields.

    This runs once per event, so it is generated Python: each field gets an inline type test for
    the common case and falls back to the compiled checker, which normalizes (int -> double,
    datetime -> millis) or raises with the field path.
    """

    def __init__(self, version: int, ignored_keys: frozenset[str] = frozenset({"schema_version"})):
        version_schema = registry.event_schema(version)
        latest_schema = registry.event_schema(registry.LATEST_EVENT_SCHEMA_VERSION)
        problems = registry.resolution_problems(latest_schema, version_schema)
        if problems:
            raise ValueError(f"event schema v{version} does not resolve to the latest: {problems}")
        self.version = version
        self.field_names = tuple(f["name"] for f in latest_schema["fields"])
        self.validate = _generate_validator(version_schema, latest_schema,
                                            frozenset(f["name"] for f in version_schema["fields"]) | ignored_keys)

    def resolve(self, obj: Any) -> tuple[tuple, tuple[str, ...]]:
        """(values, names of the ignored fields): `validate`, ignoring fields no event schema version
        defines, as Avro resolution ignores writer fields the reader lacks."""
        try:
            return self.validate(obj), ()
        except UnknownFields as unknown:
            names = frozenset(unknown.names)
            return self.validate({key: value for key, value in obj.items() if key not in names}), unknown.names


def _fast_test(schema: Any, var: str) -> str:
    """A Python expression that is True when `var` already has its normalized form for `schema`."""
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        tests = [_fast_test(b, var) for b in branches]
        if any(t == "False" for t in tests):
            return "False"
        return " or ".join(([f"{var} is None"] if len(branches) < len(schema) else []) + [f"({t})" for t in tests])
    kind = schema if isinstance(schema, str) else schema["type"]
    if kind == "string":
        return f"type({var}) is str"
    if kind in ("int", "long"):
        low, high = _INT32 if kind == "int" else _INT64
        return f"type({var}) is int and {low} <= {var} <= {high}"
    if kind in ("float", "double"):
        limit = _FLOAT_MAX[kind]
        return f"type({var}) is float and {-limit!r} <= {var} <= {limit!r}"
    if kind == "enum":
        return f"type({var}) is str and {var} in {frozenset(schema['symbols'])!r}"
    if kind == "array" and schema["items"] == "string":
        return f"type({var}) is list and (not {var} or all(type(x) is str for x in {var}))"
    if kind == "map" and schema["values"] == "string":
        return f"type({var}) is dict and (not {var} or all(type(x) is str for x in {var}.values()))"
    return "False"


def _generate_validator(version_schema: dict[str, Any], latest_schema: dict[str, Any],
                        known_keys: frozenset[str]) -> Callable[[Any], tuple]:
    latest_names = [f["name"] for f in latest_schema["fields"]]
    own = {f["name"]: f for f in version_schema["fields"]}
    namespace: dict[str, Any] = {"_known": known_keys, "_mismatch": _mismatch, "_unknown": _raise_unknown,
                                 "_version": version_schema, "_latest": frozenset(latest_names)}
    lines = ["def validate(obj):",
             "    if type(obj) is not dict:",
             "        raise _mismatch('$', 'object', obj)",
             "    if not _known.issuperset(obj):",
             "        _unknown(obj, _known, _latest)"]
    values = []
    for i, name in enumerate(latest_names):
        if name not in own:
            default = next(f for f in latest_schema["fields"] if f["name"] == name).get("default")
            values.append(repr(default))  # literal: a fresh list/dict per event
            continue
        field = own[name]
        namespace[f"_slow{i}"] = _slow_path(name, compile_checker(field["type"]), field.get("default", _NO_DEFAULT))
        namespace[f"_name{i}"] = name
        lines.append(f"    v{i} = obj.get(_name{i}, _slow{i})")
        lines.append(f"    if not ({_fast_test(field['type'], f'v{i}')}):")
        lines.append(f"        v{i} = _slow{i}(v{i})")
        values.append(f"v{i}")
    lines.append(f"    return ({', '.join(values)},)")
    exec("\n".join(lines), namespace)  # noqa: S102 - source built above from the schema only
    return namespace["validate"]


def _slow_path(name: str, checker: Checker, default: Any) -> Callable[[Any], Any]:
    """Missing value (the function itself stands in for it) -> default or MISSING_FIELD; else check."""
    def slow(value):
        if value is slow:
            if default is _NO_DEFAULT:
                raise SchemaViolation(MISSING_FIELD, name, "required field is missing")
            return _copy_default(default)
        return checker(value, name)
    return slow


def _raise_unknown(obj: dict, known: frozenset[str], latest: frozenset[str]) -> None:
    unknown = sorted(k for k in obj if k not in known)
    defined_later = [k for k in unknown if k in latest]
    if defined_later:
        raise SchemaViolation(SCHEMA_MISMATCH, str(defined_later[0]), "unknown field for this event schema version")
    raise UnknownFields(tuple(unknown))


def _copy_default(default: Any) -> Any:
    return type(default)() if isinstance(default, (list, dict)) and not default else default
