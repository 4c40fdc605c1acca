"""Packaging: the wheel installs only the labelbeam namespace; the sdist (what managed runners
install with --setup_file) carries the Avro schemas."""
import pathlib
import subprocess
import sys
import tarfile
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[1]
SCHEMAS = {"annotation_event.v1.avsc", "annotation_event.v2.avsc", "consensus_row.v1.avsc", "dead_letter.v1.avsc"}


def test_sdist_includes_the_avro_schemas(tmp_path):
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)], cwd=REPO, check=True,
                   capture_output=True)
    [archive] = tmp_path.glob("labelbeam-*.tar.gz")
    names = {pathlib.PurePosixPath(name).name for name in tarfile.open(archive).getnames()
             if "/schemas/" in name}
    assert SCHEMAS <= names


def test_wheel_installs_only_the_labelbeam_namespace(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    [wheel] = tmp_path.glob("labelbeam-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"labelbeam"}
    assert {f"labelbeam/schemas/{schema}" for schema in SCHEMAS} <= set(names)
    assert "labelbeam/pipelines/cli.py" in names
