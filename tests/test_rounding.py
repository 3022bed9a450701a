"""Verification of mpgrad.round_to against an independent MPFR reference (tests/reference.py).

What is checked, and against what:

* The reference itself: hand-checked values (float16 65504 / 65520, the smallest subnormal
  2**-24 and half of it, e4m3fn's 448 / 464 / 480, ...), agreement with a second,
  purely rational model of rounding, agreement with the hardware float64 -> float32 cast,
  and the Format parameters against values worked out from the fields (and ml_dtypes.finfo).
* Exhaustively, for every built-in format of at most 16 significant bits and four custom
  formats, in every deterministic mode: every representable value, every midpoint between
  neighbours (including the one between max and the next grid value above it, the
  overflow threshold), midpoints and representable values +- one float64 step, midpoints
  +- one float32 step, the boundaries (smallest subnormal, half of it, 2**-1074, ...),
  +-0, +-inf and NaN. Values (with the sign of zero), NaN bit patterns and RoundingStats
  counts must match. float32 / tf32 / float64 get the same checks on sampled codes.
  Each is run once without stats (nearest_even may then take a cast fast path) and once
  with stats. The 16-bit formats (float16, bfloat16, e6m9) are marked slow here (~20 s of
  reference each; run with --runslow); all the other tests cover them by default.
* The same inputs fed as float32 / float16 / bfloat16 arrays, where exact (fast paths).
* Random float64 bit patterns over the whole exponent range, and hypothesis searches.
* The double-rounding trap float64 -> bfloat16 that a float32 detour falls into.
* Double-double (hi, lo) inputs where lo decides ties and directed roundings, values just
  below a power of two, unnormalised pairs, random pairs; float64 is a target here too.
* saturate=True, subnormals=False (flush before rounding), signed zeros, fnuz's single zero,
  NaN into formats without NaN (ValueError), RoundingStats / record_rounding on hand-checked
  arrays.
* Stochastic rounding: only the two neighbours occur, the frequency of rounding away is
  floor(f * 2**32) / 2**32 within 5 standard deviations, the mean is unbiased, seeding is
  reproducible.

The expected values never come from mpgrad: only the fields of a Format (exponent_bits,
fraction_bits, bias, nan, subnormals) are read, and everything else is derived in the reference.
"""

from __future__ import annotations

import math
import zlib
from fractions import Fraction
from functools import lru_cache

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mpgrad
from mpgrad import Format, RoundingStats, record_rounding, round_to

try:  # tests/ may or may not become a package
    from .reference import (DETERMINISTIC_MODES, Spec, exact, ref_round, reference_modes,
                            round_unbounded, spec_of, stochastic_outcomes)
except ImportError:
    from reference import (DETERMINISTIC_MODES, Spec, exact, ref_round, reference_modes,
                           round_unbounded, spec_of, stochastic_outcomes)

MODES = DETERMINISTIC_MODES

CUSTOM = {
    "e6m9": Format.custom(6, 9),
    "e3m4_bias5": Format.custom(3, 4, bias=5),
    # a format whose normal range reaches far below float64's smallest normal 2**-1022
    "e11m2_bias1070": Format.custom(11, 2, bias=1070),
    # a format without subnormals: it flushes tiny values in every call
    "e4m3_nosub": Format.custom(4, 3, subnormals=False),
}
ALL_FORMATS = {**mpgrad.FORMATS, **CUSTOM}
SAMPLED = ("float32", "tf32", "float64")
EXHAUSTIVE = tuple(n for n in ALL_FORMATS if n not in SAMPLED)
# The 16-bit formats: ~390k inputs each, ~20 s of reference per format. Their exhaustive
# tests are marked slow (run with --runslow); everything else about them runs by default.
BIG = ("float16", "bfloat16", "e6m9")


def with_slow_marks(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in names]


# Built-in formats whose storage dtype holds the format's own bit pattern.
NATIVE = tuple(n for n in mpgrad.FORMATS if n != "tf32")
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _seed(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


# --- comparing results --------------------------------------------------------------------

def nan_bits(spec: Spec, negative: bool) -> int:
    """The NaN bit pattern the spec prescribes (ieee: canonical quiet; fn: S.1111..1; fnuz: 0x80)."""
    e, m = spec.exponent_bits, spec.fraction_bits
    sign = 1 << (e + m)
    if spec.nan == "fnuz":
        return sign
    if spec.nan == "fn":
        body = (1 << (e + m)) - 1
    else:
        body = ((2 ** e - 1) << m) | (1 << (m - 1))
    return body | (sign if negative else 0)


def _describe(x) -> str:
    if isinstance(x, tuple):
        return f"({float(x[0]).hex()}, {float(x[1]).hex()})"
    return f"{float(x)!r} ({float(x).hex()})"


def assert_rounds_as(got, expected, inputs, fmt: Format, what: str = "") -> None:
    """got (an array of fmt.storage) equals expected (float64, nan for NaN) incl. the sign of zero.

    For native storage, NaN results must also carry the prescribed bit pattern.
    inputs: an array of inputs, or a pair (hi, lo) of arrays, used in the failure message.
    """
    got = np.asarray(got)
    assert got.dtype == fmt.storage, f"result dtype {got.dtype}, expected {fmt.storage}"
    g = got.astype(np.float64).ravel()
    e = np.asarray(expected, dtype=np.float64).ravel()
    assert g.shape == e.shape
    enan = np.isnan(e)
    ok = np.where(enan, np.isnan(g), (g == e) & (np.signbit(g) == np.signbit(e)))
    if fmt.name in NATIVE and mpgrad.FORMATS[fmt.name] == fmt and enan.any():
        spec = spec_of(fmt)
        uint = UINT[fmt.storage.itemsize]
        bits = got.ravel().view(uint)
        want = np.where(np.signbit(e), uint(nan_bits(spec, True)), uint(nan_bits(spec, False)))
        ok &= ~enan | (bits == want)
    if not ok.all():
        bad = np.flatnonzero(~ok)
        if isinstance(inputs, tuple):
            hi, lo = (np.asarray(a, dtype=np.float64).ravel() for a in inputs)
            show = lambda i: _describe((hi[i], lo[i]))  # noqa: E731
        else:
            xs = np.asarray(inputs).astype(np.float64).ravel()
            show = lambda i: _describe(xs[i])  # noqa: E731
        lines = []
        for i in bad[:12]:
            extra = ""
            if np.isnan(e[i]) and np.isnan(g[i]):
                extra = f" (bits {int(got.ravel().view(UINT[fmt.storage.itemsize])[i]):#x})"
            lines.append(f"  x={show(i)}: expected {e[i]!r}, got {g[i]!r}{extra}")
        pytest.fail(f"{fmt.name} {what}: {bad.size} of {ok.size} results wrong\n"
                    + "\n".join(lines))


def reference_batch(xs, fmt, modes, **flags):
    """Reference values (float64 array) and summed RoundingStats for a list of inputs.

    modes: a mode, giving (values, stats); or a tuple of modes, giving {mode: (values, stats)}.
    """
    many = isinstance(modes, tuple)
    modes = modes if many else (modes,)
    out = np.empty((len(modes), len(xs)))
    counts = np.zeros((len(modes), 5), dtype=np.int64)
    for i, x in enumerate(xs):
        for k, r in enumerate(reference_modes(x, fmt, modes, **flags)):
            out[k, i] = r.value
            to_zero = r.underflow and r.value == 0  # underflow: the input was nonzero
            counts[k] += (r.inexact, r.overflow, r.underflow, r.invalid, to_zero)
    result = {mode: (out[k], RoundingStats(total=len(xs), inexact=int(counts[k, 0]),
                                           overflow=int(counts[k, 1]),
                                           underflow=int(counts[k, 2]), invalid=int(counts[k, 3]),
                                           to_zero=int(counts[k, 4])))
              for k, mode in enumerate(modes)}
    return result if many else result[modes[0]]


# --- the format's grid, from its fields alone ----------------------------------------------

def code_values(spec: Spec, codes: np.ndarray) -> np.ndarray:
    """Values of nonnegative codes by the plain encoding formula, with no top-field exceptions.

    One past the largest finite code this gives the next grid value above max (the value
    that rounding with an unbounded exponent reaches first), for every NaN encoding.
    """
    m = spec.fraction_bits
    codes = np.asarray(codes, dtype=np.int64)
    field = codes >> m
    frac = codes & ((1 << m) - 1)
    sig = np.where(field == 0, frac, frac + (1 << m))
    with np.errstate(over="ignore"):  # codes past float64's max give inf
        return np.ldexp(sig.astype(np.float64),
                        (np.maximum(field, 1) - spec.bias - m).astype(np.int32))


def finite_code_count(spec: Spec) -> int:
    """Number of nonnegative finite codes: the values are increasing in the code."""
    lo, hi = 0, 1 << (spec.exponent_bits + spec.fraction_bits)
    big = float(spec.max)
    while hi - lo > 1:  # largest code whose value is <= max
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if code_values(spec, np.array([mid]))[0] <= big else (lo, mid)
    return hi


def points_from_codes(spec: Spec, codes: np.ndarray) -> np.ndarray:
    """Grid values of codes and of the next codes, the midpoints between them, +-1 float64
    step around both, and +-1 float32 step around the midpoints."""
    v = code_values(spec, codes)
    nxt = code_values(spec, codes + 1)
    mid = (v + nxt) / 2  # exact: at most p + 1 bits, and far from float64 underflow
    assert np.all(np.isfinite(nxt)), "the grid value above max must be a float64"
    pts = [v, nxt, mid]
    for a in (v, mid):
        pts += [np.nextafter(a, np.inf), np.nextafter(a, -np.inf)]
    # and midpoints +- one float32 step: float32 inputs next to a tie (exact in float64)
    with np.errstate(over="ignore", invalid="ignore"):
        step32 = np.spacing(np.abs(mid).astype(np.float32)).astype(np.float64)
    pts += [mid + step32, mid - step32]
    return np.concatenate(pts)


def with_specials(pos: np.ndarray, spec: Spec) -> np.ndarray:
    """Both signs of the positive points, boundary extras, +-0, +-inf and (if allowed) NaN."""
    sub = float(spec.smallest_subnormal)
    big = float(spec.max)
    with np.errstate(over="ignore"):
        extras = np.array([0.0, 5e-324, 2.0 ** -600, sub / 4, sub / 2, 3 * sub / 4,
                           float(spec.smallest_normal) * (1 - 2.0 ** -40),
                           2 * big, 4 * big, 1e300, np.finfo(np.float64).max])
    pos = np.concatenate([pos, extras])
    pos = np.unique(pos[np.isfinite(pos) & (pos >= 0)])
    specials = [np.inf, -np.inf] + ([np.nan, -np.nan] if spec.has_nan else [])
    return np.concatenate([pos, -pos, specials])


@lru_cache(maxsize=None)
def points(name: str) -> np.ndarray:
    """The test inputs for a format: exhaustive, or sampled codes for float32/tf32/float64."""
    fmt = ALL_FORMATS[name]
    spec = spec_of(fmt)
    n = finite_code_count(spec)
    if name == "float64":  # every float64 is exact; bit patterns and the boundaries
        rng = np.random.default_rng(_seed("points", name))
        binades = np.arange(1, spec.top_field + 1, dtype=np.int64) << spec.fraction_bits
        codes = np.concatenate([rng.integers(0, n, size=4000), np.arange(64), np.arange(n - 64, n),
                                binades - 1, binades, binades + 1])
        codes = codes[(codes >= 0) & (codes < n)]
        return with_specials(code_values(spec, codes), spec)
    if name in SAMPLED:
        rng = np.random.default_rng(_seed("points", name))
        m = spec.fraction_bits
        codes = np.concatenate([
            rng.integers(0, n, size=3000),
            np.arange(0, 300),                                   # subnormals, from 0
            np.arange((1 << m) - 100, (1 << m) + 100),           # around the smallest normal
            np.arange(n - 300, n),                               # the top, up to max
            (np.arange(1, spec.top_field + 1) << m) - 1,         # just below every binade
        ])
    else:
        codes = np.arange(n)
    codes = np.unique(codes[(codes >= 0) & (codes < n)])
    return with_specials(points_from_codes(spec, codes), spec)


@lru_cache(maxsize=None)
def _expected_all_modes(name: str):
    return reference_batch(points(name).tolist(), ALL_FORMATS[name], MODES)


def expected(name: str, mode: str):
    """Reference results (values, RoundingStats) for points(name): computed once per session."""
    return _expected_all_modes(name)[mode]


# === 1. the reference itself ===============================================================

F16, BF16, E4M3 = mpgrad.float16, mpgrad.bfloat16, mpgrad.float8_e4m3fn
INF, NAN = math.inf, math.nan

# (format, exact input, mode, expected), each worked out by hand.
HAND_CHECKED = [
    # float16: p = 11, emin = -14, max = 65504 = (2 - 2**-10) * 2**15, ulp there 32.
    (F16, 65504.0, "nearest_even", 65504.0),
    (F16, 65519.99, "nearest_even", 65504.0),       # below the threshold 65504 + 16
    (F16, 65520.0, "nearest_even", INF),            # tie; 65504 is odd, 65536 even: overflow
    (F16, 65520.0, "toward_zero", 65504.0),
    (F16, 65520.0, "up", INF),
    (F16, -65520.0, "up", -65504.0),
    (F16, -65520.0, "down", -INF),
    (F16, 65520.0, "odd", 65504.0),                 # 65504 has an odd last bit
    (F16, 1e6, "odd", 65504.0),                     # overflow: odd gives max
    (F16, 2.0 ** -24, "nearest_even", 2.0 ** -24),  # smallest subnormal, exact
    (F16, 2.0 ** -25, "nearest_even", 0.0),         # half of it: tie to even 0
    (F16, 2.0 ** -25, "nearest_away", 2.0 ** -24),
    (F16, 2.0 ** -25, "odd", 2.0 ** -24),
    (F16, -2.0 ** -25, "up", -0.0),
    (F16, -2.0 ** -25, "down", -(2.0 ** -24)),
    (F16, 2.0 ** -25 + 2.0 ** -70, "nearest_even", 2.0 ** -24),  # just above the tie
    (F16, 3 * 2.0 ** -26, "nearest_even", 2.0 ** -24),
    (F16, 3 * 2.0 ** -25, "nearest_even", 2.0 ** -23),  # tie between 1 and 2 subnormal ulps
    (F16, 2.0 ** -14 - 2.0 ** -25, "nearest_even", 2.0 ** -14),  # tie below smallest normal
    (F16, 1 + 2.0 ** -11, "nearest_even", 1.0),
    (F16, 1 + 2.0 ** -11, "nearest_away", 1 + 2.0 ** -10),
    (F16, 1 + 3 * 2.0 ** -11, "nearest_even", 1 + 2.0 ** -9),
    (F16, 1 + 2.0 ** -12, "odd", 1 + 2.0 ** -10),
    (F16, 1 + 2.0 ** -12, "up", 1 + 2.0 ** -10),
    (F16, -(1 + 2.0 ** -12), "up", -1.0),
    (F16, 2 - 2.0 ** -30, "toward_zero", 2 - 2.0 ** -10),
    (F16, 2 - 2.0 ** -30, "odd", 2 - 2.0 ** -10),
    (F16, 2 - 2.0 ** -30, "nearest_even", 2.0),
    # bfloat16: p = 8; 1 + 2**-8 + 2**-30 lies above the midpoint 1 + 2**-8.
    (BF16, 1 + 2.0 ** -8 + 2.0 ** -30, "nearest_even", 1.0078125),
    # e4m3fn: max 448 = 1.110b * 2**8, next grid value 480, threshold 464.
    (E4M3, 464.0, "nearest_even", 448.0),
    (E4M3, 464.0, "nearest_away", NAN),
    (E4M3, 464.5, "nearest_even", NAN),
    (E4M3, -500.0, "nearest_even", -NAN),
    (E4M3, 470.0, "toward_zero", 448.0),
    (E4M3, 470.0, "odd", 448.0),                    # 480 is odd but beyond max
    (E4M3, 2.0 ** -9, "nearest_even", 2.0 ** -9),   # smallest subnormal
    (E4M3, 2.0 ** -10, "nearest_even", 0.0),
    (E4M3, INF, "nearest_even", NAN),
    # e4m3fnuz: bias 8, max 240, no -0; e2m1: max 6, no NaN nor inf.
    (mpgrad.float8_e4m3fnuz, -1e-10, "nearest_even", 0.0),
    (mpgrad.float8_e4m3fnuz, 250.0, "nearest_even", NAN),
    (mpgrad.float8_e4m3fnuz, 247.0, "nearest_even", 240.0),  # threshold (240 + 256) / 2 = 248
    (mpgrad.float4_e2m1fn, 7.0, "nearest_even", 6.0),  # tie 6 | 8 -> 8 = overflow -> max
    (mpgrad.float4_e2m1fn, 5.0, "nearest_even", 4.0),  # tie 4 | 6 -> 4 (even)
    (mpgrad.float4_e2m1fn, -INF, "nearest_even", -6.0),
    (mpgrad.float4_e2m1fn, 0.25, "nearest_even", 0.0),
    (mpgrad.float4_e2m1fn, 0.75, "nearest_even", 1.0),
    (mpgrad.float4_e2m1fn, 0.25, "odd", 0.5),
]


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))


@pytest.mark.parametrize("fmt,x,mode,want", HAND_CHECKED,
                         ids=[f"{f.name}-{x!r}-{m}" for f, x, m, _ in HAND_CHECKED])
def test_reference_hand_checked(fmt, x, mode, want):
    assert _same(ref_round(x, fmt, mode), want)
    if math.isnan(want):  # the reference keeps the sign of a NaN it makes
        assert math.copysign(1, ref_round(x, fmt, mode)) == math.copysign(1, want)


def test_mpgrad_hand_checked():
    """The same table straight against mpgrad, for readable failures."""
    for fmt, x, mode, want in HAND_CHECKED:
        got = float(round_to(np.array([x]), fmt, mode).astype(np.float64)[0])
        assert _same(got, want), (fmt.name, x, mode, want, got)


def _rational_round(x: Fraction, spec: Spec, mode: str) -> Fraction:
    """A second model of rounding to the unbounded grid, by integer arithmetic only."""
    a = abs(x)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1  # now 2**e <= a < 2**(e+1)
    q = spec.quantum(e)
    n, rem = divmod(a, q)      # a = n*q + rem, 0 <= rem < q
    n = int(n)
    r = rem / q                # the discarded fraction of an ulp, in [0, 1)
    if r == 0:
        away = False
    elif mode == "nearest_even":
        away = r > Fraction(1, 2) or (r == Fraction(1, 2) and n % 2 == 1)
    elif mode == "nearest_away":
        away = r >= Fraction(1, 2)
    elif mode == "toward_zero":
        away = False
    elif mode == "up":
        away = x > 0
    elif mode == "down":
        away = x < 0
    else:  # odd
        away = n % 2 == 0
    result = (n + away) * q
    return result if x > 0 else -result


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float8_e4m3fn", "float4_e2m1fn",
                                  "e11m2_bias1070", "float64"])
def test_reference_agrees_with_rational_model(name):
    spec = spec_of(ALL_FORMATS[name])
    rng = np.random.default_rng(_seed("rational", name))
    xs = list(rng.choice(points(name)[np.isfinite(points(name)) & (points(name) != 0)], 600))
    # and random rationals that are not dyadic at all
    xs += [Fraction(int(a), int(b)) * Fraction(2) ** int(s)
           for a, b, s in zip(rng.integers(-10**6, 10**6, 300), rng.integers(1, 10**6, 300),
                              rng.integers(spec.emin - spec.fraction_bits - 4, spec.emax, 300))
           if a != 0]
    for x in xs:
        fx = Fraction(x) if not isinstance(x, Fraction) else x
        for mode in MODES:
            got = Fraction(*round_unbounded(exact(x), spec, mode).as_integer_ratio())
            assert got == _rational_round(fx, spec, mode), (x, mode)


def test_reference_agrees_with_hardware_float32_cast():
    """float64 -> float32 casts are correctly rounded (nearest even) by the hardware."""
    xs = points("float32")
    xs = xs[np.isfinite(xs)]
    ref = np.array([ref_round(x, mpgrad.float32, "nearest_even") for x in xs])
    with np.errstate(over="ignore"):
        hw = xs.astype(np.float32).astype(np.float64)
    assert np.array_equal(ref, hw) and np.array_equal(np.signbit(ref), np.signbit(hw))


@pytest.mark.parametrize("name", list(mpgrad.FORMATS) + list(CUSTOM))
def test_format_parameters(name):
    """mpgrad's Format attributes agree with the values derived from the fields alone."""
    fmt = ALL_FORMATS[name]
    spec = spec_of(fmt)
    assert fmt.precision == spec.p
    assert fmt.min_exponent == spec.emin and fmt.max_exponent == spec.emax
    assert fmt.max == float(spec.max)
    assert fmt.smallest_normal == float(spec.smallest_normal)
    if spec.subnormals:
        assert fmt.smallest_subnormal == float(spec.smallest_subnormal)
    assert fmt.eps == 2.0 ** -spec.fraction_bits
    assert (fmt.infinities, fmt.has_nan, fmt.signed_zero) == (
        spec.infinities, spec.has_nan, spec.signed_zero)
    if name in NATIVE:
        fi = ml_dtypes.finfo(fmt.storage)
        assert (float(fi.max), float(fi.smallest_normal), float(fi.smallest_subnormal),
                float(fi.eps), fi.nmant) == (fmt.max, fmt.smallest_normal,
                                              fmt.smallest_subnormal, fmt.eps, fmt.fraction_bits)


def test_known_maxima():
    assert [mpgrad.FORMATS[n].max for n in (
        "float16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
        "float6_e2m3fn", "float6_e3m2fn", "float4_e2m1fn")] == [
        65504.0, 448.0, 57344.0, 240.0, 57344.0, 7.5, 28.0, 6.0]
    assert mpgrad.tf32.max == (2 - 2.0 ** -10) * 2.0 ** 127


# === 2. exhaustive enumeration ===============================================================

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", with_slow_marks(EXHAUSTIVE + SAMPLED))
def test_every_value_and_midpoint(name, mode):
    """All representable values, midpoints and their float64 neighbours, boundaries, specials."""
    fmt = ALL_FORMATS[name]
    x = points(name)
    want, want_stats = expected(name, mode)
    assert_rounds_as(round_to(x, fmt, mode), want, x, fmt, mode)
    stats = RoundingStats()
    got = round_to(x, fmt, mode, stats=stats)
    assert_rounds_as(got, want, x, fmt, f"{mode} (stats=)")
    assert stats == want_stats


@pytest.mark.parametrize("mode", ["nearest_even", "up", "odd"])
@pytest.mark.parametrize("name", with_slow_marks(EXHAUSTIVE + SAMPLED))
def test_narrow_input_dtypes(name, mode):
    """The same points, where exact in float32 / float16 / bfloat16, fed in that dtype."""
    fmt = ALL_FORMATS[name]
    x = points(name)
    want, _ = expected(name, mode)
    for dt in (np.float32, np.float16, ml_dtypes.bfloat16):
        with np.errstate(over="ignore", invalid="ignore"):
            narrow = x.astype(dt)
            keep = (narrow.astype(np.float64) == x) | np.isnan(x)
        assert_rounds_as(round_to(narrow[keep], fmt, mode), want[keep], x[keep], fmt,
                         f"{mode}, {np.dtype(dt).name} input")


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
                                  "float8_e4m3fnuz", "float8_e5m2fnuz", "float6_e2m3fn",
                                  "float6_e3m2fn", "float4_e2m1fn"])
def test_own_dtype_is_identity(name):
    """Every value already in the format's own storage dtype comes back bit for bit."""
    fmt = mpgrad.FORMATS[name]
    codes = np.arange(2 ** fmt.bits, dtype=UINT[fmt.storage.itemsize])
    x = codes.view(fmt.storage)
    with np.errstate(invalid="ignore"):  # (signalling NaN patterns)
        finite = np.isfinite(x.astype(np.float64))
    for mode in MODES:
        bits = round_to(x[finite], fmt, mode).view(codes.dtype)  # (fnuz's 0x80 is NaN)
        assert np.array_equal(bits, codes[finite]), mode


# === 3. random float64 over the whole exponent range, and hypothesis =======================

def random_float64(rng: np.random.Generator, spec: Spec, n: int) -> np.ndarray:
    """n/2 uniform random bit patterns, n/2 random values with exponents near the format's range."""
    bits = rng.integers(0, 2 ** 64, size=n // 2, dtype=np.uint64, endpoint=False)
    wide = bits.view(np.float64)
    e = rng.integers(spec.emin - spec.fraction_bits - 3, spec.emax + 3, size=n - n // 2)
    with np.errstate(over="ignore"):  # beyond float64: inf, a special worth having too
        near = np.ldexp(rng.uniform(1, 2, size=e.size), e) * rng.choice([-1.0, 1.0], size=e.size)
    x = np.concatenate([wide, near])
    if not spec.has_nan:
        x = np.where(np.isnan(x), 0.0, x)
    return x


@lru_cache(maxsize=None)
def _random_cases(name: str):
    fmt = ALL_FORMATS[name]
    x = random_float64(np.random.default_rng(_seed("random", name)), spec_of(fmt), 10_000)
    return x, reference_batch(x.tolist(), fmt, MODES)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(ALL_FORMATS))
def test_random_float64(name, mode):
    """10000 inputs per format: half uniform random bit patterns, half near the format's range."""
    fmt = ALL_FORMATS[name]
    x, expected_by_mode = _random_cases(name)
    want, want_stats = expected_by_mode[mode]
    assert_rounds_as(round_to(x, fmt, mode), want, x, fmt, mode)  # (may take a fast path)
    stats = RoundingStats()
    assert_rounds_as(round_to(x, fmt, mode, stats=stats), want, x, fmt, f"{mode} (stats=)")
    assert stats == want_stats


HYPOTHESIS_FORMATS = ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2fnuz",
                      "float4_e2m1fn", "float32", "tf32", "e3m4_bias5"]


@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(x=st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
       name=st.sampled_from(HYPOTHESIS_FORMATS), mode=st.sampled_from(MODES))
def test_hypothesis_floats(x, name, mode):
    fmt = ALL_FORMATS[name]
    if math.isnan(x) and not fmt.has_nan:
        x = 0.0
    arr = np.array([x])
    assert_rounds_as(round_to(arr, fmt, mode), [ref_round(x, fmt, mode)], arr, fmt, mode)


@settings(max_examples=300, deadline=None, database=None)
@given(x=st.floats(min_value=-1e6, max_value=1e6, allow_subnormal=True),
       name=st.sampled_from(HYPOTHESIS_FORMATS), mode=st.sampled_from(MODES),
       saturate=st.booleans(), subnormals=st.booleans())
def test_hypothesis_flags(x, name, mode, saturate, subnormals):
    fmt = ALL_FORMATS[name]
    scale = 2.0 ** (fmt.min_exponent - 4)   # also reach the format's subnormal range
    for v in (x, x * scale):
        arr = np.array([v])
        got = round_to(arr, fmt, mode, saturate=saturate, subnormals=subnormals)
        want = ref_round(v, fmt, mode, saturate=saturate, subnormals=subnormals)
        assert_rounds_as(got, [want], arr, fmt, f"{mode} saturate={saturate} sub={subnormals}")


# === 4. the double-rounding trap ============================================================

def test_double_rounding_trap_float64_to_bfloat16():
    """1 + 2**-8 + 2**-30 lies just above the bf16 midpoint 1 + 2**-8.

    A float32 detour first rounds it to 1 + 2**-8 (2**-30 is below float32's half ulp 2**-24),
    a tie, then to even: 1.0. Rounding once gives 1 + 2**-7 = 1.0078125.
    """
    x = np.array([1 + 2.0 ** -8 + 2.0 ** -30, -(1 + 2.0 ** -8 + 2.0 ** -30)])
    mpfr_value = ref_round(x[0], BF16, "nearest_even")
    assert mpfr_value == 1.0078125
    ours = round_to(x, BF16).astype(np.float64)
    theirs = x.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)  # the detour
    assert list(theirs) == [1.0, -1.0]
    assert list(ours) == [mpfr_value, -mpfr_value]
    assert not np.array_equal(ours, theirs)


# === 5. double-double inputs ===============================================================

TINY = (2.0 ** -1074, 2.0 ** -600)


def pair_cases(name: str, n_codes: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) pairs where lo (below hi's float64 ulp, or not) decides the rounding."""
    fmt = ALL_FORMATS[name]
    spec = spec_of(fmt)
    rng = np.random.default_rng(_seed("pairs", name))
    n = finite_code_count(spec)
    m = spec.fraction_bits
    codes = np.concatenate([rng.integers(0, n, size=n_codes), np.arange(4), np.arange(n - 3, n),
                            (np.arange(1, spec.top_field + 1, max(1, spec.top_field // 16)) << m)])
    codes = np.unique(np.clip(codes, 0, n - 1))
    v = code_values(spec, codes)
    nxt = code_values(spec, codes + 1)  # (inf above float64's max: midpoints unused there)
    his = [v] if name == "float64" else [v, (v + nxt) / 2]  # grid values and midpoints
    hi = np.concatenate(his)
    with np.errstate(over="ignore", invalid="ignore"):
        u = np.spacing(hi)  # float64 ulp of hi (above it)
        los = [np.zeros_like(hi)] + [np.full_like(hi, t) for t in TINY]
        los += [u / 2, u / 4, 3 * u / 4,                           # ties and quarter ulps
                np.nextafter(u / 2, 0), np.nextafter(u / 2, 1),  # just off the float64 tie
                np.nextafter(u / 4, 0), 3 * u, 1.5 * u]           # unnormalised: |lo| > ulp/2
    H = np.concatenate([hi] * len(los))
    L = np.concatenate(los)
    H, L = np.concatenate([H, H, -H, -H]), np.concatenate([L, -L, L, -L])
    with np.errstate(over="ignore"):
        keep = np.isfinite(H + L)
    return H[keep], L[keep]


@lru_cache(maxsize=None)
def _expected_pairs_all_modes(name: str):
    H, L = pair_cases(name)
    return reference_batch(list(zip(H.tolist(), L.tolist())), ALL_FORMATS[name], MODES)


def expected_pairs(name: str, mode: str):
    return _expected_pairs_all_modes(name)[mode]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["float64", "float32", "tf32", "float16", "bfloat16",
                                  "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                  "float8_e5m2fnuz", "float6_e2m3fn", "float6_e3m2fn",
                                  "float4_e2m1fn", "e6m9", "e3m4_bias5", "e11m2_bias1070"])
def test_double_double_pairs(name, mode):
    fmt = ALL_FORMATS[name]
    H, L = pair_cases(name)
    want, want_stats = expected_pairs(name, mode)
    stats = RoundingStats()
    assert_rounds_as(round_to((H, L), fmt, mode, stats=stats), want, (H, L), fmt, mode)
    assert stats == want_stats


@lru_cache(maxsize=None)
def _expected_pairs_flags(name: str, saturate: bool, subnormals: bool):
    H, L = pair_cases(name)
    return reference_batch(list(zip(H.tolist(), L.tolist())), ALL_FORMATS[name], MODES,
                           saturate=saturate, subnormals=subnormals)


@pytest.mark.parametrize("flags", [(True, True), (False, False)], ids=["saturate", "no-subnormals"])
@pytest.mark.parametrize("name", ["float64", "float16", "float8_e4m3fn", "float8_e5m2fnuz",
                                  "float4_e2m1fn"])
def test_double_double_pairs_saturate_and_flush(name, flags):
    saturate, subnormals = flags
    fmt = ALL_FORMATS[name]
    H, L = pair_cases(name)
    expected_by_mode = _expected_pairs_flags(name, saturate, subnormals)
    for mode in MODES:
        want, want_stats = expected_by_mode[mode]
        stats = RoundingStats()
        got = round_to((H, L), fmt, mode, saturate=saturate, subnormals=subnormals, stats=stats)
        assert_rounds_as(got, want, (H, L), fmt, f"{mode} saturate={saturate} sub={subnormals}")
        assert stats == want_stats, mode


# (format, hi, lo, mode, expected): worked out by hand, checked against the reference too.
PAIR_HAND_CHECKED = [
    # just below 1: the grid below a power of two is twice as fine (ulp 2**-53 in float64);
    # 1 - 2**-54 - 2**-60 is below the midpoint 1 - 2**-54 of 1 - 2**-53 and 1.
    ("float64", 1.0, -(2.0 ** -54 + 2.0 ** -60), "nearest_even", 1 - 2.0 ** -53),
    ("float64", 1.0, -2.0 ** -54, "nearest_even", 1.0),              # tie; 1.0 is even
    ("float64", 1.0, -2.0 ** -54, "nearest_away", 1.0),
    ("float64", 1.0, -2.0 ** -54, "odd", 1 - 2.0 ** -53),
    ("float64", 1.0, 2.0 ** -53, "nearest_even", 1.0),                # tie above 1
    ("float64", 1.0, 2.0 ** -53, "nearest_away", 1 + 2.0 ** -52),
    ("float64", 1.0, 2.0 ** -53 * (1 + 2.0 ** -52), "nearest_even", 1 + 2.0 ** -52),
    ("float64", 1.0, 2.0 ** -1074, "up", 1 + 2.0 ** -52),             # directed modes move
    ("float64", 1.0, 2.0 ** -1074, "down", 1.0),
    ("float64", 1.0, 2.0 ** -1074, "odd", 1 + 2.0 ** -52),
    ("float64", 1.0, -2.0 ** -1074, "toward_zero", 1 - 2.0 ** -53),
    ("float64", 1.0, -2.0 ** -1074, "down", 1 - 2.0 ** -53),
    ("float64", 1.0, -2.0 ** -1074, "up", 1.0),
    ("float64", -1.0, 2.0 ** -1074, "up", -(1 - 2.0 ** -53)),
    ("float64", 3.0, 1.0, "nearest_even", 4.0),                       # not normalised
    ("float64", 2.0 ** -1074, 2.0 ** -1074, "nearest_even", 2.0 ** -1073),
    ("bfloat16", 1 + 2.0 ** -8, 0.0, "nearest_even", 1.0),            # the tie itself
    ("bfloat16", 1 + 2.0 ** -8, 2.0 ** -600, "nearest_even", 1 + 2.0 ** -7),
    ("bfloat16", 1 + 2.0 ** -8, -2.0 ** -600, "nearest_even", 1.0),
    ("bfloat16", 1 + 2.0 ** -8, -2.0 ** -1074, "nearest_away", 1.0),
    ("bfloat16", 1 + 3 * 2.0 ** -8, 0.0, "nearest_even", 1 + 2.0 ** -6),
    ("bfloat16", 1.0, -2.0 ** -70, "toward_zero", 1 - 2.0 ** -8),
    ("bfloat16", 1.0, -2.0 ** -70, "nearest_even", 1.0),
    ("float16", 65520.0, -2.0 ** -600, "nearest_even", 65504.0),
    ("float16", 65520.0, 0.0, "nearest_even", INF),
    ("float16", 2.0 ** -25, 2.0 ** -1074, "nearest_even", 2.0 ** -24),
    ("float16", 2.0 ** -25, -2.0 ** -1074, "nearest_even", 0.0),
    ("float16", -2.0 ** -25, 2.0 ** -1074, "nearest_even", -0.0),
    ("float16", 1.0, 0.75, "nearest_even", 1.75),
    ("float16", 2.0 ** -30, 1.0, "up", 1 + 2.0 ** -10),
    ("float16", 2.0 ** -30, 1.0, "nearest_even", 1.0),
    ("float8_e4m3fn", 464.0, -2.0 ** -1074, "nearest_even", 448.0),
    ("float8_e4m3fn", 464.0, 2.0 ** -1074, "nearest_even", NAN),
    ("float8_e4m3fn", 0.0, -0.0, "nearest_even", 0.0),
    ("float8_e4m3fn", -0.0, -0.0, "nearest_even", -0.0),
]


@pytest.mark.parametrize("name,hi,lo,mode,want", PAIR_HAND_CHECKED,
                         ids=[f"{c[0]}-{c[1]!r}-{c[2]!r}-{c[3]}" for c in PAIR_HAND_CHECKED])
def test_double_double_hand_checked(name, hi, lo, mode, want):
    fmt = ALL_FORMATS[name]
    assert _same(ref_round((hi, lo), fmt, mode), want)
    got = round_to((np.array([hi]), np.array([lo])), fmt, mode)
    assert_rounds_as(got, [want], (np.array([hi]), np.array([lo])), fmt, mode)


@pytest.mark.parametrize("name", ["float64", "float32", "bfloat16", "float8_e4m3fn", "float16"])
def test_double_double_random(name):
    """Random pairs: lo anywhere from far below hi's ulp to far above it (unnormalised)."""
    fmt = ALL_FORMATS[name]
    spec = spec_of(fmt)
    rng = np.random.default_rng(_seed("random pairs", name))
    n = 1500
    e = rng.integers(spec.emin - spec.fraction_bits - 2, min(spec.emax + 2, 1022), size=n)
    hi = np.ldexp(rng.uniform(1, 2, n), e) * rng.choice([-1.0, 1.0], n)
    lo = np.ldexp(rng.uniform(-1, 1, n), e - rng.integers(-2, 120, size=n))
    # and a third of the his snapped to the format's grid or its midpoints
    snap = rng.random(n) < 0.35
    q = np.ldexp(1.0, np.maximum(np.maximum(e, spec.emin) - spec.fraction_bits - 1, -1074))
    hi = np.where(snap, np.round(hi / q) * q, hi)
    expected_by_mode = reference_batch(list(zip(hi.tolist(), lo.tolist())), fmt, MODES)
    for mode in MODES:
        want, want_stats = expected_by_mode[mode]
        stats = RoundingStats()
        assert_rounds_as(round_to((hi, lo), fmt, mode, stats=stats), want, (hi, lo), fmt, mode)
        assert stats == want_stats, mode


@settings(max_examples=300, deadline=None, database=None)
@given(hi=st.floats(min_value=-2.0 ** 1000, max_value=2.0 ** 1000, allow_subnormal=True),
       frac=st.floats(min_value=-1, max_value=1), shift=st.integers(-5, 1100),
       name=st.sampled_from(["float64", "float32", "bfloat16", "float16", "float8_e5m2"]),
       mode=st.sampled_from(MODES))
def test_hypothesis_pairs(hi, frac, shift, name, mode):
    fmt = ALL_FORMATS[name]
    lo = math.ldexp(frac, math.frexp(hi)[1] - 53 - shift) if hi != 0 else frac * 2.0 ** -shift
    pair = (np.array([hi]), np.array([lo]))
    assert_rounds_as(round_to(pair, fmt, mode), [ref_round((hi, lo), fmt, mode)], pair, fmt, mode)


@pytest.mark.parametrize("name", ["float64", "bfloat16", "float8_e4m3fn"])
def test_double_double_whose_float64_sum_overflows(name):
    """hi + lo is finite but fl(hi + lo) overflows: float64 max + half its ulp.

    The exact value is (2 - 2**-53) * 2**1024 - ..., i.e. max64 + 2**970, a finite number
    just above float64's max: toward_zero must give the format's max, not an infinity.
    """
    fmt = ALL_FORMATS[name]
    big = np.finfo(np.float64).max
    hi = np.array([big, -big, big, -big])
    lo = np.array([2.0 ** 970, -(2.0 ** 970), 2.0 ** 969, -(2.0 ** 969)])
    expected_by_mode = reference_batch(list(zip(hi.tolist(), lo.tolist())), fmt, MODES)
    counts = {}
    for mode in MODES:  # first the values in every mode, then the counts
        want, want_stats = expected_by_mode[mode]
        stats = RoundingStats()
        with np.errstate(over="ignore", invalid="ignore"):
            got = round_to((hi, lo), fmt, mode, stats=stats)
        assert_rounds_as(got, want, (hi, lo), fmt, mode)
        counts[mode] = (stats, want_stats)
    for mode, (stats, want_stats) in counts.items():
        assert stats == want_stats, mode


def test_double_double_flush_decided_by_lo():
    """subnormals=False: hi = 2**-14 (float16's smallest normal) with lo < 0 is below it: +-0."""
    hi = np.array([2.0 ** -14, -(2.0 ** -14), 2.0 ** -14, -(2.0 ** -14)])
    lo = np.array([-(2.0 ** -1074), 2.0 ** -1074, 0.0, -0.0])
    want = [0.0, -0.0, 2.0 ** -14, -(2.0 ** -14)]  # in every mode
    for mode in MODES:
        assert all(_same(ref_round((h, v), F16, mode, subnormals=False), w)
                   for h, v, w in zip(hi, lo, want))
        got = round_to((hi, lo), F16, mode, subnormals=False)
        assert_rounds_as(got, want, (hi, lo), F16, f"{mode} subnormals=False")


def test_double_double_specials():
    hi = np.array([np.inf, -np.inf, np.nan, 1.0, 0.0])
    lo = np.array([1.0, -1.0, 0.0, np.nan, np.inf])
    with np.errstate(invalid="ignore"):  # (mpgrad's TwoSum on inf warns; not under test here)
        got = round_to((hi, lo), F16).astype(np.float64)
    assert got[0] == np.inf and got[1] == -np.inf and np.isnan(got[2:4]).all()
    assert got[4] == np.inf
    with pytest.raises(ValueError):
        round_to((np.array([np.nan]), np.array([0.0])), mpgrad.float4_e2m1fn)


# === 6. flags, zeros, NaN, stats ==============================================================

def _flag_points(name: str) -> np.ndarray:
    """All points for small formats; for wide ones, those where the flags can matter."""
    x = points(name)
    fmt = ALL_FORMATS[name]
    if fmt.bits <= 9:
        return x
    a = np.abs(x)
    return x[~np.isfinite(a) | (a < 4 * fmt.smallest_normal) | (a > fmt.max / 4)]


@lru_cache(maxsize=None)
def _expected_flags_all_modes(name, saturate, subnormals):
    return reference_batch(_flag_points(name).tolist(), ALL_FORMATS[name], MODES,
                           saturate=saturate, subnormals=subnormals)


def expected_flags(name, mode, saturate, subnormals):
    return _expected_flags_all_modes(name, saturate, subnormals)[mode]


@pytest.mark.parametrize("flags", [(True, True), (False, False), (True, False)],
                         ids=["saturate", "no-subnormals", "saturate+no-subnormals"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", EXHAUSTIVE + ("float32", "tf32"))
def test_saturate_and_flush(name, mode, flags):
    saturate, subnormals = flags
    fmt = ALL_FORMATS[name]
    x = _flag_points(name)
    want, want_stats = expected_flags(name, mode, saturate, subnormals)
    stats = RoundingStats()
    got = round_to(x, fmt, mode, saturate=saturate, subnormals=subnormals, stats=stats)
    assert_rounds_as(got, want, x, fmt, f"{mode} saturate={saturate} subnormals={subnormals}")
    assert stats == want_stats


@pytest.mark.parametrize("mode", MODES)
def test_flush_happens_before_rounding(mode):
    """subnormals=False: 0 < |x| < 2**-14 gives a signed zero, even where rounding would not."""
    below = np.array([2.0 ** -15, 2.0 ** -14 * (1 - 2.0 ** -30), 2.0 ** -24, 5e-324])
    x = np.concatenate([below, -below])
    got = round_to(x, F16, mode, subnormals=False).astype(np.float64)
    assert np.all(got == 0)
    assert np.array_equal(np.signbit(got), np.signbit(x))
    normal = np.array([2.0 ** -14, -(2.0 ** -14)])
    assert np.array_equal(round_to(normal, F16, mode, subnormals=False).astype(float), normal)
    # fnuz: the zero is +0 (the pattern 0x80 is the NaN)
    bits = round_to(-below, mpgrad.float8_e4m3fnuz, mode, subnormals=False).view(np.uint8)
    assert np.all(bits == 0)


def test_saturate_hand_checked():
    x = np.array([1e6, -1e6, np.inf, -np.inf, 65520.0, np.nan])
    got = round_to(x, F16, saturate=True).astype(np.float64)
    assert list(got[:5]) == [65504.0, -65504.0, 65504.0, -65504.0, 65504.0] and np.isnan(got[5])
    got = round_to(x, E4M3, saturate=True).astype(np.float64)
    assert list(got[:5]) == [448.0, -448.0, 448.0, -448.0, 448.0] and np.isnan(got[5])
    got = round_to(x[:5], mpgrad.float8_e5m2fnuz, "up", saturate=True).astype(np.float64)
    assert list(got) == [57344.0, -57344.0, 57344.0, -57344.0, 57344.0]


@pytest.mark.parametrize("name", [n for n in mpgrad.FORMATS if n != "float64"])
def test_signed_zeros(name):
    """Zeros keep their sign, and so do tiny values rounding to zero, except in fnuz formats."""
    fmt = mpgrad.FORMATS[name]
    tiny = fmt.smallest_subnormal / 4
    neg_zero = -0.0 if fmt.signed_zero else 0.0
    cases = [  # (input, mode, expected)
        (-0.0, "nearest_even", neg_zero), (0.0, "nearest_even", 0.0),
        (-0.0, "up", neg_zero), (-0.0, "down", neg_zero), (0.0, "down", 0.0),
        (-tiny, "nearest_even", neg_zero), (-tiny, "nearest_away", neg_zero),
        (-tiny, "up", neg_zero), (-tiny, "toward_zero", neg_zero), (tiny, "down", 0.0),
        (-tiny, "down", -fmt.smallest_subnormal),
        (-tiny, "odd", -fmt.smallest_subnormal),   # 0 is even: the odd neighbour is 1 ulp
    ]
    for v, mode, want in cases:
        assert _same(ref_round(v, fmt, mode), want), (v, mode)
        got = round_to(np.array([v]), fmt, mode)
        assert_rounds_as(got, [want], np.array([v]), fmt, mode)
        if want == 0 and name in NATIVE:  # the bit pattern: only the sign bit, if any
            bits = int(got.view(UINT[fmt.storage.itemsize])[0])
            assert bits == (1 << (fmt.bits - 1) if math.copysign(1, want) < 0 else 0), (v, mode)


@pytest.mark.parametrize("name", [n for n in NATIVE if mpgrad.FORMATS[n].has_nan])
def test_nan_bit_patterns(name):
    """NaN inputs (any payload, either sign) give the canonical NaN, keeping the sign if it can."""
    fmt = mpgrad.FORMATS[name]
    spec = spec_of(fmt)
    payloads = np.array([0x7FF8000000000000, 0x7FF0000000000001, 0x7FFFFFFFFFFFFFFF,
                         0xFFF8000000000000, 0xFFF0000000000001], dtype=np.uint64).view(np.float64)
    negative = np.signbit(payloads)
    uint = UINT[fmt.storage.itemsize]
    for mode in MODES + ("stochastic",):
        bits = [int(b) for b in round_to(payloads, fmt, mode).view(uint)]
        want = [nan_bits(spec, bool(s)) for s in negative]
        assert bits == want, (mode, [hex(b) for b in bits])
    # float32 NaNs (fast path for some formats)
    f32 = np.array([0x7FC00000, 0x7F800001, 0xFFC00000], dtype=np.uint32).view(np.float32)
    bits = [int(b) for b in round_to(f32, fmt).view(uint)]
    assert bits == [nan_bits(spec, s) for s in (False, False, True)]


@pytest.mark.parametrize("name", ["float6_e2m3fn", "float6_e3m2fn", "float4_e2m1fn"])
@pytest.mark.parametrize("mode", MODES + ("stochastic",))
def test_nan_into_format_without_nan_raises(name, mode):
    with pytest.raises(ValueError):
        round_to(np.array([1.0, np.nan]), name, mode)
    with pytest.raises(ValueError):
        round_to(np.array([np.nan], dtype=np.float32), name, mode, saturate=True)


def test_stats_hand_checked():
    # float16 (max 65504, smallest normal 2**-14, smallest subnormal 2**-24), nearest_even:
    #   1.0 exact | 1 + 2**-11 tie -> 1.0: inexact | 65504 exact | 65520 -> inf: inexact,
    #   overflow | 1e6 -> inf: inexact, overflow | 2**-24 exact subnormal: underflow |
    #   2**-26 -> 0: inexact, underflow | 0.0: nothing | inf: nothing (ieee has inf) |
    #   nan: nothing | -2**-14 normal: nothing.
    x = np.array([1.0, 1 + 2.0 ** -11, 65504.0, 65520.0, 1e6, 2.0 ** -24, 2.0 ** -26, 0.0,
                  np.inf, np.nan, -(2.0 ** -14)])
    stats = RoundingStats()
    round_to(x, F16, stats=stats)
    assert stats == RoundingStats(total=11, inexact=4, overflow=2, underflow=2, invalid=0,
                                  to_zero=1)

    # float16, toward_zero: 65520 -> 65504 is NOT an overflow (rounding toward zero with an
    # unbounded exponent gives 65504); 70000 -> 69952 > max is one (result max): 2 inexact.
    stats = RoundingStats()
    got = round_to(np.array([65520.0, 70000.0]), F16, "toward_zero", stats=stats)
    assert list(got.astype(float)) == [65504.0, 65504.0]
    assert stats == RoundingStats(total=2, inexact=2, overflow=1, underflow=0, invalid=0)

    # e4m3fn: 464 tie -> 448: inexact | 465 -> NaN: inexact, overflow, invalid |
    #   inf -> NaN: invalid (no infinities), not an overflow (input not finite) |
    #   nan: nothing | 2**-9 smallest subnormal, exact: underflow | 2**-11 -> 0: inexact, underflow
    x = np.array([464.0, 465.0, np.inf, np.nan, 2.0 ** -9, 2.0 ** -11])
    stats = RoundingStats()
    round_to(x, E4M3, stats=stats)
    assert stats == RoundingStats(total=6, inexact=3, overflow=1, underflow=2, invalid=2,
                                  to_zero=1)

    # e2m1 (no inf, no NaN; max 6, subnormal 0.5): 7 tie 6|8 -> 8 beyond max -> 6: inexact,
    #   overflow, not invalid | inf -> 6: invalid | 0.25 tie 0|0.5 -> 0: inexact, underflow |
    #   0.5 exact subnormal: underflow.
    x = np.array([7.0, np.inf, 0.25, 0.5])
    stats = RoundingStats()
    got = round_to(x, mpgrad.float4_e2m1fn, stats=stats)
    assert list(got.astype(float)) == [6.0, 6.0, 0.0, 0.5]
    assert stats == RoundingStats(total=4, inexact=2, overflow=1, underflow=2, invalid=1,
                                  to_zero=1)

    # subnormals=False, float16: 2**-20 flushed -> 0: inexact, underflow; 2**-14 exact: nothing.
    stats = RoundingStats()
    round_to(np.array([2.0 ** -20, 2.0 ** -14]), F16, "up", subnormals=False, stats=stats)
    assert stats == RoundingStats(total=2, inexact=1, overflow=0, underflow=1, invalid=0,
                                  to_zero=1)


def test_stats_hand_checked_fnuz():
    # e4m3fnuz (max 240, no inf, NaN = 0x80, no -0), nearest_even:
    #   1000 -> NaN: inexact, overflow, invalid (NOT an underflow: the result is not tiny) |
    #   -1e-10 -> +0: inexact, underflow | 240 exact: nothing | -inf -> NaN: invalid.
    x = np.array([1000.0, -1e-10, 240.0, -np.inf])
    stats = RoundingStats()
    got = round_to(x, mpgrad.float8_e4m3fnuz, stats=stats)
    assert list(got.view(np.uint8)) == [0x80, 0x00, 0x7F, 0x80]  # 240 = 1.111b * 2**7
    assert stats == RoundingStats(total=4, inexact=2, overflow=1, underflow=1, invalid=2,
                                  to_zero=1)


def test_custom_format_below_float64_normal_range():
    """Format.custom(11, 2, bias=1070): emin = -1069, smallest subnormal 2**-1071.

    Its normal range reaches down into float64's subnormals, so 0 must stay 0 and every
    float64 subnormal 2**-k (k <= 1069) is a normal number of the format, exactly representable.
    """
    fmt = CUSTOM["e11m2_bias1070"]
    x = np.array([0.0, -0.0, 2.0 ** -1050, 2.0 ** -1060, 3 * 2.0 ** -1070, 5e-324, 2.0 ** -1022])
    want = [0.0, -0.0, 2.0 ** -1050, 2.0 ** -1060, 3 * 2.0 ** -1070, 0.0, 2.0 ** -1022]
    assert [ref_round(v, fmt, "nearest_even") for v in x] == want
    assert_rounds_as(round_to(x, fmt), want, x, fmt, "nearest_even")


def test_record_rounding_collects_every_call():
    with record_rounding() as outer:
        round_to(np.array([1.0, 1 + 2.0 ** -11]), F16)          # 2 total, 1 inexact
        with record_rounding() as inner:
            mine = RoundingStats()
            round_to(np.array([465.0, 2.0 ** -11]), E4M3, stats=mine)  # see test above
        round_to(np.array([1.5], dtype=np.float32), BF16)        # exact (fast-path input)
    e4 = RoundingStats(total=2, inexact=2, overflow=1, underflow=1, invalid=1, to_zero=1)
    assert mine == e4 and inner == e4
    assert outer == RoundingStats(total=5, inexact=3, overflow=1, underflow=1, invalid=1,
                                  to_zero=1)
    # outside any block nothing is recorded
    round_to(np.array([1 + 2.0 ** -11]), F16)
    assert outer.total == 5


def test_format_by_name_and_bad_mode():
    x = np.array([1 + 2.0 ** -8 + 2.0 ** -30, 3.3])
    assert np.array_equal(round_to(x, "bf16").view(np.uint16), round_to(x, BF16).view(np.uint16))
    with pytest.raises(ValueError):
        round_to(x, F16, "nearest")


# === 7. stochastic rounding =================================================================

N_DRAWS = 200_000


def p_away(f: Fraction) -> float:
    """The specified probability of rounding away from zero: floor(f * 2**32) / 2**32."""
    return math.floor(f * 2 ** 32) / 2 ** 32


def check_frequency(draws: np.ndarray, toward: float, away: float, p: float, label: str):
    """Only the two neighbours occur; |p_hat - p| <= 5 * sqrt(p (1 - p) / N) (+ 1/N for p ~ 0, 1).

    The binomial standard deviation of p_hat is sqrt(p (1 - p) / N); 5 of them make a false
    alarm about a 1-in-1.7-million event per check.
    """
    d = draws.astype(np.float64)
    same = lambda a, b: (a == b) | (np.isnan(a) & np.isnan(b))  # noqa: E731
    is_away, is_toward = same(d, away), same(d, toward)
    assert np.all(is_away | is_toward), f"{label}: values other than {toward}, {away}: " \
                                        f"{np.unique(d[~(is_away | is_toward)])[:5]}"
    n = d.size
    p_hat = is_away.mean()
    bound = 5 * math.sqrt(p * (1 - p) / n) + 1 / n
    assert abs(p_hat - p) <= bound, f"{label}: frequency {p_hat}, expected {p} +- {bound}"


STOCHASTIC_CASES = [
    # (label, format, input builder, exact value for the reference)
    ("f32->bf16 f=1/4", BF16, lambda n: np.full(n, 1 + 2.0 ** -9, np.float32), 1 + 2.0 ** -9),
    ("f32->bf16 f~1/3 neg", BF16,
     lambda n: np.full(n, -(1 + 2.0 ** -7 * (21845 / 65536)), np.float32),
     -(1 + 2.0 ** -7 * (21845 / 65536))),
    ("f64->f16 f=2**-20", F16, lambda n: np.full(n, 1 + 2.0 ** -30), 1 + 2.0 ** -30),
    ("f64->f16 f=1-2**-20", F16, lambda n: np.full(n, 1 + 2.0 ** -10 - 2.0 ** -30),
     1 + 2.0 ** -10 - 2.0 ** -30),
    ("f64->f16 subnormal f=3/4", F16, lambda n: np.full(n, -0.75 * 2.0 ** -24), -0.75 * 2.0 ** -24),
    ("f64->e4m3 above max f=1/8", E4M3, lambda n: np.full(n, 452.0), 452.0),  # 448 or NaN
    ("dd->f64 f=1/4", mpgrad.float64,
     lambda n: (np.full(n, 1.0), np.full(n, 2.0 ** -54)), (1.0, 2.0 ** -54)),
    ("dd->f64 below 1, f=3/4", mpgrad.float64,
     lambda n: (np.full(n, 1.0), np.full(n, -(2.0 ** -55))), (1.0, -(2.0 ** -55))),
    ("dd->f64 f~1/3", mpgrad.float64,
     lambda n: (np.full(n, 3.0), np.full(n, 2.0 ** -51 / 3)), (3.0, 2.0 ** -51 / 3)),
    ("dd->bf16 f=1/2+2**-53", BF16,
     lambda n: (np.full(n, 1 + 2.0 ** -8), np.full(n, 2.0 ** -60)), (1 + 2.0 ** -8, 2.0 ** -60)),
    ("dd->bf16 below 1, f=1-2**-62", BF16,
     lambda n: (np.full(n, 1.0), np.full(n, -(2.0 ** -70))), (1.0, -(2.0 ** -70))),
    ("dd->f32 f=1/4+2**-37", mpgrad.float32,
     lambda n: (np.full(n, -(1 + 2.0 ** -25)), np.full(n, -(2.0 ** -60))),
     (-(1 + 2.0 ** -25), -(2.0 ** -60))),
]


@pytest.mark.parametrize("label,fmt,make,x", STOCHASTIC_CASES, ids=[c[0] for c in STOCHASTIC_CASES])
def test_stochastic_frequency(label, fmt, make, x):
    toward, away, f = stochastic_outcomes(x, fmt)
    assert 0 < f < 1, "the case must be inexact"
    with np.errstate(over="ignore", invalid="ignore"):
        draws = round_to(make(N_DRAWS), fmt, "stochastic", rng=_seed("freq", label))
    check_frequency(draws, toward, away, p_away(f), label)


@pytest.mark.parametrize("name", ["bfloat16", "float16", "float8_e4m3fn", "float8_e5m2fnuz",
                                  "float4_e2m1fn", "float32", "e3m4_bias5"])
def test_stochastic_returns_a_neighbour(name):
    """Over random inputs of all magnitudes, each result is one of the two neighbours."""
    fmt = ALL_FORMATS[name]
    spec = spec_of(fmt)
    rng = np.random.default_rng(_seed("neigh", name))
    x = random_float64(rng, spec, 6000)
    x = x[np.isfinite(x) & (x != 0)]
    got = round_to(x, fmt, "stochastic", rng=rng).astype(np.float64)
    outcomes = [stochastic_outcomes(v, fmt) for v in x]
    toward = np.array([o[0] for o in outcomes])
    away = np.array([o[1] for o in outcomes])
    f = np.array([float(o[2]) for o in outcomes])
    same = lambda a, b: (a == b) | (np.isnan(a) & np.isnan(b))  # noqa: E731
    ok = same(got, toward) | (same(got, away) & (f > 0))  # exact inputs never move
    assert ok.all(), [(x[i], toward[i], away[i], got[i]) for i in np.flatnonzero(~ok)[:5]]
    if fmt.has_nan:  # the counts follow from which neighbour each draw picked
        stats = RoundingStats()
        again = round_to(x, fmt, "stochastic", rng=_seed("neigh stats", name), stats=stats)
        a = again.astype(np.float64)
        beyond = ~np.isfinite(a)  # an infinity or NaN from a finite input: overflowed
        assert stats == RoundingStats(
            total=x.size, inexact=int(np.count_nonzero((f > 0) | beyond)),
            overflow=int(np.count_nonzero(beyond)),
            underflow=int(np.count_nonzero(~beyond & (np.abs(a) < fmt.smallest_normal))),
            invalid=int(np.count_nonzero(np.isnan(a))),
            to_zero=int(np.count_nonzero((a == 0) & (x != 0))))
    # grid values (the reference's toward-zero neighbours) are returned as they are
    grid = toward[np.isfinite(toward)]
    again = round_to(grid, fmt, "stochastic", rng=rng).astype(np.float64)
    assert np.array_equal(again, grid)


@pytest.mark.parametrize("name", ["float64", "float32", "bfloat16", "float8_e4m3fn",
                                  "float6_e3m2fn"])
def test_stochastic_pairs_return_a_neighbour(name):
    fmt = ALL_FORMATS[name]
    H, L = pair_cases(name)
    keep = (H + L) != 0
    H, L = H[keep], L[keep]
    got = round_to((H, L), fmt, "stochastic", rng=_seed("pair neigh", name)).astype(np.float64)
    outcomes = [stochastic_outcomes((h, lo), fmt) for h, lo in zip(H.tolist(), L.tolist())]
    toward = np.array([o[0] for o in outcomes])
    away = np.array([o[1] for o in outcomes])
    exact_input = np.array([o[2] == 0 for o in outcomes])
    same = lambda a, b: (a == b) | (np.isnan(a) & np.isnan(b))  # noqa: E731
    ok = same(got, toward) | (same(got, away) & ~exact_input)
    assert ok.all(), [((H[i], L[i]), toward[i], away[i], got[i]) for i in np.flatnonzero(~ok)[:5]]


def test_shapes_and_scalars():
    """Shapes are kept: 0-d, Python scalars and lists, 2-D arrays, broadcast pairs."""
    v = 1 + 2.0 ** -8 + 2.0 ** -30
    want = ref_round(v, BF16, "nearest_even")
    r = round_to(np.float64(v), BF16)
    assert r.shape == () and r.dtype == BF16.storage and float(r) == want
    r = round_to([v, -v], BF16)
    assert r.shape == (2,) and list(r.astype(float)) == [want, -want]
    x = np.full((3, 4), v)
    for mode in MODES:
        r = round_to(x, BF16, mode)
        assert r.shape == (3, 4) and np.all(r.astype(float) == ref_round(v, BF16, mode))
    r = round_to((np.ones((2, 2)), 2.0 ** -60), BF16, "up")  # lo broadcast against hi
    assert r.shape == (2, 2) and np.all(r.astype(float) == ref_round((1.0, 2.0 ** -60), BF16, "up"))


def test_stochastic_is_unbiased():
    """The mean of K stochastic roundings of an array equals the array's mean.

    x: n = 2000 float64 values in [1, 2) (bf16 ulp u = 2**-7 there), rounded K = 200 times.
    Each draw is x_i - t_i + u * B_i with t_i = f_i u the distance down to the grid and
    B_i ~ Bernoulli(p_i), p_i = floor(f_i 2**32) / 2**32. So the overall mean error
    E = sum(draw - x) / (n K) has expectation sum(u (p_i - f_i)) / n, |.| <= u 2**-32, and
    standard deviation sd = u sqrt(sum p_i (1 - p_i)) / (n sqrt(K)). We require
    |E| <= 5 sd + u 2**-32, whereas rounding to nearest would be off by about u/4 ~ 300 sd
    for these inputs (all just above a grid value).
    """
    rng = np.random.default_rng(_seed("bias"))
    n, K = 2000, 200
    u = 2.0 ** -7
    base = 1 + u * rng.integers(0, 128, n)
    x = base + u * rng.uniform(0, 0.4, n)           # fractions f in [0, 0.4)
    f = np.array([float(stochastic_outcomes(v, BF16)[2]) for v in x])
    draws = round_to(np.broadcast_to(x, (K, n)).copy(), BF16, "stochastic", rng=rng)
    err = (draws.astype(np.float64) - x).mean()
    sd = u * math.sqrt(np.sum(f * (1 - f))) / (n * math.sqrt(K))
    assert abs(err) <= 5 * sd + u * 2.0 ** -32, (err, sd)
    nearest = (round_to(x, BF16).astype(np.float64) - x).mean()
    assert abs(nearest) > 50 * sd  # the test has power: nearest rounding would fail it


def test_stochastic_seeding():
    x = np.full(4096, 1 + 2.0 ** -8)  # f = 1/2 for every element (bf16)
    a = round_to(x, BF16, "stochastic", rng=1234).view(np.uint16)
    b = round_to(x, BF16, "stochastic", rng=1234).view(np.uint16)
    c = round_to(x, BF16, "stochastic", rng=np.random.default_rng(1234)).view(np.uint16)
    d = round_to(x, BF16, "stochastic", rng=1235).view(np.uint16)
    assert np.array_equal(a, b)
    assert np.array_equal(a, c)  # a Generator in the same state as the int seed's
    assert not np.array_equal(a, d)  # identical by chance with probability 2**-4096
    g1, g2 = np.random.default_rng(7), np.random.default_rng(7)
    e1 = [round_to(x, BF16, "stochastic", rng=g1).view(np.uint16) for _ in range(2)]
    e2 = [round_to(x, BF16, "stochastic", rng=g2).view(np.uint16) for _ in range(2)]
    assert np.array_equal(e1[0], e2[0]) and np.array_equal(e1[1], e2[1])
    assert not np.array_equal(e1[0], e1[1])  # a Generator advances between calls
    mpgrad.manual_seed(99)
    m1 = round_to(x, BF16, "stochastic").view(np.uint16)
    mpgrad.manual_seed(99)
    m2 = round_to(x, BF16, "stochastic").view(np.uint16)
    assert np.array_equal(m1, m2)
    # pairs are seeded the same way
    p1 = round_to((np.full(64, 1.0), np.full(64, 2.0 ** -60)), BF16, "stochastic", rng=5)
    p2 = round_to((np.full(64, 1.0), np.full(64, 2.0 ** -60)), BF16, "stochastic", rng=5)
    assert np.array_equal(p1.view(np.uint16), p2.view(np.uint16))


def test_stochastic_with_saturate_and_flush():
    x = np.full(2000, 452.0)  # e4m3fn: 448 or beyond max
    got = round_to(x, E4M3, "stochastic", rng=3, saturate=True).astype(np.float64)
    assert np.all(got == 448.0)
    tiny = np.full(2000, -0.75 * 2.0 ** -24)
    got = round_to(tiny, F16, "stochastic", rng=3, subnormals=False).astype(np.float64)
    assert np.all(got == 0) and np.all(np.signbit(got))


@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16", "float8_e4m3fn",
                                  "float8_e5m2"])
def test_fast_path_stats_and_pairs_match_the_integer_algorithm(name):
    """The cast fast paths (float64/float32 arrays, and (hi, lo) pairs rounded to odd first)
    give the bits and the RoundingStats of the integer algorithm (rounding._encode)."""
    from mpgrad.numerics import rounding
    from mpgrad.numerics.codes import store
    fmt = mpgrad.as_format(name)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(20000) * 2.0 ** rng.integers(-160, 140, 20000)
    x[:6] = [0.0, -0.0, np.inf, -np.inf, np.nan, fmt.max * 1.5]
    ulp = np.abs(x) * 2.0 ** -53
    lo = np.where(np.isfinite(x), ulp * rng.choice([-0.5, -0.25, 0.0, 0.25, 0.5], 20000), 0.0)
    # midpoints of fmt (ties in float64) with a tiny lo of either sign, or none: lo decides
    v = mpgrad.to_float64(round_to(rng.standard_normal(3000), fmt))
    mid = (v + mpgrad.to_float64(mpgrad.next_up(round_to(v, fmt), fmt))) / 2
    tiny = np.abs(mid) * 2.0 ** -70 * rng.choice([-1.0, 0.0, 1.0], 3000)
    with np.errstate(over="ignore"):  # the float32 copy overflows to inf on purpose
        narrow = x.astype(np.float32)
    for arg in (x, narrow, (x, lo), (mid, tiny)):
        fast = RoundingStats()
        got = round_to(arg, fmt, stats=fast)
        hi, low = (arg if isinstance(arg, tuple) else (mpgrad.to_float64(arg), None))
        codes = rounding._encode(mpgrad.to_float64(hi), low, fmt, "nearest_even", None, False, True,
                                 [s := RoundingStats()])
        want = store(codes, fmt)
        assert np.array_equal(mpgrad.to_float64(got), mpgrad.to_float64(want), equal_nan=True)
        assert fast == s, (fast, s)


def test_float32_toward_zero_shortcut_matches_the_integer_algorithm():
    """float64 -> float32 toward zero, every value 0 or in float32's normal range: the
    bit-clearing shortcut gives the bits and RoundingStats of rounding._encode."""
    from mpgrad.numerics import rounding
    from mpgrad.numerics.codes import store
    rng = np.random.default_rng(9)
    x = rng.choice([-1.0, 1.0], 20000) * rng.uniform(1, 2, 20000) * 2.0 ** rng.integers(
        -126, 128, 20000)
    F32 = mpgrad.float32
    x[:4] = [0.0, -0.0, 2.0 ** -126, np.nextafter(2.0 ** 128, 0)]
    assert rounding._in_float32_normal_range(x)
    fast = RoundingStats()
    got = round_to(x, F32, "toward_zero", stats=fast)
    slow = RoundingStats()
    want = store(rounding._encode(x, None, F32, "toward_zero", None, False, True,
                                            [slow]), F32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert fast == slow and fast.inexact > 19000
