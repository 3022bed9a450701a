"""mpgrad.nn.functional: gradients, exact decompositions, autocast/policy formats, torch, errors.

* Gradients: float64 reverse mode against central differences (mpgrad.testing.check_grads).
* Exactness: each function equals its documented sequence of primitives computed step by
  step by an independent reference (exact rationals; exp/log/sqrt at 300 bits by MPFR, each
  step rounded once to the format by tests/reference.py), bit for bit, in float32, float16
  and bfloat16.
* PyTorch CPU float32 (torch 2.13.0): not bit-identical in general (torch's exp is not
  correctly rounded, softmax multiplies by a reciprocal, log_softmax subtracts max + log(sum)
  in one step, layer_norm uses its own moments and rsqrt, sums run in float32 in other
  orders). The bounds asserted are the maxima measured over seeds 0-999 of these shapes
  and data (empirical, not proven); the tests run seeds 0-9. "elementwise": max
  |ulp_distance| per element; "normwise": max |difference| in ulps of the largest reference
  magnitude of the tensor (where outputs cancel, e.g. gradients near zero, an element's
  own ulps say nothing).
  mse_loss's gradient is bit-identical (argued at the test).
"""

from __future__ import annotations

from fractions import Fraction

import gmpy2
import numpy as np
import pytest

import mpgrad
import mpgrad.nn.functional as F
from mpgrad.testing import assert_bits_equal, check_grads

try:
    from .reference import ref_round
except ImportError:
    from reference import ref_round

FORMATS = ["float32", "float16", "bfloat16"]
SEEDS = range(10)


def t64(*shape, seed=0, scale=1.0):
    """A float64 tensor of normal samples."""
    return mpgrad.tensor(np.random.default_rng(seed).standard_normal(shape) * scale,
                         dtype="float64")


def tin(shape, fmt, seed=0, scale=2.0, requires_grad=False):
    """A tensor of normal samples rounded to fmt."""
    v = np.random.default_rng(seed).standard_normal(shape) * scale
    return mpgrad.tensor(v, dtype=fmt, requires_grad=requires_grad)


# --- gradients in float64 -------------------------------------------------------------------

@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_grads_softmax_log_softmax(axis):
    x = t64(3, 4, 2, seed=1, scale=2)
    check_grads(lambda a: F.softmax(a, axis=axis), x)
    check_grads(lambda a: F.log_softmax(a, axis=axis), x)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_grads_cross_entropy(reduction):
    check_grads(lambda a: F.cross_entropy(a, np.array([2, 0, 1, 2]), reduction), t64(4, 3))
    check_grads(lambda a: F.cross_entropy(a, 3, reduction), t64(5, seed=2))
    labels = np.array([[0, 1], [2, 2]])
    check_grads(lambda a: F.cross_entropy(a, labels, reduction), t64(2, 3, 2, seed=3))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_grads_nll_loss(reduction):
    check_grads(lambda a: F.nll_loss(a, np.array([2, 0, 1, 2]), reduction), t64(4, 3))
    check_grads(lambda a: F.nll_loss(a, np.array([[0, 1], [2, 2]]), reduction),
                t64(2, 3, 2, seed=3))


def test_cross_entropy_is_nll_of_log_softmax():
    x = mpgrad.tensor(np.random.default_rng(7).standard_normal((5, 4)), dtype="bf16")
    labels = np.array([3, 0, 1, 1, 2])
    assert_bits_equal(F.cross_entropy(x, labels, "sum"),
                      F.nll_loss(F.log_softmax(x, axis=1), labels, "sum"))
    with pytest.raises(IndexError):
        F.nll_loss(x, np.array([4, 0, 0, 0, 0]))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_grads_mse_loss(reduction):
    check_grads(lambda a, b: F.mse_loss(a, b, reduction), t64(3, 4), t64(3, 4, seed=1))


def test_grads_layer_norm():
    x, w, b = t64(3, 5, seed=4, scale=3), t64(5, seed=5), t64(5, seed=6)
    check_grads(lambda a, c, d: F.layer_norm(a, 5, c, d), x, w, b, rtol=1e-4)
    check_grads(lambda a: F.layer_norm(a, (2, 3), eps=1e-3), t64(2, 2, 3, seed=7), rtol=1e-4)


def test_grads_linear():
    x, w, b = t64(4, 3), t64(2, 3, seed=1), t64(2, seed=2)
    check_grads(F.linear, x, w, b)
    check_grads(lambda a, c: F.linear(a, c), t64(2, 4, 3, seed=3), w)  # batched, no bias


def test_grads_dropout_relu_gelu():
    x = t64(4, 5, seed=8)
    check_grads(lambda a: F.dropout(a, 0.3, rng=11), x)  # an int seed: the same mask each call
    check_grads(F.relu, x)  # no element at the kink
    check_grads(F.gelu, x)
    check_grads(lambda a: F.gelu(a, "tanh"), x)


# --- exact decompositions against an independent reference -----------------------------------

def rr(value, fmt) -> Fraction:
    """The exact value (Fraction, float or mpfr) rounded once to fmt by the reference."""
    if isinstance(value, Fraction):
        value = gmpy2.mpq(value.numerator, value.denominator)
    return Fraction(ref_round(value, mpgrad.as_format(fmt), "nearest_even"))


def mp(name: str, v: Fraction):
    """gmpy2's name(v) at 300 bits, v dyadic (so exact at 300 bits); rounding it once more
    gives the correctly rounded name(v) unless that lies within ~2**-300 of a midpoint."""
    with gmpy2.context(precision=300):
        return getattr(gmpy2, name)(gmpy2.mpq(v.numerator, v.denominator))


def fr(t: mpgrad.Tensor) -> np.ndarray:
    """The exact values as an object array of Fractions."""
    return np.vectorize(Fraction, otypes=[object])(t.to_float64())


def ref_log_softmax_row(row, fmt, log: bool):
    m = max(row)
    z = [rr(v - m, fmt) for v in row]
    e = [rr(mp("exp", zi), fmt) for zi in z]
    s = rr(sum(e), fmt)
    if not log:
        return [rr(ei / s, fmt) for ei in e]
    ls = rr(mp("log", s), fmt)
    return [rr(zi - ls, fmt) for zi in z]


def check_equal(got: mpgrad.Tensor, want, fmt):
    want = np.array(want, dtype=object).reshape(got.shape).astype(np.float64)
    assert_bits_equal(got, mpgrad.tensor(want, dtype=fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_softmax_log_softmax_exact_sequence(fmt):
    x = tin((4, 6), fmt, seed=1)
    rows = fr(x)
    check_equal(F.softmax(x), [ref_log_softmax_row(r, fmt, False) for r in rows], fmt)
    check_equal(F.log_softmax(x), [ref_log_softmax_row(r, fmt, True) for r in rows], fmt)
    # over axis 0: the same as over the last axis of the transpose
    assert_bits_equal(F.log_softmax(x, axis=0), F.log_softmax(x.T).T)


@pytest.mark.parametrize("fmt", FORMATS)
def test_cross_entropy_exact_sequence(fmt):
    x, labels = tin((5, 4), fmt, seed=2), np.array([3, 0, 1, 1, 2])
    picked = [-ref_log_softmax_row(r, fmt, True)[k] for r, k in zip(fr(x), labels)]
    check_equal(F.cross_entropy(x, labels, "none"), picked, fmt)
    check_equal(F.cross_entropy(x, labels, "sum"), [rr(sum(picked), fmt)], fmt)
    check_equal(F.cross_entropy(x, labels), [rr(sum(picked) / len(picked), fmt)], fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_mse_loss_exact_sequence(fmt):
    a, b = tin((3, 7), fmt, seed=3), tin((3, 7), fmt, seed=4)
    sq = [rr(rr(u - v, fmt) ** 2, fmt) for u, v in zip(fr(a).ravel(), fr(b).ravel())]
    check_equal(F.mse_loss(a, b, "none"), sq, fmt)
    check_equal(F.mse_loss(a, b, "sum"), [rr(sum(sq), fmt)], fmt)
    check_equal(F.mse_loss(a, b), [rr(sum(sq) / len(sq), fmt)], fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_layer_norm_exact_sequence(fmt):
    x, w, b = tin((3, 8), fmt, seed=5, scale=3), tin((8,), fmt, seed=6), tin((8,), fmt, seed=7)
    eps = rr(Fraction(1e-5), fmt)  # the Python number 1e-5, rounded to the format
    want = []
    for row, wv, bv in zip(fr(x), [fr(w)] * 3, [fr(b)] * 3):
        mu = rr(sum(row) / len(row), fmt)
        d = [rr(v - mu, fmt) for v in row]
        var = rr(sum(rr(di * di, fmt) for di in d) / len(d), fmt)
        r = rr(mp("sqrt", rr(var + eps, fmt)), fmt)
        want.append([rr(rr(rr(di / r, fmt) * wi, fmt) + bi, fmt)
                     for di, wi, bi in zip(d, wv, bv)])
    check_equal(F.layer_norm(x, 8, w, b), want, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_linear_exact_sequence(fmt):
    x, w, b = tin((3, 5), fmt, seed=8), tin((4, 5), fmt, seed=9), tin((4,), fmt, seed=10)
    want = [[rr(rr(sum(xi * wi for xi, wi in zip(row, wrow)), fmt) + bj, fmt)
             for wrow, bj in zip(fr(w), fr(b))] for row in fr(x)]
    check_equal(F.linear(x, w, b), want, fmt)


def test_dropout_sequence():
    x = tin((50, 40), "float16", seed=11)
    y = F.dropout(x, 0.3, rng=5)
    keep = np.random.default_rng(5).random(x.shape) >= 0.3  # the documented draw
    scale = mpgrad.round_to(np.float64(1 / 0.7), "float16").astype(np.float64)
    want = x.to_float64() * np.where(keep, scale, 0.0)  # exact products (-x * 0 = -0), rounded
    assert_bits_equal(y, mpgrad.tensor(want, dtype="float16"))
    assert 0.6 < keep.mean() < 0.8
    assert F.dropout(x, 0.3, training=False) is x and F.dropout(x, 0.0) is x
    assert_bits_equal(F.dropout(x, 0.3, rng=5), y)  # the same seed, the same mask


# --- formats under autocast and policies ------------------------------------------------------

@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_autocast_runs_losses_and_norms_in_float32(low):
    x, y = tin((4, 6), low, seed=1, requires_grad=True), tin((4, 6), low, seed=2)
    labels = np.array([0, 5, 2, 3])
    calls = {
        "softmax": lambda a: F.softmax(a),
        "log_softmax": lambda a: F.log_softmax(a),
        "cross_entropy": lambda a: F.cross_entropy(a, labels),
        "mse_loss": lambda a: F.mse_loss(a, y),
        "layer_norm": lambda a: F.layer_norm(a, 6),
    }
    for name, call in calls.items():
        x.grad = None
        with mpgrad.autocast(low):
            out = call(x)
        assert out.dtype == mpgrad.float32, name
        # the same bits as the function on float32 inputs, outside autocast
        assert_bits_equal(out, call(x.to("float32")))
        out.sum().backward()
        assert x.grad.dtype == mpgrad.as_format(low), name


def test_autocast_keeps_float64_and_policy_uses_its_compute_format():
    x = tin((2, 3), "float64", seed=3)
    with mpgrad.autocast("float16"):
        assert F.softmax(x).dtype == mpgrad.float64
    with mpgrad.use_policy("p=f32,c=bf16,o=f32"):
        assert F.log_softmax(tin((2, 3), "float32")).dtype == mpgrad.bfloat16
        assert F.mse_loss(tin((3,), "float32"), tin((3,), "float16")).dtype == mpgrad.bfloat16
    with mpgrad.use_policy(mpgrad.Policy(compute="bf16", strict=True)):
        with pytest.raises(TypeError, match="strict"):
            F.softmax(tin((2, 3), "float32"))


def test_linear_refuses_mixed_formats_outside_a_policy():
    """An fp16 layer fed float64 data: refused (promotion would compute it all in float64),
    as torch's F.linear refuses mixed dtypes; autocast or a Policy casts instead."""
    w, b = tin((4, 6), "float16", seed=4), tin((4,), "float16", seed=5)
    x64, x16 = tin((3, 6), "float64", seed=6), tin((3, 6), "float16", seed=6)
    calls = [("float64 != float16", lambda: F.linear(x64, w, b)),
             ("float16 != float32", lambda: F.linear(x16, w, b.to("float32"))),
             ("bfloat16 != float16", lambda: F.linear(x16.to("bfloat16"), w)),
             ("float16 != float32", lambda: mpgrad.nn.Linear(6, 4, rng=0)(x16))]
    for names, call in calls:
        with pytest.raises(RuntimeError, match=f"same format, but got: {names};") as info:
            call()
        assert "x.to(" in str(info.value) and "use_policy" in str(info.value)
    assert F.linear(x16, w, b).dtype == mpgrad.float16
    with mpgrad.autocast("float16"):
        assert_bits_equal(F.linear(x64, w, b), F.linear(x16, w, b))
    with mpgrad.use_policy("float32"):
        assert F.linear(x64, w, b).dtype == mpgrad.float32


def test_torch_refuses_the_same_mixed_linears():
    torch = pytest.importorskip("torch")
    h, d = torch.ones(4, 6, dtype=torch.float16), torch.ones(3, 6, dtype=torch.float64)
    for call in (lambda: torch.nn.functional.linear(d, h),
                 lambda: torch.nn.functional.linear(h[:3], h, torch.ones(4)),
                 lambda: torch.nn.Linear(6, 4)(h[:3])):
        with pytest.raises(RuntimeError, match="same dtype"):
            call()


# --- PyTorch CPU float32 -----------------------------------------------------------------------

def elementwise_ulps(got, want) -> int:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    return int(np.max(np.abs(mpgrad.ulp_distance(got, want, "float32"))))


def normwise_ulps(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / mpgrad.ulp(np.max(np.abs(want)), "float32"))


def pair(shape, seed, scale=3.0):
    torch = pytest.importorskip("torch")
    v = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
    return mpgrad.tensor(v, requires_grad=True), torch.tensor(v, requires_grad=True)


def grad_pair(shape, seed):
    torch = pytest.importorskip("torch")
    g = np.random.default_rng(seed + 1000).standard_normal(shape).astype(np.float32)
    return mpgrad.tensor(g), torch.tensor(g)


@pytest.mark.parametrize("name, fwd, bwd", [("softmax", 5, 20), ("log_softmax", 1, 7)])
def test_softmax_vs_torch(name, fwd, bwd):
    torch = pytest.importorskip("torch")
    for seed in SEEDS:
        m, t = pair((8, 33), seed)
        ym, yt = getattr(F, name)(m), getattr(torch, name)(t, dim=-1)
        gm, gt = grad_pair((8, 33), seed)
        ym.backward(gm), yt.backward(gt)
        # softmax: elementwise (no cancellation); log_softmax: its small outputs cancel
        measure = elementwise_ulps if name == "softmax" else normwise_ulps
        assert measure(ym.numpy(), yt.detach().numpy()) <= fwd
        assert normwise_ulps(m.grad.numpy(), t.grad.numpy()) <= bwd


def test_cross_entropy_vs_torch():
    torch = pytest.importorskip("torch")
    for seed in SEEDS:
        m, t = pair((8, 33), seed)
        labels = np.random.default_rng(seed).integers(0, 33, 8)
        lm, lt = F.cross_entropy(m, labels), torch.nn.functional.cross_entropy(
            t, torch.tensor(labels))
        lm.backward(), lt.backward()
        assert elementwise_ulps(lm.numpy(), lt.detach().numpy()) <= 2
        assert normwise_ulps(m.grad.numpy(), t.grad.numpy()) <= 4


def test_nll_loss_vs_torch():
    """reduction='none' picks and negates (exact): bit for bit; the mean within an ulp."""
    torch = pytest.importorskip("torch")
    m, t = pair((8, 33), SEEDS[0])
    labels = np.random.default_rng(0).integers(0, 33, 8)
    none = F.nll_loss(m, labels, "none")
    want = torch.nn.functional.nll_loss(t, torch.tensor(labels), reduction="none")
    assert_bits_equal(none, mpgrad.tensor(want.detach().numpy()))
    lm = F.nll_loss(m, labels)
    lt = torch.nn.functional.nll_loss(t, torch.tensor(labels))
    lm.backward(), lt.backward()
    assert elementwise_ulps(lm.numpy(), lt.detach().numpy()) <= 1
    assert_bits_equal(m.grad, mpgrad.tensor(t.grad.numpy()))


def test_mse_loss_vs_torch():
    torch = pytest.importorskip("torch")
    for seed in SEEDS:
        a, at = pair((8, 33), seed)
        b, bt = pair((8, 33), seed + 500)
        lm, lt = F.mse_loss(a, b), torch.nn.functional.mse_loss(at, bt)
        lm.backward(), lt.backward()
        assert elementwise_ulps(lm.numpy(), lt.detach().numpy()) <= 3
        # Bit-identical: torch computes fl(fl(2/N) * fl(a - b)) (times grad 1); mpgrad's chain
        # gives fl(1/N) * d twice, added: 2 fl(fl(1/N) d) = fl(2 fl(1/N) d), and
        # fl(2/N) = 2 fl(1/N) (scaling by 2 is exact away from overflow and underflow).
        assert_bits_equal(a.grad.numpy(), at.grad.numpy())
        assert_bits_equal(b.grad.numpy(), bt.grad.numpy())


def test_layer_norm_vs_torch():
    torch = pytest.importorskip("torch")
    for seed in SEEDS:
        x, xt = pair((6, 40), seed)
        w, wt = pair((40,), seed + 1, 1.0)
        b, bt = pair((40,), seed + 2, 1.0)
        ym, yt = F.layer_norm(x, 40, w, b), torch.nn.functional.layer_norm(xt, (40,), wt, bt)
        gm, gt = grad_pair((6, 40), seed)
        ym.backward(gm), yt.backward(gt)
        assert normwise_ulps(ym.numpy(), yt.detach().numpy()) <= 4
        assert normwise_ulps(x.grad.numpy(), xt.grad.numpy()) <= 5
        assert normwise_ulps(w.grad.numpy(), wt.grad.numpy()) <= 4
        assert normwise_ulps(b.grad.numpy(), bt.grad.numpy()) <= 1.5


# --- errors ------------------------------------------------------------------------------------

def test_errors():
    x = tin((3, 4), "float32")
    with pytest.raises(IndexError, match="label 4 is out of range for 4 classes"):
        F.cross_entropy(x, np.array([0, 4, 1]))
    with pytest.raises(IndexError, match="label -1"):
        F.cross_entropy(x, [0, -1, 1])
    with pytest.raises(TypeError, match="integer class indices, got dtype float64"):
        F.cross_entropy(x, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="integer class indices, got dtype bool"):
        F.cross_entropy(x, np.array([True, False, True]))
    with pytest.raises(TypeError, match="not an mpgrad Tensor"):
        F.cross_entropy(x, mpgrad.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"need labels of shape \(3,\)"):
        F.cross_entropy(x, np.array([0, 1]))
    with pytest.raises(ValueError, match="reduction must be one of"):
        F.cross_entropy(x, [0, 1, 2], reduction="avg")
    with pytest.raises(ValueError, match=r"input shape \(3, 4\) and target shape \(4,\)"):
        F.mse_loss(x, tin((4,), "float32"))
    with pytest.raises(TypeError, match="target must be an mpgrad Tensor"):
        F.mse_loss(x, np.zeros((3, 4)))
    with pytest.raises(ValueError, match="reduction"):
        F.mse_loss(x, x, reduction="max")
    with pytest.raises(ValueError, match="does not end in normalized_shape"):
        F.layer_norm(x, 3)
    with pytest.raises(ValueError, match="weight has shape"):
        F.layer_norm(x, 4, tin((3,), "float32"))
    with pytest.raises(ValueError, match="does not end in in_features = 5"):
        F.linear(x, tin((2, 5), "float32"))
    with pytest.raises(ValueError, match="bias has shape"):
        F.linear(x, tin((2, 4), "float32"), tin((3,), "float32"))
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        F.softmax(x, axis=2)
    for p in (-0.1, 1.0, 1.5, True):
        with pytest.raises(ValueError, match=r"lie in \[0, 1\)"):
            F.dropout(x, p)
