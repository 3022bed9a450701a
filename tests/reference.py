"""An independent, scalar reference for rounding exact values to a binary float format.

Built on MPFR (through gmpy2) and exact rational arithmetic; it never calls mpgrad's
rounding code. A format enters only through its defining fields (exponent_bits,
fraction_bits, bias, nan, subnormals); every derived quantity (emin, emax, the largest
finite value, the grid) is worked out here from those fields, see `Spec`.

The model (IEEE 754-2019, sections 4.3 and 7.4, extended to the finite-only formats):

1. x is rounded ONCE to precision p with unbounded exponent above and gradual underflow
   below (the grid spacing is 2**(max(e, emin) - fraction_bits) for |x| in [2**e, 2**(e+1))).
2. If that rounded value exceeds the format's max in magnitude the operation overflows:
   nearest_even, nearest_away, stochastic give +-inf; up gives +inf / -max; down gives
   +max / -inf; toward_zero and odd give +-max.
3. An infinity (from 2. or from the input) becomes +-max with saturate=True; else, in a
   format without infinities, NaN when the format has NaN, +-max when it has none.
4. Formats without negative zero ("fnuz") turn -0 into +0.

MPFR exponent convention: MPFR writes x = m * 2**E with 0.5 <= |m| < 1, so a number in
[2**e, 2**(e+1)) has MPFR exponent E = e + 1. The smallest subnormal 2**(emin - fraction_bits)
thus has MPFR exponent emin - fraction_bits + 1, which is the `emin` MPFR needs for
`subnormalize=True` to reproduce gradual underflow at precision p = fraction_bits + 1.
MPFR's own overflow is never used: the context gets a huge emax, and rule 2 is applied here
(the "fn" formats' max is not the top of a binade, so MPFR could not express it anyway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property, lru_cache
from typing import NamedTuple

import gmpy2
from gmpy2 import mpfr, mpq

DETERMINISTIC_MODES = ("nearest_even", "nearest_away", "toward_zero", "up", "down", "odd")

# Any sum of two float64 values is exact at this precision: the bits of hi + lo span at
# most from 2**1023 down to 2**-1074, i.e. 2098 bits.
EXACT_PRECISION = 2200
_HUGE_EMAX = 1 << 20  # "unbounded" exponent above: far beyond float64's range

_MPFR_MODES = {
    "nearest_even": gmpy2.RoundToNearest,
    "toward_zero": gmpy2.RoundToZero,
    "up": gmpy2.RoundUp,
    "down": gmpy2.RoundDown,
}


@dataclass(frozen=True)
class Spec:
    """A format described by its fields only, with every derived quantity computed here."""

    exponent_bits: int
    fraction_bits: int
    bias: int
    nan: str            # "ieee" | "fn" | "fnuz" | "none"
    subnormals: bool = True

    @property
    def p(self) -> int:
        return self.fraction_bits + 1

    @property
    def emin(self) -> int:
        return 1 - self.bias

    @property
    def top_field(self) -> int:
        """The largest exponent field holding finite numbers."""
        all_ones = 2 ** self.exponent_bits - 1
        return all_ones - 1 if self.nan == "ieee" else all_ones

    @property
    def emax(self) -> int:
        return self.top_field - self.bias

    @property
    def max(self) -> Fraction:
        """Largest finite value: in "fn" formats S.1111.111 is NaN, so the top fraction is 1..10."""
        m = self.fraction_bits
        top_fraction = 2 ** m - (2 if self.nan == "fn" else 1)
        return Fraction(2 ** m + top_fraction) * Fraction(2) ** (self.emax - m)

    @property
    def smallest_normal(self) -> Fraction:
        return Fraction(2) ** self.emin

    @property
    def smallest_subnormal(self) -> Fraction:
        return Fraction(2) ** (self.emin - self.fraction_bits)

    @property
    def infinities(self) -> bool:
        return self.nan == "ieee"

    @property
    def has_nan(self) -> bool:
        return self.nan != "none"

    @property
    def signed_zero(self) -> bool:
        return self.nan != "fnuz"

    def quantum(self, e: int) -> Fraction:
        """Grid spacing for |x| in [2**e, 2**(e+1)) (below 2**emin: the subnormal spacing)."""
        return Fraction(2) ** (max(e, self.emin) - self.fraction_bits)

    # exact mpfr copies of the constants used on every rounding (computed once)
    @cached_property
    def max_mpfr(self) -> mpfr:
        return mpfr(mpq(self.max.numerator, self.max.denominator), 64)

    @cached_property
    def smallest_normal_mpfr(self) -> mpfr:
        return mpfr(mpq(self.smallest_normal.numerator, self.smallest_normal.denominator), 64)


@lru_cache(maxsize=None)
def spec_of(fmt) -> Spec:
    """The Spec of an mpgrad Format (reads only its defining fields)."""
    return Spec(fmt.exponent_bits, fmt.fraction_bits, fmt.bias, fmt.nan, fmt.subnormals)


class Rounded(NamedTuple):
    """The reference result and the exception flags of one rounding."""

    value: float     # exact, as float64 (nan for NaN; the sign of zero is meaningful)
    inexact: bool
    overflow: bool
    underflow: bool
    invalid: bool


# --- exact inputs ---------------------------------------------------------------------------

def exact(x):
    """The exact value of x as an mpfr (or mpq for a non-dyadic Fraction), or a float nan/inf.

    x: a float (or NumPy scalar), a pair (hi, lo) of floats meaning hi + lo, a Fraction or int,
    or an mpfr / mpq.
    """
    if isinstance(x, tuple):
        hi, lo = float(x[0]), float(x[1])
        if not (math.isfinite(hi) and math.isfinite(lo)):
            return hi + lo  # inf, -inf or nan: no finite exact value to speak of
        with gmpy2.context(precision=EXACT_PRECISION):
            s = mpfr(hi, 53) + mpfr(lo, 53)
        if s == 0:  # IEEE sum of zeros: -0 only when both are -0
            s = mpfr(-0.0 if (math.copysign(1, hi) < 0 and math.copysign(1, lo) < 0) else 0.0)
        return s
    if isinstance(x, (mpfr, mpq)):
        return x
    if isinstance(x, (Fraction, int)):
        return mpq(x.numerator, x.denominator)
    v = float(x)
    return mpfr(v, 53) if math.isfinite(v) else v


def _fraction(v) -> Fraction:
    if isinstance(v, mpq):
        return Fraction(int(v.numerator), int(v.denominator))
    return Fraction(*v.as_integer_ratio())


def _below_normal(v, spec: Spec) -> bool:
    """|v| < 2**emin, exactly. (Never abs() an mpfr: gmpy2 rounds it to the context precision.)"""
    if isinstance(v, mpq):
        return abs(v) < mpq(spec.smallest_normal.numerator, spec.smallest_normal.denominator)
    return gmpy2.cmp_abs(v, spec.smallest_normal_mpfr) < 0


def _is_negative(v) -> bool:
    return v < 0 or (v == 0 and isinstance(v, mpfr) and gmpy2.is_signed(v))


@lru_cache(maxsize=None)
def _context(p: int, mpfr_emin: int, rnd) -> gmpy2.context:
    return gmpy2.context(precision=p, emin=mpfr_emin, emax=_HUGE_EMAX, subnormalize=True,
                         round=rnd)


def _mpfr_round(v, spec: Spec, rnd) -> mpfr:
    """v rounded once by MPFR to precision p, gradual underflow, unbounded exponent above."""
    ctx = _context(spec.p, spec.emin - spec.fraction_bits + 1, rnd)
    return mpfr(v, context=ctx) if isinstance(v, mpq) else ctx.plus(v)


def _last_bit_odd(r: mpfr, spec: Spec) -> bool:
    """Whether the significand of the grid value r ends in a 1 (zero counts as even).

    r = mant * 2**exp exactly; its grid spacing is 2**qe, qe = max(e, emin) - fraction_bits
    where 2**e <= |r| < 2**(e+1), i.e. e = MPFR exponent - 1. r / 2**qe is an integer n.
    """
    if r == 0:
        return False
    mant, exp = r.as_mantissa_exp()
    mant, exp = abs(int(mant)), int(exp)
    qe = max(gmpy2.get_exp(r) - 1, spec.emin) - spec.fraction_bits
    if exp >= qe:
        n = mant << (exp - qe)
    else:
        n, rest = divmod(mant, 1 << (qe - exp))
        assert rest == 0, "r is not on the grid"
    return n % 2 == 1


def round_unbounded(v, spec: Spec, mode: str, memo: dict | None = None) -> mpfr:
    """Finite nonzero v rounded to the format's grid with unbounded exponent above.

    memo (optional, one per value v) keeps MPFR's roundings of v for reuse across modes.
    """
    memo = {} if memo is None else memo

    def by_mpfr(rnd):
        if rnd not in memo:
            memo[rnd] = _mpfr_round(v, spec, rnd)
        return memo[rnd]

    if mode in _MPFR_MODES:
        return by_mpfr(_MPFR_MODES[mode])
    lo = by_mpfr(gmpy2.RoundDown)
    hi = by_mpfr(gmpy2.RoundUp)
    if lo == hi:
        return lo
    if mode == "nearest_away":
        x, a, b = mpq(v), mpq(lo), mpq(hi)  # exact rationals
        if x - a != b - x:
            return lo if x - a < b - x else hi
        return hi if v > 0 else lo  # a tie: away from zero
    if mode == "odd":
        return lo if _last_bit_odd(lo, spec) else hi
    raise ValueError(f"no deterministic mode {mode!r}")


# --- the reference --------------------------------------------------------------------------

def _infinity(negative: bool, spec: Spec, saturate: bool) -> float:
    """Where an infinite result lands (rule 3 of the module docstring)."""
    big = float(spec.max)
    if saturate or not spec.has_nan and not spec.infinities:
        return -big if negative else big
    if spec.infinities:
        return -math.inf if negative else math.inf
    return -math.nan if negative else math.nan


def _place(r, negative: bool, spec: Spec, mode: str, saturate: bool) -> tuple[float, bool]:
    """The result for the unbounded rounding r (rules 2-4), and whether it overflowed."""
    if gmpy2.cmp_abs(r, spec.max_mpfr) > 0:  # |r| > max, compared exactly
        away = {"up": not negative, "down": negative,
                "toward_zero": False, "odd": False}.get(mode, True)
        big = float(spec.max)
        return (_infinity(negative, spec, saturate) if away else -big if negative else big), True
    out = float(r)
    if out == 0:
        out = -0.0 if negative and spec.signed_zero else 0.0
    return out, False


def reference(x, fmt, mode: str, *, saturate: bool = False, subnormals: bool = True) -> Rounded:
    """Round the exact value of x to fmt (an mpgrad Format or a Spec) once, with flags.

    Raises ValueError for a NaN input to a format without NaN.
    """
    return reference_modes(x, fmt, (mode,), saturate=saturate, subnormals=subnormals)[0]


def reference_modes(x, fmt, modes=DETERMINISTIC_MODES, *, saturate: bool = False,
                    subnormals: bool = True) -> list[Rounded]:
    """`reference` for several modes at once (sharing the exact value and MPFR's roundings)."""
    spec = fmt if isinstance(fmt, Spec) else spec_of(fmt)
    v = exact(x)
    if isinstance(v, float):  # NaN or infinite input: the same in every mode
        if math.isnan(v):
            if not spec.has_nan:
                raise ValueError("NaN input to a format without NaN")
            return [Rounded(v, False, False, False, False)] * len(modes)
        return [Rounded(_infinity(v < 0, spec, saturate), False, False, False,
                        not spec.infinities)] * len(modes)

    negative = _is_negative(v)
    if v == 0:
        zero = -0.0 if negative and spec.signed_zero else 0.0
        return [Rounded(zero, False, False, False, False)] * len(modes)
    flush = (not subnormals or not spec.subnormals) and _below_normal(v, spec)
    memo: dict = {}
    results = []
    for mode in modes:
        if flush:
            r = mpfr(-0.0 if negative else 0.0)  # flushed to zero before rounding
        else:
            r = round_unbounded(v, spec, mode, memo)
        out, overflow = _place(r, negative, spec, mode, saturate)
        inexact = overflow or r != v  # (comparisons between mpfr / mpq are exact)
        underflow = not overflow and _below_normal(r, spec)
        invalid = math.isnan(out)
        results.append(Rounded(out, inexact, overflow, underflow, invalid))
    return results


def ref_round(x, fmt, mode: str, **flags) -> float:
    """Just the value of `reference`."""
    return reference(x, fmt, mode, **flags).value


def stochastic_outcomes(x, fmt) -> tuple[float, float, Fraction]:
    """For finite nonzero x: (result if rounded toward zero, result if rounded away, f).

    The two neighbours of x on the format's (unbounded) grid, each mapped by the overflow
    rule of the nearest modes (beyond max: +-inf, or its substitute in formats without
    infinities), and f, the exact discarded fraction of an ulp (0 when x is on the grid).
    Correct stochastic rounding returns the second with probability floor(f * 2**32) / 2**32.
    """
    spec = fmt if isinstance(fmt, Spec) else spec_of(fmt)
    v = exact(x)
    negative = _is_negative(v)
    toward = round_unbounded(v, spec, "toward_zero")
    away = round_unbounded(v, spec, "down" if negative else "up")
    width = abs(_fraction(away) - _fraction(toward))
    f = Fraction(0) if width == 0 else abs(_fraction(v) - _fraction(toward)) / width
    place = lambda r: _place(r, negative, spec, "stochastic", False)[0]  # noqa: E731
    return place(toward), place(away), f
