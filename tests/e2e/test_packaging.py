"""Packaging: the wheel installs only the labelbeam namespace; the sdist (what managed runners
install with --setup_file) carries the Avro schemas."""
import pathlib
import shutil
import subprocess
import sys
import tarfile
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[2]
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
    # One Beam range for the launcher and (via --setup_file) the workers, the gcp extra's included.
    [metadata] = [name for name in names if name.endswith(".dist-info/METADATA")]
    requires = [line for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
                if line.startswith("Requires-Dist: apache-beam")]
    ranges = {line.split(";")[0].split("apache-beam")[1].replace("[gcp]", "").strip() for line in requires}
    assert len(requires) == 2 and len(ranges) == 1 and "<2.78" in ranges.pop()


def source_modules() -> set[str]:
    """Every module and schema of the source directories, as its path inside the labelbeam namespace."""
    return {f"labelbeam/{path.relative_to(REPO).as_posix()}" for directory in ("pipelines", "transforms", "schemas")
            for path in (REPO / directory).rglob("*") if path.suffix in (".py", ".avsc")
            and "__pycache__" not in path.parts}


def test_wheel_and_sdist_carry_every_subpackage_module(tmp_path):
    source = source_copy(tmp_path)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(source)],
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
                   cwd=source, check=True, capture_output=True)
    [wheel] = tmp_path.glob("labelbeam-*.whl")
    [archive] = tmp_path.glob("labelbeam-*.tar.gz")
    expected = source_modules()
    assert any("/inference/" in name for name in expected)  # the subpackages exist at all
    assert expected <= set(zipfile.ZipFile(wheel).namelist())
    in_sdist = {"labelbeam/" + name.split("/", 1)[1] for name in tarfile.open(archive).getnames() if "/" in name}
    assert expected <= in_sdist
