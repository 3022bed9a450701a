"""Software presets: reductions as numerical libraries compute them, as data.

NUMPY is `np.sum` (and `np.add.reduce`) of a contiguous float32 or float16 array in NumPy 2,
whose loop accumulates in float32 (float16 inputs are converted exactly and the result is
rounded once to float16 at the end); NUMPY_FLOAT64 the same for float64. Source: NumPy's
pairwise_sum, numpy/_core/src/umath/loops_utils.h.src. NumPy 1.26 feeds the loop through
its 8192-element ufunc buffer: each 8192 chunk is summed pairwise and added to the running
result with one rounding (NUMPY_1, NUMPY_1_FLOAT64; measured with 1.26.0 and 2.4.6; for
float16 1.26 also rounds the running sum to float16 after every chunk, which no preset
models). A reduction along a non-contiguous axis (axis 0 of a C-ordered matrix) is a
different loop: rows are added one at a time, Sequential(acc, fma=False).
"""

from __future__ import annotations

from ..numerics.formats import float32, float64
from .models import Chunked, Pairwise, Sequential

NUMPY = Pairwise(float32, block=128, rule="numpy")
NUMPY_FLOAT64 = Pairwise(float64, block=128, rule="numpy")
NUMPY_1 = Chunked(8192, NUMPY, Sequential(float32, fma=False))
NUMPY_1_FLOAT64 = Chunked(8192, NUMPY_FLOAT64, Sequential(float64, fma=False))

__all__ = ["NUMPY", "NUMPY_FLOAT64", "NUMPY_1", "NUMPY_1_FLOAT64"]
