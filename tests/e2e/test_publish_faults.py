"""The publish protocol under crashes and races, with real `labelbeam` processes, on a local root and a gs://
root (fake-gcs-server, the gcs_emulator fixture).

A. A build killed (LABELBEAM_CRASH_AT: os._exit(97), no cleanup) before and after every step that changes
   shared state: the claim, the quarantined dead letters, the first table file, the candidate manifest, the
   dataset card, manifest.json, the candidate's removal and the _latest compare-and-swap. After each crash a
   reader sees only complete versions and a _latest that names one; a plain rerun then ends with exactly one
   complete version that _latest names, and `gc --grace-hours 0` removes the crashed build's leftovers under
   versions/ without touching the published version.
B. Two builds started together on one root: both publish (different inputs), _latest ends at the higher
   version, nothing is torn; with identical inputs one version and one "up to date" (the first to reserve
   the publication publishes, the other waits for its manifest and releases its own claim).
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time

import pytest

from labelbeam.pipelines.generate import write_sample
from labelbeam.transforms.storage import version_store
from labelbeam.transforms.storage.stores import CRASH_AT_VARIABLE, CRASH_EXIT_CODE, join, store_for

DATASET = "sample"
LABELS = "bird,cat,dog,fish"
EVENTS = 2_000
BUILD_TIMEOUT_S = 180
# Table folders of a version (README.md, manifest.json and .claim are not tables).
TABLE_FOLDERS = (version_store.LABELS_TABLE, version_store.LABELS_AVRO_TABLE, version_store.ANNOTATORS_TABLE)


# ------------------------------------------------------------------------------------------------------------
# Running the CLI


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "labelbeam.pipelines.cli", *args]


def child_environment(crash_at: str | None = None) -> dict[str, str]:
    """This process's environment (the emulator's variables included) with the crash seam set or cleared."""
    environment = dict(os.environ)
    environment.pop(CRASH_AT_VARIABLE, None)
    environment.pop("LABELBEAM_PSEUDONYM_KEY", None)  # annotators keyed by the root's key file
    if crash_at is not None:
        environment[CRASH_AT_VARIABLE] = crash_at
    return environment


def build_args(events: str, root: str, *extra: str) -> list[str]:
    return ["build", "--input", events, "--output", root, "--dataset", DATASET, "--labels", LABELS, *extra]


def labelbeam(*args: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), env=child_environment(crash_at), capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT_S)


class RunningBuild:
    """A `labelbeam build` process whose output goes to files (never a full pipe while we poll the root)."""

    def __init__(self, events: str, root: str, *extra: str):
        self.stdout, self.stderr = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(cli_command(*build_args(events, root, *extra)), env=child_environment(),
                                        stdout=self.stdout, stderr=self.stderr, text=True)

    def running(self) -> bool:
        return self.process.poll() is None

    def finish(self, deadline: float) -> subprocess.CompletedProcess:
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        outputs = []
        for stream in (self.stdout, self.stderr):
            stream.seek(0)
            outputs.append(stream.read())
            stream.close()
        result = subprocess.CompletedProcess(self.process.args, self.process.returncode, *outputs)
        assert result.returncode is not None and result.returncode >= 0, f"killed at the deadline: {describe(result)}"
        return result


def describe(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"


# ------------------------------------------------------------------------------------------------------------
# What a reader relies on


def dataset_path(root: str, *parts: str) -> str:
    return join(root, DATASET, *parts)


def objects_under(root: str, *parts: str) -> list[str]:
    """Every object below ROOT/<dataset>/<parts>, relative to it, `/`-separated (LocalStore hides its own
    temporary and lock files, as it does from every reader)."""
    folder = dataset_path(root, *parts)
    base = folder.rstrip("/") + ("/" if "://" in folder else os.sep)
    return sorted(path[len(base):].replace(os.sep, "/") for path in store_for(folder).list(folder))


def read_object(root: str, *parts: str) -> bytes | None:
    path = dataset_path(root, *parts)
    return store_for(path).read(path)


def latest_pointer(root: str) -> int | None:
    data = read_object(root, version_store.LATEST)
    return None if data is None else version_store.pointed_version(data)


def complete_version_files(root: str, version: int) -> dict[str, str]:
    """{path relative to ROOT/<dataset>: sha256} of every file the version's manifest lists, each checked to
    exist with the listed bytes and sha256; an AssertionError otherwise (a torn version)."""
    manifest = version_store.read_manifest(root, DATASET, version)  # BrokenManifest if it does not parse
    assert manifest is not None, f"version {version} is listed but has no manifest.json"
    assert manifest["dataset"] == DATASET and manifest["version"] == version, manifest
    assert manifest["files"], f"version {version}'s manifest lists no files"
    entries = [(f"{version_store.VERSIONS}/{version}/{entry['path']}", entry) for entry in manifest["files"]]
    entries += [(entry["path"], entry) for entry in manifest.get("dead_letters", {}).get("quarantine", [])]
    listed_tables = {entry["path"].split("/", 1)[0] for entry in manifest["files"]}
    assert set(TABLE_FOLDERS) <= listed_tables, f"version {version} lists no {set(TABLE_FOLDERS) - listed_tables}"
    digests = {}
    for relative, entry in entries:
        data = read_object(root, *relative.split("/"))
        assert data is not None, f"version {version}: {relative} is listed in its manifest but missing"
        digest = hashlib.sha256(data).hexdigest()
        assert (len(data), digest) == (entry["bytes"], entry["sha256"]), \
            f"version {version}: {relative} does not match its manifest entry"
        digests[relative] = digest
    return digests


def verify_all(root: str) -> subprocess.CompletedProcess:
    result = labelbeam("verify", root, "--dataset", DATASET, "--all")
    assert result.returncode == 0, describe(result)
    assert result.stdout.rstrip().endswith(": ok"), result.stdout
    return result


def assert_reader_invariants(root: str) -> tuple[list[int], int | None]:
    """Every version a reader lists is complete, `labelbeam verify --all` agrees, and _latest (if there is
    one) names a complete version. Returns (published versions, the version _latest names)."""
    published = version_store.version_numbers(root, DATASET)
    for version in published:
        complete_version_files(root, version)
    if published:
        verify_all(root)
    latest = latest_pointer(root)
    if latest is not None:
        assert latest in published, f"_latest names version {latest}, not a complete one ({published})"
    return published, latest


# ------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[int, str]:
    """Two different generated samples, by seed: their events folders."""
    found = {}
    for seed in (3, 4):
        directory = tmp_path_factory.mktemp(f"sample-{seed}")
        write_sample(str(directory), EVENTS, seed=seed)
        found[seed] = str(directory / "events")
    return found


def root_factory(request, tmp_path, store: str):
    """A factory of fresh, empty roots on `store`: a local folder or gs://<new bucket>/root."""
    counter = iter(range(1_000))
    if store == "local":
        return lambda: str(tmp_path / f"root-{next(counter)}")
    emulator = request.getfixturevalue("gcs_emulator")
    return lambda: f"gs://{emulator.new_bucket()}/root"


@pytest.fixture(params=["local", "gcs"])
def new_root(request, tmp_path):
    """A factory of fresh, empty roots on the parametrized store."""
    return root_factory(request, tmp_path, request.param)


# ------------------------------------------------------------------------------------------------------------
# A. A crash at every step

# (name, store operation, path substring) in the order a build performs them.
STEPS = (
    ("claim", "create_only", version_store.CLAIM),
    ("dead_letters", "write", f"{version_store.QUARANTINE}/"),
    ("first_table", "write", f"{version_store.ANNOTATORS_TABLE}/annotators-"),  # WriteVersionFn's first table
    ("labels_table", "write", f"{version_store.LABELS_TABLE}/labels-"),
    ("candidate", "write", version_store.CANDIDATE),
    ("card", "write", "README.md"),
    ("manifest", "create_only", version_store.MANIFEST),
    ("drop_candidate", "delete", version_store.CANDIDATE),
    ("latest", "compare_and_swap", version_store.LATEST),
)
STEP_INDEX = {name: index for index, (name, _, _) in enumerate(STEPS)}
# A killed process cannot tell "after step k" from "before step k+1" except where the launcher does something
# between them, so by default (the time budget) every step is killed before, and the launcher's last three
# steps after as well: manifest.json landed, the candidate gone, _latest moved. LABELBEAM_FAULTS_FULL=1 kills
# before and after every step (the extra labels-table step included).
FULL_VARIABLE = "LABELBEAM_FAULTS_FULL"
AFTER_BY_DEFAULT = {"manifest", "drop_candidate", "latest"}
# On gs:// (the time budget again) the steps whose store operation differs from a plain write: the
# create-only claim and manifest, the compare-and-swap of _latest, and the first table Beam writes; the
# other writes and deletes go through the same Store methods the local cases and tests/storage cover.
GCS_BY_DEFAULT = {("before", "claim"), ("before", "first_table"), ("before", "manifest"), ("after", "manifest"),
                  ("before", "latest")}
CRASH_CASES = [pytest.param(store, when, op, part, name, id=f"{store}-{when}-{name}")
               for store in ("local", "gcs") for name, op, part in STEPS for when in ("before", "after")
               if os.environ.get(FULL_VARIABLE) or (name != "labels_table" and
                                                    (when == "before" or name in AFTER_BY_DEFAULT) and
                                                    (store == "local" or (when, name) in GCS_BY_DEFAULT))]
# LocalStore's temporary files, `.<name>.tmp-<32 hex>`: hidden from listings and from readers; gc removes them.
LOCAL_TEMPORARY = re.compile(r"\..+\.tmp-[0-9a-f]{32}")


class HiddenLeftovers(AssertionError):
    """LocalStore temporary files left on disk after gc (invisible to readers)."""


def hidden_temporaries(root: str) -> list[str]:
    """A killed writer's hidden files: temporary files, and lock files of objects that do not exist."""
    found = []
    for directory, _, names in os.walk(dataset_path(root)):
        for name in names:
            orphan_lock = name.startswith(".") and name.endswith(".lock") and \
                not os.path.exists(os.path.join(directory, name[1:-len(".lock")]))
            if LOCAL_TEMPORARY.fullmatch(name) or orphan_lock:
                found.append(os.path.relpath(os.path.join(directory, name), dataset_path(root)))
    return sorted(found)


def landed(name: str, when: str, crashed_step: str) -> bool:
    """Whether step `name` took effect in a build killed `when` ("before"/"after") step `crashed_step`."""
    index, crashed = STEP_INDEX[name], STEP_INDEX[crashed_step]
    return index < crashed or (index == crashed and when == "after")


@pytest.mark.parametrize("store, when, op, part, name", CRASH_CASES)
def test_a_build_killed_at_any_step_leaves_readers_whole_and_a_rerun_publishes_once(
        request, tmp_path, samples, store, when, op, part, name):
    new_root = root_factory(request, tmp_path, store)
    root, events = new_root(), samples[3]
    local = "://" not in root

    # 1. The crash.
    crashed = labelbeam(*build_args(events, root), crash_at=f"{when}:{op}:{part}")
    assert crashed.returncode == CRASH_EXIT_CODE, describe(crashed)
    claimed = landed("claim", when, name)
    manifest_landed = landed("manifest", when, name)
    assert (objects_under(root, version_store.VERSIONS, "1") != []) == claimed
    assert (read_object(root, version_store.QUARANTINE, "1", "dead_letters-00000-of-00001.avro") is not None) == \
        landed("dead_letters", when, name)

    # 2. What readers see right after it.
    published, latest = assert_reader_invariants(root)
    assert published == ([1] if manifest_landed else [])
    assert latest == (1 if landed("latest", when, name) else None)
    candidate_left = landed("candidate", when, name) and not landed("drop_candidate", when, name)
    assert (read_object(root, version_store.VERSIONS, "1", version_store.CANDIDATE) is not None) == candidate_left

    # 3. A plain rerun finishes the job: exactly one complete version, named by _latest.
    rerun = labelbeam(*build_args(events, root))
    assert rerun.returncode == 0, describe(rerun)
    if manifest_landed:  # the crashed build published version 1: the rerun is up to date and moves _latest to it
        expected = 1
        assert rerun.stdout.startswith(f"up to date: {DATASET} version 1 already has these inputs"), rerun.stdout
    else:  # the crashed claim (if it landed) keeps its number: the rerun claims the next one
        expected = 2 if claimed else 1
        assert rerun.stdout.startswith(f"published {DATASET} version {expected} -> "), rerun.stdout
    published, latest = assert_reader_invariants(root)
    assert published == [expected]
    assert latest == expected
    versions = labelbeam("versions", root, "--dataset", DATASET)
    assert versions.returncode == 0, describe(versions)
    assert re.search(rf"^\s+{expected}\*\s", versions.stdout, re.MULTILINE), versions.stdout
    kept = complete_version_files(root, expected)
    published_objects = objects_under(root, version_store.VERSIONS, str(expected))
    crashed_objects = objects_under(root, version_store.VERSIONS, "1") if expected != 1 else []

    # 4. gc removes what the crashed build left under versions/, and nothing the published version lists;
    # locally also the hidden temporary files a killed writer leaves (wherever they are in the dataset).
    hidden_before = hidden_temporaries(root) if local else []
    collected = labelbeam("gc", root, "--dataset", DATASET, "--grace-hours", "0")
    assert collected.returncode == 0, describe(collected)
    # The crashed build's whole folder (its claim and partial files); or, when its version was published, the
    # candidate manifest it did not get to delete.
    leftovers = [f"{version_store.VERSIONS}/1/{relative}" for relative in crashed_objects] + \
        [f"{version_store.VERSIONS}/{expected}/{relative}" for relative in published_objects
         if relative == version_store.CANDIDATE]
    if claimed and not manifest_landed:
        assert version_store.CLAIM in crashed_objects, crashed_objects
    removed = sorted(line.split()[1] for line in collected.stdout.splitlines() if line.startswith("removed "))
    assert removed == sorted(set(leftovers) | set(hidden_before)), collected.stdout
    remaining = objects_under(root, version_store.VERSIONS)
    assert remaining == [f"{expected}/{relative}" for relative in published_objects
                         if relative != version_store.CANDIDATE], remaining
    assert version_store.version_numbers(root, DATASET, published_only=False) == [expected]
    if local:  # a local crashed folder goes whole, hidden temporary and lock files included
        assert sorted(os.listdir(dataset_path(root, version_store.VERSIONS))) == [str(expected)]
    assert complete_version_files(root, expected) == kept
    assert latest_pointer(root) == expected
    verify_all(root)
    # Dead letters of a crashed build stay quarantined under their own number (gc never touches quarantine/).
    quarantined = {relative.split("/", 1)[0] for relative in objects_under(root, version_store.QUARANTINE)}
    assert quarantined == {str(expected)} | ({"1"} if landed("dead_letters", when, name) else set())
    if local:  # a killed writer's hidden temporary files: gc removes them too
        left = hidden_temporaries(root)
        if left:
            raise HiddenLeftovers(f"temporary files left after gc: {left}")


# ------------------------------------------------------------------------------------------------------------
# B. Two builds at once


POLL_INTERVAL_S = 0.02


def race(root: str, first: list[str], second: list[str]) -> list[subprocess.CompletedProcess]:
    """Start two `labelbeam build` processes at once on `root` (arguments for build_args after the root) and,
    while they run, read the root as a reader would: each version is whole the moment it is listed, _latest
    always names a listed version and never moves backwards. Returns both processes' results."""
    builds = [RunningBuild(first[0], root, *first[1:]), RunningBuild(second[0], root, *second[1:])]
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    pointers: list[int] = []
    seen_whole: set[int] = set()

    def observe() -> None:
        latest = latest_pointer(root)  # read first: the version it names was listed by then
        published = version_store.version_numbers(root, DATASET)
        for version in sorted(set(published) - seen_whole):
            complete_version_files(root, version)
            seen_whole.add(version)
        if latest is not None:
            assert latest in published, f"_latest names {latest}, not a complete version ({published})"
            assert not pointers or latest >= pointers[-1], f"_latest moved backwards: {pointers} then {latest}"
            if not pointers or latest != pointers[-1]:
                pointers.append(latest)

    while any(build.running() for build in builds) and time.monotonic() < deadline:
        observe()
        time.sleep(POLL_INTERVAL_S)  # polling a reader's view while the builds run, not synchronisation
    results = [build.finish(deadline) for build in builds]
    observe()
    return results


def table_files(root: str, version: int) -> dict[str, str]:
    """{path inside the version: sha256} of the version's table files (not its card, claim or manifest)."""
    prefix = f"{version_store.VERSIONS}/{version}/"
    return {path[len(prefix):]: digest for path, digest in complete_version_files(root, version).items()
            if path.startswith(prefix) and path[len(prefix):].split("/", 1)[0] in TABLE_FOLDERS}


def assert_two_published(root: str, results) -> None:
    for result in results:
        assert result.returncode == 0, describe(result)
    announced = sorted(int(re.match(rf"published {DATASET} version (\d+) -> ", result.stdout).group(1))
                       for result in results)
    assert announced == [1, 2], [result.stdout for result in results]
    published, latest = assert_reader_invariants(root)
    assert published == [1, 2]
    assert latest == 2, "_latest must end at the higher of the two versions"
    assert version_store.version_numbers(root, DATASET, published_only=False) == [1, 2]
    for version in (1, 2):
        assert read_object(root, version_store.VERSIONS, str(version), version_store.CANDIDATE) is None


@pytest.mark.parametrize("round_number", range(3))
def test_two_concurrent_builds_of_different_inputs_publish_two_whole_versions(samples, tmp_path, round_number):
    root = str(tmp_path / "root")
    results = race(root, [samples[3]], [samples[4]])
    assert_two_published(root, results)
    # Each version is the whole of the build that claimed it: all its inputs are one sample's, not a mix.
    inputs = {version: {entry["path"] for entry in version_store.read_manifest(root, DATASET, version)["inputs"]}
              for version in (1, 2)}
    sample_of = {version: {seed for seed, events in samples.items() if all(path.startswith(events + os.sep)
                                                                          for path in paths)}
                 for version, paths in inputs.items()}
    assert sorted(sample_of.values(), key=sorted) == [{3}, {4}], inputs


def test_two_concurrent_builds_with_different_min_votes_publish_two_whole_versions(samples, tmp_path):
    root = str(tmp_path / "root")
    results = race(root, [samples[3]], [samples[3], "--min-votes", "2"])
    assert_two_published(root, results)
    min_votes = sorted(version_store.read_manifest(root, DATASET, version)["params"]["min_votes"] for version in (1, 2))
    assert min_votes[0] != min_votes[1]


def test_two_concurrent_builds_of_different_inputs_on_gcs(gcs_emulator, samples):
    root = f"gs://{gcs_emulator.new_bucket()}/root"
    results = race(root, [samples[3]], [samples[4]])
    assert_two_published(root, results)


@pytest.mark.parametrize("round_number", range(2))
def test_two_concurrent_identical_builds_end_with_one_version_and_one_up_to_date(samples, tmp_path, round_number):
    root = str(tmp_path / "root")
    results = race(root, [samples[3]], [samples[3]])
    for result in results:
        assert result.returncode == 0, describe(result)
    published, latest = assert_reader_invariants(root)
    # Either build may win the reservation (the one that finishes first), so the version is 1 or 2.
    assert len(published) == 1 and published[0] in (1, 2) and latest == published[0]
    [version] = published
    said = sorted(result.stdout.splitlines()[0].split(" -> ")[0].split(" already ")[0] for result in results)
    assert said == [f"published {DATASET} version {version}", f"up to date: {DATASET} version {version}"], said
    # The build that lost released its claim: no second version folder, complete or not.
    assert version_store.version_numbers(root, DATASET, published_only=False) == [version]

