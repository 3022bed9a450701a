"""The error-free BLAS matmul (Ozaki slicing) against exact rationals rounded by MPFR."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

import mpgrad
from mpgrad.numerics.exact_matmul import exact_matmul, slice_bits
from reference import ref_round

MODES = ("nearest_even", "toward_zero", "up", "down", "nearest_away", "odd")
TARGETS = [mpgrad.as_format(n) for n in ("float64", "float32", "float16", "bfloat16",
                                         "float8_e4m3fn")]


def exact_products(a: np.ndarray, b: np.ndarray) -> list:
    """Row-major list of the exact dot products as Fractions."""
    return [[sum((Fraction(float(a[i, k])) * Fraction(float(b[k, j]))
                  for k in range(a.shape[1])), Fraction(0))
             for j in range(b.shape[1])] for i in range(a.shape[0])]


def check(a: np.ndarray, b: np.ndarray, formats=TARGETS, modes=MODES) -> None:
    pair = exact_matmul(a, b)
    want = exact_products(a, b)
    for fmt in formats:
        for mode in modes:
            got = mpgrad.to_float64(mpgrad.round_to(pair, fmt, mode))
            ref = [[ref_round(v, fmt, mode) for v in row] for row in want]
            assert np.array_equal(got, np.array(ref), equal_nan=True), (fmt.name, mode)


def values(rng, shape, fmt, spread):
    x = rng.standard_normal(shape) * 2.0 ** rng.integers(-spread, spread + 1, shape)
    v = mpgrad.to_float64(mpgrad.round_to(x, fmt))
    return np.where(np.isfinite(v), v, 1.0)


@pytest.mark.parametrize("fmt,spread", [("float16", 4), ("float16", 30), ("bfloat16", 120),
                                        ("float32", 60), ("tf32", 10), ("float8_e5m2", 14)])
def test_random_wide_range(fmt, spread):
    rng = np.random.default_rng(spread)
    for K in (1, 5, 33):
        M, N = rng.integers(1, 5, 2)
        a, b = values(rng, (M, K), fmt, spread), values(rng, (K, N), fmt, spread)
        a[rng.random(a.shape) < 0.2] = 0.0
        check(a, b)


def test_cancellation_and_ties():
    a = np.array([[2.0 ** 60, 1.0, -(2.0 ** 60), 2.0 ** -60],
                  [1.0, 2.0 ** -24, 2.0 ** -24, 0.0],        # 1 + 2**-23: a float16 tie path
                  [3.0, -3.0, 2.0 ** -100, -(2.0 ** -101)]])
    b = np.array([[1.0], [1.0], [1.0], [1.0]])
    check(a, b)
    check(-a, b)


def test_many_slices_and_carries():
    """Rows spanning 500 binades need a dozen slices; sums near digit boundaries carry."""
    rng = np.random.default_rng(7)
    a = np.array([[2.0 ** 200, -(2.0 ** 150), 2.0 ** -250, 1.0, -(2.0 ** -280)]])
    a = np.concatenate([a, -a, rng.standard_normal((2, 5))])
    b = np.array([[2.0 ** 50, -1.0], [2.0 ** 100, 3.0], [2.0 ** -30, 2.0 ** 200],
                  [-(2.0 ** 40), 2.0 ** -20], [1.0, 1.0]])
    check(a, b)
    k = 64  # (2**22 - 1)**2 * 64 sits right under 2**53: every partial sum is on the edge
    top = float(2 ** slice_bits(k) - 1)
    check(np.full((2, k), top), np.full((k, 2), top) * np.array([1.0, -1.0]))


def test_batch_broadcast_zero_size_and_specials():
    rng = np.random.default_rng(3)
    a, b = values(rng, (2, 1, 3, 4), "bfloat16", 40), values(rng, (3, 4, 2), "bfloat16", 40)
    hi, lo = exact_matmul(a, b)
    assert hi.shape == (2, 3, 3, 2)
    for i in range(2):
        for j in range(3):
            want = exact_products(a[i, 0], b[j])
            got = mpgrad.to_float64(mpgrad.round_to((hi[i, j], lo[i, j]), "float32"))
            assert got.tolist() == [[ref_round(v, mpgrad.float32, "nearest_even") for v in r]
                                    for r in want]
    for shape_a, shape_b in (((2, 0), (0, 3)), ((0, 4), (4, 3)), ((2, 4), (4, 0))):
        hi, lo = exact_matmul(np.ones(shape_a), np.ones(shape_b))
        assert hi.shape == (shape_a[0], shape_b[1]) and not np.any(hi) and not np.any(lo)
    hi, lo = exact_matmul(np.array([[np.inf, 1.0], [1.0, 2.0 ** -400]]),
                          np.array([[0.0, 1.0], [1.0, 1.0]]))
    assert math.isnan(hi[0, 0]) and hi[0, 1] == np.inf and hi[1, 1] == 1 + 2.0 ** -400
    hi, _ = exact_matmul(np.array([[-1.0, 2.0]]), np.array([[0.0], [-0.0]]))
    assert hi[0, 0] == 0 and not np.signbit(hi[0, 0])  # an exact zero is +0


@pytest.mark.parametrize("bits_a,bits_b,products", [(11, 11, 1), (30, 20, 2), (20, 30, 2),
                                                     (40, 40, 4)])
def test_slice_widths_use_few_products_and_stay_exact(bits_a, bits_b, products):
    """Rows of A spanning bits_a bit positions, columns of B bits_b, K = 64 (budget 47)."""
    from mpgrad.numerics import exact_matmul as em
    rng = np.random.default_rng(bits_a * 100 + bits_b)
    a = rng.integers(1, 2 ** 11, (3, 64)) * 2.0 ** rng.integers(0, bits_a - 10, (3, 64))
    b = rng.integers(1, 2 ** 11, (64, 2)) * 2.0 ** rng.integers(0, bits_b - 10, (64, 2))
    a[:, 0], b[0] = 2.0 ** (bits_a - 1), 2.0 ** (bits_b - 1)  # the top bit; 1 is the lowest
    a[:, 1], b[1] = 1.0, 1.0
    a *= rng.choice([-1.0, 1.0], a.shape)
    beta_a, beta_b = em._widths(64, em.bit_span(a, -1)[1], em.bit_span(b, -2)[1])
    n = len(em._slices(a, em.bit_span(a, -1)[0], beta_a)) * len(
        em._slices(b, em.bit_span(b, -2)[0], beta_b))
    assert n == products
    check(a, b, modes=("nearest_even", "toward_zero"))


def test_inputs_beyond_the_sliced_range_take_the_elementwise_path():
    """Bits below 2**-300 or above 2**300 (or inf/NaN) are handled exactly all the same."""
    a = np.array([[2.0 ** -400, 3.0], [2.0 ** 310, -(2.0 ** 310)]])
    b = np.array([[2.0 ** -400, 1.0], [1.0, 2.0 ** -320]])
    check(a, b, formats=TARGETS[:2])


@pytest.mark.parametrize("fmt,spread", [("float16", 6), ("bfloat16", 40), ("float32", 20),
                                        ("float8_e4m3fn", 4)])
def test_span_bound_from_the_format_precision(fmt, spread):
    """With max_bits = the format's precision the spans are bounds, never below the exact
    ones, and the product is the same exact result."""
    from mpgrad.numerics.exact import bit_span
    rng = np.random.default_rng(11)
    fmt = mpgrad.as_format(fmt)
    a, b = values(rng, (6, 40), fmt, spread), values(rng, (40, 5), fmt, spread)
    a[0] = 0.0
    for x, axis in ((a, -1), (b, -2)):
        e, span = bit_span(x, axis)
        e2, span2 = bit_span(x, axis, fmt.precision)
        assert np.array_equal(e, e2) and span2 >= span
    want = exact_products(a, b)
    got = mpgrad.to_float64(mpgrad.round_to(exact_matmul(a, b, fmt.precision), "float32"))
    assert got.tolist() == [[ref_round(v, mpgrad.float32, "nearest_even") for v in r]
                            for r in want]


@pytest.mark.parametrize("max_bits", [None, 53, 24])
def test_a_zero_operand_beside_full_width_values(max_bits):
    """A zero operand has bit span 0: the slice widths must still be >= 1 (found by
    tests/test_guarantees.py: [1.] @ [0.] in float64 divided by a zero width)."""
    rng = np.random.default_rng(3)
    for K in (1, 2, 7):
        a = rng.standard_normal((3, K)) if max_bits != 24 else \
            rng.standard_normal((3, K)).astype(np.float32).astype(np.float64)
        for b in (np.zeros((K, 2)), np.eye(K, 2)):
            pair = exact_matmul(a, b, max_bits)
            want = exact_products(a, b)
            got = mpgrad.to_float64(mpgrad.round_to(pair, mpgrad.float64))
            assert np.array_equal(got, [[ref_round(v, mpgrad.float64, "nearest_even")
                                         for v in row] for row in want])
            assert np.array_equal(mpgrad.matmul(mpgrad.tensor(a), mpgrad.tensor(b))
                                  .to_float64(), got)


@pytest.mark.parametrize("seed", range(6))
def test_specials_by_counting_match_the_elementwise_path(seed):
    """inf, -inf, NaN, zeros and -0 in both operands (batched): the counted specials and the
    finite part give exactly what the Dekker elementwise path gives."""
    from mpgrad.numerics.exact_matmul import _elementwise
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((2, 7, 9)), rng.standard_normal((9, 6))
    for x, p in ((a, 0.08), (b, 0.1)):
        pick = rng.random(x.shape)
        x[pick < p] = rng.choice([np.inf, -np.inf, np.nan, 0.0, -0.0], (pick < p).sum())
    got = exact_matmul(a, b)
    want = _elementwise(a, np.broadcast_to(b, (2, 9, 6)), (2, 7, 6))
    assert np.isnan(got[0]).sum() > 0 and np.isinf(got[0]).sum() > 0  # both kinds occur
    assert np.array_equal(got[0] + got[1], want[0] + want[1], equal_nan=True)
    assert np.array_equal(np.signbit(got[0] + got[1]), np.signbit(want[0] + want[1]))
