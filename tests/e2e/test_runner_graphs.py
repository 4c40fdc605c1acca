"""Every pipeline's graph is built from the same code whatever the runner: with the options a managed
runner is launched with, each translates to the runner API (the form a runner receives) without
running, and its step names are stable labels (what Dataflow's in-place update matches)."""
import pytest
from apache_beam import Pipeline
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from event_builders import DATASET, event, write_jsonl

from labelbeam.pipelines import ingest
from labelbeam.pipelines.build import build_pipeline, plan_build
from labelbeam.pipelines.options import BuildConfig
from labelbeam.transforms.events.event_log import LogPolicy
from labelbeam.transforms.methods.registry import METHODS
from labelbeam.transforms.read_stream import WatchDroppedFiles
from labelbeam.transforms.storage.inputs import match_inputs

DATAFLOW = ["--runner=DataflowRunner", "--project=labelbeam-test", "--region=europe-west1",
            "--temp_location=gs://labelbeam-test/tmp", "--setup_file=./setup.py"]


def step_names(pipeline: Pipeline) -> set[str]:
    return {t.unique_name for t in pipeline.to_runner_api().components.transforms.values()}


def build_graph(tmp_path, method: str, beam_args: list[str], runner) -> Pipeline:
    source = write_jsonl(tmp_path / "events.jsonl", [event("e1", label="cat"), event("e2", label="dog")])
    weights = tmp_path / "weights.csv"
    weights.write_text("annotator_id,weight\nann-1,1.0\n")
    config = BuildConfig(inputs=(source,), output=str(tmp_path / "out"), dataset=DATASET, labels=("cat", "dog"),
                         method=method, weights_path=str(weights) if method == "wmv" else None)
    plan = plan_build(config, beam_args)
    # The runner object is given, so no managed runner's client libraries are needed to build the graph.
    pipeline = Pipeline(runner=runner, options=plan.options)
    build_pipeline(pipeline, match_inputs([source]), plan.rules, plan.method, str(tmp_path / "out" / "v"),
                   {"params": plan.params}, plan.tuning, 1000, b"k" * 32, "env")
    return pipeline


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_build_graph_translates_with_managed_runner_options(tmp_path, method):
    managed = build_graph(tmp_path, method, DATAFLOW, FnApiRunner())
    local = build_graph(tmp_path, method, [], FnApiRunner())
    managed_steps, local_steps = step_names(managed), step_names(local)
    assert {"ReadEvents", "ValidateEvents", "DeduplicateEvents", "ResolveLifecycle", "ComputeConsensus",
            "PublishVersion"} <= managed_steps
    if getattr(METHODS[method], "distributed", False):  # --em auto: EM as Beam transforms on a managed runner, in one worker locally
        assert "ComputeConsensus/RunMethod/FitAnnotatorModelOnBeam" in managed_steps
        assert "ComputeConsensus/RunMethod/FitAnnotatorModelOnBeam" not in local_steps
    else:
        assert managed_steps == local_steps


@pytest.mark.parametrize("source", ["pubsub://projects/labelbeam-test/subscriptions/labels", "drop/*.jsonl", "watch"])
def test_each_ingest_graph_translates_with_managed_runner_options(tmp_path, source):
    options = ingest.ingest_options([*DATAFLOW, "--streaming"])
    pipeline = Pipeline(runner=BundleBasedDirectRunner(), options=options)
    chunks = pipeline | "WatchDroppedFiles" >> WatchDroppedFiles("localhost:1") if source == "watch" else \
        ingest.read_source(pipeline, source)
    rules = plan_build(BuildConfig(inputs=("x",), output="o", dataset=DATASET), []).rules
    ingest.build_ingest(pipeline, chunks, "gs://labelbeam-test/log", rules, LogPolicy(), 16, "gs://labelbeam-test/c")
    steps = step_names(pipeline)
    assert {"IngestEvents/Validate", "IngestEvents/PartitionByHour", "IngestEvents/DeduplicateAndLog",
            "IngestEvents/WriteDeadLetters/Write", "RecordCounts"} <= steps
