"""Beam's Dask runner, with each output of a multi-output ParDo kept to its own consumers.

    labelbeam build ... --runner labelbeam.pipelines.dask_runner.DaskRunner [--dask_client_address HOST:8786]

apache-beam 2.77's DaskRunner drops the tags of a ParDo's outputs (`apply_dofn_to_bundle` returns
`v.value` of each) and keys the Dask bag of a step by the step, not by its output PCollection: every
consumer of a ParDo `with_outputs(...)` gets all of its outputs, main and tagged alike (the build's
validation then hands count dicts to the dedup stage as if they were RecordBatches). It also returns a
bundle's results before `finish_bundle` runs, losing what that emits. Minimal case:

    out = p | beam.Create([1, 2, 3, 4]) | beam.ParDo(EvenOrTaggedOdd()).with_outputs("odd", main="even")
    out.even | beam.Map(print)      # prints 1, 2, 3, 4 on Beam's DaskRunner; 2, 4 here and elsewhere

This runner translates the same steps with Beam's own Dask translations, except ParDo, whose bundles
keep their tags and their finish_bundle output; it keeps a bag per output PCollection (a multi-output
step's bag filtered by tag), reads side inputs by PCollection too, as dependencies in the Dask graph
(computed once, before the tasks that read them; Beam computes them inside each task), and computes
every sink rather than only the last step's bag.
"""
from __future__ import annotations

import dataclasses
import functools

import apache_beam as beam
import dask
from apache_beam import DoFn, pvalue
from apache_beam.pipeline import PipelineVisitor
from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, _OutputHandler
from apache_beam.runners.dask import dask_runner, transform_evaluator
from apache_beam.runners.dask.overrides import dask_overrides
from apache_beam.runners.dask.transform_evaluator import TRANSLATIONS, Flatten, NoOp
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.utils.windowed_value import WindowedValue
from dask import bag as db


def _run_bundle(invoker_args, invoker_kwargs, receivers, window_fn, side_views, items, *side_values) -> list:
    """One Dask partition as one bundle: the DoFn's outputs, tagged ones as TaggedOutput(tag, WindowedValue).

    side_values are the side inputs' elements, each computed once by Dask before this task runs."""
    if side_views:
        invoker_kwargs = dict(invoker_kwargs, side_inputs=[
            SideInputMap(view.view_type, view.view_options,
                         [transform_evaluator.get_windowed_value(value, view.window_fn) for value in values])
            for view, values in zip(side_views, side_values)])
    invoker = DoFnInvoker.create_invoker(*invoker_args, **invoker_kwargs)
    invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for item in items:
        invoker.invoke_process(transform_evaluator.get_windowed_value(item, window_fn))
    invoker.invoke_finish_bundle()
    invoker.invoke_teardown()
    return list(receivers.values)


class _ParDoKeepingTags(transform_evaluator.ParDo):
    """Beam's Dask ParDo translation with _run_bundle in place of apply_dofn_to_bundle."""

    def apply(self, input_bag, side_inputs=None, side_views=(), side_bags=()):
        transform = self.transform
        args, kwargs = transform.args, transform.kwargs   # side inputs as placeholders, filled per bundle
        main_input = next(iter(self.applied.main_inputs.values()))
        window_fn = main_input.windowing.windowfn if hasattr(main_input, "windowing") else None
        receivers = transform_evaluator.OneReceiver()
        invoker_args = [DoFnSignature(transform.fn), _OutputHandler(
            window_fn=window_fn, main_receivers=receivers[None], tagged_receivers=receivers,
            per_element_output_counter=None, output_batch_converter=None, process_yields_batches=False,
            process_batch_yields_elements=False)]
        invoker_kwargs = dict(context=DoFnContext(transform.label, state=None), side_inputs=side_inputs,
                              input_args=list(args), input_kwargs=kwargs, user_state_context=None,
                              bundle_finalizer_param=DoFn.BundleFinalizerParam())
        # Built from Delayed objects, not Bag.map_partitions: given a collection as an argument, Dask
        # re-keys that collection's whole graph, so an EM iteration reading the previous one's state as a
        # side input copied every earlier iteration again, and the graph doubled per iteration.
        bundle = functools.partial(_run_bundle, invoker_args, invoker_kwargs, receivers, window_fn, tuple(side_views))
        side_values = [dask.delayed(_concatenated)(bag.to_delayed(optimize_graph=False)) for bag in side_bags]
        return db.from_delayed([dask.delayed(bundle)(part, *side_values)
                                for part in input_bag.to_delayed(optimize_graph=False)])


@dataclasses.dataclass(frozen=True)
class _SideView:
    """How a DoFn reads a side input. Not a tuple: Dask would run a tuple starting with a callable as a task."""
    view_type: type
    view_options: dict
    window_fn: object


def _concatenated(parts) -> list:
    return [value for part in parts for value in part]


def _has_tag(item, *, tag) -> bool:
    if isinstance(item, pvalue.TaggedOutput):
        return item.tag == tag
    return tag is None


def _value(item):
    """The element itself, as Beam's Dask translations pass elements between steps."""
    item = item.value if isinstance(item, pvalue.TaggedOutput) else item
    return item.value if isinstance(item, WindowedValue) else item


class _OutputBags(PipelineVisitor):
    """Every leaf step translated to a Dask bag, and each output PCollection to the bag of its elements."""

    def __init__(self, bag_kwargs: dict):
        self.bag_kwargs = bag_kwargs
        self.bags = {}                          # step -> the bag of all its outputs
        self.outputs = {}                       # PCollection -> the bag of its elements
        self.consumed: set = set()              # PCollections some step reads

    def visit_transform(self, node) -> None:
        op_class = _ParDoKeepingTags if node.transform.__class__ is beam.ParDo else \
            TRANSLATIONS.get(node.transform.__class__, NoOp)
        op = op_class(node, bag_kwargs=self.bag_kwargs)
        inputs = []
        for value in node.inputs:
            if isinstance(value, pvalue.PBegin):
                inputs.append(None)
            elif value in self.outputs:
                inputs.append(self.outputs[value])
                self.consumed.add(value)
        for side in node.side_inputs:
            self.consumed.add(side.pvalue)
        main = inputs[0] if len(inputs) == 1 and not isinstance(op, Flatten) else inputs
        if op_class is _ParDoKeepingTags:
            bag = op.apply(input_bag=main,
                           side_views=[_SideView(type(side), side._view_options(), side._window_mapping_fn)
                                       for side in node.side_inputs],
                           side_bags=[self.outputs[side.pvalue] for side in node.side_inputs])
        else:   # Beam's own translations of the other primitives, which take no side input
            if node.side_inputs:
                raise NotImplementedError(f"{node.full_label}: side inputs of {op_class.__name__} on Dask")
            bag = op.apply(input_bag=main, side_inputs=None)
        self.bags[node] = bag
        for tag, output in node.outputs.items():
            self.outputs[output] = bag.filter(functools.partial(_has_tag, tag=tag)).map(_value) \
                if op_class is _ParDoKeepingTags else bag

    def sinks(self) -> list:
        """The bags of the steps none of whose outputs another step reads: computing them runs every step."""
        return [bag for step, bag in self.bags.items() if not self.consumed & set(step.outputs.values())]


@dataclasses.dataclass
class ClosingDaskRunnerResult(dask_runner.DaskRunnerResult):
    """Beam's result, closing its Client once the pipeline has ended (or was cancelled). Beam leaves it
    open: it outlives the pipeline, and when its cluster goes it logs "Failed to reconnect to scheduler"
    errors; a client that started its own LocalCluster also keeps that cluster's processes."""

    def wait_until_finish(self, duration=None) -> str:
        try:
            return super().wait_until_finish(duration)
        finally:
            self.client.close()

    def cancel(self) -> str:
        try:
            return super().cancel()
        finally:
            self.client.close()


class DaskRunner(dask_runner.DaskRunner):
    """Beam's DaskRunner with outputs kept apart by tag (see the module docstring)."""

    def run_pipeline(self, pipeline, options):
        import dask
        import dask.distributed as ddist

        dask_options = options.view_as(dask_runner.DaskOptions).get_all_options(drop_default=True, current_only=True)
        bag_kwargs = dask_runner.DaskOptions._extract_bag_kwargs(dask_options)
        client = ddist.Client(**dask_options)
        # Beam's default puts up to ~128 created elements in one partition, and a bag keeps its partitions
        # through every step: labelbeam creates few, large elements (file ranges, vote buckets), so one
        # partition would run the whole build as one chain of tasks on one worker. As many partitions as
        # the cluster has threads instead: one per element cost a 2,000-event build 3x its time in
        # per-task overhead (each shuffle's tasks grow with the partitions).
        if not bag_kwargs:
            bag_kwargs = {"npartitions": max(1, sum(client.nthreads().values()))}
        pipeline.replace_all(dask_overrides())
        visitor = _OutputBags(bag_kwargs)
        pipeline.visit(visitor)
        futures = client.compute(list(dask.optimize(*visitor.sinks())))
        return ClosingDaskRunnerResult(client, futures)
