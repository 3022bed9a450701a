"""Tensor: an array stored in a Format, with its gradient and the node that made it.

This module holds the data only; the engine (autodiff.engine) records nodes and runs
backward, and mpgrad.ops binds the operators and methods (t + u, t.exp(), t.backward()).
It also converts to and from NumPy and PyTorch: torch is never imported unless a torch
tensor is given or asked for.
"""

from __future__ import annotations

import itertools
import math
import numbers
import sys
from typing import Callable

import numpy as np

from ..numerics import rng as _rng
from ..numerics.formats import FORMATS, Format, as_format, float32, format_of_dtype
from ..numerics.rounding import round_to, to_float64

__all__ = ["Tensor", "RemovableHandle", "tensor", "zeros", "ones", "full", "arange", "randn",
           "rand", "DEFAULT_DTYPE", "TORCH_FORMATS", "check_like", "is_torch_tensor"]

DEFAULT_DTYPE = float32  # the format of tensors made from Python numbers, as in PyTorch

# The formats torch and mpgrad share, by name (torch.float16 is mpgrad.float16, ...).
TORCH_FORMATS = ("float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
                 "float8_e4m3fnuz", "float8_e5m2fnuz")


class Tensor:
    """An array of values of one Format; ops on it record a tape when it requires grad."""

    __array_priority__ = 1000  # numpy scalars defer to Tensor's reflected operators

    def __init__(self, data, dtype: Format | str | None = None, requires_grad: bool = False,
                 mode: str = "nearest_even") -> None:
        source, own = _source(data)
        if dtype is None and own is None:
            raise TypeError(f"dtype {source.dtype} has no mpgrad format: pass dtype= to round "
                            "its values once (e.g. dtype='float32'), or convert it first")
        fmt = own if dtype is None else as_format(dtype)
        if own == fmt and source.dtype == fmt.storage:  # already fmt's values: bit for bit
            stored = np.array(source, copy=True)
        else:
            stored = round_to(source, fmt, mode)
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
        self._grad: Tensor | None = None
        self._hooks: dict[int, Callable] = {}
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

    def to_torch(self, dtype=None):
        """A torch tensor (a copy) with this tensor's format and bits, or its values widened
        exactly to dtype (a torch dtype or a format torch has); needs PyTorch."""
        try:
            import torch
        except ImportError as err:
            raise ImportError("to_torch needs PyTorch: pip install torch") from err
        target = self.dtype if dtype is None else _torch_format(dtype)
        names = ", ".join(TORCH_FORMATS)
        name = next((n for n in TORCH_FORMATS if FORMATS[n] == target), None)
        if name is None:
            raise TypeError(f"torch has no {target.name} format (it has {names}); pass "
                            "dtype=torch.float32 for an exact float32 copy, or round first "
                            "with t.to(...)")
        if not target.contains(self.dtype):
            raise ValueError(f"to_torch does not round: not every {self.dtype.name} value is "
                             f"a {name} value; round first with t.to({name!r})")
        stored = self.data if target == self.dtype else round_to(self.data, target)
        stored = np.array(stored, dtype=FORMATS[name].storage, copy=True)  # writable, exact
        bits = stored.view({1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}[stored.itemsize])
        return torch.from_numpy(bits).view(getattr(torch, name))

    # --- Python and NumPy protocols ----------------------------------------------------
    def __array__(self, dtype=None, copy: bool | None = None) -> np.ndarray:
        """The storage array, for np.asarray(t) (read-only) and np.array(t) (a copy)."""
        if dtype is None or np.dtype(dtype) == self.data.dtype:
            return self.data.copy() if copy else self.data
        if copy is False:
            raise ValueError(f"a {self.dtype.name} tensor is stored as {self.data.dtype}: "
                             f"an array of dtype {np.dtype(dtype)} needs a copy")
        return self.data.astype(dtype)

    def __float__(self) -> float:
        if self.size != 1:
            raise ValueError(f"only one element tensors can be converted to Python scalars, "
                             f"this one has {self.size}")
        return self.item()

    def __int__(self) -> int:
        return int(float(self))  # toward zero; NaN and inf raise, as in Python and PyTorch

    def __bool__(self) -> bool:
        if self.size != 1:
            amount = "no values" if self.size == 0 else "more than one value"
            raise RuntimeError(f"Boolean value of Tensor with {amount} is ambiguous")
        return bool(self.item())

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
    @property
    def grad(self) -> Tensor | None:
        """The accumulated gradient: a tensor of this tensor's shape and format, or None."""
        return self._grad

    @grad.setter
    def grad(self, value: Tensor | None) -> None:
        # PyTorch's checks (THPVariable_set_grad): a Tensor or None, same shape and format
        if value is not None:
            if not isinstance(value, Tensor):
                raise TypeError(f"assigned grad expected to be a Tensor or None but got grad "
                                f"of type {type(value).__name__}")
            if value is self:
                raise RuntimeError("can't assign a tensor as its own grad")
            check_like(value, self, "assigned grad")
        self._grad = value

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

    def register_hook(self, fn: Callable[[Tensor], Tensor | None]) -> RemovableHandle:
        """Call fn(grad) when this tensor's gradient is computed; a returned tensor (same
        shape and format) replaces it. Returns a handle: handle.remove() (or handle())."""
        if not self.requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that does not require grad")
        key = next(_HOOK_KEYS)
        self._hooks[key] = fn
        return RemovableHandle(self._hooks, key)


_HOOK_KEYS = itertools.count()  # a handle's key is never reused


class RemovableHandle:
    """Removes one registered hook; removing it again does nothing (as in PyTorch)."""

    def __init__(self, hooks: dict, key: int) -> None:
        self._hooks, self._key = hooks, key

    def remove(self) -> None:
        """Unregister the hook (a no-op once removed)."""
        self._hooks.pop(self._key, None)

    __call__ = remove


def is_torch_tensor(x) -> bool:
    """Whether x is a torch.Tensor (checked without importing torch)."""
    torch = sys.modules.get("torch")  # not imported: x cannot be a torch tensor
    return torch is not None and isinstance(x, torch.Tensor)


def _torch_format(dtype) -> Format:
    """The format of a torch dtype torch and mpgrad share, or of a Format or name."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(dtype, torch.dtype):
        return as_format(dtype)
    name = str(dtype).removeprefix("torch.")
    if name not in TORCH_FORMATS:
        raise TypeError(f"torch dtype {dtype} has no mpgrad format; torch and mpgrad share "
                        f"{', '.join(TORCH_FORMATS)} (convert with t.to(torch.float32), say)")
    return FORMATS[name]


def _from_torch(t) -> tuple[np.ndarray, Format]:
    """A torch tensor's values as a storage array of its format (its bits, on the CPU)."""
    fmt = _torch_format(t.dtype)
    torch = sys.modules["torch"]
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    bits = t.detach().cpu().contiguous().view(ints[fmt.storage.itemsize]).numpy()
    return bits.view(fmt.storage), fmt


def _refused(x) -> str:
    return (f"cannot make a tensor from {type(x).__name__} {x!r:.60}: expected a number, a "
            "nested list of numbers, a NumPy array, an mpgrad Tensor or a torch tensor")


def _object_values(array: np.ndarray) -> np.ndarray:
    """An object array of Python numbers as float64, each exactly (None, strings refused)."""
    out = np.empty(array.shape, np.float64)
    for i, v in enumerate(array.flat):
        if not isinstance(v, numbers.Real):
            raise TypeError(_refused(v))
        try:
            f = float(v)
        except OverflowError:  # an int beyond float64's range
            f = math.inf
        if f != v and not math.isnan(f):  # Python compares ints, Fractions, floats exactly
            raise ValueError(f"{v!r:.60} is not exact in float64; pass float64 values or a "
                             "NumPy array")
        out.flat[i] = f
    return out


def _source(data) -> tuple[np.ndarray, Format | None]:
    """The array whose exact values a tensor holds, and the format it keeps without dtype=
    (Python numbers and integer arrays: the default; None: a dtype mpgrad has no format of)."""
    if isinstance(data, Tensor):
        return data.data, data.dtype
    if is_torch_tensor(data):
        return _from_torch(data)
    if data is None or isinstance(data, (str, bytes, dict, set)):
        raise TypeError(_refused(data))
    try:
        array = np.asarray(data)
    except ValueError as err:  # ragged nested lists
        raise ValueError(f"cannot make a tensor from this {type(data).__name__}: {err}") from None
    kind = array.dtype.kind
    if kind in "US":
        raise TypeError(_refused(data))
    if kind == "O":
        return _object_values(array), DEFAULT_DTYPE
    if kind in "iub":
        return array, DEFAULT_DTYPE
    own = format_of_dtype(array.dtype)
    if own is None:
        try:
            to_float64(array.ravel()[:0])  # exact values exist (e.g. ml_dtypes float8_e8m0fnu)
        except TypeError:
            raise TypeError(f"dtype {array.dtype} has no mpgrad format and mpgrad cannot read "
                            "its values: mpgrad holds real floating-point values; convert it "
                            "first, e.g. np.asarray(a, dtype=np.float32)") from None
    return array, own if isinstance(data, (np.ndarray, np.generic)) else DEFAULT_DTYPE


def check_like(value: Tensor, like: Tensor, what: str) -> None:
    """A RuntimeError unless value has like's shape and format (PyTorch's checks of an
    assigned grad and of a hook's replacement gradient)."""
    if value.shape != like.shape:
        raise RuntimeError(f"{what} has data of a different size: shape {value.shape} for a "
                           f"tensor of shape {like.shape}")
    if value.dtype != like.dtype:
        raise RuntimeError(f"{what} has data of a different type: {value.dtype.name} for a "
                           f"{like.dtype.name} tensor; cast it with .to({like.dtype.name!r})")


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

