"""`labelbeam diff`, `verify`, `rollback`, `promote` and `gc` on real published versions.

One module-scoped root holds two versions of `sample` built from different events and methods (items added,
removed and relabelled between them); a test that changes files works on a copy of it. The tests at the end
run the same commands through the Store seam on a local copy and on a gs:// copy in the fake-gcs-server
emulator (every object of the local root uploaded under gs://<bucket>/root/, relative paths kept).
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest

from labelbeam.pipelines import cli
from labelbeam.pipelines.build import BuildConfig, run_build
from labelbeam.pipelines.errors import EXIT_OK, EXIT_USAGE, EXIT_VERIFY_FAILED
from labelbeam.pipelines.generate import write_sample
from labelbeam.transforms.storage import version_store
from labelbeam.transforms.storage.stores import LocalStore, join, store_for

SAMPLE_EVENTS = 3_000
BEAM_ARGS = ["--runner=FnApiRunner"]
DATASET = "sample"
HOUR = 3600


def events_without_items(source_files, ending: str, output: pathlib.Path) -> str:
    """The JSON Lines events of `source_files` minus those on items whose id ends with `ending`
    (lines that are not JSON objects with an item_id stay: they are the sample's dead letters)."""
    kept = []
    for source in source_files:
        for line in source.read_text(encoding="utf-8").splitlines():
            try:
                item_id = json.loads(line).get("item_id")
            except (ValueError, AttributeError):
                item_id = None
            if not (isinstance(item_id, str) and item_id.endswith(ending)):
                kept.append(line)
    output.mkdir(parents=True)
    (output / "events.jsonl").write_text("\n".join(kept) + "\n", encoding="utf-8")
    return str(output)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A folder holding ./labelbeam-data with versions 1 (mv, no items *2) and 2 (ds, no items *1) of sample."""
    sample_dir = tmp_path_factory.mktemp("sample")
    description = write_sample(str(sample_dir), SAMPLE_EVENTS, seed=7)
    assert description["dataset"] == DATASET
    sources = sorted((sample_dir / "events").glob("*.jsonl"))
    home = tmp_path_factory.mktemp("home")
    root = str(home / "labelbeam-data")
    for ending, method, version in (("2", "mv", 1), ("1", "ds", 2)):
        inputs = events_without_items(sources, ending, sample_dir / f"without-{ending}")
        config = BuildConfig(inputs=(inputs,), output=root, dataset=DATASET, labels=tuple(description["labels"]),
                             method=method)
        outcome = run_build(config, BEAM_ARGS)
        assert outcome.published and outcome.version == version
    return home


@pytest.fixture
def copy(home, tmp_path):
    """A private copy of the module's root, for tests that change it."""
    root = tmp_path / "labelbeam-data"
    shutil.copytree(home / "labelbeam-data", root)
    return root


def labelbeam(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_usage_error(code, err, *fragments):
    assert code == EXIT_USAGE
    [line] = [line for line in err.splitlines() if line.strip()]
    assert line.startswith("labelbeam: error: ")
    for fragment in fragments:
        assert fragment in line


def labels_of(root, version) -> pd.DataFrame:
    [shard] = (pathlib.Path(root) / DATASET / "versions" / str(version) / "labels").glob("*.parquet")
    return pd.read_parquet(shard).set_index("item_id")


def latest(root) -> int:
    return json.loads((pathlib.Path(root) / DATASET / "_latest").read_text())["version"]


def make_orphan_version(root, version: int, age_hours: float) -> pathlib.Path:
    """The folder a crashed build leaves: its .claim and a partial labels shard, no manifest.json."""
    folder = pathlib.Path(root) / DATASET / "versions" / str(version)
    (folder / "labels").mkdir(parents=True)
    (folder / ".claim").write_text("crashed-build")
    shutil.copy(next((pathlib.Path(root) / DATASET / "versions" / "1" / "labels").glob("*.parquet")),
                folder / "labels" / "labels-00000-of-00001.parquet")
    set_age(folder, age_hours)
    return folder


def set_age(path: pathlib.Path, age_hours: float) -> None:
    stamp = time.time() - age_hours * HOUR
    for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        os.utime(file, (stamp, stamp))


# ------------------------------------------------------------------------------------------------ diff


def test_diff_counts_items_labels_and_confidence_as_the_parquet_files_say(home, capsys):
    root = home / "labelbeam-data"
    code, out, _ = labelbeam(capsys, "diff", root, "--dataset", DATASET, "1", "2", "--json")
    assert code == EXIT_OK
    report = json.loads(out)

    old, new = labels_of(root, 1), labels_of(root, 2)
    common = old.merge(new, left_index=True, right_index=True, suffixes=("_a", "_b"))
    changed = common[common["label_a"].fillna("<null>") != common["label_b"].fillna("<null>")]
    shift = (common["confidence_b"] - common["confidence_a"]).abs()
    assert report["items"] == {
        "a": len(old), "b": len(new), "common": len(common),
        "added": len(new.index.difference(old.index)), "removed": len(old.index.difference(new.index)),
        "added_examples": sorted(new.index.difference(old.index))[:5],
        "removed_examples": sorted(old.index.difference(new.index))[:5]}
    # The two builds left out different items and used different methods: every kind of change occurs.
    assert report["items"]["added"] > 0 and report["items"]["removed"] > 0
    assert all(item.endswith("2") for item in new.index.difference(old.index))
    assert report["labels_changed"]["count"] == len(changed) > 0
    assert [e["item_id"] for e in report["labels_changed"]["examples"]] == sorted(changed.index)[:5]
    first = report["labels_changed"]["examples"][0]
    assert (first["a"], first["b"]) == tuple(changed.loc[first["item_id"], ["label_a", "label_b"]])
    assert report["status_changed"] == int((common["status_a"] != common["status_b"]).sum())
    assert report["confidence"]["compared"] == len(common)
    assert report["confidence"]["over_threshold"] == int((shift > 0.1).sum())
    assert report["confidence"]["mean_abs_shift"] == pytest.approx(shift.mean(), abs=1e-6)
    manifests = [version_store.read_manifest(str(root), DATASET, v) for v in (1, 2)]
    for key in ("read", "votes", "items"):
        a, b = (m["counts"][key] for m in manifests)
        assert report["counts"][key] == {"a": a, "b": b, "delta": b - a}
    assert report["params_changed"]["method"] == {"a": "mv", "b": "ds"}


def test_diff_text_puts_counts_side_by_side_with_deltas(home, capsys, monkeypatch):
    # ROOT and --dataset default to ./labelbeam-data and sample; 'latest' names the version _latest points at.
    monkeypatch.chdir(home)
    code, out, _ = labelbeam(capsys, "diff", "1", "latest")
    assert code == EXIT_OK
    report = json.loads(labelbeam(capsys, "diff", "1", "2", "--json")[1])
    lines = out.splitlines()
    assert lines[0] == "sample: version 1 -> 2"
    assert f"  labels changed: {report['labels_changed']['count']} of {report['items']['common']} items in both" \
        in lines
    items = report["counts"]["items"]
    assert f"  items {items['a']:>10}  {items['b']:>10}  {items['b'] - items['a']:>+8d}".split() in \
        [line.split() for line in lines]
    assert '  params.method: "mv" -> "ds"' in lines


def test_diff_of_a_version_with_itself_changes_nothing(home, capsys):
    code, out, _ = labelbeam(capsys, "diff", home / "labelbeam-data", "2", "2", "--json")
    report = json.loads(out)
    assert code == EXIT_OK
    assert report["labels_changed"]["count"] == report["status_changed"] == 0
    assert report["items"]["added"] == report["items"]["removed"] == 0
    assert report["confidence"]["mean_abs_shift"] == 0 and report["params_changed"] == {}


def test_diff_of_an_unpublished_version_is_a_one_line_usage_error(home, capsys):
    code, _, err = labelbeam(capsys, "diff", home / "labelbeam-data", "1", "9")
    assert_one_line_usage_error(code, err, "no complete version 9", "published: 1, 2")
    code, _, err = labelbeam(capsys, "diff", home / "labelbeam-data", "1", "two")
    assert_one_line_usage_error(code, err, "'two' is not a version")


# ------------------------------------------------------------------------------------------------ verify


def listed_files(root, version) -> int:
    """How many files verify checks for a version: those its manifest lists, quarantined dead letters included."""
    manifest = version_store.read_manifest(str(root), DATASET, version)
    return len(manifest["files"]) + len(manifest["dead_letters"]["quarantine"])


def test_verify_of_untouched_versions_is_clean(home, capsys):
    root = home / "labelbeam-data"
    code, out, _ = labelbeam(capsys, "verify", root, "--all")
    assert code == EXIT_OK
    counts = [listed_files(root, version) for version in (1, 2)]
    assert out.splitlines() == [f"version 1: {counts[0]} files, ok", f"version 2: {counts[1]} files, ok",
                                f"verified 2 versions of sample, {sum(counts)} files: ok"]


def test_verify_catches_one_flipped_byte_in_a_published_parquet_file(copy, capsys):
    [shard] = (copy / DATASET / "versions" / "2" / "labels").glob("*.parquet")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))

    code, out, _ = labelbeam(capsys, "verify", copy)  # the latest version: 2
    assert code == EXIT_VERIFY_FAILED
    [problem] = [line for line in out.splitlines() if line.startswith("versions/")]
    assert problem.startswith(f"versions/2/labels/{shard.name}: sha256 ")
    assert "the manifest says" in problem
    code, out, _ = labelbeam(capsys, "verify", copy, "--version", "1")
    assert code == EXIT_OK


def test_verify_reports_missing_quarantined_dead_letters_and_wrong_rows(copy, capsys):
    manifest_path = copy / DATASET / "versions" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    [quarantined] = manifest["dead_letters"]["quarantine"]
    (copy / DATASET / quarantined["path"]).unlink()
    labels_entry = next(entry for entry in manifest["files"] if entry["path"].startswith("labels/"))
    labels_entry["rows"] += 1
    manifest_path.write_text(json.dumps(manifest))

    code, out, _ = labelbeam(capsys, "verify", copy, "--all")
    assert code == EXIT_VERIFY_FAILED
    assert f"{quarantined['path']}: missing" in out.splitlines()
    assert (f"versions/1/{labels_entry['path']}: {labels_entry['rows'] - 1} rows, the manifest says "
            f"{labels_entry['rows']}") in out.splitlines()
    assert f"version 2: {listed_files(copy, 2)} files, ok" in out.splitlines()
    assert out.splitlines()[-1] == \
        f"verified 2 versions of sample, {listed_files(copy, 1) + listed_files(copy, 2)} files: 2 problems"


def test_verify_of_a_version_without_manifest_is_a_usage_error(copy, capsys):
    make_orphan_version(copy, 3, age_hours=0)
    code, _, err = labelbeam(capsys, "verify", copy, "--version", "3")
    assert_one_line_usage_error(code, err, "no complete version 3")


# ------------------------------------------------------------------------------------------------ rollback, promote


def test_rollback_moves_latest_back_and_versions_marks_it(copy, capsys):
    code, out, _ = labelbeam(capsys, "rollback", copy, "--version", "1")
    assert code == EXIT_OK and out == "sample: _latest 2 -> 1 (rolled back)\n"
    assert latest(copy) == 1 == version_store.read_latest(str(copy), DATASET)
    _, out, _ = labelbeam(capsys, "versions", copy)
    markers = {line.split()[0] for line in out.splitlines()[1:]}
    assert markers == {"1*", "2"}

    code, _, err = labelbeam(capsys, "rollback", copy, "--version", "2")
    assert_one_line_usage_error(code, err, "newer than the latest", "promote --version 2")
    assert latest(copy) == 1
    code, out, _ = labelbeam(capsys, "promote", copy, "--version", "2")
    assert code == EXIT_OK and out == "sample: _latest 1 -> 2 (promoted)\n"
    code, out, _ = labelbeam(capsys, "promote", copy, "--version", "2")
    assert code == EXIT_OK and out == "sample: _latest already points at version 2\n"


def test_promote_and_rollback_refuse_a_version_without_manifest(copy, capsys):
    make_orphan_version(copy, 3, age_hours=0)
    for command in ("promote", "rollback"):
        code, _, err = labelbeam(capsys, command, copy, "--version", "3")
        assert_one_line_usage_error(code, err, "no complete version 3 (no manifest.json)")
    assert latest(copy) == 2


def test_promote_repairs_an_unreadable_latest_pointer(copy, capsys):
    (copy / DATASET / "_latest").write_text("{not json")
    code, _, err = labelbeam(capsys, "rollback", copy, "--version", "1")
    assert_one_line_usage_error(code, err, "unreadable")
    code, out, _ = labelbeam(capsys, "promote", copy, "--version", "1")
    assert code == EXIT_OK and out == "sample: _latest (none) -> 1 (promoted)\n"
    assert latest(copy) == 1


def test_rollback_without_a_latest_pointer_moves_back_from_the_newest_version(copy, capsys):
    (copy / DATASET / "_latest").unlink()
    code, out, _ = labelbeam(capsys, "rollback", copy, "--version", "1")
    assert code == EXIT_OK and out == "sample: _latest 2 -> 1 (rolled back)\n"
    assert latest(copy) == 1


# ------------------------------------------------------------------------------------------------ gc


def test_gc_removes_a_crashed_build_older_than_the_grace_period_and_stale_temporary_files(copy, capsys):
    orphan = make_orphan_version(copy, 3, age_hours=48)
    orphan_bytes = {f"versions/3/{path.relative_to(orphan).as_posix()}": path.stat().st_size
                    for path in orphan.rglob("*") if path.is_file()}
    published = copy / DATASET / "versions" / "2"
    stale = published / ".manifest.json.tmp-123-abc"
    stale.write_bytes(b"{")
    set_age(published, 48)  # .claim and the tables too: old, but published, so they stay
    before = {path: path.read_bytes() for path in copy.rglob("*") if path.is_file() and path != stale
              and orphan not in path.parents}

    code, out, _ = labelbeam(capsys, "gc", copy)
    assert code == EXIT_OK
    removed = dict(line.split()[1:3] for line in out.splitlines() if line.startswith("removed "))
    assert removed == {**{name: str(size) for name, size in orphan_bytes.items()},
                       "versions/2/.manifest.json.tmp-123-abc": "1"}
    assert out.splitlines()[-1] == (f"gc sample: removed 3 files, {sum(orphan_bytes.values()) + 1} bytes; "
                                    "kept 0 within the 24 h grace period")
    assert not orphan.exists() and not stale.exists()
    after = {path: path.read_bytes() for path in copy.rglob("*") if path.is_file()}
    assert after == before  # _latest, quarantine/, the root's key and both versions untouched
    assert labelbeam(capsys, "verify", copy, "--all")[0] == EXIT_OK


def test_gc_keeps_a_claimed_version_within_the_grace_period(copy, capsys):
    orphan = make_orphan_version(copy, 3, age_hours=1)
    code, out, _ = labelbeam(capsys, "gc", copy)
    assert code == EXIT_OK
    assert [line for line in out.splitlines() if line.startswith("removed ")] == []
    assert any(line.startswith("kept versions/3/ (no manifest.json") for line in out.splitlines())
    assert (orphan / ".claim").exists()
    # A shorter grace period makes the same folder garbage.
    code, out, _ = labelbeam(capsys, "gc", copy, "--grace-hours", "0.5")
    assert code == EXIT_OK and not orphan.exists()


def test_gc_dry_run_lists_but_removes_nothing(copy, capsys):
    orphan = make_orphan_version(copy, 3, age_hours=48)
    before = sorted(path for path in copy.rglob("*"))
    code, out, _ = labelbeam(capsys, "gc", copy, "--dry-run")
    assert code == EXIT_OK
    assert f"would remove versions/3/.claim  {len('crashed-build')} bytes" in out.splitlines()
    assert out.splitlines()[-1].startswith("gc sample (dry run): would remove 2 files")
    assert sorted(path for path in copy.rglob("*")) == before and orphan.exists()


def test_gc_rejects_a_negative_grace_period_and_a_missing_dataset(copy, capsys):
    code, _, err = labelbeam(capsys, "gc", copy, "--grace-hours", "-1")
    assert_one_line_usage_error(code, err, "--grace-hours")
    code, _, err = labelbeam(capsys, "gc", copy, "--dataset", "other")
    assert_one_line_usage_error(code, err, "no dataset 'other'")
    code, _, err = labelbeam(capsys, "gc", copy, "--dataset", "../up")
    assert_one_line_usage_error(code, err, "not a valid dataset name")


# ------------------------------------------------------------------------------------------------ any root: local and gs://


def upload_root(local_root: pathlib.Path, root: str) -> None:
    """Every object of a local root (the store's view: _latest, .labelbeam/ included, lock files not) to `root`."""
    local, remote = LocalStore(), store_for(root)
    for path in local.list(str(local_root)):
        remote.write(join(root, *pathlib.Path(path).relative_to(local_root).parts), local.read(path))


@pytest.fixture
def gs_root(home, gcs_emulator) -> str:
    """The module's root, copied to a fresh bucket of the emulator."""
    root = f"gs://{gcs_emulator.new_bucket()}/root"
    upload_root(home / "labelbeam-data", root)
    return root


@pytest.fixture(params=["local", "gs"])
def any_root(request, home, tmp_path) -> str:
    """A private copy of the module's root: a local folder, or gs://<fresh bucket>/root on the emulator."""
    if request.param == "gs":
        return request.getfixturevalue("gs_root")
    root = tmp_path / "labelbeam-data"
    shutil.copytree(home / "labelbeam-data", root)
    return str(root)


def objects(root: str) -> dict[str, bytes]:
    """{path relative to root: bytes} of every object under `root`, as its store lists them."""
    store = store_for(root)
    return {path[len(root):].lstrip("/"): store.read(path) for path in store.list(root)}


def pointer(root: str) -> dict:
    return json.loads(store_for(root).read(join(root, DATASET, "_latest")))


def test_diff_of_a_gs_root_matches_the_local_one(home, gs_root, capsys):
    local_code, local_out, _ = labelbeam(capsys, "diff", home / "labelbeam-data", "1", "2", "--json")
    code, out, _ = labelbeam(capsys, "diff", gs_root, "1", "latest", "--json")
    assert code == local_code == EXIT_OK
    assert json.loads(out) == json.loads(local_out)


def test_verify_is_clean_then_catches_one_flipped_byte_on_any_root(any_root, capsys):
    code, out, _ = labelbeam(capsys, "verify", any_root, "--all")
    counts = [listed_files(any_root, version) for version in (1, 2)]
    assert code == EXIT_OK
    assert out.splitlines() == [f"version 1: {counts[0]} files, ok", f"version 2: {counts[1]} files, ok",
                                f"verified 2 versions of sample, {sum(counts)} files: ok"]

    store = store_for(any_root)
    [shard] = [path for path in store.list(join(any_root, DATASET, "versions", "2", "labels"))
               if path.endswith(".parquet")]
    data = bytearray(store.read(shard))
    data[len(data) // 2] ^= 0x01
    store.write(shard, bytes(data))

    code, out, _ = labelbeam(capsys, "verify", any_root)  # the latest version: 2
    assert code == EXIT_VERIFY_FAILED
    [problem] = [line for line in out.splitlines() if line.startswith("versions/")]
    assert problem.startswith(f"versions/2/labels/{shard.rsplit('/', 1)[-1]}: sha256 ")
    assert "the manifest says" in problem
    assert labelbeam(capsys, "verify", any_root, "--version", "1")[0] == EXIT_OK


def test_rollback_and_promote_on_any_root_write_a_chosen_pointer(any_root, capsys):
    assert pointer(any_root) == {"version": 2}  # as the build left it
    code, out, _ = labelbeam(capsys, "rollback", any_root, "--version", "1")
    assert code == EXIT_OK and out == "sample: _latest 2 -> 1 (rolled back)\n"
    assert pointer(any_root) == {"version": 1, "chosen": True}
    assert version_store.read_latest(any_root, DATASET) == 1
    _, out, _ = labelbeam(capsys, "versions", any_root)
    assert {line.split()[0] for line in out.splitlines()[1:]} == {"1*", "2"}

    code, _, err = labelbeam(capsys, "rollback", any_root, "--version", "2")
    assert_one_line_usage_error(code, err, "newer than the latest", "promote --version 2")
    assert pointer(any_root) == {"version": 1, "chosen": True}
    code, out, _ = labelbeam(capsys, "promote", any_root, "--version", "2")
    assert code == EXIT_OK and out == "sample: _latest 1 -> 2 (promoted)\n"
    assert pointer(any_root) == {"version": 2, "chosen": True}
    code, out, _ = labelbeam(capsys, "promote", any_root, "--version", "2")
    assert code == EXIT_OK and out == "sample: _latest already points at version 2\n"

    # An unreadable pointer: rollback refuses (older than what?), promote replaces it.
    store_for(any_root).write(join(any_root, DATASET, "_latest"), b"{not json")
    code, _, err = labelbeam(capsys, "rollback", any_root, "--version", "1")
    assert_one_line_usage_error(code, err, "unreadable", "promote --version 1")
    code, out, _ = labelbeam(capsys, "promote", any_root, "--version", "1")
    assert code == EXIT_OK and out == "sample: _latest (none) -> 1 (promoted)\n"
    assert pointer(any_root) == {"version": 1, "chosen": True}


def test_gc_on_any_root_removes_a_fresh_orphan_only_without_grace_and_leaves_published_versions(any_root, capsys):
    # GCS has no way to backdate an object, so the orphan is fresh: the default grace period keeps it, 0 h does not.
    store = store_for(any_root)
    versions = join(any_root, DATASET, "versions")
    [shard] = [path for path in store.list(join(versions, "1", "labels")) if path.endswith(".parquet")]
    orphan = {join(versions, "3", ".claim"): b"crashed-build",
              join(versions, "3", "labels", "labels-00000-of-00001.parquet"): store.read(shard),
              join(versions, "2", ".manifest.json.tmp-123-abc"): b"{"}
    before = objects(any_root)
    for path, data in orphan.items():
        store.write(path, data)

    code, out, _ = labelbeam(capsys, "gc", any_root)
    assert code == EXIT_OK
    assert [line for line in out.splitlines() if line.startswith("removed ")] == []
    kept = [line for line in out.splitlines() if line.startswith("kept ")]
    assert len(kept) == 2 and kept[1].startswith("kept versions/3/ (no manifest.json; newest file updated 0.0 h ago")
    assert kept[0].startswith("kept versions/2/.manifest.json.tmp-123-abc (a temporary file of published version 2")
    assert all(store.exists(path) for path in orphan)

    code, out, _ = labelbeam(capsys, "gc", any_root, "--grace-hours", "0")
    assert code == EXIT_OK
    removed = dict(line.split()[1:3] for line in out.splitlines() if line.startswith("removed "))
    assert removed == {path[len(join(any_root, DATASET)):].lstrip("/"): str(len(data)) for path, data in orphan.items()}
    assert out.splitlines()[-1] == (f"gc sample: removed 3 files, {sum(map(len, orphan.values()))} bytes; "
                                    "kept 0 within the 0 h grace period")
    assert objects(any_root) == before  # _latest, quarantine/, the root's key and both versions untouched
    if "://" not in any_root:
        assert not (pathlib.Path(any_root) / DATASET / "versions" / "3").exists()  # the folder goes too
    assert labelbeam(capsys, "verify", any_root, "--all")[0] == EXIT_OK


# ------------------------------------------------------------------------------------------------ startup


def test_the_cli_does_not_import_apache_beam():
    """`labelbeam --help` (and diff/verify/rollback/promote/gc) must stay fast: Beam is imported by `build` only."""
    script = "from labelbeam.pipelines import cli; cli.build_parser().format_help()"
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", script], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    modules = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
               if line.startswith("import time:")]
    assert "labelbeam.pipelines.inspect" in modules
    assert [module for module in modules if module.split(".")[0] == "apache_beam"] == []
