"""labelbeam's Dask runner reads side inputs as dependencies in the Dask graph, so a chain of steps that
each read the previous step's result (the distributed EM's iterations) grows the graph linearly."""
import apache_beam as beam
import numpy as np
import pytest
from apache_beam import pvalue
from apache_beam.options.pipeline_options import PipelineOptions

pytest.importorskip("distributed", reason="dask[distributed] is not installed (it comes with the test extra)")

from apache_beam.runners.dask.overrides import dask_overrides  # noqa: E402

from labelbeam.pipelines.dask_runner import _OutputBags  # noqa: E402


def chained_side_inputs(pipeline: beam.Pipeline, steps: int):
    """state_n = f(values_n, state_{n-1}), values_{n+1} = g(values_n, state_{n-1}): the EM's shape."""
    values = pipeline | "Values" >> beam.Create(range(10))
    state = pipeline | "Start" >> beam.Create([0])
    for step in range(steps):
        values = values | f"Step{step}" >> beam.Map(lambda value, total: value + total % 3, pvalue.AsSingleton(state))
        state = (values
                 | f"Sum{step}" >> beam.CombineGlobally(sum)
                 | f"Next{step}" >> beam.Map(lambda total, previous: total + previous, pvalue.AsSingleton(state)))
    return state


def graph_size(steps: int) -> int:
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner", "labelbeam.pipelines.dask_runner.DaskRunner"]))
    chained_side_inputs(pipeline, steps)
    pipeline.replace_all(dask_overrides())
    bags = _OutputBags({})
    pipeline.visit(bags)
    return len({key for sink in bags.sinks() for key in sink.__dask_graph__()})


def test_each_chained_step_adds_the_same_number_of_tasks():
    sizes = [graph_size(steps) for steps in (4, 8, 12)]
    assert sizes[1] - sizes[0] == sizes[2] - sizes[1] > 0, sizes   # Beam's translation: x2.5 per step


@pytest.mark.parametrize("model", ["ds", "glad"])
def test_the_distributed_em_on_dask_fits_what_the_fnapi_runner_does(tmp_path, model):
    """GLAD's loop has its own shape (two summed passes per iteration, buckets that leave it once converged)."""
    from labelbeam.transforms.distributed_glad import fit_on_beam
    from labelbeam.transforms.inference.dawid_skene import DawidSkeneModel
    from labelbeam.transforms.inference.glad import GladModel
    from tests.transforms.test_distributed_em import synthetic_votes

    votes = synthetic_votes(seed=5, n_items=120)
    buckets = [votes.slice(start, 160) for start in range(0, votes.num_rows, 160)]   # whole items per slice

    def fit(runner: str, *flags: str) -> np.ndarray:
        out = tmp_path / f"{runner.rsplit('.', 1)[-1]}.npy"
        with beam.Pipeline(options=PipelineOptions(["--runner", runner, *flags])) as pipeline:
            em_model = DawidSkeneModel() if model == "ds" else GladModel()
            fitted = pipeline | beam.Create(buckets) | fit_on_beam(em_model, max_iter=12 if model == "ds" else 6)
            _ = fitted["state"] | beam.Map(lambda state, path=str(out): np.save(path, np.concatenate(
                [[state.iterations], *map(np.ravel, state.parameters if model == "ds" else [state.parameters])])))
        return np.load(out)

    # A cluster of our own, closed after the test: one the runner started would live as long as pytest.
    from dask.distributed import LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        on_dask = fit("labelbeam.pipelines.dask_runner.DaskRunner", "--dask_client_address", cluster.scheduler_address)
        from dask.distributed import default_client
        with pytest.raises(ValueError, match="No clients found"):   # the runner closed its client when done
            default_client()
    assert on_dask[0] > 5   # several iterations ran, each reading the previous one's state
    np.testing.assert_array_equal(on_dask, fit("FnApiRunner"))   # fixed-point sums: the same bits anywhere
