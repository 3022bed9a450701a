"""Correct rounding of exact values to any Format, once, in every rounding mode.

An exact value is split into sign, exponent and ``n = floor(|x| / 2**q)`` where ``2**q`` is the
target's quantum (its ulp) at that exponent, plus where the discarded remainder lies
(zero, below half, half, above half). Every rounding mode is a rule on that split; the
result is composed directly as the target's bit pattern. All steps are integer or exact
float64 operations, vectorised over the array.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Iterator, NamedTuple

import ml_dtypes
import numpy as np

from . import rng as _rng
from .codes import nan_code, pow2, store, to_float64
from .exact import round_odd, two_sum
from .formats import Format, as_format, format_of_dtype

__all__ = ["round_to", "encode", "MODES", "STOCHASTIC_BITS", "RoundingStats",
           "record_rounding", "to_float64"]

MODES = ("nearest_even", "nearest_away", "toward_zero", "up", "down", "odd", "stochastic")

# Stochastic rounding draws one uniform B-bit integer k per element (B = STOCHASTIC_BITS) and
# rounds away from zero iff k < floor(f * 2**B), f being the exact discarded fraction of an
# ulp, so that P(away) = floor(f * 2**B) / 2**B: exactly f when f has at most B bits (any
# float32 source to a format of 16 bits or fewer), otherwise less than f by under 2**-B.
# The words are the halves of raw 64-bit draws, so B is 32 (one 64-bit draw per two values).
STOCHASTIC_BITS = 32

_ABS64 = (1 << 63) - 1


@dataclass
class RoundingStats:
    """Counts from rounding calls: how many results were inexact, overflowed, underflowed
    (and of those, became zero), invalid."""

    total: int = 0
    inexact: int = 0
    overflow: int = 0   # finite input whose rounded magnitude exceeds the format's max
    underflow: int = 0  # nonzero finite input whose result is zero or subnormal
    invalid: int = 0    # NaN produced from a non-NaN input, or an infinity the format lacks
    to_zero: int = 0    # nonzero finite input whose result is zero (counted in underflow too)

    def add(self, other: RoundingStats) -> None:
        """Add another record's counts into this one."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


_recording = threading.local()


@contextmanager
def record_rounding() -> Iterator[RoundingStats]:
    """Collect the RoundingStats of every round_to call made inside the block."""
    stack = _recording.__dict__.setdefault("stack", [])
    stats = RoundingStats()
    stack.append(stats)
    try:
        yield stats
    finally:
        stack.remove(stats)


def _tally(targets: list[RoundingStats], total: int, **events: np.ndarray) -> None:
    """Add one rounding call's counts (each event a boolean mask) into every target."""
    rec = RoundingStats(total, **{k: int(np.count_nonzero(v)) for k, v in events.items()})
    for target in targets:
        target.add(rec)


class _Split(NamedTuple):
    """An exact value as sign, exponent and n = floor(|x| / quantum), plus the remainder's place."""

    neg: np.ndarray      # sign bit of the input
    xexp: np.ndarray     # exponent of |x| (floor(log2|x|)); very small for zero
    n: np.ndarray        # int64, floor(|x| / 2**q), q = max(xexp, emin) - fraction_bits
    inexact: np.ndarray  # remainder != 0
    above: np.ndarray    # remainder > half an ulp
    tie: np.ndarray      # remainder == half an ulp
    frac: np.ndarray | None   # floor(remainder / ulp * 2**STOCHASTIC_BITS), stochastic
    special: np.ndarray  # float64: the input where it is inf or NaN (finite entries: anything)


def _split_float64(x: np.ndarray, fmt: Format, want_frac: bool) -> _Split:
    """Split float64 values exactly: scale by a power of two, then floor."""
    i = x.view(np.int64)
    a = i & _ABS64
    xexp = (a >> 52) - 1023  # floor(log2|x|) for normal x; subnormal x and 0 get -1023
    if fmt.min_exponent < -1022:  # a format reaching below float64's normals: exact exponents
        xexp = np.where(a == 0, -1100, np.where(xexp == -1023, np.frexp(x)[1] - 1, xexp))
    # r = |x| / 2**q with q = max(xexp, emin) - m, in two exact power-of-two steps
    minus_q = fmt.fraction_bits - np.maximum(xexp, fmt.min_exponent)
    half = minus_q >> 1
    with np.errstate(invalid="ignore", over="ignore"):  # inf and NaN: replaced later
        r = a.view(np.float64) * pow2(minus_q - half) * pow2(half)
        n = np.floor(r)
        t = r - n  # exact: r < 2**(m + 1) <= 2**53
        frac = np.floor(np.ldexp(t, STOCHASTIC_BITS)).astype(np.int64) if want_frac else None
        n = n.astype(np.int64)
    return _Split(i < 0, xexp, n, t != 0, t > 0.5, t == 0.5, frac, x)


def _floor_pair(ah: np.ndarray, al: np.ndarray, q: np.ndarray, want_frac: bool):
    """floor((ah + al) / 2**q) and the remainder's place, for |al| <= ulp(ah)/2.

    All steps are exact: rh = ah / 2**q, n0 = floor(rh) and t = rh - n0 are exact float64
    operations; t is a multiple of g = ulp(ah) / 2**q and |rl| = |al| / 2**q <= g / 2, so
    rl decides only where t is 0 or 1/2. rl is compared with +-1/2 and -1 only, and is
    corrected by the sign of al where it underflows, so its underflow is harmless.
    """
    rh = np.ldexp(ah, -q)
    n0 = np.floor(rh)
    t = rh - n0
    rl = np.ldexp(al, -q)
    pos, negl, t0 = al > 0, al < 0, t == 0
    borrow = t0 & negl         # exact value just below n0: floor is n0 - 1, remainder 1 + rl
    above = (t > 0.5) | ((t == 0.5) & pos) | (borrow & (rl > -0.5))
    tie = ((t == 0.5) & (al == 0)) | (t0 & pos & (rl == 0.5)) | (borrow & (rl == -0.5))
    exact = (t0 & (al == 0)) | (borrow & (rl == -1.0))
    frac = None
    if want_frac:  # floor(remainder * 2**B): t * 2**B is exact, rl matters where it is whole
        big_t = np.ldexp(t, STOCHASTIC_BITS)
        floor_rl = np.floor(np.ldexp(rl, STOCHASTIC_BITS))
        floor_rl = np.where(negl, np.minimum(floor_rl, -1.0), floor_rl)
        whole = big_t == np.floor(big_t)
        frac = (np.floor(big_t) + np.where(whole, floor_rl, 0.0)
                + np.where(borrow, 2.0 ** STOCHASTIC_BITS, 0.0)).astype(np.int64)
    return n0 - borrow, ~exact, above, tie, frac


def _split_pair(hi: np.ndarray, lo: np.ndarray, fmt: Format, want_frac: bool) -> _Split:
    """Split the exact values hi + lo (double-double) with error-free float64 operations."""
    finite = np.isfinite(hi) & np.isfinite(lo)
    with np.errstate(over="ignore", invalid="ignore"):
        special = np.where(finite, 0.0, hi + lo)
        # halve pairs whose float64 sum overflows (the halving is exact: both are large)
        k = (finite & ~np.isfinite(hi + lo)).astype(np.int64)
    hi = np.where(finite, np.ldexp(hi, -k), 0.0)
    lo = np.where(finite, np.ldexp(lo, -k), 0.0)
    s, err = two_sum(hi, lo)
    neg = np.signbit(np.where(finite, s, special))  # a zero follows IEEE's rule for hi + lo
    ah = np.abs(s)
    al = np.where(neg, -err, err)
    mant, ex = np.frexp(ah)
    # |x| lies just below a power of two when ah is one and al < 0
    xexp = np.where(ah == 0, -1100, ex - 1 - ((mant == 0.5) & (al < 0)) + k)
    q = np.maximum(xexp, fmt.min_exponent) - fmt.fraction_bits
    n, inexact, above, tie, frac = _floor_pair(ah, al, q - k, want_frac)
    return _Split(neg, xexp, n.astype(np.int64), inexact, above, tie, frac, special)


def _increment(s: _Split, mode: str, k: np.ndarray | None) -> np.ndarray:
    """Whether each value rounds away from zero (n + 1) under the mode."""
    odd = (s.n & 1).astype(bool)
    if mode == "nearest_even":
        return s.above | (s.tie & odd)
    if mode == "nearest_away":
        return s.above | s.tie
    if mode == "toward_zero":
        return np.zeros_like(s.inexact)
    if mode == "up":
        return s.inexact & ~s.neg
    if mode == "down":
        return s.inexact & s.neg
    if mode == "odd":
        return s.inexact & ~odd
    return k < s.frac


def _encode(hi: np.ndarray, lo: np.ndarray | None, fmt: Format, mode: str,
            k: np.ndarray | None, saturate: bool, subnormals: bool,
            targets: list[RoundingStats]) -> np.ndarray:
    """Bit patterns (int64, sign included) of the correctly rounded exact values hi (+ lo)."""
    want_frac = mode == "stochastic"
    s = (_split_float64(hi, fmt, want_frac) if lo is None
         else _split_pair(hi, lo, fmt, want_frac))
    is_nan, is_inf = np.isnan(s.special), np.isinf(s.special)
    finite = ~(is_nan | is_inf)
    if not fmt.has_nan and is_nan.any():
        raise ValueError(f"{fmt.name} has no NaN encoding but the input holds "
                         f"{int(is_nan.sum())} NaN value(s)")
    emin, m = fmt.min_exponent, fmt.fraction_bits
    code = ((np.maximum(s.xexp, emin) - emin) << m) + s.n + _increment(s, mode, k)
    flush = finite & (s.xexp < emin) & ~(subnormals and fmt.subnormals)
    code = np.where(flush, 0, code)
    overflow = finite & (code > fmt.max_code)
    to_inf = {"up": ~s.neg, "down": s.neg, "toward_zero": False, "odd": False}.get(mode, True)
    big = (overflow & to_inf | is_inf) & (not saturate)  # where the result is IEEE's infinity
    nan_out = is_nan | big & (fmt.nan in ("fn", "fnuz"))
    code = np.where(overflow | is_inf, fmt.max_code, code)  # saturation, and no-NaN formats
    code = np.where(big & fmt.infinities, fmt.max_code + 1, code)
    code = np.where(nan_out, nan_code(fmt), code)
    signed = s.neg
    if fmt.nan == "fnuz":  # no -0; the one NaN is the pattern of -0
        signed = nan_out | signed & (code != 0)
    if targets:
        zero_in = (s.n == 0) & ~s.inexact
        _tally(targets, code.size,
               inexact=finite & (s.inexact | overflow | flush & ~zero_in),
               overflow=overflow,
               underflow=finite & ~zero_in & ~nan_out & (code < (1 << m)),
               invalid=is_inf & (not fmt.infinities) | overflow & nan_out,
               to_zero=finite & ~zero_in & ~nan_out & (code == 0))
    return code | (signed.astype(np.int64) << (fmt.bits - 1))


def encode(x, dtype: Format | str, stats: RoundingStats | None = None) -> np.ndarray:
    """The int64 bit patterns (sign included) of exact values x rounded to nearest in dtype."""
    return _encode(to_float64(x), None, as_format(dtype), "nearest_even", None, False, True,
                   [] if stats is None else [stats])


def _nearest_even_cast(dtype: np.dtype, fmt: Format):
    """(cast, chunk) with cast equal to round_to(., fmt) on non-NaN arrays of dtype, or None."""
    if not fmt.native:
        return None
    src = format_of_dtype(dtype)
    if (dtype, fmt.storage) in _ASTYPE_CORRECTLY_ROUNDED or (
            src is not None and fmt.contains(src)):
        return (lambda a: a.astype(fmt.storage)), None  # allocates only its result
    if dtype == np.float64 and fmt.storage == np.float32:  # IEEE conversion, round to nearest
        return (lambda a: a.astype(np.float32)), None
    if dtype == np.float64 and (np.dtype(np.float32), fmt.storage) in _ASTYPE_CORRECTLY_ROUNDED:
        return (lambda a: _round_odd_float32(a).astype(fmt.storage)), 16 * CHUNK
    return None


def _in_float32_normal_range(x: np.ndarray) -> bool:
    """Whether every value of a float64 array is 0 or of a normal float32 magnitude."""
    a = np.abs(x)
    return bool(np.all((a == 0) | (a >= 2.0 ** -126) & (a < 2.0 ** 128)))


def _truncate_to_float32(x: np.ndarray) -> np.ndarray:
    """float64 -> float32 toward zero for values in float32's normal range: clearing the low
    29 of the 52 fraction bits truncates to 23, and the cast of the result is exact."""
    return (x.view(np.int64) & ~np.int64((1 << 29) - 1)).view(np.float64).astype(np.float32)


def _round_odd_float32(x: np.ndarray) -> np.ndarray:
    """float64 -> float32 rounded to odd: truncate, then set the last bit if inexact.

    Rounding to odd at precision >= p + 2 and then to nearest at precision p rounds once
    (Boldo & Melquiond 2008, "Emulation of FMA and correctly rounded sums: proved
    algorithms using rounding to odd", Thm. 1); float32 is >= 14 bits finer than each
    target this is used for, in their subnormal ranges too.
    """
    y = x.astype(np.float32)
    back = y.astype(np.float64)
    bits = y.view(np.int32)
    bits -= np.abs(back) > np.abs(x)  # one step toward zero where nearest went away from it
    bits |= back != x
    return y


# Conversions whose NumPy/ml_dtypes cast is correctly rounded (nearest even) for every
# non-NaN input: checked over all 2**32 float32 bit patterns in tests/test_fastpath.py.
_ASTYPE_CORRECTLY_ROUNDED = {
    (np.dtype(np.float32), np.dtype(d))
    for d in (np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2)}


CHUNK = 1 << 15  # elements rounded at a time: keeps temporaries in cache and memory O(1)


def _random_words(gen: np.random.Generator, n: int) -> np.ndarray:
    """n uniform STOCHASTIC_BITS-bit words: the little-endian halves of ceil(n/2) raw 64-bit
    draws."""
    words = 64 // STOCHASTIC_BITS
    raw = gen.bit_generator.random_raw(-(-n // words)).astype("<u8")
    return raw.view(f"<u{STOCHASTIC_BITS // 8}")[:n]


def _cast_block(a: np.ndarray, cast, fmt: Format, targets: list[RoundingStats],
                inexact: np.ndarray | None = None) -> np.ndarray:
    """cast(a), with NaN inputs given the format's own NaN (keeping the sign), and the
    RoundingStats _encode would record (inexact: where a itself already differs from the
    exact input, for a rounded-to-odd pair)."""
    with np.errstate(over="ignore", invalid="ignore"):  # signalling NaNs are replaced below
        out = cast(a)
        nan = np.isnan(a)
    if nan.any():
        out[nan] = store(_encode(to_float64(a[nan]), None, fmt, "nearest_even", None, False,
                                  True, []), fmt)
    if targets:  # a nearest-even cast to a format with inf or NaN: read off the values
        x, y = to_float64(a), to_float64(out)
        with np.errstate(invalid="ignore"):
            finite, tiny = np.isfinite(x), (x != 0) & (np.abs(y) < fmt.smallest_normal)
            _tally(targets, x.size,
                   inexact=finite & ((y != x) if inexact is None else (y != x) | inexact),
                   overflow=finite & ~np.isfinite(y), underflow=finite & tiny,
                   invalid=finite & np.isnan(y) | np.isinf(x) & (not fmt.infinities),
                   to_zero=finite & (x != 0) & (y == 0))
    return out


def _pair_round_odd(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(v, inexact): hi + lo rounded to odd in float64, and where it was inexact; None if
    some value is non-finite or tiny (below 2**-1000, where the rule is not needed)."""
    s, e = two_sum(hi, lo)
    a = np.abs(s)
    if not (np.all(np.isfinite(s)) and np.all((a >= 2.0 ** -1000) | (a == 0))):
        return None
    return round_odd(s, e), e != 0


def round_to(x, dtype: Format | str, mode: str = "nearest_even", *, rng=None,
             saturate: bool = False, subnormals: bool = True,
             stats: RoundingStats | None = None) -> np.ndarray:
    """Round exact values (an array, or a (hi, lo) pair meaning hi + lo) to dtype, once.

    A pair whose exact value is zero gives the zero that IEEE's hi + lo gives (x + -x = +0).
    Returns an array of dtype's storage dtype. See docs/formats-and-rounding.md.
    """
    fmt = as_format(dtype)
    if mode not in MODES:
        raise ValueError(f"unknown rounding mode {mode!r}; valid modes: {', '.join(MODES)}")
    targets = ([stats] if stats is not None else []) + getattr(_recording, "stack", [])
    cast, step = None, CHUNK
    plain = mode == "nearest_even" and not saturate and subnormals
    if isinstance(x, tuple):
        if len(x) != 2:
            raise ValueError("a double-double input is a pair (hi, lo)")
        hi, lo = np.broadcast_arrays(to_float64(x[0]), to_float64(x[1]))
        if not lo.any():  # hi + lo is exact in float64 (IEEE's zero sign included)
            return round_to(hi + lo, fmt, mode, rng=rng, saturate=saturate, subnormals=subnormals,
                            stats=stats)
        fast = _nearest_even_cast(hi.dtype, fmt) if plain and fmt.precision <= 51 else None
        odd = _pair_round_odd(hi, lo) if fast is not None else None
        if odd is not None:
            # round to odd at 53 bits, then to nearest at p <= 51 bits: one rounding
            return _cast_block(odd[0], fast[0], fmt, targets, odd[1])
        lo = lo.ravel()
    else:
        hi, lo = np.asarray(x), None
        to_float64(hi.ravel()[:0])  # reject dtypes without exact float64 values early
        if plain:
            cast, step = _nearest_even_cast(hi.dtype, fmt) or (None, CHUNK)
            if cast is not None and step is None:  # a plain cast: nothing to bound
                return _cast_block(hi, cast, fmt, targets)
        elif (mode == "toward_zero" and not saturate and subnormals and fmt.native
              and fmt.storage == np.float32 and hi.dtype == np.float64
              and _in_float32_normal_range(hi)):
            return _cast_block(hi, _truncate_to_float32, fmt, targets)
    gen = _rng.generator(rng) if mode == "stochastic" else None
    shape, hi = hi.shape, hi.ravel()
    out = np.empty(hi.size, fmt.storage)
    for a in range(0, hi.size, step):  # step is even: the random words do not depend on it
        b = min(a + step, hi.size)
        if cast is not None:
            out[a:b] = _cast_block(hi[a:b], cast, fmt, targets)
            continue
        k = None if gen is None else _random_words(gen, b - a)
        codes = _encode(to_float64(hi[a:b]), None if lo is None else lo[a:b], fmt, mode, k,
                        saturate, subnormals, targets)
        out[a:b] = store(codes, fmt)
    return out.reshape(shape)
