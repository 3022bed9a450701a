"""Shape primitives: they move values without rounding, so they work on storage arrays."""

from __future__ import annotations

import numpy as np

from ..autodiff.engine import Op, apply
from ..autodiff.tensor import Tensor
from ..numerics.exact import exact_sum

__all__ = ["reshape", "transpose", "permute", "expand", "broadcast_to", "getitem",
           "concatenate", "stack", "index_add"]


def _inverse(axes) -> tuple:
    return tuple(np.argsort(axes))


_RESHAPE = Op("reshape", lambda c, a, shape: a.reshape(shape),
              lambda ctx, g: (g.reshape(ctx.inputs[0].shape),), on_storage=True, tensor_args=1)
_TRANSPOSE = Op("transpose", lambda c, a, axes: np.transpose(a, axes),
                lambda ctx, g: (transpose(g, _inverse(ctx.args[0])),),
                on_storage=True, tensor_args=1)
# The engine sums the VJP over the broadcast axes, so expand's VJP is g itself.
_EXPAND = Op("expand", lambda c, a, shape: np.broadcast_to(a, shape),
             lambda ctx, g: (g,), on_storage=True, tensor_args=1)
_GETITEM = Op("getitem", lambda c, a, index: a[index],
              lambda ctx, g: (index_add(ctx.inputs[0].shape, ctx.args[0], g),),
              on_storage=True, tensor_args=1)
_CONCAT = Op("concatenate", lambda c, *arrays, axis: np.concatenate(arrays, axis),
             lambda ctx, g: _split(g, ctx))
_STACK = Op("stack", lambda c, *arrays, axis: np.stack(arrays, axis),
            lambda ctx, g: tuple(getitem(g, (slice(None),) * _axis(ctx, g.ndim) + (i,))
                                 for i in range(len(ctx.inputs))))


def _axis(ctx, ndim: int) -> int:
    return ctx.params["axis"] % ndim


def _split(g, ctx) -> tuple:
    axis = _axis(ctx, g.ndim)
    bounds = np.cumsum([0] + [t.shape[axis] for t in ctx.inputs])
    return tuple(getitem(g, (slice(None),) * axis + (slice(lo, hi),))
                 for lo, hi in zip(bounds[:-1], bounds[1:]))


def reshape(a, *shape):
    """The same values in another shape."""
    shape = tuple(shape[0]) if len(shape) == 1 and not np.isscalar(shape[0]) else shape
    return apply(_RESHAPE, a, shape)


def transpose(a, axes=None):
    """Axes permuted (reversed by default)."""
    axes = tuple(reversed(range(a.ndim))) if axes is None else tuple(axes)
    return apply(_TRANSPOSE, a, axes)


def permute(a, *axes):
    """Axes permuted as given (as torch.permute)."""
    return transpose(a, axes[0] if len(axes) == 1 and not np.isscalar(axes[0]) else axes)


def broadcast_to(a, shape):
    """The values broadcast to shape (NumPy rules)."""
    return apply(_EXPAND, a, tuple(shape))


expand = broadcast_to


def getitem(a, index):
    """a[index]: basic slicing and integer-array indexing."""
    if isinstance(index, Tensor):
        raise TypeError("index with a NumPy integer or boolean array, not a Tensor")
    return apply(_GETITEM, a, index)


def concatenate(tensors, axis: int = 0):
    """Tensors joined along an existing axis."""
    return apply(_CONCAT, *tensors, axis=axis)


def stack(tensors, axis: int = 0):
    """Tensors joined along a new axis."""
    return apply(_STACK, *tensors, axis=axis)


def _index_add_forward(c, g, shape, index):
    """Zeros of shape with g added at index; repeated positions get their exact sum."""
    positions = np.arange(int(np.prod(shape))).reshape(shape)[index]
    flat, values = np.broadcast_arrays(positions, g)
    order = np.argsort(flat.ravel(), kind="stable")
    keys, starts = np.unique(flat.ravel()[order], return_index=True)
    hi, lo = np.zeros(int(np.prod(shape))), np.zeros(int(np.prod(shape)))
    if keys.size:
        sorted_values = values.ravel()[order]
        if keys.size == flat.size:  # no repeats: place the values
            hi[keys] = sorted_values
        else:
            for key, part in zip(keys, np.split(sorted_values, starts[1:])):
                hi[key], lo[key] = exact_sum(part)
    return hi.reshape(shape), lo.reshape(shape)


_INDEX_ADD = Op("index_add", _index_add_forward,
                lambda ctx, g: (getitem(g, ctx.args[1]),), tensor_args=1)


def index_add(shape, index, g):
    """A tensor of zeros of shape with g added at index (getitem's VJP)."""
    return apply(_INDEX_ADD, g, tuple(shape), index)
