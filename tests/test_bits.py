"""Bit patterns, neighbours, ulps and descriptions (mpgrad.bits, mpgrad.to_float64).

References: ml_dtypes' own decoding of every bit pattern (``np.arange(2**bits).view(dtype)``;
FP4/FP6 dtypes hold one pattern per byte, in the low bits), tf32 as the top 19 bits of a float32
and, independently, decoded field by field with ``fractions.Fraction``; ``np.nextafter`` and
``np.spacing`` for float16/float32/float64; the sorted list of every distinct value of a format
for next_up/next_down/ulp_distance/ulp.
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

import mpgrad
from mpgrad import FORMATS, Format, to_float64
from mpgrad.numerics.bits import describe, from_bits, next_down, next_up, to_bits, ulp, ulp_distance

BUILTINS = list(FORMATS.values())
TF32 = mpgrad.tf32
SMALL = [f for f in BUILTINS if f.bits <= 16 and f.name != "tf32"]  # every pattern in ml_dtypes
ENUMERABLE = SMALL + [TF32]                                          # plus tf32 via float32
TINY = [f for f in BUILTINS if f.bits <= 8]                          # all pairs are cheap


def _name(f):
    return f.name


def _uint(nbytes):
    return {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[nbytes]


def _min_sub(fmt) -> float:
    """Smallest positive subnormal, from ml_dtypes/NumPy (tf32: 2**(-126 - 10) by definition)."""
    if fmt.name == "tf32":
        return float(Fraction(2) ** -136)
    return float(ml_dtypes.finfo(fmt.storage).smallest_subnormal)


def _patterns(fmt) -> np.ndarray:
    return np.arange(2 ** fmt.bits, dtype=np.uint32 if fmt.name == "tf32" else
                     _uint(fmt.storage.itemsize))


def _reference_values(fmt) -> np.ndarray:
    """The storage array decoding every bit pattern of fmt, in pattern order, without mpgrad."""
    b = _patterns(fmt)
    if fmt.name == "tf32":  # tf32 is sign, 8 exponent bits, the top 10 of float32's fraction
        return (b << np.uint32(13)).view(np.float32)
    return b.view(fmt.storage)


def _f64(a) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.asarray(a).astype(np.float64)


def _distinct(fmt, finite_only=False) -> np.ndarray:
    """Sorted distinct non-NaN values of fmt (+0 and -0 are one value), as float64."""
    v = _f64(_reference_values(fmt))
    v = v[np.isfinite(v)] if finite_only else v[~np.isnan(v)]
    return np.unique(v)


def _non_nan(fmt) -> np.ndarray:
    """Every non-NaN value of fmt in its storage dtype."""
    vals = _reference_values(fmt)
    return vals[~np.isnan(_f64(vals))]


def assert_same(got, expected):
    """Equal as float64 with NaN == NaN, and with the same sign on zeros."""
    g, e = _f64(got), _f64(expected)
    assert g.shape == e.shape
    np.testing.assert_array_equal(np.isnan(g), np.isnan(e))
    np.testing.assert_array_equal(g, e)
    ok = ~np.isnan(e)
    np.testing.assert_array_equal(np.signbit(g[ok]), np.signbit(e[ok]))


# --- from_bits / to_bits / to_float64 ------------------------------------------------------

@pytest.mark.parametrize("fmt", ENUMERABLE, ids=_name)
def test_from_bits_every_pattern(fmt):
    b = _patterns(fmt)
    got = from_bits(b, fmt)
    assert got.dtype == fmt.storage
    assert_same(got, _reference_values(fmt))


@pytest.mark.parametrize("fmt", ENUMERABLE, ids=_name)
def test_to_bits_round_trip(fmt):
    b = _patterns(fmt)
    ref = _reference_values(fmt)
    ok = ~np.isnan(_f64(ref))
    width = _uint(next(w for w in (1, 2, 4, 8) if fmt.bits <= 8 * w))
    via_storage = to_bits(from_bits(b, fmt)[ok], fmt)
    assert via_storage.dtype == width
    np.testing.assert_array_equal(via_storage, b[ok].astype(width))
    # the same values handed over as float64 (not the storage dtype) have the same patterns
    np.testing.assert_array_equal(to_bits(_f64(ref)[ok], fmt), b[ok].astype(width))


@pytest.mark.parametrize("fmt", ENUMERABLE, ids=_name)
def test_to_float64_every_pattern(fmt):
    ref = _reference_values(fmt)
    got = to_float64(from_bits(_patterns(fmt), fmt))
    assert got.dtype == np.float64
    assert_same(got, _f64(ref))
    assert_same(to_float64(ref), _f64(ref))


def _tf32_fraction(b: int) -> float:
    """tf32 value of a 19-bit pattern from its fields (IEEE 754 rules, bias 127, 10 fraction bits)."""
    sign, ef, mf = b >> 18, (b >> 10) & 0xFF, b & 0x3FF
    if ef == 255:
        return math.nan if mf else math.copysign(math.inf, -sign)
    if ef == 0:
        v = Fraction(mf, 2 ** 10) * Fraction(2) ** -126
    else:
        v = (1 + Fraction(mf, 2 ** 10)) * Fraction(2) ** (ef - 127)
    return math.copysign(float(v), -1.0 if sign else 1.0)


def test_tf32_from_bits_by_fields():
    rng = np.random.default_rng(19)
    special = [(s << 18) | (ef << 10) | mf for s in (0, 1) for ef in (0, 1, 254, 255)
               for mf in range(1024)]
    b = np.unique(np.concatenate([rng.integers(0, 2 ** 19, 5000), special])).astype(np.uint32)
    expected = np.array([_tf32_fraction(int(x)) for x in b])
    got = from_bits(b, "tf32")
    assert got.dtype == np.float32
    assert_same(got, expected)
    ok = ~np.isnan(expected)
    np.testing.assert_array_equal(to_bits(got[ok], "tf32"), b[ok])


@pytest.mark.parametrize("value,fmt", [
    (0.1, "bf16"), (1 + 2.0 ** -11, "fp16"), (1e6, "fp16"), (0.3, "e4m3"), (3.25, "fp4"),
    (1 + 2.0 ** -12, "tf32"), (0.1, "fp32"), (1e-9, "e5m2"), (np.inf, "e4m3fn"),
    (np.inf, "float6_e3m2fn"), (-np.inf, "e5m2fnuz")])
def test_to_bits_rejects_values_not_in_format(value, fmt):
    with pytest.raises(ValueError):
        to_bits(np.array([value], dtype=np.float64), fmt)


def test_to_bits_accepts_exact_values_from_other_dtypes():
    # 1.5 = 0 01111 1000000000 in float16; 0 0111 100 in e4m3 (bias 7); 0 01 1 in e2m1 (bias 1)
    assert int(to_bits(np.float64(1.5), "fp16")) == 0b0_01111_1000000000
    assert int(to_bits(np.float32(1.5), "e4m3")) == 0b0_0111_100
    assert int(to_bits(np.float16(-1.5), "fp4")) == 0b1_01_1
    # -0.0 is +0 in the fnuz formats (their pattern 1000 0000 is NaN)
    assert int(to_bits(np.float64(-0.0), "e4m3fnuz")) == 0
    assert int(to_bits(np.float64(-0.0), "e4m3")) == 0x80


def test_from_bits_rejects_bad_patterns():
    with pytest.raises(ValueError):
        from_bits(np.array([16]), "fp4")
    with pytest.raises(ValueError):
        from_bits(np.array([-1]), "e4m3")
    with pytest.raises(TypeError):
        from_bits(np.array([1.0]), "e4m3")


# --- next_up / next_down ---------------------------------------------------------------------

def _same_bits(got, expected):
    e = np.asarray(expected)
    g = np.asarray(got)
    assert g.dtype == e.dtype
    u = _uint(e.dtype.itemsize)
    np.testing.assert_array_equal(g.view(u), e.view(u))


def _random_finite(dtype, n, seed):
    u = _uint(np.dtype(dtype).itemsize)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, np.iinfo(u).max, n, dtype=u, endpoint=True).view(dtype)
    fi = np.finfo(dtype)
    special = np.array([0.0, -0.0, np.inf, -np.inf, fi.max, -fi.max, fi.smallest_subnormal,
                        -fi.smallest_subnormal, fi.smallest_normal, -fi.smallest_normal, 1, -1],
                       dtype=dtype)
    x = np.concatenate([x, special])
    return x[~np.isnan(x)]


@pytest.mark.parametrize("dtype,x", [
    (np.float16, None), (np.float32, 100_000), (np.float64, 20_000)],
    ids=["float16-all", "float32-random", "float64-random"])
def test_next_up_down_match_nextafter(dtype, x):
    if x is None:
        x = _non_nan(mpgrad.float16)
    else:
        x = _random_finite(dtype, x, seed=np.dtype(dtype).itemsize)
    fmt = mpgrad.as_format(dtype)
    inf = dtype(np.inf)
    with np.errstate(over="ignore"):  # nextafter(max, inf) is inf
        up, down = np.nextafter(x, inf), np.nextafter(x, -inf)
    _same_bits(next_up(x, fmt), up)
    _same_bits(next_down(x, fmt), down)


def _expected_neighbours(fmt, x):
    """next larger / smaller element of the sorted distinct values, with the format's ends:

    past the top, +inf for IEEE formats (nextUp(+inf) = +inf), NaN for fn/fnuz (the cast
    of an overflow), +max for formats without NaN; mirrored at the bottom.
    """
    vals = _distinct(fmt)
    x = _f64(x)
    i = np.searchsorted(vals, x)
    assert np.array_equal(vals[i], x)
    end = {"ieee": np.inf, "fn": np.nan, "fnuz": np.nan, "none": fmt.max}[fmt.nan]
    up = np.where(i + 1 < len(vals), vals[np.minimum(i + 1, len(vals) - 1)], end)
    down = np.where(i > 0, vals[np.maximum(i - 1, 0)], -end)
    return up, down


@pytest.mark.parametrize("fmt", ENUMERABLE, ids=_name)
def test_next_up_down_sorted_values(fmt):
    x = _non_nan(fmt)
    up, down = _expected_neighbours(fmt, x)
    for arg in (x, _f64(x)):  # storage dtype and float64 inputs
        got_up, got_down = next_up(arg, fmt), next_down(arg, fmt)
        assert got_up.dtype == got_down.dtype == fmt.storage
        np.testing.assert_array_equal(_f64(got_up), up)
        np.testing.assert_array_equal(_f64(got_down), down)


@pytest.mark.parametrize("fmt", BUILTINS, ids=_name)
def test_next_around_zero(fmt):
    tiny = _min_sub(fmt)
    zeros = np.array([0.0, -0.0])
    assert_same(next_up(zeros, fmt), [tiny, tiny])
    assert_same(next_down(zeros, fmt), [-tiny, -tiny])
    # IEEE 754 nextUp(-tiny) = -0 and nextDown(+tiny) = +0; the fnuz formats only have +0
    assert_same(next_up(np.array([-tiny]), fmt), [-0.0 if fmt.signed_zero else 0.0])
    assert_same(next_down(np.array([tiny]), fmt), [0.0])


@pytest.mark.parametrize("name,x,up,down", [
    ("float8_e4m3fn", 448.0, np.nan, 416.0),       # S.1111.111 is NaN, 448 = 1.75 * 2**8
    ("float8_e4m3fn", -448.0, -416.0, np.nan),
    ("float8_e4m3fnuz", 240.0, np.nan, 224.0),
    ("float8_e5m2fnuz", -57344.0, -49152.0, np.nan),
    ("float8_e5m2", 57344.0, np.inf, 49152.0),
    ("float16", 65504.0, np.inf, 65472.0),
    ("float16", np.inf, np.inf, 65504.0),
    ("float16", -np.inf, -65504.0, -np.inf),
    ("float4_e2m1fn", 6.0, 6.0, 4.0),              # no NaN, no inf: stays at max
    ("float4_e2m1fn", -6.0, -4.0, -6.0),
    ("float6_e2m3fn", 7.5, 7.5, 7.0),
    ("float6_e3m2fn", -28.0, -24.0, -28.0),
    ("bfloat16", 1.0, 1.0078125, 1 - 2.0 ** -8),   # gap above 1 is 2**-7, below 2**-8
])
def test_next_at_the_ends(name, x, up, down):
    assert_same(next_up(np.array([x]), name), [up])
    assert_same(next_down(np.array([x]), name), [down])


@pytest.mark.parametrize("fmt", BUILTINS, ids=_name)
def test_nan_input_is_an_error(fmt):
    for f in (lambda v: next_up(v, fmt), lambda v: next_down(v, fmt),
              lambda v: ulp_distance(v, np.array([1.0]), fmt),
              lambda v: ulp_distance(np.array([1.0]), v, fmt)):
        with pytest.raises(ValueError):
            f(np.array([np.nan]))
    if fmt.has_nan and fmt.native:  # NaN in the format's own storage dtype
        with pytest.raises(ValueError):
            next_up(np.array([np.nan]).astype(fmt.storage), fmt)


def test_next_up_flush_to_zero_format():
    # Format.custom(5, 2, subnormals=False) has no subnormals: its least positive value is
    # the smallest normal 2**(1 - 15) = 2**-14 (and Format.smallest_subnormal says so).
    f = Format.custom(5, 2, subnormals=False)
    got = next_up(np.array([0.0]), f)
    assert _f64(got)[0] == float(Fraction(2) ** -14)
    to_bits(got, f)  # whatever next_up returns must be a value of the format


def test_scalars_in_flush_to_zero_format():
    # Scalars (0-d inputs) work like 1-element arrays in a format without subnormals.
    # e5m2 without subnormals, by hand: 1.0 = 0 01111 00 = 60; 1.25 = 0 01111 01 = 61.
    f = Format.custom(5, 2, subnormals=False)
    assert int(to_bits(np.array([1.0]), f)[0]) == 60
    assert int(to_bits(np.float64(1.0), f)) == 60
    assert float(next_up(1.0, f)) == 1.25
    assert int(ulp_distance(1.0, 1.25, f)) == 1
    d = describe(1.0, f)
    assert (d.kind, d.exponent_field, d.fraction_field) == ("normal", 15, 0)


# --- ulp_distance ----------------------------------------------------------------------------

def _positions(fmt, x):
    vals = _distinct(fmt)
    return np.searchsorted(vals, _f64(x))


@pytest.mark.parametrize("fmt", TINY, ids=_name)
def test_ulp_distance_all_pairs(fmt):
    x = _non_nan(fmt)
    a, b = np.meshgrid(x, x, indexing="ij")
    a, b = a.ravel(), b.ravel()
    expected = _positions(fmt, b) - _positions(fmt, a)
    np.testing.assert_array_equal(ulp_distance(a, b, fmt), expected)
    np.testing.assert_array_equal(ulp_distance(_f64(a), _f64(b), fmt), expected)


@pytest.mark.parametrize("fmt", [f for f in ENUMERABLE if f.bits > 8], ids=_name)
def test_ulp_distance_sampled_pairs(fmt):
    x = _non_nan(fmt)
    rng = np.random.default_rng(fmt.bits)
    a, b = rng.choice(x, 20_000), rng.choice(x, 20_000)
    expected = _positions(fmt, b) - _positions(fmt, a)
    got = ulp_distance(a, b, fmt)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(ulp_distance(b, a, fmt), -expected)  # antisymmetric


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ulp_distance_counts_nextafter_steps(dtype):
    rng = np.random.default_rng(7)
    x = _random_finite(dtype, 5000, seed=3)
    x = x[np.abs(x) < 1e30]
    k = rng.integers(0, 40, x.shape)
    y = x.copy()
    for step in range(40):
        y = np.where(step < k, np.nextafter(y, dtype(np.inf)), y)
    # k steps of np.nextafter upwards are k ulps (nextafter goes -tiny -> -0 -> +tiny,
    # never visiting both zeros, matching ulp_distance's single position for +-0)
    fmt = mpgrad.as_format(dtype)
    np.testing.assert_array_equal(ulp_distance(x, y, fmt), k)
    np.testing.assert_array_equal(ulp_distance(y, x, fmt), -k)


@pytest.mark.parametrize("fmt", BUILTINS, ids=_name)
def test_ulp_distance_across_zero(fmt):
    tiny = _min_sub(fmt)
    assert int(ulp_distance(np.array([-tiny]), np.array([tiny]), fmt)[0]) == 2
    assert int(ulp_distance(np.array([tiny]), np.array([-tiny]), fmt)[0]) == -2
    assert int(ulp_distance(np.array([-0.0]), np.array([0.0]), fmt)[0]) == 0
    assert int(ulp_distance(np.array([0.0]), np.array([tiny]), fmt)[0]) == 1
    assert int(ulp_distance(np.array([-0.0]), np.array([-tiny]), fmt)[0]) == -1


# --- ulp -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,n", [(np.float16, None), (np.float32, 100_000),
                                     (np.float64, 20_000)])
def test_ulp_is_spacing(dtype, n):
    # For x > 0, np.spacing(x) is the gap from x to the next larger value; within a binade
    # that is the ulp 2**(max(e, emin) - m), and at a power of two it is the gap *above* it,
    # which is the ulp of that binade too (the gap below 2**e is half of it). So ulp == spacing
    # for all positive finite x below max; at max spacing overflows and the ulp is the gap
    # below max. (Negative x are not compared: NumPy's float16 spacing of -2**k returns the
    # gap towards zero, unlike its float32/float64 spacing; ulp is even instead, checked below.)
    fmt = mpgrad.as_format(dtype)
    x = _non_nan(mpgrad.float16) if n is None else _random_finite(dtype, n, seed=11)
    fi = np.finfo(dtype)
    x = x[(x > 0) & (x < fi.max)]
    got = ulp(x, fmt)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, _f64(np.spacing(x)))
    np.testing.assert_array_equal(ulp(-x, fmt), got)
    top = dtype(fi.max)
    assert ulp(np.array([top, -top]), fmt).tolist() == [float(top - np.nextafter(top, dtype(0)))] * 2


@pytest.mark.parametrize("fmt", ENUMERABLE, ids=_name)
def test_ulp_is_gap_between_neighbours(fmt):
    vals = _distinct(fmt, finite_only=True)
    vals = vals[vals >= 0]
    gaps = np.diff(vals)
    np.testing.assert_array_equal(ulp(vals[:-1], fmt), gaps)
    np.testing.assert_array_equal(ulp(-vals[:-1], fmt), gaps)
    assert float(ulp(np.array([vals[-1]]), fmt)[0]) == gaps[-1]  # max: the gap below it


@pytest.mark.parametrize("fmt", BUILTINS, ids=_name)
def test_ulp_definition_and_specials(fmt):
    # ulp(x) = 2**(max(floor(log2|x|), emin) - m), evaluated with integers and Fraction
    fi_emin = 1 - fmt.bias
    rng = np.random.default_rng(5)
    x = rng.standard_normal(200) * np.exp2(rng.integers(-30, 30, 200))
    x = np.concatenate([x, [1.0, 2.0, 0.5, 3.0, -4.0]])
    for v, got in zip(x, ulp(x, fmt)):
        e = math.frexp(abs(v))[1] - 1
        assert got == float(Fraction(2) ** (max(e, fi_emin) - fmt.fraction_bits))
    tiny = _min_sub(fmt)
    assert ulp(np.array([0.0, -0.0]), fmt).tolist() == [tiny, tiny]
    assert np.isnan(ulp(np.array([np.inf, -np.inf, np.nan]), fmt)).all()


# --- describe --------------------------------------------------------------------------------

def test_describe_bf16_point_one():
    # By hand: 0.1 = 1.6 * 2**-4; exponent field -4 + 127 = 123 = 0b01111011; the fraction
    # 0.6 * 2**7 = 76.8 rounds to 77 = 0b1001101; value (128 + 77) / 128 * 2**-4 = 205/2048.
    d = describe(0.1, "bf16")
    assert d.value == float(Fraction(205, 2048)) == 0.10009765625
    assert d.kind == "normal"
    assert (d.sign, d.exponent_field, d.fraction_field) == (0, 123, 0b1001101)
    assert d.bits == "0011110111001101"
    assert "0 01111011 1001101" in str(d)
    assert d.format is mpgrad.bfloat16


def test_describe_subnormal_fp16():
    # 1e-6 < 2**-14 (smallest normal); in units of 2**-24: 16.78 -> 17, exponent field 0
    d = describe(1e-6, "fp16")
    assert d.kind == "subnormal"
    assert (d.sign, d.exponent_field, d.fraction_field) == (0, 0, 17)
    assert d.value == float(Fraction(17, 2 ** 24))


def test_describe_overflow():
    # 500 > 448 = max of E4M3 (OCP): a non-saturating conversion gives NaN (no inf there)
    d = describe(500, "e4m3")
    assert d.kind == "nan" and math.isnan(d.value)
    assert d.bits == "01111111"
    # 1e6 > 65504: float16 overflows to inf = 0 11111 0000000000
    d = describe(1e6, "fp16")
    assert d.kind == "infinity" and d.value == math.inf
    assert (d.exponent_field, d.fraction_field) == (31, 0)
    assert "0 11111 0000000000" in str(d)


def test_describe_zero():
    d = describe(-0.0, "e4m3fnuz")  # no -0 in fnuz: the pattern 1000 0000 is NaN
    assert d.value == 0 and d.sign == 0 and d.kind == "zero" and d.bits == "00000000"
    d = describe(-0.0, "e4m3")
    assert d.value == 0 and d.sign == 1 and d.kind == "zero" and d.bits == "10000000"


def test_describe_negative_tie_fp4():
    # -2.5 lies halfway between -2 (0b1_10_0) and -3 (0b1_10_1) in E2M1; ties go to even: -2
    d = describe(-2.5, "fp4")
    assert (d.value, d.sign, d.exponent_field, d.fraction_field) == (-2.0, 1, 2, 0)
    assert "1 10 0" in str(d)


@pytest.mark.parametrize("fmt", BUILTINS, ids=_name)
def test_describe_one(fmt):
    # 1.0 = 1.0 * 2**0: exponent field = bias = 1 - emin (emin from ml_dtypes.finfo)
    emin = -126 if fmt.name == "tf32" else int(ml_dtypes.finfo(fmt.storage).minexp)
    d = describe(1.0, fmt)
    assert (d.value, d.kind, d.sign, d.exponent_field, d.fraction_field) == (
        1.0, "normal", 0, 1 - emin, 0)
    assert len(d.bits) == fmt.bits


# --- describe: overflow, lost sign, NaN -------------------------------------------------------

def _cast(value: float, fmt) -> float:
    """value converted by ml_dtypes / NumPy (round to nearest even), back in float64."""
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.array([value]).astype(fmt.storage).astype(np.float64)[0])


@pytest.mark.parametrize("fmt", [f for f in BUILTINS if f.name != "float64"], ids=_name)
@pytest.mark.parametrize("big", [4.0, -4.0, math.inf, -math.inf])
def test_describe_says_overflow(fmt, big):
    # 4 * max is beyond max + ulp(max) / 2, so nearest rounding overflows: the result is what
    # ml_dtypes' conversion gives (inf, NaN in e4m3fn/fnuz, +-max in fp4/fp6, which saturate)
    value = big * fmt.max if math.isfinite(big) else big
    want = _cast(value, fmt)
    d = describe(value, fmt)
    assert d.value == want or (math.isnan(d.value) and math.isnan(want))
    assert d.overflow == (math.isfinite(value) or not fmt.infinities)
    assert d.became_nan == math.isnan(want)
    assert d.kind == ("nan" if math.isnan(want) else "infinity" if math.isinf(want) else "normal")
    assert ("overflow" in str(d)) == d.overflow
    if d.overflow:
        assert ("NaN" in str(d)) == math.isnan(want)
        assert ("saturates" in str(d)) == math.isfinite(want)
        assert ("has no infinity" in str(d)) == (not fmt.infinities)
    m = describe(fmt.max, fmt)  # max itself is no overflow
    assert m.value == fmt.max and not m.overflow and "overflow" not in str(m)


def test_describe_overflow_toward_zero():
    # 70000 in float16 toward zero: floor(70000 / 32) * 32 = 69984 > 65504 with an unbounded
    # exponent, so it overflows, and the mode gives the largest finite value
    assert Fraction(70000) // 32 * 32 > Fraction(65504)
    d = describe(70000, "fp16", "toward_zero")
    assert d.overflow and d.value == 65504.0 and "saturates to 65504.0" in str(d)
    d = describe(65519, "fp16")  # below max + ulp/2 = 65520: rounds to max, no overflow
    assert d.value == 65504.0 and not d.overflow


@pytest.mark.parametrize("fmt", BUILTINS, ids=_name)
@pytest.mark.parametrize("value", [-1e-300, -0.0])
def test_describe_says_sign_lost(fmt, value):
    # a negative value that rounds to zero keeps its sign (-0) where the format has -0;
    # fnuz formats have no -0 and give +0 (ml_dtypes' conversion decides, not mpgrad)
    want = _cast(value, fmt)
    d = describe(value, fmt)
    assert d.value == want
    assert d.sign_lost == (want == 0 and not np.signbit(want))
    assert d.sign == int(np.signbit(want))
    assert ("sign      lost" in str(d)) == d.sign_lost
    assert not d.overflow and not d.became_nan


def test_describe_nan_stays_nan_and_is_not_news():
    d = describe(math.nan, "fp16")
    assert d.kind == "nan" and not d.became_nan and not d.overflow and not d.sign_lost


def test_describe_negative_float64():
    # float64 codes are 64-bit: the sign bit must not make the pattern a negative integer
    d = describe(-1.5, "float64")
    want = format(struct.unpack("<Q", struct.pack("<d", -1.5))[0], "064b")
    assert d.bits == want and d.sign == 1 and d.exponent_field == 1023
    assert d.fraction_field == 1 << 51 and d.value == -1.5 and "1 01111111111 1000" in str(d)
