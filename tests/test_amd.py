"""The AMD matrix-core presets (MI100, MI250, MI300): MMA-Sim's own results bit for bit, an
independent scalar reference on raw bit patterns, the new BlockFMA fields, the bounds.

`python tests/test_amd.py` prints how many cases of each MMA-Sim vector file mpgrad.mma
does not reproduce."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import mpgrad
from mpgrad.accumulate import BlockFMA, hardware
from mpgrad.numerics.formats import float32
from mpgrad.testing import assert_matmul_close
from reference import ref_round

VECTORS = sorted((Path(__file__).resolve().parent / "data" / "mmasim-vectors").glob("*.npz"))
TF32_BITS = np.uint32(0xFFFFE000)  # xf32 reads float32 operands truncated to tf32


def vector_mismatches(path: Path) -> tuple[int, int]:
    """(mismatches, cases) of mpgrad.mma with the file's preset against MMA-Sim's results.

    MMA-Sim's AMD path has no canonical NaN (its NaN codes are whatever the host's float
    arithmetic propagates), so a NaN matches any NaN; every other result bit for bit."""
    with np.load(path) as data:
        fa, fb = (mpgrad.as_format(str(data[f"{x}_format"])) for x in "ab")
        a, b = data["a"], data["b"]
        if fa == float32:  # MI300_TF32: the unit truncates its float32 operands to tf32
            a, b = a & TF32_BITS, b & TF32_BITS
        model = getattr(hardware, str(data["preset"]))
        d = mpgrad.mma(a.view(fa.storage), b.view(fb.storage), data["c"].view(np.float32),
                       model=model)
        got, want = d.view(np.uint32), data["d"]
    nan = np.isnan(want.view(np.float32))
    bad = np.where(nan, ~np.isnan(d), got != want)
    return int(np.count_nonzero(bad)), bad.size


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_mmasim_vectors_bit_for_bit(path):
    """Every case MMA-Sim computed (1024 per configuration) reproduces bit for bit."""
    assert vector_mismatches(path) == (0, 1024)


def test_every_amd_preset_has_vectors():
    presets = set()
    for path in VECTORS:
        with np.load(path) as data:
            presets.add(str(data["preset"]))
            assert str(data["d_format"]) == "float32"  # every AMD MFMA here writes float32
    assert presets == {k for k in hardware.HARDWARE if k.startswith("MI")}
    assert len(VECTORS) == 11  # MI300_FP8: all four e4m3/e5m2 (fnuz) pairings


# --- an independent scalar reference (MMA-Sim's AMD rules, in Fractions) -----------------

EMIN32 = float32.min_exponent


def _floor_log2(q: Fraction) -> int:
    q = abs(q)
    e = q.numerator.bit_length() - q.denominator.bit_length()
    return e - 1 if Fraction(2) ** e > q else e


def _rne(x) -> float:
    return ref_round(x, float32, "nearest_even")


def _ieee_add(x: float, y: float) -> float:
    """x + y in float32, nearest even (an exact zero is +0 unless both are -0)."""
    if not (math.isfinite(x) and math.isfinite(y)):
        return x + y
    s = Fraction(x) + Fraction(y)
    if s == 0:
        return -0.0 if math.copysign(1, x) < 0 and math.copysign(1, y) < 0 else 0.0
    return _rne(s)


def ref_pairwise(a, b, c, fa, fb, n: int, flush: bool) -> float:
    """CDNA1/CDNA2: groups of n products, each fma(a, b, +0) in float32, added by halving,
    then added to the accumulator; CDNA2 (flush) reads subnormal inputs and C as +0 and
    makes every result below 2**-126 a zero of its sign."""
    def ftz(x: float) -> float:
        return math.copysign(0.0, x) if flush and abs(x) < 2.0 ** EMIN32 else x

    if flush:
        a = [0.0 if abs(x) < fa.smallest_normal else x for x in a]
        b = [0.0 if abs(y) < fb.smallest_normal else y for y in b]
        c = 0.0 if abs(c) < float32.smallest_normal else c

    def tree(pairs) -> float:
        if len(pairs) == 1:
            x, y = pairs[0]
            if not (math.isfinite(x) and math.isfinite(y)):
                return x * y  # an infinity, or NaN (inf * 0)
            p = Fraction(x) * Fraction(y)
            return ftz(0.0 if p == 0 else _rne(p))  # fma(x, y, +0): an exact zero is +0
        h = len(pairs) // 2
        return ftz(_ieee_add(tree(pairs[:h]), tree(pairs[h:])))

    pairs = list(zip(a, b))
    for g in range(0, len(pairs), n):
        c = ftz(_ieee_add(c, tree(pairs[g:g + n])))
    return c


def _exponent(x: float, fmt) -> int:
    """A CDNA3 input's exponent: a zero's is -126, a subnormal's its format's minimum."""
    return -126 if x == 0 else max(_floor_log2(Fraction(x)), fmt.min_exponent)


def ref_cdna3(a, b, c, fa, fb, n: int, ways: int, reach: int | None) -> float:
    """CDNA3: groups of n products split into `ways` interleaved sub-blocks; each aligned to
    its largest exponent and truncated toward zero to 24 fraction bits; sub-block sums
    floored to 24 bits below their largest exponent E; that sum floored to 31 bits and C to
    24 below E' = max(E, C's exponent) (C dropped below E' - reach), rounded to nearest."""
    F, F2 = 24, 31
    for g in range(0, len(a), n):
        pairs = list(zip(a[g:g + n], b[g:g + n]))
        if not math.isfinite(c) or not all(math.isfinite(x) and math.isfinite(y)
                                           for x, y in pairs):
            c = _rne(sum(x * y for x, y in pairs) + c)  # IEEE: NaN, or an infinity
            continue
        prods = [Fraction(x) * Fraction(y) for x, y in pairs]
        big = [p for p in prods if abs(p) >= 2 ** 128]  # beyond float32's range: inf
        if big:
            c = math.nan if min(big) < 0 < max(big) else math.copysign(math.inf, big[0])
            continue
        items = [(p, _exponent(x, fa) + _exponent(y, fb)) for p, (x, y) in zip(prods, pairs)]
        subs = []
        for w in range(ways):
            part = items[w::ways]
            if part:
                u = Fraction(2) ** (max(e for _, e in part) - F)
                subs.append((sum((math.trunc(p / u) * u for p, _ in part), Fraction(0)),
                             max(e for _, e in part)))
        E = max(e for _, e in subs)
        u = Fraction(2) ** (E - F)
        S = sum((math.floor(s / u) * u for s, _ in subs), Fraction(0))
        ec = EMIN32 if abs(c) < 2.0 ** EMIN32 else _floor_log2(Fraction(c))
        E2 = max(E, ec)
        u2, uc = Fraction(2) ** (E2 - F2), Fraction(2) ** (E2 - F)
        C = 0 if reach is not None and ec < E2 - reach else math.floor(Fraction(c) / uc) * uc
        total = math.floor(S / u2) * u2 + C
        c = 0.0 if total == 0 else _rne(total)
    return c


REFERENCES = {  # preset -> (scalar rule, its parameters), from mmasim/simulator/amd.py
    "MI100_FP16": (ref_pairwise, 4, False), "MI100_BF16": (ref_pairwise, 2, False),
    "MI250_FP16": (ref_pairwise, 4, True), "MI250_BF16": (ref_pairwise, 4, True),
    "MI300_FP16": (ref_cdna3, 8, 1, None), "MI300_BF16": (ref_cdna3, 8, 1, None),
    "MI300_TF32": (ref_cdna3, 4, 1, None), "MI300_FP8": (ref_cdna3, 16, 2, 25),
}
CASES = [("MI100_FP16", "float16", "float16"), ("MI100_BF16", "bfloat16", "bfloat16"),
         ("MI250_FP16", "float16", "float16"), ("MI250_BF16", "bfloat16", "bfloat16"),
         ("MI300_FP16", "float16", "float16"), ("MI300_BF16", "bfloat16", "bfloat16"),
         ("MI300_TF32", "tf32", "tf32")] + [
    ("MI300_FP8", fa, fb) for fa in ("float8_e4m3fnuz", "float8_e5m2fnuz")
    for fb in ("float8_e4m3fnuz", "float8_e5m2fnuz")]


def _raw(rng, fmt, shape) -> np.ndarray:
    """Random bit patterns of fmt (tf32: float32 codes truncated), a quarter of them small
    (subnormals), a tenth zeros of either sign code (fnuz: -0's code is NaN)."""
    bits = 32 if fmt == mpgrad.tf32 else fmt.bits
    codes = rng.integers(0, 1 << bits, shape)
    small = rng.integers(0, 1 << (fmt.fraction_bits + 2), shape) | (
        rng.integers(0, 2, shape) << (bits - 1))
    codes = np.where(rng.random(shape) < 0.25, small, codes)
    codes = np.where(rng.random(shape) < 0.1, codes & (1 << (bits - 1)), codes)
    if fmt == mpgrad.tf32:
        return mpgrad.from_bits(codes.astype(np.uint64) & TF32_BITS, float32)
    return mpgrad.from_bits(codes.astype(np.uint64), fmt)


@pytest.mark.parametrize("preset, fa, fb", CASES, ids=lambda x: str(x))
def test_mma_against_scalar_reference_on_raw_bits(preset, fa, fb):
    model = getattr(hardware, preset)
    rule, *params = REFERENCES[preset]
    fa, fb = mpgrad.as_format(fa), mpgrad.as_format(fb)
    rng = np.random.default_rng(sum(map(ord, preset + fa.name + fb.name)))
    M, N, K = 4, 6, 2 * (model.k or model.n) + 3  # chained instructions, the last short
    a, b = _raw(rng, fa, (M, K)), _raw(rng, fb, (K, N))
    c = np.where(rng.random((M, N)) < 0.5, rng.standard_normal((M, N)) * 2.0 ** rng.integers(
        -40, 40, (M, N)), mpgrad.from_bits(rng.integers(0, 1 << 32, (M, N)), float32))
    c = c.astype(np.float32)
    c.flat[:2] = 0.0, -0.0
    d = mpgrad.mma(a, b, c, model=model)
    av, bv = mpgrad.to_float64(a).tolist(), mpgrad.to_float64(b).T.tolist()
    for i in range(M):
        for j in range(N):
            want = rule(av[i], bv[j], float(c[i, j]), fa, fb, *params)
            got = float(d[i, j])
            assert (math.isnan(got) and math.isnan(want)) or (
                np.float32(got).view(np.uint32) == np.float32(want).view(np.uint32)), (
                i, j, got, want)


# --- the rules on small examples ----------------------------------------------------------

def test_cdna3_cuts_toward_minus_infinity():
    """MI300 floors C to 24 bits below the sum's exponent: a tiny negative C lowers 1 by
    2**-24 (float32's spacing below 1), a tiny positive one is dropped."""
    a, b = np.ones((1, 8), np.float16), np.eye(8, 1, dtype=np.float16)
    for c, want in ((-(2.0 ** -30), 1 - 2.0 ** -24), (2.0 ** -30, 1.0)):
        d = mpgrad.mma(a, b, np.full((1, 1), c, np.float32), model=hardware.MI300_FP16)
        assert float(d[0, 0]) == want
    plain = dataclasses.replace(hardware.MI300_FP16, accumulator="first", sum_bits=None)
    d = mpgrad.mma(a, b, np.full((1, 1), -(2.0 ** -30), np.float32), model=plain)
    assert float(d[0, 0]) == 1.0  # C truncated toward zero inside the block instead


def test_cdna3_zero_input_has_an_exponent():
    """MMA-Sim gives a zero input the exponent -126: 0 * 2**100 counts as 2**-26, and 24
    bits below it the product 2**-60 * 2**-60 is lost (kept without zero_exponent)."""
    a = np.array([[0.0, 2.0 ** -60]], mpgrad.bfloat16.storage)
    b = np.array([[2.0 ** 100], [2.0 ** -60]], mpgrad.bfloat16.storage)
    assert float(mpgrad.mma(a, b, model=hardware.MI300_BF16)[0, 0]) == 0.0
    plain = dataclasses.replace(hardware.MI300_BF16, zero_exponent=None)
    assert float(mpgrad.mma(a, b, model=plain)[0, 0]) == 2.0 ** -120


def test_cdna3_product_overflow_and_cdna2_flush():
    a = np.array([[2.0 ** 100, 2.0 ** 100]], mpgrad.bfloat16.storage)
    b = np.array([[2.0 ** 28], [-(2.0 ** 27)]], mpgrad.bfloat16.storage)  # exact: 2**127
    assert float(mpgrad.mma(a, b, model=hardware.MI300_BF16)[0, 0]) == np.inf
    h = np.array([[2.0 ** -24]], np.float16)  # a float16 subnormal
    k = np.array([[2.0 ** 10]], np.float16)
    assert float(mpgrad.mma(h, k, model=hardware.MI100_FP16)[0, 0]) == 2.0 ** -14
    assert float(mpgrad.mma(h, k, model=hardware.MI250_FP16)[0, 0]) == 0.0
    c = np.array([[-(2.0 ** -130)]], np.float32)  # a float32 subnormal C reads as +0
    assert mpgrad.mma(h, k, c, model=hardware.MI250_FP16).view(np.uint32)[0, 0] == 0


def test_fp8_blocks_alternate():
    """MI300 fp8: even and odd products go to two blocks, each added exactly at its own
    exponent; merging floors the odd block's -3 * 2**-26 to -2**-24 below the even block's
    1, giving 1 - 2**-24 (a float32). One block of 16 truncates it toward zero: 1."""
    a = np.array([[1.0, -1.5 * 2.0 ** -13] + [0.0] * 14], mpgrad.float8_e5m2fnuz.storage)
    b = np.array([[1.0], [2.0 ** -12]] + [[0.0]] * 14, mpgrad.float8_e5m2fnuz.storage)
    assert float(mpgrad.mma(a, b, model=hardware.MI300_FP8)[0, 0]) == 1 - 2.0 ** -24
    one = dataclasses.replace(hardware.MI300_FP8, n=16, k=None, order="consecutive")
    assert float(mpgrad.mma(a, b, model=one)[0, 0]) == 1.0


# --- the new BlockFMA fields ---------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(order="zigzag"), "order must be"),
    (dict(accumulator="middle"), "accumulator must be"),
    (dict(block_sum="tree"), "block_sum must be"),
    (dict(block_sum="pairwise"), "needs include_accumulator=False"),
    (dict(flush=1), "flush must be a bool"),
    (dict(product_overflow="yes"), "product_overflow must be a bool"),
    (dict(zero_exponent=-126.0), "zero_exponent must be"),
    (dict(sum_bits=31), "belong to accumulator='aligned'"),
    (dict(reach=25), "belong to accumulator='aligned'"),
    (dict(accumulator="aligned"), "needs sum_bits"),
    (dict(accumulator="aligned", sum_bits=20, fraction_bits=24), "needs sum_bits"),
    (dict(accumulator="aligned", sum_bits=60), "needs sum_bits"),
    (dict(accumulator="aligned", sum_bits=31, include_accumulator=False),
     "needs include_accumulator=True"),
    (dict(accumulator="aligned", sum_bits=31, fraction_bits=24, reach=20), "reach must be"),
])
def test_new_fields_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BlockFMA(**kwargs)


def test_new_fields_default_to_the_old_model():
    m = BlockFMA()
    assert (m.sum_bits, m.reach, m.zero_exponent, m.product_overflow, m.block_sum,
            m.flush) == (None, None, None, False, "exact", False)
    h = np.ones((2, 4), np.float16)
    with pytest.raises(ValueError, match="BlockFMA"):  # no C in the block, not pairwise
        mpgrad.mma(h, h.T, model=BlockFMA(4, 20, include_accumulator=False))
    assert hardware.MI300_FP16 is hardware.MI300_BF16
    assert (hardware.MI300_FP8.n, hardware.MI300_FP8.k) == (8, 16)


# --- the error bounds hold for the AMD presets -------------------------------------------

def _normal(rng, shape, fmt, scale) -> np.ndarray:
    """Random normal values of fmt (no zeros or subnormals: the bounds' condition)."""
    x = np.clip(rng.standard_normal(shape) * scale, -fmt.max, fmt.max)
    x = mpgrad.to_float64(mpgrad.round_to(x, fmt))
    return np.where(np.abs(x) < fmt.smallest_normal, fmt.smallest_normal, x)


@pytest.mark.parametrize("preset, fa, fb", CASES[:9], ids=lambda x: str(x))
@pytest.mark.parametrize("kind", ["random", "cancellation", "wide"])
def test_results_within_bound(preset, fa, fb, kind):
    model = getattr(hardware, preset)
    fa, fb = mpgrad.as_format(fa), mpgrad.as_format(fb)
    rng = np.random.default_rng(sum(map(ord, preset + kind)))
    for M, K, N in [(3, 1, 2), (4, 37, 5), (6, 128, 3)]:
        scale = 2.0 ** rng.integers(-8, 8, (1, K)) if kind == "wide" else np.ones((1, K))
        A, B = _normal(rng, (M, K), fa, scale), _normal(rng, (K, N), fb, 1 / scale.T)
        if kind == "cancellation" and K > 1:
            h = K // 2
            A[:, h:2 * h], B[h:2 * h] = -A[:, :h], B[:h]
        storage = (lambda x, f: x.astype(np.float32 if f == mpgrad.tf32 else f.storage))
        d = mpgrad.mma(storage(A, fa), storage(B, fb), model=model)
        assert_matmul_close(mpgrad.to_float64(d), A, B, model)


if __name__ == "__main__":
    for path in VECTORS:
        bad, cases = vector_mismatches(path)
        print(f"{path.stem:20} {bad} of {cases}")


@pytest.mark.parametrize("name,fmt,spread", [
    ("MI250_FP16", "float16", 20), ("MI300_BF16", "bfloat16", 60),
    ("MI300_FP8", "float8_e4m3fnuz", 8)])
def test_matmul_model_is_mma_with_zero_c(name, fmt, spread):
    """The GEMM path flushes inputs as mma does (without it 576 of the MI250 outputs
    differ), and gives zeros their exponent (below)."""
    unit, f = getattr(hardware, name), mpgrad.as_format(fmt)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 24, 40)) * 2.0 ** rng.integers(-spread, 4, (2, 24, 40))
    x[:, rng.random((24, 40)) < 0.2] = 0.0
    a, b = (mpgrad.round_to(v, f) for v in (x[0], x[1].T))
    want = mpgrad.mma(a, b, model=unit)
    got = mpgrad.accumulate.matmul_model(mpgrad.to_float64(a), mpgrad.to_float64(b), unit,
                                         formats=(f, f))
    assert np.array_equal(got.astype(np.float32).view(np.uint32), want.view(np.uint32))


def test_zero_input_exponent_in_both_paths():
    """0 x 2**120 takes exponent -126 + 120 = -6 (MMA-Sim's zero convention), so the
    products 1.5 * 2**-40 and 2**-40 fall below the grid 2**(-6 - 24) and are cut: 0, not
    2.5 * 2**-40, in mma and in matmul_model alike."""
    bf16 = mpgrad.as_format("bfloat16")
    a = mpgrad.round_to(np.array([[0.0, 1.5 * 2.0 ** -40, 2.0 ** -40]]), bf16)
    b = mpgrad.round_to(np.array([[2.0 ** 120], [1.0], [1.0]]), bf16)
    assert mpgrad.mma(a, b, model=hardware.MI300_BF16)[0, 0] == 0.0
    assert mpgrad.accumulate.matmul_model(mpgrad.to_float64(a), mpgrad.to_float64(b),
                                          hardware.MI300_BF16, formats=(bf16, bf16)) == 0.0
    plain = dataclasses.replace(hardware.MI300_BF16, zero_exponent=None)
    assert mpgrad.mma(a, b, model=plain)[0, 0] == np.float32(2.5 * 2.0 ** -40)
