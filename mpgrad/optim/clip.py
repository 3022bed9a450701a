"""Gradient clipping with torch's semantics (torch/nn/utils/clip_grad.py); exact norms."""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from ..autodiff.engine import no_grad
from ..autodiff.policy import autocast, promote
from ..autodiff.tensor import Tensor
from ..numerics.exact import clean_pair, exact_sqrt, exact_sum, two_prod
from ..numerics.formats import Format, float32, float64
from ..numerics.rounding import round_to, to_float64
from ..ops import add, clamp, div, mul, pow, sum

__all__ = ["clip_grad_norm_", "clip_grad_value_", "vector_norm"]


def _params(parameters: Tensor | Iterable[Tensor]) -> list[Tensor]:
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"expected mpgrad Tensors, got {type(p).__name__}")
    return params


def _set_grad(p: Tensor, values: np.ndarray) -> None:
    """Replace p.grad's values (storage of its format) in place, as torch's mul_/clamp_."""
    new = Tensor._wrap(values, p.grad.dtype)
    if p.grad.is_leaf:
        p.grad.copy_(new)
    else:
        p.grad = new


def vector_norm(x: Tensor | np.ndarray, dtype: Format | None = None,
                norm_type: float = 2.0) -> Tensor:
    """The norm_type-norm of x's exact values, rounded once to dtype (default: x's format).

    inf, -inf, 0 and 1: the exact max|x|, min|x|, count of nonzeros, sum|x|, rounded once;
    2: sqrt of the exact sum of squares, rounded once (formats of <= 25 bits: the sum is
    rounded to odd on float64's grid, which keeps its position against every square of a
    midpoint; float64: two roundings); other p > 0: pow(|x|, p), exact sum, pow(., 1/p),
    each correctly rounded to dtype.
    """
    fmt = (x.dtype if isinstance(x, Tensor) else float64) if dtype is None else dtype
    p = float(norm_type)
    if math.isnan(p) or (p < 0 and p != -math.inf):
        raise ValueError(f"norm_type must be >= 0, inf or -inf, got {norm_type}")
    a = np.abs(np.ravel(x.to_float64() if isinstance(x, Tensor) else to_float64(x)))
    if p == math.inf or p == -math.inf:
        exact = (a.max() if p > 0 else a.min()) if a.size else np.float64(0.0)
    elif p == 0:
        exact = np.float64(np.count_nonzero(a))
    elif p == 1:
        exact = exact_sum(a)
    elif p == 2:
        if not np.all(np.isfinite(a)):
            exact = np.float64(np.nan if np.isnan(a).any() else np.inf)
        else:
            hi, lo = clean_pair(*two_prod(a, a))
            squares = exact_sum(np.concatenate([hi, lo]))
            mode = "odd" if fmt.precision <= 25 else "nearest_even"
            exact = exact_sqrt(round_to(squares, float64, mode))
    else:
        with no_grad(), autocast(enabled=False):
            powers = pow(Tensor(a, fmt), p)
            return pow(sum(powers), 1.0 / p)
    return Tensor._wrap(round_to(exact, fmt), fmt)


def clip_grad_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float,
                    norm_type: float = 2.0, error_if_nonfinite: bool = False) -> Tensor:
    """Scale the gradients so that their total norm is at most max_norm; returns the norm.

    As torch: each gradient's norm in its own format; the total is the norm of those norms,
    in the format that holds them all (mpgrad.promote); clip = min((1 / (total + 1e-6)) *
    max_norm, 1), each operation rounded in that format (torch's max_norm / t is
    t.reciprocal() * max_norm); each gradient becomes the exact product gradient * clip,
    rounded once to its format. Every norm is correctly rounded (see vector_norm).
    """
    params = _params(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    max_norm, norm_type = float(max_norm), float(norm_type)
    if not grads:
        return Tensor(0.0, float32)
    norms = [vector_norm(g, g.dtype, norm_type) for g in grads]
    fmt = promote(*{n.dtype for n in norms})
    total = vector_norm(np.array([n.item() for n in norms]), fmt, norm_type)
    if error_if_nonfinite and not math.isfinite(total.item()):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is "
            "non-finite, so it cannot be clipped. To disable this error and scale the "
            "gradients by the non-finite norm anyway, set `error_if_nonfinite=False`")
    with no_grad(), autocast(enabled=False):
        # torch's max_norm / t is Tensor.__rtruediv__: t.reciprocal() * max_norm
        coef = clamp(mul(div(1.0, add(total, 1e-6)), max_norm), max=1.0).item()
    for p in params:
        if p.grad is not None:
            _set_grad(p, round_to(two_prod(p.grad.to_float64(), coef), p.grad.dtype))
    return total


def clip_grad_value_(parameters: Tensor | Iterable[Tensor], clip_value: float) -> None:
    """Clamp every gradient to [-clip_value, clip_value] (exact, then stored in its format)."""
    clip_value = float(clip_value)
    with no_grad(), autocast(enabled=False):
        for p in _params(parameters):
            if p.grad is not None:
                _set_grad(p, clamp(p.grad.detach(), -clip_value, clip_value).data)
