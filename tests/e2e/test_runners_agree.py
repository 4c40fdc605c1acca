"""The build publishes the same files on Dask (a multi-process distributed engine: without
--dask_client_address, a local dask.distributed cluster with a worker process per core) and on Beam's
PortableRunner as on the FnApiRunner. Beam's own DaskRunner cannot run it (pipelines/dask_runner.py says
why); labelbeam's subclass can."""
import hashlib
import os
import pathlib
import subprocess
import sys

import pytest

KEY = "0123456789abcdef0123456789abcdef"


def build(sample, output, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labelbeam.pipelines.cli", "build", "--input", str(sample / "events"),
                           "--output", str(output), "--dataset", "sample", "--labels", "bird,cat,dog,fish", *extra],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "LABELBEAM_PSEUDONYM_KEY": KEY})


def digests(version_dir: pathlib.Path) -> dict[str, str]:
    return {str(path.relative_to(version_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(version_dir.rglob("*")) if path.is_file() and path.name not in ("manifest.json", ".claim")}


RUNNERS = {
    "dask": ["--runner", "labelbeam.pipelines.dask_runner.DaskRunner"],
    # Beam's portable runner on its embedded job server, the SDK harness in this process.
    "portable": ["--runner", "PortableRunner", "--job_endpoint", "embed", "--environment_type", "LOOPBACK"],
}


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_the_build_publishes_the_files_the_fnapi_runner_does(tmp_path, runner):
    if runner == "dask":
        pytest.importorskip("distributed", reason="dask[distributed] is not installed (it comes with the test extra)")
    from labelbeam.pipelines.generate import write_sample
    write_sample(str(tmp_path / "sample"), 2_000, seed=5)
    # ds with EM in one worker on both (--em auto fits it on Beam under PortableRunner, which may front Flink).
    elsewhere = build(tmp_path / "sample", tmp_path / runner, "--method", "ds", "--em", "in_process", *RUNNERS[runner])
    assert elsewhere.returncode == 0, elsewhere.stderr[-3000:]
    local = build(tmp_path / "sample", tmp_path / "local", "--method", "ds", "--em", "in_process")
    assert local.returncode == 0, local.stderr[-3000:]
    files = digests(tmp_path / runner / "sample" / "versions" / "1")
    assert {"labels/labels-00000-of-00001.parquet", "annotators/annotators-00000-of-00001.parquet",
            "README.md"} <= set(files)
    assert files == digests(tmp_path / "local" / "sample" / "versions" / "1")


def test_a_dask_runner_without_dask_installed_is_a_usage_error_naming_the_extra(tmp_path, monkeypatch):
    import importlib.util

    from labelbeam.pipelines.build import plan_build
    from labelbeam.pipelines.errors import UserError
    from labelbeam.pipelines.options import BuildConfig
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "distributed" else real_find_spec(name, *args))
    config = BuildConfig(inputs=("x",), output=str(tmp_path / "out"), dataset="sample")
    with pytest.raises(UserError, match=r'needs dask\[distributed\]: pip install "\.\[dask\]"'):
        plan_build(config, RUNNERS["dask"])


def test_the_shuffle_through_files_publishes_what_the_runners_shuffle_does_and_leaves_nothing_behind(tmp_path):
    from labelbeam.pipelines.generate import write_sample
    write_sample(str(tmp_path / "sample"), 3_000, seed=9)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    on_disk = build(tmp_path / "sample", tmp_path / "files", "--shuffle", "files", "--shuffle_dir", str(scratch),
                    "--num_buckets", "4")
    assert on_disk.returncode == 0, on_disk.stderr[-3000:]
    assert list(scratch.iterdir()) == []  # the run's shuffle directory is removed with its files
    in_memory = build(tmp_path / "sample", tmp_path / "runner", "--shuffle", "runner", "--num_buckets", "4")
    assert in_memory.returncode == 0, in_memory.stderr[-3000:]
    files = digests(tmp_path / "files" / "sample" / "versions" / "1")
    assert "labels/labels-00000-of-00001.parquet" in files
    assert files == digests(tmp_path / "runner" / "sample" / "versions" / "1")


def test_a_shuffle_dir_that_cannot_hold_a_directory_is_a_usage_error(tmp_path):
    from labelbeam.pipelines.generate import write_sample
    write_sample(str(tmp_path / "sample"), 200, seed=1)
    missing = tmp_path / "no" / "such" / "dir"
    result = build(tmp_path / "sample", tmp_path / "out", "--shuffle_dir", str(missing))
    assert result.returncode == 2, result.stderr[-2000:]
    assert str(missing) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "sample" / "versions" / "1").exists()


def test_the_dask_runners_own_options_are_known_flags_not_typos():
    pytest.importorskip("distributed", reason="dask[distributed] is not installed (it comes with the test extra)")
    from labelbeam.pipelines.build import reject_unknown_flags
    from labelbeam.pipelines.errors import UserError
    reject_unknown_flags(["--runner", "labelbeam.pipelines.dask_runner.DaskRunner",
                          "--dask_client_address", "127.0.0.1:8786"])
    with pytest.raises(UserError, match="unknown option --dask_client_adress"):
        reject_unknown_flags(["--runner", "labelbeam.pipelines.dask_runner.DaskRunner",
                              "--dask_client_adress", "127.0.0.1:8786"])
