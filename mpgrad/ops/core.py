"""The engine every op goes through: compute format, conversion, one rounding, the tape.

An op is declared once, as an `Op` row: its forward (on exact values, or on storage arrays
for ops that only move values) next to its vector-Jacobian product (written with mpgrad ops,
so the backward pass rounds by the same rules). `apply` does the shared work: it chooses the
compute format (policy), converts inputs to it (a recorded, differentiable cast), rounds the
exact result once to it, and records the node. `gradient_for` sums a VJP over broadcast axes
and rounds it to the input's format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .. import autograd
from ..formats import Format
from ..policy import accumulate_model, compute_format
from ..rounding import round_to, to_float64
from ..tensor import Tensor

__all__ = ["Op", "Ctx", "apply", "gradient_for", "as_tensor"]


@dataclass(frozen=True)
class Op:
    """One primitive: forward and VJP side by side.

    forward(c, *args, **params) receives the inputs' exact float64 values in the compute
    format c and returns the exact result (a float64 array, or a (hi, lo) pair meaning
    hi + lo), or, for `on_storage` ops that only rearrange values, receives and returns
    storage arrays. vjp(ctx, g) returns one gradient (Tensor or None) per tensor input.
    """

    name: str
    forward: Callable[..., Any]
    vjp: Callable[..., tuple] | None = None
    on_storage: bool = False
    tensor_args: int | None = None  # how many leading arguments are tensors (None: all)


@dataclass
class Ctx:
    """What a VJP sees: the inputs and output (in the compute format), the op's other
    positional arguments and its keyword parameters."""

    inputs: tuple
    out: Tensor
    args: tuple
    params: dict


def as_tensor(x, fmt: Format | None = None) -> Tensor:
    """x itself if a Tensor, else a constant rounded to fmt (Python numbers are weakly typed)."""
    if isinstance(x, Tensor):
        return x
    return Tensor(np.asarray(x, dtype=np.float64) if np.isscalar(x) else x, fmt)


def _convert(t: Tensor, c: Format) -> Tensor:
    """t in the compute format: itself, or a recorded cast (exact when c holds t's values)."""
    if t.dtype == c:
        return t
    from .cast import cast
    return cast(t, c)


def apply(op: Op, *args, **params) -> Tensor:
    """Run op on tensors (or numbers) under the active policy and record it for backward."""
    count = len(args) if op.tensor_args is None else op.tensor_args
    given = [a for a in args[:count] if isinstance(a, Tensor)]
    if not given:
        raise TypeError(f"{op.name} needs at least one mpgrad Tensor argument")
    c = compute_format(op.name, [t.dtype for t in given])
    tensors = [_convert(as_tensor(a, c), c) for a in args[:count]]
    rest = args[count:]
    if op.on_storage:
        stored = op.forward(c, *(t.data for t in tensors), *rest, **params)
    else:
        exact = op.forward(c, *(to_float64(t.data) for t in tensors), *rest, **params)
        stored = round_to(exact, c)
    needs_grad = autograd.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if not needs_grad or op.vjp is None:
        return Tensor._wrap(stored, c)
    out = Tensor._wrap(stored, c, requires_grad=True)
    ctx = Ctx(tuple(t.detach() for t in tensors), out.detach(), rest, params)
    out._node = autograd.Node(op, tuple(tensors), ctx, accumulate_model())
    return out


def gradient_for(g: Tensor, x: Tensor, accumulate=None) -> Tensor:
    """The VJP's g as x's gradient: summed over broadcast axes (under the model), rounded
    to x's format."""
    from .cast import cast
    from .reduce import sum as reduce_sum
    if g.shape != x.shape:
        lead = g.ndim - x.ndim
        axes = tuple(range(lead)) + tuple(
            lead + i for i, n in enumerate(x.shape) if n == 1 and g.shape[lead + i] != 1)
        g = reduce_sum(g, axis=axes, accumulate=accumulate).reshape(x.shape)
    return cast(g, x.dtype) if g.dtype != x.dtype else g
