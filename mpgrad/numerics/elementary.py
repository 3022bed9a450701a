"""Elementary functions correctly rounded to a Format, whatever the machine's libm.

Method (Ziv's strategy, in its simplest two-step form; Muller et al., "Handbook of
Floating-Point Arithmetic", 2nd ed. 2018, sec. 10.5), for a format of precision p <= 51:

1. Special inputs (+-0, +-inf, NaN, a negative x outside the domain; for pow the C99 Annex F
   cases, F.9.4.4) get their exact IEEE/C99 value from a table, not from libm.
2. Every other x is evaluated in float64 with NumPy/SciPy, giving y. ASSUMPTION: wherever y is
   a normal float64 number, |y - f(x)| <= 2**-42 |f(x)|. NumPy's libm functions and SciPy's
   expit/erf are accurate to a few float64 ulps (2**-52 each); the bound allows ~1000 ulps.
3. With E = 2**-40, f(x) lies between fl(y(1-E)) and fl(y(1+E)) (the extra 2**-42 margin
   covers the error of those products). Rounding is monotone, so where both ends round to
   the same value of the format (bit patterns compared), so does f(x): the result is
   round_to(y). An overflowed y = inf is bracketed as +-DBL_MAX. Below 2**-1022 (y zero or
   subnormal) the relative bound fails; ASSUMPTION: there |y - f(x)| < 2**-1022 and y has
   the sign of f(x), so f(x) rounds to +-0 like y in formats whose smallest subnormal is
   >= 2**-1020, and such y are hard in formats reaching lower.
4. The other ("hard") elements are recomputed one by one with mpmath at 160 bits, from the
   exact input. 160 bits exceeds the ~120 bits that the worst cases of exp/log in double
   precision need (Lefevre & Muller, "Worst cases for correct rounding of the elementary
   functions in double precision", 2001); narrower targets need fewer; dyadic exact results
   (x**2, x**3, x**1.5 via sqrt, ...) are exact at 160 bits. That value is rounded to odd on
   float64's grid, which is exact, then round_to rounds it once: rounding to odd with at
   least two extra bits, then to nearest, equals one rounding to nearest (Boldo & Melquiond
   2008, Thm. 1), hence p <= 51 and a smallest subnormal >= 2**-1072.

A hard case is an x whose f(x) lies within 2**-40 relative of a rounding boundary (exact
midpoints, such as x**2, included): about 2**(p-40) of inputs in general position (none of
the 65536 float16 or bfloat16 inputs of exp, log, tanh, sigmoid, erf), so for p >~ 36 most
elements go through mpmath, at ~50 us each (correct, but slow). Formats beyond p <= 51 / 2**-1072 (float64
itself) get round_to(y): the NumPy/SciPy result, faithful but machine dependent. A NaN
result in a format without NaN raises ValueError naming the function.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
from scipy import special

from .formats import Format, as_format
from .rounding import round_to, to_float64

__all__ = ["correctly_rounded", "FUNCTIONS", "hard_case_count"]

FUNCTIONS = ("exp", "log", "tanh", "sigmoid", "erf", "pow")

E = 2.0 ** -40           # bracket half-width, relative (step 3)
WORKING_PRECISION = 160  # mpmath bits for hard cases (step 4)
_TINY = 2.0 ** -1022     # below: float64 results may have lost relative accuracy

_hard_cases = 0

# f(-inf), f(-0), f(+0), f(+inf) (C99 Annex F; sigmoid as 1/(1+exp(-x)))
_AT = {"exp": (0.0, 1.0, 1.0, math.inf), "log": (math.nan, -math.inf, -math.inf, math.inf),
       "tanh": (-1.0, -0.0, 0.0, 1.0), "sigmoid": (0.0, 0.5, 0.5, 1.0),
       "erf": (-1.0, -0.0, 0.0, 1.0)}

_FLOAT64 = {"exp": lambda x, a: np.exp(x), "log": lambda x, a: np.log(x),
            "tanh": lambda x, a: np.tanh(x), "sigmoid": lambda x, a: special.expit(x),
            "erf": lambda x, a: special.erf(x), "pow": lambda x, a: np.power(x, a)}

_MPMATH = {"exp": lambda v, a: mpmath.exp(v), "log": lambda v, a: mpmath.log(v),
           "tanh": lambda v, a: mpmath.tanh(v), "sigmoid": lambda v, a: 1 / (1 + mpmath.exp(-v)),
           "erf": lambda v, a: mpmath.erf(v), "pow": lambda v, a: v ** mpmath.mpf(a)}


def hard_case_count() -> int:
    """How many elements, in all calls so far, were settled by mpmath."""
    return _hard_cases


def _special(name: str, x: np.ndarray, a: float) -> tuple[np.ndarray, np.ndarray]:
    """(mask, values) of the inputs whose result is fixed by IEEE 754 / C99 Annex F."""
    if name == "pow":
        odd = a.is_integer() and abs(a) < 2.0 ** 53 and int(a) % 2 == 1
        ends = (x == 0) | np.isinf(x)
        mag = np.where((x == 0) == (a < 0), math.inf, 0.0)  # |x|**a at |x| = 0 or inf
        values = np.where(np.signbit(x) & odd, -mag, mag)
        invalid = np.isnan(x) | (np.isfinite(x) & (x < 0) & (not a.is_integer()))
        values = np.where(invalid, math.nan, values)
        if a == 0:  # pow(x, +-0) = 1 for every x, NaN included
            return np.ones(x.shape, bool), np.ones(x.shape)
        return ends | invalid | (x == 1), np.where(x == 1, 1.0, values)
    table = np.array(_AT[name])
    idx = np.where(np.isinf(x), np.where(x < 0, 0, 3), np.where(np.signbit(x), 1, 2))
    values = np.where(np.isnan(x), math.nan, table[idx])
    mask = (x == 0) | ~np.isfinite(x)
    if name == "log":
        mask |= x < 0
        values = np.where(x < 0, math.nan, values)
    return mask, values


def _codes(values: np.ndarray, fmt: Format) -> np.ndarray:
    """Comparable bit images of round_to(values, fmt) (NaN compares equal to NaN)."""
    r = round_to(values, fmt)
    if fmt.native:
        return r.view(f"u{r.dtype.itemsize}")
    v = to_float64(r)
    return np.where(np.isnan(v), np.nan, v).view(np.int64)


def _round_to_odd(v: mpmath.mpf) -> float:
    """v rounded to odd onto float64's grid (subnormals included); +-inf from 2**1024 up."""
    man, exp = (int(t) for t in v.man_exp)  # |v| = man * 2**exp
    sign = -1.0 if v < 0 else 1.0
    e = exp + man.bit_length() - 1  # floor(log2 |v|)
    if e >= 1024:
        return sign * math.inf
    q = max(e, -1022) - 52  # float64's quantum at |v|
    if exp < q:
        n, rest = divmod(man, 1 << (q - exp))
        man, exp = n | (rest != 0), q
    return sign * math.ldexp(man, exp)


def _settle(name: str, x: float, a: float, y: float) -> float:
    """Hard case: a float64 that rounds like f(x) in every eligible format (mpmath, exact x)."""
    v = _MPMATH[name](mpmath.mpf(x), a)
    return y if v == 0 else _round_to_odd(v)  # zero is exact; keep IEEE's sign


def correctly_rounded(name: str, x: np.ndarray, dtype: Format | str, *,
                      exponent: float | None = None) -> np.ndarray:
    """f(x) correctly rounded (nearest even) to dtype, as a float64 array of its values."""
    global _hard_cases
    if name not in FUNCTIONS:
        raise ValueError(f"unknown function {name!r}; valid names: {', '.join(FUNCTIONS)}")
    if (name == "pow") != (exponent is not None):
        raise ValueError("an exponent is needed for 'pow', and only there")
    a = None if exponent is None else float(exponent)
    if a is not None and not math.isfinite(a):
        raise ValueError(f"the exponent must be finite, got {exponent!r}")
    fmt = as_format(dtype)
    x = to_float64(x)
    with np.errstate(all="ignore"):
        y = np.asarray(_FLOAT64[name](x, a), np.float64)
        fixed, values = _special(name, x, a)
        y = np.where(fixed, values, y)
        if not fmt.has_nan and np.isnan(y).any():  # (the engine says so for exact ops)
            raise ValueError(f"{fmt.name} has no NaN: {name} produced NaN (e.g. log of a "
                             "negative number)")
        if fmt.precision > 51 or fmt.smallest_subnormal < 2.0 ** -1072:
            return to_float64(round_to(y, fmt))  # no guarantee (module docstring)
        b = np.where(np.isinf(y), np.copysign(np.finfo(np.float64).max, y), y)
        hard = ~fixed & (_codes(b * (1 - E), fmt) != _codes(b * (1 + E), fmt))
        if fmt.smallest_subnormal < 2.0 ** -1020:
            hard |= ~fixed & (np.abs(y) < _TINY)
    idx = np.flatnonzero(hard)
    _hard_cases += idx.size
    xs, ys, z = x.ravel(), y.ravel(), y.copy().ravel()
    with mpmath.workprec(WORKING_PRECISION):
        for i in idx:
            z[i] = _settle(name, float(xs[i]), a, float(ys[i]))
    return to_float64(round_to(z.reshape(y.shape), fmt))
