"""Arrow schemas derived from the bundled Avro schemas, so each record layout is written once (the .avsc).

Mapping: string -> string, bytes -> binary, int -> int32, long -> int64, float -> float32,
double -> float64, boolean -> bool, enum -> string, array -> list, map -> map<string, _>,
["null", T] -> T nullable, anything else not nullable. Logical types keep their base type: a
timestamp-millis travels as the wire's int64 milliseconds (the validators keep integers so an
out-of-range time is a dead letter, not an overflow).
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa

_PRIMITIVES = {"string": pa.string(), "bytes": pa.binary(), "int": pa.int32(), "long": pa.int64(),
               "float": pa.float32(), "double": pa.float64(), "boolean": pa.bool_()}


def arrow_type(avro_type: Any) -> tuple[pa.DataType, bool]:
    """(Arrow type, nullable) of one Avro field type."""
    if isinstance(avro_type, list):
        branches = [branch for branch in avro_type if branch != "null"]
        if len(branches) != 1:
            raise ValueError(f"only [\"null\", T] unions map to Arrow, got {avro_type}")
        return arrow_type(branches[0])[0], "null" in avro_type
    if isinstance(avro_type, str):
        if avro_type not in _PRIMITIVES:
            raise ValueError(f"no Arrow type for Avro type {avro_type!r}")
        return _PRIMITIVES[avro_type], False
    kind = avro_type["type"]
    if kind == "enum":
        return pa.string(), False
    if kind == "array":
        return pa.list_(arrow_type(avro_type["items"])[0]), False
    if kind == "map":
        return pa.map_(pa.string(), arrow_type(avro_type["values"])[0]), False
    if kind == "record":
        return pa.struct(arrow_fields(avro_type)), False
    return arrow_type(kind)  # a primitive with attributes, e.g. {"type": "long", "logicalType": ...}


def arrow_fields(record: dict[str, Any]) -> list[pa.Field]:
    """The Arrow fields of an Avro record schema's fields, in order."""
    fields = []
    for field in record["fields"]:
        data_type, nullable = arrow_type(field["type"])
        fields.append(pa.field(field["name"], data_type, nullable=nullable))
    return fields


def arrow_schema(record: dict[str, Any]) -> pa.Schema:
    return pa.schema(arrow_fields(record))
