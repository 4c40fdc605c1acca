"""Packaging: the wheel installs only the labelbeam namespace; the sdist (what managed runners
install with --setup_file) carries the Avro schemas."""
import pathlib
import shutil
import subprocess
import sys
import tarfile
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGED = ("setup.py", "MANIFEST.in", "README.md", "pipelines", "transforms", "schemas")


def source_copy(tmp_path) -> pathlib.Path:
    """The packaged parts of the repo, copied so builds leave no build/ or egg-info behind in it."""
    copy = tmp_path / "src"
    copy.mkdir()
    for name in PACKAGED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, copy / name)
    return copy
SCHEMAS = {"annotation_event.v1.avsc", "annotation_event.v2.avsc", "consensus_row.v1.avsc", "consensus_row.v2.avsc",
           "dead_letter.v1.avsc"}


def test_sdist_includes_the_avro_schemas(tmp_path):
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
                   cwd=source_copy(tmp_path), check=True, capture_output=True)
    [archive] = tmp_path.glob("labelbeam-*.tar.gz")
    names = {pathlib.PurePosixPath(name).name for name in tarfile.open(archive).getnames()
             if "/schemas/" in name}
    assert SCHEMAS <= names


def test_wheel_installs_only_the_labelbeam_namespace(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", str(tmp_path), str(source_copy(tmp_path))], check=True, capture_output=True)
    [wheel] = tmp_path.glob("labelbeam-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"labelbeam"}
    assert {f"labelbeam/schemas/{schema}" for schema in SCHEMAS} <= set(names)
    assert "labelbeam/pipelines/cli.py" in names
