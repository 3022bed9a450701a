"""mpgrad.elementary.correctly_rounded against MPFR (gmpy2) at 200 bits, rounded by reference.py.

Exhaustive over every float16, bfloat16 and 8-bit (and smaller) value, sampled for float32
(2*10**4 inputs; 10**6 and all tf32 values with --runslow) and wide custom formats. Results
are compared as values with the sign of zero (NaN equal to NaN), which for values of one
format is comparing bit patterns. Also: the hard-case path is exercised and counted, exact
results, C99 special values, errors, and independence from libm (perturbed NumPy/SciPy).

The reference is MPFR's correctly rounded 200-bit value, rounded again to the format: a double
rounding, harmless unless f(x) lies within 2**-200 relative of a midpoint of a <= 46-bit format
without being on it, which would need a far closer approach than any such input set has.
"""

from __future__ import annotations

import math
import time

import gmpy2
import numpy as np
import pytest
import scipy.special
from gmpy2 import mpfr

import mpgrad
from mpgrad import Format, from_bits, round_to, to_float64
from mpgrad.numerics.elementary import FUNCTIONS, correctly_rounded, hard_case_count

try:  # tests/ may or may not become a package
    from .reference import ref_round
except ImportError:
    from reference import ref_round

POW_EXPONENTS = (2.0, 3.0, 0.5, -1.0, 1.5, -0.5)
CASES = [(n, None) for n in FUNCTIONS if n != "pow"] + [("pow", a) for a in POW_EXPONENTS]
IDS = [n if a is None else f"pow{a:g}" for n, a in CASES]
SMALL_FORMATS = [f for f in mpgrad.FORMATS.values() if f.bits <= 8] + [
    Format.custom(4, 3, subnormals=False), Format.custom(3, 4, bias=5)]
CTX = gmpy2.context(precision=200)


def mpfr_value(name: str, x: float, a: float | None):
    """f(x) by MPFR at 200 bits (C99 special values included)."""
    with gmpy2.context(CTX):
        v = mpfr(x)  # exact
        if name == "sigmoid":
            return 1 / (1 + gmpy2.exp(-v))
        if name == "pow":
            return v ** mpfr(a)
        return getattr(gmpy2, name)(v)


def expected(name: str, xs: np.ndarray, fmt: Format, a: float | None) -> np.ndarray:
    """The reference: MPFR's value rounded to fmt (nearest even) by tests/reference.py."""
    out = []
    for x in xs.tolist():
        v = mpfr_value(name, x, a)
        out.append(ref_round(v if gmpy2.is_finite(v) else float(v), fmt, "nearest_even"))
    return np.array(out, dtype=np.float64)


def differ(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Where two arrays of format values differ (sign of zero counts; NaN equals NaN)."""
    both_nan = np.isnan(got) & np.isnan(want)
    return ~both_nan & ((got != want) | (np.signbit(got) != np.signbit(want)))


def in_domain(name: str, xs: np.ndarray, fmt: Format, a: float | None) -> np.ndarray:
    """xs, less the inputs with a NaN result when fmt has no NaN (round_to rejects those)."""
    if fmt.has_nan:
        return xs
    bad = (name == "log" or name == "pow" and not float(a).is_integer()) & (xs < 0)
    return xs[~bad]


def check(name: str, xs: np.ndarray, fmt: Format, a: float | None) -> int:
    """Assert agreement with MPFR on every input; return the number of hard cases."""
    xs = in_domain(name, xs, fmt, a)
    before = hard_case_count()
    got = correctly_rounded(name, xs, fmt, exponent=a)
    hard = hard_case_count() - before
    want = expected(name, xs, fmt, a)
    bad = differ(got, want)
    assert got.dtype == np.float64 and got.shape == xs.shape
    assert not bad.any(), (
        f"{fmt.name} {name} {a}: {int(bad.sum())} of {xs.size} mismatch MPFR "
        f"({hard} hard cases); first x: {xs[bad][:5]}, got {got[bad][:5]}, want {want[bad][:5]}")
    return hard


def all_values(fmt: Format) -> np.ndarray:
    """Every value of fmt (one per bit pattern) as float64."""
    return to_float64(from_bits(np.arange(2 ** fmt.bits), fmt))


def sample(fmt: Format, n: int, seed: int = 0) -> np.ndarray:
    """n inputs of fmt: random bit patterns, log-uniform magnitudes, (-12, 12), edge values."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2 ** fmt.bits, n // 4, dtype=np.uint64)
    mags = np.exp2(rng.uniform(-40, 10, n // 2)) * rng.choice([-1.0, 1.0], n // 2)
    k = np.arange(fmt.fraction_bits + 40.0)
    edges = np.concatenate([2 ** -k, 1 + 2 ** -k, 1 - 2 ** -k, [4.0, 0.25, 9.0, 2.25]])
    xs = np.concatenate([mags, rng.uniform(-12, 12, n - n // 4 - n // 2), edges, -edges])
    return np.concatenate([to_float64(from_bits(codes, fmt)), to_float64(round_to(xs, fmt))])


# --- agreement with MPFR --------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [mpgrad.float16, mpgrad.bfloat16], ids=lambda f: f.name)
@pytest.mark.parametrize("name,a", CASES, ids=IDS)
def test_exhaustive_16bit(name, a, fmt):
    check(name, all_values(fmt), fmt, a)


@pytest.mark.parametrize("fmt", SMALL_FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("name,a", CASES, ids=IDS)
def test_exhaustive_small_formats(name, a, fmt):
    check(name, all_values(fmt), fmt, a)


@pytest.mark.parametrize("a", [0.0, 1.0, 1 / 3, 0.25, 2.5, -2.0, -3.0])
def test_more_exponents_float16(a):
    check("pow", all_values(mpgrad.float16), mpgrad.float16, a)


@pytest.mark.parametrize("name,a", CASES, ids=IDS)
def test_float32_sample(name, a):
    check(name, sample(mpgrad.float32, 20_000), mpgrad.float32, a)


@pytest.mark.slow
@pytest.mark.parametrize("name,a", CASES, ids=IDS)
def test_float32_large_sample(name, a):
    check(name, sample(mpgrad.float32, 10 ** 6, seed=1), mpgrad.float32, a)


@pytest.mark.slow
@pytest.mark.parametrize("name,a", CASES, ids=IDS)
def test_exhaustive_tf32(name, a):
    codes = np.arange(2 ** 19, dtype=np.int64) << 13  # tf32's 19 bits atop float32's
    xs = to_float64(codes.astype(np.uint32).view(np.float32))
    check(name, xs, mpgrad.tf32, a)


# --- the hard cases -------------------------------------------------------------------------

def test_hard_cases_are_found_and_settled():
    """Exact midpoints (x**2 in float16) and near-midpoints (exp near 0 in float32)."""
    f16 = all_values(mpgrad.float16)
    assert check("pow", f16, mpgrad.float16, 2.0) > 0
    tiny = np.concatenate([2.0 ** -np.arange(20, 60), -(2.0 ** -np.arange(20, 60))])
    for name in ("exp", "sigmoid", "tanh", "erf", "log"):
        xs = tiny if name != "log" else 1 + tiny[tiny > -1]
        xs = to_float64(round_to(xs, mpgrad.float32))
        if name in ("exp", "sigmoid"):
            assert check(name, xs, mpgrad.float32, None) > 0, name
        else:
            check(name, xs, mpgrad.float32, None)


def test_hard_cases_are_rare_in_narrow_formats():
    xs = all_values(mpgrad.bfloat16)
    before = hard_case_count()
    for name, a in CASES:
        correctly_rounded(name, xs, mpgrad.bfloat16, exponent=a)
    assert hard_case_count() - before < 0.01 * xs.size * len(CASES)


# --- wide formats ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [Format.custom(8, 30), Format.custom(8, 45)], ids=str)
@pytest.mark.parametrize("name,a", CASES, ids=IDS)
def test_wide_custom_formats(name, a, fmt):
    """p = 31 and 46: the same method, with many (p = 46: nearly all) elements hard."""
    hard = check(name, sample(fmt, 2000 if fmt.precision < 40 else 400, seed=2), fmt, a)
    assert hard > 0


@pytest.mark.parametrize("fmt", [Format.custom(11, 10), Format.custom(11, 2, bias=1070)],
                         ids=str)
@pytest.mark.parametrize("name,a", [("exp", None), ("sigmoid", None), ("pow", 3.0),
                                    ("pow", 2.0), ("erf", None), ("tanh", None)])
def test_formats_reaching_float64_subnormals(name, a, fmt):
    """Results below 2**-1022, where float64's relative accuracy is lost: settled by mpmath."""
    xs = np.concatenate([-np.linspace(700, 760, 1500), -np.exp2(np.linspace(-345, -370, 500)),
                         np.exp2(np.linspace(-1020, -1080, 200))])
    xs = to_float64(round_to(xs, fmt))
    if name in ("erf", "tanh"):
        xs = xs[np.abs(xs) < 1e-300]
    check(name, xs, fmt, a)


def test_float64_is_numpy_rounded():
    """float64 (p = 53) is not correctly rounded: the NumPy/SciPy value, as documented."""
    xs = sample(mpgrad.float64, 5000)
    with np.errstate(all="ignore"):
        for name, f in [("exp", np.exp), ("log", np.log), ("tanh", np.tanh),
                        ("sigmoid", scipy.special.expit), ("erf", scipy.special.erf)]:
            ok = np.isfinite(xs) & (xs != 0) & ((xs > 0) | (name != "log"))
            assert not differ(correctly_rounded(name, xs[ok], "float64"), f(xs[ok])).any()


# --- exact results, special values, errors --------------------------------------------------

EXACT = [("exp", 0.0, None, 1.0), ("log", 1.0, None, 0.0), ("tanh", 0.0, None, 0.0),
         ("sigmoid", 0.0, None, 0.5), ("erf", 0.0, None, 0.0), ("pow", 4.0, 0.5, 2.0),
         ("pow", 2.0, -1.0, 0.5), ("pow", 4.0, 1.5, 8.0), ("pow", 4.0, -0.5, 0.5),
         ("pow", 3.0, 2.0, 9.0), ("pow", -2.0, 3.0, -8.0), ("pow", 0.25, 0.5, 0.5),
         ("pow", 2.25, 0.5, 1.5), ("pow", 2.25, 1.5, 3.375), ("pow", 0.5, -1.0, 2.0)]


@pytest.mark.parametrize("fmt", ["float32", "float16", "bfloat16", "e4m3", "e5m2",
                                 Format.custom(8, 45)], ids=str)
def test_exact_results(fmt):
    for name, x, a, want in EXACT:
        got = correctly_rounded(name, np.array([x]), fmt, exponent=a)
        assert not differ(got, round_to(np.array([want]), fmt).astype(float)).any(), (name, x, a)


NAN, INF = math.nan, math.inf
SPECIAL = [  # (name, x, exponent, C99 value)
    ("exp", -INF, None, 0.0), ("exp", INF, None, INF), ("exp", NAN, None, NAN),
    ("exp", -0.0, None, 1.0), ("log", 0.0, None, -INF), ("log", -0.0, None, -INF),
    ("log", -1.0, None, NAN), ("log", -INF, None, NAN), ("log", INF, None, INF),
    ("log", NAN, None, NAN), ("tanh", INF, None, 1.0), ("tanh", -INF, None, -1.0),
    ("tanh", -0.0, None, -0.0), ("tanh", NAN, None, NAN), ("sigmoid", INF, None, 1.0),
    ("sigmoid", -INF, None, 0.0), ("sigmoid", -0.0, None, 0.5), ("sigmoid", NAN, None, NAN),
    ("erf", INF, None, 1.0), ("erf", -INF, None, -1.0), ("erf", -0.0, None, -0.0),
    ("erf", NAN, None, NAN), ("pow", -8.0, 1 / 3, NAN), ("pow", 0.0, -1.0, INF),
    ("pow", -0.0, -1.0, -INF), ("pow", NAN, 0.0, 1.0), ("pow", INF, 0.0, 1.0),
    ("pow", -INF, 0.5, INF), ("pow", -0.0, 0.5, 0.0), ("pow", -INF, 3.0, -INF),
    ("pow", -INF, -1.0, -0.0), ("pow", -INF, 2.0, INF), ("pow", -0.0, 3.0, -0.0),
    ("pow", -0.0, 2.0, 0.0), ("pow", -0.0, -0.5, INF), ("pow", -0.0, 1.5, 0.0),
    ("pow", -INF, -0.5, 0.0), ("pow", INF, -1.0, 0.0), ("pow", NAN, 2.0, NAN),
    ("pow", -1.0, 0.5, NAN), ("pow", 1.0, 0.5, 1.0), ("pow", -0.0, -2.0, INF),
    ("exp", 1000.0, None, INF), ("exp", -1000.0, None, 0.0), ("pow", 1e300, 2.0, INF)]


@pytest.mark.parametrize("fmt", ["float32", "float16", "bfloat16", "e5m2", "e4m3",
                                 "e4m3fnuz", "tf32"], ids=str)
def test_special_values(fmt):
    fmt = mpgrad.as_format(fmt)
    for name, x, a, want in SPECIAL:
        got = correctly_rounded(name, np.array([x]), fmt, exponent=a)
        assert not differ(got, round_to(np.array([want]), fmt).astype(float)).any(), (
            name, x, a, got)
        assert not differ(got, expected(name, np.array([x]), fmt, a)).any(), (name, x, a)


def test_errors_and_shapes():
    with pytest.raises(ValueError, match="unknown function"):
        correctly_rounded("sin", np.ones(2), "f16")
    with pytest.raises(ValueError, match="exponent"):
        correctly_rounded("pow", np.ones(2), "f16")
    with pytest.raises(ValueError, match="exponent"):
        correctly_rounded("exp", np.ones(2), "f16", exponent=2.0)
    with pytest.raises(ValueError, match="finite"):
        correctly_rounded("pow", np.ones(2), "f16", exponent=math.nan)
    with pytest.raises(ValueError, match="NaN"):  # fp4 has no NaN for log(-1)
        correctly_rounded("log", np.array([-1.0]), "fp4")
    x = np.linspace(-3, 3, 12).reshape(3, 4)
    out = correctly_rounded("tanh", x.astype(np.float16), "f16")
    assert out.shape == (3, 4) and out.dtype == np.float64
    assert correctly_rounded("exp", np.float64(0.0), "bf16").shape == ()


# --- no dependence on libm ------------------------------------------------------------------

def _perturbed(f, rng: np.random.Generator):
    """f with each finite nonzero float64 result moved by up to 4 ulps, at random."""
    def g(*args):
        y = np.array(f(*args), dtype=np.float64)
        steps = rng.integers(-4, 5, y.shape)
        for k in range(4):
            step = np.nextafter(y, np.where(steps > 0, INF, -INF))
            move = (np.abs(steps) > k) & np.isfinite(step) & (y != 0)
            y = np.where(move, step, y)
        return y
    return g


def test_results_do_not_depend_on_libm(monkeypatch):
    inputs = {"float16": all_values(mpgrad.float16), "bfloat16": all_values(mpgrad.bfloat16),
              "float32": sample(mpgrad.float32, 20_000, seed=3)}
    clean = {(f, n, a): correctly_rounded(n, x, f, exponent=a)
             for f, x in inputs.items() for n, a in CASES}
    rng = np.random.default_rng(4)
    for mod, attr in [(np, "exp"), (np, "log"), (np, "tanh"), (np, "power"),
                      (scipy.special, "expit"), (scipy.special, "erf")]:
        monkeypatch.setattr(mod, attr, _perturbed(getattr(mod, attr), rng))
    with np.errstate(all="ignore"):
        assert not np.array_equal(np.exp(np.ones(1000)), np.full(1000, math.e))  # it bites
    for (f, n, a), want in clean.items():
        got = correctly_rounded(n, inputs[f], f, exponent=a)
        assert not differ(got, want).any(), (f, n, a, int(differ(got, want).sum()))


def test_speed_on_float16():
    """The vectorised path: all 65536 float16 values, every function, well under a second."""
    xs = all_values(mpgrad.float16)
    t = time.perf_counter()
    for name, a in CASES:
        correctly_rounded(name, xs, mpgrad.float16, exponent=a)
    assert time.perf_counter() - t < 5.0
