"""stage_metrics: counters and distributions from real DoFns, queried back from the runner's result."""
import apache_beam as beam

from labelbeam.transforms import stage_metrics


def _work(size: int) -> int:
    stage_metrics.count("read", {"events": size, "empty": 0})
    stage_metrics.observe("read", "chunk_events", size)
    stage_metrics.count("publish", {"files": 1})
    return size


def test_query_sums_counters_and_merges_distributions_of_a_run():
    pipeline = beam.Pipeline(runner="FnApiRunner")
    _ = pipeline | beam.Create([3, 10, 5]) | beam.Map(_work)
    metrics = stage_metrics.query(pipeline.run())
    assert metrics["counters"] == {"publish.files": 3, "read.events": 18}  # zero counts are not reported
    assert metrics["distributions"] == {"read.chunk_events": {"count": 3, "sum": 18, "min": 3, "max": 10,
                                                              "mean": 6.0}}
    assert stage_metrics.stage_lines(metrics) == ["read: events 18, chunk_events 3/6/10 over 3", "publish: files 3"]


class _NoMetrics:
    def metrics(self):
        raise NotImplementedError("collecting metrics will come later!")  # what Beam's DaskRunnerResult says


def test_a_runner_without_metrics_is_reported_as_such():
    metrics = stage_metrics.query(_NoMetrics())
    assert "unavailable" in metrics
    assert stage_metrics.stage_lines(metrics) == [f"stages: {metrics['unavailable']}"]
