"""Matrix products: the exact sum of exact products, rounded once (the Exact model).

The accumulation-models work (docs/accumulation.md, to come) generalises this to named
models of hardware and libraries; until then matmul is the idealised exact accumulator.
"""

from __future__ import annotations

import numpy as np

from ..exact import exact_sum, two_prod
from ..tensor import Tensor
from .core import Op, apply, as_tensor
from .shape import transpose

__all__ = ["matmul"]


def _matmul_exact(c, a, b):
    """(hi, lo) of a @ b exactly: every product exact as a pair, all pairs summed exactly."""
    hi, lo = two_prod(a[..., :, :, None], b[..., None, :, :])  # (..., M, K, N)
    lo = np.where(np.isfinite(hi), lo, 0.0)
    return exact_sum(np.concatenate([hi, lo], axis=-2), axis=-2)


def _swap(t):
    """t with its last two axes exchanged."""
    return transpose(t, tuple(range(t.ndim - 2)) + (t.ndim - 1, t.ndim - 2))


_MATMUL = Op("matmul", _matmul_exact,
             lambda ctx, g: (matmul(g, _swap(ctx.inputs[1])), matmul(_swap(ctx.inputs[0]), g)))


def matmul(a, b):
    """a @ b (NumPy rules, batch dimensions included): the exact result rounded once."""
    a = as_tensor(a, b.dtype if isinstance(b, Tensor) else None)
    b = as_tensor(b, a.dtype)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul needs tensors of at least one dimension; use * for scalars")
    a2 = a.reshape(1, -1) if a.ndim == 1 else a
    b2 = b.reshape(-1, 1) if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align "
                         f"({a2.shape[-1]} != {b2.shape[-2]})")
    out = apply(_MATMUL, a2, b2)
    if a.ndim == 1:
        out = out.reshape(out.shape[:-2] + out.shape[-1:])
    if b.ndim == 1:
        out = out.reshape(out.shape[:-1])
    return out
