"""Tensor: an array stored in a Format, with a tape for reverse-mode autograd."""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import autograd
from . import rng as _rng
from .formats import Format, as_format, float32
from .rounding import round_to, to_float64

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
    def _wrap(cls, stored: np.ndarray, fmt: Format, node: autograd.Node | None = None,
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

    def backward(self, grad: Tensor | None = None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's .grad (grad defaults to 1 for a scalar)."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad: no input "
                               "of the computation had requires_grad=True")
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a scalar output, this "
                                   f"one has shape {self.shape}; pass grad=, e.g. "
                                   f"mpgrad.ones({self.shape}, dtype=...)")
            grad = Tensor._wrap(round_to(np.ones(self.shape), self.dtype), self.dtype)
        grad = grad if isinstance(grad, Tensor) else Tensor(grad, dtype=self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"grad has shape {grad.shape}, the tensor has shape {self.shape}")
        autograd.backward(self, ops.cast(grad, self.dtype), retain_graph,
                          accumulate=ops.add, to_input=ops.core.gradient_for)

    # --- conversions and operators (the ops live in mpgrad.ops) -----------------------
    def to(self, dtype: Format | str, mode: str = "nearest_even", *, rng=None) -> Tensor:
        """This tensor rounded to another format (differentiable; see mpgrad.cast)."""
        return ops.cast(self, dtype, mode, rng=rng)

    def __add__(self, other): return ops.add(self, other)
    def __radd__(self, other): return ops.add(other, self)
    def __sub__(self, other): return ops.sub(self, other)
    def __rsub__(self, other): return ops.sub(other, self)
    def __mul__(self, other): return ops.mul(self, other)
    def __rmul__(self, other): return ops.mul(other, self)
    def __truediv__(self, other): return ops.div(self, other)
    def __rtruediv__(self, other): return ops.div(other, self)
    def __pow__(self, exponent): return ops.pow(self, exponent)
    def __matmul__(self, other): return ops.matmul(self, other)
    def __rmatmul__(self, other): return ops.matmul(other, self)
    def __neg__(self): return ops.neg(self)
    def __abs__(self): return ops.abs(self)
    def __getitem__(self, index): return ops.getitem(self, index)
    def __lt__(self, other): return ops.lt(self, other)
    def __le__(self, other): return ops.le(self, other)
    def __gt__(self, other): return ops.gt(self, other)
    def __ge__(self, other): return ops.ge(self, other)
    def __eq__(self, other): return ops.eq(self, other)
    def __ne__(self, other): return ops.ne(self, other)

    @property
    def T(self) -> Tensor:
        """The transpose (axes reversed)."""
        return ops.transpose(self)

    def __getattr__(self, name: str):
        """t.exp(), t.sum(axis), t.reshape(...): every mpgrad op taking a tensor first."""
        fn = getattr(ops, name, None) if name in ops.METHODS else None
        if fn is None:
            raise AttributeError(f"'Tensor' object has no attribute {name!r}")
        return lambda *args, **kwargs: fn(self, *args, **kwargs)


def _format_of(data, array: np.ndarray) -> Format:
    """A NumPy array's or scalar's own format; Python numbers and lists get the default."""
    from .formats import _BY_DTYPE
    if not isinstance(data, (np.ndarray, np.generic)):
        return DEFAULT_DTYPE
    return _BY_DTYPE.get(array.dtype, DEFAULT_DTYPE)


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


from . import ops  # noqa: E402  (ops needs Tensor defined)
