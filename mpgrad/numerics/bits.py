"""Bit patterns, neighbours and ulps of values of a Format, and a readable description."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .codes import UINT, decode, nan_code, store, to_float64
from .formats import Format, as_format
from .rounding import RoundingStats, encode, round_to

__all__ = ["to_bits", "from_bits", "ulp", "next_up", "next_down", "ulp_distance",
           "describe", "Description"]


def _codes(x, fmt: Format) -> np.ndarray:
    """int64 bit patterns of values of fmt; a value the format lacks is an error."""
    a = np.asarray(x)
    if a.dtype == fmt.storage and fmt.native:
        return a.view(UINT[a.dtype.itemsize]).astype(np.int64)
    stats = RoundingStats()
    codes = encode(a, fmt, stats)
    if stats.inexact or stats.invalid:
        raise ValueError(f"not every value is a {fmt.name} value; round it first with "
                         f"round_to(x, {fmt.name!r})")
    return codes


def to_bits(x, dtype: Format | str) -> np.ndarray:
    """The bit patterns of dtype values, as unsigned integers of the format's width."""
    fmt = as_format(dtype)
    width = next(w for w in (1, 2, 4, 8) if fmt.bits <= 8 * w)
    return _codes(x, fmt).astype(UINT[width])


def from_bits(bits, dtype: Format | str) -> np.ndarray:
    """The dtype storage array whose values have the given bit patterns."""
    fmt = as_format(dtype)
    b = np.asarray(bits)
    if b.dtype.kind not in "iu":
        raise TypeError(f"bit patterns must be integers, got dtype {b.dtype}")
    codes = b.astype(np.int64) if fmt.bits < 64 else b.astype(np.uint64).view(np.int64)
    if fmt.bits < 64 and (np.any(codes < 0) or np.any(codes >= 1 << fmt.bits)):
        raise ValueError(f"{fmt.name} bit patterns lie in [0, 2**{fmt.bits})")
    return store(codes, fmt)


def _keys(x, fmt: Format) -> np.ndarray:
    """A monotone integer key: consecutive values of fmt get consecutive keys, +-0 get 0."""
    codes = _codes(x, fmt)
    if np.isnan(decode(codes, fmt)).any():
        raise ValueError("NaN has no place among the values of a format")
    mag = np.maximum((codes & ((1 << (fmt.bits - 1)) - 1)) - _skipped(fmt), 0)
    return np.where((codes >> (fmt.bits - 1)) & 1, -mag, mag)


def _skipped(fmt: Format) -> int:
    """How many codes (the subnormal ones) a format without subnormals leaves out."""
    return 0 if fmt.subnormals else (1 << fmt.fraction_bits) - 1


def _from_keys(keys: np.ndarray, negative_zero: np.ndarray, fmt: Format) -> np.ndarray:
    """Values of fmt from keys; past +-inf (or +-max without inf) NaN, or +-max without NaN."""
    top = fmt.max_code + (1 if fmt.infinities else 0) - _skipped(fmt)
    mag = np.minimum(np.abs(keys), top)
    mag = np.where(mag > 0, mag + _skipped(fmt), 0)
    neg = (keys < 0) | ((keys == 0) & negative_zero & fmt.signed_zero)
    codes = mag | (neg.astype(np.int64) << (fmt.bits - 1))
    if fmt.has_nan and not fmt.infinities:
        codes = np.where(np.abs(keys) > top, nan_code(fmt) | (fmt.nan == "fnuz") << (fmt.bits - 1),
                         codes)
    return store(codes, fmt)


def next_up(x, dtype: Format | str) -> np.ndarray:
    """The least value of dtype above x (IEEE nextUp); past max: inf, else NaN, else max."""
    fmt = as_format(dtype)
    return _from_keys(_keys(x, fmt) + 1, np.ones(np.shape(x), bool), fmt)


def next_down(x, dtype: Format | str) -> np.ndarray:
    """The greatest value of dtype below x (IEEE nextDown)."""
    fmt = as_format(dtype)
    return _from_keys(_keys(x, fmt) - 1, np.zeros(np.shape(x), bool), fmt)


def ulp_distance(a, b, dtype: Format | str) -> np.ndarray:
    """How many steps of dtype lead from a to b (b - a in ulps; +0 and -0 are 0 apart)."""
    fmt = as_format(dtype)
    return _keys(b, fmt) - _keys(a, fmt)


def ulp(x, dtype: Format | str) -> np.ndarray:
    """The gap 2**(max(e, emin) - fraction_bits) between values of dtype in the binade of x."""
    fmt = as_format(dtype)
    v = np.abs(to_float64(x))
    e = np.frexp(v)[1] - 1
    gap = np.where(v < fmt.smallest_normal, fmt.smallest_subnormal,
                   np.ldexp(1.0, np.maximum(e, fmt.min_exponent) - fmt.fraction_bits))
    return np.where(np.isfinite(v), gap, np.nan)


@dataclass(frozen=True)
class Description:
    """The fields of one value of a format, for teaching, and what the rounding did to it."""

    format: Format
    input: float
    value: float
    bits: str
    sign: int
    exponent_field: int
    fraction_field: int
    kind: str
    overflow: bool     # beyond the finite range: a finite input rounded past max, or an
                       # infinity in a format without one (the result: inf, NaN or max)
    sign_lost: bool    # a negative input (or -0) whose result is +0 (formats without -0)

    @property
    def became_nan(self) -> bool:
        """Whether a value that is not NaN came out NaN (overflow in a format without inf)."""
        return self.kind == "nan" and not np.isnan(self.input)

    def __str__(self) -> str:
        f = self.format
        e, m = f.exponent_bits, f.fraction_bits
        lines = [f"{self.input!r} in {f.name} (e{e}m{m}, bias {f.bias}): {self.kind}",
                 f"  bits      {self.bits[0]} {self.bits[1:1 + e]} {self.bits[1 + e:]}"
                 "  (sign exponent fraction)"]
        if self.kind in ("normal", "subnormal"):
            lead = 1 if self.kind == "normal" else 0
            exp = max(self.exponent_field, 1) - f.bias
            lines.append(f"  value     (-1)^{self.sign} * {lead}.{self.bits[1 + e:] or '0'}b"
                         f" * 2^{exp} = {self.value!r}")
        else:
            lines.append(f"  value     {self.value!r}")
        if np.isfinite(self.input) and np.isfinite(self.value) and self.value != self.input:
            lines.append(f"  rounded   error {self.value - self.input:+.6g} "
                         f"(relative {abs(self.value - self.input) / abs(self.input):.3g})")
        if self.overflow:
            no_inf = "" if f.infinities else f" ({f.name} has no infinity)"
            outcome = {"infinity": "rounds to infinity", "nan": "becomes NaN"}.get(
                self.kind, f"saturates to {self.value!r}")
            lines.append(f"  overflow  beyond the largest finite value {f.max:g}: "
                         f"{outcome}{no_inf}")
        if self.sign_lost:
            lines.append(f"  sign      lost: {f.name} has no -0, so the result is +0")
        return "\n".join(lines)


def describe(value: float, dtype: Format | str, mode: str = "nearest_even") -> Description:
    """Round one value to dtype and describe the result: sign, exponent, fraction, class,
    and whether it overflowed, lost its sign or became NaN."""
    fmt = as_format(dtype)
    stats = RoundingStats()
    stored = round_to(np.float64(value), fmt, mode, stats=stats)
    code = int(_codes(stored, fmt)) & ((1 << fmt.bits) - 1)  # float64's sign: not negative
    e, m = fmt.exponent_bits, fmt.fraction_bits
    ef, mf = (code >> m) & (2 ** e - 1), code & (2 ** m - 1)
    v = float(to_float64(stored))
    kind = ("nan" if np.isnan(v) else "infinity" if np.isinf(v) else "zero" if v == 0
            else "subnormal" if ef == 0 else "normal")
    overflow = stats.overflow > 0 or (np.isinf(value) and not fmt.infinities)
    sign_lost = bool(np.signbit(value)) and kind != "nan" and not np.signbit(v)
    return Description(fmt, float(value), v, format(code, f"0{fmt.bits}b"), code >> (e + m),
                       ef, mf, kind, bool(overflow), sign_lost)
