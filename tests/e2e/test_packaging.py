"""Packaging: the wheel installs only the labelbeam namespace; the sdist (what managed runners
install with --setup_file) carries the Avro schemas and, installed into a fresh venv, runs a build."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("pipelines", "transforms", "schemas")
PACKAGED = ("setup.py", "MANIFEST.in", "README.md") + SOURCE_DIRS


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
           "consensus_row.v3.avsc", "consensus_row.single.v2.avsc",
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


def python_sources(root: pathlib.Path) -> dict[str, bytes]:
    """Every module and schema below root (no __pycache__), by its path relative to root."""
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*")
            if path.suffix in (".py", ".avsc") and "__pycache__" not in path.parts}


def test_setup_file_sdist_installs_into_a_fresh_venv_and_builds_from_there(tmp_path):
    """What a managed runner does with --setup_file: Beam's stager builds the sdist, stages it as
    workflow.tar.gz, and each worker pip-installs that tarball. The build then runs from the worker's venv."""
    from apache_beam.runners.portability import stager

    source = source_copy(tmp_path)
    staging = tmp_path / "staging"
    staging.mkdir()
    # Beam's own code path: `python -m build --no-isolation --sdist` if `build` is installed, else
    # `python setup.py sdist --dist-dir`, run in the setup file's directory with this interpreter.
    archive = pathlib.Path(stager.Stager._build_setup_package(str(source / "setup.py"), str(staging)))
    assert archive.name == "labelbeam-0.1.0.tar.gz"
    workflow = staging / stager.WORKFLOW_TARBALL_FILE  # the name the workers see
    archive.rename(workflow)
    shutil.rmtree(source / "labelbeam.egg-info")  # left by the sdist build; its absence is checked below

    venv = tmp_path / "worker-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    python = str(venv / "bin" / "python")
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONNOUSERSITE="1")
    site = pathlib.Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                       check=True, capture_output=True, text=True, env=env).stdout.strip())
    # The dependencies (apache-beam, pyarrow, ..., and pip itself) come from this venv instead of PyPI,
    # through a folder of links to everything in its site-packages except labelbeam itself (installed
    # there in CI, editable in development) and .pth files (the editable install's finder). A plain .pth
    # line appends that folder to sys.path as it is, not as a site directory.
    dependencies = tmp_path / "test-venv-dependencies"
    dependencies.mkdir()
    for directory in dict.fromkeys(sysconfig.get_path(name) for name in ("purelib", "platlib")):
        for entry in pathlib.Path(directory).iterdir():
            own = entry.name == "labelbeam" or entry.name.startswith(("labelbeam-", "__editable__"))
            if not own and entry.suffix != ".pth" and not (dependencies / entry.name).exists():
                (dependencies / entry.name).symlink_to(entry)
    (site / "zz-test-dependencies.pth").write_text(f"{dependencies}\n")

    # The worker's `pip install workflow.tar.gz`, with an isolated build (setuptools and wheel from the
    # package index, as on a worker). --no-deps: the dependencies are the ones above.
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(workflow)],
                   check=True, capture_output=True, env=env, cwd=tmp_path)
    assert python_sources(site / "labelbeam") == {f"{directory}/{name}": content for directory in SOURCE_DIRS
                                                  for name, content in python_sources(source / directory).items()}
    probe = ("import json, sys, apache_beam, labelbeam, labelbeam.pipelines.cli as cli\n"
             "print(json.dumps({'labelbeam': list(labelbeam.__path__), 'cli': cli.__file__,\n"
             "    'beam': apache_beam.__file__, 'path': sys.path,\n"
             "    'editable': [name for name in sys.modules if name.startswith('__editable__')]\n"
             "               + [repr(finder) for finder in sys.meta_path if 'editable' in repr(finder).lower()]}))")
    work = tmp_path / "elsewhere"  # outside the repo: nothing of /work/main on sys.path via the cwd
    work.mkdir()
    seen = json.loads(subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True,
                                     env=env, cwd=work).stdout)
    assert seen["labelbeam"] == [str(site / "labelbeam")]  # the only portion of the namespace package
    assert seen["cli"] == str(site / "labelbeam" / "pipelines" / "cli.py")
    assert seen["editable"] == []
    assert not any(entry.startswith(str(REPO)) for entry in seen["path"])
    assert pathlib.Path(seen["beam"]).is_relative_to(dependencies)

    cli = [python, "-m", "labelbeam.pipelines.cli"]
    subprocess.run(cli + ["generate", "--output", "S", "--events", "500", "--seed", "1"],
                   check=True, capture_output=True, env=env, cwd=work)
    build = subprocess.run(cli + ["build", "--input", "S/events", "--output", "OUT", "--dataset", "sample",
                                  "--labels", "bird,cat,dog,fish", "--setup_file", str(source / "setup.py")],
                           capture_output=True, text=True, env=env, cwd=work)
    assert build.returncode == 0, build.stderr[-3000:]
    expected = json.loads((work / "S" / "expected.json").read_text())["expected"]
    manifest = json.loads((work / "OUT" / "sample" / "versions" / "1" / "manifest.json").read_text())
    for key in ("read", "valid", "invalid", "duplicates", "superseded", "deleted", "votes", "items"):
        assert manifest["counts"][key] == expected[key], key
    assert manifest["dead_letters"]["by_reason"] == expected["invalid_by_reason"]
    assert manifest["code_version"].startswith("0.1.0+")  # the installed distribution's metadata
    # The local runner (FnApiRunner, labelbeam's default) accepts --setup_file and ignores it: its
    # environments (embedded, or a worker subprocess with --direct_running_mode) carry no artifacts, so
    # Beam's stager never runs (a setup.py path that does not exist passes as well). Portable runners
    # (Prism, PortableRunner) build and stage the sdist, but a LOOPBACK worker is the launching process
    # and installs nothing; only container or process workers (Dataflow) pip-install workflow.tar.gz.
    # That is why this test builds and installs the sdist itself above.
    assert not (source / "labelbeam.egg-info").exists(), "the local runner ran the stager: update this comment"
