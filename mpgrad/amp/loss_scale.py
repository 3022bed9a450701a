"""jmp-style immutable loss scales: NoOpLossScale, StaticLossScale, DynamicLossScale.

As in DeepMind's jmp (jmp/_src/loss_scale.py): the loss scale is a float32 value, the counter
an int32, every update returns a new object, and skipping a step is the caller's choice
(`select_tree(all_finite(grads), new, old)`). Trees are Tensors in nested lists, tuples and
dicts (None passes through).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar, Union

import numpy as np

from ..autodiff.policy import autocast
from ..autodiff.tensor import Tensor
from ..numerics.formats import float32
from ..ops import mul

__all__ = ["NoOpLossScale", "StaticLossScale", "DynamicLossScale", "LossScale", "all_finite",
           "select_tree", "tree_map"]

T = TypeVar("T")


def tree_map(fn: Callable[[Tensor], Any], tree: T) -> T:
    """fn applied to every Tensor of a tree of lists, tuples and dicts (None is kept)."""
    if tree is None:
        return None
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return type(tree)((key, tree_map(fn, value)) for key, value in tree.items())
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # a namedtuple
        return type(tree)(*(tree_map(fn, value) for value in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, value) for value in tree)
    raise TypeError(f"loss scaling works on mpgrad Tensors in lists, tuples and dicts; "
                    f"got a {type(tree).__name__}")


def _leaves(tree: Any) -> list:
    """The leaves of a tree, in order (None is no leaf)."""
    if tree is None:
        return []
    if isinstance(tree, dict):
        return [leaf for value in tree.values() for leaf in _leaves(value)]
    if isinstance(tree, (list, tuple)):
        return [leaf for value in tree for leaf in _leaves(value)]
    return [tree]


def _structure(tree: Any) -> Any:
    """The tree with every leaf replaced by its kind (shape and format for a Tensor)."""
    if isinstance(tree, dict):
        return type(tree), tuple((k, _structure(v)) for k, v in tree.items())
    if isinstance(tree, (list, tuple)):
        return type(tree), tuple(_structure(v) for v in tree)
    if isinstance(tree, Tensor):
        return Tensor, tree.shape, tree.dtype
    return type(tree)


def _times(tree: T, factor: np.float32) -> T:
    """Every Tensor of the tree times a float32 constant (a recorded multiply, plain promotion)."""
    constant = Tensor._wrap(np.asarray(factor, dtype=np.float32), float32)
    with autocast(enabled=False):
        return tree_map(lambda x: mul(x, constant), tree)


def _positive_float32(value: Any, name: str) -> np.float32:
    """value as a float32 scalar; a ValueError unless it is finite and > 0 there."""
    if isinstance(value, Tensor):
        value = value.to_float64()
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be one real number, got {value!r}")
    with np.errstate(over="ignore", under="ignore"):
        scalar = np.float32(array.reshape(()).astype(np.float64))
    if not (np.isfinite(scalar) and scalar > 0):
        raise ValueError(f"{name} must be a finite number > 0 in float32, got {value!r} "
                         f"(float32 {float(scalar)!r})")
    return scalar


def _as_bool(grads_finite: Any) -> bool:
    """A boolean scalar (Python or NumPy bool) as a Python bool."""
    array = np.asarray(grads_finite)
    if array.ndim != 0 or array.dtype != np.bool_:
        raise TypeError(f"grads_finite must be a boolean scalar such as all_finite(grads), "
                        f"got {grads_finite!r}")
    return bool(array)


@dataclass(frozen=True)
class NoOpLossScale:
    """A loss scale of 1 that does nothing."""

    @property
    def loss_scale(self) -> int:
        """Always 1."""
        return 1

    def scale(self, tree: T) -> T:
        """The tree unchanged."""
        return tree

    def unscale(self, tree: T) -> T:
        """The tree unchanged."""
        return tree

    def adjust(self, grads_finite: Any) -> NoOpLossScale:
        """self."""
        _as_bool(grads_finite)
        return self


@dataclass(frozen=True)
class StaticLossScale:
    """Scale and unscale by a fixed float32 constant."""

    loss_scale: np.float32

    def __post_init__(self) -> None:
        object.__setattr__(self, "loss_scale", _positive_float32(self.loss_scale, "loss_scale"))

    def scale(self, tree: T) -> T:
        """Every Tensor times loss_scale."""
        return _times(tree, self.loss_scale)

    def unscale(self, tree: T) -> T:
        """Every Tensor times float32(1 / loss_scale) (a float32 division, then a multiply)."""
        return _times(tree, np.float32(1) / self.loss_scale)

    def adjust(self, grads_finite: Any) -> StaticLossScale:
        """self."""
        _as_bool(grads_finite)
        return self


@dataclass(frozen=True)
class DynamicLossScale:
    """Grow the scale by factor after period finite steps; divide by factor on a non-finite one."""

    loss_scale: np.float32
    counter: np.int32 = field(default_factory=lambda: np.int32(0))
    period: int = 2000
    factor: int | float = 2
    min_loss_scale: np.float32 = field(default_factory=lambda: np.float32(1.0))

    def __post_init__(self) -> None:
        object.__setattr__(self, "loss_scale", _positive_float32(self.loss_scale, "loss_scale"))
        object.__setattr__(self, "min_loss_scale",
                           _positive_float32(self.min_loss_scale, "min_loss_scale"))
        if isinstance(self.period, bool) or not isinstance(self.period, numbers.Integral) \
                or self.period < 1:
            raise ValueError(f"period must be an integer >= 1, got {self.period!r}")
        if isinstance(self.factor, bool) or not isinstance(self.factor, numbers.Real) \
                or not (math.isfinite(self.factor) and self.factor > 0):
            raise ValueError(f"factor must be a finite number > 0, got {self.factor!r}")
        counter = np.asarray(self.counter)
        if counter.ndim != 0 or counter.dtype.kind not in "iu":
            raise ValueError(f"counter must be an integer, got {self.counter!r}")
        object.__setattr__(self, "counter", np.int32(counter))

    def scale(self, tree: T) -> T:
        """Every Tensor times loss_scale."""
        return _times(tree, self.loss_scale)

    def unscale(self, tree: T) -> T:
        """Every Tensor times float32(1 / loss_scale) (a float32 division, then a multiply)."""
        return _times(tree, np.float32(1) / self.loss_scale)

    def adjust(self, grads_finite: Any) -> DynamicLossScale:
        """The next loss scale, given whether this step's gradients were all finite."""
        finite = _as_bool(grads_finite)
        factor = np.float32(self.factor)  # a Python number is weakly typed: float32, as in JAX
        with np.errstate(over="ignore"):
            if not finite:
                loss_scale = np.maximum(self.min_loss_scale, self.loss_scale / factor)
            elif self.counter == self.period - 1:
                grown = self.loss_scale * factor
                loss_scale = grown if np.isfinite(grown) else self.loss_scale
            else:
                loss_scale = self.loss_scale
        counter = np.int32(((int(self.counter) + 1) % self.period) * int(finite))
        return DynamicLossScale(loss_scale=np.float32(loss_scale), counter=counter,
                                period=self.period, factor=self.factor,
                                min_loss_scale=self.min_loss_scale)


LossScale = Union[NoOpLossScale, StaticLossScale, DynamicLossScale]


def all_finite(tree: Any) -> bool:
    """Whether every value of every Tensor (or array) in the tree is finite (True if none)."""
    for leaf in _leaves(tree):
        values = leaf.to_float64() if isinstance(leaf, Tensor) else np.asarray(leaf, np.float64)
        if not np.isfinite(values).all():
            return False
    return True


def select_tree(pred: Any, a: T, b: T) -> T:
    """a if pred else b, for two trees of the same structure (jmp.select_tree)."""
    choose = _as_bool(pred)
    if _structure(a) != _structure(b):
        raise ValueError("select_tree needs two trees of the same structure, shapes and formats")
    return a if choose else b
