"""Beam metrics of the build's stages, and the launcher's view of them after a run.

Each stage counts what it did as `<stage>.<what>` counters (the same numbers as its COUNTS output, plus
work such as chunks and bytes), and records how large its units of work were as `<stage>.<unit>`
distributions (events per chunk, per bucket; items per consensus table). The runner aggregates them:
the Dataflow UI shows them while a job runs, and `query` turns them into the manifest's `metrics`
section and the build summary's stage lines. The manifest's `counts` still come from the COUNTS
outputs, which every runner delivers; metrics are what a runner chooses to report.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

NAMESPACE = "labelbeam"
STAGES = ("read", "validate", "deduplicate", "lifecycle", "consensus", "publish")  # the build's order


def count(stage: str, counts: Mapping[str, int]) -> None:
    for what, value in counts.items():
        if value:
            Metrics.counter(NAMESPACE, f"{stage}.{what}").inc(value)


def observe(stage: str, unit: str, size: int) -> None:
    Metrics.distribution(NAMESPACE, f"{stage}.{unit}").update(size)


def _value(result) -> Any:
    # Committed values are exact under retries; runners that do not commit (some portable ones) report
    # only attempted values.
    try:
        committed = result.committed
    except Exception:  # noqa: BLE001 - Beam raises runner-specific errors for unsupported committed metrics
        committed = None
    return committed if committed is not None else result.attempted


def query(pipeline_result) -> dict[str, Any]:
    """{"counters": {name: n}, "distributions": {name: {count, sum, min, max, mean}}} of this namespace,
    sorted by name; {"unavailable": why} when the runner reports no metrics."""
    try:
        found = pipeline_result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    except (NotImplementedError, AttributeError) as err:
        return {"unavailable": f"the runner reports no metrics ({type(err).__name__})"}
    counters: dict[str, int] = {}
    for result in found.get("counters", []):
        counters[result.key.metric.name] = counters.get(result.key.metric.name, 0) + int(_value(result) or 0)
    distributions: dict[str, dict[str, float]] = {}
    for result in found.get("distributions", []):
        data = _value(result)
        if data is None or not data.count:
            continue
        merged = distributions.setdefault(result.key.metric.name, {"count": 0, "sum": 0, "min": data.min,
                                                                   "max": data.max})
        merged["count"] += data.count
        merged["sum"] += data.sum
        merged["min"], merged["max"] = min(merged["min"], data.min), max(merged["max"], data.max)
    for merged in distributions.values():
        merged["mean"] = round(merged["sum"] / merged["count"], 3)
    return {"counters": dict(sorted(counters.items())), "distributions": dict(sorted(distributions.items()))}


def stage_lines(metrics: Mapping[str, Any]) -> list[str]:
    """One line per stage, in pipeline order: its counters, then its distributions as
    "unit min/mean/max over N"."""
    if "unavailable" in metrics:
        return [f"stages: {metrics['unavailable']}"]
    stages: dict[str, list[str]] = {stage: [] for stage in STAGES}
    for name, value in metrics.get("counters", {}).items():
        stage, _, what = name.partition(".")
        stages.setdefault(stage, []).append(f"{what} {value}")
    for name, data in metrics.get("distributions", {}).items():
        stage, _, unit = name.partition(".")
        stages.setdefault(stage, []).append(
            f"{unit} {data['min']:g}/{data['mean']:.0f}/{data['max']:g} over {data['count']}")
    return [f"{stage}: {', '.join(parts)}" for stage, parts in stages.items() if parts]
