"""`labelbeam rebuild ROOT --dataset D --version N`: recompute a version from its manifest's record and prove
its files byte-identical.

The manifest records what a build read (inputs with their fingerprints, side inputs with their sha256),
its params (method, options, label set, event-time cutoff or as-of time) and its code version. A rebuild
builds the same plan into a scratch root, with the same pseudonym key (the environment's, or the root's
key file), then compares every file's sha256, the dead letters' included. Exit 0 identical, 4 different,
2 when the record cannot be followed (an input changed, another key, a side input gone).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from typing import Any

from labelbeam.pipelines import build, logs
from labelbeam.pipelines.errors import EXIT_OK, EXIT_VERIFY_FAILED, UserError
from labelbeam.pipelines.options import BuildConfig, check_dataset_name
from labelbeam.transforms.inference.annotator_stats import key_id
from labelbeam.transforms.storage import version_store
from labelbeam.transforms.storage.stores import join


def config_from_manifest(manifest: dict[str, Any], output: str) -> BuildConfig:
    """The BuildConfig that recorded build ran with, writing to `output`."""
    params, side = manifest["params"], manifest.get("side_inputs", {})
    for name in ("gold", "weights", "credit_names"):
        if name in side:
            _check_unchanged(side[name]["path"], side[name]["sha256"], f"--{name}")
    skills = side.get("skills_from")
    return BuildConfig(
        inputs=tuple(entry["path"] for entry in manifest["inputs"]), output=output, dataset=manifest["dataset"],
        labels=tuple(params["labels"]) if manifest.get("labels_source") == "given" and params.get("labels") else None,
        method=params["method"], weights_path=side.get("weights", {}).get("path"),
        gold_path=side.get("gold", {}).get("path"), min_votes=params["min_votes"],
        credit_names_path=side.get("credit_names", {}).get("path"),
        rows_per_shard=params["rows_per_shard"], force=True, em=params.get("em", "auto"),
        skills_from=str(skills["version"]) if skills else None,
        skills_root=skills["root"] if skills else None,
        event_time_cutoff=None if params.get("as_of") else params.get("event_time_cutoff"),
        as_of=params.get("as_of"),
        max_invalid_share=manifest.get("publish_gate", {}).get("max_invalid_share", 1.0))


def _check_unchanged(path: str, sha256: str, flag: str) -> None:
    try:
        with open(path, "rb") as stream:
            digest = hashlib.sha256(stream.read()).hexdigest()
    except OSError as err:
        raise UserError(f"cannot rebuild: the {flag} file {path} is unreadable ({err.strerror})") from None
    if digest != sha256:
        raise UserError(f"cannot rebuild: the {flag} file {path} changed since the version was built")


def recorded_files(manifest: dict[str, Any]) -> dict[str, str]:
    """sha256 of every file the version holds, and of its quarantined dead letters, by relative path."""
    files = {entry["path"]: entry["sha256"] for entry in manifest["files"]}
    for entry in manifest.get("dead_letters", {}).get("quarantine", []):  # quarantine/<N>/name: N may differ
        files[f"{version_store.QUARANTINE}/{entry['path'].rsplit('/', 1)[-1]}"] = entry["sha256"]
    return files


def rebuild(root: str, dataset: str, version: int, scratch: str, beam_args: list[str]) -> list[str]:
    """Rebuild `version` into the scratch root; the differences from the published files (none: identical)."""
    manifest = version_store.read_manifest(root, dataset, version)
    if manifest is None:
        raise UserError(f"dataset {dataset!r} has no published version {version} under {root}")
    key = build.pseudonym_key(root)
    recorded_key = manifest.get("annotators", {}).get("key_id")
    if recorded_key and key_id(key) != recorded_key:
        raise UserError(f"cannot rebuild version {version}: its annotators were pseudonymized with another key "
                        f"than {build.PSEUDONYM_KEY_VARIABLE} or {root}'s key file gives")
    if not os.environ.get(build.PSEUDONYM_KEY_VARIABLE):  # the root's key: the scratch root must use it too
        version_store.create_only(join(scratch, version_store.ROOT_KEY_FILE), key + b"\n", private=True)
    config = config_from_manifest(manifest, scratch)
    outcome = build.run_build(config, beam_args)
    if [entry["path"] for entry in outcome.manifest["inputs"]] != [e["path"] for e in manifest["inputs"]] or \
            outcome.manifest["inputs"] != manifest["inputs"]:
        raise UserError(f"cannot rebuild version {version}: its inputs changed since (paths, sizes or digests)")
    differences = []
    if outcome.manifest["code_version"] != manifest["code_version"]:
        differences.append(f"code version {outcome.manifest['code_version']} is not the recorded "
                           f"{manifest['code_version']}")
    published, rebuilt = recorded_files(manifest), recorded_files(outcome.manifest)
    for path in sorted(published.keys() | rebuilt.keys()):
        if published.get(path) != rebuilt.get(path):
            differences.append(f"{path}: published {published.get(path, 'absent')}, rebuilt "
                               f"{rebuilt.get(path, 'absent')}")
    if outcome.manifest["counts"] != manifest["counts"]:
        differences.append(f"counts {outcome.manifest['counts']} are not the recorded {manifest['counts']}")
    return differences


def run(args: argparse.Namespace, beam_args: list[str]) -> int:
    logs.configure(args)
    dataset = check_dataset_name(args.dataset)
    with tempfile.TemporaryDirectory(prefix="labelbeam-rebuild-") as scratch:
        differences = rebuild(args.root, dataset, args.version, args.scratch or scratch, beam_args)
    if differences:
        for line in differences:
            print(f"differs: {line}")
        print(f"rebuild of {dataset} version {args.version}: {len(differences)} differences")
        return EXIT_VERIFY_FAILED
    print(f"rebuild of {dataset} version {args.version}: every file byte-identical")
    return EXIT_OK
