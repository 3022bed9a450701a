"""The float64-BLAS path of Exact(float32) matmuls (accumulate.drivers, an error bound that
decides each rounding) gives exactly the bits and RoundingStats of the error-free path."""

import numpy as np
import pytest

import mpgrad
from mpgrad.accumulate import Exact, matmul_model
from mpgrad.numerics.exact_matmul import exact_matmul


def by_exact_path(a, b):
    with mpgrad.record_rounding() as stats:
        out = mpgrad.round_to(exact_matmul(a, b), "float32")
    return out, stats


def by_model(a, b, max_bits):
    with mpgrad.record_rounding() as stats:
        out = matmul_model(a, b, Exact(mpgrad.float32), storage=True, max_bits=max_bits)
    return out, stats


def f32(x):
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def cases():
    rng = np.random.default_rng(7)
    yield "normal", f32(rng.standard_normal((40, 300))), f32(rng.standard_normal((300, 30)))
    # exactly representable sums (small integers): every result exact, no flag
    yield "integers", rng.integers(-8, 9, (20, 64)).astype(float), \
        rng.integers(-8, 9, (64, 20)).astype(float)
    # near-cancelling sums: b's columns nearly orthogonal to a's rows
    a = f32(rng.standard_normal((16, 50)))
    b = f32(np.linalg.qr(rng.standard_normal((50, 50)))[0][:, :16])
    yield "cancelling", a, np.concatenate([b, f32(a.T[:, :8])], axis=1)
    # sums that land on float32 ties: two terms 1 + 2**-24
    yield "ties", np.array([[1.0, 2.0 ** -24], [1.0, -2.0 ** -24]]), np.ones((2, 3))
    # subnormal and zero results, -0 inputs, zero rows and columns
    tiny = np.array([[2.0 ** -149, -2.0 ** -149, 0.0], [-0.0, -0.0, -0.0],
                     [2.0 ** -75, 2.0 ** -75, 1.0]])
    yield "tiny", tiny, np.array([[2.0 ** -60, 1.0], [2.0 ** -60, -0.0], [0.0, 0.0]])
    # results overflowing float32
    yield "overflow", np.full((2, 4), 2.0 ** 126), np.full((4, 2), 3.0)
    # bfloat16 values: max_bits 8
    x = rng.standard_normal((64, 128)).astype(mpgrad.bfloat16.storage).astype(np.float64)
    yield "bfloat16", x, x.T.copy()


@pytest.mark.parametrize("name,a,b", list(cases()), ids=[c[0] for c in cases()])
@pytest.mark.parametrize("max_bits", [None, 24])
def test_bound_path_matches_exact_path(name, a, b, max_bits):
    got, got_stats = by_model(a, b, max_bits)
    want, want_stats = by_exact_path(a, b)
    assert np.array_equal(got.view(np.int32), want.view(np.int32))
    assert got_stats == want_stats


def test_random_shapes_and_scales():
    rng = np.random.default_rng(1)
    for _ in range(60):
        m, k, n = rng.integers(1, 40, 3)
        scale = 2.0 ** rng.integers(-140, 120)
        a = f32(rng.standard_normal((m, k)) * scale)
        b = f32(rng.standard_normal((k, n)) * rng.choice([1.0, 2.0 ** -20]))
        a[rng.random(a.shape) < 0.3] = 0.0
        got, got_stats = by_model(a, b, 24)
        want, want_stats = by_exact_path(a, b)
        assert np.array_equal(got.view(np.int32), want.view(np.int32)), (m, k, n, scale)
        assert got_stats == want_stats


def test_the_cases_exercise_both_branches(monkeypatch):
    """A test that cannot fail is a defect: the bound decides every element of the normal
    case, and leaves each of the integer case's (exact, so r inside the interval) to the
    exact sums."""
    from mpgrad.accumulate import drivers
    calls = []
    monkeypatch.setattr(drivers, "exact_sum", lambda x, axis: calls.append(len(x)) or
                        mpgrad.numerics.exact.exact_sum(x, axis=axis))
    _, a, b = next(cases())
    drivers._float32_by_bound(a, b, 24)
    assert calls == []
    _, a, b = list(cases())[1]
    drivers._float32_by_bound(a, b, None)
    assert calls == [np.count_nonzero(np.abs(a) @ np.abs(b))]  # all but the all-zero sums
