"""`labelbeam build`: raw events -> validate -> deduplicate -> lifecycle -> consensus -> version N.

    python -m labelbeam.pipelines.build --input 'events/*.jsonl' --output ROOT --dataset NAME

With no --input it builds the embedded sample (generated on first use, deterministic) into
./labelbeam-data and reports accuracy against the sample's known truth.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime as dt
import difflib
import hashlib
import importlib.util
import json
import logging
import os
import shlex
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

# errors first: importing it hides the "apitools not found" line apache_beam logs while it loads.
from labelbeam.pipelines import logs
from labelbeam.pipelines.errors import EXIT_OK, EXIT_PUBLISH_GATE, UserError, exit_process, guarded

# isort: split
import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from labelbeam.pipelines.code_version import code_version
from labelbeam.pipelines.generate import SAMPLE_DATASET, SAMPLE_LABELS, write_sample
from labelbeam.pipelines.options import (
    BUILD_EPILOG,
    DEFAULT_OUTPUT,
    BuildConfig,
    add_build_arguments,
    check_output_root,
    parse_labels,
    parse_reason_shares,
)
from labelbeam.pipelines.progress import ReadProgress
from labelbeam.pipelines.tuning import SHUFFLE_AUTO, SHUFFLE_RUNNER, LabelbeamTuningOptions
from labelbeam.schemas import registry
from labelbeam.transforms import stage_metrics
from labelbeam.transforms.consensus import ANNOTATOR_STATS, LABELS, PREFERENCES, ComputeConsensus
from labelbeam.transforms.deduplicate import VOTES, DeduplicateEvents, ResolveLifecycle
from labelbeam.transforms.events import dead_letters as dl
from labelbeam.transforms.events.conservation import (
    GATE_FAILED,
    GateError,
    PublishGateError,
    check_conservation,
    format_counts,
    invalid_share,
    publish_gate,
    quality_gate,
)
from labelbeam.transforms.events.labeling_time import LABELING_TIME
from labelbeam.transforms.events.parser import ValidationRules, resolve_cutoff
from labelbeam.transforms.inference.annotator_stats import key_id, keyed_pseudonym
from labelbeam.transforms.inference.version_agreement import AGREEMENT
from labelbeam.transforms.methods.base import EM_BEAM, EM_IN_PROCESS, ConsensusMethod, MethodRequest
from labelbeam.transforms.methods.csv_inputs import read_credit_names_csv, read_gold_csv, read_weights_csv
from labelbeam.transforms.methods.registry import METHODS
from labelbeam.transforms.methods.single_label import weights_from_skills
from labelbeam.transforms.publish import PublishVersion, distinct_vote_labels, read_annotators
from labelbeam.transforms.read import ReadEvents
from labelbeam.transforms.storage import version_store
from labelbeam.transforms.storage.dataset_card import CARD_FILE, dataset_card
from labelbeam.transforms.storage.event_files import plan_ranges
from labelbeam.transforms.storage.inputs import InputError, corrupt_input_in, match_inputs
from labelbeam.transforms.storage.table_files import write_file
from labelbeam.transforms.validate import ValidateEvents

SAMPLE_DIR = "labelbeam-sample"
SAMPLE_EVENTS = 50_000
SAMPLE_SEED = 0


@dataclasses.dataclass(frozen=True)
class BuildOutcome:
    version: int
    published: bool           # False: inputs, params and code equal the latest version's
    version_dir: str
    manifest: dict[str, Any]


def build_pipeline(pipeline, files, rules, method, version_dir: str, manifest_base: dict[str, Any],
                   tuning, rows_per_shard: int, pseudonym_key: bytes, key_source: str, progress_run: str | None = None,
                   shuffle_dir: str | None = None, credit_names: dict[str, str] | None = None):
    """Wire the build's stages onto `pipeline`; returns the PCollection of the written manifest.

    With `shuffle_dir`, events are grouped by bucket through files there instead of the runner's memory, and
    the distributed EM keeps its answers there."""
    raw = pipeline | "ReadEvents" >> ReadEvents(files, tuning.range_bytes, tuning.chunk_events, progress_run)
    parsed = raw | "ValidateEvents" >> ValidateEvents(rules)
    unique = parsed[dl.VALID] | "DeduplicateEvents" >> DeduplicateEvents(tuning.num_buckets, shuffle_dir)
    standing = unique[dl.VALID] | "ResolveLifecycle" >> ResolveLifecycle()
    consensus = standing[VOTES] | "ComputeConsensus" >> ComputeConsensus(method, shuffle_dir)
    dead_letters = (parsed[dl.DEAD_LETTER], unique[dl.DEAD_LETTER]) | "FlattenDeadLetters" >> beam.Flatten()
    counts = (parsed[dl.COUNTS], unique[dl.COUNTS], standing[dl.COUNTS]) | "FlattenCounts" >> beam.Flatten()
    vote_labels = standing[VOTES] | "ListVoteLabels" >> beam.Map(distinct_vote_labels)
    parts = {"labels": consensus[LABELS], "annotator_stats": consensus[ANNOTATOR_STATS], "dead_letters": dead_letters,
             "counts": counts, "vote_labels": vote_labels, LABELING_TIME: standing[LABELING_TIME],
             AGREEMENT: standing[AGREEMENT]}
    if PREFERENCES in consensus:  # bradley_terry: the prompt/chosen/rejected export
        parts["preferences"] = consensus[PREFERENCES]
    return parts | "PublishVersion" >> PublishVersion(version_dir, manifest_base, rows_per_shard, pseudonym_key,
                                                      key_source, credit_names)


def _read_csv_option(flag: str, path: str, parse):
    try:
        with open(path, encoding="utf-8") as stream:
            return parse(stream.read())
    except OSError as err:
        raise UserError(f"cannot read {flag} {path}: {err.strerror}") from None
    except ValueError as err:
        raise UserError(f"{flag} {path}: {err}") from None


LOCAL_RUNNERS = {None, "DirectRunner", "FnApiRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner",
                 "PrismRunner"}
# The Dask runners need the dask extra. `--em auto` runs the distributed EM on labelbeam's (a distributed
# engine); Beam's own computes each side input inside every task that reads it, so an EM iteration, which
# reads the previous one, costs twice the one before (118 votes: over 15 min). It fits in one worker there.
DASK_RUNNERS = {"labelbeam.pipelines.dask_runner.DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner"}
BEAM_DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def check_runner_installed(runner: str | None) -> None:
    """A UserError naming the install step when a runner's packages are missing, before anything runs."""
    if runner in DASK_RUNNERS and any(importlib.util.find_spec(name) is None for name in ("dask", "distributed")):
        raise UserError(f"--runner {runner} needs dask[distributed]: pip install \".[dask]\" (or 'labelbeam[dask]')")


@contextlib.contextmanager
def shuffle_directory(options: PipelineOptions) -> Iterator[str | None]:
    """A new directory for '--shuffle files' (removed afterwards, whatever happens), or None for the runner's
    GroupByKey. 'auto' picks files on the local runners, whose shuffle is a buffer in their own memory."""
    tuning = options.view_as(LabelbeamTuningOptions)
    local = options.view_as(StandardOptions).runner in LOCAL_RUNNERS
    if tuning.shuffle == SHUFFLE_RUNNER or (tuning.shuffle == SHUFFLE_AUTO and not local):
        yield None
        return
    try:
        scratch = tempfile.TemporaryDirectory(prefix="labelbeam-shuffle-", dir=tuning.shuffle_dir,
                                              ignore_cleanup_errors=True)
    except OSError as err:
        raise UserError(f"--shuffle_dir {tuning.shuffle_dir or tempfile.gettempdir()}: cannot create a directory "
                        f"there ({err.strerror})") from None
    with scratch as path:
        yield path


def em_path(config: BuildConfig, runner: str | None) -> str:
    if config.em != "auto":
        return config.em
    distributed = getattr(METHODS.get(config.method), "distributed", False)
    return EM_BEAM if distributed and runner not in LOCAL_RUNNERS | {BEAM_DASK_RUNNER} else EM_IN_PROCESS


def skills_weights(config: BuildConfig, key: bytes) -> tuple[dict[str, float], dict]:
    """Vote weights from the annotator skills a previous version published, and where they came from.

    Without a key (LABELBEAM_PSEUDONYM_KEY unset), the output root's key file is the build's key. The
    version is looked up under config.skills_root (default: the output root).
    """
    skills_root = config.skills_root or config.output
    try:
        version = version_store.read_latest(skills_root, config.dataset) if config.skills_from == "latest" \
            else int(config.skills_from)
        key = key or version_store.read_root_pseudonym_key(config.output) or b""
    except ValueError:
        raise UserError(f"--skills-from {config.skills_from!r}: give a version number or 'latest'") from None
    except version_store.StoreError as err:
        raise UserError(str(err)) from None
    manifest = version_store.read_manifest(skills_root, config.dataset, version) if version else None
    if manifest is None or "annotators" not in manifest:
        raise UserError(f"--skills-from {config.skills_from}: {config.dataset} has no such version with "
                        f"annotator skills under {skills_root}")
    if not key or manifest["annotators"]["key_id"] != key_id(key):
        raise UserError(f"--skills-from {version}: its annotators were pseudonymized with another "
                        "LABELBEAM_PSEUDONYM_KEY, so their skills cannot be matched to today's annotators")
    skills = read_annotators(version_store.version_dir(skills_root, config.dataset, version), manifest)
    weights = weights_from_skills(skills, len(manifest["annotators"]["confusion_labels"]))
    return weights, {"version": version, "key_id": manifest["annotators"]["key_id"]}


def make_method(config: BuildConfig, runner: str | None = None, key: bytes = b"") -> ConsensusMethod:
    """The consensus method the flags ask for; every flag the method cannot use is a UserError."""
    if config.method not in METHODS:
        raise UserError(f"--method {config.method!r} is not one of {', '.join(sorted(METHODS))}")
    method_class = METHODS[config.method]
    if (config.weights_path or config.skills_from) and not method_class.takes_weights:
        raise UserError("--weights and --skills-from only apply to --method wmv")
    if config.weights_path and config.skills_from:
        raise UserError("give either --weights or --skills-from, not both")
    if config.gold_path and not method_class.supports_gold:
        raise UserError(f"--gold only applies to single-label methods, not --method {config.method}")
    gold = _read_csv_option("--gold", config.gold_path, read_gold_csv) if config.gold_path else {}
    unknown = sorted(set(gold.values()) - set(config.labels)) if config.labels else []
    if unknown:
        raise UserError(f"--gold {config.gold_path}: labels {unknown} are not in --labels")
    weights, weights_key, weights_source = None, None, None
    if config.weights_path:
        weights = _read_csv_option("--weights", config.weights_path, read_weights_csv)
    elif config.skills_from:
        weights, weights_source = skills_weights(config, key)
        weights_key = keyed_pseudonym(key)
    request = MethodRequest(min_votes=config.min_votes, gold=gold, em=em_path(config, runner),
                            label_set=config.labels, weights=weights, weights_key=weights_key,
                            weights_source=weights_source)
    try:
        return method_class.from_request(request)
    except ValueError as err:
        raise UserError(str(err)) from None


APP_FLAGS = ("--input", "--output", "--dataset", "--labels", "--method", "--weights", "--credit-names", "--gold",
             "--min-votes", "--force", "--em", "--skills-from", "--as-of", "--max-invalid-share")


def reject_unknown_flags(beam_args: list[str]) -> None:
    """Beam ignores flags it does not know, with only a log line: make a typo a usage error instead."""
    options = PipelineOptions(beam_args)
    # A runner's own options exist once its module is imported: the Dask runner's (--dask_client_address...)
    # are declared in Beam's dask_runner module, which nothing has imported yet.
    if options.view_as(StandardOptions).runner in DASK_RUNNERS and importlib.util.find_spec("distributed"):
        importlib.import_module("apache_beam.runners.dask.dask_runner")
    beam_logger = logging.getLogger("apache_beam.options.pipeline_options")
    level = beam_logger.level
    beam_logger.setLevel(logging.ERROR)  # its "Discarding unparseable args" line: we say it better below
    try:
        known = options.get_all_options()
        unknown = sorted(options.get_all_options(retain_unknown_options=True).keys() - known.keys())
    finally:
        beam_logger.setLevel(level)
    if unknown:
        # Beam reports dest names (--as-of becomes as_of): name the flag as the user typed it.
        typed = [arg.split("=", 1)[0] for arg in beam_args if arg.startswith("-")]
        flag = next((arg for arg in typed if arg.lstrip("-").replace("-", "_") in unknown), "--" + unknown[0])
        close = difflib.get_close_matches(flag, ["--" + name for name in known] + list(APP_FLAGS), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UserError(f"unknown option {flag}{hint}")


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    reject_unknown_flags(beam_args)
    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        # Locally, skip the DirectRunner's attempt to download Prism (offline here) and its log noise.
        args.append("--runner=FnApiRunner")
    return PipelineOptions(args)


PSEUDONYM_KEY_VARIABLE = "LABELBEAM_PSEUDONYM_KEY"


def pseudonym_key(root: str | None = None) -> bytes:
    """The secret that keys annotator pseudonyms: LABELBEAM_PSEUDONYM_KEY, else (given `root`) the output
    root's key file if it exists. Empty when neither is there: `execute_plan` then makes the root's key
    file (version_store.root_pseudonym_key) before publishing. Reading never writes anything."""
    key = os.environ.get(PSEUDONYM_KEY_VARIABLE, "").encode("utf-8")
    if key or root is None:
        return key
    try:
        return version_store.read_root_pseudonym_key(root) or b""
    except (version_store.StoreError, OSError):
        return b""  # an unusable root: check_output_root reports it in one line


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    """A build whose every argument has been checked; nothing has been written yet."""
    config: BuildConfig
    options: PipelineOptions
    tuning: LabelbeamTuningOptions
    method: ConsensusMethod
    rules: ValidationRules
    params: dict[str, Any]
    pseudonym_key: bytes
    now: dt.datetime
    credit_names: dict[str, str] | None = None  # annotator_id -> name, of those who opted in


def plan_build(config: BuildConfig, beam_args: list[str], now: dt.datetime | None = None) -> BuildPlan:
    """Check every argument (flags, method, CSV side inputs, tuning knobs) without side effects."""
    now = now or dt.datetime.now(dt.timezone.utc)
    if config.min_votes < 1:
        raise UserError(f"--min-votes must be at least 1, got {config.min_votes}")
    if not 0.0 <= config.max_invalid_share <= 1.0:
        raise UserError(f"--max-invalid-share must be between 0 and 1, got {config.max_invalid_share}")
    for flag, value in (("--min-agreement", config.min_agreement), ("--max-label-drift", config.max_label_drift)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise UserError(f"{flag} must be between 0 and 1, got {value:g}")
    if config.rows_per_shard < 1:
        raise UserError(f"--rows-per-shard must be at least 1, got {config.rows_per_shard}")
    options = pipeline_options(beam_args)
    tuning = options.view_as(LabelbeamTuningOptions)
    for flag in ("num_buckets", "chunk_events", "range_bytes"):
        if getattr(tuning, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(tuning, flag)}")
    if tuning.shuffle_dir is not None and not os.path.isdir(tuning.shuffle_dir):
        raise UserError(f"--shuffle_dir {tuning.shuffle_dir}: not a directory")
    key = pseudonym_key(config.output)
    check_runner_installed(options.view_as(StandardOptions).runner)
    method = make_method(config, options.view_as(StandardOptions).runner, key)
    # Future event times are judged against a cutoff recorded in params, not the wall clock, so a rebuild
    # with the same params accepts the same events. By default it is the start of the build's UTC day:
    # builds of the same inputs on one day are up to date with each other.
    labels = frozenset(config.labels) if config.labels else None
    try:
        if config.as_of:  # a snapshot: no allowance past it; a relative one resolved once, here
            rules = ValidationRules.as_of(config.dataset, resolve_cutoff(config.as_of, now), labels)
        else:
            rules = ValidationRules.with_cutoff(config.dataset, config.event_time_cutoff or
                                                ValidationRules.day_cutoff(now), labels)
    except ValueError as err:
        raise UserError(f"{'--as-of' if config.as_of else 'event_time_cutoff'}: {err}") from None
    credit_names = _read_csv_option("--credit-names", config.credit_names_path, read_credit_names_csv) \
        if config.credit_names_path else None
    params = {**method.params(), "labels": list(config.labels) if config.labels else None,
              "rows_per_shard": config.rows_per_shard, "event_time_cutoff": rules.event_time_cutoff,
              "as_of": rules.event_time_cutoff if config.as_of else None}
    if credit_names is not None:  # other names are another publication: a digest, never the ids
        params["credit_names_sha256"] = hashlib.sha256(json.dumps(credit_names, sort_keys=True).encode()).hexdigest()
    return BuildPlan(config, options, tuning, method, rules, params, key, now, credit_names)


def execute_plan(plan: BuildPlan) -> BuildOutcome:
    """Publish the next version of the plan's dataset, or report that the newest one is up to date.

    Up to date: the newest complete version (the highest with a manifest; `_latest` lags behind it after
    a crash between the manifest and the pointer) has these inputs, params and code. `_latest` then
    moves forward to it. Annotators are keyed by LABELBEAM_PSEUDONYM_KEY, else by the output root's key
    file, made on the first build that needs it. A build that fails, a refused publish gate included
    (GateError), removes its claimed version directory unless it holds a manifest; dead letters it
    quarantined stay, and their version number is not claimed again.
    """
    config, method = plan.config, plan.method
    try:
        files = match_inputs(list(config.inputs), before_ms=plan.rules.as_of_ms)
    except InputError as err:
        raise UserError(str(err)) from None
    inputs = [f.manifest_entry() for f in files]
    version_code = code_version()
    root, dataset = config.output, config.dataset

    try:
        newest = version_store.newest_complete_version(root, dataset)
    except version_store.StoreError as err:
        raise UserError(str(err)) from None
    newest_manifest = version_store.read_manifest(root, dataset, newest) if newest is not None else None
    if newest is not None and not config.force:
        manifest = newest_manifest
        if manifest and (manifest["inputs"], manifest["params"], manifest["code_version"]) == \
                (inputs, plan.params, version_code):
            version_store.advance_latest(root, dataset, newest, published=False)  # a chosen pointer stays
            return BuildOutcome(newest, False, version_store.version_dir(root, dataset, newest), manifest)

    key = pseudonym_key()
    key_source = "env" if key else "root-key-file"
    key = key or version_store.root_pseudonym_key(root)
    if key != plan.pseudonym_key:  # the plan was made before the root's key: weights must use this key
        method = make_method(config, plan.options.view_as(StandardOptions).runner, key)

    build_id = uuid.uuid4().hex
    version = None
    # The claim is taken inside the try that releases it: a Ctrl-C that lands just after the claim (tests
    # send one the moment it appears) must not leave it behind. One that lands inside claim_next_version,
    # before its number is known here, is released by its owner id.
    try:
        version = version_store.claim_next_version(root, dataset, owner=build_id)
        version_dir = version_store.version_dir(root, dataset, version)
        manifest_base = {
            "dataset": dataset, "version": version, "created_at": plan.now.isoformat(timespec="seconds"),
            "params": plan.params, "inputs": inputs, "code_version": version_code,
            "schema": registry.load_schema_json(method.row_schema_file),
            "labels_source": "given" if config.labels else "inferred",
            "consensus": {"votes_taking_part": method.votes_taking_part},
            # What else the build read, so `labelbeam rebuild` can read it again (and check it is unchanged).
            "side_inputs": side_inputs(config),
        }
        local = plan.options.view_as(StandardOptions).runner in LOCAL_RUNNERS
        with shuffle_directory(plan.options) as shuffle_dir, \
                ReadProgress(len(plan_ranges(files, plan.tuning.range_bytes)), enabled=local) as progress_run:
            pipeline = beam.Pipeline(options=plan.options)
            build_pipeline(pipeline, files, plan.rules, method, version_dir, manifest_base, plan.tuning,
                           config.rows_per_shard, key, key_source, progress_run, shuffle_dir, plan.credit_names)
            result = pipeline.run()
            result.wait_until_finish()
        manifest = checked_candidate(root, dataset, version, config,
                                     (newest_manifest or {}).get("label_distribution"))
        manifest["metrics"] = stage_metrics.query(result)
        twin = None if config.force else published_twin(root, dataset, version, publication_digest(manifest))
        if twin is None:
            manifest = write_version(root, dataset, version, manifest)
    except BaseException as err:
        try:
            if version is None:
                version_store.release_claims_of(root, dataset, build_id)
            else:
                version_store.release_claim(root, dataset, version)  # unless it has a manifest; quarantine/<N> stays
        except (OSError, version_store.StoreError):
            pass  # the build's own failure is the one to report
        corrupt = corrupt_input_in(err) if isinstance(err, Exception) else None
        if corrupt is not None:  # found while decoding (e.g. a damaged Avro block): an input error, exit 2
            raise UserError(str(corrupt)) from None
        raise
    if twin is not None:  # an identical build published while this one ran: this one is up to date
        version_store.release_claim(root, dataset, version)
        version_store.advance_latest(root, dataset, twin, published=False)
        return BuildOutcome(twin, False, version_store.version_dir(root, dataset, twin),
                            version_store.read_manifest(root, dataset, twin))
    version_store.advance_latest(root, dataset, version)
    return BuildOutcome(version, True, version_dir, manifest)


TWIN_WAIT_S = 10.0  # how long a reservation's holder may take between reserving and its manifest landing


def publication_digest(manifest: dict[str, Any]) -> str:
    """What makes two builds the same build: their inputs, params and code version."""
    identity = [manifest["inputs"], manifest["params"], manifest["code_version"]]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def published_twin(root: str, dataset: str, version: int, digest: str) -> int | None:
    """The version an identical, overlapping build published instead of this one, else None (publish).

    The first to reserve the digest publishes. Another holder is waited for until its manifest lands;
    one that never publishes (killed between reserving and its manifest) loses the reservation to this
    build after TWIN_WAIT_S.
    """
    deadline = time.monotonic() + TWIN_WAIT_S
    while (holder := version_store.reserve_publication(root, dataset, digest, version)) is not None:
        twin = version_store.read_manifest(root, dataset, holder)
        if twin is not None and publication_digest(twin) == digest:
            return holder
        if time.monotonic() > deadline and \
                version_store.take_over_publication(root, dataset, digest, holder, version):
            return None
        time.sleep(0.1)  # the holder is between its reservation and its manifest: a few store calls
    return None


def side_inputs(config: BuildConfig) -> dict[str, Any]:
    """The CSV files and the version whose skills a build used, with the files' sha256."""
    found: dict[str, Any] = {}
    for name, path in (("gold", config.gold_path), ("weights", config.weights_path),
                       ("credit_names", config.credit_names_path)):
        if path:
            with open(path, "rb") as stream:
                found[name] = {"path": os.path.abspath(path), "sha256": hashlib.sha256(stream.read()).hexdigest()}
    if config.skills_from:
        found["skills_from"] = {"root": config.skills_root or config.output, "version": config.skills_from}
    return found


def checked_candidate(root: str, dataset: str, version: int, config: BuildConfig,
                      previous_distribution: dict[str, int] | None = None) -> dict[str, Any]:
    """The manifest to publish, from the candidate the pipeline wrote, if it passes conservation and the
    publish gates (config's max_invalid_share, and the optional quality gates against the previous
    version's label distribution); else ConservationError or PublishGateError (both GateErrors, exit 3)."""
    data = version_store.read_candidate(root, dataset, version)
    if data is None:
        raise RuntimeError(f"the pipeline finished but wrote no candidate manifest for version {version}")
    candidate = json.loads(data)
    counts = candidate["counts"]
    check_conservation(counts)
    problems = publish_gate(counts, config.max_invalid_share, candidate["status"])
    quality_problems, measured = quality_gate(candidate, previous_distribution, dict(config.max_reason_shares),
                                              config.min_agreement, config.max_label_drift)
    problems += quality_problems
    quarantine = version_store.quarantine_dir(root, dataset, version)
    if problems:
        summary = ", ".join(f"{key} {counts[key]}" for key in ("read", "valid", "invalid", "duplicates", "votes"))
        raise PublishGateError(f"{GATE_FAILED}, nothing published: {'; '.join(problems)} ({summary}); dead letters "
                               f"kept in quarantine at {quarantine}")
    return {**candidate, "publish_gate": {"max_invalid_share": config.max_invalid_share,
                                          "invalid_share": invalid_share(counts), **measured}}


def write_version(root: str, dataset: str, version: int, manifest: dict[str, Any]) -> dict[str, Any]:
    """Publish: the dataset card, then manifest.json (atomic, create-only), which makes the version exist."""
    card = write_file(version_store.version_dir(root, dataset, version), CARD_FILE,
                      dataset_card(manifest).encode("utf-8"), 0)
    manifest["files"] = sorted([*manifest["files"], card.to_json()], key=lambda entry: entry["path"])
    version_store.publish_candidate(root, dataset, version, version_store.encode_manifest(manifest))
    return manifest


def run_build(config: BuildConfig, beam_args: list[str], now: dt.datetime | None = None) -> BuildOutcome:
    """Plan (check every argument), then execute: publish the next version or say it is up to date."""
    return execute_plan(plan_build(config, beam_args, now))


def accuracy_against(truth_path: str, outcome: BuildOutcome) -> tuple[float, int]:
    """(share of items whose consensus label equals the truth, items compared)."""
    with open(truth_path, encoding="utf-8", newline="") as stream:
        truth = {row["item_id"]: row["label"] for row in csv.DictReader(stream)}
    correct = compared = 0
    for entry in outcome.manifest["files"]:  # labels/labels-*.parquet (labels-*.parquet before tables had folders)
        if entry["path"].rsplit("/", 1)[-1].startswith("labels-") and entry["path"].endswith(".parquet"):
            table = pq.read_table(os.path.join(outcome.version_dir, entry["path"]), columns=["item_id", "label"])
            for item_id, label in zip(table.column("item_id").to_pylist(), table.column("label").to_pylist()):
                if item_id in truth:
                    compared += 1
                    correct += label == truth[item_id]
    return (correct / compared if compared else float("nan")), compared


def format_summary(config: BuildConfig, outcome: BuildOutcome) -> str:
    """What a build did, for stdout: where the version and its dead letters are, its counts, what to run next."""
    counts = outcome.manifest["counts"]
    version_dir = os.path.abspath(outcome.version_dir)
    lines = []
    if outcome.published:
        lines.append(f"published {config.dataset} version {outcome.version} -> {version_dir}")
    else:
        lines.append(f"up to date: {config.dataset} version {outcome.version} already has these inputs, "
                     f"params and code ({version_dir}); --force publishes anyway")
    lines.append(f"  {format_counts(counts)}")
    lines.append("  valid {valid} = votes {votes} + superseded {superseded} + deleted {deleted}".format(**counts))
    if counts.get("after_as_of"):
        lines.append(f"  after --as-of {outcome.manifest['params']['as_of']}: {counts['after_as_of']} events stamped "
                     "later, left out of this snapshot")
    status = ", ".join(f"{k} {v}" for k, v in outcome.manifest.get("status", {}).items())
    lines.append(f"  items {counts['items']} ({status}); method {outcome.manifest['params']['method']}")
    use = outcome.manifest.get("consensus", {})
    if use.get("votes_unused"):  # votes of another kind of answer, or unusable comparisons: say so
        lines.append(f"  consensus used {use['votes_used']} of {counts['votes']} votes ({use['votes_unused']} not "
                     f"used; the method takes {use['votes_taking_part']})")
    fit = use.get("fit")
    if isinstance(fit, dict) and fit.get("degenerate"):
        lines.append(f"  WARNING: the {fit['model']} fit is degenerate, so the labels are {fit['fallback']}'s: "
                     f"{fit['reason']}")
    annotators = outcome.manifest.get("annotators")
    if annotators:
        keyed = "keyed pseudonyms" if annotators["keyed"] else \
            f"UNKEYED pseudonyms: set {PSEUDONYM_KEY_VARIABLE} to a secret to key them"
        lines.append(f"  annotators {annotators['rows']} ({keyed}) -> {annotators['file']}")
    lines.append(dead_letters_line(outcome))
    if outcome.published and "metrics" in outcome.manifest:  # what each stage did, as the runner measured it
        lines += [f"  {line}" for line in stage_metrics.stage_lines(outcome.manifest["metrics"])]
    if config.truth_path:
        accuracy, compared = accuracy_against(config.truth_path, outcome)
        lines.append(f"  accuracy vs known truth: {accuracy:.4f} over {compared} items")
    root, dataset = shlex.quote(config.output), shlex.quote(config.dataset)
    lines += ["next:", f"  labelbeam show {root} --dataset {dataset}",
              f"  labelbeam versions {root} --dataset {dataset}"]
    return "\n".join(lines)


def dead_letters_line(outcome: BuildOutcome) -> str:
    """How many dead letters the build wrote, the absolute folder holding them, and how many per reason.

    The folder is ROOT/<dataset>/quarantine/<N>/ when the manifest's `dead_letters` section lists quarantined
    files, else the version's rejected/ folder; the per-reason counts come from `dead_letters.by_reason`.
    """
    section = outcome.manifest.get("dead_letters", {})
    line = f"  dead letters {section.get('rows', outcome.manifest['counts']['invalid'])}"
    quarantined = [entry["path"] for entry in section.get("quarantine", [])]
    rejected = [entry["path"] for entry in outcome.manifest.get("files", []) if entry["path"].startswith("rejected/")]
    if quarantined:  # paths relative to ROOT/<dataset>, whose versions/<N> is the version directory
        dataset_dir = os.path.dirname(os.path.dirname(os.path.abspath(outcome.version_dir)))
        line += f" -> {os.path.join(dataset_dir, os.path.dirname(quarantined[0]))}{os.sep}"
    elif rejected:
        line += f" -> {os.path.join(os.path.abspath(outcome.version_dir), 'rejected')}{os.sep}"
    by_reason = sorted(section.get("by_reason", {}).items(), key=lambda item: (-item[1], item[0]))
    if by_reason:
        line += " (" + ", ".join(f"{reason} {count}" for reason, count in by_reason) + ")"
    return line


def sample_config(args: argparse.Namespace) -> BuildConfig:
    """The embedded default: a deterministic generated sample (written by `run` once the plan holds),
    built into ./labelbeam-data (options.DEFAULT_OUTPUT)."""
    return BuildConfig(
        inputs=(os.path.join(SAMPLE_DIR, "events"),), output=args.output or DEFAULT_OUTPUT,
        dataset=args.dataset or SAMPLE_DATASET, labels=parse_labels(args.labels) or SAMPLE_LABELS,
        truth_path=os.path.join(SAMPLE_DIR, "truth.csv"), **method_arguments(args))


def method_arguments(args: argparse.Namespace) -> dict[str, Any]:
    return {"method": args.method, "weights_path": args.weights, "gold_path": args.gold, "min_votes": args.min_votes,
            "rows_per_shard": args.rows_per_shard, "force": args.force, "em": args.em,
            "skills_from": args.skills_from, "max_invalid_share": args.max_invalid_share, "as_of": args.as_of,
            "max_reason_shares": parse_reason_shares(args.max_dead_letter_share), "min_agreement": args.min_agreement,
            "max_label_drift": args.max_label_drift, "credit_names_path": args.credit_names}


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    if not args.input:
        return sample_config(args)
    if not args.dataset:
        raise UserError("--dataset NAME is required with --input")
    if not args.output:
        raise UserError("--output ROOT is required with --input")
    return BuildConfig(inputs=tuple(args.input), output=args.output, dataset=args.dataset,
                       labels=parse_labels(args.labels), **method_arguments(args))


def run(args: argparse.Namespace, beam_args: list[str]) -> int:
    logs.configure(args)
    config = config_from_args(args)
    plan = plan_build(config, beam_args)  # every argument checked before anything is written
    check_output_root(config.output, config.dataset, "versions")  # before a version is claimed
    if not args.input:
        write_sample(SAMPLE_DIR, SAMPLE_EVENTS, SAMPLE_SEED)
    try:
        outcome = execute_plan(plan)
    except GateError as err:  # its message starts with "publish gate failed, nothing published"
        logs.error(f"labelbeam: {err}")
        return EXIT_PUBLISH_GATE
    except version_store.BrokenManifest as err:
        raise UserError(f"cannot compare with the newest version: {err}; move that version's folder aside "
                        "to build") from None
    print(format_summary(config, outcome))
    logs.outcome("build", f"{'published' if outcome.published else 'up to date'}: {config.dataset} version "
                 f"{outcome.version}", outcome_fields(config, outcome))
    return EXIT_OK


def outcome_fields(config: BuildConfig, outcome: BuildOutcome) -> dict[str, Any]:
    """The build's outcome for a JSON log record: counts and paths, never an annotator id."""
    manifest = outcome.manifest
    return {"dataset": config.dataset, "version": outcome.version, "published": outcome.published,
            "version_dir": os.path.abspath(outcome.version_dir), "method": manifest["params"]["method"],
            "counts": manifest["counts"], "status": manifest.get("status", {}),
            "dead_letters_by_reason": manifest.get("dead_letters", {}).get("by_reason", {}),
            "metrics": manifest.get("metrics", {}) if outcome.published else {}}


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="labelbeam build", description="Build the next version of a consensus dataset.",
        epilog=BUILD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_build_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args, beam_args = build_parser().parse_known_args(argv)
    return guarded(lambda: run(args, beam_args))


if __name__ == "__main__":
    exit_process(main())
