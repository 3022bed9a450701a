"""Matrix products under an accumulation model, then rounded to the compute format.

The model is `accumulate=MODEL` (an mpgrad.accumulate model), else the active Policy's,
else the default: the exact sum of the exact products rounded once to float32 (float64
when computing in float64), then to the compute format. The backward matmuls use the
same model. Outside autocast and a Policy both operands must have one format (as in torch);
a zero K gives zeros, a zero M, N or batch size an empty result.
"""

from __future__ import annotations

import numpy as np

from ..accumulate import default_model, matmul_model
from ..autodiff.engine import Op, apply
from ..autodiff.policy import accumulate_model
from ..autodiff.tensor import Tensor
from .shape import broadcast_shape, reshape, transpose

__all__ = ["matmul"]


def _swap(t):
    """t with its last two axes exchanged."""
    return transpose(t, tuple(range(t.ndim - 2)) + (t.ndim - 1, t.ndim - 2))


def _matmul_forward(c, a, b, accumulate):
    """The model's result (the default model when none is given) in its accumulator format."""
    return matmul_model(a, b, accumulate or default_model(c), storage=True,
                        max_bits=c.precision, formats=(c, c))  # a and b hold values of c


_MATMUL = Op("matmul", _matmul_forward, lambda ctx, g: (
    matmul(g, _swap(ctx.inputs[1]), accumulate=ctx.params["accumulate"]),
    matmul(_swap(ctx.inputs[0]), g, accumulate=ctx.params["accumulate"])))


def _as_matrix(x, shape: tuple):
    """x (a Tensor, or data the engine will round once) reshaped; data stays data."""
    return reshape(x, shape) if isinstance(x, Tensor) else np.reshape(x, shape)


def matmul(a, b, accumulate=None):
    """a @ b (NumPy rules, batch dimensions included), accumulated exactly or by a model.

    An operand that is not a Tensor is rounded once, to the compute format, by the engine."""
    if a is None or b is None:
        raise TypeError("matmul: an operand is None")
    a, b = (x if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64) for x in (a, b))
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul needs tensors of at least one dimension; use * for scalars")
    a2 = _as_matrix(a, (1, -1)) if a.ndim == 1 else a
    b2 = _as_matrix(b, (-1, 1)) if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align "
                         f"({a2.shape[-1]} != {b2.shape[-2]})")
    broadcast_shape("matmul's batch axes", a2.shape[:-2], b2.shape[:-2])
    out = apply(_MATMUL, a2, b2, accumulate=accumulate_model(accumulate))
    if a.ndim == 1:
        out = out.reshape(out.shape[:-2] + out.shape[-1:])
    if b.ndim == 1:
        out = out.reshape(out.shape[:-1])
    return out
