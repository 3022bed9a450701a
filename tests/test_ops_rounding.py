"""The elementwise operations and reductions of mpgrad, bit for bit against MPFR (gmpy2).

Everything goes through the public tensor API (`mpgrad.tensor`, `a + b`, `mpgrad.sqrt`, ...,
`.numpy()`), and the expected bits never come from mpgrad: operands are decoded by NumPy /
ml_dtypes widening (exact), the operation is evaluated by MPFR, and the result is rounded by
the independent reference of tests/reference.py (which knows the overflow rules of the "fn"
formats, the sign of zero, and gradual underflow). Expected values are encoded back into the
storage dtype by NumPy / ml_dtypes casts of values that are exactly representable.

* +, -, *: the exact result (MPFR at 300 bits: exact for operands within float32's range),
  rounded once by the reference.
* /, sqrt: MPFR's correctly rounded operation in a context with the format's precision,
  gradual underflow (subnormalize=True, emin from the fields) and an unbounded exponent above;
  the reference then applies the overflow rule of the format to that grid value (rounding it
  again is the identity otherwise). No double rounding anywhere.
* Transcendental functions: MPFR evaluated with directed roundings (down and up) at 100 bits,
  both ends rounded by the reference; they must agree (else the precision is raised), so the
  expected value is the correctly rounded one with certainty.
* Composite functions: the documented sequence (docs/numerics-contract.md), each step
  correctly rounded to float16 as above, constants rounded to float16 first.
* sum / mean: the exact Fraction sum (or sum / n) rounded once by the reference.

Samples: float16 / bfloat16: 10**5 operand pairs per op (uniform random bit patterns plus
biased draws: close exponents, near-equal operands, results near overflow and in the
subnormal range, special values); float8_e4m3fn / float8_e5m2: every one of the 65536 pairs;
float32: 2 * 10**4 pairs. sqrt and the transcendental functions: every value of float16 and
of the two float8 formats.
"""

from __future__ import annotations

import math
import operator
import zlib
from fractions import Fraction
from functools import lru_cache

import gmpy2
import numpy as np
import pytest
from gmpy2 import mpfr

import mpgrad

try:  # tests/ may or may not become a package
    from .reference import ref_round, spec_of
except ImportError:
    from reference import ref_round, spec_of

# Uniform bit patterns include signalling NaNs, whose widening to float64 (NumPy / ml_dtypes)
# raises "invalid value encountered in cast": expected here, not a finding.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")

NE = "nearest_even"
F16, BF16, E4M3, E5M2, F32 = (mpgrad.float16, mpgrad.bfloat16, mpgrad.float8_e4m3fn,
                              mpgrad.float8_e5m2, mpgrad.float32)
FP8 = (E4M3, E5M2)
SAMPLES = {"float16": 100_000, "bfloat16": 100_000, "float32": 20_000}

# Sums, differences and products of two values within float32's range are exact at 300 bits
# (their bits span at most 2**128 .. 2**-149).
EXACT = gmpy2.context(precision=300, round=gmpy2.RoundToNearest)
_HUGE_EMAX = 1 << 20


# --- encoding ------------------------------------------------------------------------------

def uint_dtype(fmt) -> np.dtype:
    return np.dtype(f"u{np.dtype(fmt.storage).itemsize}")


def from_codes(codes, fmt) -> np.ndarray:
    """Storage array of fmt holding the given bit patterns."""
    return np.asarray(codes).astype(uint_dtype(fmt)).view(fmt.storage)


def all_codes(fmt) -> np.ndarray:
    return from_codes(np.arange(2 ** (1 + fmt.exponent_bits + fmt.fraction_bits)), fmt)


def encode(values, fmt) -> np.ndarray:
    """Exactly representable float64 values (or NaN) as fmt's storage (NumPy/ml_dtypes cast)."""
    return np.asarray(values, dtype=np.float64).astype(fmt.storage)


def compare(got: mpgrad.Tensor, expected: np.ndarray, fmt, what: str, inputs=()) -> None:
    """Assert the result's format and bits (NaN: both NaN; the sign of zero counts)."""
    assert got.dtype == fmt, f"{what}: result in {got.dtype.name}, expected {fmt.name}"
    g = got.numpy()
    assert g.dtype == np.dtype(fmt.storage) and g.shape == np.shape(expected), what
    expected = np.asarray(expected, dtype=np.float64)
    e_nan, g_nan = np.isnan(expected), np.isnan(g.astype(np.float64))
    e_bits = encode(expected, fmt).view(uint_dtype(fmt))
    bad = (e_nan != g_nan) | (~e_nan & (g.view(uint_dtype(fmt)) != e_bits))
    count = int(bad.sum())
    if count:
        zero_sign = bad & (expected == 0) & (g.astype(np.float64) == 0)
        idx = np.flatnonzero(bad.ravel())[:5]
        lines = []
        for i in idx:
            ins = ", ".join(f"{float(np.ravel(x)[i])!r}" for x in inputs)
            lines.append(f"  ({ins}) -> expected {float(expected.ravel()[i])!r}, got "
                         f"{float(g.astype(np.float64).ravel()[i])!r}")
        pytest.fail(f"{what}: {count} mismatches of {expected.size} against MPFR "
                    f"({int(zero_sign.sum())} of them only in the sign of zero)\n"
                    + "\n".join(lines))


# --- MPFR evaluation -----------------------------------------------------------------------

def _mp(values) -> list:
    """Exact mpfr copies of float64 values (created once per bit pattern, at 53 bits)."""
    arr = np.ascontiguousarray(values, dtype=np.float64).ravel()
    out, cache = [], _MPFR_CACHE
    for bits, v in zip(arr.view(np.int64).tolist(), arr.tolist()):
        m = cache.get(bits)
        if m is None:
            m = cache[bits] = mpfr(v, 53)
        out.append(m)
    return out


_MPFR_CACHE: dict = {}


def _rounded(results, fmt) -> np.ndarray:
    """The reference rounding of MPFR results (exact values, or values already on the grid).

    Each finite r is first rounded to fmt's unbounded grid by MPFR in the same context the
    reference uses for its own first step (so ref_round(g) == ref_round(r)); ref_round then
    settles g (the identity, or the overflow rule / sign of zero), memoised per grid value.
    """
    ctx, memo = target_context(fmt), _MEMO.setdefault(fmt.name, {})
    out = np.empty(len(results))
    for i, r in enumerate(results):
        if not gmpy2.is_finite(r):
            out[i] = ref_round(float(r), fmt, NE)
            continue
        g = ctx.plus(r)
        if gmpy2.get_exp(g) > 1000:  # beyond float64: no float key, ask the reference
            out[i] = ref_round(g, fmt, NE)
            continue
        key = (float(g), gmpy2.is_signed(g))
        if key not in memo:
            memo[key] = ref_round(g, fmt, NE)
        out[i] = memo[key]
    return out


_MEMO: dict = {}


@lru_cache(maxsize=None)
def target_context(fmt) -> gmpy2.context:
    """MPFR at fmt's precision with gradual underflow; the exponent is unbounded above."""
    s = spec_of(fmt)
    return gmpy2.context(precision=s.p, emin=s.emin - s.fraction_bits + 1, emax=_HUGE_EMAX,
                         subnormalize=True, round=gmpy2.RoundToNearest)


_EXACT_OPS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul}


def mpfr_binary(op: str, a, b, fmt) -> np.ndarray:
    """a op b (float64 arrays or scalars, broadcast) correctly rounded to fmt, by MPFR."""
    a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    xs, ys = _mp(a), _mp(b)
    if op in _EXACT_OPS:
        f = _EXACT_OPS[op]
        with gmpy2.context(EXACT):
            results = [f(x, y) for x, y in zip(xs, ys)]
    elif op == "div":
        ctx = target_context(fmt)
        results = [ctx.div(x, y) for x, y in zip(xs, ys)]
    else:
        raise ValueError(op)
    return _rounded(results, fmt).reshape(a.shape)


def mpfr_sqrt(a, fmt) -> np.ndarray:
    ctx = target_context(fmt)
    a = np.asarray(a, np.float64)
    return _rounded([ctx.sqrt(x) for x in _mp(a)], fmt).reshape(a.shape)


# Transcendental functions as MPFR sees them; each is monotone in MPFR's rounding (one
# correctly rounded call, or for sigmoid exact operations around one), so evaluating with
# RoundDown and RoundUp brackets the exact value.
def _sigmoid(ctx, x):
    t = ctx.tanh(x / 2)  # x / 2 is exact; sigmoid(x) = (1 + tanh(x/2)) / 2
    with gmpy2.context(precision=ctx.precision + 1200):  # 1 + t exact (|t| >= 2**-1100)
        return (1 + t) / 2


TRANSCENDENTAL = {
    "exp": lambda ctx, x: ctx.exp(x),
    "log": lambda ctx, x: ctx.log(x),
    "tanh": lambda ctx, x: ctx.tanh(x),
    "erf": lambda ctx, x: ctx.erf(x),
    "sigmoid": _sigmoid,
    "pow2": lambda ctx, x: ctx.pow(x, mpfr(2)),
    "pow0.5": lambda ctx, x: ctx.pow(x, mpfr(0.5)),
    "pow-1": lambda ctx, x: ctx.pow(x, mpfr(-1)),
}


def _same(u: float, v: float) -> bool:
    """Equal as values including the sign of zero, or both NaN."""
    if math.isnan(u) or math.isnan(v):
        return math.isnan(u) and math.isnan(v)
    return u == v and math.copysign(1, u) == math.copysign(1, v)


@lru_cache(maxsize=None)
def _directed(precision: int, rnd) -> gmpy2.context:
    return gmpy2.context(precision=precision, round=rnd)


def mpfr_correctly_rounded(name: str, values, fmt) -> np.ndarray:
    """f(x) correctly rounded to fmt, certified by a directed-rounding bracket."""
    fn = TRANSCENDENTAL[name]
    xs = _mp(values)
    out = np.empty(len(xs))
    for i, x in enumerate(xs):
        for prec in (100, 400, 2000):
            lo = fn(_directed(prec, gmpy2.RoundDown), x)
            hi = fn(_directed(prec, gmpy2.RoundUp), x)
            r_lo, r_hi = _rounded([lo, hi], fmt)
            if _same(r_lo, r_hi):
                out[i] = r_lo
                break
        else:
            raise AssertionError(f"{name}({float(x)!r}) not settled at 2000 bits")
    return out.reshape(np.shape(values))


@lru_cache(maxsize=None)
def transcendental_table(name: str, fmt) -> np.ndarray:
    """Expected f(x) for every bit pattern x of fmt (indexed by the pattern)."""
    return mpfr_correctly_rounded(name, all_codes(fmt).astype(np.float64), fmt)


def lookup(table: np.ndarray, values, fmt) -> np.ndarray:
    """table[x] for fmt values x (given as float64)."""
    return table[encode(values, fmt).view(uint_dtype(fmt)).astype(np.int64)]


# --- operand generation --------------------------------------------------------------------

def special_codes(fmt) -> np.ndarray:
    """+-0, +-inf, NaN, +-max and its neighbour, smallest/largest subnormal, smallest normal, 1."""
    m, bias = fmt.fraction_bits, fmt.bias
    top = 2 ** fmt.exponent_bits - 1
    w = 1 + fmt.exponent_bits + fmt.fraction_bits
    s = spec_of(fmt)
    max_code = ((s.emax + bias) << m) | (int(s.max / Fraction(2) ** (s.emax - m)) - 2 ** m)
    mags = [0, 1, 2, 2 ** m - 1, 2 ** m, 2 ** m + 1, bias << m, (bias << m) + 1,
            max_code, max_code - 1]
    if fmt.nan == "ieee":
        mags += [top << m, (top << m) | 1, (top << m) | (2 ** m - 1)]  # inf, NaNs
    else:
        mags += [(top << m) | (2 ** m - 1)]  # the fn NaN
    mags = np.array(mags, dtype=np.uint64)
    return np.concatenate([mags, mags | np.uint64(1 << (w - 1))])


def operand_pairs(fmt, op: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n pairs of fmt bit patterns: uniform, plus draws biased toward the interesting cases."""
    rng = np.random.default_rng(seed)
    e, m, bias = fmt.exponent_bits, fmt.fraction_bits, fmt.bias
    w = 1 + e + m
    top = 2 ** e - 1  # all-ones exponent field (inf / NaN in IEEE formats)
    k = n // 5

    def compose(field, frac=None):
        field = np.clip(field, 0, top - 1).astype(np.uint64)  # finite fields
        if frac is None:
            frac = rng.integers(0, 2 ** m, field.size, dtype=np.uint64)
        sign = rng.integers(0, 2, field.size, dtype=np.uint64)
        return (sign << np.uint64(w - 1)) | (field << np.uint64(m)) | frac

    def uniform(size):
        return rng.integers(0, 2 ** w, size, dtype=np.uint64)

    # 1. uniform bit patterns over the whole range (NaN, inf, subnormals included)
    a1, b1 = uniform(k), uniform(k)
    # 2. exponents within p + 2 of each other: alignment, cancellation, quotients near 1
    fa = rng.integers(0, top, k)
    a2, b2 = compose(fa), compose(fa + rng.integers(-(m + 3), m + 4, k))
    # 3. near-equal patterns, either sign: exact zeros, massive cancellation, ties
    a3 = uniform(k)
    flip = rng.integers(0, 2, k, dtype=np.uint64) << np.uint64(w - 1)
    b3 = ((a3 + rng.integers(-3, 4, k).astype(np.uint64)) % np.uint64(2 ** w)) ^ flip
    # 4. results near the overflow threshold and through the subnormal range
    emin, emax = 1 - bias, top - 1 - bias if fmt.nan == "ieee" else top - bias
    t = rng.choice(np.r_[emax - 1:emax + 2, emin - m - 2:emin + 2], k)
    ea = rng.integers(1, top, k) - bias
    if op == "mul":
        eb = t - ea + rng.integers(-1, 2, k)
    elif op == "div":
        eb = ea - t + rng.integers(-1, 2, k)
    else:
        ea, eb = t, t - rng.integers(0, m + 3, k)
    frac_kind = rng.integers(0, 3, k)
    ones = np.uint64(2 ** m - 1)
    def fractions():  # all ones a third of the time: values next to max
        return np.where(frac_kind == 0, ones, rng.integers(0, 2 ** m, k, dtype=np.uint64))
    a4, b4 = compose(ea + bias, fractions()), compose(eb + bias, fractions())
    # 5. special values against specials and against anything
    specials = special_codes(fmt)
    rest = n - 4 * k
    a5 = rng.choice(specials, rest)
    b5 = np.where(rng.integers(0, 2, rest) == 0, rng.choice(specials, rest), uniform(rest))
    a = np.concatenate([a1, a2, a3, a4, a5])
    b = np.concatenate([b1, b2, b3, b4, b5])
    swap = rng.integers(0, 2, n).astype(bool)
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    return from_codes(a, fmt), from_codes(b, fmt)


def exhaustive_pairs(fmt) -> tuple[np.ndarray, np.ndarray]:
    codes = all_codes(fmt)
    return np.repeat(codes, codes.size), np.tile(codes, codes.size)


def pairs_for(fmt, op: str):
    if fmt in FP8:
        return exhaustive_pairs(fmt)
    return operand_pairs(fmt, op, SAMPLES[fmt.name], seed=zlib.crc32(f"{fmt.name} {op}".encode()))


# --- +, -, *, / and sqrt, one format --------------------------------------------------------

BINARY = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b,
          "mul": lambda a, b: a * b, "div": lambda a, b: a / b}


@pytest.mark.parametrize("op", list(BINARY))
@pytest.mark.parametrize("fmt", [F16, BF16, E4M3, E5M2, F32], ids=lambda f: f.name)
def test_binary_op_matches_mpfr(fmt, op):
    a, b = pairs_for(fmt, op)
    assert a.size >= (65536 if fmt in FP8 else SAMPLES[fmt.name])
    got = BINARY[op](mpgrad.tensor(a, dtype=fmt), mpgrad.tensor(b, dtype=fmt))
    av, bv = a.astype(np.float64), b.astype(np.float64)
    compare(got, mpfr_binary(op, av, bv, fmt), fmt, f"{fmt.name} {op}", (av, bv))


@pytest.mark.slow
@pytest.mark.parametrize("op", list(BINARY))
def test_binary_op_matches_mpfr_float32_many(op):
    a, b = operand_pairs(F32, op, 200_000, seed=zlib.crc32(f"float32 many {op}".encode()))
    got = BINARY[op](mpgrad.tensor(a, dtype=F32), mpgrad.tensor(b, dtype=F32))
    av, bv = a.astype(np.float64), b.astype(np.float64)
    compare(got, mpfr_binary(op, av, bv, F32), F32, f"float32 {op}", (av, bv))


def test_operand_pairs_cover_the_cases():
    """The sampled pairs do reach overflow, subnormal results, exact zeros, NaN and infinities."""
    a, b = operand_pairs(F16, "mul", 100_000, seed=1)
    av, bv = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(all="ignore"):
        prod = av * bv
        diff = av - bv
    assert np.sum(np.isfinite(av) & np.isfinite(bv) & (np.abs(prod) > 65520)) > 1000
    assert np.sum((np.abs(prod) > 0) & (np.abs(prod) < 2.0 ** -14)) > 1000
    assert np.sum((diff == 0) & np.isfinite(av)) > 100
    assert np.sum(np.isnan(av)) > 100 and np.sum(np.isinf(bv)) > 100


@pytest.mark.parametrize("fmt", [F16, BF16, E4M3, E5M2, F32], ids=lambda f: f.name)
def test_sqrt_matches_mpfr(fmt):
    if fmt == F32:
        a = operand_pairs(fmt, "sqrt", SAMPLES["float32"], seed=7)[0]
    else:
        a = all_codes(fmt)
    got = mpgrad.sqrt(mpgrad.tensor(a, dtype=fmt))
    av = a.astype(np.float64)
    compare(got, mpfr_sqrt(av, fmt), fmt, f"{fmt.name} sqrt", (av,))


def test_hand_checked_edge_cases():
    """A few results worked out by hand, independent of MPFR and of mpgrad."""
    f16 = lambda *v: mpgrad.tensor(encode(v, F16), dtype=F16)  # noqa: E731
    e4m3 = lambda *v: mpgrad.tensor(encode(v, E4M3), dtype=E4M3)  # noqa: E731
    cases = [
        (f16(65504.0) + f16(16.0), math.inf),           # exactly the overflow threshold: even
        (f16(65504.0) + f16(15.984375), 65504.0),       # just below it
        (f16(1.0) - f16(1.0), 0.0),                     # +0, not -0
        (f16(-0.0) + f16(-0.0), -0.0),
        (f16(2.0 ** -24) * f16(0.5), 0.0),              # half the smallest subnormal: even
        (f16(2.0 ** -24) * f16(0.75), 2.0 ** -24),
        (f16(1.0) / f16(-0.0), -math.inf),
        (mpgrad.sqrt(f16(-0.0)), -0.0),
        (mpgrad.sqrt(f16(-1.0)), math.nan),
        (e4m3(448.0) + e4m3(16.0), 448.0),              # 464 is a tie: 448 (even)
        (e4m3(448.0) + e4m3(32.0), math.nan),           # 480 > max: e4m3fn has no inf
        (e4m3(448.0) * e4m3(-1.125), math.nan),         # -504: overflow
    ]
    for t, want in cases:
        compare(t, np.array([want]), t.dtype, f"hand-checked {want!r}")


@pytest.mark.parametrize("op", list(BINARY))
def test_broadcasting_operands(op):
    """(n, 1) op (1, m): every pair of n x m, computed elementwise on the broadcast operands."""
    rng = np.random.default_rng(9)
    a = from_codes(rng.integers(0, 2 ** 16, (97, 1)), F16)
    b = from_codes(rng.integers(0, 2 ** 16, (1, 89)), F16)
    got = BINARY[op](mpgrad.tensor(a, dtype=F16), mpgrad.tensor(b, dtype=F16))
    av, bv = np.broadcast_arrays(a.astype(np.float64), b.astype(np.float64))
    compare(got, mpfr_binary(op, av, bv, F16), F16, f"float16 broadcast {op}", (av, bv))


# --- mixed formats and Python numbers --------------------------------------------------------

# (format a, format b, compute format): the input format holding both, else float32 (the
# contract's rule; float16 holds both float8 formats but is not an input, so float32)
MIXED = [(F16, BF16, F32), (E4M3, F16, F16), (E5M2, BF16, BF16), (E4M3, E5M2, F32),
         (F16, F32, F32)]


@pytest.mark.parametrize("op", list(BINARY))
@pytest.mark.parametrize("fa,fb,fc", MIXED, ids=lambda f: f.name)
def test_mixed_formats_compute_in_the_wider_format(fa, fb, fc, op):
    rng = np.random.default_rng(11)
    n = 20_000
    a = from_codes(rng.integers(0, 2 ** (1 + fa.exponent_bits + fa.fraction_bits), n), fa)
    b = from_codes(rng.integers(0, 2 ** (1 + fb.exponent_bits + fb.fraction_bits), n), fb)
    got = BINARY[op](mpgrad.tensor(a, dtype=fa), mpgrad.tensor(b, dtype=fb))
    av, bv = a.astype(np.float64), b.astype(np.float64)
    compare(got, mpfr_binary(op, av, bv, fc), fc, f"{fa.name} {op} {fb.name}", (av, bv))


def test_float16_plus_bfloat16_is_one_float32_rounding():
    """Sums whose exact value needs more than 24 bits: rounded once, to float32."""
    a = encode([2.0 ** 15, 1.0, -(2.0 ** -24), 65504.0], F16)
    b = encode([2.0 ** -30, 2.0 ** -24 * 3, 2.0 ** 100, 2.0 ** -133], BF16)
    got = mpgrad.tensor(a, dtype=F16) + mpgrad.tensor(b, dtype=BF16)
    want = mpfr_binary("add", a.astype(np.float64), b.astype(np.float64), F32)
    assert want[1] == 1.0 + 2.0 ** -22  # 1 + 3 * 2**-24 rounds up (above the midpoint)
    compare(got, want, F32, "float16 + bfloat16")


# matmul refuses operands of two formats outside autocast or a Policy, as torch.matmul
# refuses two dtypes (promoting would run an fp16 model fed float64 data in float64)
MIXED_MATMUL = [(F16, mpgrad.float64), (F16, F32), (BF16, F16), (E4M3, E5M2), (F32, BF16)]


@pytest.mark.parametrize("fa,fb", MIXED_MATMUL, ids=lambda f: f.name)
def test_matmul_refuses_mixed_formats_outside_a_policy(fa, fb):
    a, b = mpgrad.ones(2, 3, dtype=fa), mpgrad.ones(3, 2, dtype=fb)
    narrow = min(fa, fb, key=lambda f: f.precision).name
    for x, y in ((a, b), (b.T, a.T), (a[0], b), (a, b[:, 0]), (a.reshape(1, 2, 3), b)):
        with pytest.raises(RuntimeError, match=f"same format, but got: {x.dtype.name} != "
                                               f"{y.dtype.name}") as info:
            mpgrad.matmul(x, y)
        assert f"x.to({narrow!r})" in str(info.value)
        assert "mpgrad.autocast(" in str(info.value) and "mpgrad.use_policy(" in str(info.value)
    with mpgrad.autocast(narrow):  # autocast lowers matmul: both operands cast to its format
        assert (a @ b).dtype == mpgrad.as_format(narrow)
    with mpgrad.use_policy(mpgrad.Policy(fb, fb, fb)):
        assert (a @ b).dtype == fb
    with mpgrad.autocast("float16", lower={"mul"}):  # matmul not lowered: refused again
        with pytest.raises(RuntimeError, match="same format"):
            a @ b


def test_torch_refuses_the_same_mixed_matmuls():
    torch = pytest.importorskip("torch")
    dtypes = {F16: torch.float16, BF16: torch.bfloat16, F32: torch.float32,
              mpgrad.float64: torch.float64}
    for fa, fb in MIXED_MATMUL:
        if fa in dtypes and fb in dtypes:
            with pytest.raises(RuntimeError, match="same dtype"):
                torch.matmul(torch.ones(2, 3, dtype=dtypes[fa]), torch.ones(3, 2, dtype=dtypes[fb]))


def test_matmul_with_data_beside_a_tensor_is_not_mixed():
    """A NumPy float64 array or a list beside a Tensor takes the tensor's format (rounded
    once, as a Python number is), and a matmul's backward stays in that format."""
    a = mpgrad.tensor(encode([[1.0, 2.0 ** -11, 3.0]], F16), dtype=F16, requires_grad=True)
    data = np.array([[1 + 2.0 ** -12], [2.0], [1 / 3]])
    for other in (data, data.tolist()):
        y = mpgrad.matmul(a, other)
        rounded = [ref_round(Fraction(v), F16, NE) for v in data.ravel()]
        exact = sum(Fraction(u) * Fraction(v) for u, v in zip([1.0, 2.0 ** -11, 3.0], rounded))
        want = ref_round(Fraction(ref_round(exact, F32, NE)), F16, NE)
        assert y.dtype == F16 and y.item() == want
    y.backward()
    assert a.grad.dtype == F16 and a.grad.shape == (1, 3)


# Python numbers: rounded to the tensor's format first (weak typing), then the operation.
NUMBER_CASES = [
    ("mul", 0.1, False), ("mul", 0.1, True), ("add", 0.1, False), ("sub", 1, True),
    ("div", 3.0, False), ("div", 2.0, True), ("mul", 1 / 3, False), ("add", 1e-5, False),
    ("mul", 65520.0, False), ("mul", 1e6, True), ("div", 0, False), ("div", -0.0, False),
    ("mul", -0.0, True),
]


@pytest.mark.parametrize("op,number,reflected", NUMBER_CASES)
@pytest.mark.parametrize("fmt", [F16, BF16, E4M3, E5M2, F32], ids=lambda f: f.name)
def test_python_number_is_rounded_to_the_format_first(fmt, op, number, reflected):
    if fmt in FP8:
        x = all_codes(fmt)
    else:
        width = 1 + fmt.exponent_bits + fmt.fraction_bits
        x = from_codes(np.random.default_rng(5).integers(0, 2 ** width, 8000), fmt)
    t = mpgrad.tensor(x, dtype=fmt)
    got = BINARY[op](number, t) if reflected else BINARY[op](t, number)
    c = ref_round(float(number), fmt, NE)  # the constant in fmt (NaN/inf when it overflows)
    xv = x.astype(np.float64)
    want = mpfr_binary(op, c, xv, fmt) if reflected else mpfr_binary(op, xv, c, fmt)
    form = f"{number!r} {op} x" if reflected else f"x {op} {number!r}"
    compare(got, want, fmt, f"{fmt.name}: {form}", (xv,))


def test_python_number_double_rounding_is_visible():
    """x * 0.1 in bfloat16 differs from the correctly rounded x * 0.1 on many inputs, so the
    test above tells the documented sequence apart from a single rounding."""
    x = all_codes(BF16)
    xv = x.astype(np.float64)
    finite = np.isfinite(xv)
    sequence = mpfr_binary("mul", xv[finite][::16], ref_round(0.1, BF16, NE), BF16)
    once = np.array([ref_round(Fraction(v) * Fraction(0.1), BF16, NE) for v in xv[finite][::16]])
    differ = ~((sequence == once) | (np.isnan(sequence) & np.isnan(once)))
    assert differ.sum() > 100
    got = (mpgrad.tensor(x[finite][::16], dtype=BF16) * 0.1)
    compare(got, sequence, BF16, "bfloat16 x * 0.1")


# --- transcendental functions end to end ----------------------------------------------------

UNARY = {
    "exp": lambda t: mpgrad.exp(t), "log": lambda t: t.log(), "tanh": lambda t: mpgrad.tanh(t),
    "sigmoid": lambda t: mpgrad.sigmoid(t), "erf": lambda t: t.erf(),
    "pow2": lambda t: t ** 2, "pow0.5": lambda t: mpgrad.pow(t, 0.5), "pow-1": lambda t: t ** -1,
}


def _transcendental(fmt, name):
    x = all_codes(fmt)
    got = UNARY[name](mpgrad.tensor(x, dtype=fmt))
    compare(got, transcendental_table(name, fmt), fmt, f"{fmt.name} {name}",
            (x.astype(np.float64),))


@pytest.mark.parametrize("name", list(UNARY))
@pytest.mark.parametrize("fmt", FP8, ids=lambda f: f.name)
def test_transcendental_all_float8_values(fmt, name):
    _transcendental(fmt, name)


@pytest.mark.parametrize("name", list(UNARY))
def test_transcendental_all_float16_values(name):
    _transcendental(F16, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(UNARY))
def test_transcendental_all_bfloat16_values(name):
    _transcendental(BF16, name)


def test_transcendental_reference_hand_checked():
    """The MPFR side on values known in closed form (so the reference can fail too)."""
    xs = np.array([0.0, -0.0, 1.0, -math.inf, math.inf, math.nan, 4.0, -2.0])
    assert _same_arrays(mpfr_correctly_rounded("exp", xs[:5], F16),
                        [1.0, 1.0, 2.71875, 0.0, math.inf])
    assert _same_arrays(mpfr_correctly_rounded("sigmoid", xs[:5], F16),
                        [0.5, 0.5, 1497 * 2.0 ** -11, 0.0, 1.0])
    assert _same_arrays(mpfr_correctly_rounded("pow0.5", xs[[1, 3, 6, 7]], F16),
                        [0.0, math.inf, 2.0, math.nan])
    assert _same_arrays(mpfr_correctly_rounded("pow-1", xs[[0, 1, 3]], F16),
                        [math.inf, -math.inf, -0.0])
    assert _same_arrays(mpfr_correctly_rounded("log", xs[[0, 2, 7]], E4M3),
                        [math.nan, 0.0, math.nan])
    assert _same_arrays(mpfr_correctly_rounded("tanh", xs[[1]], E5M2), [-0.0])


def _same_arrays(u, v) -> bool:
    return all(_same(float(a), float(b)) for a, b in zip(u, v)) and len(u) == len(v)


# --- composite functions: the documented sequence, each step rounded -------------------------

def _c(value: float) -> float:
    """A constant rounded to float16 (nearest even)."""
    return ref_round(value, F16, NE)


def _unary(name: str, v: np.ndarray) -> np.ndarray:
    return lookup(transcendental_table(name, F16), v, F16)


def gelu_erf_sequence(x):
    t = mpfr_binary("mul", x, _c(0.7071067811865476), F16)
    e = _unary("erf", t)
    s = mpfr_binary("add", _c(1.0), e, F16)
    h = mpfr_binary("mul", x, _c(0.5), F16)
    return mpfr_binary("mul", h, s, F16)


def gelu_tanh_sequence(x):
    x3 = mpfr_binary("mul", mpfr_binary("mul", x, x, F16), x, F16)
    u = mpfr_binary("add", x, mpfr_binary("mul", _c(0.044715), x3, F16), F16)
    v = mpfr_binary("mul", _c(0.7978845608028654), u, F16)
    h = mpfr_binary("mul", x, _c(0.5), F16)
    return mpfr_binary("mul", h, mpfr_binary("add", _c(1.0), _unary("tanh", v), F16), F16)


def softplus_sequence(x, beta, threshold):
    bx = mpfr_binary("mul", x, _c(beta), F16)
    linear = bx > _c(threshold)
    safe = np.where(linear, 0.0, bx)
    s = mpfr_binary("add", _c(1.0), _unary("exp", safe), F16)
    soft = mpfr_binary("div", _unary("log", s), _c(beta), F16)
    return np.where(linear, x, soft)


def silu_sequence(x):
    return mpfr_binary("mul", x, _unary("sigmoid", x), F16)


COMPOSITES = {
    "gelu": (lambda t: mpgrad.gelu(t), gelu_erf_sequence),
    "gelu_tanh": (lambda t: mpgrad.gelu(t, approximate="tanh"), gelu_tanh_sequence),
    "softplus": (lambda t: mpgrad.softplus(t), lambda x: softplus_sequence(x, 1.0, 20.0)),
    "softplus_beta": (lambda t: mpgrad.softplus(t, beta=0.3, threshold=2.1),
                      lambda x: softplus_sequence(x, 0.3, 2.1)),
    "silu": (lambda t: mpgrad.silu(t), silu_sequence),
}


@pytest.mark.parametrize("name", list(COMPOSITES))
def test_composite_follows_documented_sequence(name):
    x = all_codes(F16)
    fn, sequence = COMPOSITES[name]
    xv = x.astype(np.float64)
    compare(fn(mpgrad.tensor(x, dtype=F16)), sequence(xv), F16, f"float16 {name}", (xv,))


def test_composite_sequence_is_not_one_rounding():
    """The step-by-step gelu differs from gelu correctly rounded once on many float16 inputs,
    so the composite test tells the documented sequence apart from a fused kernel."""
    xv = all_codes(F16).astype(np.float64)[0:31744:8]  # positive finite values
    stepwise = gelu_erf_sequence(xv)
    once = []
    with gmpy2.context(precision=200):
        for v in xv:
            x = mpfr(float(v), 53)
            once.append(ref_round(x / 2 * (1 + gmpy2.erf(x / gmpy2.sqrt(mpfr(2)))), F16, NE))
    assert np.sum(stepwise != np.array(once)) > 100


# --- sum and mean: the exact value rounded once ----------------------------------------------

def _exact_sum(values: np.ndarray):
    """(Fraction sum or a float special, whether the result is -0) of a 1-d float64 array."""
    if np.isnan(values).any() or (np.isposinf(values).any() and np.isneginf(values).any()):
        return math.nan
    if np.isinf(values).any():
        return math.inf if np.isposinf(values).any() else -math.inf
    total = sum((Fraction(float(v)) for v in values), Fraction(0))
    if total == 0:
        all_negative_zero = values.size > 0 and bool(np.all(np.signbit(values)))
        return -0.0 if all_negative_zero else 0.0
    return total


def expected_reduction(x: np.ndarray, axis, keepdims: bool, fmt, mean: bool) -> np.ndarray:
    """The default model: the exact sum (or mean) rounded to float32 (float64 for float64
    or formats float32 does not hold), then to fmt."""
    acc = F32 if F32.contains(fmt) else mpgrad.float64
    xv = x.astype(np.float64)
    axes = tuple(range(xv.ndim)) if axis is None else (
        (axis,) if isinstance(axis, int) else tuple(axis))
    axes = tuple(a % xv.ndim for a in axes)
    moved = np.moveaxis(xv, axes, tuple(range(xv.ndim - len(axes), xv.ndim)))
    kept_shape = moved.shape[:xv.ndim - len(axes)]
    rows = moved.reshape(int(np.prod(kept_shape, dtype=np.int64)), -1)
    n = rows.shape[1]
    out = []
    for row in rows:
        s = _exact_sum(row)
        if mean and isinstance(s, Fraction):
            s = s / n
        elif mean:
            s = s / n  # inf / n, nan, +-0 / n keep their value and sign
        out.append(ref_round(ref_round(s, acc, NE), fmt, NE))
    return np.array(out).reshape(np.sum(np.zeros(xv.shape), axis=axes, keepdims=keepdims).shape)


def _finite_random(fmt, shape, rng, spread: float) -> np.ndarray:
    """Random fmt values: normals of varied scales, rounded by ml_dtypes (any value will do)."""
    scale = np.exp2(rng.uniform(-spread, spread, shape))
    return (rng.standard_normal(shape) * scale).astype(fmt.storage)


def adversarial_rows(fmt) -> list[np.ndarray]:
    """Sums that naive or pairwise accumulation in fmt would get wrong."""
    p, top = fmt.precision, float(fmt.max)
    half = 2.0 ** -p  # half an ulp of 1
    rows = [
        [1.0, half],                              # a tie: stays 1
        [1.0, half, 2.0 ** -24],                  # just above the tie: 1 + ulp
        [2.0 ** -24, half, 1.0],                  # the same, another order
        [1.0] + [half] * 1000,                    # naive accumulation would stay at 1
        [top, top, -top],                         # intermediate overflow, exact top
        [top, 2.0 ** (math.frexp(top)[1] - 1 - p)],  # top + half its ulp: a tie, overflows
        [top, -top, 2.0 ** -14, -(2.0 ** -14)],   # exact zero: +0
        [-0.0, -0.0, -0.0],                       # -0
        [-0.0, 0.0],                              # +0
        [1.0, 1.0 + 4 * half],                    # sum and mean both ties
        [1e4, 1e-3, -1e4], [-1e4, 3.0, 1e4, -3.0, 2.0 ** -20],
        [math.inf, 1.0, -5.0], [math.inf, -math.inf], [math.nan, 1.0],
        [2.0 ** -24] * 999,                       # many subnormals (float16's smallest)
    ]
    return [encode(ref_round_all(r, fmt), fmt) for r in rows]


def ref_round_all(values, fmt) -> list:
    return [ref_round(float(v), fmt, NE) for v in values]


@pytest.mark.parametrize("mean", [False, True], ids=["sum", "mean"])
@pytest.mark.parametrize("fmt", [F16, BF16], ids=lambda f: f.name)
def test_reduction_adversarial(fmt, mean):
    op = mpgrad.mean if mean else mpgrad.sum
    for row in adversarial_rows(fmt):
        for order in (row, row[::-1]):
            got = op(mpgrad.tensor(order, dtype=fmt))
            want = expected_reduction(order, None, False, fmt, mean)
            compare(got, want, fmt, f"{fmt.name} {'mean' if mean else 'sum'} of "
                    f"{order.astype(np.float64)[:6]}...")


def test_reduction_hand_checked():
    t = mpgrad.tensor(encode([65504.0, 65504.0, -65504.0], F16), dtype=F16)
    assert mpgrad.sum(t).item() == 65504.0
    t = mpgrad.tensor(encode([65504.0, 65504.0], F16), dtype=F16)
    assert mpgrad.mean(t).item() == 65504.0 and math.isinf(mpgrad.sum(t).item())
    t = mpgrad.tensor(encode([1.0] + [2.0 ** -11] * 1000, F16), dtype=F16)
    assert mpgrad.sum(t).item() == 1.48828125  # 1 + 1000 * 2**-11 = 1.48828125 exactly


REDUCTION_AXES = [(None, False), (0, False), (1, True), (2, False), (-1, True),
                  ((0, 2), False), ((0, 1, 2), True)]


@pytest.mark.parametrize("mean", [False, True], ids=["sum", "mean"])
@pytest.mark.parametrize("fmt", [F16, BF16], ids=lambda f: f.name)
def test_reduction_random(fmt, mean):
    rng = np.random.default_rng(3)
    op = mpgrad.mean if mean else mpgrad.sum
    arrays = {
        "wide": _finite_random(fmt, (5, 31, 6), rng, 12.0),
        "narrow": _finite_random(fmt, (4, 17, 9), rng, 2.0),
    }
    # cancellation: values and their negatives shuffled along axis 1, plus a few tiny ones
    base = _finite_random(fmt, (3, 20, 4), rng, 8.0)
    tiny = (_finite_random(fmt, (3, 2, 4), rng, 3.0).astype(np.float64) / 4096).astype(
        fmt.storage)
    canc = np.concatenate([base, (-base.astype(np.float64)).astype(fmt.storage), tiny], axis=1)
    arrays["cancellation"] = np.take_along_axis(
        canc, rng.permuted(np.tile(np.arange(42)[None, :, None], (3, 1, 4)), axis=1), axis=1)
    # all bit patterns, infinities and NaN included
    w = 1 + fmt.exponent_bits + fmt.fraction_bits
    arrays["bits"] = from_codes(rng.integers(0, 2 ** w, (3, 8, 5)), fmt)
    for label, x in arrays.items():
        t = mpgrad.tensor(x, dtype=fmt)
        for axis, keepdims in REDUCTION_AXES:
            got = op(t, axis=axis, keepdims=keepdims)
            want = expected_reduction(x, axis, keepdims, fmt, mean)
            compare(got, want, fmt, f"{fmt.name} {op.__name__} {label} axis={axis} "
                    f"keepdims={keepdims}")


def test_reduction_long_and_empty():
    """A long bfloat16 mean (n = 50000, not a power of two) and sums over an empty axis."""
    rng = np.random.default_rng(12)
    x = _finite_random(BF16, (2, 50_000), rng, 6.0)
    t = mpgrad.tensor(x, dtype=BF16)
    compare(mpgrad.mean(t, axis=1), expected_reduction(x, 1, False, BF16, True), BF16,
            "bfloat16 mean of 50000")
    compare(mpgrad.sum(t, axis=1), expected_reduction(x, 1, False, BF16, False), BF16,
            "bfloat16 sum of 50000")
    empty = mpgrad.tensor(np.zeros((3, 0), dtype=np.float16), dtype=F16)
    compare(mpgrad.sum(empty, axis=1), np.zeros(3), F16, "float16 sum over an empty axis")
    compare(mpgrad.mean(empty, axis=1), np.full(3, np.nan), F16,  # as torch.mean: no terms
            "float16 mean over an empty axis")


def test_mean_rounds_once_not_twice():
    """Arrays whose rounded sum divided by n (rounded again) differs from the mean rounded once."""
    rng = np.random.default_rng(8)
    found = 0
    for _ in range(300):
        x = _finite_random(F16, (3,), rng, 1.0)
        total = _exact_sum(x.astype(np.float64))
        once = ref_round(total / 3, F16, NE)
        twice = ref_round(Fraction(ref_round(total, F16, NE)) / 3, F16, NE)
        got = mpgrad.mean(mpgrad.tensor(x, dtype=F16))
        compare(got, np.array(once), F16, f"float16 mean of {x.astype(np.float64)}")
        found += once != twice
    assert found > 0  # the test above can tell the two apart


# --- policies and autocast ------------------------------------------------------------------

def _float32_operands(n: int, seed: int):
    rng = np.random.default_rng(seed)
    # float32 values of every magnitude bfloat16 reaches (and beyond its max and below its
    # smallest subnormal), random low bits so that rounding to bfloat16 matters
    with np.errstate(over="ignore"):  # beyond float32's max: inf, wanted
        x = (rng.standard_normal(n) * np.exp2(rng.uniform(-140, 128, n))).astype(np.float32)
    y = (rng.standard_normal(n) * np.exp2(rng.uniform(-20, 20, n))).astype(np.float32)
    x[:4], y[:4] = [np.float32(3.3895314e38), 0, -np.inf, np.nan], [2, -0.0, 1, 1]
    return x, y


def test_policy_rounds_float32_inputs_to_compute_format_first():
    x, y = _float32_operands(20_000, seed=2)
    xv, yv = x.astype(np.float64), y.astype(np.float64)
    xr = np.array(ref_round_all(xv, BF16))
    yr = np.array(ref_round_all(yv, BF16))
    want = mpfr_binary("mul", xr, yr, BF16)  # round inputs to bf16, then one rounding in bf16
    with mpgrad.use_policy("p=f32,c=bf16,o=f32"):
        got = mpgrad.tensor(x, dtype=F32) * mpgrad.tensor(y, dtype=F32)
        got_number = mpgrad.tensor(x, dtype=F32) * 0.1
        got_div = mpgrad.tensor(x, dtype=F32) / mpgrad.tensor(y, dtype=F32)
        got_sqrt = mpgrad.sqrt(mpgrad.tensor(y, dtype=F32))
        got_sum = mpgrad.sum(mpgrad.tensor(x[4:].reshape(-1, 4), dtype=F32), axis=1)
    compare(got, want, BF16, "policy c=bf16: float32 * float32", (xv, yv))
    compare(got_number, mpfr_binary("mul", xr, ref_round(0.1, BF16, NE), BF16), BF16,
            "policy c=bf16: float32 * 0.1", (xv,))
    compare(got_div, mpfr_binary("div", xr, yr, BF16), BF16, "policy c=bf16: float32 / float32",
            (xv, yv))
    compare(got_sqrt, mpfr_sqrt(yr, BF16), BF16, "policy c=bf16: sqrt(float32)", (yv,))
    compare(got_sum, expected_reduction(encode(xr[4:], BF16).reshape(-1, 4), 1, False, BF16,
                                        False), BF16, "policy c=bf16: sum of float32")
    # the double rounding is real: one rounding of the exact float32 product differs often
    once = mpfr_binary("mul", xv[:4000], yv[:4000], BF16)
    assert np.sum(~((once == want[:4000]) | np.isnan(once) & np.isnan(want[:4000]))) > 50


def test_autocast_float16():
    x, y = _float32_operands(8000, seed=4)
    x16 = from_codes(np.random.default_rng(6).integers(0, 2 ** 16, 8000), F16)
    xv, yv, x16v = x.astype(np.float64), y.astype(np.float64), x16.astype(np.float64)
    with mpgrad.autocast("float16"):
        # mul is on neither of autocast's lists: it promotes, float32 stays float32 (as torch)
        plain = mpgrad.tensor(x, dtype=F32) * mpgrad.tensor(y, dtype=F32)
        mixed = mpgrad.tensor(x16, dtype=F16) * mpgrad.tensor(y, dtype=F32)
        # exp and sum are on the float32 list: float16 inputs compute in float32
        e = mpgrad.exp(mpgrad.tensor(x16, dtype=F16))
        s = mpgrad.sum(mpgrad.tensor(x16.reshape(80, 100), dtype=F16), axis=1)
    with mpgrad.autocast("float16", lower={"mul"}):
        lowered = mpgrad.tensor(x, dtype=F32) * mpgrad.tensor(y, dtype=F32)
    compare(plain, mpfr_binary("mul", xv, yv, F32), F32, "autocast: float32 * float32")
    compare(mixed, mpfr_binary("mul", x16v, yv, F32), F32, "autocast: float16 * float32")
    compare(e, mpfr_correctly_rounded("exp", x16v, F32), F32, "autocast: exp(float16)", (x16v,))
    compare(s, expected_reduction(x16.reshape(80, 100), 1, False, F32, False), F32,
            "autocast: sum(float16)")
    xr, yr = np.array(ref_round_all(xv, F16)), np.array(ref_round_all(yv, F16))
    compare(lowered, mpfr_binary("mul", xr, yr, F16), F16, "autocast(lower={mul}): f32 * f32",
            (xv, yv))


def test_float64_division_into_the_subnormal_range():
    """float64 quotients below 2**-1019 are rounded once (IEEE's own quotient), not twice
    through exact_div's round-to-odd pair (found by tests/test_guarantees.py: -1e-300 / 1e30
    gave -5e-324 instead of -0)."""
    rng = np.random.default_rng(11)
    a = rng.standard_normal(4000) * 2.0 ** rng.integers(-1074, -900, 4000)
    a[a == 0] = 5e-324  # (a Fraction has no -0: zero dividends are tested elsewhere)
    b = rng.standard_normal(4000) * 2.0 ** rng.integers(0, 160, 4000)
    a[:3], b[:3] = [-1e-300, 5e-324, 3 * 5e-324], [1e30, 2.0, 2.0]  # -0, a tie to even, 2**-1073
    got = mpgrad.div(mpgrad.tensor(a), mpgrad.tensor(b)).to_float64()
    want = [ref_round(Fraction(float(x)) / Fraction(float(y)), mpgrad.float64, NE)
            for x, y in zip(a, b)]
    assert np.array_equal(got, want) and np.array_equal(np.signbit(got), np.signbit(want))


def test_float64_products_of_huge_values():
    """float64 products with an operand above 2**996, where Dekker's split overflows, are
    IEEE's products (found by tests/test_guarantees.py: -2e300 * 0 gave NaN, not -0)."""
    a = np.array([2e300, -2e300, 1e308, -1.7e308, 7e299, 1e300])
    b = np.array([0.5, 0.0, 1e-10, -1e-300, 3.0, 1e10])
    got = mpgrad.mul(mpgrad.tensor(a), mpgrad.tensor(b)).to_float64()
    with np.errstate(over="ignore"):  # 1e300 * 1e10 overflows to inf, as IEEE's product
        want = [ref_round(Fraction(float(x)) * Fraction(float(y)), mpgrad.float64, NE)
                if x * y != 0 else x * y for x, y in zip(a, b)]
    assert np.array_equal(got, want) and np.array_equal(np.signbit(got), np.signbit(want))
