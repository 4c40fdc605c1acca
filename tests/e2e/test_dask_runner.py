"""The build on Dask (a multi-process distributed engine: without --dask_client_address, a local
dask.distributed cluster with a worker process per core) publishes the same files as on the FnApiRunner. Beam's own DaskRunner cannot run it
(pipelines/dask_runner.py says why); labelbeam's subclass can."""
import hashlib
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("distributed", reason="dask[distributed] is not installed (it comes with the test extra)")

KEY = "0123456789abcdef0123456789abcdef"


def build(sample, output, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labelbeam.pipelines.cli", "build", "--input", str(sample / "events"),
                           "--output", str(output), "--dataset", "sample", "--labels", "bird,cat,dog,fish", *extra],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "LABELBEAM_PSEUDONYM_KEY": KEY})


def digests(version_dir: pathlib.Path) -> dict[str, str]:
    return {str(path.relative_to(version_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(version_dir.rglob("*")) if path.is_file() and path.name not in ("manifest.json", ".claim")}


@pytest.mark.parametrize("method", ["ds"])   # ds: the default --em auto picks in_process on Dask
def test_the_build_on_dask_publishes_the_files_the_fnapi_runner_does(tmp_path, method):
    from labelbeam.pipelines.generate import write_sample
    write_sample(str(tmp_path / "sample"), 2_000, seed=5)
    on_dask = build(tmp_path / "sample", tmp_path / "dask", "--method", method,
                    "--runner", "labelbeam.pipelines.dask_runner.DaskRunner")
    assert on_dask.returncode == 0, on_dask.stderr[-3000:]
    local = build(tmp_path / "sample", tmp_path / "local", "--method", method)
    assert local.returncode == 0, local.stderr[-3000:]
    dask_files = digests(tmp_path / "dask" / "sample" / "versions" / "1")
    assert {"labels/labels-00000-of-00001.parquet", "annotators/annotators-00000-of-00001.parquet",
            "README.md"} <= set(dask_files)
    assert dask_files == digests(tmp_path / "local" / "sample" / "versions" / "1")
