"""Drivers: matrix products, dot products and sums of exact values under an accumulation model."""

from __future__ import annotations

import numpy as np

from ..numerics.exact import exact_sum
from ..numerics.exact_matmul import exact_matmul
from ..numerics.formats import Format, float32, promote
from ..numerics.rounding import round_to, to_float64
from .models import MODELS, Chunked, Exact, Model, Sequential, uses_exponents
from .steps import NO_EXPONENT, Terms

__all__ = ["default_model", "check_inputs", "products", "input_exponents", "product_exponents",
           "matmul_model", "dot", "reduce_sum"]

_LIMIT = 2.0 ** 500  # finite nonzero inputs must lie in [2**-500, 2**500]: nothing over/underflows


def products(at: np.ndarray, b: np.ndarray, k0: int, k1: int) -> np.ndarray:
    """The exact products at[k, i] * b[k, j] for k0 <= k < k1, stacked (k, M, N) (inputs of
    at most 26 significant bits; inf * 0 is NaN, as IEEE says)."""
    with np.errstate(invalid="ignore"):
        return at[k0:k1, :, None] * b[k0:k1, None, :]


def default_model(compute: Format) -> Exact:
    """The model used when none is given: exact, rounded once to float32 (float64 when
    computing in a format float32 does not hold), then to the compute format."""
    return Exact(promote(float32, compute))


def _bits_at_most(v: np.ndarray, bits: int) -> bool:
    """Whether every finite value of v has at most `bits` significant bits."""
    c = v * (2.0 ** (53 - bits) + 1)  # Veltkamp: the high part keeps `bits` bits
    return not np.any(v - (c - (c - v)) != 0)


def check_inputs(x: np.ndarray, bits: int | None = None) -> None:
    """Refuse finite nonzero values outside [2**-500, 2**500] (or with more than bits bits)."""
    fin = np.isfinite(x) & (x != 0)
    v = np.abs(x[fin])
    if v.size and (v.max() > _LIMIT or v.min() < 1 / _LIMIT):
        raise ValueError("accumulation models need finite nonzero inputs in [2**-500, 2**500]")
    if bits is not None and v.size and not _bits_at_most(v, bits):
        raise ValueError(f"matmul inputs must have at most {bits} significant bits (the "
                         "values of float32 or a narrower format), so products are exact")


def _float32_products(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether every product a_ik * b_kj is a normal float32 or zero, exactly (finite inputs
    of at most 12 significant bits, magnitudes in range): then float32 arithmetic is exact
    for the products and correctly rounded for each sum."""
    va, vb = (np.abs(x[x != 0]) for x in (a, b))
    if not (va.size and vb.size):
        return False
    return bool(np.all(np.isfinite(va)) and np.all(np.isfinite(vb))
                and va.max() * vb.max() < 2.0 ** 127 and va.min() * vb.min() >= 2.0 ** -126
                and _bits_at_most(va, 12) and _bits_at_most(vb, 12))


def _sequential_float32(a: np.ndarray, b: np.ndarray, model: Sequential) -> np.ndarray:
    """Sequential(float32) by NumPy float32 arithmetic (IEEE, round to nearest even): each
    product is exact in float32, each addition one correct rounding, in the model's order."""
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    s = np.zeros((a.shape[0], b.shape[1]), dtype=np.float32)
    t = np.empty_like(s)
    with np.errstate(over="ignore", invalid="ignore"):
        for k in model.indices(a.shape[1]):
            np.multiply(a32[:, k, None], b32[None, k, :], out=t)
            np.add(s, t, out=s)
    return s.astype(np.float64)


def _check_model(model) -> None:
    if not isinstance(model, MODELS):
        raise ValueError(f"expected an accumulation model (Exact, Sequential, Pairwise, "
                         f"BlockFMA, Chunked), got {model!r}")


_TILE = 1 << 14  # outputs reduced at a time by a block model (its term stack stays small)


def input_exponents(x: np.ndarray, fmt: Format | None = None, model=None) -> np.ndarray:
    """Each value's exponent floor(log2|x|) as a matrix unit reads it: at least the model's
    input_emin or else fmt's minimum exponent (a subnormal input takes it); a zero's is
    the model's zero_exponent when it has one (AMD CDNA3: -126), else NO_EXPONENT."""
    mag = np.abs(x)
    used = (mag > 0) & np.isfinite(mag)
    e = np.frexp(np.where(used, mag, 1.0))[1] - 1
    unit = model.inner if isinstance(model, Chunked) else model
    floor = getattr(unit, "input_emin", None)
    if floor is None and fmt is not None:
        floor = fmt.min_exponent
    if floor is not None:
        e = np.maximum(e, floor)
    zero = getattr(unit, "zero_exponent", None)
    return np.where(used, e, NO_EXPONENT if zero is None else np.where(mag == 0, zero,
                                                                       NO_EXPONENT)
                    ).astype(np.int64)


def product_exponents(at: np.ndarray, b: np.ndarray, formats: tuple, model) -> Terms:
    """(k0, k1) -> the exponents a matrix unit reads for the products at[k, i] * b[k, j]:
    the sums of their inputs' exponents (input_exponents), stacked as products() stacks."""
    eat, eb = input_exponents(at, formats[0], model), input_exponents(b, formats[1], model)
    return lambda k0, k1: eat[k0:k1, :, None] + eb[k0:k1, None, :]


def _matmul2(a: np.ndarray, b: np.ndarray, model: Model, formats: tuple) -> np.ndarray:
    """One (M, K) @ (K, N) product under a model other than Exact (formats: the inputs'
    formats, for a model that aligns by their exponents)."""
    if (isinstance(model, Sequential) and model.acc == float32
            and model.mode == "nearest_even" and _float32_products(a, b)):
        return _sequential_float32(a, b, model)
    rows = max(1, a.shape[0] if isinstance(model, Sequential) else _TILE // max(b.shape[1], 1))
    out = np.empty((a.shape[0], b.shape[1]))
    for i in range(0, a.shape[0], rows):
        at = np.ascontiguousarray(a[i:i + rows].T)
        terms = (a.shape[1], lambda k0, k1, at=at: products(at, b, k0, k1),
                 (at.shape[1], b.shape[1]))
        if uses_exponents(model):
            out[i:i + rows] = model.reduce(*terms, product_exponents(at, b, formats, model))
        else:
            out[i:i + rows] = model.reduce(*terms)
    return out


def _float32_by_bound(a: np.ndarray, b: np.ndarray, max_bits: int | None) -> tuple | None:
    """An exact value rounding like the exact 2-D a @ b to float32 (nearest even) with the
    same IEEE flags: float64 BLAS where a rigorous error bound decides, the exact path
    elsewhere; None where the bound does not apply (it needs finite inputs of at most 26
    significant bits, max_bits if given, in [2**-300, 2**300): exact float64 products).

    For exact products, any order of summation, FMA or not, gives |s - a @ b| <=
    gamma_K * (|a| @ |b|), gamma_K = K u / (1 - K u), u = 2**-53 (Higham 2002, sec. 3.1),
    and the computed t = fl(|a| @ |b|) is at least (1 - gamma_K) times the exact one. Where
    both ends of the interval s -+ e round to one float32 r and r lies outside it, the exact
    value rounds to r inexactly, as s does: s stands for it. Elsewhere the sum is exact.
    """
    if a.ndim != 2 or b.ndim != 2:
        return None
    mags = np.abs(a), np.abs(b)
    for m in mags:
        if m.size and not (m.max() < 2.0 ** 300                 # (false for NaN and inf)
                           and np.min(m, where=m > 0, initial=1.0) >= 2.0 ** -300):
            return None
        if max_bits is None and not _bits_at_most(m, 26):
            return None
    gamma = a.shape[1] * 2.0 ** -53 / (1 - a.shape[1] * 2.0 ** -53)
    s, t = a @ b, mags[0] @ mags[1]
    e = t * (gamma / (1 - gamma) * (1 + 2.0 ** -40))  # the slack covers this line's roundings
    lo, hi = np.nextafter(s - e, -np.inf), np.nextafter(s + e, np.inf)
    with np.errstate(over="ignore"):  # IEEE conversions (nearest even); inf beyond the max
        r, lo32, hi32 = s.astype(np.float32), lo.astype(np.float32), hi.astype(np.float32)
    rv = r.astype(np.float64)
    sure = (lo32.view(np.int32) == hi32.view(np.int32)) & ((rv < lo) | (rv > hi))
    value = np.where(t == 0, 0.0, s)  # no nonzero product: the exact sum is +0
    sure |= t == 0
    low = np.zeros_like(value)
    i, j = np.nonzero(~sure)  # (few) the exact sums of their exact products
    if i.size * a.shape[1] > 1 << 22:
        return None  # too many for one batch of products: the exact matmul is cheaper
    if i.size:
        value[i, j], low[i, j] = exact_sum(a[i] * b.T[j], axis=1)
    return value, low


def matmul_model(a, b, model: Model, storage: bool = False, max_bits: int | None = None,
                 formats: tuple = (None, None)) -> np.ndarray:
    """a (..., M, K) @ b (..., K, N) of exact values under the model, as acc-format float64
    (storage=True: Exact's result in acc's storage dtype, saving a conversion; max_bits:
    see exact_matmul; formats: a's and b's formats, whose minimum exponents a model with
    align="exponents" gives to subnormal inputs).

    Exact takes the error-free BLAS path (mpgrad.exact_matmul) for any float64 inputs;
    the other models need inputs of at most 26 significant bits (exact float64 products).
    """
    _check_model(model)
    a, b = to_float64(a), to_float64(b)
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul_model needs (..., M, K) and (..., K, N) arrays, got "
                         f"{a.shape}, {b.shape}")
    if isinstance(model, Exact):
        pair = None
        # (inputs of up to 12 bits, as float16's, take one or two exact BLAS products)
        if model.acc == float32 and model.mode == "nearest_even" and 12 < (max_bits or 26) <= 26:
            pair = _float32_by_bound(a, b, max_bits)
        if pair is None:
            pair = exact_matmul(a, b, max_bits)
        stored = round_to(pair, model.acc, model.mode)
        return stored if storage else to_float64(stored)
    check_inputs(a, 26), check_inputs(b, 26)
    unit = model.inner if isinstance(model, Chunked) else model
    if getattr(unit, "flush", False):  # CDNA2 reads inputs below the smallest normal as +0
        a, b = (x if f is None else np.where(np.abs(x) < f.smallest_normal, 0.0, x)
                for x, f in zip((a, b), formats))
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a, b = np.broadcast_to(a, batch + a.shape[-2:]), np.broadcast_to(b, batch + b.shape[-2:])
    out = np.empty(batch + (a.shape[-2], b.shape[-1]))
    for i in np.ndindex(batch):
        out[i] = _matmul2(a[i], b[i], model, formats)
    return out


def dot(a, b, model: Model) -> np.ndarray:
    """Same as matmul_model (1-D operands are treated as a row and a column)."""
    a, b = to_float64(a), to_float64(b)
    out = matmul_model(a.reshape(1, -1) if a.ndim == 1 else a,
                       b.reshape(-1, 1) if b.ndim == 1 else b, model)
    out = out[0] if a.ndim == 1 else out
    return out[..., 0] if b.ndim == 1 else out


def reduce_sum(x, axis: int, model: Model) -> np.ndarray:
    """The sum of exact values x along one axis under the model, as acc-format float64."""
    _check_model(model)
    x = to_float64(x)
    if not isinstance(model, Exact):  # exact_sum takes any float64 values
        check_inputs(x)
    xs = np.moveaxis(x, axis, 0)
    return model.reduce(xs.shape[0], lambda k0, k1: xs[k0:k1], xs.shape[1:])
