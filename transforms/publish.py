"""PublishVersion: quarantine a build's dead letters, then write its tables and (last) its manifest.

    ROOT/<dataset>/versions/<N>/labels/labels-00000-of-0000K.parquet     one table per folder, so
    ROOT/<dataset>/versions/<N>/labels_avro/labels-00000-of-0000K.avro   pyarrow.dataset, pandas and
    ROOT/<dataset>/versions/<N>/annotators/annotators-00000-of-00001.parquet  DuckDB read one table
    ROOT/<dataset>/versions/<N>/preferences/preferences-00000-of-00001.jsonl  per path
    ROOT/<dataset>/versions/<N>/manifest.json                            last, atomic, create-only
    ROOT/<dataset>/quarantine/<N>/dead_letters-00000-of-0000K.avro       raw bytes: outside the version

Dead letters keep their raw input (annotator ids included), so they never go inside a version: they
are quarantined beside it, replayable, and the manifest lists them in its `dead_letters` section
(rows per reason, and each quarantined file's path relative to ROOT/<dataset>, rows, bytes, sha256),
not in `files`. They are written first, so they survive a refused build. Annotators appear only under
keyed pseudonyms; an empty key is refused.

Files are written whole by one worker from globally sorted rows, so the same rows always give
byte-identical files: Parquet via pyarrow, Avro via fastavro with a sync marker derived from the
content. All writes go through Beam FileSystems. The last thing written is the candidate manifest
(`.candidate.json` in the version folder, invisible to readers): the launcher (pipelines/build.py)
checks its counts (events/conservation.py) and, if they pass, publishes it as manifest.json.

With --method bradley_terry the version also holds preferences/preferences-00000-of-00001.jsonl, the
prompt/chosen/rejected records of transforms/inference/preferences.py (TRL DPOTrainer's format), listed in
`files` like every other file and described in the manifest's `preferences` section. The manifest's
`consensus` section says which votes the method uses and how many took part: `votes_used` is the sum
of the rows' num_votes, `votes_unused` = counts.votes - votes_used (votes of another kind of answer,
unusable comparisons).
"""
from __future__ import annotations

import io
import json
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from labelbeam.schemas import registry
from labelbeam.transforms import (
    coders,  # noqa: F401 - registers the Arrow coder
    stage_metrics,
)
from labelbeam.transforms.events import dead_letters as dl
from labelbeam.transforms.events.conservation import sum_counts
from labelbeam.transforms.events.labeling_time import (
    LABELING_TIME,
    MS_PER_HOUR,
    labeling_summary,
    sum_labeling_time,
)
from labelbeam.transforms.inference import preferences as prefs
from labelbeam.transforms.inference.annotator_stats import (
    key_id,
    keyed_pseudonym,
    sum_partial_stats,
    summarize_annotators,
)
from labelbeam.transforms.inference.version_agreement import (
    AGREEMENT,
    item_agreement,
    sum_annotator_pairs,
    version_agreement,
)
from labelbeam.transforms.methods.base import (
    CLASSES_KEY,
    CONSENSUS_SCHEMA,
    classes_of,
    fit_reports,
    in_class_order,
    with_classes,
)
from labelbeam.transforms.storage import version_store
from labelbeam.transforms.storage.table_files import (
    FileEntry,
    avro_table_bytes,
    num_shards_for,
    parquet_bytes,
    shard_names,
    write_file,
)


def version_classes(tables: list[pa.Table], given: list[str] | None) -> list[str]:
    """The version's class order for soft labels: sorted, --labels and every class a bucket's
    probabilities name (vote and gold labels). [] when no table has soft labels (not a single-label method)."""
    seen = set().union(*(classes_of(table) for table in tables))
    return sorted(seen | set(given or ())) if seen else []


def sorted_labels(tables: list[pa.Table], classes: list[str] | None = None) -> pa.Table:
    """All buckets' rows sorted by item_id; with `classes`, every row's probabilities in that order."""
    if classes:
        tables = [in_class_order(table, classes) for table in tables]
    table = pa.concat_tables(tables) if tables else CONSENSUS_SCHEMA.empty_table()
    table = table.cast(CONSENSUS_SCHEMA).sort_by("item_id").combine_chunks()
    return with_classes(table, classes) if classes else table


def write_label_shards(version_dir: str, labels: pa.Table, rows_per_shard: int,
                       avro_schema: dict | None = None) -> list[FileEntry]:
    """The same rows as Parquet shards (in labels/) and as Avro shards (in labels_avro/), split at the
    same row boundaries.

    Only the columns the row schema (default: the full one) names are written.
    """
    num_shards = num_shards_for(labels.num_rows, rows_per_shard)
    entries = []
    avro_schema = avro_schema or registry.load_schema_json(registry.CONSENSUS_ROW_SCHEMA_FILE)
    labels = labels.select([field["name"] for field in avro_schema["fields"]])
    classes = classes_of(labels) if "probabilities" in labels.column_names else []
    metadata = {CLASSES_KEY.decode(): json.dumps(classes)} if classes else None
    for i, (parquet_name, avro_name) in enumerate(zip(
            shard_names(f"{version_store.LABELS_TABLE}/labels", ".parquet", num_shards),
            shard_names(f"{version_store.LABELS_AVRO_TABLE}/labels", ".avro", num_shards))):
        shard = labels.slice(i * rows_per_shard, rows_per_shard)
        entries.append(write_file(version_dir, parquet_name, parquet_bytes(shard), shard.num_rows))
        entries.append(write_file(version_dir, avro_name,
                                  avro_table_bytes(avro_schema, shard, avro_name, metadata), shard.num_rows))
    return entries


def quarantine_dir_of(version_dir: str) -> str:
    """ROOT/<dataset>/versions/<N> -> ROOT/<dataset>/quarantine/<N>: beside the version, never inside it."""
    versions, version = FileSystems.split(version_dir.rstrip("/"))
    dataset_dir = FileSystems.split(versions)[0]
    return FileSystems.join(dataset_dir, version_store.QUARANTINE, version)


def quarantine_dead_letters(quarantine_dir: str, batches: list[pa.RecordBatch],
                            rows_per_shard: int) -> tuple[list[FileEntry], dict[str, Any]]:
    """Dead letters, raw bytes included, as Avro shards (schemas/dead_letter.v1.avsc) in `quarantine_dir`,
    and the manifest's `dead_letters` section: rows, rows per reason, and the quarantined files with
    paths relative to ROOT/<dataset> (quarantine/<N>/...)."""
    letters = pa.Table.from_batches(batches, schema=dl.DEAD_LETTER_SCHEMA).sort_by(dl.SORT_ORDER)
    num_shards = num_shards_for(letters.num_rows, rows_per_shard)
    schema = registry.load_schema_json(registry.DEAD_LETTER_SCHEMA_FILE)
    prefix = f"{version_store.QUARANTINE}/{FileSystems.split(quarantine_dir.rstrip('/'))[1]}/"
    entries = []
    for i, name in enumerate(shard_names("dead_letters", ".avro", num_shards)):
        shard = letters.slice(i * rows_per_shard, rows_per_shard)
        entry = write_file(quarantine_dir, name, avro_table_bytes(schema, shard, name), shard.num_rows)
        entries.append(entry._replace(path=prefix + entry.path))
    by_reason = {row["values"]: row["counts"] for row in letters.column("reason").value_counts().to_pylist()}
    return entries, {"rows": letters.num_rows, "by_reason": dict(sorted(by_reason.items())),
                     "quarantine": [entry.to_json() for entry in entries]}


def label_summary(labels: pa.Table, vote_labels: list[str]) -> dict[str, Any]:
    """Items, the label set, rows per status and per consensus label, and the mean per-item agreement.

    `labels` is sorted by item_id, so the agreement sum runs in one fixed order (same bits every run).
    """
    statuses = labels.column("status").value_counts().to_pylist()
    chosen = labels.column("label").drop_null().value_counts().to_pylist()
    agreement = labels.column("agreement").drop_null()
    return {
        "items": labels.num_rows,
        "labels": sorted(vote_labels),
        "status": {entry["values"]: entry["counts"] for entry in sorted(statuses, key=lambda e: e["values"])},
        "label_distribution": {entry["values"]: entry["counts"] for entry in sorted(chosen, key=lambda e: e["values"])},
        "agreement": {"mean": float(sum(agreement.to_pylist()) / len(agreement)) if len(agreement) else None,
                      "items": len(agreement)},
    }


def distinct_vote_labels(votes: pa.Table) -> list[str]:
    """Single labels and multi-label entries of some votes, without repeats."""
    single = votes.column("label").drop_null().unique().to_pylist()
    multi = pc.list_flatten(votes.column("labels")).unique().to_pylist()
    return sorted(set(single) | set(multi))


def union_of_label_lists(label_lists: Iterable[list[str]]) -> list[str]:
    """Sorted union; associative, so Beam may combine partial results in any grouping."""
    return sorted(set().union(*label_lists))


LABELS, ANNOTATOR_STATS, DEAD_LETTERS, COUNTS, VOTE_LABELS, PREFERENCES = (
    "labels", "annotator_stats", "dead_letters", "counts", "vote_labels", "preferences")
ANNOTATORS_FILE = f"{version_store.ANNOTATORS_TABLE}/annotators-00000-of-00001.parquet"
PREFERENCES_FILE = f"{version_store.PREFERENCES_TABLE}/preferences-00000-of-00001.jsonl"
ITEM_AGREEMENT_FILE = f"{version_store.ITEM_AGREEMENT_TABLE}/items-00000-of-00001.parquet"
KEY_SOURCES = ("env", "root-key-file")


def write_preferences(version_dir: str, tables: list[pa.Table]) -> tuple[FileEntry, dict[str, Any]]:
    """The DPO export file (sorted by item_id, deterministic bytes) and the manifest's description of it."""
    data, rows = prefs.export_lines(tables)
    entry = write_file(version_dir, PREFERENCES_FILE, data, rows)
    return entry, {"file": PREFERENCES_FILE, "rows": rows, "format": "jsonl",
                   "fields": ["item_id", "prompt", "chosen", "rejected", "confidence"],
                   "reads_with": "TRL DPOTrainer (prompt/chosen/rejected)"}


def vote_use(labels: pa.Table, counts: dict[str, int]) -> dict[str, int]:
    """How many of the standing votes took part in the consensus (the rows' num_votes) and how many not."""
    used = int(pc.sum(labels.column("num_votes")).as_py() or 0)
    return {"votes_used": used, "votes_unused": counts["votes"] - used}


class SumAnnotatorStatsFn(beam.CombineFn):
    """Sums partial annotator statistics tables. The sums are exact integers, so a runner may group
    them any way and the bits stay the same; pending tables are compacted past `compact_rows` rows."""

    def __init__(self, compact_rows: int = 1_000_000):
        super().__init__()
        self._compact_rows = compact_rows

    def create_accumulator(self) -> list:
        return []

    def add_input(self, accumulator: list, table: pa.Table) -> list:
        accumulator.append(table)
        if sum(part.num_rows for part in accumulator) > self._compact_rows:
            accumulator[:] = [sum_partial_stats(accumulator)]
        return accumulator

    def merge_accumulators(self, accumulators) -> list:
        return [sum_partial_stats([part for accumulator in accumulators for part in accumulator])]

    def extract_output(self, accumulator: list) -> pa.Table:
        return sum_partial_stats(accumulator)


def write_annotators(version_dir: str, partials: list[pa.Table], key: bytes, key_source: str = "env",
                     time_per_annotator: pa.Table | None = None,
                     pairs: pa.Table | None = None) -> tuple[FileEntry, dict[str, Any]]:
    """The annotators file (pseudonymized ids, votes, accuracy, agreement, gold accuracy, confusion, and
    with `time_per_annotator` their events and labeling hours) and the manifest's description of it. An
    empty key is refused: it would make the pseudonyms an unkeyed hash, which anyone who can guess the ids
    can reverse."""
    if not key:
        raise ValueError("annotators are never pseudonymized without a key")
    pseudonym = keyed_pseudonym(key)
    table, confusion_labels = summarize_annotators(partials, pseudonym)
    if time_per_annotator is not None:
        table = with_labeling_time(table, time_per_annotator, pseudonym, pairs)
    entry = write_file(version_dir, ANNOTATORS_FILE, parquet_bytes(table), table.num_rows)
    return entry, {"file": ANNOTATORS_FILE, "rows": table.num_rows, "confusion_labels": confusion_labels,
                   "pseudonym": "hmac-sha256", "keyed": True, "key_source": key_source, "key_id": key_id(key)}


ANNOTATOR_TIME_FIELDS = (pa.field("events", pa.int64(), nullable=False),
                         pa.field("labeling_hours", pa.float64(), nullable=False),
                         pa.field("events_without_duration", pa.int64(), nullable=False))
# Pairwise agreement: of the other votes on the items an annotator labelled, the share with the same label.
ANNOTATOR_PAIR_FIELDS = (pa.field("pairs", pa.int64(), nullable=False), pa.field("pair_agreement", pa.float64()))


def with_labeling_time(table: pa.Table, time_per_annotator: pa.Table, pseudonym,
                       pairs: pa.Table | None = None) -> pa.Table:
    """The annotator table with each annotator's valid events and labeling hours (and with `pairs`, their
    pairwise agreement). An annotator whose every vote was withdrawn still did the work: they get a row with
    0 votes."""
    time_names = pa.array([pseudonym(name) for name in time_per_annotator.column("annotator_id").to_pylist()],
                          pa.string())
    missing = pc.invert(pc.is_in(time_names, value_set=table.column("annotator")))
    extra_names = time_names.filter(missing)
    extra = pa.table([extra_names if field.name == "annotator" else
                      pa.array(np.zeros(len(extra_names), np.int64)).cast(field.type) if not field.nullable else
                      pa.nulls(len(extra_names), field.type) for field in table.schema], schema=table.schema)
    table = pa.concat_tables([table, extra])
    row = pc.index_in(table.column("annotator"), value_set=time_names)  # every row has a time row, or none
    hours = pc.divide(time_per_annotator.column("duration_ms").cast(pa.float64()), float(MS_PER_HOUR))
    columns = [pc.fill_null(pc.take(source, row), 0).cast(field.type) for source, field in zip(
        (time_per_annotator.column("events"), hours, time_per_annotator.column("without_duration")),
        ANNOTATOR_TIME_FIELDS)]
    fields = list(ANNOTATOR_TIME_FIELDS)
    if pairs is not None:  # matched on the raw ids, both keyed by annotator_id: no second round of hashing
        pair_row = pc.index_in(time_per_annotator.column("annotator_id"), value_set=pairs.column("annotator_id"))
        shared = pc.fill_null(pc.take(pairs.column("pairs"), pair_row), 0)
        agreed = pc.fill_null(pc.take(pairs.column("agreed_pairs"), pair_row), 0)
        share = pc.if_else(pc.greater(shared, 0), pc.divide(agreed.cast(pa.float64()), shared.cast(pa.float64())),
                           pa.scalar(None, pa.float64()))
        columns += [pc.fill_null(pc.take(shared, row), 0).cast(pa.int64()), pc.take(share, row)]
        fields += ANNOTATOR_PAIR_FIELDS
    return pa.table([*table.columns, *columns], schema=pa.schema([*table.schema, *fields])).sort_by("annotator")


def read_annotators(version_dir: str, manifest: dict[str, Any]) -> pa.Table:
    path = FileSystems.join(version_dir, manifest["annotators"]["file"])
    with FileSystems.open(path) as stream:
        return pq.read_table(io.BytesIO(stream.read()))


class WriteVersionFn(beam.DoFn):
    """All parts of a version, gathered as (kind, value) pairs -> quarantined dead letters, the version's
    tables, and the candidate manifest (version_store.CANDIDATE) that the launcher publishes or refuses.

    Nothing here decides whether the version is published: the launcher checks conservation and the
    publish gate on the candidate's counts, then writes manifest.json. A retried bundle writes the same
    bytes to the same paths.
    """

    def __init__(self, version_dir: str, manifest_base: dict[str, Any], rows_per_shard: int, pseudonym_key: bytes,
                 with_preferences: bool, key_source: str, credit_names: dict[str, str] | None = None):
        super().__init__()
        self._version_dir = version_dir
        self._quarantine_dir = quarantine_dir_of(version_dir)
        self._manifest_base = manifest_base
        self._rows_per_shard = rows_per_shard
        self._pseudonym_key = pseudonym_key
        self._with_preferences = with_preferences
        self._key_source = key_source
        self._credit_names = credit_names

    def process(self, _, parts: Iterable[tuple[str, Any]]):
        by_kind: dict[str, list] = {LABELS: [], ANNOTATOR_STATS: [], DEAD_LETTERS: [], COUNTS: [], VOTE_LABELS: [],
                                    PREFERENCES: [], LABELING_TIME: [], AGREEMENT: []}
        for kind, value in parts:
            by_kind[kind].append(value)
        _, dead_letters = quarantine_dead_letters(self._quarantine_dir, by_kind[DEAD_LETTERS], self._rows_per_shard)
        fits = fit_reports(by_kind[LABELS])
        classes = version_classes(by_kind[LABELS], self._manifest_base.get("params", {}).get("labels"))
        labels = sorted_labels(by_kind[LABELS], classes)
        counts = {**sum_counts(by_kind[COUNTS]), "items": labels.num_rows}
        summary = label_summary(labels, union_of_label_lists(by_kind[VOTE_LABELS]))
        time_per_annotator = sum_labeling_time(by_kind[LABELING_TIME])
        pairs = sum_annotator_pairs([partial.annotator_pairs for partial in by_kind[AGREEMENT]])
        annotators_entry, annotators = write_annotators(self._version_dir, by_kind[ANNOTATOR_STATS],
                                                        self._pseudonym_key, self._key_source, time_per_annotator,
                                                        pairs)
        if self._credit_names is not None:  # opted-in names of this version's contributors, never linked to rows
            contributors = set(time_per_annotator.column("annotator_id").to_pylist())
            annotators["credited_names"] = sorted({name for annotator, name in self._credit_names.items()
                                                   if annotator in contributors})
        files = write_label_shards(self._version_dir, labels, self._rows_per_shard, self._manifest_base["schema"]) + \
            [annotators_entry]
        if by_kind[AGREEMENT]:
            items = item_agreement(by_kind[AGREEMENT], labels)
            files.append(write_file(self._version_dir, ITEM_AGREEMENT_FILE, parquet_bytes(items), items.num_rows))
        extra: dict[str, Any] = {}
        if self._with_preferences:
            preferences_entry, extra["preferences"] = write_preferences(self._version_dir, by_kind[PREFERENCES])
            files.append(preferences_entry)
        manifest = {
            **self._manifest_base,
            "counts": counts,
            "files": [entry.to_json() for entry in sorted(files)],
            "labels": summary["labels"],
            **({"classes": classes} if classes else {}),   # the order of every row's probabilities
            "status": summary["status"],
            "label_distribution": summary["label_distribution"],
            # the mean share of agreeing vote pairs, then (with the lifecycle's partials) alpha, kappa, entropy
            "agreement": {**summary["agreement"], **(version_agreement(by_kind[AGREEMENT])
                                                     if by_kind[AGREEMENT] else {})},
            "annotators": annotators,
            "labeling_time": labeling_summary(time_per_annotator),
            "dead_letters": dead_letters,
            "consensus": {**self._manifest_base.get("consensus", {}), **vote_use(labels, counts),
                          **({"fit": fits[0] if len(fits) == 1 else fits} if fits else {})},
            **extra,
        }
        write_file(self._version_dir, version_store.CANDIDATE, version_store.encode_manifest(manifest), 1)
        stage_metrics.count("publish", {"files": len(files), "bytes": sum(entry.bytes for entry in files),
                                        "label_rows": labels.num_rows, "dead_letters": dead_letters.get("rows", 0)})
        yield manifest


class PublishVersion(beam.PTransform):
    """{labels: pa.Table*, annotator_stats: pa.Table*, dead_letters: pa.RecordBatch*, counts: dict*,
    vote_labels: list[str]*, and optionally preferences: pa.Table*} -> manifest.

    With a `preferences` input (bradley_terry) the version also gets the DPO export file, even if empty.

    `vote_labels` are lists of the labels the votes used (the manifest's label set when none was given).
    Every part meets in one place: the files are written whole, from sorted rows, by one worker;
    one gather instead of one per part keeps the graph small (each stage costs the runner time).

    `pseudonym_key` must be a non-empty secret; `key_source` ("env" | "root-key-file") says where it came
    from.
    """

    def __init__(self, version_dir: str, manifest_base: dict[str, Any], rows_per_shard: int,
                 pseudonym_key: bytes, key_source: str, credit_names: dict[str, str] | None = None):
        super().__init__()
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be positive, got {rows_per_shard}")
        if not pseudonym_key:
            raise ValueError("pseudonym_key is empty: annotator ids would be hashed without a key; pass a secret "
                             "(LABELBEAM_PSEUDONYM_KEY or the root's key file)")
        if key_source not in KEY_SOURCES:
            raise ValueError(f"key_source must be one of {', '.join(KEY_SOURCES)}, got {key_source!r}")
        self._version_dir = version_dir
        self._manifest_base = manifest_base
        self._rows_per_shard = rows_per_shard
        self._pseudonym_key = pseudonym_key
        self._key_source = key_source
        self._credit_names = credit_names

    def expand(self, inputs):
        tagged = (inputs[LABELS] | "TagLabels" >> beam.Map(lambda table: (LABELS, table)),
                  (inputs[ANNOTATOR_STATS]
                  | "SumAnnotatorStats" >> beam.CombineGlobally(SumAnnotatorStatsFn()).with_output_types(pa.Table)
                  | "TagAnnotatorStats" >> beam.Map(lambda table: (ANNOTATOR_STATS, table))),
                  inputs[DEAD_LETTERS] | "TagDeadLetters" >> beam.Map(lambda batch: (DEAD_LETTERS, batch)),
                  inputs[COUNTS] | "TagCounts" >> beam.Map(lambda counts: (COUNTS, counts)),
                  inputs[VOTE_LABELS] | "TagVoteLabels" >> beam.Map(lambda labels: (VOTE_LABELS, labels)))
        if LABELING_TIME in inputs:
            tagged += (inputs[LABELING_TIME] | "TagLabelingTime" >> beam.Map(lambda table: (LABELING_TIME, table)),)
        if AGREEMENT in inputs:
            tagged += (inputs[AGREEMENT] | "TagAgreement" >> beam.Map(lambda partial: (AGREEMENT, partial)),)
        with_preferences = PREFERENCES in inputs
        if with_preferences:
            tagged += (inputs[PREFERENCES] | "TagPreferences" >> beam.Map(lambda table: (PREFERENCES, table)),)
        parts = tagged | "FlattenParts" >> beam.Flatten()
        # The parts reach the one writer as a side input: a combine (ToList) would encode and decode the
        # whole version once more as its accumulator, the publish step's largest cost in memory.
        return (parts.pipeline
                | "WriteOnce" >> beam.Create([None])
                | "WriteVersion" >> beam.ParDo(
                    WriteVersionFn(self._version_dir, self._manifest_base, self._rows_per_shard,
                                   self._pseudonym_key, with_preferences, self._key_source, self._credit_names),
                    beam.pvalue.AsIter(parts)))
