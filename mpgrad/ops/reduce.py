"""Reductions: sum and mean under an accumulation model (default: exact, rounded once to
float32 or float64, then to the compute format; see mpgrad.accumulate.default_model)."""

from __future__ import annotations

import numpy as np

from ..accumulate import Exact, default_model, reduce_sum
from ..autodiff.engine import Op, apply
from ..autodiff.policy import accumulate_model
from ..numerics.exact import (
    clean_pair,
    exact_sum,
    normalize_axes,
    round_odd,
    two_prod,
    two_sum,
)
from ..numerics.rounding import round_to
from .shape import broadcast_to, reshape

__all__ = ["sum", "mean"]


def _axes(ndim: int, axis) -> tuple:
    """axis as sorted non-negative axes (NumPy's rules: see mpgrad.numerics.exact)."""
    return tuple(sorted(normalize_axes(ndim, axis)))


def _count(shape: tuple, axes: tuple) -> int:
    return int(np.prod([shape[a] for a in axes])) if axes else 1


def _flatten(a: np.ndarray, axes: tuple, keepdims: bool) -> tuple:
    """a with the reduced axes moved last and flattened (C order), and the result's shape."""
    kept = [i for i in range(a.ndim) if i not in axes]
    flat = np.transpose(a, kept + list(axes)).reshape(  # the count, not -1: size 0 is fine
        [a.shape[i] for i in kept] + [_count(a.shape, axes)])
    shape = tuple(1 if i in axes else n for i, n in enumerate(a.shape)) if keepdims else \
        tuple(a.shape[i] for i in kept)
    return flat, shape


def _exact_sum(a: np.ndarray, axes: tuple, keepdims: bool) -> tuple:
    """The exact sum over axes as a pair."""
    flat, shape = _flatten(a, axes, keepdims)
    hi, lo = exact_sum(flat, axis=-1)
    return hi.reshape(shape), lo.reshape(shape)


def _spread(ctx, g):
    """g broadcast back over the reduced axes of the input."""
    shape, axes = ctx.inputs[0].shape, ctx.params["axes"]
    kept = tuple(1 if i in axes else n for i, n in enumerate(shape))
    return broadcast_to(reshape(g, kept), shape)


def _divide_pair(hi: np.ndarray, lo: np.ndarray, n: int) -> tuple:
    """(hi + lo) / n as a pair that rounds like the exact quotient (to <= 53 bits, any mode).

    q1 = fl(hi / n); the remainder R = hi + lo - q1*n is exact as a pair; q2 = fl(R / n) is
    made odd when inexact (round to odd, Boldo & Melquiond 2008), so that every rounding
    boundary of a format of <= 53 bits, an even multiple of ulp(q2), is decided correctly.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        q1 = hi / n
        p, pe = two_prod(q1, np.float64(n))
        r, re = two_sum(hi - p, lo)  # hi - p is exact: q1*n is within an ulp of hi
        r, re = two_sum(r, re - pe)
        q2 = r / n
        p2, pe2 = two_prod(q2, np.float64(n))
        q2 = round_odd(q2, ((r - p2) - pe2) + re)  # the sign of R - q2*n decides the nudge
    return clean_pair(q1, q2)  # -0 / n stays -0


def _sum_forward(c, a, axes, keepdims, accumulate):
    """The model's sum of the terms, in C order of the reduced axes, in its acc format."""
    flat, shape = _flatten(a, axes, keepdims)
    return reduce_sum(flat, -1, accumulate or default_model(c)).reshape(shape)


def _mean_forward(c, a, axes, keepdims, accumulate):
    """Exact: the exact mean rounded once to acc. Otherwise the model's sum divided by the
    count, rounded once to acc (the count is never rounded). No terms: NaN, as torch."""
    model, n = accumulate or default_model(c), _count(a.shape, axes)
    if n == 0:
        if not c.has_nan:
            raise ValueError(f"the mean over an empty axis (input shape {a.shape}) is NaN, "
                             f"which {c.name} cannot hold; compute it in a format with NaN, "
                             f"e.g. x.to('float32'), or take the sum")
        return np.full(_flatten(a, axes, keepdims)[1], np.nan)
    if isinstance(model, Exact):
        pair = _divide_pair(*_exact_sum(a, axes, keepdims), n)
    else:
        s = _sum_forward(c, a, axes, keepdims, model)
        pair = _divide_pair(s, np.zeros_like(s), n)
    return round_to(pair, model.acc, model.mode)  # acc's storage: apply rounds it to c


_SUM = Op("sum", _sum_forward, lambda ctx, g: (_spread(ctx, g),))
_DIVIDE_BY_COUNT = Op("divide_by_count", lambda c, a, n: _divide_pair(a, np.zeros_like(a), n),
                      lambda ctx, g: (divide_by_count(g, ctx.args[0]),),
                      tensor_args=1)
_MEAN = Op("mean", _mean_forward, lambda ctx, g: (_spread(ctx, _per_term(
               g, _count(ctx.inputs[0].shape, ctx.params["axes"]))),))


def _per_term(g, n: int):
    """g / n: each term's share of the mean's gradient (no terms: g, spread over nothing)."""
    return divide_by_count(g, n) if n else g


def divide_by_count(a, n: int):
    """a / n for a positive integer n, rounded once (n is never rounded to the format)."""
    return apply(_DIVIDE_BY_COUNT, a, int(n))


def sum(a, axis=None, keepdims: bool = False, accumulate=None):
    """The sum over axis under the model (default: exact, rounded once to float32/64)."""
    return apply(_SUM, a, axes=_axes(np.ndim(a), axis), keepdims=keepdims,
                 accumulate=accumulate_model(accumulate))


def mean(a, axis=None, keepdims: bool = False, accumulate=None):
    """The mean over axis: the exact mean by default, else the model's sum / count."""
    return apply(_MEAN, a, axes=_axes(np.ndim(a), axis), keepdims=keepdims,
                 accumulate=accumulate_model(accumulate))
