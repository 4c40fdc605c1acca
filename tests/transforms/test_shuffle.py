"""GroupBatchesOnDisk groups (key, RecordBatch) pairs as GroupByKey does, through files in its directory."""
import os
import random

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from labelbeam.transforms.shuffle import GroupBatchesOnDisk, group_batches, read_batch_files


def keyed_batches(seed: int, count: int) -> list[tuple[int, pa.RecordBatch]]:
    """Batches whose dictionary column's dictionary differs from batch to batch, as the parser's source does."""
    rng = random.Random(seed)
    pairs = []
    for index in range(count):
        rows = rng.randint(0, 40)
        batch = pa.RecordBatch.from_arrays([
            pa.array([f"row-{index}-{i}" for i in range(rows)], pa.string()),
            pa.array([f"source-{index % 3}-{rng.randint(0, 2)}" for _ in range(rows)], pa.string()).dictionary_encode(),
            pa.array([rng.random() if rng.random() > 0.2 else None for _ in range(rows)], pa.float64()),
        ], ["id", "source", "value"])
        pairs.append((rng.randint(0, 5), batch))
    return pairs


def rows_per_key(pairs) -> list[tuple[int, tuple]]:
    return sorted((key, tuple(sorted(batch.column("id").to_pylist())))
                  for key, batch in _merged(pairs).items())


def _merged(pairs) -> dict[int, pa.Table]:
    merged: dict[int, list[pa.RecordBatch]] = {}
    for key, batch in pairs:
        merged.setdefault(key, []).append(batch)
    return {key: pa.Table.from_batches(batches) for key, batches in merged.items()}


def grouped_rows(key_and_batches) -> tuple[int, tuple]:
    key, batches = key_and_batches
    return key, tuple(sorted(row for batch in batches for row in batch.column("id").to_pylist()))


def test_groups_every_row_under_its_key_as_group_by_key_does(tmp_path):
    pairs = keyed_batches(seed=3, count=60)
    expected = rows_per_key(pairs)
    assert len(expected) == 6
    with TestPipeline(runner="FnApiRunner") as pipeline:
        keyed = pipeline | beam.Create(pairs, reshuffle=True).with_output_types(tuple[int, pa.RecordBatch])
        on_disk = keyed | "OnDisk" >> GroupBatchesOnDisk(str(tmp_path)) | "RowsOnDisk" >> beam.Map(grouped_rows)
        in_memory = keyed | "InMemory" >> beam.GroupByKey() | "RowsInMemory" >> beam.Map(grouped_rows)
        assert_that(on_disk, equal_to(expected), label="OnDisk")
        assert_that(in_memory, equal_to(expected), label="InMemory")
    assert os.listdir(tmp_path), "the batches went through the directory"


def test_a_file_reads_back_values_nulls_and_each_batchs_own_dictionary(tmp_path):
    pairs = [(2, batch) for _, batch in keyed_batches(seed=8, count=5)]
    with TestPipeline(runner="FnApiRunner") as pipeline:
        _ = (pipeline | beam.Create(pairs).with_output_types(tuple[int, pa.RecordBatch])
             | GroupBatchesOnDisk(str(tmp_path)))
    paths = [str(path) for path in tmp_path.iterdir()]
    assert all(os.path.basename(path).startswith("00002-") for path in paths)
    key, batches = read_batch_files(2, paths)
    assert key == 2
    read = pa.Table.from_batches(batches).sort_by("id")
    written = pa.Table.from_batches([batch for _, batch in pairs]).sort_by("id")
    assert read.column("id").equals(written.column("id"))
    assert read.column("value").equals(written.column("value"))
    assert read.column("source").cast(pa.string()).equals(written.column("source").cast(pa.string()))


@pytest.mark.parametrize("directory", [None, "dir"])
def test_group_batches_uses_the_runner_without_a_directory_and_a_subfolder_with_one(tmp_path, directory):
    transform = group_batches(str(tmp_path / directory) if directory else None, "by-item")
    if directory is None:
        assert isinstance(transform, beam.GroupByKey)
    else:
        assert isinstance(transform, GroupBatchesOnDisk)
        assert (tmp_path / "dir" / "by-item").is_dir()


def test_each_bundle_writes_its_own_files_and_a_key_reads_them_all(tmp_path):
    from labelbeam.transforms.shuffle import WriteBatchFilesFn
    pairs = keyed_batches(seed=11, count=30)
    write = WriteBatchFilesFn(str(tmp_path))
    paths: dict[int, list[str]] = {}
    for bundle in (pairs[:10], pairs[10:25], pairs[25:]):
        write.start_bundle()
        for pair in bundle:
            write.process(pair)
        for named in write.finish_bundle():
            key, path = named.value
            paths.setdefault(key, []).append(path)
    assert max(len(files) for files in paths.values()) == 3
    assert sorted(grouped_rows(read_batch_files(key, files)) for key, files in paths.items()) == rows_per_key(pairs)
