"""`labelbeam versions` and `labelbeam show`: read published manifests."""
from __future__ import annotations

import argparse
import json

from labelbeam.pipelines.errors import UserError
from labelbeam.transforms.storage import version_store


def _published(root: str, dataset: str) -> list[int]:
    try:
        versions = version_store.version_numbers(root, dataset)
    except version_store.StoreError as err:
        raise UserError(str(err)) from None
    if not versions:
        raise UserError(f"no published versions of dataset {dataset!r} under {root}")
    return versions


def run_versions(args: argparse.Namespace, beam_args: list[str]) -> int:
    versions = _published(args.root, args.dataset)
    latest = version_store.read_latest(args.root, args.dataset)
    print(f"{'version':>7}  {'created_at':<25}  {'read':>9}  {'invalid':>8}  {'votes':>9}  {'items':>8}  method")
    for version in versions:
        manifest = version_store.read_manifest(args.root, args.dataset, version)
        counts = manifest["counts"]
        marker = "*" if version == latest else " "
        print(f"{version:>6}{marker}  {manifest['created_at']:<25}  {counts['read']:>9}  {counts['invalid']:>8}  "
              f"{counts['votes']:>9}  {counts['items']:>8}  {manifest['params']['method']}")
    return 0


def run_show(args: argparse.Namespace, beam_args: list[str]) -> int:
    versions = _published(args.root, args.dataset)
    version = args.version if args.version is not None else version_store.read_latest(args.root, args.dataset)
    if version not in versions:
        raise UserError(f"dataset {args.dataset!r} has no published version {version}; "
                        f"published: {', '.join(map(str, versions))}")
    manifest = version_store.read_manifest(args.root, args.dataset, version)
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
    parser.add_argument("root", metavar="ROOT", help="dataset root given to build --output")
    parser.add_argument("--dataset", required=True)
    if with_version:
        parser.add_argument("--version", type=int, help="default: the version _latest points at")
        parser.add_argument("--json", action="store_true", help="print the whole manifest")
