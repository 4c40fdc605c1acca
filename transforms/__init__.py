"""labelbeam's composite PTransforms and the pure numpy/pyarrow cores they call."""
