"""Tensor: an array stored in a Format, with its gradient and the node that made it.

This module holds the data only; the engine (autodiff.engine) records nodes and runs
backward, and mpgrad.ops binds the operators and methods (t + u, t.exp(), t.backward()).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..numerics import rng as _rng
from ..numerics.formats import Format, as_format, float32, format_of_dtype
from ..numerics.rounding import round_to, to_float64

__all__ = ["Tensor", "tensor", "zeros", "ones", "full", "arange", "randn", "rand",
           "DEFAULT_DTYPE"]

DEFAULT_DTYPE = float32  # the format of tensors made from Python numbers, as in PyTorch


class Tensor:
    """An array of values of one Format; ops on it record a tape when it requires grad."""

    __array_priority__ = 1000  # numpy scalars defer to Tensor's reflected operators

    def __init__(self, data, dtype: Format | str | None = None, requires_grad: bool = False,
                 mode: str = "nearest_even") -> None:
        source = data.data if isinstance(data, Tensor) else np.asarray(data)
        if dtype is None:
            dtype = data.dtype if isinstance(data, Tensor) else _format_of(data, source)
        fmt = as_format(dtype)
        stored = round_to(source if source.dtype.kind != "O" else source.astype(np.float64),
                          fmt, mode)
        self._set(stored, fmt, None)
        self.requires_grad_(requires_grad)

    @classmethod
    def _wrap(cls, stored: np.ndarray, fmt: Format, node=None,
              requires_grad: bool = False) -> Tensor:
        """A tensor around a storage array already holding fmt values (no rounding)."""
        t = cls.__new__(cls)
        t._set(stored, fmt, node)
        t.requires_grad = requires_grad
        return t

    def _set(self, stored: np.ndarray, fmt: Format, node) -> None:
        stored = np.asarray(stored)
        if stored.dtype != fmt.storage:
            raise TypeError(f"storage dtype {stored.dtype} is not {fmt.name}'s {fmt.storage}")
        stored.flags.writeable = False  # saved for backward: nothing may change it in place
        self.data, self.dtype, self._node = stored, fmt, node
        self.grad: Tensor | None = None
        self._hooks: list[Callable] = []
        self.requires_grad = False

    # --- inspection --------------------------------------------------------------------
    shape = property(lambda self: self.data.shape, doc="The shape.")
    ndim = property(lambda self: self.data.ndim, doc="The number of dimensions.")
    size = property(lambda self: self.data.size, doc="The number of elements.")
    is_leaf = property(lambda self: self._node is None, doc="Made by the user, not by an op.")

    def numpy(self) -> np.ndarray:
        """The storage array (read-only), in the format's NumPy/ml_dtypes dtype."""
        return self.data

    def to_float64(self) -> np.ndarray:
        """The exact values as a float64 array."""
        return to_float64(self.data)

    def item(self) -> float:
        """The single value as a Python float (exact)."""
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, this one has {self.size}")
        return float(self.to_float64().reshape(()))

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self) -> str:
        body = np.array2string(self.to_float64(), separator=", ", precision=8, prefix="tensor(")
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"tensor({body}, dtype={self.dtype.name}{grad})"

    __hash__ = object.__hash__

    # --- autograd ----------------------------------------------------------------------
    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        """Mark a leaf as needing gradients (in place); returns self."""
        if not self.is_leaf and not requires_grad:
            raise RuntimeError("only leaf tensors can stop requiring grad; use detach()")
        self.requires_grad = bool(requires_grad)
        return self

    def detach(self) -> Tensor:
        """The same values as a new leaf that does not require grad."""
        return Tensor._wrap(self.data, self.dtype)

    def copy_(self, src, mode: str = "nearest_even", *, rng=None) -> Tensor:
        """Replace this leaf's values by src rounded once to its format (not recorded).

        For optimizers and loading: the tensor keeps its format, grad, hooks and
        requires_grad; arrays saved earlier for backward are not changed (new storage).
        """
        if not self.is_leaf:
            raise RuntimeError("copy_() needs a leaf tensor; use detach() first")
        values = src.data if isinstance(src, Tensor) else np.asarray(src)
        if values.shape != self.shape:
            raise ValueError(f"copy_: source shape {values.shape} != tensor shape {self.shape}")
        stored = round_to(values, self.dtype, mode, rng=rng)
        stored.flags.writeable = False
        self.data = stored
        return self

    def register_hook(self, fn: Callable[[Tensor], Tensor | None]) -> Callable[[], None]:
        """Call fn(grad) when this tensor's gradient is computed; a returned tensor replaces it."""
        if not self.requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that does not require grad")
        self._hooks.append(fn)
        return lambda: self._hooks.remove(fn)


def _format_of(data, array: np.ndarray) -> Format:
    """A NumPy array's or scalar's own format; Python numbers and lists get the default."""
    if not isinstance(data, (np.ndarray, np.generic)):
        return DEFAULT_DTYPE
    return format_of_dtype(array.dtype) or DEFAULT_DTYPE


def tensor(data, dtype: Format | str | None = None, requires_grad: bool = False,
           mode: str = "nearest_even") -> Tensor:
    """A leaf tensor of data rounded once to dtype (default: the data's own format, or float32)."""
    return Tensor(data, dtype, requires_grad, mode)


def _shape(shape: tuple) -> tuple:
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape


def full(shape, value: float, dtype: Format | str = DEFAULT_DTYPE,
         requires_grad: bool = False) -> Tensor:
    """A tensor of one value, rounded to dtype."""
    return Tensor(np.full(_shape((shape,) if isinstance(shape, int) else tuple(shape)),
                          float(value)), dtype, requires_grad)


def zeros(*shape, dtype: Format | str = DEFAULT_DTYPE, requires_grad: bool = False) -> Tensor:
    """A tensor of zeros."""
    return full(_shape(shape), 0.0, dtype, requires_grad)


def ones(*shape, dtype: Format | str = DEFAULT_DTYPE, requires_grad: bool = False) -> Tensor:
    """A tensor of ones."""
    return full(_shape(shape), 1.0, dtype, requires_grad)


def arange(start: float, stop: float | None = None, step: float = 1.0,
           dtype: Format | str = DEFAULT_DTYPE, requires_grad: bool = False) -> Tensor:
    """Evenly spaced values (computed in float64, then rounded once to dtype)."""
    values = np.arange(0.0, start, step) if stop is None else np.arange(start, stop, step,
                                                                        dtype=np.float64)
    return Tensor(values, dtype, requires_grad)


def randn(*shape, dtype: Format | str = DEFAULT_DTYPE, requires_grad: bool = False,
          rng=None) -> Tensor:
    """Standard normal samples drawn in float64 from the seeded generator, then rounded."""
    return Tensor(_rng.generator(rng).standard_normal(_shape(shape)), dtype, requires_grad)


def rand(*shape, dtype: Format | str = DEFAULT_DTYPE, requires_grad: bool = False,
         rng=None) -> Tensor:
    """Uniform [0, 1) samples drawn in float64, rounded toward zero (so never 1)."""
    return Tensor(_rng.generator(rng).random(_shape(shape)), dtype, requires_grad,
                  mode="toward_zero")

