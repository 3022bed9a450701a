"""mpgrad.mma: the measured GPU dot products, an independent scalar reference on raw bit
patterns, and the instruction-level API."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

import mpgrad
from gpu_vectors import DATA, configurations, mismatches
from mpgrad.accumulate import BlockFMA, hardware
from reference import ref_round

def _all():
    with np.load(DATA) as data:
        return configurations(data)


@pytest.mark.parametrize("gpu, inp, field", _all(), ids="/".join)
def test_measured_dot_products_bit_for_bit(gpu, inp, field):
    """Every measured case of the configuration reproduces bit for bit (1000 each)."""
    with np.load(DATA) as data:
        assert mismatches(data, gpu, inp, field) == 0


# --- an independent scalar reference (the papers' description, in Fractions) -------------

def _floor_log2(q: Fraction) -> int:
    q = abs(q)
    e = q.numerator.bit_length() - q.denominator.bit_length()
    return e - 1 if Fraction(2) ** e > q else e


def _exponent(x: float, fmt, model: BlockFMA) -> int:
    """The input's exponent as the unit reads it: a subnormal takes the minimum exponent
    (the model's input_emin when it has one)."""
    emin = fmt.min_exponent if model.input_emin is None else model.input_emin
    return max(_floor_log2(Fraction(x)), emin)


def _fused(pairs, c, fa, fb, model: BlockFMA, out, mode) -> float:
    """One block: products (and c unless None) aligned to the largest exponent (products:
    the sum of their inputs'), truncated to F bits below it, added exactly, rounded once."""
    if (c is not None and not math.isfinite(c)) or any(
            not math.isfinite(x) or not math.isfinite(y) for x, y in pairs):
        return ref_round(float(sum(float(x) * float(y) for x, y in pairs) + (c or 0.0)),
                         out, mode)
    items = [(Fraction(x) * Fraction(y), _exponent(x, fa, model) + _exponent(y, fb, model))
             for x, y in pairs if x != 0 and y != 0]
    if c:
        items.append((Fraction(c), _floor_log2(Fraction(c))))
    if not items:
        return 0.0
    unit = Fraction(2) ** (max(e for _, e in items) - model.fraction_bits)
    total = sum((math.floor(abs(v) / unit) * unit * (1 if v > 0 else -1) for v, _ in items),
                Fraction(0))
    return ref_round(total, out, mode)


def ref_dot(a, b, c: float, fa, fb, model: BlockFMA, out, mode: str) -> float:
    """One output: instructions of k products; each split into k/n blocks of consecutive
    products or of interleaved pairs (pair p goes to block p mod k/n); C joins the first
    block, or is added to the blocks' result at the end with one rounding in late_mode."""
    width = model.k or model.n
    blocks = width // model.n
    for k0 in range(0, len(a), width):
        idx = list(range(k0, min(k0 + width, len(a))))
        if model.order == "pairs":
            groups = [[i for i in idx if ((i - k0) // 2) % blocks == g] for g in range(blocks)]
        else:
            groups = [idx[j:j + model.n] for j in range(0, len(idx), model.n)]
        acc = c if model.accumulator == "first" else None
        for g in (g for g in groups if g):
            acc = _fused([(a[i], b[i]) for i in g], acc, fa, fb, model, out, mode)
        if model.accumulator == "last":
            sum_ = Fraction(acc) + Fraction(c) if math.isfinite(acc) and math.isfinite(c) \
                else float(acc) + float(c)
            acc = ref_round(sum_, out, model.late_mode)
        c = acc
    return c


def _raw(rng, fmt, shape):
    """Random bit patterns of fmt: every class (zeros of both signs, subnormals, normals,
    and infinities/NaN where the format has them), biased to small exponents too."""
    codes = rng.integers(0, 1 << fmt.bits, shape)
    small = rng.integers(0, 1 << (fmt.fraction_bits + 2), shape) | (
        rng.integers(0, 2, shape) << (fmt.bits - 1))
    codes = np.where(rng.random(shape) < 0.25, small, codes)
    return mpgrad.from_bits(codes.astype(np.uint64), fmt)


CASES = [
    (hardware.V100_FP16, "float16", "float16", None),
    (hardware.A100_FP16, "float16", "float16", None),
    (hardware.A100_BF16, "bfloat16", "bfloat16", None),
    (hardware.H100_FP16, "float16", "float16", "float16"),
    (hardware.H100_TF32, "tf32", "tf32", None),
    (hardware.ADA_FP8, "float8_e4m3fn", "float8_e5m2", None),
    (hardware.H100_FP8, "float8_e5m2", "float8_e4m3fn", "float16"),
    (hardware.B200_FP8, "float8_e4m3fn", "float8_e5m2", None),
    (hardware.H100_FP8_SYNC, "float8_e5m2", "float8_e5m2", "float16"),
]


@pytest.mark.parametrize("model, fa, fb, out", CASES,
                         ids=[f"{fa}x{fb}-{out}" for _, fa, fb, out in CASES])
def test_mma_against_scalar_reference_on_raw_bits(model, fa, fb, out):
    fa, fb = mpgrad.as_format(fa), mpgrad.as_format(fb)
    rng = np.random.default_rng(abs(hash((repr(model), fa.name, fb.name))) % 2 ** 32)
    M, N, K = 3, 4, 2 * model.n + 3  # chained blocks, the last one short
    a, b = _raw(rng, fa, (M, K)), _raw(rng, fb, (K, N))
    if out is None:
        c = rng.standard_normal((M, N)).astype(np.float32) * 2.0 ** rng.integers(-30, 30)
    else:
        c = rng.standard_normal((M, N)).astype(np.float16)
    c.flat[0] = 0.0
    d = mpgrad.mma(a, b, c, model=model, out=out)
    fmt = model.acc if out is None else mpgrad.as_format(out)
    mode = model.mode if out is None else "nearest_even"
    av, bv = mpgrad.to_float64(a), mpgrad.to_float64(b)
    for i in range(M):
        for j in range(N):
            want = ref_dot(list(av[i]), list(bv[:, j]), float(c[i, j]), fa, fb, model, fmt,
                           mode)
            got = float(mpgrad.to_float64(d[i, j]))
            assert got == want or (math.isnan(got) and math.isnan(want)), (i, j, got, want)


def test_matmul_with_a_preset_is_mma_with_zero_c():
    rng = np.random.default_rng(3)
    a = mpgrad.tensor(rng.standard_normal((2, 3, 40)), dtype="bf16")
    b = mpgrad.tensor(rng.standard_normal((40, 5)) * 2.0 ** -13, dtype="bf16")
    for model in (hardware.A100_BF16, hardware.H100_BF16):
        with mpgrad.use_policy(mpgrad.Policy("bf16", "float32", "float32")):
            got = mpgrad.matmul(a, b, accumulate=model)  # inputs cast to float32 exactly
        want = mpgrad.mma(a, b, model=model)
        assert want.shape == (2, 3, 5) and want.dtype == np.float32
        # in float32 the unit's exponents use float32's minimum, the same for these values
        assert np.array_equal(got.numpy().view(np.uint32), want.view(np.uint32))


def test_mma_api_errors():
    h = np.ones((2, 4), np.float16)
    with pytest.raises(TypeError, match="storage dtype"):
        mpgrad.mma(np.ones((2, 4)), h.T, model=hardware.V100_FP16)
    with pytest.raises(ValueError, match="not tf32"):
        mpgrad.mma(np.full((2, 4), 1 + 2.0 ** -20, np.float32), h.T, model=hardware.A100_TF32)
    with pytest.raises(ValueError, match="BlockFMA"):
        mpgrad.mma(h, h.T, model=hardware.H100_FP8_PROMOTED)
    with pytest.raises(ValueError, match="output register"):
        mpgrad.mma(h, h.T, np.full((2, 2), 0.1, np.float32), model=hardware.V100_FP16,
                   out="float16")
    with pytest.raises(ValueError, match="needs a"):
        mpgrad.mma(h, h.T[:3], model=hardware.V100_FP16)
    with pytest.raises(ValueError, match="align must be"):
        BlockFMA(align="magnitude")


def test_subnormal_inputs_take_the_minimum_exponent():
    """a1 = 2**-24 is subnormal in float16, so the unit reads its exponent as -14: the
    product 2**-24 * 2**10 counts as exponent -4, not -14, and V100's 23 bits below it
    (units of 2**-27) drop the second product 2**-8 * 2**-22 = 2**-30 entirely."""
    a = np.array([[2.0 ** -24, 2.0 ** -8, 0, 0]], np.float16)
    b = np.array([[2.0 ** 10], [2.0 ** -22], [0], [0]], np.float16)
    d = mpgrad.mma(a, b, model=hardware.V100_FP16)
    assert float(d[0, 0]) == 2.0 ** -14
    want = ref_dot([2.0 ** -24, 2.0 ** -8, 0.0, 0.0], [2.0 ** 10, 2.0 ** -22, 0.0, 0.0], 0.0,
                   mpgrad.float16, mpgrad.float16, hardware.V100_FP16, mpgrad.float32,
                   "toward_zero")
    assert want == 2.0 ** -14
    # matmul_model without formats aligns by the values' own exponents: 2**-30 is kept
    plain = mpgrad.accumulate.matmul_model(a.astype(float), b.astype(float), hardware.V100_FP16)
    assert plain[0, 0] == 2.0 ** -14 + 2.0 ** -30


@pytest.mark.parametrize("out, code", [(None, 0x7FFFFFFF), ("float16", 0x7FFF)])
def test_nan_results_are_the_canonical_code(out, code):
    """inf * 0 and inf - inf give the matrix units' NaN: every fraction bit set."""
    a = np.array([[np.inf, 1, 0, 0], [np.inf, -np.inf, 0, 0]], np.float16)
    b = np.array([[0, 1], [1, 1], [0, 0], [0, 0]], np.float16)
    d = mpgrad.mma(a, b, model=hardware.V100_FP16, out=out)
    bits = d.view(np.uint32 if d.itemsize == 4 else np.uint16)
    assert bits[0, 0] == code and bits[1, 1] == code
    assert np.isinf(float(d[0, 1]))  # inf * 1 + 1 * 1: an infinity passes through
