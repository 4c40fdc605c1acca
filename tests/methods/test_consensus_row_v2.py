"""Consensus row schema v2 (labels, score) and the annotator columns bias / noise_scale."""
import io

import fastavro
import numpy as np
import pyarrow as pa
import pytest

from labelbeam.schemas import registry
from labelbeam.transforms.inference.annotator_stats import (
    ANNOTATOR_SCHEMA,
    decision_cells,
    partial_annotator_stats,
    sum_partial_stats,
    summarize_annotators,
)
from labelbeam.transforms.methods.base import CONSENSUS_SCHEMA
from labelbeam.transforms.publish import sorted_labels
from labelbeam.transforms.storage.table_files import avro_table_bytes, parquet_bytes


def test_the_full_row_schema_is_v3_and_matches_the_arrow_schema():
    assert registry.CONSENSUS_ROW_SCHEMA_FILE == "consensus_row.v3.avsc"
    v3 = registry.load_schema_json("consensus_row.v3.avsc")
    fastavro.parse_schema(v3)
    assert [f["name"] for f in v3["fields"]] == CONSENSUS_SCHEMA.names
    assert all(f.get("doc") for f in v3["fields"])
    v2 = registry.load_schema_json("consensus_row.v2.avsc")
    assert [f["name"] for f in v2["fields"]] == CONSENSUS_SCHEMA.names[:8]
    v1 = registry.load_schema_json("consensus_row.v1.avsc")
    assert [f["name"] for f in v1["fields"]] == CONSENSUS_SCHEMA.names[:6]
    single = registry.load_schema_json(registry.SINGLE_LABEL_ROW_SCHEMA_FILE)
    assert [f["name"] for f in single["fields"]] == CONSENSUS_SCHEMA.names[:6] + ["probabilities"]


@pytest.mark.parametrize("old, new", [("consensus_row.v1.avsc", "consensus_row.v3.avsc"),
                                      ("consensus_row.v2.avsc", "consensus_row.v3.avsc"),
                                      ("consensus_row.v1.avsc", "consensus_row.single.v2.avsc")])
def test_older_rows_read_under_the_newer_schemas(old, new):
    assert registry.resolution_problems(fastavro.parse_schema(registry.load_schema_json(new)),
                                        fastavro.parse_schema(registry.load_schema_json(old))) == []


def test_v1_rows_read_under_v2_get_empty_labels_and_null_score():
    v1 = registry.load_schema_json("consensus_row.v1.avsc")
    v2 = registry.load_schema_json("consensus_row.v2.avsc")
    assert registry.resolution_problems(fastavro.parse_schema(v2), fastavro.parse_schema(v1)) == []
    row = {"item_id": "i1", "label": "cat", "confidence": 1.0, "num_votes": 1, "agreement": None, "status": "ok"}
    buffer = io.BytesIO()
    fastavro.writer(buffer, v1, [row])
    buffer.seek(0)
    assert list(fastavro.reader(buffer, reader_schema=v2)) == [{**row, "labels": [], "score": None}]
    buffer.seek(0)
    v3 = registry.load_schema_json("consensus_row.v3.avsc")
    assert list(fastavro.reader(buffer, reader_schema=v3)) == [{**row, "labels": [], "score": None,
                                                                 "probabilities": None}]


def test_rows_with_labels_and_score_write_the_same_bytes_twice():
    rows = pa.Table.from_pylist([
        {"item_id": "b", "label": None, "confidence": 0.5, "num_votes": 2, "agreement": 0.0, "status": "tie",
         "labels": ["x", "y"], "score": None, "probabilities": None},
        {"item_id": "a", "label": None, "confidence": 1.0, "num_votes": 1, "agreement": None, "status": "ok",
         "labels": [], "score": 3.25, "probabilities": None}], schema=CONSENSUS_SCHEMA)
    table = sorted_labels([rows])
    schema = registry.load_schema_json(registry.CONSENSUS_ROW_SCHEMA_FILE)
    assert parquet_bytes(table) == parquet_bytes(sorted_labels([rows.slice(1), rows.slice(0, 1)]))
    data = avro_table_bytes(schema, table, "labels.avro")
    assert data == avro_table_bytes(schema, sorted_labels([rows.slice(1), rows.slice(0, 1)]), "labels.avro")
    assert list(fastavro.reader(io.BytesIO(data))) == table.to_pylist()


def test_bias_and_noise_scale_survive_summing_and_are_null_for_categorical_methods():
    def ratings_part(bias):
        return decision_cells(pa.array(["w1", "w2"]), pa.array(["score=within"] * 2),
                              pa.array(["score=within", "score=outside"]), np.ones(2), np.ones(2, dtype=np.int64),
                              bias=np.array([bias, np.nan]), noise_scale=np.array([0.5, 0.25]))
    summed = sum_partial_stats([ratings_part(-1.5), ratings_part(-1.5)])
    assert summed.column("consensus").to_pylist() == [2, 2]
    table, labels = summarize_annotators([ratings_part(-1.5), ratings_part(-1.5)], lambda annotator: annotator)
    assert table.schema == ANNOTATOR_SCHEMA and labels == ["score=outside", "score=within"]
    rows = {row["annotator"]: row for row in table.to_pylist()}
    assert (rows["w1"]["bias"], rows["w1"]["noise_scale"], rows["w1"]["votes"]) == (-1.5, 0.5, 2)
    assert (rows["w2"]["bias"], rows["w2"]["noise_scale"], rows["w2"]["agreement"]) == (None, 0.25, 0.0)
    categorical = partial_annotator_stats(pa.array(["w1"]), np.array([0]), np.array([0]), np.array([0]),
                                          pa.array(["cat"]), np.array([[1.0]]), np.array([0]))
    [row] = summarize_annotators([categorical], lambda annotator: annotator)[0].to_pylist()
    assert row["bias"] is None and row["noise_scale"] is None and row["accuracy"] == 1.0
