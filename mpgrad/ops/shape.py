"""Shape primitives: they move values without rounding, so they work on storage arrays."""

from __future__ import annotations

import numpy as np

from ..autodiff.engine import Op, apply
from ..autodiff.tensor import Tensor
from ..numerics.exact import exact_sum, normalize_axes

__all__ = ["reshape", "transpose", "permute", "expand", "broadcast_to", "broadcast_shape",
           "getitem", "concatenate", "stack", "index_add"]


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


def _sizes(shape, what: str) -> tuple:
    """shape as a tuple of Python ints (TypeError for anything else)."""
    shape = tuple(shape) if isinstance(shape, (tuple, list, np.ndarray)) else (shape,)
    if any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) for n in shape):
        raise TypeError(f"{what}: a shape holds integers, got {shape!r}")
    return tuple(int(n) for n in shape)


def _resolved(size: int, shape: tuple) -> tuple:
    """shape with its -1 (at most one) replaced by the size that keeps `size` elements."""
    if shape.count(-1) > 1 or any(n < -1 for n in shape):
        raise ValueError(f"reshape: shape {shape} may hold one -1 and otherwise sizes >= 0")
    known = int(np.prod([n for n in shape if n != -1]))
    if -1 in shape:
        if known == 0:  # torch: "the unspecified dimension size -1 can be any value"
            raise ValueError(f"cannot reshape a tensor of {size} elements into shape {shape}:"
                             " with a zero size beside it, the -1 could be any size")
        shape = tuple(size // known if n == -1 else n for n in shape)
    if int(np.prod(shape)) != size:
        raise ValueError(f"cannot reshape a tensor of {size} elements into shape {shape}")
    return shape


def reshape(a, *shape):
    """The same values in another shape (one size may be -1)."""
    shape = shape[0] if len(shape) == 1 and not np.isscalar(shape[0]) else shape
    return apply(_RESHAPE, a, _resolved(int(np.size(a)), _sizes(shape, "reshape")))


def transpose(a, axes=None):
    """Axes permuted (reversed by default)."""
    ndim = np.ndim(a)
    axes = tuple(reversed(range(ndim))) if axes is None else _sizes(axes, "transpose")
    if len(axes) != ndim:
        raise ValueError(f"transpose: axes {axes} do not permute the {ndim} axes of a tensor "
                         f"of shape {np.shape(a)}; give each of 0 .. {ndim - 1} once")
    return apply(_TRANSPOSE, a, normalize_axes(ndim, axes))


def permute(a, *axes):
    """Axes permuted as given (as torch.permute)."""
    return transpose(a, axes[0] if len(axes) == 1 and not np.isscalar(axes[0]) else axes)


def broadcast_to(a, shape):
    """The values broadcast to shape (NumPy rules)."""
    shape, old = _sizes(shape, "broadcast_to"), np.shape(a)
    if (len(shape) < len(old) or any(n < 0 for n in shape)
            or any(m not in (1, n) for m, n in zip(reversed(old), reversed(shape)))):
        raise ValueError(f"cannot broadcast a tensor of shape {old} to shape {shape}: aligned "
                         "from the last axis, each size must be 1 or equal the new one")
    return apply(_EXPAND, a, shape)


expand = broadcast_to


def broadcast_shape(what: str, *shapes: tuple) -> tuple:
    """The shape NumPy broadcasts shapes to, or a ValueError naming what and the shapes."""
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for sizes in zip(*((1,) * (ndim - len(s)) + tuple(s) for s in shapes)):
        big = set(sizes) - {1}
        if len(big) > 1:
            raise ValueError(f"{what}: shapes {', '.join(map(str, shapes))} do not broadcast "
                             "(aligned from the last axis, each size must be 1 or the same)")
        out.append(big.pop() if big else 1)
    return tuple(out)


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
