"""`labelbeam versions` and `labelbeam show`: read published manifests.

ROOT defaults to ./labelbeam-data and --dataset to the embedded sample's, as `labelbeam build` does with no
arguments. A manifest that cannot be read marks its version broken: `versions` lists it as such and carries
on; `show` of it is a user error.
"""
from __future__ import annotations

import argparse
import json

from labelbeam.pipelines.errors import UserError
from labelbeam.pipelines.generate import SAMPLE_DATASET
from labelbeam.pipelines.options import DEFAULT_OUTPUT, check_dataset_name
from labelbeam.transforms.storage import version_store


def _published(root: str, dataset: str) -> list[int]:
    try:
        versions = version_store.version_numbers(root, dataset)
    except version_store.StoreError as err:
        raise UserError(str(err)) from None
    except OSError as err:  # ROOT or a folder below it is a file, unreadable, ...
        raise UserError(f"cannot list the versions of {dataset!r} under {root}: {err.strerror or err}") from None
    if not versions:
        raise UserError(f"no published versions of dataset {dataset!r} under {root}")
    return versions


def _latest(root: str, dataset: str) -> int | None:
    try:
        return version_store.read_latest(root, dataset)
    except (OSError, ValueError, KeyError, TypeError) as err:  # an unreadable _latest pointer
        raise UserError(f"cannot read the _latest pointer of {dataset!r} under {root}: {err}") from None


def run_versions(args: argparse.Namespace, beam_args: list[str]) -> int:
    dataset = check_dataset_name(args.dataset)
    versions = _published(args.root, dataset)
    latest = _latest(args.root, dataset)
    print(f"{'version':>7}  {'created_at':<25}  {'read':>9}  {'invalid':>8}  {'votes':>9}  {'items':>8}  method")
    for version in versions:
        marker = "*" if version == latest else " "
        try:
            manifest = version_store.read_manifest(args.root, dataset, version)
            counts = manifest["counts"]
            row = (f"{manifest['created_at']:<25}  {counts['read']:>9}  {counts['invalid']:>8}  "
                   f"{counts['votes']:>9}  {counts['items']:>8}  {manifest['params']['method']}")
        except version_store.BrokenManifest as err:
            row = f"broken: {err}"
        except KeyError as err:
            row = f"broken: its manifest.json has no {err} field"
        print(f"{version:>6}{marker}  {row}")
    return 0


def resolve_version(root: str, dataset: str, version: int | None) -> tuple[str, int, dict]:
    """(dataset, version, manifest) of a published version, `_latest`'s when version is None; else a UserError."""
    dataset = check_dataset_name(dataset)
    versions = _published(root, dataset)
    version = version if version is not None else _latest(root, dataset)
    if version not in versions:
        raise UserError(f"dataset {dataset!r} has no published version {version}; "
                        f"published: {', '.join(map(str, versions))}")
    try:
        manifest = version_store.read_manifest(root, dataset, version)
    except version_store.BrokenManifest as err:
        raise UserError(f"dataset {dataset!r} version {version} is broken: {err}") from None
    return dataset, version, manifest


def run_show(args: argparse.Namespace, beam_args: list[str]) -> int:
    _, _, manifest = resolve_version(args.root, args.dataset, args.version)
    if args.json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
        return 0
    counts = manifest["counts"]
    print(f"{manifest['dataset']} version {manifest['version']}  created {manifest['created_at']}  "
          f"code {manifest['code_version']}")
    print("  counts: " + ", ".join(f"{k} {counts[k]}" for k in
                                   ("read", "valid", "invalid", "duplicates", "superseded", "deleted", "votes",
                                    "items")))
    print("  status: " + ", ".join(f"{k} {v}" for k, v in manifest.get("status", {}).items()))
    print(f"  params: {json.dumps(manifest['params'], sort_keys=True)}")
    print(f"  labels ({manifest.get('labels_source', 'given')}): {', '.join(manifest.get('labels', []))}")
    print(f"  inputs: {len(manifest['inputs'])} files, {sum(i['bytes'] for i in manifest['inputs'])} bytes")
    for entry in manifest["files"]:
        print(f"  {entry['path']}  rows {entry['rows']}  bytes {entry['bytes']}  sha256 {entry['sha256'][:16]}")
    return 0


def add_catalog_arguments(parser: argparse.ArgumentParser, with_version: bool) -> None:
    parser.add_argument("root", metavar="ROOT", nargs="?", default=DEFAULT_OUTPUT,
                        help=f"dataset root given to build --output (default: ./{DEFAULT_OUTPUT})")
    parser.add_argument("--dataset", default=SAMPLE_DATASET, help=f"(default: {SAMPLE_DATASET})")
    if with_version:
        parser.add_argument("--version", type=int, help="default: the version _latest points at")
        parser.add_argument("--json", action="store_true", help="print the whole manifest")
