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


def pairwise_depth(n: int, block: int, rule: str = "halving") -> int:
    """Most roundings on a leaf's path in Pairwise(block, rule) over n >= 1 terms.

    "halving": a leaf block of n <= block terms: each term is rounded to acc (1) and the
    first one then passes the n - 1 additions (1 + n - 1 = n); a split adds one rounding
    above the deeper half, which is the larger one, n - n//2.  "numpy": a run of n < 8
    passes 1 + n roundings (the first addition is to +0); up to block, a partial sum's
    first term passes 1 + (n//8 - 1) additions, the 3 levels combining the 8 sums and the
    n mod 8 left over; a split adds one above the deeper part; then the final + 0.
    """
    if rule == "numpy":
        def depth(m: int) -> int:
            if m < 8:
                return 1 + m
            if m <= block:
                return 1 + (m // 8 - 1) + 3 + m % 8
            h = m // 2 - (m // 2) % 8
            return 1 + max(depth(h), depth(m - h))
        return depth(n) + 1
    depth = 1
    while n > block:
        n, depth = n - n // 2, depth + 1
    return depth - 1 + n
