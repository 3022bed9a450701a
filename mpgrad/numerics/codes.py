"""Bit patterns and storage: decode a format's codes to exact float64 values, store them in
the format's storage dtype, and read exact float64 values back from any storage array."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from .formats import Format

__all__ = ["UINT", "nan_code", "decode", "store", "to_float64", "pow2"]

UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}  # unsigned ints by byte width

def pow2(e: np.ndarray) -> np.ndarray:
    """2.0**e for integer arrays -1022 <= e <= 1023, built from the bit pattern."""
    return ((np.asarray(e, dtype=np.int64) + 1023) << 52).view(np.float64)


def nan_code(fmt: Format) -> int:
    """The bit pattern (sign clear) of fmt's canonical NaN."""
    if fmt.nan == "ieee":
        return ((2 ** fmt.exponent_bits - 1) << fmt.fraction_bits) | (1 << (fmt.fraction_bits - 1))
    if fmt.nan == "fn":
        return ((2 ** fmt.exponent_bits - 1) << fmt.fraction_bits) | (2 ** fmt.fraction_bits - 1)
    return 0  # fnuz: the NaN is the pattern of negative zero, sign bit set below


def decode(codes: np.ndarray, fmt: Format) -> np.ndarray:
    """Exact float64 values of int64 bit patterns of fmt."""
    e, m = fmt.exponent_bits, fmt.fraction_bits
    sign = ((codes >> (fmt.bits - 1)) & 1).astype(bool)
    ef = (codes >> m) & (2 ** e - 1)
    mf = codes & (2 ** m - 1)
    with np.errstate(over="ignore"):  # the top exponent field: replaced by inf/NaN below
        val = np.ldexp((mf + (ef > 0) * (1 << m)).astype(np.float64),
                         np.maximum(ef, 1) - fmt.bias - m)
    top = ef == 2 ** e - 1
    if fmt.nan == "ieee":
        val = np.where(top, np.where(mf == 0, np.inf, np.nan), val)
    elif fmt.nan == "fn":
        val = np.where(top & (mf == 2 ** m - 1), np.nan, val)
    elif fmt.nan == "fnuz":
        val = np.where(sign & (ef == 0) & (mf == 0), np.nan, val)
    return np.where(sign, -val, val)


def store(codes: np.ndarray, fmt: Format) -> np.ndarray:
    """The storage array holding the values whose bit patterns are codes."""
    if fmt.native:
        return codes.astype(UINT[fmt.storage.itemsize]).view(fmt.storage)
    return decode(codes, fmt).astype(fmt.storage)


def to_float64(x) -> np.ndarray:
    """Exact float64 copy of an array of any floating storage dtype (or small integers)."""
    a = np.asarray(x)
    if a.dtype == np.float64:
        return a
    if a.dtype.kind in "iub":
        out = a.astype(np.float64)
        if not np.array_equal(out.astype(a.dtype), a) or a.dtype.kind != "b" and np.any(
                np.abs(out) > 2.0 ** 53):
            raise ValueError("integers beyond 2**53 are not exact in float64; "
                             "pass them as a (hi, lo) double-double pair")
        return out
    if a.dtype.kind == "f" and a.dtype.itemsize <= 8 or a.dtype in _ML_FLOATS:
        with np.errstate(invalid="ignore"):  # signalling NaNs stay NaN
            return a.astype(np.float64)
    raise TypeError(f"cannot take exact values from dtype {a.dtype}: use a float64/float32/"
                    "float16 or ml_dtypes array, or a (hi, lo) float64 pair")


_ML_FLOATS = {np.dtype(getattr(ml_dtypes, n)) for n in dir(ml_dtypes)
              if n.startswith(("float", "bfloat"))}
