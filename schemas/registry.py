"""Loads the bundled Avro schemas by name and version, and checks reader/writer compatibility.

The files live next to this module (package data), so managed runners that install the sdist
find them too.
"""
from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import fastavro

EVENT_SCHEMA_VERSIONS = (1, 2)
LATEST_EVENT_SCHEMA_VERSION = max(EVENT_SCHEMA_VERSIONS)

_PRIMITIVE_PROMOTIONS = {
    "int": {"int"},
    "long": {"int", "long"},
    "float": {"int", "long", "float"},
    "double": {"int", "long", "float", "double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
    "boolean": {"boolean"},
    "null": {"null"},
}


def load_schema_json(file_name: str) -> dict[str, Any]:
    """The raw JSON of a bundled `.avsc` file, e.g. "annotation_event.v2.avsc", as a fresh dict.

    Write Avro files with this, not the parsed schema: the parsed form's key order varies between
    processes, and fastavro copies the schema it is given into the file header.
    """
    return json.loads(_schema_text(file_name))


@functools.cache
def _schema_text(file_name: str) -> str:
    return resources.files(__package__).joinpath(file_name).read_text(encoding="utf-8")


@functools.cache
def _parsed(file_name: str) -> dict[str, Any]:
    # _write_hint=False keeps the schema usable as a reader schema too. fastavro documents the argument but
    # marks it internal; tests/schemas/test_arrow_schemas.py pins what we rely on.
    return fastavro.parse_schema(load_schema_json(file_name), _write_hint=False)


def event_schema(version: int) -> dict[str, Any]:
    """The parsed AnnotationEvent schema of one wire version (1 or 2)."""
    if version not in EVENT_SCHEMA_VERSIONS:
        raise KeyError(f"unknown event schema version {version!r}; known: {EVENT_SCHEMA_VERSIONS}")
    return _parsed(event_schema_file(version))


# v2 = v1 + `labels` (multi-label) and `score` (ratings); v3 = v2 + `probabilities` (soft labels), all with
# defaults; v1 and v2 stay for readers of old versions. Single-label methods publish single.v2 = v1 +
# `probabilities`, without the two columns they would only ever fill with [] and null.
CONSENSUS_ROW_SCHEMA_FILE = "consensus_row.v3.avsc"
SINGLE_LABEL_ROW_SCHEMA_FILE = "consensus_row.single.v2.avsc"
DEAD_LETTER_SCHEMA_FILE = "dead_letter.v1.avsc"


def event_schema_file(version: int) -> str:
    return f"annotation_event.v{version}.avsc"


def schema_fingerprint(schema: dict[str, Any]) -> str:
    """Rabin (CRC-64-AVRO) fingerprint of the schema's parsing canonical form, hex."""
    return fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(schema), "CRC-64-AVRO")


@functools.cache
def _event_fingerprints() -> dict[str, int]:
    return {schema_fingerprint(event_schema(v)): v for v in EVENT_SCHEMA_VERSIONS}


def event_version_of(writer_schema: dict[str, Any]) -> int | None:
    """The event schema version whose canonical form equals writer_schema, else None."""
    return _event_fingerprints().get(schema_fingerprint(fastavro.parse_schema(writer_schema, _write_hint=False)))


def schema_by_fingerprint(fingerprint: bytes) -> tuple[int, dict[str, Any]] | None:
    """(version, raw schema JSON) of the event schema with this fingerprint, else None.

    `fingerprint` is the 8-byte little-endian CRC-64-AVRO of the parsing canonical form, as Avro's
    single-object encoding carries it (the bytes of `schema_fingerprint`'s hex). The schema is a fresh
    dict, as `load_schema_json` gives it.
    """
    version = _event_fingerprints().get(fingerprint.hex())
    if version is None:
        return None
    return version, load_schema_json(event_schema_file(version))


def resolution_problems(reader: Any, writer: Any, path: str = "") -> list[str]:
    """Why data written with `writer` cannot be read with `reader` (Avro resolution rules); [] if it can.

    Covers what event schemas use: primitives with promotion, logical types on their base type,
    unions, enums, arrays, maps and records (matched by field name, defaults filling gaps).
    """
    reader, writer = _strip_logical(reader), _strip_logical(writer)
    where = path or "<root>"
    if isinstance(writer, list):
        problems = []
        for branch in writer:
            problems += resolution_problems(reader, branch, path)
        return problems
    if isinstance(reader, list):
        if any(not resolution_problems(branch, writer, path) for branch in reader):
            return []
        return [f"{where}: no branch of reader union {_type_name(reader)} accepts writer {_type_name(writer)}"]
    reader_type, writer_type = _type_name(reader), _type_name(writer)
    if reader_type in _PRIMITIVE_PROMOTIONS or writer_type in _PRIMITIVE_PROMOTIONS:
        ok = writer_type == reader_type or writer_type in _PRIMITIVE_PROMOTIONS.get(reader_type, ())
        return [] if ok else [f"{where}: writer {writer_type} cannot be read as {reader_type}"]
    if reader_type != writer_type:
        return [f"{where}: writer {writer_type} cannot be read as {reader_type}"]
    if reader_type == "enum":
        missing = set(writer["symbols"]) - set(reader["symbols"])
        if missing and "default" not in reader:
            return [f"{where}: writer enum symbols {sorted(missing)} unknown to reader"]
        return []
    if reader_type == "array":
        return resolution_problems(reader["items"], writer["items"], f"{path}[]")
    if reader_type == "map":
        return resolution_problems(reader["values"], writer["values"], f"{path}{{}}")
    if reader_type == "record":
        writer_fields = {field["name"]: field for field in writer["fields"]}
        problems = []
        for field in reader["fields"]:
            field_path = f"{path}.{field['name']}" if path else field["name"]
            if field["name"] in writer_fields:
                problems += resolution_problems(field["type"], writer_fields[field["name"]]["type"], field_path)
            elif "default" not in field:
                problems.append(f"{field_path}: missing from writer and has no default")
        return problems
    return [f"{where}: unsupported type {reader_type}"]


def _strip_logical(schema: Any) -> Any:
    """{"type": "long", "logicalType": ...} and {"type": "long"} both resolve as "long"."""
    if isinstance(schema, dict) and schema.get("type") in _PRIMITIVE_PROMOTIONS:
        return schema["type"]
    return schema


def _type_name(schema: Any) -> str:
    if isinstance(schema, str):
        return schema.rsplit(".", 1)[-1] if schema not in _PRIMITIVE_PROMOTIONS else schema
    if isinstance(schema, list):
        return "union[" + ",".join(_type_name(s) for s in schema) + "]"
    return schema["type"]
