"""Tensor's operators and methods, bound in one place: t + u is mpgrad.add(t, u), t.exp() is
mpgrad.exp(t), t.backward() is the engine's backward, and so on."""

from __future__ import annotations

from ..autodiff import engine
from ..autodiff.tensor import Tensor
from ..numerics.formats import Format
from . import composite, linalg, reduce, shape
from . import elementwise as ew

__all__ = ["METHODS"]

# Ops reachable as Tensor methods: t.exp(), t.sum(axis), t.reshape(2, 3), ...
METHODS = {f.__name__: f for f in (
    composite.gelu, composite.silu, composite.softplus, ew.abs, ew.add, ew.clamp, ew.div,
    ew.erf, ew.exp, ew.log, ew.maximum, ew.minimum, ew.mul, ew.neg, ew.pow, ew.relu,
    ew.sigmoid, ew.sign, ew.sqrt, ew.sub, ew.tanh, linalg.matmul, reduce.mean, reduce.sum,
    shape.broadcast_to, shape.permute, shape.reshape, shape.transpose)}
METHODS.update(expand=shape.broadcast_to, cast=engine.cast)


def _method(fn):
    return lambda self, *args, **kwargs: fn(self, *args, **kwargs)


def _reflected(fn):
    return lambda self, other: fn(other, self)


def backward(self: Tensor, grad=None, retain_graph: bool = False) -> None:
    """Accumulate d(self)/d(leaf) into every leaf's .grad (grad defaults to 1 for a scalar)."""
    engine.backward(self, grad, retain_graph)


def to(self: Tensor, dtype: Format | str, mode: str = "nearest_even", *, rng=None) -> Tensor:
    """This tensor rounded to another format (differentiable; see mpgrad.cast)."""
    return engine.cast(self, dtype, mode, rng=rng)


for _name, _fn in METHODS.items():
    setattr(Tensor, _name, _method(_fn))
for _name, _fn in {"add": ew.add, "sub": ew.sub, "mul": ew.mul, "truediv": ew.div,
                   "matmul": linalg.matmul}.items():
    setattr(Tensor, f"__{_name}__", _method(_fn))
    setattr(Tensor, f"__r{_name}__", _reflected(_fn))
for _name, _fn in {"pow": ew.pow, "neg": ew.neg, "abs": ew.abs, "getitem": shape.getitem,
                   "lt": ew.lt, "le": ew.le, "gt": ew.gt, "ge": ew.ge, "eq": ew.eq,
                   "ne": ew.ne}.items():
    setattr(Tensor, f"__{_name}__", _method(_fn))
Tensor.backward, Tensor.to = backward, to
Tensor.T = property(lambda self: shape.transpose(self), doc="The transpose (axes reversed).")
