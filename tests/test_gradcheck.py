"""Every differentiable op's backward against central finite differences, in float64.

Inputs are chosen away from kinks (relu and abs at 0, maximum/minimum ties, clamp bounds,
the softplus threshold); the conventions at kinks and ties are checked separately with
hand-derived values. mpgrad.testing.check_grads itself is checked to fail on wrong gradients.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import mpgrad
from mpgrad.testing import assert_bits_equal, check_grads

RNG = np.random.default_rng(20240601)


def t64(values) -> mpgrad.Tensor:
    return mpgrad.tensor(np.asarray(values, dtype=np.float64), dtype="float64")


def rand64(*shape, low=-2.0, high=2.0) -> mpgrad.Tensor:
    return t64(RNG.uniform(low, high, size=shape))


def away_from_zero(*shape, low=0.3, high=2.0) -> mpgrad.Tensor:
    """Values with |x| in [low, high] and random signs: no kink at 0 within eps."""
    mag = RNG.uniform(low, high, size=shape)
    return t64(mag * RNG.choice([-1.0, 1.0], size=shape))


def positive(*shape, low=0.3, high=2.5) -> mpgrad.Tensor:
    return t64(RNG.uniform(low, high, size=shape))


def grad_of(fn, *inputs, seed=None):
    """The gradients of sum(fn(*inputs)) (or of sum(fn * w) with w given) as float64 arrays."""
    leaves = [mpgrad.tensor(x.numpy(), requires_grad=True) for x in inputs]
    out = fn(*leaves)
    loss = out.sum() if seed is None else (out * t64(seed)).sum()
    loss.backward()
    return [None if x.grad is None else x.grad.to_float64() for x in leaves]


# --- check_grads itself ---------------------------------------------------------------------

def test_check_grads_passes_on_correct_gradient():
    check_grads(lambda x, y: mpgrad.exp(x) * y + 1.0, rand64(3), rand64(2, 3))


@pytest.mark.parametrize("fn", [
    lambda x, y: x * y + x, lambda x, y: mpgrad.exp(x) + x, lambda x, y: x + (x * y) * 3.0,
    lambda x, y: mpgrad.tanh(x * y) * x,
], ids=["x*y+x", "exp(x)+x", "x+(x*y)*3", "tanh(x*y)*x"])
def test_input_used_directly_and_through_another_op(fn):
    # x reaches the output directly and through a deeper path (a residual connection)
    check_grads(fn, rand64(3), rand64(3))


def test_check_grads_detects_wrong_gradient_and_names_input_and_element():
    x, y = rand64(2, 2), rand64(2, 2)
    # x * y.detach(): the reverse mode misses d/dy entirely, finite differences do not.
    with pytest.raises(AssertionError) as info:
        check_grads(lambda a, b: a * b.detach(), x, y)
    message = str(info.value)
    assert "input 1" in message and "(0, 0)" in message
    assert "reverse mode gives 0.0" in message and "central differences give" in message


def test_check_grads_detects_scaled_gradient_via_hook():
    def doubled(x):
        y = x * 1.0
        if y.requires_grad:
            y.register_hook(lambda g: g * 2.0)
        return mpgrad.exp(y)
    with pytest.raises(AssertionError, match="input 0"):
        check_grads(doubled, rand64(3))


def test_check_grads_requires_float64_tensors():
    with pytest.raises(TypeError, match="float64"):
        check_grads(mpgrad.exp, mpgrad.tensor(np.ones(2, np.float32)))
    with pytest.raises(TypeError, match="Tensor"):
        check_grads(mpgrad.exp, np.ones(2))
    with pytest.raises(TypeError, match="must return"):
        check_grads(lambda x: x.to_float64(), rand64(2))


def test_check_grads_does_not_touch_the_inputs():
    x = rand64(3)
    check_grads(mpgrad.tanh, x)
    assert x.grad is None and not x.requires_grad


def test_assert_bits_equal():
    a = mpgrad.tensor(np.array([1.0, np.nan, -0.0]), dtype="float16")
    assert_bits_equal(a, a.numpy().copy())
    pattern = r"(?s)1 of 3 float16 elements differ.*at \(2,\): -0.0 \(0x8000\) vs 0.0"
    with pytest.raises(AssertionError, match=pattern):
        assert_bits_equal(a, mpgrad.tensor(np.array([1.0, np.nan, 0.0]), dtype="float16"))
    negative_nan = np.array([1.0, -np.nan, -0.0], np.float16)  # NaN with the sign bit set
    with pytest.raises(AssertionError, match=r"\(1,\)"):
        assert_bits_equal(a, negative_nan)
    with pytest.raises(AssertionError, match="formats differ: float16 vs bfloat16"):
        assert_bits_equal(a, a.to("bfloat16"))
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_bits_equal(a, a[:2])
    # an array in the tensor's storage dtype is read in the tensor's format (tf32 here)
    t = mpgrad.tensor([1.0, 2.0], dtype="tf32")
    assert_bits_equal(t, np.array([1.0, 2.0], np.float32))
    with pytest.raises(AssertionError, match="tf32"):
        assert_bits_equal(t, np.array([1.0, 1 + 2**-20], np.float32))
    with pytest.raises(AssertionError, match=r"at \(\): 1.0 \(0x3c00\) vs 2.0 \(0x4000\)"):
        assert_bits_equal(np.float16(1.0), np.float16(2.0))


# --- elementwise ---------------------------------------------------------------------------

BINARY = {
    "add": mpgrad.add, "sub": mpgrad.sub, "mul": mpgrad.mul, "div": mpgrad.div,
    "maximum": mpgrad.maximum, "minimum": mpgrad.minimum,
    "operators": lambda a, b: (a + b) * a - b / (a - 3.5) + 2.0 * b - (1.0 - a) / 0.5,
}


def grid(*shape, offset=0.0) -> mpgrad.Tensor:
    """Values +-(k/10 + offset), k in 5..19: with offsets 0 and 0.05 no two values tie."""
    mag = RNG.integers(5, 20, size=shape) / 10 + offset
    return t64(mag * RNG.choice([-1.0, 1.0], size=shape))


def shape_id(shapes) -> str:
    return "x".join(str(s).replace(" ", "") for s in shapes)


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("shapes", [((2, 3), (2, 3)), ((3, 1), (1, 4)), ((), (2, 3)),
                                    ((2, 3), ()), ((4,), (2, 3, 4)), ((2, 1, 3), (4, 1))],
                         ids=shape_id)
def test_binary_with_broadcasting(name, shapes):
    # a and b never tie (maximum/minimum) and b stays >= 0.55 away from 0 (div).
    check_grads(BINARY[name], grid(*shapes[0]), grid(*shapes[1], offset=0.05))


@pytest.mark.parametrize("fn", [
    lambda x: x * 2.5, lambda x: 2.5 * x, lambda x: 2.5 / x, lambda x: x / 2.5,
    lambda x: 1.0 - x, lambda x: x - 1.0, lambda x: x + 3, lambda x: np.float64(3.0) * x,
], ids=["x*c", "c*x", "c/x", "x/c", "c-x", "x-c", "x+int", "npscalar*x"])
def test_binary_with_python_numbers(fn):
    check_grads(fn, away_from_zero(2, 3))


UNARY = {
    "neg": (lambda x: -x, away_from_zero),
    "abs": (mpgrad.abs, away_from_zero),
    "sqrt": (mpgrad.sqrt, positive),
    "exp": (mpgrad.exp, rand64),
    "log": (mpgrad.log, positive),
    "tanh": (mpgrad.tanh, rand64),
    "sigmoid": (mpgrad.sigmoid, lambda *s: rand64(*s, low=-4, high=4)),
    "erf": (mpgrad.erf, rand64),
    "relu": (mpgrad.relu, away_from_zero),
    "gelu": (mpgrad.gelu, lambda *s: rand64(*s, low=-3, high=3)),
    "gelu_tanh": (lambda x: mpgrad.gelu(x, approximate="tanh"),
                  lambda *s: rand64(*s, low=-3, high=3)),
    "silu": (mpgrad.silu, lambda *s: rand64(*s, low=-4, high=4)),
    "softplus": (mpgrad.softplus, lambda *s: rand64(*s, low=-5, high=5)),
    "softplus_beta": (lambda x: mpgrad.softplus(x, beta=2.0, threshold=5.0),
                      lambda *s: rand64(*s, low=-2, high=2)),
    "cast_f64": (lambda x: mpgrad.cast(x, "float64"), rand64),
    "method_chain": (lambda x: (x.exp() * x.tanh()).sum(axis=0), rand64),
}


@pytest.mark.parametrize("name", UNARY)
def test_unary(name):
    fn, make = UNARY[name]
    check_grads(fn, make(2, 3))


def test_softplus_both_branches():
    # beta * x > threshold takes the linear branch (derivative 1), the rest log(1 + exp).
    x = t64([-4.0, -0.5, 0.7, 3.0, 25.0, 40.0])
    check_grads(mpgrad.softplus, x)
    x2 = t64([-1.5, 0.25, 2.0, 6.0, 11.0])  # beta=2, threshold=20: linear where x > 10
    check_grads(lambda v: mpgrad.softplus(v, beta=2.0, threshold=20.0), x2)
    (g,) = grad_of(lambda v: mpgrad.softplus(v, beta=2.0, threshold=20.0), x2)
    assert g[-1] == 1.0  # the linear branch, exactly
    expected = [1 / (1 + math.exp(-2 * v)) for v in x2.to_float64()[:-1]]
    np.testing.assert_allclose(g[:-1], expected, rtol=1e-14)


@pytest.mark.parametrize("exponent", [2, 3, 0.5, -1, 1.5, -2.5])
def test_pow(exponent):
    make = positive if exponent in (0.5, 1.5, -2.5) else away_from_zero
    check_grads(lambda x: x ** exponent, make(2, 3))
    check_grads(lambda x: mpgrad.pow(x, exponent), make(4))


@pytest.mark.parametrize("bounds", [dict(min=-0.5), dict(max=0.7), dict(min=-0.5, max=0.7)])
def test_clamp(bounds):
    # values stay >= 0.05 away from both bounds
    x = t64([-1.9, -0.8, -0.45, -0.1, 0.2, 0.65, 0.75, 1.3])
    check_grads(lambda v: mpgrad.clamp(v, **bounds), x)


def test_where():
    cond = np.array([[True, False, True], [False, False, True]])
    a, b = rand64(2, 3), rand64(2, 3)
    check_grads(lambda x, y: mpgrad.where(cond, x, y), a, b)
    check_grads(lambda x, y: mpgrad.where(cond[0], x, y), rand64(2, 3), rand64(1, 3))
    check_grads(lambda x: mpgrad.where(cond, x * x, 0.5), a)
    check_grads(lambda x: mpgrad.where(x > 0, x, -2.0 * x), away_from_zero(2, 3))


def test_cast_through_float32_is_straight_through():
    x = rand64(5)
    # The derivative of round32 is taken as 1, but the gradient crossing the float32 tensor
    # is itself rounded to float32 (nearest even; NumPy's float64 -> float32 conversion is
    # IEEE's), then widened exactly: w reaches x as round32(w).
    w = RNG.standard_normal(5)
    (g,) = grad_of(lambda v: v.to("float32").to("float64"), x, seed=w)
    np.testing.assert_array_equal(g, w.astype(np.float32).astype(np.float64))
    (g,) = grad_of(lambda v: v.to("float32").to("float64"), x, seed=[1.0, -2.0, 0.5, 3.0, 1.0])
    np.testing.assert_array_equal(g, [1.0, -2.0, 0.5, 3.0, 1.0])
    # Finite differences see round32's steps (ulp ~ 1.2e-7): a coarse eps still agrees.
    check_grads(lambda v: v.to("float32").to("float64"), x, eps=1e-3, rtol=1e-3)
    check_grads(lambda v: mpgrad.exp(mpgrad.cast(v, "float32")).to("float64"), x,
                eps=1e-3, rtol=1e-3)


# --- shape ops ------------------------------------------------------------------------------

SHAPE = {
    "reshape": (lambda x: x.reshape(3, 4), (2, 6)),
    "reshape_minus1": (lambda x: mpgrad.reshape(x, (-1, 2)), (2, 3, 2)),
    "transpose": (lambda x: x.T, (2, 3)),
    "transpose_axes": (lambda x: mpgrad.transpose(x, (1, 2, 0)), (2, 3, 4)),
    "permute": (lambda x: x.permute(2, 0, 1), (2, 3, 4)),
    "broadcast_to": (lambda x: mpgrad.broadcast_to(x, (2, 3, 4)), (3, 1)),
    "expand": (lambda x: x.expand((4, 3)), (3,)),
    "expand_scalar": (lambda x: mpgrad.expand(x, (2, 2)), ()),
    "slice": (lambda x: x[1:, ::2], (3, 5)),
    "slice_negative_step": (lambda x: x[::-2, 1], (5, 3)),
    "ellipsis_none": (lambda x: x[..., None, 0], (2, 3, 4)),
    "int_array": (lambda x: x[np.array([3, 0, 1])], (4, 2)),
    "int_array_repeated": (lambda x: x[np.array([0, 2, 0, 0, 2])], (4,)),
    "int_array_2d_repeated": (lambda x: x[np.array([0, 1, 0, 0]), np.array([2, 2, 2, 1])],
                              (2, 3)),
    "int_array_and_slice": (lambda x: x[np.array([1, 1]), 1:], (3, 4)),
    "bool_mask": (lambda x: x[np.array([[True, False, True], [False, True, True]])], (2, 3)),
    "bool_mask_rows": (lambda x: x[np.array([True, False, True])], (3, 2)),
    "sum_all": (lambda x: x.sum(), (2, 3)),
    "sum_axis": (lambda x: mpgrad.sum(x, axis=1), (2, 3, 4)),
    "sum_negative_axis": (lambda x: mpgrad.sum(x, axis=-1), (2, 3, 4)),
    "sum_tuple": (lambda x: mpgrad.sum(x, axis=(0, 2)), (2, 3, 4)),
    "sum_keepdims": (lambda x: mpgrad.sum(x, axis=(0, 2), keepdims=True), (2, 3, 4)),
    "sum_none_keepdims": (lambda x: mpgrad.sum(x, keepdims=True), (2, 3)),
    "mean_all": (lambda x: x.mean(), (2, 3)),
    "mean_axis": (lambda x: mpgrad.mean(x, axis=0), (3, 4)),
    "mean_tuple_keepdims": (lambda x: mpgrad.mean(x, axis=(1, 2), keepdims=True), (2, 3, 4)),
}


@pytest.mark.parametrize("name", SHAPE)
def test_shape_and_reduction(name):
    fn, shape = SHAPE[name]
    check_grads(fn, rand64(*shape))


def test_index_add():
    # getitem's VJP is itself differentiable: zeros with g added at index (repeats summed).
    check_grads(lambda g: mpgrad.index_add((4,), np.array([0, 2, 0]), g), rand64(3))
    check_grads(lambda g: mpgrad.index_add((2, 3), (slice(None), np.array([1, 1])), g),
                rand64(2, 2))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concatenate(axis):
    shapes = {0: [(1, 3), (2, 3), (3, 3)], 1: [(2, 1), (2, 2), (2, 4)],
              -1: [(2, 1), (2, 2), (2, 4)]}[axis]
    check_grads(lambda *xs: mpgrad.concatenate(xs, axis=axis), *(rand64(*s) for s in shapes))
    # one input used twice
    check_grads(lambda a, b: mpgrad.concatenate([a, b, a], axis=axis) * 1.5,
                rand64(*shapes[1]), rand64(*shapes[1]))


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_stack(axis):
    check_grads(lambda a, b, c: mpgrad.stack([a, b, c], axis=axis), rand64(2, 3),
                rand64(2, 3), rand64(2, 3))


@pytest.mark.parametrize("shapes", [((2, 3), (3, 4)), ((3,), (3, 2)), ((2, 3), (3,)),
                                    ((3,), (3,)), ((2, 2, 3), (3, 4)), ((2, 3), (2, 3, 2)),
                                    ((2, 1, 2, 3), (3, 3, 2))], ids=shape_id)
def test_matmul(shapes):
    check_grads(mpgrad.matmul, rand64(*shapes[0]), rand64(*shapes[1]))
    check_grads(lambda a, b: a @ b, rand64(*shapes[0]), rand64(*shapes[1]))


def test_composite_graph():
    def f(x, y):
        h = mpgrad.tanh((x.reshape(2, 3, 1) * y.reshape(1, 3, 2)).sum(axis=1))
        return mpgrad.concatenate([mpgrad.softplus(h), h[np.array([1, 1])] ** 2],
                                  axis=0).mean(axis=1)
    check_grads(f, rand64(2, 3), rand64(3, 2))


# --- conventions at kinks and ties (hand-derived) --------------------------------------------

def test_maximum_minimum_tie_splits_gradient_in_halves():
    a, b = t64([1.5, 2.0, -1.0]), t64([1.5, 1.0, 3.0])
    w = np.array([4.0, 2.0, 6.0])
    ga, gb = grad_of(mpgrad.maximum, a, b, seed=w)
    np.testing.assert_array_equal(ga, [2.0, 2.0, 0.0])
    np.testing.assert_array_equal(gb, [2.0, 0.0, 6.0])
    ga, gb = grad_of(mpgrad.minimum, a, b, seed=w)
    np.testing.assert_array_equal(ga, [2.0, 0.0, 6.0])
    np.testing.assert_array_equal(gb, [2.0, 2.0, 0.0])


def test_maximum_of_a_tensor_with_itself_has_gradient_one():
    x = t64([-1.0, 0.0, 2.5])
    for op in (mpgrad.maximum, mpgrad.minimum):
        (g,) = grad_of(lambda v: op(v, v), x, seed=[3.0, 5.0, 7.0])
        np.testing.assert_array_equal(g, [3.0, 5.0, 7.0])  # halves 1.5 + 1.5, ...


def test_maximum_tie_with_broadcast_scalar():
    # maximum(x, 0) against a Python number: the tie at x = 0 gives x half the gradient.
    (g,) = grad_of(lambda v: mpgrad.maximum(v, 0.0), t64([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(g, [0.0, 0.5, 1.0])


def test_relu_and_abs_derivative_at_zero_is_zero():
    x = t64([-2.0, -0.0, 0.0, 3.0])
    (g,) = grad_of(mpgrad.relu, x)
    np.testing.assert_array_equal(g, [0.0, 0.0, 0.0, 1.0])
    (g,) = grad_of(mpgrad.abs, x)
    np.testing.assert_array_equal(g, [-1.0, 0.0, 0.0, 1.0])


def test_clamp_gradient_passes_at_the_bounds():
    # As torch.clamp: the gradient flows where min <= x <= max, bounds included.
    x = t64([-1.0, -0.5, 0.0, 0.7, 1.0])
    (g,) = grad_of(lambda v: mpgrad.clamp(v, -0.5, 0.7), x)
    np.testing.assert_array_equal(g, [0.0, 1.0, 1.0, 1.0, 0.0])
    (g,) = grad_of(lambda v: mpgrad.clamp(v, min=0.0), x)
    np.testing.assert_array_equal(g, [0.0, 0.0, 1.0, 1.0, 1.0])


def test_sqrt_and_pow_derivatives_at_zero():
    zero = t64([0.0])
    assert grad_of(mpgrad.sqrt, zero)[0][0] == math.inf
    assert grad_of(lambda v: v ** 0.5, zero)[0][0] == math.inf
    assert grad_of(lambda v: v ** 2, zero)[0][0] == 0.0
    assert grad_of(lambda v: v ** 1.5, zero)[0][0] == 0.0


def test_where_gives_zero_gradient_to_the_branch_not_taken():
    cond = np.array([True, False, True])
    ga, gb = grad_of(lambda a, b: mpgrad.where(cond, a, b), t64([1.0, 2.0, 3.0]),
                     t64([4.0, 5.0, 6.0]), seed=[2.0, 3.0, 4.0])
    np.testing.assert_array_equal(ga, [2.0, 0.0, 4.0])
    np.testing.assert_array_equal(gb, [0.0, 3.0, 0.0])


def test_getitem_repeated_indices_accumulate():
    (g,) = grad_of(lambda v: v[np.array([0, 2, 0, 0])], t64([1.0, 2.0, 3.0]),
                   seed=[1.0, 10.0, 100.0, 1000.0])
    np.testing.assert_array_equal(g, [1101.0, 0.0, 10.0])


def test_kink_conventions_match_pytorch():
    torch = pytest.importorskip("torch")

    def both(fn_mpgrad, fn_torch, *inputs, seed):
        got = grad_of(fn_mpgrad, *(t64(v) for v in inputs), seed=seed)
        leaves = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in inputs]
        (fn_torch(*leaves) * torch.tensor(seed, dtype=torch.float64)).sum().backward()
        for g, leaf in zip(got, leaves):
            np.testing.assert_array_equal(g, leaf.grad.numpy())

    a, b, w = [1.5, 2.0, -1.0, 0.0], [1.5, 1.0, 3.0, -0.0], [4.0, 2.0, 6.0, 8.0]
    both(mpgrad.maximum, torch.maximum, a, b, seed=w)
    both(mpgrad.minimum, torch.minimum, a, b, seed=w)
    both(lambda x: mpgrad.maximum(x, x), lambda x: torch.maximum(x, x), a, seed=w)
    x, w5 = [-2.0, -0.0, 0.0, 0.7, 3.0], [1.0, 2.0, 3.0, 4.0, 5.0]
    both(mpgrad.relu, torch.relu, x, seed=w5)
    both(mpgrad.abs, torch.abs, x, seed=w5)
    both(lambda v: mpgrad.clamp(v, -2.0, 0.7), lambda v: torch.clamp(v, -2.0, 0.7), x, seed=w5)
    both(lambda v: mpgrad.clamp(v, min=0.0), lambda v: torch.clamp(v, min=0.0), x, seed=w5)
    z = [0.0, 4.0]
    both(mpgrad.sqrt, torch.sqrt, z, seed=[1.0, 1.0])
    for k in (0.5, 1.5, 2, 3, -1):
        both(lambda v: v ** k, lambda v: v ** k, [0.0, 4.0] if k > 0 else [0.5, 4.0],
             seed=[1.0, 1.0])
