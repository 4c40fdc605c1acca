"""The `labelbeam` CLI as a newcomer meets it: names that stay inside the output root, one-line errors
for unusable output folders, Ctrl-C, `generate` that never overwrites by surprise, a build summary
that says where things went and what to try next, and readers that survive a broken manifest."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from labelbeam.pipelines.build import BuildOutcome, format_summary
from labelbeam.pipelines.errors import EXIT_INTERRUPTED, EXIT_USAGE, UserError
from labelbeam.pipelines.generate import generate_events, stream_sample, write_sample
from labelbeam.pipelines.options import BuildConfig, check_dataset_name, check_output_root
from labelbeam.transforms.storage import version_store

SAMPLE_LABELS = "bird,cat,dog,fish"


def labelbeam(*args, cwd=None, module="labelbeam.pipelines.cli"):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_one_line_usage_error(result, *fragments):
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "Traceback" not in result.stderr
    [line] = error_lines(result)
    assert line.startswith("labelbeam: error: ")
    for fragment in fragments:
        assert fragment in line


@pytest.fixture(scope="module")
def sample_events(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sample")
    write_sample(str(directory), 1_500, seed=3)
    return str(directory / "events")


def build_args(events: str, output: str, dataset: str = "sample") -> list[str]:
    return ["build", "--input", events, "--output", output, "--dataset", dataset, "--labels", SAMPLE_LABELS,
            "--runner=FnApiRunner"]


@pytest.fixture(scope="module")
def published(sample_events, tmp_path_factory):
    """A directory holding ./labelbeam-data with version 1 of dataset `sample`, and the build's result."""
    home = tmp_path_factory.mktemp("home")
    result = labelbeam(*build_args(sample_events, "labelbeam-data"), cwd=home)
    assert result.returncode == 0, result.stderr
    return home, result


def tree(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), path) for d, dirs, files in os.walk(path)
                  for n in dirs + files)


# Item 1: dataset names never leave the output root

@pytest.mark.parametrize("name", ["../../evil", "a/b", "..", ".", "a\n", "x" * 129, ".hidden", "_latest"])
def test_build_rejects_a_dataset_name_that_is_not_one_folder_under_the_root(name, sample_events, tmp_path):
    workdir = tmp_path / "w" / "x"
    workdir.mkdir(parents=True)
    result = labelbeam(*build_args(sample_events, "out", dataset=name), cwd=workdir)
    assert_one_line_usage_error(result, f"--dataset {name!r}", "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    assert tree(tmp_path) == ["w", "w/x"]  # nothing written anywhere


def test_versions_and_show_reject_a_dataset_name_that_climbs_out_of_the_root(published):
    home, _ = published
    other_root = os.path.join(home, "labelbeam-data", "other")
    for command in ("versions", "show"):
        # ROOT/other/../sample would read the published dataset from outside ROOT.
        result = labelbeam(command, other_root, "--dataset", "../sample")
        assert_one_line_usage_error(result, "--dataset '../sample'")


def test_check_dataset_name_accepts_plain_names_up_to_128_characters():
    for name in ("sample", "Pets-2026.v1_b", "0", "x" * 128):
        assert check_dataset_name(name) == name
    for name in ("", "a b", "a/b", "/abs", "a\\b", "é", "sample\n", "x" * 129, "-x", ".", ".."):
        with pytest.raises(UserError, match="dataset name"):
            check_dataset_name(name)


def test_build_config_refuses_a_bad_dataset_name():
    with pytest.raises(UserError, match=r"--dataset '\.\./x'"):
        BuildConfig(inputs=("events",), output="out", dataset="../x")


# Item 5: unusable output folders and Ctrl-C

def test_output_that_is_a_regular_file_exits_2_with_one_line(sample_events, tmp_path):
    (tmp_path / "out").write_text("not a folder\n")
    result = labelbeam(*build_args(sample_events, "out"), cwd=tmp_path)
    assert_one_line_usage_error(result, "--output", "out", "not a directory")
    assert (tmp_path / "out").read_text() == "not a folder\n"


def test_a_dataset_path_that_is_a_regular_file_exits_2_with_one_line(sample_events, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sample").write_text("")
    result = labelbeam(*build_args(sample_events, "out"), cwd=tmp_path)
    assert_one_line_usage_error(result, os.path.join("out", "sample"), "not a directory")


def test_output_below_a_folder_even_root_cannot_write_exits_2_with_one_line(sample_events, tmp_path):
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("needs Linux sysfs, where nobody may create files")
    result = labelbeam(*build_args(sample_events, "/sys/kernel/labelbeam-out"), cwd=tmp_path)
    assert_one_line_usage_error(result, "--output /sys/kernel/labelbeam-out", "cannot write")
    assert not os.path.exists("/sys/kernel/labelbeam-out")


def test_read_only_output_folder_exits_2_with_one_line(sample_events, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    # The immutable attribute binds root too (plain permission bits do not: tests run as root).
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(output)]).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        result = labelbeam(*build_args(sample_events, str(output)), cwd=tmp_path)
    finally:
        subprocess.run(["chattr", "-i", str(output)], check=True)
    assert_one_line_usage_error(result, f"--output {output}", "cannot write")
    assert tree(output) == []


def test_check_output_root_reports_a_real_failed_write_as_one_line():
    with pytest.raises(UserError, match="cannot write") as raised:
        check_output_root("/proc/labelbeam-out", "sample")
    assert "\n" not in str(raised.value)


@pytest.fixture(scope="module")
def large_sample(tmp_path_factory):
    directory = tmp_path_factory.mktemp("large")
    write_sample(str(directory), 200_000, seed=0)
    return str(directory / "events")


def as_from_a_terminal() -> None:
    """In the child: SIGINT back to its default disposition, as in a shell a user types Ctrl-C into. A
    harness that starts the tests in the background (SIGINT ignored) would otherwise pass that on, and the
    build, rightly, would keep ignoring Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_build_once_claimed(events: str, output: str) -> subprocess.CompletedProcess:
    """Run a build and send it SIGINT (Ctrl-C) as soon as it has claimed its version."""
    process = subprocess.Popen([sys.executable, "-m", "labelbeam.pipelines.cli", *build_args(events, output)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=as_from_a_terminal)
    claims = os.path.join(output, "sample", "versions", "*", version_store.CLAIM)
    deadline = time.monotonic() + 120
    while not glob.glob(claims) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # polling for the claim; no assertion depends on timing
    assert glob.glob(claims), "the build never claimed a version"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def interrupted_build(large_sample, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("interrupted") / "out")
    return output, interrupt_build_once_claimed(large_sample, output)


def test_ctrl_c_mid_build_exits_130_with_one_line(interrupted_build):
    _, result = interrupted_build
    assert result.returncode == EXIT_INTERRUPTED, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    [line] = error_lines(result)
    assert line.startswith("labelbeam: interrupted")


def test_ctrl_c_mid_build_releases_its_version_claim(interrupted_build):
    output, _ = interrupted_build
    assert version_store.version_numbers(output, "sample", published_only=False) == []
    assert glob.glob(os.path.join(output, "sample", "versions", "*", version_store.CLAIM)) == []


# Ctrl-C delivered while the pipeline parses its first chunk, whatever the machine's speed: the stage's DoFn
# sends SIGINT to its own process, as a terminal would.
INTERRUPT_WHILE_PARSING = """
import functools, os, signal, sys
from labelbeam.pipelines import errors  # first, as the entry points do: it hides Beam's apitools warning
from labelbeam.transforms import validate
process = validate.ParseEventsFn.process

sent = []

@functools.wraps(process)
def process_after_ctrl_c(self, chunk):
    if not sent:  # one Ctrl-C, as a user presses it: a second one racing the exit path is another test
        sent.append(True)
        os.kill(os.getpid(), signal.SIGINT)
    return process(self, chunk)

validate.ParseEventsFn.process = process_after_ctrl_c
from labelbeam.pipelines import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_ctrl_c_inside_a_running_stage_exits_130_with_one_line_and_no_claim_left(sample_events, tmp_path):
    output = str(tmp_path / "out")
    result = subprocess.run([sys.executable, "-c", INTERRUPT_WHILE_PARSING, *build_args(sample_events, output)],
                            capture_output=True, text=True, timeout=300, preexec_fn=as_from_a_terminal)
    assert result.returncode == EXIT_INTERRUPTED, result.stderr[-2000:]
    [line] = error_lines(result)  # Beam's own ERROR log of the interrupted DoFn included: none
    assert line.startswith("labelbeam: interrupted")
    assert version_store.version_numbers(output, "sample", published_only=False) == []


def test_release_claim_removes_an_unpublished_version_and_keeps_a_published_one(tmp_path):
    root = str(tmp_path)
    unpublished = version_store.claim_next_version(root, "ds", owner="a")
    version_store.create_only(os.path.join(version_store.version_dir(root, "ds", unpublished), "part-0"), b"x")
    published_version = version_store.claim_next_version(root, "ds", owner="b")
    manifest = os.path.join(version_store.version_dir(root, "ds", published_version), version_store.MANIFEST)
    version_store.create_only(manifest, b"{}\n")
    assert version_store.release_claim(root, "ds", unpublished) is True
    assert version_store.release_claim(root, "ds", published_version) is False
    assert version_store.release_claim(root, "ds", 99) is False
    assert not os.path.exists(version_store.version_dir(root, "ds", unpublished))
    assert os.path.exists(manifest)


# Item 10: generate never replaces a folder's content by surprise

def test_generate_refuses_a_non_empty_output_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    result = labelbeam("generate", "--output", str(tmp_path), "--events", "100")
    assert_one_line_usage_error(result, f"--output {tmp_path}", "not empty", "--force")
    assert tree(tmp_path) == ["notes.txt"]


def test_generate_with_force_writes_into_a_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    result = labelbeam("generate", "--output", str(tmp_path), "--events", "100", "--force")
    assert result.returncode == 0, result.stderr
    assert {"events", "truth.csv", "expected.json", "notes.txt"} <= set(os.listdir(tmp_path))


def test_generate_writes_into_an_empty_or_new_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder in ("empty", "new"):
        result = labelbeam("generate", "--output", str(tmp_path / folder), "--events", "100")
        assert result.returncode == 0, result.stderr
        assert (tmp_path / folder / "truth.csv").exists()


def test_generate_stream_drops_every_event_in_whole_files_with_live_times_in_order(tmp_path):
    now = [1_800_000_000.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    description = stream_sample(str(tmp_path), 400, 3, seconds=4, clock=lambda: now[0], sleep=sleep)
    files = sorted((tmp_path / "events").iterdir())
    assert [f.name for f in files] == [f"events-1800000000-{tick:05d}.jsonl" for tick in range(4)]  # none hidden
    assert slept == [0.0, 1.0, 1.0, 1.0]
    lines = [line for f in files for line in f.read_bytes().splitlines()]
    sample = generate_events(400, 3)
    assert len(lines) == len(sample["stream"]) == description["expected"]["read"]
    times = {}
    for (kind, original), line in zip(sample["stream"], lines):
        if kind == "broken":
            assert line == original
            continue
        record = json.loads(line)
        assert {**record, "event_time": original["event_time"]} == original   # only the time moved
        assert 1_800_000_000_000 <= record["event_time"] <= 1_800_000_004_000
        times.setdefault(original["event_time"], set()).add(record["event_time"])
    assert all(len(moved) == 1 for moved in times.values())   # copies keep one time
    ordered = sorted(times)
    assert [min(times[t]) for t in ordered] == sorted(min(times[t]) for t in ordered)   # order kept


def test_generate_into_a_regular_file_exits_2_with_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    result = labelbeam("generate", "--output", str(tmp_path / "file"), "--events", "100")
    assert_one_line_usage_error(result, "not a directory")


# Item 11: what a newcomer sees

def test_build_summary_says_where_the_version_and_dead_letters_are_and_what_to_run_next(published):
    home, result = published
    version_dir = os.path.join(home, "labelbeam-data", "sample", "versions", "1")
    lines = result.stdout.splitlines()
    assert lines[0] == f"published sample version 1 -> {version_dir}"
    manifest = json.loads(open(os.path.join(version_dir, "manifest.json")).read())
    [dead_letters] = [line for line in lines if line.lstrip().startswith("dead letters")]
    assert f"dead letters {manifest['counts']['invalid']} -> " in dead_letters
    assert os.path.isabs(dead_letters.split(" -> ", 1)[1].split()[0])
    assert "  labelbeam show labelbeam-data --dataset sample" in lines
    assert "  labelbeam versions labelbeam-data --dataset sample" in lines


def test_build_summary_lists_dead_letters_per_reason(published):
    home, result = published
    manifest = json.loads(open(os.path.join(home, "labelbeam-data", "sample", "versions", "1",
                                            "manifest.json")).read())
    assert sum(manifest["dead_letters"]["by_reason"].values()) == manifest["counts"]["invalid"]
    assert "MALFORMED_JSON " in result.stdout


def outcome_with(dead_letters: dict | None, files: list[dict]) -> BuildOutcome:
    manifest = {"counts": {"read": 5, "valid": 2, "invalid": 3, "duplicates": 0, "votes": 2, "superseded": 0,
                           "deleted": 0, "items": 1},
                "status": {"ok": 1}, "params": {"method": "mv"}, "files": files}
    if dead_letters is not None:
        manifest["dead_letters"] = dead_letters
    return BuildOutcome(1, True, os.path.join("root", "pets", "versions", "1"), manifest)


def test_summary_lists_dead_letters_per_reason_from_the_manifest():
    config = BuildConfig(inputs=(), output="root", dataset="pets")
    outcome = outcome_with({"rows": 3, "by_reason": {"UNKNOWN_LABEL": 1, "MALFORMED_JSON": 2},
                            "quarantine": [{"path": "quarantine/1/dead_letters-00000-of-00001.avro"}]}, [])
    summary = format_summary(config, outcome)
    quarantine = os.path.abspath(os.path.join("root", "pets", "quarantine", "1"))
    assert f"  dead letters 3 -> {quarantine}{os.sep} (MALFORMED_JSON 2, UNKNOWN_LABEL 1)" in summary.splitlines()


def test_summary_without_per_reason_counts_still_names_the_rejected_folder():
    config = BuildConfig(inputs=(), output="root", dataset="pets")
    outcome = outcome_with(None, [{"path": "rejected/dead_letters-00000-of-00001.avro"}])
    rejected = os.path.abspath(os.path.join("root", "pets", "versions", "1", "rejected"))
    assert f"  dead letters 3 -> {rejected}{os.sep}" in format_summary(config, outcome).splitlines()


def test_versions_and_show_default_to_the_sample_root_and_dataset(published):
    home, _ = published
    versions = labelbeam("versions", cwd=home)
    assert versions.returncode == 0, versions.stderr
    assert versions.stdout.splitlines()[1].split()[0] == "1*"
    show = labelbeam("show", "--json", cwd=home)
    assert show.returncode == 0, show.stderr
    assert json.loads(show.stdout)["dataset"] == "sample"


@pytest.fixture
def broken_root(published, tmp_path):
    """A copy of the published root with version 2's manifest empty and version 3's not JSON."""
    home, _ = published
    root = tmp_path / "labelbeam-data"
    shutil.copytree(home / "labelbeam-data", root)
    for version, content in ((2, b""), (3, b'{"dataset": "sam')):
        (root / "sample" / "versions" / str(version)).mkdir()
        (root / "sample" / "versions" / str(version) / "manifest.json").write_bytes(content)
    return root


def test_versions_lists_an_unreadable_manifest_as_broken_and_carries_on(broken_root):
    result = labelbeam("versions", str(broken_root), "--dataset", "sample")
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["1*", "2", "3"]
    assert "broken: " in rows[1] and "empty" in rows[1]
    assert "broken: " in rows[2] and "not JSON" in rows[2]
    assert "broken" not in rows[0]


@pytest.mark.parametrize("version", ["2", "3"])
def test_show_of_a_version_with_an_unreadable_manifest_exits_2_with_one_line(broken_root, version):
    result = labelbeam("show", str(broken_root), "--dataset", "sample", "--version", version)
    assert_one_line_usage_error(result, f"version {version}", "broken", "manifest.json")


def test_build_help_shows_defaults_and_exit_codes():
    for result in (labelbeam("build", "--help"), labelbeam("--help", module="labelbeam.pipelines.build")):
        assert result.returncode == 0, result.stderr
        text = " ".join(result.stdout.split())  # argparse wraps lines
        assert "(default: ./labelbeam-data)" in text and "(default: mv)" in text and "(default: 1)" in text
        for code, meaning in (("0", "done"), ("1", "job failed"), ("2", "usage or input error"),
                              ("3", "publish gate failed"), ("130", "interrupted")):
            assert f"{code} {meaning}" in text


# Imports apache_beam as if the gcp extra (apitools) were not installed, then runs a build that stops at
# a usage error, then logs another warning: only Beam's apitools line may disappear.
WITHOUT_APITOOLS = """
import logging, sys
sys.modules["apitools"] = None
from labelbeam.pipelines import {module} as entry
rc = entry.main(["build", "--min-votes", "0"] if "{module}" == "cli" else ["--min-votes", "0"])
logging.warning("another warning")
sys.exit(rc)
"""


@pytest.mark.parametrize("module", ["cli", "build"])
def test_beams_apitools_warning_is_silenced_and_other_warnings_are_kept(module, tmp_path):
    # Run in a fresh interpreter: once apache_beam is imported, the warning has happened or not.
    code = WITHOUT_APITOOLS.format(module=module)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "apitools" not in result.stderr
    assert "another warning" in result.stderr
    assert "--min-votes must be at least 1" in result.stderr


def test_a_reader_that_closes_stdout_early_gets_exit_141_and_no_traceback():
    # What `labelbeam build | head -1` does to a command that prints more than its reader wants.
    from labelbeam.pipelines.errors import EXIT_BROKEN_PIPE
    printer = "import sys\nfrom labelbeam.pipelines.errors import guarded\n" \
              "sys.exit(guarded(lambda: [print('line', n, flush=True) for n in range(100_000)] and 0))"
    process = subprocess.Popen([sys.executable, "-c", printer], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline() == b"line 0\n"
    process.stdout.close()
    assert process.wait(timeout=60) == EXIT_BROKEN_PIPE == 141
    assert process.stderr.read() == b""
