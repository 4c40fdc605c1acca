"""Sorted integer codes for Arrow columns: the bridge from Arrow strings to numpy math."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def factorize_sorted(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """(codes, uniques): uniques sorted ascending, values == uniques[codes]. Nulls are not allowed.

    Codes preserve order: codes[i] < codes[j] iff values[i] < values[j].
    """
    encoded = pc.dictionary_encode(pa.chunked_array([values]) if isinstance(values, pa.Array) else values)
    encoded = encoded.combine_chunks() if isinstance(encoded, pa.ChunkedArray) else encoded
    dictionary = encoded.dictionary
    order = pc.sort_indices(dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    codes = rank[encoded.indices.to_numpy(zero_copy_only=False)]
    return codes, dictionary.take(pa.array(order))


def concatenated(parts: list, type: pa.DataType) -> pa.ChunkedArray:
    """One ChunkedArray of Arrays and ChunkedArrays, without copying.

    pa.chunked_array([...]) given a ChunkedArray element converts it value by value in Python
    (measured: 0.4 s per 1M strings); its chunks are taken as they are here.
    """
    chunks = []
    for part in parts:
        chunks.extend(part.chunks if isinstance(part, pa.ChunkedArray) else [part])
    return pa.chunked_array(chunks, type)
