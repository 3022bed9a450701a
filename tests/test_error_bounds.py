"""Rigorous accumulation error bounds (mpgrad.testing.accumulation_error_bound)."""

import numpy as np
import pytest

import mpgrad
from mpgrad.accumulate import (BlockFMA, Chunked, Exact, Pairwise, Sequential, hardware,
                               matmul_model, software)
from mpgrad.numerics.formats import bfloat16, float8_e4m3fn, float8_e5m2, float16, float32
from mpgrad.numerics.rounding import round_to, to_float64
from mpgrad.testing import accumulation_error_bound, assert_matmul_close

MODELS = {
    "exact": Exact(float32),
    "exact_tz": Exact(float32, "toward_zero"),
    "seq_fma": Sequential(float32),
    "seq_nofma": Sequential(float32, fma=False),
    "seq_tz": Sequential(float32, mode="toward_zero"),
    "seq_bf16": Sequential(bfloat16),
    "pairwise": Pairwise(float32),
    "pairwise_b1_up": Pairwise(float32, block=1, mode="up"),
    "numpy_rule": Pairwise(float32, block=16, rule="numpy", mode="up"),
    "NUMPY": software.NUMPY,
    "chunked": Chunked(32, Sequential(float16), Sequential(float32)),
    "chunked_exact": Chunked(64, Pairwise(float32), Exact(float32)),
    "blockfma_noacc": BlockFMA(8, 20, include_accumulator=False),
    "H100_FP16": hardware.H100_FP16,
    "V100_FP16": hardware.V100_FP16,
    "H100_FP8": hardware.H100_FP8,
    "H100_FP8_PROMOTED": hardware.H100_FP8_PROMOTED,
    "B200_FP8": hardware.B200_FP8,
}
FORMATS = [float16, bfloat16, float8_e4m3fn, float8_e5m2]


def _in(x, fmt):
    """x rounded to fmt, as exact float64 values."""
    return to_float64(round_to(np.asarray(x, dtype=np.float64), fmt))


def _random(rng, M, K, N, fmt, scale=1.0):
    return (_in(rng.standard_normal((M, K)) * scale, fmt),
            _in(rng.standard_normal((K, N)) * scale, fmt))


def _cancellation(rng, M, K, N, fmt):
    """Terms that cancel pairwise with a tiny remainder: |A| @ |B| >> |A @ B|."""
    a, b = _random(rng, M, K // 2, N, fmt)
    A = np.concatenate([a, -a], axis=1)
    B = np.concatenate([b, b], axis=0)
    A[:, 0] += _in(np.full(M, 2.0 ** -6), fmt) if fmt.precision > 4 else 0
    return _in(A, fmt), B


def _wide_range(rng, M, K, N, fmt):
    """Magnitudes spread over most of fmt's exponent range, big and small interleaved."""
    lo, hi = np.log2(fmt.smallest_normal) + 2, np.log2(fmt.max) - 2
    ea = rng.uniform(lo / 2, hi / 2, (M, K))
    eb = rng.uniform(lo / 2, hi / 2, (K, N))
    A = np.sign(rng.standard_normal((M, K))) * 2.0 ** ea
    B = np.sign(rng.standard_normal((K, N))) * 2.0 ** eb
    return _in(A, fmt), _in(B, fmt)


# A model with an input exponent floor (B200_FP8) aligns inputs below 2**input_emin above
# their own exponents, where its bound need not hold (BlockFMA.bound): no "wide" inputs.
CASES = [(kind, name) for kind in ("random", "cancellation", "wide") for name in MODELS
         if not (kind == "wide" and getattr(MODELS[name], "input_emin", None) is not None)]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("kind, name", CASES, ids="-".join)
def test_model_result_within_bound(name, fmt, kind):
    model = MODELS[name]
    rng = np.random.default_rng(hash((name, fmt.name, kind)) % 2 ** 32)
    for M, K, N in [(3, 1, 2), (4, 37, 5), (8, 256, 3)]:
        make = {"random": _random, "cancellation": _cancellation, "wide": _wide_range}[kind]
        if kind == "cancellation" and K < 2:
            continue
        A, B = make(rng, M, K, N, fmt)
        r = matmul_model(A, B, model)
        assert_matmul_close(r, A, B, model)
    out = bfloat16 if kind == "wide" else float16  # the last result rounded to an output
    assert_matmul_close(to_float64(round_to(r, out)), A, B, model, out=out)
    assert_matmul_close(to_float64(round_to(r, out, "toward_zero")), A, B, model,
                        out=out, out_mode="toward_zero")


@pytest.mark.parametrize("name", list(MODELS))
def test_bound_not_vacuous(name):
    model = MODELS[name]
    rng = np.random.default_rng(1)
    A, B = _random(rng, 8, 256, 8, float16)
    rel = accumulation_error_bound(A, B, model) / (np.abs(A) @ np.abs(B))
    if name == "seq_bf16":  # gamma_K needs K u < 1: 256 * 2**-8 = 1, no bound at K = 256
        assert np.all(np.isinf(rel))
        A, B = A[:, :64], B[:64]
        rel = accumulation_error_bound(A, B, model) / (np.abs(A) @ np.abs(B))
    assert np.all(np.isfinite(rel))
    limit = {"seq_bf16": 1.0, "chunked": 0.2, "H100_FP8": 0.05,
             "H100_FP8_PROMOTED": 0.05}.get(name, 1e-3)
    assert rel.max() < limit


def test_sequential_float32_tight_enough():
    rng = np.random.default_rng(2)
    A, B = _random(rng, 8, 256, 8, bfloat16)
    rel = accumulation_error_bound(A, B, Sequential(float32)) / (np.abs(A) @ np.abs(B))
    assert rel.max() < 1e-3 and rel.min() > 0


def test_tensor_inputs_and_empty_K():
    A = mpgrad.tensor(np.ones((2, 3)), dtype="float16")
    B = mpgrad.tensor(np.ones((3, 2)), dtype="float16")
    assert_matmul_close(np.full((2, 2), 3.0), A, B, Sequential(float32))
    assert np.all(accumulation_error_bound(np.zeros((2, 0)), np.zeros((0, 2)),
                                           Sequential()) < 1e-300)
    assert_matmul_close(np.zeros((2, 2)), np.zeros((2, 0)), np.zeros((0, 2)), Sequential())


def test_overflow_gives_inf():
    A = np.full((1, 4), 60000.0)
    B = np.full((4, 1), 60000.0)
    assert np.isinf(accumulation_error_bound(A, B, Sequential(float16)))
    assert np.isinf(accumulation_error_bound(A, B, Sequential(float32), out=float16))
    assert np.isfinite(accumulation_error_bound(A, B, Sequential(float32)))
    assert_matmul_close(np.array([[np.inf]]), A, B, Sequential(float32), out=float16)


ONES = (np.ones((1, 4096)), np.ones((4096, 1)))


def test_fp16_accumulation_rejected_by_fp32_bound():
    A, B = ONES
    r16 = matmul_model(A, B, Sequential(float16))
    assert r16[0, 0] == 2048.0  # swamping: 2048 + 1 rounds back to 2048
    with pytest.raises(AssertionError, match=r"(?s)1 of 1 elements.*candidate 2048\.0, exact 4096.*float16 accumulation"):
        assert_matmul_close(r16, A, B, Sequential(float32))
    with pytest.raises(AssertionError):
        assert_matmul_close(r16, A, B, Sequential(float32), out=float16)
    assert_matmul_close(np.array([[4096.0]]), A, B, Sequential(float32), out=float16)


def test_failure_message_reports_worst():
    rng = np.random.default_rng(3)
    A, B = _random(rng, 4, 16, 4, float16)
    r = matmul_model(A, B, Sequential(float32))
    r[1, 2] += 1.0
    r[3, 0] += 0.5
    with pytest.raises(AssertionError, match=r"(?s)2 of 16 elements.*\n  at \(1, 2\):.*\n  at \(3, 0\)"):
        assert_matmul_close(r, A, B, Sequential(float32))
    r[1, 2] = np.nan
    with pytest.raises(AssertionError, match=r"\n  at \(1, 2\): candidate nan"):
        assert_matmul_close(r, A, B, Sequential(float32))


@pytest.mark.parametrize("fmt", [float16, bfloat16], ids=lambda f: f.name)
def test_torch_cpu_matmul_is_fp32_accumulating(fmt):
    torch = pytest.importorskip("torch")
    tdtype = {float16: torch.float16, bfloat16: torch.bfloat16}[fmt]
    rng = np.random.default_rng(4)
    A, B = _random(rng, 64, 512, 64, fmt)
    got = torch.matmul(torch.tensor(A).to(tdtype), torch.tensor(B).to(tdtype))
    assert_matmul_close(got.double().numpy(), A, B, Sequential(float32), out=fmt)


def test_torch_cpu_ones_case():
    torch = pytest.importorskip("torch")
    A, B = ONES
    got = torch.matmul(torch.tensor(A).half(), torch.tensor(B).half()).double().numpy()
    assert got[0, 0] == 4096.0
    assert_matmul_close(got, A, B, Sequential(float32), out=float16)
    with pytest.raises(AssertionError):
        assert_matmul_close(np.array([[2048.0]]), A, B, Sequential(float32), out=float16)
