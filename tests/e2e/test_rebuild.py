"""`labelbeam rebuild` recomputes a version from its manifest and proves every file byte-identical."""
import json
import shutil
import subprocess
import sys

import pytest

from labelbeam.pipelines.build import run_build
from labelbeam.pipelines.generate import write_sample
from labelbeam.pipelines.options import BuildConfig

BEAM_ARGS = ["--runner=FnApiRunner"]


def labelbeam(*args, env=None):
    return subprocess.run([sys.executable, "-m", "labelbeam.pipelines.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("rebuild")
    description = write_sample(str(base / "sample"), 3_000, seed=21)
    gold = base / "gold.csv"
    truth = (base / "sample" / "truth.csv").read_text().splitlines()
    gold.write_text("\n".join(truth[:40]) + "\n")
    config = BuildConfig(inputs=(str(base / "sample" / "events"),), output=str(base / "out"),
                         dataset=description["dataset"], labels=tuple(description["labels"]), method="ds",
                         gold_path=str(gold), min_votes=2, as_of="2026-04-01T00:00:00Z")
    return base, run_build(config, BEAM_ARGS)


def test_rebuild_of_a_fresh_version_is_byte_identical(built, tmp_path):
    base, outcome = built
    root = tmp_path / "out"
    shutil.copytree(base / "out", root)
    result = labelbeam("rebuild", str(root), "--dataset", "sample", "--version", "1", "--scratch",
                       str(tmp_path / "scratch"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every file byte-identical" in result.stdout
    rebuilt = json.loads((tmp_path / "scratch" / "sample" / "versions" / "1" / "manifest.json").read_text())
    assert rebuilt["params"] == outcome.manifest["params"]      # ds, gold, min votes and as-of came back
    assert rebuilt["counts"]["after_as_of"] == outcome.manifest["counts"]["after_as_of"] > 0


def test_rebuild_notices_a_tampered_published_file_record(built, tmp_path):
    base, _ = built
    root = tmp_path / "out"
    shutil.copytree(base / "out", root)
    manifest_path = root / "sample" / "versions" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    [labels] = [entry for entry in manifest["files"] if entry["path"].startswith("labels/")]
    labels["sha256"] = "0" * 64   # the record no longer matches what the inputs give
    manifest_path.write_text(json.dumps(manifest))
    result = labelbeam("rebuild", str(root), "--dataset", "sample", "--version", "1")
    assert result.returncode == 4
    assert "labels/labels-00000-of-00001.parquet: published 0000" in result.stdout


def test_rebuild_refuses_when_an_input_changed(built, tmp_path):
    base, _ = built
    shutil.copytree(base, tmp_path / "copy")
    root = tmp_path / "copy" / "out"
    manifest = json.loads((root / "sample" / "versions" / "1" / "manifest.json").read_text())
    first_input = manifest["inputs"][0]["path"].replace(str(base), str(tmp_path / "copy"))
    for entry in manifest["inputs"]:
        entry["path"] = entry["path"].replace(str(base), str(tmp_path / "copy"))
    manifest["side_inputs"]["gold"]["path"] = manifest["side_inputs"]["gold"]["path"].replace(
        str(base), str(tmp_path / "copy"))
    (root / "sample" / "versions" / "1" / "manifest.json").write_text(json.dumps(manifest))
    with open(first_input, "ab") as stream:
        stream.write(b"\n")   # a blank line: the events are the same, the file is not
    result = labelbeam("rebuild", str(root), "--dataset", "sample", "--version", "1")
    assert result.returncode == 2
    assert "inputs changed" in result.stderr


def test_rebuild_refuses_when_the_gold_file_changed(built, tmp_path):
    base, _ = built
    shutil.copytree(base, tmp_path / "copy")
    root = tmp_path / "copy" / "out"
    manifest_path = root / "sample" / "versions" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    gold = manifest["side_inputs"]["gold"]["path"].replace(str(base), str(tmp_path / "copy"))
    manifest["side_inputs"]["gold"]["path"] = gold
    manifest_path.write_text(json.dumps(manifest))
    with open(gold, "a") as stream:
        stream.write("item-9999999,cat\n")
    result = labelbeam("rebuild", str(root), "--dataset", "sample", "--version", "1")
    assert result.returncode == 2
    assert "--gold file" in result.stderr and "changed" in result.stderr
