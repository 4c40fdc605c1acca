"""`labelbeam report`: one self-contained HTML page per version, rendered by a real headless Chromium."""
import json
import shutil
import subprocess
import sys

import pytest

from labelbeam.pipelines.build import BuildConfig, run_build
from labelbeam.pipelines.generate import write_sample

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    write_sample(str(root / "a"), 3_000, seed=21)
    write_sample(str(root / "b"), 2_000, seed=22)
    inputs = (str(root / "a" / "events"),)
    for extra in ((), (str(root / "b" / "events"),)):
        run_build(BuildConfig(inputs=inputs + extra, output=str(root / "out"), dataset="sample",
                              labels=("bird", "cat", "dog", "fish")), ["--runner=FnApiRunner"])
    return root


def report(root, *args):
    return subprocess.run([sys.executable, "-m", "labelbeam.pipelines.cli", "report", str(root / "out"),
                           "--dataset", "sample", *args], capture_output=True, text=True, timeout=120, cwd=root)


def test_the_report_is_one_offline_page_with_the_versions_facts_plots_and_items(two_versions):
    page = two_versions / "v2.html"
    result = report(two_versions, "--output", str(page))
    assert result.returncode == 0, result.stderr
    text = page.read_text()
    manifest = json.loads((two_versions / "out" / "sample" / "versions" / "2" / "manifest.json").read_text())
    assert "sample version 2: label quality" in text
    assert f"{manifest['agreement']['krippendorff_alpha']:.4f}" in text
    assert f"{manifest['labeling_time']['hours']:.1f}" in text
    assert text.count("<script src=") == 0 and text.count("plotly.js v") == 1  # inlined once, no CDN
    # distribution, confidence, accuracy vs volume, 3 confusion matrices, history across 2 versions
    assert text.count("class='plot'") == 7
    assert "Items that need more votes" in text and "<td>tie</td>" in text
    events = (two_versions / "a" / "events").rglob("*.jsonl")
    annotator_ids = {line.split('"annotator_id":"')[1].split('"')[0] for path in events
                     for line in path.read_text().splitlines() if '"annotator_id":"annotator-' in line}
    assert annotator_ids and not [name for name in annotator_ids if name in text]


def test_an_older_version_gets_its_own_history_and_a_missing_version_is_a_usage_error(two_versions):
    result = report(two_versions, "--version", "1", "--output", str(two_versions / "v1.html"))
    assert result.returncode == 0, result.stderr
    assert "class='plot'" in (two_versions / "v1.html").read_text()
    assert "across versions" not in (two_versions / "v1.html").read_text()  # one version: no history plot
    missing = report(two_versions, "--version", "9")
    assert missing.returncode == 2 and "no published version 9" in missing.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it with apt)")
def test_the_report_renders_in_headless_chromium(two_versions, tmp_path):
    page, shot = two_versions / "render.html", tmp_path / "report.png"
    assert report(two_versions, "--output", str(page)).returncode == 0
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,2400", "--virtual-time-budget=5000", f"--screenshot={shot}",
                    page.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.read_bytes().startswith(b"\x89PNG")
    # The DOM after the page's scripts ran: plotly drew an SVG figure into every plot's div.
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    assert dom.count('class="plot"') == 7
    assert dom.count('class="main-svg"') >= 7 and dom.count("js-plotly-plot") >= 7
