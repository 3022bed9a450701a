"""The error of one rounding and of trees of roundings (Higham, "Accuracy and Stability of
Numerical Algorithms", ch. 2-4): the pieces each accumulation model's error bound is made of."""

from __future__ import annotations

import numpy as np

from ..numerics.formats import Format

__all__ = ["U53", "round_params", "gamma", "tree_bound", "pairwise_depth"]

U53 = 2.0 ** -53  # float64's unit roundoff: the arithmetic the bound itself is computed in


def round_params(fmt: Format, mode: str) -> tuple[float, float]:
    """(delta, eta) of one rounding to fmt in mode: |fl(x) - x| <= delta |x| + eta."""
    if mode in ("nearest_even", "nearest_away"):
        return fmt.unit_roundoff, (fmt.smallest_subnormal / 2 if fmt.subnormals
                                   else fmt.smallest_subnormal)
    if mode in ("toward_zero", "up", "down", "odd"):
        return fmt.eps, fmt.smallest_subnormal
    raise ValueError(f"no error bound for rounding mode {mode!r} (stochastic rounding is "
                     "not an accumulation model)")


def gamma(d: int, delta: float) -> float:
    """gamma_d = d delta / (1 - d delta), inf when d delta >= 1 (no bound)."""
    x = d * delta
    return x / (1 - x) if x < 1 else np.inf


def tree_bound(T: np.ndarray, d: int, R: int, fmt: Format, mode: str) -> np.ndarray:
    """gamma_d T + R eta / (1 - d delta): a tree of R roundings, at most d on any path."""
    delta, eta = round_params(fmt, mode)
    if d * delta >= 1:
        return np.full(T.shape, np.inf)
    return gamma(d, delta) * T + R * eta / (1 - d * delta)


def pairwise_depth(n: int, block: int) -> int:
    """Most roundings on a leaf's path in Pairwise(block) over n >= 1 terms.

    A leaf block of n <= block terms: each term is rounded to acc (1) and the first one
    then passes the n - 1 additions (1 + n - 1 = n); a split adds one rounding above the
    deeper half, which is the larger one, n - n//2.  This is <= n, so gamma_K also holds.
    """
    depth = 1
    while n > block:
        n, depth = n - n // 2, depth + 1
    return depth - 1 + n
