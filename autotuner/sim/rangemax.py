"""Many range-maximum queries over one array, answered together with numpy.

The simulator records one duration per iteration and needs, per request, the longest of the
iterations it decoded through; the metrics need, per request, the latest arrival among requests
served within a time range. Both are batches of ``max(values[lo:hi])``: a sparse table answers
each in O(1) after O(n log n) vectorised preparation, with no Python loop over the queries.
"""

from __future__ import annotations

import numpy as np


def range_max(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, empty: float = -np.inf
              ) -> np.ndarray:
    """``max(values[lo[k]:hi[k]])`` for every k; ``empty`` where ``hi[k] <= lo[k]``."""
    values = np.asarray(values, dtype=np.float64)
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.asarray(hi, dtype=np.int64)
    out = np.full(lo.shape, empty, dtype=np.float64)
    length = hi - lo
    valid = length > 0
    if not valid.any():
        return out
    # level k covers 2**k elements: table[k][i] = max(values[i:i + 2**k])
    level = np.frexp(length[valid].astype(np.float64))[1] - 1
    table = [values]
    for k in range(1, int(level.max()) + 1):
        prev, half = table[-1], 1 << (k - 1)
        table.append(np.maximum(prev[:-half], prev[half:]))
    lo_v, hi_v = lo[valid], hi[valid]
    res = np.empty(lo_v.shape, dtype=np.float64)
    for k in np.unique(level):
        pick = level == k
        t = table[int(k)]
        res[pick] = np.maximum(t[lo_v[pick]], t[hi_v[pick] - (1 << int(k))])
    out[valid] = res
    return out
