"""`labelbeam diff`, `verify`, `rollback`, `promote` and `gc`: compare, check and tend published versions.

    diff ROOT --dataset D A B          items added/removed, labels changed, confidence shifts, counts side by side
    verify ROOT --dataset D [--version N | --all]
                                       sha256, bytes and rows of every file a manifest lists, quarantine included
    rollback|promote ROOT --dataset D --version N
                                       move _latest to an existing complete version by compare-and-swap
    gc ROOT --dataset D [--grace-hours H] [--dry-run]
                                       remove files under versions/ that no manifest references, once older than H

Every read, listing, stat and delete goes through the object-store seam (transforms/storage/stores.py), so
ROOT may be a local folder, file:// or gs://bucket/prefix. ROOT defaults to ./labelbeam-data and --dataset to
sample, as in `versions` and `show`. Nothing here imports apache_beam: `labelbeam --help` stays fast.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import re
import shutil
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import fastavro

from labelbeam.pipelines import catalog
from labelbeam.pipelines.errors import EXIT_OK, EXIT_VERIFY_FAILED, UserError
from labelbeam.pipelines.options import DEFAULT_OUTPUT, check_dataset_name
from labelbeam.transforms.storage import stores, version_store
from labelbeam.transforms.storage.version_store import VERSIONS, StoreError

if TYPE_CHECKING:
    import pyarrow as pa
# pyarrow (compute, parquet) is imported where it is used: it would add ~80 ms to `labelbeam --help`.

DEFAULT_CONFIDENCE_THRESHOLD = 0.1
DEFAULT_EXAMPLES = 5
DEFAULT_GRACE_HOURS = 24.0
# Count keys shown first by `diff`, in the manifest's reading order; any others follow sorted.
COUNT_KEYS = ("read", "valid", "invalid", "duplicates", "superseded", "deleted", "votes", "items")
# Files a crashed or refused publish leaves inside a version folder: temporary `.<name>.tmp-*` files and the
# launcher's candidate manifest (`.candidate.json`). No manifest ever lists them. (LocalStore hides its own
# `.<name>.tmp-<hex>` and `.<name>.lock` from listings; a crashed build's folder goes whole, those included.)
TEMPORARY_NAME = re.compile(r"\.(candidate.*|.+\.tmp-.*)")
_VERSION_NAME = re.compile(r"[1-9][0-9]*")


def _join(base: str, relative: str) -> str:
    """A manifest's `/`-separated relative path below `base`, as the store names it."""
    return stores.join(base, *relative.split("/"))


def _relative(path: str, base: str) -> str:
    """`path` relative to `base`, with `/` separators (local paths use os.sep; object stores use `/`)."""
    relative = path[len(base):].lstrip("/\\")
    return relative.replace("\\", "/")


def _read(path: str) -> bytes | None:
    """The object's bytes as stored (never decompressed), None if absent; StoreError or OSError if unreadable."""
    return stores.store_for(path).read(path)


def _published_versions(root: str, dataset: str) -> list[int]:
    try:
        versions = version_store.version_numbers(root, dataset)
    except StoreError as err:
        raise UserError(str(err)) from None
    except OSError as err:
        raise UserError(f"cannot list the versions of {dataset!r} under {root}: {err.strerror or err}") from None
    if not versions:
        raise UserError(f"no published versions of dataset {dataset!r} under {root}")
    return versions


def _latest_version(root: str, dataset: str) -> int:
    try:
        latest = version_store.read_latest(root, dataset)
    except (OSError, StoreError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"cannot read the _latest pointer of {dataset!r} under {root}: {err}") from None
    if latest is None:
        raise UserError(f"no published versions of dataset {dataset!r} under {root}")
    return latest


def _complete_manifest(root: str, dataset: str, version: int, published: list[int]) -> dict[str, Any]:
    """The manifest of a published `version`, else a UserError naming the published ones."""
    if version not in published:
        raise UserError(f"dataset {dataset!r} has no complete version {version} (no manifest.json); "
                        f"published: {', '.join(map(str, published))}")
    try:
        manifest = version_store.read_manifest(root, dataset, version)
    except version_store.BrokenManifest as err:
        raise UserError(f"dataset {dataset!r} version {version} is broken: {err}") from None
    if manifest is None:  # removed since it was listed
        raise UserError(f"dataset {dataset!r} version {version} has no manifest.json")
    return manifest


def _parse_version(text: str, what: str, root: str, dataset: str) -> int:
    """A version number, or `latest` for the version _latest points at."""
    if text == "latest":
        return _latest_version(root, dataset)
    if _VERSION_NAME.fullmatch(text) is None:
        raise UserError(f"{what} {text!r} is not a version: give a number such as 2, or 'latest'")
    return int(text)


def add_root_arguments(parser: argparse.ArgumentParser) -> None:
    """ROOT (optional, ./labelbeam-data) and --dataset (sample), as `versions` and `show` take them."""
    catalog.add_catalog_arguments(parser, with_version=False)


LABEL_COLUMNS = ("item_id", "label", "confidence", "status")


def read_labels(root: str, dataset: str, version: int, manifest: dict[str, Any],
                columns: tuple[str, ...] = LABEL_COLUMNS) -> pa.Table:
    """The version's consensus rows (`columns`) from the labels Parquet shards its manifest lists
    (`labels/labels-*.parquet`; older versions kept them at the version's top level)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    version_dir = version_store.version_dir(root, dataset, version)
    shards = sorted(entry["path"] for entry in manifest.get("files", [])
                    if entry["path"].rsplit("/", 1)[-1].startswith("labels-") and entry["path"].endswith(".parquet"))
    if not shards:
        raise UserError(f"dataset {dataset!r} version {version}: its manifest lists no labels Parquet file")
    tables = []
    for shard in shards:
        path = _join(version_dir, shard)
        try:
            data = _read(path)
            if data is None:
                raise FileNotFoundError("no such file")
            table = pq.read_table(io.BytesIO(data))
        except (OSError, StoreError, pa.ArrowException) as err:
            raise UserError(f"cannot read {path}: {err}; `labelbeam verify` checks the version's files") from None
        missing = set(columns) - set(table.column_names)
        if missing:
            raise UserError(f"{path} has no {', '.join(sorted(missing))} column")
        tables.append(table.select(list(columns)))
    return pa.concat_tables(tables, promote_options="permissive").sort_by("item_id")


def _changed(old: pa.ChunkedArray, new: pa.ChunkedArray) -> pa.ChunkedArray:
    """Row-wise `old != new`, where null equals null and differs from any value."""
    import pyarrow.compute as pc

    one_null = pc.xor(pc.is_null(old), pc.is_null(new))
    return pc.or_(pc.fill_null(pc.not_equal(old, new), False), one_null)


def diff_labels(old: pa.Table, new: pa.Table, threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
                examples: int = DEFAULT_EXAMPLES) -> dict[str, Any]:
    """Two versions' consensus rows (item_id, label, confidence, status) -> what changed between them.

    Items are matched by item_id (unique within a version). Labels, statuses and confidences compare on the
    items in both; `examples` lists the first changed labels by item_id. Confidence shifts are |new - old|,
    counted when strictly above `threshold`. The result is JSON-ready and does not depend on row order.
    """
    import pyarrow.compute as pc

    old_ids, new_ids = old["item_id"], new["item_id"]
    added = new.filter(pc.invert(pc.is_in(new_ids, value_set=old_ids.combine_chunks())))["item_id"]
    removed = old.filter(pc.invert(pc.is_in(old_ids, value_set=new_ids.combine_chunks())))["item_id"]
    common = old.rename_columns(["item_id", "label_a", "confidence_a", "status_a"]).join(
        new.rename_columns(["item_id", "label_b", "confidence_b", "status_b"]), keys="item_id",
        join_type="inner").sort_by("item_id")
    label_changed = _changed(common["label_a"], common["label_b"])
    status_changed = _changed(common["status_a"], common["status_b"])
    shift = pc.abs(pc.subtract(common["confidence_b"], common["confidence_a"]))
    changed_rows = common.filter(label_changed).slice(0, examples).to_pylist()
    mean_shift = pc.mean(shift).as_py()
    max_shift = pc.max(shift).as_py()
    return {
        "items": {"a": old.num_rows, "b": new.num_rows, "added": len(added), "removed": len(removed),
                  "common": common.num_rows,
                  "added_examples": sorted(added.to_pylist())[:examples],
                  "removed_examples": sorted(removed.to_pylist())[:examples]},
        "labels_changed": {
            "count": pc.sum(label_changed).as_py() or 0,
            "examples": [{"item_id": row["item_id"], "a": row["label_a"], "b": row["label_b"],
                          "confidence_a": row["confidence_a"], "confidence_b": row["confidence_b"]}
                         for row in changed_rows]},
        "status_changed": pc.sum(status_changed).as_py() or 0,
        "confidence": {"compared": common.num_rows - shift.null_count,
                       "mean_abs_shift": None if mean_shift is None else round(mean_shift, 6),
                       "max_abs_shift": None if max_shift is None else round(max_shift, 6),
                       "threshold": threshold,
                       "over_threshold": pc.sum(pc.greater(shift, threshold)).as_py() or 0},
    }


def _count_table(old: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, int | None]]:
    """Manifest counts and status counts of two versions, side by side, with new - old."""
    def flat(manifest):
        counts = {key: value for key, value in manifest.get("counts", {}).items() if isinstance(value, int)}
        counts.update({f"status.{key}": value for key, value in manifest.get("status", {}).items()})
        return counts

    a, b = flat(old), flat(new)
    keys = [key for key in COUNT_KEYS if key in a or key in b]
    keys += sorted((a.keys() | b.keys()) - set(keys))
    for key in keys:  # a status no item had is a count of 0; a count a manifest lacks stays unknown
        if key.startswith("status."):
            a.setdefault(key, 0)
            b.setdefault(key, 0)
    return {key: {"a": a.get(key), "b": b.get(key),
                  "delta": None if a.get(key) is None or b.get(key) is None else b[key] - a[key]}
            for key in keys}


def _changed_params(old: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, Any]]:
    params_a, params_b = old.get("params", {}), new.get("params", {})
    changed = {key: {"a": params_a.get(key), "b": params_b.get(key)}
               for key in sorted(params_a.keys() | params_b.keys()) if params_a.get(key) != params_b.get(key)}
    if old.get("code_version") != new.get("code_version"):
        changed["code_version"] = {"a": old.get("code_version"), "b": new.get("code_version")}
    return changed


def diff_versions(root: str, dataset: str, a: int, b: int, threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
                  examples: int = DEFAULT_EXAMPLES) -> dict[str, Any]:
    """What changed from version `a` to version `b` of a dataset (UserError if either is not published)."""
    published = _published_versions(root, dataset)
    manifest_a = _complete_manifest(root, dataset, a, published)
    manifest_b = _complete_manifest(root, dataset, b, published)
    report = {"dataset": dataset, "a": a, "b": b}
    report.update(diff_labels(read_labels(root, dataset, a, manifest_a), read_labels(root, dataset, b, manifest_b),
                              threshold, examples))
    report["counts"] = _count_table(manifest_a, manifest_b)
    report["params_changed"] = _changed_params(manifest_a, manifest_b)
    return report


def _signed(value: int | None) -> str:
    return "" if value is None else f"{value:+d}"


def _confidence(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _shift(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_diff(report: dict[str, Any]) -> str:
    items, labels, confidence = report["items"], report["labels_changed"], report["confidence"]
    lines = [f"{report['dataset']}: version {report['a']} -> {report['b']}",
             f"  items: {items['a']} -> {items['b']}  (+{items['added']} added, -{items['removed']} removed, "
             f"{items['common']} in both)"]
    for kind in ("added", "removed"):
        shown = items[f"{kind}_examples"]
        if shown:
            lines.append(f"    {kind}: {', '.join(shown)}{' ...' if items[kind] > len(shown) else ''}")
    lines.append(f"  labels changed: {labels['count']} of {items['common']} items in both")
    for example in labels["examples"]:
        lines.append(f"    {example['item_id']}  {example['a']} ({_confidence(example['confidence_a'])}) -> "
                     f"{example['b']} ({_confidence(example['confidence_b'])})")
    lines.append(f"  status changed: {report['status_changed']}")
    lines.append(f"  confidence: mean |shift| {_shift(confidence['mean_abs_shift'])}, "
                 f"max {_shift(confidence['max_abs_shift'])}, {confidence['over_threshold']} of "
                 f"{confidence['compared']} items moved more than {confidence['threshold']:g}")
    for key, change in report["params_changed"].items():
        name = key if key == "code_version" else f"params.{key}"
        lines.append(f"  {name}: {json.dumps(change['a'])} -> {json.dumps(change['b'])}")
    width = max([len("counts")] + [len(key) for key in report["counts"]])
    lines.append(f"  {'counts':<{width}}  {report['a']:>10}  {report['b']:>10}  {'delta':>8}")
    for key, row in report["counts"].items():
        lines.append(f"  {key:<{width}}  {'-' if row['a'] is None else row['a']:>10}  "
                     f"{'-' if row['b'] is None else row['b']:>10}  {_signed(row['delta']):>8}")
    return "\n".join(lines)


def add_diff_arguments(parser: argparse.ArgumentParser) -> None:
    # argparse fills positionals chunk by chunk, so `diff ROOT --dataset D A B` would give ROOT to A with an
    # optional ROOT in front. The positionals are therefore "A-or-ROOT", "B-or-A" and an optional third;
    # run_diff reads two of them as A B and three as ROOT A B.
    parser.usage = "%(prog)s [ROOT] [--dataset NAME] A B [--json] [--threshold T] [--examples K]"
    parser.add_argument("first", metavar="ROOT", help=f"optional: the dataset root given to build --output "
                                                      f"(default: ./{DEFAULT_OUTPUT})")
    parser.add_argument("second", metavar="A", help="the version to compare from: a number or 'latest'")
    parser.add_argument("third", metavar="B", nargs="?", help="the version to compare to: a number or 'latest'")
    parser.add_argument("--dataset", default=catalog.SAMPLE_DATASET, help=f"(default: {catalog.SAMPLE_DATASET})")
    parser.add_argument("--threshold", type=float, default=DEFAULT_CONFIDENCE_THRESHOLD, metavar="T",
                        help="count items whose confidence moved by more than T (default: "
                             f"{DEFAULT_CONFIDENCE_THRESHOLD})")
    parser.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES, metavar="K",
                        help=f"show up to K changed labels, added and removed items (default: {DEFAULT_EXAMPLES})")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")


def run_diff(args: argparse.Namespace, beam_args: list[str]) -> int:
    operands = [args.first, args.second] + ([args.third] if args.third is not None else [])
    root, a, b = operands if len(operands) == 3 else [DEFAULT_OUTPUT, *operands]
    dataset = check_dataset_name(args.dataset)
    if args.examples < 0:
        raise UserError(f"--examples must be 0 or more, got {args.examples}")
    if not args.threshold >= 0:
        raise UserError(f"--threshold must be 0 or more, got {args.threshold}")
    report = diff_versions(root, dataset, _parse_version(a, "A", root, dataset), _parse_version(b, "B", root, dataset),
                           args.threshold, args.examples)
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else format_diff(report))
    return EXIT_OK


@dataclasses.dataclass(frozen=True)
class FileDigest:
    bytes: int
    sha256: str
    rows: int | None            # None: not a format whose rows are counted
    rows_error: str | None = None


def _count_rows(name: str, data: bytes) -> int | None:
    """Rows of a Parquet (footer), Avro (block headers) or JSON Lines file; None for other formats."""
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
    if name.endswith(".avro"):
        return sum(block.num_records for block in fastavro.block_reader(io.BytesIO(data)))
    if name.endswith(".jsonl"):
        return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    return None


def digest_bytes(name: str, data: bytes) -> FileDigest:
    """Size, sha256 and row count of a file's bytes as stored; `name` (its path) says the format."""
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        rows = _count_rows(name.rsplit("/", 1)[-1], data)
    except Exception as err:  # the bytes are untrusted: any decoding failure is a finding, not a bug
        return FileDigest(len(data), sha256, None, f"{type(err).__name__}: {err}")
    return FileDigest(len(data), sha256, rows)


def digest_file(path: str) -> FileDigest | None:
    """digest_bytes of the object at `path`; None if absent (StoreError or OSError if it cannot be read)."""
    data = _read(path)
    return None if data is None else digest_bytes(path, data)


def check_entry(path: str, entry: dict[str, Any]) -> list[str]:
    """What is wrong with the file at `path` against its manifest entry {rows, bytes, sha256}: one text each."""
    missing = [key for key in ("bytes", "sha256", "rows") if key not in entry]
    if missing:
        return [f"its manifest entry has no {', '.join(missing)}"]
    try:
        digest = digest_file(path)
    except (OSError, StoreError) as err:
        return [f"cannot be read: {err}"]
    if digest is None:
        return ["missing"]
    problems = []
    if digest.bytes != entry["bytes"]:
        problems.append(f"{digest.bytes} bytes, the manifest says {entry['bytes']}")
    if digest.sha256 != entry["sha256"]:
        problems.append(f"sha256 {digest.sha256[:16]}..., the manifest says {str(entry['sha256'])[:16]}...")
    if digest.rows_error is not None:
        problems.append(f"its rows cannot be counted ({digest.rows_error})")
    elif digest.rows is not None and digest.rows != entry["rows"]:
        problems.append(f"{digest.rows} rows, the manifest says {entry['rows']}")
    return problems


@dataclasses.dataclass(frozen=True)
class VersionCheck:
    version: int
    files: int                         # files checked: the version's and its quarantined dead letters
    problems: tuple[str, ...]          # one line each: "<path relative to ROOT/<dataset>>: <what is wrong>"


def verify_version(root: str, dataset: str, version: int) -> VersionCheck:
    """Every file the version's manifest lists (`files`, and `dead_letters.quarantine`) against its entry."""
    dataset_dir = version_store.dataset_root(root, dataset)
    version_dir = version_store.version_dir(root, dataset, version)
    manifest_name = f"{VERSIONS}/{version}/{version_store.MANIFEST}"
    try:
        manifest = version_store.read_manifest(root, dataset, version)
    except version_store.BrokenManifest as err:
        return VersionCheck(version, 0, (f"{manifest_name}: broken ({err})",))
    if manifest is None:
        return VersionCheck(version, 0, (f"{manifest_name}: missing",))
    problems = []
    for key, expected in (("dataset", dataset), ("version", version)):
        if manifest.get(key) != expected:
            problems.append(f"{manifest_name}: {key} is {manifest.get(key)!r}, its folder says {expected!r}")
    entries = [(entry, version_dir) for entry in manifest.get("files", [])]
    entries += [(entry, dataset_dir) for entry in manifest.get("dead_letters", {}).get("quarantine", [])]
    if not manifest.get("files"):
        problems.append(f"{manifest_name}: lists no files")
    for entry, base in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            problems.append(f"{manifest_name}: a file entry without a path: {json.dumps(entry)}")
            continue
        path = _join(base, entry["path"])
        name = _relative(path, dataset_dir)
        problems += [f"{name}: {problem}" for problem in check_entry(path, entry)]
    return VersionCheck(version, len(entries), tuple(problems))


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    add_root_arguments(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="default: the version _latest points at")
    which.add_argument("--all", action="store_true", help="verify every published version")


def run_verify(args: argparse.Namespace, beam_args: list[str]) -> int:
    dataset = check_dataset_name(args.dataset)
    published = _published_versions(args.root, dataset)
    if args.all:
        versions = published
    else:
        version = args.version if args.version is not None else _latest_version(args.root, dataset)
        if version not in published:
            raise UserError(f"dataset {dataset!r} has no complete version {version} (no manifest.json); "
                            f"published: {', '.join(map(str, published))}")
        versions = [version]
    problems = files = 0
    for version in versions:
        check = verify_version(args.root, dataset, version)
        for line in check.problems:
            print(line)
        print(f"version {version}: {check.files} files, "
              + (f"{len(check.problems)} problems" if check.problems else "ok"))
        problems += len(check.problems)
        files += check.files
    print(f"verified {len(versions)} version{'s' * (len(versions) != 1)} of {dataset}, {files} files: "
          + (f"{problems} problems" if problems else "ok"))
    return EXIT_VERIFY_FAILED if problems else EXIT_OK


def _unreadable_pointer(root: str, dataset: str) -> tuple[bytes, Any] | None:
    """(bytes, token) of a _latest pointer that exists but names no version; None if it is absent or readable."""
    path = stores.join(version_store.dataset_root(root, dataset), version_store.LATEST)
    current, token = stores.store_for(path).read_versioned(path)
    if current is None:
        return None
    try:
        version_store.pointed_version(current)
    except StoreError:
        return current, token
    return None


def move_latest(root: str, dataset: str, version: int, refuse: Callable[[int | None], None],
                repair: bool = False) -> int | None:
    """Point _latest at the complete `version` (version_store.set_latest: compare-and-swap, "chosen" pointer);
    the version readers saw before (None: the pointer was unreadable).

    `refuse(previous)` may raise to refuse the move; it sees what readers see, so without a pointer that is
    the newest published version (read_latest), and it runs again whenever a concurrent writer won a race.
    An unreadable pointer is a UserError, unless `repair`: then `refuse(None)` runs and the pointer is
    replaced by compare-and-swap too (version_store.set_latest cannot read past it).
    """
    path = stores.join(version_store.dataset_root(root, dataset), version_store.LATEST)
    seen: dict[str, int | None] = {}

    def check(pointed: int | None) -> None:
        seen["previous"] = pointed if pointed is not None else version_store.newest_complete_version(root, dataset)
        refuse(seen["previous"])

    while True:
        unreadable = _unreadable_pointer(root, dataset)
        if unreadable is not None:
            if not repair:
                raise UserError(f"the _latest pointer of {dataset!r} under {root} is unreadable "
                                f"({unreadable[0][:40]!r}); `labelbeam promote --version {version}` sets it")
            refuse(None)
            if stores.store_for(path).compare_and_swap(path, unreadable[1],
                                                       version_store.latest_pointer(version, chosen=True)):
                return None
            continue  # it changed meanwhile: look again
        try:
            version_store.set_latest(root, dataset, version, check)
            return seen["previous"]
        except StoreError as err:
            if _unreadable_pointer(root, dataset) is None:
                raise UserError(str(err)) from None
            # it became unreadable between the two reads: deal with it above


def add_move_arguments(parser: argparse.ArgumentParser) -> None:
    add_root_arguments(parser)
    parser.add_argument("--version", type=int, required=True, help="the complete version _latest should name")


def _move_latest(args: argparse.Namespace, refuse: Callable[[int | None], None], verb: str,
                 repair: bool = False) -> int:
    dataset = check_dataset_name(args.dataset)
    published = _published_versions(args.root, dataset)
    _complete_manifest(args.root, dataset, args.version, published)
    try:
        previous = move_latest(args.root, dataset, args.version, refuse, repair)
    except StoreError as err:
        raise UserError(str(err)) from None
    if previous == args.version:
        print(f"{dataset}: _latest already points at version {args.version}")
    else:
        print(f"{dataset}: _latest {'(none)' if previous is None else previous} -> {args.version} ({verb})")
    return EXIT_OK


def run_rollback(args: argparse.Namespace, beam_args: list[str]) -> int:
    def older_than_latest(previous: int | None) -> None:
        if previous is not None and args.version > previous:
            raise UserError(f"rollback moves _latest back, but version {args.version} is newer than the latest, "
                            f"{previous}; `labelbeam promote --version {args.version}` moves it forward")

    return _move_latest(args, older_than_latest, "rolled back")


def run_promote(args: argparse.Namespace, beam_args: list[str]) -> int:
    return _move_latest(args, lambda previous: None, "promoted", repair=True)


@dataclasses.dataclass(frozen=True)
class Garbage:
    path: str                  # full path, as the store names it
    name: str                  # relative to ROOT/<dataset>, `/`-separated
    bytes: int
    age_seconds: float         # now - the store's update time (GCS: last write; local: mtime)
    bookkeeping: bool = False  # a local store's own leftover (temporary or lock file of a killed writer)


@dataclasses.dataclass(frozen=True)
class Collection:
    removable: tuple[Garbage, ...]       # unreferenced and older than the grace period
    kept: tuple[str, ...]                # unreferenced but within the grace period: one line each
    orphan_dirs: tuple[str, ...]         # version folders without a manifest, removed as a whole


def _group_files(paths: list[str], versions_dir: str) -> dict[str, list[tuple[str, str]]]:
    """(relative, path) of files under versions/ by their first path component (a version folder, or a stray file)."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for path in paths:
        relative = _relative(path, versions_dir)
        groups.setdefault(relative.split("/", 1)[0], []).append((relative, path))
    return groups


def _referenced(root: str, dataset: str, top: str) -> set[str]:
    """Paths (relative to versions/) that the manifest of version folder `top` lists; manifest.json itself."""
    referenced = {f"{top}/{version_store.MANIFEST}"}
    if _VERSION_NAME.fullmatch(top) is None:
        return referenced
    try:
        manifest = version_store.read_manifest(root, dataset, int(top))
    except version_store.BrokenManifest:
        return referenced  # its references are unknown: only temporary files may go, and none is ever listed
    for entry in (manifest or {}).get("files", []):
        referenced.add(f"{top}/{entry['path']}")
    return referenced


def find_garbage(root: str, dataset: str, grace_seconds: float, now: float) -> Collection:
    """What gc may remove under ROOT/<dataset>/versions/ at time `now` (seconds since the epoch).

    - A version folder with manifest.json is published: only its temporary files (TEMPORARY_NAME) that the
      manifest does not list may go, each once older than the grace period. Nothing else in it is touched.
    - Anything else (a crashed or refused build's folder: `.claim` and partial shards, no manifest) goes as a
      whole once its newest file is older than the grace period, so a build still writing keeps its folder.
    Nothing outside versions/ (_latest, quarantine/, the root's key) is ever a candidate. Ages are the store's
    update times; only candidates are stat'ed (one request each on GCS).
    """
    dataset_dir = version_store.dataset_root(root, dataset)
    versions_dir = stores.join(dataset_dir, VERSIONS)
    store = stores.store_for(versions_dir)
    paths = store.list(versions_dir)
    if not paths:
        raise UserError(f"nothing under {versions_dir}: no dataset {dataset!r} under {root}")

    def garbage(path: str) -> Garbage | None:
        info = store.stat(path)
        if info is None:  # removed since it was listed
            return None
        return Garbage(path, _relative(path, dataset_dir), info.size, now - info.updated.timestamp())

    def old(item: Garbage) -> bool:
        return item.age_seconds > grace_seconds

    removable, kept, orphan_dirs = [], [], []
    for top, members in sorted(_group_files(paths, versions_dir).items()):
        members.sort()
        if f"{top}/{version_store.MANIFEST}" in {relative for relative, _ in members}:
            referenced = _referenced(root, dataset, top)
            for relative, path in members:
                if relative in referenced or TEMPORARY_NAME.fullmatch(relative.rsplit("/", 1)[-1]) is None:
                    continue
                item = garbage(path)
                if item is None:
                    continue
                if old(item):
                    removable.append(item)
                else:
                    kept.append(f"{item.name} (a temporary file of published version {top}, {_age(item)})")
            continue
        items = [item for item in map(garbage, (path for _, path in members)) if item is not None]
        if not items:
            continue
        if all(old(item) for item in items):
            removable += items
            if len(members) > 1 or "/" in members[0][0]:
                orphan_dirs.append(stores.join(versions_dir, top))
        else:
            newest = min(items, key=lambda item: item.age_seconds)
            kept.append(f"{VERSIONS}/{top}{'/' if '/' in members[0][0] else ''} (no manifest.json; newest file "
                        f"{_age(newest)})")
    if isinstance(store, stores.LocalStore):  # a killed writer's temporary files, anywhere in the dataset
        for path, info in store.leftovers(dataset_dir):
            item = Garbage(path, _relative(path, dataset_dir), info.size, now - info.updated.timestamp(), True)
            if old(item):
                removable.append(item)
            else:
                kept.append(f"{item.name} (a writer's temporary file, {_age(item)})")
    return Collection(tuple(removable), tuple(kept), tuple(orphan_dirs))


def _age(item: Garbage) -> str:
    return f"updated {item.age_seconds / 3600:.1f} h ago, within the grace period"


def remove_garbage(root: str, collection: Collection) -> None:
    """Delete what find_garbage found; then each local orphan version folder, once no object is left in it
    (object stores have no folders; a local one keeps its subfolders and the store's lock files)."""
    store = stores.store_for(root)
    for item in collection.removable:
        if item.bookkeeping:
            store.remove_leftover(item.path)
        else:
            store.delete(item.path)
    if not isinstance(store, stores.LocalStore):
        return
    for directory in collection.orphan_dirs:
        if not store.list(directory):
            shutil.rmtree(directory.removeprefix(stores.FILE_SCHEME), ignore_errors=True)


def add_gc_arguments(parser: argparse.ArgumentParser) -> None:
    add_root_arguments(parser)
    parser.add_argument("--grace-hours", type=float, default=DEFAULT_GRACE_HOURS, metavar="H",
                        help="remove only files older than H hours, so running builds keep theirs "
                             f"(default: {DEFAULT_GRACE_HOURS:g})")
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")


def run_gc(args: argparse.Namespace, beam_args: list[str]) -> int:
    dataset = check_dataset_name(args.dataset)
    if not args.grace_hours >= 0:
        raise UserError(f"--grace-hours must be 0 or more, got {args.grace_hours}")
    now = time.time()  # the clock, read once
    try:
        collection = find_garbage(args.root, dataset, args.grace_hours * 3600, now)
        if not args.dry_run:
            remove_garbage(args.root, collection)
    except StoreError as err:
        raise UserError(f"gc of {dataset!r} under {args.root}: {err}") from None
    except OSError as err:
        raise UserError(f"gc of {dataset!r} under {args.root}: {err.strerror or err}") from None
    verb = "would remove" if args.dry_run else "removed"
    for item in collection.removable:
        print(f"{verb} {item.name}  {item.bytes} bytes")
    for line in collection.kept:
        print(f"kept {line}")
    total = sum(item.bytes for item in collection.removable)
    print(f"gc {dataset}{' (dry run)' if args.dry_run else ''}: {verb} {len(collection.removable)} files, "
          f"{total} bytes; kept {len(collection.kept)} within the {args.grace_hours:g} h grace period")
    return EXIT_OK
