"""matmul and sum take an accumulation model (a keyword or the active Policy's).

The models themselves are checked against scalar Fraction references in
test_accumulate.py; here the reference for the wiring is mpgrad.accumulate's own model
functions plus one rounding, and a hand-derived case shows the model is really used.
"""

import numpy as np
import pytest

import mpgrad
from mpgrad.accumulate import Sequential, hardware, matmul_model, reduce_sum

RNG = np.random.default_rng(3)


def test_float16_accumulator_swamps_a_sum_of_ones():
    """4096 ones added in float16: at 2048 the ulp is 2, 2048 + 1 ties to even 2048."""
    x = mpgrad.ones(4096, dtype="fp16")
    assert mpgrad.sum(x).item() == 4096.0  # exact by default
    assert mpgrad.sum(x, accumulate=Sequential("float16")).item() == 2048.0
    assert x.sum(accumulate=Sequential("float16")).item() == 2048.0


def test_matmul_with_a_model_and_its_backward_use_the_model():
    a = mpgrad.tensor(RNG.standard_normal((3, 40)), dtype="fp16", requires_grad=True)
    b = mpgrad.tensor(RNG.standard_normal((40, 2)), dtype="fp16", requires_grad=True)
    model = Sequential("float16")
    out = mpgrad.matmul(a, b, accumulate=model)
    want = mpgrad.round_to(matmul_model(a.numpy(), b.numpy(), model), "fp16")
    assert np.array_equal(out.to_float64(), mpgrad.to_float64(want))
    g = np.ones((3, 2))
    out.sum().backward()
    want_ga = mpgrad.round_to(matmul_model(g, b.to_float64().T, model), "fp16")
    assert np.array_equal(a.grad.to_float64(), mpgrad.to_float64(want_ga))


def test_policy_carries_the_model():
    a = mpgrad.tensor(RNG.standard_normal((2, 300)), dtype="bf16")
    b = mpgrad.tensor(RNG.standard_normal((300, 2)), dtype="bf16")
    policy = mpgrad.Policy("f32", "f32", "f32", accumulate=hardware.H100_FP16)
    with mpgrad.use_policy(policy):
        got = (a @ b).to_float64()
    want = matmul_model(a.to_float64(), b.to_float64(), hardware.H100_FP16)
    assert got.tolist() == mpgrad.to_float64(mpgrad.round_to(want, "f32")).tolist()


@pytest.mark.parametrize("axis", [0, 1, None, (0, 1)])
def test_sum_over_axes_with_a_model(axis):
    x = mpgrad.tensor(RNG.standard_normal((5, 7)), dtype="fp16")
    model = Sequential("float16")
    got = mpgrad.sum(x, axis=axis, accumulate=model).to_float64()
    v = x.to_float64()
    axes = (0, 1) if axis is None else (axis,) if isinstance(axis, int) else axis
    kept = [i for i in range(2) if i not in axes]
    flat = np.transpose(v, kept + list(axes)).reshape([v.shape[i] for i in kept] + [-1])
    want = reduce_sum(flat, -1, model).reshape(got.shape)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("fmt", ["float16", "bfloat16", "float8_e4m3fn"])
@pytest.mark.parametrize("shape", [(3, 100, 2), (2, 1, 3), (1, 65, 1), (2, 0, 2)])
def test_default_matmul_is_the_exact_result_rounded_to_float32_then_fmt(fmt, shape):
    """The default model Exact(float32); the reference is Fractions + MPFR."""
    from fractions import Fraction
    try:
        from .reference import ref_round
    except ImportError:
        from reference import ref_round
    m, k, n = shape
    scale = 2.0 ** RNG.integers(-6, 6, (m, k))
    a = mpgrad.tensor(RNG.standard_normal((m, k)) * scale, dtype=fmt)
    b = mpgrad.tensor(RNG.standard_normal((k, n)), dtype=fmt)
    if k > 1:  # a cancelling pair: the exact sum must not lose the small terms
        a = mpgrad.tensor(np.concatenate([[[96.0] + [-96.0] + [0.0] * (k - 2)]] * m) +
                          a.to_float64(), dtype=fmt)
    A, B = a.to_float64(), b.to_float64()
    fmt_ = mpgrad.as_format(fmt)
    want = [[ref_round(ref_round(sum((Fraction(A[i, j]) * Fraction(B[j, c]) for j in range(k)),
                                     Fraction(0)), mpgrad.float32, "nearest_even"),
                       fmt_, "nearest_even") for c in range(n)]
            for i in range(m)]
    got = (a @ b).to_float64().tolist()
    assert got == want


@pytest.mark.parametrize("model", [Sequential(), hardware.H100_FP16, Sequential("float16")],
                         ids=["seq32", "h100", "seq16"])
def test_batched_matmul_with_a_model(model):
    """Each matrix of a broadcast batch is reduced by the model, as the 2-D reference."""
    a = mpgrad.tensor(RNG.standard_normal((2, 1, 3, 70)), dtype="fp16")
    b = mpgrad.tensor(RNG.standard_normal((4, 70, 2)), dtype="fp16")
    got = mpgrad.matmul(a, b, accumulate=model).to_float64()
    assert got.shape == (2, 4, 3, 2)
    for i in range(2):
        for j in range(4):
            want = matmul_model(a.to_float64()[i, 0], b.to_float64()[j], model)
            assert got[i, j].tolist() == mpgrad.to_float64(mpgrad.round_to(want, "fp16")).tolist()


def test_mean_takes_the_model():
    x = mpgrad.ones(4096, dtype="fp16")
    assert mpgrad.mean(x, accumulate=Sequential("float16")).item() == 0.5  # 2048 / 4096
    assert mpgrad.mean(x).item() == 1.0
    with mpgrad.use_policy(mpgrad.Policy("f16", "f16", "f16", accumulate=Sequential("f16"))):
        assert mpgrad.mean(x).item() == 0.5


def test_backward_broadcast_sum_follows_the_policy_model():
    """A bias broadcast over 4096 rows: its gradient is a sum over the rows, reduced by the
    model the forward op ran under (float16 swamping stops at 2048), not the default."""
    bias = mpgrad.zeros(1, dtype="fp16", requires_grad=True)
    x = mpgrad.zeros(4096, dtype="fp16")
    with mpgrad.use_policy(mpgrad.Policy("f16", "f16", "f16", accumulate=Sequential("f16"))):
        y = x + bias
    y.backward(mpgrad.ones(4096, dtype="fp16"))
    assert bias.grad.item() == 2048.0
    bias.grad = None
    (x + bias).backward(mpgrad.ones(4096, dtype="fp16"))
    assert bias.grad.item() == 4096.0
