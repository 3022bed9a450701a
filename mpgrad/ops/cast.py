"""The explicit cast: round a tensor to another format, in any rounding mode."""

from __future__ import annotations

import numpy as np

from .. import autograd
from ..formats import Format, as_format
from ..rounding import round_to
from ..tensor import Tensor
from .core import Ctx, Op

__all__ = ["cast"]

# The gradient passes straight through and is rounded back to the source format.
CAST = Op("cast", forward=None, vjp=lambda ctx, g: (cast(g, ctx.params["source"]),))


def cast(x, dtype: Format | str, mode: str = "nearest_even", *, rng=None) -> Tensor:
    """x rounded once to dtype in the given mode (differentiable)."""
    fmt = as_format(dtype)
    if not isinstance(x, Tensor):  # raw data: its exact values, rounded once
        return Tensor._wrap(round_to(np.asarray(x), fmt, mode, rng=rng), fmt)
    if x.dtype == fmt:
        return x
    stored = round_to(x.data, fmt, mode, rng=rng)
    if not (autograd.is_grad_enabled() and x.requires_grad):
        return Tensor._wrap(stored, fmt)
    out = Tensor._wrap(stored, fmt, requires_grad=True)
    ctx = Ctx((x.detach(),), out.detach(), (), {"source": x.dtype, "mode": mode})
    out._node = autograd.Node(CAST, (x,), ctx)
    return out
