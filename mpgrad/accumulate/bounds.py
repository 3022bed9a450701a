"""A rigorous elementwise bound on the error of a matrix product under an accumulation model."""

from __future__ import annotations

import numpy as np

from ..numerics.exact import exact_sum
from ..numerics.formats import Format, as_format, float64
from ..numerics.rounding import round_to, to_float64
from .drivers import check_inputs, products
from .models import Exact, error_bound
from .rounding_error import U53, round_params

__all__ = ["accumulation_error_bound", "operands", "values", "abs_up", "all_products"]


def values(x) -> np.ndarray:
    """The exact float64 values of an array (or of anything with .to_float64(), a Tensor)."""
    a = x.to_float64() if hasattr(x, "to_float64") else to_float64(x)
    return np.array(a, dtype=np.float64)


def abs_up(pair) -> np.ndarray:
    """An upper bound on |hi + lo| of a rounding-equivalent pair, in float64."""
    up = to_float64(round_to(pair, float64, "up"))
    down = to_float64(round_to(pair, float64, "down"))
    return np.maximum(up, -down)


def all_products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The exact products a[:, k] * b[k, :] stacked on a first axis (K, M, N)."""
    return products(np.ascontiguousarray(a.T), b, 0, a.shape[1])


def operands(A, B) -> tuple[np.ndarray, np.ndarray]:
    """A and B as exact float64 (M, K) and (K, N) arrays, checked as the bounds need."""
    a, b = values(A), values(B)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"need (M, K) and (K, N) arrays, got {a.shape}, {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("error bounds need finite inputs")
    check_inputs(a, 26), check_inputs(b, 26)  # as matmul_model: the products are exact
    return a, b


def accumulation_error_bound(A, B, model, out: Format | str | None = None,
                             out_mode: str = "nearest_even") -> np.ndarray:
    """A rigorous elementwise bound on |result - A @ B| for the model's result.

    A (M, K) and B (K, N) hold exact values (float64 arrays or Tensors, at most 26
    significant bits, finite, as matmul_model needs).  The result is the model's
    accumulator-format value (matmul_model(A, B, model)), then, if out is given, that
    value rounded once to out in out_mode.  inf where overflow cannot be excluded.
    See each model's bound method for the derivations (Higham ch. 2-4; Fasi et
    al. 2021; Khattak & Mikaitis, arXiv 2512.07004).

    The bound is itself computed in float64.  |A| @ |B| by BLAS, in any order, is within
    gamma_K(2^-53) <= 2 K 2^-53 of the true sum of |products| (all positive, no
    underflow: products are >= 2^-1000), so each such sum is multiplied by
    1 + 4 (K + 2) 2^-53.  The rest is a chain of at most ~8 K additions and
    multiplications of non-negative numbers, each losing at most a factor (1 - 2^-53), or
    2^-1075 in absolute terms when subnormal: the final factor 1 + 32 (K + 16) 2^-53 and
    the final absolute 32 (K + 16) 2^-1074 cover that.
    """
    a, b = operands(A, B)
    M, K, N = a.shape[0], a.shape[1], b.shape[1]
    aa, ab = np.abs(a), np.abs(b)

    def T(k0: int, k1: int) -> np.ndarray:
        return (aa[:, k0:k1] @ ab[k0:k1, :]) * (1 + 4 * (k1 - k0 + 2) * U53)

    s_abs = None
    if isinstance(model, Exact) and K:  # |s| itself, for the single rounding of Exact
        s_abs = abs_up(exact_sum(all_products(a, b), axis=0))
    err, mag = error_bound(model, K, T, (M, N), s_abs)
    if out is not None:
        fmt = as_format(out)
        delta, eta = round_params(fmt, out_mode)
        err = np.where(mag > fmt.max, np.inf, err + delta * mag + eta)
    fac = 1 + 32 * (K + 16) * U53
    return err * fac + 32 * (K + 16) * 2.0 ** -1074
