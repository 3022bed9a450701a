"""Matrix products: by default the exact sum of exact products, rounded once.

With `accumulate=MODEL` (an mpgrad.accumulate model, or the active Policy's `accumulate`)
the products are added up as the model says, in its accumulator format, then rounded to
the compute format; the backward matmuls use the same model.
"""

from __future__ import annotations

import numpy as np

from ..accumulate import matmul_model
from ..exact import exact_sum, two_prod
from ..policy import accumulate_model
from ..tensor import Tensor
from .core import Op, apply, as_tensor
from .shape import transpose

__all__ = ["matmul"]


K_BLOCK = 32  # products summed at a time: memory O(M*N*K_BLOCK), never O(M*N*K)


def _matmul_exact(c, a, b):
    """(hi, lo) of a @ b exactly: the products of each block of K exact as pairs and summed
    exactly; then the exact pairs of all blocks summed exactly (a sum of exact values)."""
    parts = []
    for k in range(0, a.shape[-1], K_BLOCK):
        hi, lo = two_prod(a[..., :, k:k + K_BLOCK, None], b[..., None, k:k + K_BLOCK, :])
        lo = np.where(np.isfinite(hi), lo, 0.0)
        parts.extend(exact_sum(np.concatenate([hi, lo], axis=-2), axis=-2))
    if not parts:  # K == 0: the empty sum
        shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
        return np.zeros(shape), np.zeros(shape)
    return exact_sum(np.stack(parts, axis=-1), axis=-1)


def _swap(t):
    """t with its last two axes exchanged."""
    return transpose(t, tuple(range(t.ndim - 2)) + (t.ndim - 1, t.ndim - 2))


def _matmul_forward(c, a, b, accumulate):
    """The exact pair (no model), or the model's result for each matrix of the batch."""
    if accumulate is None:
        return _matmul_exact(c, a, b)
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = np.broadcast_to(a, batch + a.shape[-2:])
    b = np.broadcast_to(b, batch + b.shape[-2:])
    out = np.empty(batch + (a.shape[-2], b.shape[-1]))
    for i in np.ndindex(batch):
        out[i] = matmul_model(a[i], b[i], accumulate)
    return out


_MATMUL = Op("matmul", _matmul_forward, lambda ctx, g: (
    matmul(g, _swap(ctx.inputs[1]), accumulate=ctx.params["accumulate"]),
    matmul(_swap(ctx.inputs[0]), g, accumulate=ctx.params["accumulate"])))


def matmul(a, b, accumulate=None):
    """a @ b (NumPy rules, batch dimensions included), accumulated exactly or by a model."""
    a = as_tensor(a, b.dtype if isinstance(b, Tensor) else None)
    b = as_tensor(b, a.dtype)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul needs tensors of at least one dimension; use * for scalars")
    a2 = a.reshape(1, -1) if a.ndim == 1 else a
    b2 = b.reshape(-1, 1) if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align "
                         f"({a2.shape[-1]} != {b2.shape[-2]})")
    out = apply(_MATMUL, a2, b2, accumulate=accumulate_model(accumulate))
    if a.ndim == 1:
        out = out.reshape(out.shape[:-2] + out.shape[-1:])
    if b.ndim == 1:
        out = out.reshape(out.shape[:-1])
    return out
