"""Fixed-point sums (units of 2**-30) for statistics that a runner adds up across buckets.

Integer addition is associative, so a total is bit-identical however a runner groups bundles; and
values on the 2**-30 grid sum exactly in float64 below 2**53 grid steps (2**23 whole units), so a
bucket's own sums do not depend on which items share its bucket either. Pure numpy, no Beam.
"""
from __future__ import annotations

import numpy as np

SCALE = 2.0 ** 30
EXACT_FLOAT_UNITS = 2 ** 23  # float sums of grid values are exact below this many units


def on_grid(values: np.ndarray) -> np.ndarray:
    """Floats rounded to the nearest multiple of 2**-30."""
    return np.rint(np.asarray(values, dtype=np.float64) * SCALE) / SCALE


def to_fixed(values: np.ndarray) -> np.ndarray:
    """int64 counts of 2**-30 units (exact for values already on the grid)."""
    return np.rint(np.asarray(values, dtype=np.float64) * SCALE).astype(np.int64)


def from_fixed(units: np.ndarray) -> np.ndarray:
    return np.asarray(units) / SCALE
