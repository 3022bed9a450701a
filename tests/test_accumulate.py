"""Accumulation models against scalar references: Fractions, one ref_round per documented step.

The references below never call mpgrad's arithmetic; each rounding is tests/reference.py's
ref_round (MPFR + exact rationals). Values are compared exactly (NaN == NaN); the sign
of a zero result is not compared.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest

import mpgrad
from mpgrad import accumulate as acc
from mpgrad.accumulate import BlockFMA, Chunked, Exact, Pairwise, Sequential, hardware
from reference import ref_round

F32, F16, BF16 = (mpgrad.as_format(n) for n in ("float32", "float16", "bfloat16"))
E4M3, E5M2 = mpgrad.as_format("float8_e4m3fn"), mpgrad.as_format("float8_e5m2")


# --- scalar references ----------------------------------------------------------------------

def _rnd(v, fmt, mode):
    """One rounding: a Fraction exactly, or a special float (inf/NaN) as the format takes it."""
    return ref_round(v, fmt, mode)


def _plus(s: float, t, fmt, mode) -> float:
    """round(s + t) for a float s in fmt and an exact t (Fraction or special float)."""
    if math.isfinite(s) and not (isinstance(t, float) and not math.isfinite(t)):
        return _rnd(Fraction(s) + Fraction(t), fmt, mode)
    return _rnd(float(s) + float(t), fmt, mode)


def _floor_log2(q: Fraction) -> int:
    q = abs(q)
    e = q.numerator.bit_length() - q.denominator.bit_length()
    return e - 1 if Fraction(2) ** e > q else e


def _block_ref(terms, m: BlockFMA, exps=None) -> float:
    """One block FMA step on exact terms (Fractions or special floats); exps: each term's
    exponent for align="exponents" (None: floor(log2|t|), also for an accumulator)."""
    specials = [t for t in terms if isinstance(t, float) and not math.isfinite(t)]
    if specials:
        return _rnd(float(sum(specials)), m.acc, m.mode)
    exps = [None] * len(terms) if exps is None or m.align == "value" else exps
    nz = [(t, e) for t, e in zip(terms, exps) if t != 0]
    if not nz:
        return 0.0
    top = max(_floor_log2(t) if e is None else e for t, e in nz)
    nz = [t for t, _ in nz]
    unit = Fraction(2) ** (top - m.fraction_bits)
    total = sum(((abs(t) // unit) * unit * (1 if t > 0 else -1) for t in nz), Fraction(0))
    return _rnd(total, m.acc, m.mode)


def ref_reduce(m, terms: list, exps: list | None = None) -> float:
    """The model applied to a list of exact terms (Fractions, or inf/NaN floats), as a float;
    exps: the products' exponents (the sums of their inputs' exponents), if known."""
    if isinstance(m, Exact):
        if any(isinstance(t, float) for t in terms):
            return _rnd(float(sum(float(t) for t in terms)), m.acc, m.mode)
        return _rnd(sum(terms, Fraction(0)), m.acc, m.mode)
    if isinstance(m, Sequential):
        s = 0.0
        for t in (terms if m.order == "forward" else terms[::-1]):
            s = _plus(s, t if m.fma else _rnd(t, m.acc, m.mode), m.acc, m.mode)
        return s
    if isinstance(m, Pairwise):
        def r(t):  # a term rounded to acc, as an exact Fraction where finite
            v = _rnd(t, m.acc, m.mode)
            return Fraction(v) if math.isfinite(v) else v

        def add(x, y):
            return _plus(x, Fraction(y) if math.isfinite(y) else y, m.acc, m.mode)

        def part(ts):
            if m.rule == "numpy" and len(ts) < 8:  # one at a time onto +0
                s = 0.0
                for t in ts:
                    s = add(s, float(r(t)))
                return s
            if m.rule == "numpy" and len(ts) <= m.block:
                lanes = [float(r(t)) for t in ts[:8]]
                whole = len(ts) - len(ts) % 8
                for i in range(8, whole):
                    lanes[i % 8] = add(lanes[i % 8], float(r(ts[i])))
                p = [add(lanes[j], lanes[j + 1]) for j in (0, 2, 4, 6)]
                s = add(add(p[0], p[1]), add(p[2], p[3]))
                for t in ts[whole:]:
                    s = add(s, float(r(t)))
                return s
            if m.rule == "halving" and len(ts) <= m.block:
                s = float(r(ts[0]))
                for t in ts[1:]:
                    s = add(s, float(r(t)))
                return s
            h = len(ts) // 2
            h -= h % 8 if m.rule == "numpy" else 0
            return add(part(ts[:h]), part(ts[h:]))
        if not terms:
            return 0.0
        return add(0.0, part(terms)) if m.rule == "numpy" else part(terms)
    if isinstance(m, BlockFMA):
        width = m.k or m.n
        c = 0.0
        for i0 in range(0, len(terms), width):
            idx = list(range(i0, min(i0 + width, len(terms))))
            if m.order == "pairs":  # pair p of the instruction goes to block p mod (k / n)
                groups = [[i for i in idx if ((i - i0) // 2) % (width // m.n) == g]
                          for g in range(width // m.n)]
            else:
                groups = [idx[j:j + m.n] for j in range(0, len(idx), m.n)]
            acc = c if m.accumulator == "first" else 0.0
            for g in (g for g in groups if g):
                blk = [terms[i] for i in g]
                e = None if exps is None else [exps[i] for i in g]
                if m.include_accumulator:
                    acc = _block_ref([_exact(acc)] + blk, m, None if e is None else [None] + e)
                else:
                    c = _plus(c, _exact(_block_ref(blk, m, e)), m.acc, m.mode)
            if m.include_accumulator:
                c = acc if m.accumulator == "first" else _plus(acc, _exact(c), m.acc,
                                                               m.late_mode)
        return c
    if isinstance(m, Chunked):
        parts = [ref_reduce(m.inner, terms[k:k + m.chunk],
                            None if exps is None else exps[k:k + m.chunk])
                 for k in range(0, len(terms), m.chunk)]
        return ref_reduce(m.outer, [_exact(p) for p in parts])
    raise TypeError(m)


def _exact(x: float):
    return Fraction(x) if math.isfinite(x) else float(x)


def ref_matmul(m, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty((a.shape[0], b.shape[1]))
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            terms, exps = [], []
            for k in range(a.shape[1]):
                x, y = float(a[i, k]), float(b[k, j])
                terms.append(Fraction(x) * Fraction(y) if math.isfinite(x) and math.isfinite(y)
                             else x * y)
                # frexp: x = f * 2**e with 0.5 <= |f| < 1, so floor(log2|x|) = e - 1
                floor = getattr(getattr(m, "inner", m), "input_emin", None)
                ex, ey = math.frexp(x)[1] - 1, math.frexp(y)[1] - 1
                if floor is not None:  # the unit's exponent floor for its inputs
                    ex, ey = max(ex, floor), max(ey, floor)
                exps.append(ex + ey)
            out[i, j] = ref_reduce(m, terms, exps)
    return out


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    ok = (got == want) | (np.isnan(got) & np.isnan(want))
    bad = np.argwhere(~ok)[:5].tolist()
    assert ok.all(), f"mismatch at {bad}: {got[~ok][:5]} vs {want[~ok][:5]}"


def _values(rng, shape, fmt, spread=6):
    """Random finite values of fmt, magnitudes over about 2**-spread .. 2**spread."""
    x = rng.standard_normal(shape) * 2.0 ** rng.integers(-spread, spread + 1, shape)
    v = mpgrad.to_float64(mpgrad.round_to(x, fmt))
    return np.where(np.isfinite(v), v, 1.0)


MODELS = [
    Exact(), Exact("float16", "toward_zero"), Sequential(), Sequential("float16", fma=False),
    Sequential(order="reverse"), Sequential("float16", order="reverse"),
    Sequential("bfloat16", mode="up"), Pairwise(), Pairwise("float16", block=3),
    Pairwise("float16", block=16, rule="numpy"), acc.software.NUMPY,
    hardware.H100_FP16, hardware.V100_FP16, hardware.H100_FP8, hardware.B200_FP8,
    BlockFMA(4, 5, include_accumulator=False, mode="nearest_even", acc="float16"),
    BlockFMA(3, 8, mode="down", acc="bfloat16"),
    hardware.H100_FP8_PROMOTED, Chunked(5, Pairwise("float16", block=2), Exact("float16")),
    Chunked(16, BlockFMA(8, 13), Sequential("float32", fma=False)),
]
IDS = [repr(m)[:60] for m in MODELS]


@pytest.mark.parametrize("model", MODELS, ids=IDS)
@pytest.mark.parametrize("fmt", [F16, BF16, E4M3, E5M2], ids=lambda f: f.name)
def test_random_matmul(model, fmt):
    rng = np.random.default_rng(abs(hash((repr(model), fmt.name))) % 2 ** 32)
    for K in (1, 7, 40):
        M, N = rng.integers(1, 4, 2)
        a, b = _values(rng, (M, K), fmt), _values(rng, (K, N), fmt)
        assert_same(acc.matmul_model(a, b, model), ref_matmul(model, a, b))


def _check_sum(model, x):
    x = np.asarray(x, dtype=np.float64)
    want = ref_reduce(model, [_exact(float(t)) for t in x])
    assert_same(acc.reduce_sum(x[:, None], 0, model), np.array([want]))
    return want


ADVERSARIAL = {
    "cancellation": [2.0 ** 15, 1.0, 2.0 ** -10, -(2.0 ** 15), 3.0, -1.0, 2.0 ** -24] * 5,
    "range": [65504.0, 2.0 ** -24, -65504.0, 2.0 ** -14, 1.0, -(2.0 ** -24), 2.0 ** 10] * 6,
    "subnormal": [2.0 ** -30, 2.0 ** -38, -(2.0 ** -31), 3 * 2.0 ** -40, 2.0 ** -26] * 8,
    "ties": [2048.0, 1.0, 1.0, 3.0, 2.0 ** 24, 1.0, 1.0, 2.0 ** -1, 2.0 ** 11 + 2, 1.0] * 4,
    "overflow": [60000.0, 60000.0, -60000.0, -60000.0, 1.0, 2.0 ** 127, 2.0 ** 127,
                 -(2.0 ** 127)] * 3,
}


@pytest.mark.parametrize("model", MODELS + [Sequential("float8_e4m3fn"), Exact("float8_e5m2")],
                         ids=IDS + ["seq-e4m3", "exact-e5m2"])
@pytest.mark.parametrize("case", list(ADVERSARIAL))
def test_adversarial_sums(model, case):
    _check_sum(model, ADVERSARIAL[case])


def test_subnormal_products_matmul():
    a = np.array([[2.0 ** -24, 2.0 ** -14, -(2.0 ** -20), 2.0 ** -24]])  # float16 subnormals
    b = np.array([[2.0 ** -24], [2.0 ** -10], [2.0 ** -24], [1.0]])
    for m in (Sequential("float16"), Sequential(), Exact("float16"), hardware.H100_FP16,
              BlockFMA(2, 10, acc="float16", mode="nearest_even")):
        assert_same(acc.matmul_model(a, b, m), ref_matmul(m, a, b))


def test_swamping_float16_sequential():
    # From 2048 on, float16's ulp is 2: 2048 + 1 is a tie between 2048 and 2050, and
    # round-to-nearest-even keeps 2048 (even significand), so the sum never moves again.
    x = np.ones(4096)
    assert acc.reduce_sum(x, 0, Sequential("float16", fma=False)) == 2048.0
    assert acc.reduce_sum(x, 0, Sequential("float16")) == 2048.0
    assert acc.reduce_sum(x, 0, Exact("float16")) == 4096.0
    assert acc.reduce_sum(x, 0, Pairwise("float16")) == 4096.0  # partial sums stay exact


def test_overflow_of_accumulator():
    x = np.array([60000.0, 60000.0, -60000.0])  # exact sum 60000 fits float16
    assert acc.reduce_sum(x, 0, Exact("float16")) == 60000.0
    assert acc.reduce_sum(x, 0, Sequential("float16")) == np.inf  # stays inf
    assert _check_sum(BlockFMA(4, 10, acc="float16"), x) == 60000.0  # one block, all terms on the grid: exact
    assert _check_sum(BlockFMA(1, 10, acc="float16"), x) == 5504.0  # saturates at 65504
    assert math.isnan(_check_sum(Sequential("float8_e4m3fn"), [448.0, 448.0, -448.0]))


def test_specials_propagate():
    a = np.array([[np.inf, 1.0, np.nan], [np.inf, 0.0, 1.0]])
    b = np.array([[1.0], [-np.inf], [1.0]])
    for m in MODELS:
        assert_same(acc.matmul_model(a, b, m), ref_matmul(m, a, b))


def test_promotion_differs_on_long_k():
    # one product 1 then 4095 products 2**-14: aligned to 2**0 with F = 13 the small ones
    # truncate to 0 in an unpromoted FP8 chain; restarting every 128 keeps them.
    a = np.array([[1.0] + [2.0 ** -7] * 4095])
    b = a.T.copy()
    plain = acc.matmul_model(a, b, hardware.H100_FP8)
    promoted = acc.matmul_model(a, b, hardware.H100_FP8_PROMOTED)
    assert plain[0, 0] == 1.0
    assert promoted[0, 0] != plain[0, 0]
    assert promoted[0, 0] == ref_reduce(hardware.H100_FP8_PROMOTED,
                                        [Fraction(1)] + [Fraction(1, 2 ** 14)] * 4095)
    assert abs(promoted[0, 0] - (1 + 4095 * 2.0 ** -14)) < 2.0 ** -6


def test_presets():
    table = {"V100": ((4, 23), None, None), "A100": ((8, 24), 4, None),
             "ADA": ((8, 24), 4, (16, 13)), "H100": ((16, 25), 8, (32, 13)),
             "H200": ((16, 25), 8, (32, 13)), "B200": ((16, 25), 8, (16, 25))}
    for gpu, (half, tf32, fp8) in table.items():
        m = getattr(hardware, f"{gpu}_FP16")
        assert (m.n, m.fraction_bits, m.acc, m.mode) == (*half, F32, "toward_zero")
        assert m.include_accumulator
        if tf32:
            assert getattr(hardware, f"{gpu}_TF32").n == tf32
        if fp8:
            m = getattr(hardware, f"{gpu}_FP8")
            assert (m.n, m.fraction_bits) == fp8
            assert (m.k, m.order, m.accumulator) == ((32, "pairs", "last") if gpu == "B200"
                                                     else (None, "consecutive", "first"))
            p = getattr(hardware, f"{gpu}_FP8_PROMOTED")
            assert p == Chunked(128, m, Sequential(F32, fma=False))
    assert acc.HARDWARE["H100_FP8"] is hardware.H100_FP8


def test_frozen_and_hashable():
    for m in MODELS:
        hash(m)
        assert m == dataclasses.replace(m)
        with pytest.raises(dataclasses.FrozenInstanceError):
            m.mode = "up" if not isinstance(m, Chunked) else m.chunk
    assert Sequential("fp16") == Sequential(F16) and Sequential("fp16").acc is F16
    assert len({Sequential(), Sequential(), Exact()}) == 2


@pytest.mark.parametrize("make", [
    lambda: BlockFMA(n=0), lambda: BlockFMA(fraction_bits=60), lambda: BlockFMA(32, 47),
    lambda: BlockFMA(mode="stochastic"), lambda: Sequential(mode="nearest"),
    lambda: Sequential(fma=1), lambda: Sequential(order="backward"), lambda: Pairwise(block=0),
    lambda: Pairwise(rule="numpy", block=8), lambda: Pairwise(rule="fast"),
    lambda: Chunked(chunk=0),
    lambda: Chunked(inner=3), lambda: Exact("nope"), lambda: Chunked(4, outer="float32"),
])
def test_bad_parameters(make):
    with pytest.raises(ValueError):
        make()


def test_bad_inputs():
    with pytest.raises(ValueError, match="align|K"):
        acc.matmul_model(np.ones((2, 3)), np.ones((2, 2)), Exact())
    with pytest.raises(ValueError, match="significant bits"):
        acc.matmul_model(np.array([[1 + 2.0 ** -40]]), np.ones((1, 1)), Sequential())
    with pytest.raises(ValueError, match="2\\*\\*500"):
        acc.reduce_sum(np.array([2.0 ** 600]), 0, Sequential())
    with pytest.raises(ValueError, match="model"):
        acc.reduce_sum(np.ones(3), 0, "sequential")


def test_dot_and_empty():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0])
    assert acc.dot(a, b, Sequential()) == 32.0
    assert acc.matmul_model(np.ones((2, 0)), np.ones((0, 3)), hardware.H100_FP16).shape == (2, 3)


@pytest.mark.parametrize("model", [Pairwise("float16"), Pairwise(block=1), Exact()],
                         ids=["pairwise16", "pairwise_b1", "exact"])
def test_sum_of_negative_zeros_is_negative_zero(model):
    """IEEE: -0 + -0 = -0 in every rounding step (Sequential starts at +0, so gives +0)."""
    out = acc.reduce_sum(np.array([[-0.0, -0.0, -0.0]]), -1, model)
    assert np.signbit(out).all() and (out == 0).all()
    assert not np.signbit(acc.reduce_sum(np.array([[-0.0, -0.0]]), -1, Sequential())).any()


NP_SIZES = [1, 2, 7, 8, 9, 15, 16, 17, 100, 127, 128, 129, 136, 255, 256, 300, 1000, 4097,
            100003]


NUMPY_2 = np.lib.NumpyVersion(np.__version__) >= "2.0.0"


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64],
                         ids=lambda d: d.__name__)
def test_numpy_model_reproduces_np_sum(dtype):
    """The NumPy presets give np.sum's bits for contiguous arrays of every length here
    (NumPy 1 chunks by its 8192-element buffer; its float16 chunking is not modelled)."""
    rng = np.random.default_rng(11)
    sw = acc.software
    model = {(True, False): sw.NUMPY, (True, True): sw.NUMPY_FLOAT64,
             (False, False): sw.NUMPY_1, (False, True): sw.NUMPY_1_FLOAT64}[
                 NUMPY_2, dtype == np.float64]
    sizes = NP_SIZES if NUMPY_2 or dtype != np.float16 else [n for n in NP_SIZES if n <= 8192]
    for n in sizes:
        x = (rng.standard_normal(n) * 2.0 ** rng.integers(-8, 9, n)).astype(dtype)
        got = acc.reduce_sum(x, 0, model).astype(dtype)
        assert got.tobytes() == np.sum(x).tobytes(), n


def test_numpy_model_differs_from_halving():
    """The two pairwise rules are different trees: on 100003 float32 terms they disagree."""
    x = (np.random.default_rng(3).standard_normal(100003) * 1e3).astype(np.float32)
    halving = acc.reduce_sum(x, 0, Pairwise(block=128)).astype(np.float32)
    numpy = acc.software.NUMPY if NUMPY_2 else acc.software.NUMPY_1
    assert halving != np.sum(x) and acc.reduce_sum(x, 0, numpy) == np.sum(x)


# --- empty inputs ---------------------------------------------------------------------------

EMPTY_MODELS = {**hardware.HARDWARE, **{k: getattr(acc.software, k) for k in acc.software.__all__},
                **{repr(m)[:60]: m for m in MODELS}}


@pytest.mark.parametrize("name", EMPTY_MODELS)
def test_empty_matmuls_and_sums_under_every_model(name):
    """np.matmul's and np.sum's shapes and values: an empty sum (K = 0) is +0, a product or
    sum with no outputs (M, N, a batch or a kept axis of length 0) is an empty array."""
    model = EMPTY_MODELS[name]
    for sa, sb in [((2, 0), (0, 3)), ((0, 4), (4, 3)), ((2, 4), (4, 0)), ((0, 0), (0, 0)),
                   ((0, 2, 4), (4, 3)), ((3, 2, 0), (1, 0, 5))]:
        a, b = np.full(sa, 0.5), np.full(sb, 1.5)
        got, want = acc.matmul_model(a, b, model), np.matmul(a, b)
        assert got.shape == want.shape and np.array_equal(got, want), (sa, sb)
        assert not np.signbit(got).any(), (sa, sb)
    assert acc.dot(np.ones(0), np.ones(0), model) == 0.0
    for shape, axis in [((0, 3), 0), ((0, 3), 1), ((3, 0), 1), ((3, 0), 0), ((0,), 0)]:
        x = np.full(shape, 0.5)
        got, want = acc.reduce_sum(x, axis, model), np.sum(x, axis=axis)
        assert got.shape == want.shape and np.array_equal(got, want), (shape, axis)
        assert not np.signbit(got).any(), (shape, axis)
