"""Verification of mpgrad.exact against exact rational arithmetic and the MPFR reference.

* two_sum / two_prod: hi + lo equals the exact Fraction result, hi equals NumPy's float64
  result, on random bit patterns inside the documented conditions and on their boundaries.
* exact_div / exact_sqrt: q (s) is IEEE's float64 result; r has the sign of the exact error,
  |r| < half the gap to q's neighbour on that side, r == 0 iff exact; and the defining
  property: round_to((q, r), fmt, mode) equals the MPFR reference rounding of the exact
  quotient (a Fraction) or root (a representative built with math.isqrt) for every format
  and deterministic mode, including quotients and roots within 2**-100 (relative) of a
  float64 midpoint. Below 2**-1019 the documented guarantee excludes float64 itself.
* exact_sum: round_to((hi, lo), fmt, mode) equals the reference rounding of the exact
  Fraction sum, for every format and deterministic mode, on adversarial sums (cancellation,
  the whole exponent range, subnormals, sums beyond float64's max, exact ties of float16 /
  bfloat16 / float64 and ties +- 2**-1074), random bit patterns, hypothesis lists, long
  float16 arrays; plus NaN/inf/signed-zero rules, axis/keepdims shapes, and bit-identical
  results under permutation of the terms and input layouts.
"""

from __future__ import annotations

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mpgrad
from mpgrad import Format, round_to
from mpgrad.numerics.exact import exact_div, exact_sqrt, exact_sum, two_prod, two_sum

try:  # tests/ may or may not become a package
    from .reference import DETERMINISTIC_MODES, reference_modes
except ImportError:
    from reference import DETERMINISTIC_MODES, reference_modes

MODES = DETERMINISTIC_MODES
DBL_MAX = float(np.finfo(np.float64).max)
TINY = 2.0 ** -1074
ALL = tuple(mpgrad.FORMATS.values()) + (Format.custom(11, 2, bias=1070),)  # last: 2**-1071
# formats whose smallest subnormal is >= 2**-1072: the guarantee for quotients below 2**-1019
COARSE = tuple(f for f in ALL if f.min_exponent - f.fraction_bits >= -1072)
SMALL = tuple(mpgrad.FORMATS[n] for n in ("float16", "bfloat16", "float32", "float64"))


def fr(x) -> Fraction:
    return Fraction(float(x))


def random_doubles(rng: np.random.Generator, n: int, max_field: int = 2046) -> np.ndarray:
    """Random finite float64 bit patterns, exponent field uniform in [0, max_field]."""
    bits = (rng.integers(0, 2 ** 52, n, dtype=np.int64)
            | (rng.integers(0, max_field + 1, n, dtype=np.int64) << 52)
            | (rng.integers(0, 2, n, dtype=np.int64) << 63))
    return bits.view(np.float64)


# --- checking rounding equivalence ------------------------------------------------------------

def assert_equivalent(hi, lo, exacts, formats=ALL, label: str = "") -> None:
    """round_to((hi, lo), fmt, mode) == reference rounding of exacts[i], every fmt and mode.

    exacts: Fractions (exact values), or floats for -0.0, +-inf and NaN.
    """
    hi, lo = np.ravel(hi), np.ravel(lo)
    assert hi.shape == lo.shape == (len(exacts),)
    is_nan = np.array([isinstance(v, float) and math.isnan(v) for v in exacts], dtype=bool)
    for fmt in formats:
        keep = ~is_nan if not fmt.has_nan else np.ones(len(exacts), bool)
        idx = np.flatnonzero(keep)
        want = np.empty((len(MODES), idx.size))
        for j, i in enumerate(idx):
            for k, r in enumerate(reference_modes(exacts[i], fmt, MODES)):
                want[k, j] = r.value
        for k, mode in enumerate(MODES):
            got = round_to((hi[idx], lo[idx]), fmt, mode).astype(np.float64)
            ok = np.where(np.isnan(want[k]), np.isnan(got),
                          (got == want[k]) & (np.signbit(got) == np.signbit(want[k])))
            if not ok.all():
                bad = idx[np.flatnonzero(~ok)[:8]]
                lines = [f"  pair ({hi[i].hex()}, {lo[i].hex()}) exact {exacts[i]!s:.60}: "
                         f"want {want[k, np.searchsorted(idx, i)]!r}, "
                         f"got {got[np.searchsorted(idx, i)]!r}" for i in bad]
                pytest.fail(f"{label} {fmt.name} {mode}: {int((~ok).sum())} wrong\n"
                            + "\n".join(lines))


def exact_total(values) -> Fraction | float:
    """The exact sum by IEEE's rules: NaN, +-inf, -0 only for all -0 terms, else a Fraction."""
    v = [float(t) for t in np.ravel(np.asarray(values, dtype=np.float64))]
    if any(math.isnan(t) for t in v) or (math.inf in v and -math.inf in v):
        return math.nan
    if math.inf in v or -math.inf in v:
        return math.inf if math.inf in v else -math.inf
    total = sum((Fraction(t) for t in v), Fraction(0))
    if total == 0:
        return -0.0 if v and all(t == 0 and math.copysign(1, t) < 0 for t in v) else 0.0
    return total


def check_sums(rows, formats=ALL, label=""):
    """exact_sum of each list in rows, checked against its exact total."""
    exacts, his, los = [], [], []
    for row in rows:
        hi, lo = exact_sum(np.array(row, dtype=np.float64))
        assert hi.shape == lo.shape == ()
        exacts.append(exact_total(row))
        his.append(hi)
        los.append(lo)
    assert_equivalent(np.array(his), np.array(los), exacts, formats, label)


# --- two_sum, two_prod ---------------------------------------------------------------------

def assert_exact_pairs(a, b, s, e, op):
    a, b, s, e = (np.ravel(np.asarray(t, dtype=np.float64)) for t in (a, b, s, e))
    np.testing.assert_array_equal(s, op(a, b))
    for x, y, u, v in zip(a, b, s, e):
        assert fr(u) + fr(v) == op(fr(x), fr(y)), (x.hex(), y.hex(), u.hex(), v.hex())


def test_two_sum_random_and_edges():
    rng = np.random.default_rng(1)
    a = random_doubles(rng, 3000, max_field=2045)  # |a| < 2**1023
    b = np.concatenate([random_doubles(rng, 1500, 2045),
                        a[1500:] * (1 + rng.integers(-4, 5, 1500) * 2.0 ** -52)])  # cancellation
    a = np.concatenate([a, [1.0, 2.0 ** 1022, -2.0 ** 1022, TINY, 0.0, -0.0, 1e308, 2.0 ** 1022]])
    b = np.concatenate([b, [2.0 ** -60, 2.0 ** 1022, TINY, -TINY, -0.0, -0.0, -1e308, -TINY]])
    s, e = two_sum(a, b)
    assert_exact_pairs(a, b, s, e, lambda x, y: x + y)


def test_two_prod_random_and_boundaries():
    rng = np.random.default_rng(2)
    n = 3000
    ea = rng.integers(-1022, 997, n)
    lo_b = np.maximum(-970 - ea, -1022)  # ea + eb >= -970, |a b| <= 2**1022
    eb = lo_b + (rng.random(n) * (np.minimum(996, 1021 - ea) - lo_b + 1)).astype(np.int64)
    sig = lambda: 1 + rng.integers(0, 2 ** 52, n) * 2.0 ** -52  # noqa: E731
    signs = lambda: rng.choice([-1.0, 1.0], n)  # noqa: E731
    a = np.ldexp(sig() * signs(), ea)
    b = np.ldexp(sig() * signs(), eb)
    # the boundaries: ea + eb == -970 exactly, |a| = 2**996, float32 extremes
    f32 = [2.0 ** -149, 2.0 ** -126, float(np.finfo(np.float32).max), 3 * 2.0 ** -149]
    a = np.concatenate([a, np.ldexp(sig()[:50], -500), [2.0 ** 996, -2.0 ** 996 * 1.75]
                        , np.repeat(f32, 4), [0.0, -0.0, 5.0]])
    b = np.concatenate([b, np.ldexp(sig()[:50], -470), [1.9, 0.5 + 2.0 ** -53],
                        np.tile(f32, 4), [2.0 ** 996, 3.0, -0.0]])
    # subnormal a against b with ea + eb == -970
    sub = rng.integers(1, 2 ** 52, 300).view(np.float64)
    a = np.concatenate([a, sub])
    b = np.concatenate([b, np.ldexp(sig()[:300], -970 - (np.frexp(sub)[1] - 1))])
    p, e = two_prod(a, b)
    assert_exact_pairs(a, b, p, e, lambda x, y: x * y)


def test_two_prod_float32_range():
    """All float32 values (subnormals included) satisfy the conditions: random pairs."""
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 0x7F800000, (2, 4000)) | (rng.integers(0, 2, (2, 4000)) << 31)
    a, b = bits.astype(np.uint32).view(np.float32).astype(np.float64)
    a[:8] = 2.0 ** -149  # the extremes against each other
    b[:4] = [2.0 ** -149, -2.0 ** -149, np.finfo(np.float32).max, 2.0 ** -126]
    p, e = two_prod(a, b)
    assert_exact_pairs(a, b, p, e, lambda x, y: x * y)


# --- exact_div, exact_sqrt -------------------------------------------------------------------

def gap_half(q: float, toward: int) -> Fraction:
    """Half the distance from q to its float64 neighbour in direction toward (+1 / -1)."""
    return abs(fr(np.nextafter(q, math.inf * toward)) - fr(q)) / 2


def check_correction(q, r, errors) -> None:
    """r: sign of the exact error, 0 < |r| < half the gap on that side, 0 iff exact."""
    for qi, ri, err in zip(np.ravel(q).tolist(), np.ravel(r).tolist(), errors):
        sign = (err > 0) - (err < 0)
        assert (ri > 0) - (ri < 0) == sign, (qi.hex(), ri.hex(), float(err))
        if sign:
            assert fr(abs(ri)) < gap_half(qi, sign), (qi.hex(), ri.hex())


def div_cases(rng: np.random.Generator):
    """Random quotients (normal range), exact ones, quotients close to midpoints of float16,
    bfloat16, float32 and float64 (some within ~2**-106 relative), and overflowing ones."""
    n = 300
    a = random_doubles(rng, n)
    b = random_doubles(rng, n)
    # keep the exponent difference moderate for most of them
    near = np.clip(np.frexp(a)[1] + rng.integers(-40, 40, n), -1073, 1024)
    b = np.where(rng.random(n) < 0.7, np.ldexp(np.frexp(b)[0], near), b)
    # exact quotients: a = k * b, b a power of two, and small integer ratios
    k = rng.integers(1, 2 ** 20, 60).astype(np.float64)
    b2 = np.ldexp(1.0, rng.integers(-300, 300, 60)) * rng.choice([1.0, 3.0, 5.0], 60)
    a2 = k * b2
    # quotients near the midpoints of formats with 11, 8, 24 bits: a = fl(mid * b)
    mids = []
    for m in (10, 7, 23):
        j = rng.integers(0, 2 ** m, 40)
        mids.append((1 + (2 * j + 1) * 2.0 ** -(m + 1)) * np.ldexp(1.0, rng.integers(-20, 20, 40)))
    mid = np.concatenate(mids)
    b3 = 1 + rng.integers(0, 2 ** 52, mid.size) * 2.0 ** -52
    a3 = mid * b3
    # within ~t * 2**-107 of float64 midpoints M / 2**54: B = t / M mod 2**54, A = B M div 2**54
    a4, b4 = [], []
    for _ in range(400):
        M = int(rng.integers(2 ** 53, 2 ** 54)) | 1
        t = int(rng.integers(1, 8)) * int(rng.choice([-1, 1]))
        B = (t * pow(M, -1, 2 ** 54)) % 2 ** 54
        A, rest = divmod(B * M, 2 ** 54)
        if 2 ** 52 <= B < 2 ** 53 and A < 2 ** 53 and rest == t % 2 ** 54:
            s = int(rng.integers(-900, 900))
            a4.append(math.ldexp(A, s))
            b4.append(float(B))
    assert len(a4) > 50
    # quotients just above 2**-1019, where x - q may underflow: a tiny, b in [2**-84, 2**20]
    ea = rng.integers(-1074, -1000, 100)
    sig = 1 + rng.integers(0, 2 ** 52, (2, 100)) * 2.0 ** -52
    a5 = np.ldexp(sig[0], ea)
    b5 = np.ldexp(sig[1], ea - rng.integers(-1019, -990, 100))
    over_a = np.array([DBL_MAX, DBL_MAX, -1e300, 1e300, DBL_MAX])
    over_b = np.array([0.5, 1 - 2.0 ** -53, 1e-10, -2.0 ** -60, 1 - 2.0 ** -52])
    a = np.concatenate([a, a2, a3, a4, a5, over_a])
    b = np.concatenate([b, b2, b3, b4, b5, over_b])
    return a, b


def test_exact_div_properties_and_equivalence():
    rng = np.random.default_rng(4)
    a, b = div_cases(rng)
    q, r = exact_div(a, b)
    with np.errstate(over="ignore", under="ignore"):
        ieee = a / b
    over = np.isinf(ieee)
    assert over.sum() >= 5
    np.testing.assert_array_equal(q[~over], ieee[~over])
    np.testing.assert_array_equal(q[over], np.copysign(DBL_MAX, ieee[over]))
    np.testing.assert_array_equal(r[over], q[over])
    exact = [fr(x) / fr(y) for x, y in zip(a, b)]
    normal = ~over & (np.abs(q) >= 2.0 ** -1019)
    idx = np.flatnonzero(normal)
    check_correction(q[idx], r[idx], [exact[i] - fr(q[i]) for i in idx])
    assert_equivalent(q[normal], r[normal], [exact[i] for i in idx], ALL, "div normal")
    assert_equivalent(q[over], r[over], [exact[i] for i in np.flatnonzero(over)], ALL, "div over")
    low = np.flatnonzero(~over & ~normal)
    assert_equivalent(q[low], r[low], [exact[i] for i in low], COARSE, "div low")


def test_exact_div_tiny_quotients():
    """Quotients below 2**-1019: q is IEEE's, q + r rounds to odd at 2**-1074 granularity and
    is rounding-equivalent for every format whose smallest subnormal is >= 2**-1072."""
    rng = np.random.default_rng(5)
    n = 400
    ea = rng.integers(-1074, -1000, n)
    a = np.ldexp(1 + rng.integers(0, 2 ** 52, n) * 2.0 ** -52, ea)
    b = np.ldexp(1 + rng.integers(0, 2 ** 52, n) * 2.0 ** -52, ea - rng.integers(-1080, -1014, n))
    a = np.concatenate([a, [TINY, TINY, 3 * TINY, TINY, -TINY, 2.0 ** -1019, 2.0 ** -1018]])
    b = np.concatenate([b, [2.0, 4.0, 2.0, 3.0, 1e300, 1 + 2.0 ** -52, 2 - 2.0 ** -52]])
    with np.errstate(under="ignore"):
        q, r = exact_div(a, b)
        np.testing.assert_array_equal(q, a / b)
    exact = [fr(x) / fr(y) for x, y in zip(a, b)]
    low = np.abs(q) < 2.0 ** -1019
    assert np.all(np.isin(np.abs(r[low]), [0.0, TINY]))
    for i in np.flatnonzero(low):  # q + r is the quotient rounded to odd on multiples of 2**-1074
        n_floor = math.floor(abs(exact[i]) / Fraction(TINY))
        odd = n_floor if abs(exact[i]) == n_floor * Fraction(TINY) else n_floor | 1
        assert abs(fr(q[i]) + fr(r[i])) == odd * Fraction(TINY)
    assert_equivalent(q, r, exact, COARSE, "tiny quotients")


def test_exact_div_specials_and_signed_zeros():
    a = np.array([0.0, -0.0, 1.0, -1.0, np.inf, np.nan, 0.0, 1.0, -0.0, 3.0])
    b = np.array([1.0, 1.0, 0.0, 0.0, 2.0, 1.0, 0.0, np.inf, -5.0, -np.inf])
    with np.errstate(divide="ignore", invalid="ignore"):
        want = a / b
    q, r = exact_div(a, b)
    np.testing.assert_array_equal(q, want)
    assert np.all(r == 0)
    assert np.array_equal(np.signbit(r), np.signbit(q))  # a -0 quotient stays -0 as a pair
    finite = np.isfinite(q)
    for fmt in SMALL:
        got = round_to((q[finite], r[finite]), fmt).astype(np.float64)
        assert np.array_equal(np.signbit(got), np.signbit(q[finite]))
    assert exact_div(6.0, 3.0) == (2.0, 0.0)


def sqrt_representative(a: float) -> Fraction:
    """sqrt(a) if exact, else a dyadic strictly between the same multiples of 2**-700 (finer
    than every point of G near a root >= 2**-537, so rounding-equivalent to sqrt(a))."""
    num, den = fr(a).as_integer_ratio()
    e = -(den.bit_length() - 1)  # a = num * 2**e
    if e % 2:
        num, e = 2 * num, e - 1
    t = 700
    big = num << (e + 2 * t)  # a * 4**t, an integer since e >= -1074
    n = math.isqrt(big)
    if n * n == big:
        return Fraction(n, 2 ** t)
    return Fraction(2 * n + 1, 2 ** (t + 1))


def sqrt_cases(rng: np.random.Generator) -> np.ndarray:
    a = np.abs(random_doubles(rng, 400))
    squares = np.ldexp(rng.integers(1, 2 ** 26, 50).astype(np.float64) ** 2,
                       2 * rng.integers(-500, 500, 50))
    # sqrt(2**106 + 2j * 2**53) = (2**53 + j) sqrt(1 - j**2 / m**2): just below a midpoint
    j = rng.integers(0, 2 ** 20, 100) * 2 + 1
    hard = np.ldexp(1 + 2 * j * 2.0 ** -53, 2 * rng.integers(-500, 500, 100))
    # float16 / bfloat16 midpoints squared and rounded
    mids = np.concatenate([1 + (2 * rng.integers(0, 2 ** m, 40) + 1) * 2.0 ** -(m + 1)
                           for m in (10, 7, 23)])
    edges = [TINY, 2.0 ** -1022, DBL_MAX, 2.0, 0.25, 1 - 2.0 ** -53]
    return np.concatenate([a, squares, hard, mids * mids, edges])


def test_exact_sqrt_properties_and_equivalence():
    rng = np.random.default_rng(6)
    a = sqrt_cases(rng)
    s, r = exact_sqrt(a)
    np.testing.assert_array_equal(s, np.sqrt(a))
    # sign(sqrt(a) - s) == sign(a - s**2); exact iff a == s**2
    check_correction(s, r, [fr(x) - fr(y) ** 2 for x, y in zip(a, s)])
    assert_equivalent(s, r, [sqrt_representative(x) for x in a], ALL, "sqrt")


def test_exact_sqrt_specials():
    a = np.array([0.0, -0.0, np.inf, -1.0, np.nan, -np.inf, 4.0])
    with np.errstate(invalid="ignore"):
        want = np.sqrt(a)
    s, r = exact_sqrt(a)
    np.testing.assert_array_equal(s, want)
    assert np.all(r == 0) and np.array_equal(np.signbit(r[:3]), np.signbit(s[:3]))
    s0, r0 = exact_sqrt(2.0)
    assert s0.shape == r0.shape == () and s0 == math.sqrt(2.0) and r0 < 0


# --- exact_sum --------------------------------------------------------------------------------

H = 2.0 ** -11  # half an ulp of 1 in float16
ADVERSARIAL = {
    "cancellation": [2.0 ** 1000, 1.0, -2.0 ** 1000],
    "cancellation, tiny rest": [2.0 ** 1023, TINY, -2.0 ** 1023, 3 * TINY],
    "whole range": [2.0 ** 1023, TINY],
    "whole range, negative": [-2.0 ** 1023, TINY, 2.0 ** -1022, -1.0],
    "subnormals only": [TINY, TINY, 3 * TINY, -2.0 ** -1060],
    "subnormals to normal": [2.0 ** -1023, 2.0 ** -1023],
    "DBL_MAX + DBL_MAX": [DBL_MAX, DBL_MAX],
    "-DBL_MAX - DBL_MAX": [-DBL_MAX, -DBL_MAX],
    "DBL_MAX + half ulp": [DBL_MAX, 2.0 ** 970],
    "DBL_MAX + half ulp - tiny": [DBL_MAX, 2.0 ** 970, -TINY],
    "DBL_MAX + half ulp + tiny": [DBL_MAX, 2.0 ** 970, TINY],
    "DBL_MAX + quarter ulp": [DBL_MAX, 2.0 ** 969],
    "DBL_MAX + ulp": [DBL_MAX, 2.0 ** 971],
    "above then back": [DBL_MAX, DBL_MAX, -DBL_MAX],
    "far above": [DBL_MAX] * 1000 + [-1.0],
    "float16 tie": [1.0, H],
    "float16 tie + tiny": [1.0, H, TINY],
    "float16 tie - tiny": [1.0, H, -TINY],
    "float16 tie, odd": [1.0 + 2 * H, H],
    "float16 tie, odd - tiny": [1.0 + 2 * H, H, -TINY],
    "float16 tie via cancellation": [2.0 ** 60, 1.0, H, -2.0 ** 60],
    "float16 overflow tie": [65504.0, 16.0],
    "float16 overflow tie - tiny": [65504.0, 16.0, -TINY],
    "float16 half subnormal": [2.0 ** -25, -TINY, TINY],
    "float16 half subnormal + tiny": [2.0 ** -25, TINY],
    "bfloat16 tie": [1.0, 2.0 ** -8],
    "bfloat16 tie + tiny": [1.0, 2.0 ** -8, TINY],
    "bfloat16 tie - tiny": [-1.0, -2.0 ** -8, TINY],
    "float32 tie - tiny": [1.0, 2.0 ** -24, -TINY],
    "float64 tie": [1.0, 2.0 ** -53],
    "float64 tie + tiny": [1.0, 2.0 ** -53, TINY],
    "float64 tie - tiny": [1.0, 2.0 ** -53, -TINY],
    "float64 odd tie": [1.0 + 2.0 ** -52, 2.0 ** -53],
    "below a power of two": [2.0, -2.0 ** -1000],
    "float64 sticky": [1.0, 2.0 ** -54, 2.0 ** -300],
    "tenths": [0.1] * 10,
    "one term": [-3.5],
    "e4m3 max tie": [448.0, 16.0],
    "e2m1 tie": [5.0, 0.0, 0.0],
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_sums(name):
    check_sums([ADVERSARIAL[name]], ALL, name)


def test_overflowing_sums_give_dbl_max_pairs():
    hi, lo = exact_sum([DBL_MAX, DBL_MAX])
    assert (hi, lo) == (DBL_MAX, DBL_MAX)
    hi, lo = exact_sum([-DBL_MAX, -2.0 ** 971])  # exactly -2**1024
    assert (hi, lo) == (-DBL_MAX, -DBL_MAX)
    hi, lo = exact_sum([DBL_MAX, 2.0 ** 970])  # just below 2**1024: an ordinary pair
    assert (hi, lo) == (DBL_MAX, 2.0 ** 970)
    with np.errstate(over="ignore"):
        assert hi + lo == np.inf  # IEEE's sum, rounded to nearest


def test_pair_is_truncated_hi_plus_odd_lo():
    """The documented construction: hi = sum truncated to 53 bits, lo = rest rounded to odd."""
    rng = np.random.default_rng(7)
    x = random_doubles(rng, 2000, max_field=1400).reshape(100, 20)
    hi, lo = exact_sum(x, axis=1)
    for row, h, l in zip(x, hi, lo):
        total = sum(map(fr, row), Fraction(0))
        if total == 0:
            continue
        ulp = Fraction(2) ** (math.frexp(h)[1] - 53)  # (math.log2 may round up)
        assert abs(fr(h)) <= abs(total) < abs(fr(h)) + ulp
        rest = total - fr(h)
        if fr(l) == rest:
            continue
        ulp_l = Fraction(2) ** (math.frexp(l)[1] - 53)
        assert abs(fr(l) - rest) < ulp_l and (abs(fr(l)) / ulp_l) % 2 == 1  # rounded to odd


def test_random_full_range_sums():
    rng = np.random.default_rng(8)
    rows = []
    for n in rng.integers(1, 40, 300):
        v = random_doubles(rng, n, max_field=int(rng.integers(1, 2047)))
        if rng.random() < 0.5:  # add cancelling copies
            v = np.concatenate([v, -v[: n // 2] * (1 + rng.integers(-3, 4, n // 2) * 2.0 ** -52)])
        rows.append(rng.permutation(v))
    check_sums(rows, ALL, "random")


@settings(max_examples=150, deadline=None, database=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True),
                max_size=25))
def test_hypothesis_sums(values):
    check_sums([values], ALL, "hypothesis")


@settings(max_examples=150, deadline=None, database=None)
@given(st.lists(st.sampled_from([1.0, -1.0, 2.0 ** -11, -2.0 ** -11, 2.0 ** -8, TINY, -TINY,
                                 2.0 ** 60, -2.0 ** 60, 65504.0, 2.0 ** -25, 0.0, -0.0]),
                max_size=12))
def test_hypothesis_near_ties(values):
    check_sums([values], ALL, "near ties")


@settings(max_examples=150, deadline=None, database=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True), max_size=8))
def test_hypothesis_specials(values):
    hi, lo = exact_sum(values)
    want = exact_total(values)
    if isinstance(want, float):
        if math.isnan(want):
            assert np.isnan(hi)
        else:
            assert hi == want and np.signbit(hi) == np.signbit(want)
            assert lo == 0
    else:
        check_sums([values], SMALL, "hypothesis specials")


def float16_integer_sum(x16: np.ndarray) -> Fraction:
    """Exact sum of float16 values: all are multiples of 2**-24, so sum integers."""
    ints = (x16.astype(np.float64) * 2.0 ** 24).astype(np.int64)
    return Fraction(int(ints.astype(object).sum()), 2 ** 24)


def test_long_float16_arrays():
    rng = np.random.default_rng(9)
    bits = rng.integers(0, 0x7C00, 100_000).astype(np.uint16) | (
        rng.integers(0, 2, 100_000).astype(np.uint16) << 15)
    x16 = bits.view(np.float16)
    hi, lo = exact_sum(x16)
    assert_equivalent(hi, lo, [float16_integer_sum(x16)], ALL, "1e5 float16")
    same = np.full(100_000, np.float16(65504.0))  # 6.5e9, far beyond float16's range
    hi, lo = exact_sum(same)
    assert (hi, lo) == (65504.0 * 100_000, 0.0)
    grid = x16.reshape(100, 1000)
    hi, lo = exact_sum(grid, axis=1)
    assert_equivalent(hi, lo, [float16_integer_sum(r) for r in grid], SMALL, "rows")


def test_narrow_input_dtypes_are_exact():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((30, 40)).astype(np.float32)
    for dtype in (np.float32, np.float16, ml_dtypes.bfloat16):
        xd = x.astype(dtype)
        h1, l1 = exact_sum(xd, axis=0)
        h2, l2 = exact_sum(xd.astype(np.float64), axis=0)
        assert h1.tobytes() == h2.tobytes() and l1.tobytes() == l2.tobytes()


def test_independent_of_order_and_layout():
    rng = np.random.default_rng(11)
    x = random_doubles(rng, 64 * 300, max_field=2046).reshape(64, 300)
    x[:, ::7] = -x[:, 1::7][:, : x[:, ::7].shape[1]]  # some cancellation
    hi, lo = exact_sum(x, axis=1)
    perm = rng.permuted(x, axis=1)
    for other in (exact_sum(perm, axis=1), exact_sum(np.asfortranarray(perm), axis=-1),
                  exact_sum(perm.T.copy(), axis=0), exact_sum(perm[:, ::-1], axis=1)):
        assert hi.tobytes() == other[0].tobytes() and lo.tobytes() == other[1].tobytes()
    whole = exact_sum(x)
    shuffled = exact_sum(rng.permutation(x.ravel()))
    assert whole[0].tobytes() == shuffled[0].tobytes()
    assert whole[1].tobytes() == shuffled[1].tobytes()


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_block_sizes_do_not_matter(monkeypatch, chunk):
    """Terms are decomposed in blocks of rows or of parts of a row: any blocking is the same."""
    import mpgrad.numerics.exact as ex
    rng = np.random.default_rng(16)
    x = random_doubles(rng, 5 * 23, max_field=2046).reshape(5, 23)
    x[0, :5] = [np.inf, 1.0, -0.0, 0.0, 2.0]
    want = [exact_sum(x, axis=a) for a in (0, 1, None)]
    monkeypatch.setattr(ex, "_CHUNK", chunk)
    for a, (hi, lo) in zip((0, 1, None), want):
        got = ex.exact_sum(x, axis=a)
        assert got[0].tobytes() == hi.tobytes() and got[1].tobytes() == lo.tobytes()


def test_float32_matrix_axes_match_exact_sums():
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((24, 33)) * np.exp2(rng.integers(-30, 30, (24, 33)))).astype(
        np.float32).astype(np.float64)
    for axis in (0, 1):
        hi, lo = exact_sum(x, axis=axis)
        sums = [sum(map(fr, line), Fraction(0)) for line in np.moveaxis(x, axis, -1)]
        assert_equivalent(hi, lo, sums, SMALL, f"axis {axis}")
        np.testing.assert_array_equal(hi + lo, [float(s) for s in sums])  # float64 nearest


@pytest.mark.parametrize("shape, axis", [
    ((), None), ((5,), None), ((5,), 0), ((5,), -1), ((3, 4), 0), ((3, 4), 1), ((3, 4), -1),
    ((2, 3, 4), (0, 2)), ((2, 3, 4), (1,)), ((2, 3, 4), (2, 0, 1)), ((2, 3, 4), None),
    ((0,), None), ((0, 3), 0), ((3, 0), 1), ((3, 0), 0), ((2, 0, 3), (0, 2)), ((), ()),
    ((3, 4), ()),
])
@pytest.mark.parametrize("keepdims", [False, True])
def test_shapes(shape, axis, keepdims):
    rng = np.random.default_rng(13)
    x = np.round(rng.standard_normal(shape) * 8) / 8  # small dyadics: np.sum is exact
    hi, lo = exact_sum(x, axis=axis, keepdims=keepdims)
    want = np.sum(x, axis=axis, keepdims=keepdims)
    assert hi.shape == lo.shape == np.shape(want)
    np.testing.assert_array_equal(hi, want)
    assert np.all(lo == 0) and not np.any(np.signbit(hi[hi == 0]))


def test_bad_axes():
    with pytest.raises(np.exceptions.AxisError):
        exact_sum(np.zeros((2, 3)), axis=2)
    with pytest.raises(np.exceptions.AxisError):
        exact_sum(np.float64(1.0), axis=1)
    with pytest.raises(ValueError, match="repeated axis"):
        exact_sum(np.zeros((2, 3)), axis=(1, -1))
    with pytest.raises(ValueError, match="repeated axis"):  # mpgrad.sum: the same rule
        mpgrad.sum(mpgrad.zeros(2, 3), axis=(1, -1))
    hi, lo = exact_sum(np.float64(1.5), axis=0)  # a 0-d array: axis 0 is no axis (torch)
    assert (float(hi), float(lo)) == (1.5, 0.0)


def test_signed_zeros():
    cases = [((-0.0,), True), ((-0.0, -0.0), True), ((0.0, -0.0), False), ((0.0,), False),
             ((1.0, -1.0), False), ((-1.0, 1.0), False), ((-0.0, -TINY, TINY), False),
             ((-2.0 ** 1000, 2.0 ** 1000, -0.0), False), ((), False)]
    for terms, negative in cases:  # (a dict would merge keys: -0.0 == 0.0)
        hi, lo = exact_sum(np.array(terms))
        assert hi == 0 and lo == 0
        assert np.signbit(hi) == np.signbit(lo) == negative, terms
        for fmt in ALL:
            got = round_to((hi, lo), fmt, "nearest_even").astype(np.float64)
            assert np.signbit(got) == (negative and fmt.signed_zero), (terms, fmt.name)
    x = np.array([[-0.0, 0.0], [-0.0, -0.0]])
    assert np.signbit(exact_sum(x, axis=0)[0]).tolist() == [True, False]
    assert np.signbit(exact_sum(x, axis=1)[0]).tolist() == [False, True]


def test_nan_and_inf():
    cases = [([1.0, np.nan], np.nan), ([np.inf, 1.0], np.inf), ([-np.inf, DBL_MAX], -np.inf),
             ([np.inf, -np.inf], np.nan), ([np.inf, np.inf, 5.0], np.inf),
             ([np.nan, np.inf], np.nan), ([-np.inf, np.nan], np.nan)]
    for terms, want in cases:
        hi, lo = exact_sum(terms)
        assert lo == 0
        if np.isnan(want):
            assert np.isnan(hi)
        else:
            assert hi == want
    x = np.array([[1.0, np.inf], [np.nan, 2.0], [-np.inf, np.inf]])
    hi, lo = exact_sum(x, axis=1)
    assert hi[0] == np.inf and np.isnan(hi[1]) and np.isnan(hi[2])
    hi, lo = exact_sum(x, axis=0)
    assert np.isnan(hi[0]) and hi[1] == np.inf


def test_too_many_terms(monkeypatch):
    import mpgrad.numerics.exact as ex
    monkeypatch.setattr(ex, "_MAX_TERMS", 8)
    with pytest.raises(ValueError, match="fewer than"):
        ex.exact_sum(np.ones(8))
    assert ex.exact_sum(np.ones((8, 7)), axis=1)[0].tolist() == [7.0] * 8


@pytest.mark.slow
def test_random_full_range_sums_many():
    rng = np.random.default_rng(14)
    x = random_doubles(rng, 3000 * 200).reshape(3000, 200)
    x[:, 100:] = -x[:, :100] * (1 + rng.integers(-2, 3, (3000, 100)) * 2.0 ** -52)
    hi, lo = exact_sum(x, axis=1)
    assert_equivalent(hi, lo, [sum(map(fr, r), Fraction(0)) for r in x], ALL, "many")


@pytest.mark.slow
def test_exact_div_many():
    rng = np.random.default_rng(15)
    for _ in range(40):
        a, b = div_cases(rng)
        q, r = exact_div(a, b)
        exact = [fr(x) / fr(y) for x, y in zip(a, b)]
        normal = np.abs(q) >= 2.0 ** -1019
        assert_equivalent(q[normal], r[normal], [e for e, k in zip(exact, normal) if k], ALL)
