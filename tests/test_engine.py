"""The engine's contract: a node carries what decides its backward; one conversion per operand;
composites pick their compute format once; policies parse as jmp's; formats compare by layout."""

import numpy as np
import pytest

import mpgrad
from mpgrad.nn import functional as F


def _erf_grad(forward_ctx, backward_ctx):
    x = mpgrad.tensor([1.5, -0.25, 0.75], dtype="float16", requires_grad=True)
    with forward_ctx():
        y = mpgrad.erf(x * 3).sum()
    with backward_ctx():
        y.backward()
    return x.grad


NONE = __import__("contextlib").nullcontext


@pytest.mark.parametrize("forward", [NONE, lambda: mpgrad.autocast("float16"),
                                     lambda: mpgrad.use_policy("c=f16")],
                         ids=["plain", "autocast", "policy"])
@pytest.mark.parametrize("backward", [lambda: mpgrad.autocast("float16"),
                                      lambda: mpgrad.use_policy("p=f32,c=f32,o=f32"),
                                      lambda: mpgrad.use_policy("c=bf16")],
                         ids=["autocast", "policy32", "policy_bf16"])
def test_backward_does_not_depend_on_where_it_is_called(forward, backward):
    """The VJPs run under the policy the forward ran under, wherever backward() is called."""
    here = _erf_grad(forward, NONE)
    there = _erf_grad(forward, backward)
    assert here.dtype == there.dtype
    mpgrad.testing.assert_bits_equal(here, there)


def test_erf_backward_in_its_forward_format():
    """erf's VJP 2/sqrt(pi)*exp(-x*x)*g computed step by step in float16 (no autocast)."""
    x = mpgrad.tensor([0.5], dtype="float16", requires_grad=True)
    mpgrad.erf(x).sum().backward()
    xs = mpgrad.tensor([0.5], dtype="float16")
    want = 2 / np.sqrt(np.pi) * mpgrad.exp(-(xs * xs)) * mpgrad.tensor([1.0], dtype="float16")
    mpgrad.testing.assert_bits_equal(x.grad, want)


def test_softplus_runs_in_float32_under_autocast():
    """softplus is on autocast's float32 list: every step in float32, as on float32 input."""
    x = mpgrad.tensor([0.3, -2.0, 5.0, 30.0], dtype="float16")
    with mpgrad.autocast("float16"):
        got = mpgrad.softplus(x, beta=0.7)  # x * 0.7 is inexact in float16
    want = mpgrad.softplus(x.to("float32"), beta=0.7)
    assert got.dtype == mpgrad.float32
    mpgrad.testing.assert_bits_equal(got, want)


@pytest.mark.parametrize("fn", [lambda x: mpgrad.gelu(x), lambda x: mpgrad.gelu(x, "tanh"),
                                mpgrad.silu, lambda x: F.layer_norm(x, 4),
                                lambda x: F.softmax(x), lambda x: F.log_softmax(x),
                                lambda x: F.mse_loss(x, x * 0.5),
                                lambda x: F.cross_entropy(x.reshape(1, 4), [2])],
                         ids=["gelu", "gelu_tanh", "silu", "layer_norm", "softmax",
                              "log_softmax", "mse_loss", "cross_entropy"])
def test_composites_under_a_policy_compute_in_its_format(fn):
    """Under use_policy(c=C) a composite equals the same composite on inputs cast to C."""
    x = mpgrad.tensor([0.3, -1.7, 2.2, -0.01], dtype="float32")
    with mpgrad.use_policy("c=bf16"):
        got = fn(x)
    want = fn(x.to("bf16"))
    assert got.dtype == mpgrad.bfloat16
    mpgrad.testing.assert_bits_equal(got, want)


def test_autocast_lists_name_only_implemented_ops():
    from mpgrad.autodiff.policy import AUTOCAST_FLOAT32, AUTOCAST_LOWER
    names = set(AUTOCAST_FLOAT32) | set(AUTOCAST_LOWER)
    public = set(mpgrad.ops.__all__) | set(F.__all__)
    assert names <= public, sorted(names - public)


@pytest.mark.parametrize("ctx", [lambda: mpgrad.use_policy("c=f16"),
                                 lambda: mpgrad.autocast("float16")], ids=["policy", "autocast"])
def test_matmul_rounds_a_numpy_operand_once(ctx):
    """A float64 operand is rounded once to the compute format (float16 here), as mul rounds
    it under a Policy; through float32 it would become the tie 1 + 2**-11, then 1.0."""
    v = 1 + 2.0 ** -11 + 2.0 ** -30  # above float16's midpoint 1 + 2**-11; float32 keeps 2**-11
    b = mpgrad.tensor([[1.0]], dtype="float32")
    with ctx():
        product = mpgrad.matmul(np.array([[v]]), b)
        vector = mpgrad.matmul(np.array([v]), b)
    assert product.dtype == mpgrad.float16
    assert product.item() == vector.item() == 1 + 2.0 ** -10
    with mpgrad.use_policy("c=f16"):
        assert mpgrad.mul(np.array([[v]]), b).item() == 1 + 2.0 ** -10
    assert mpgrad.matmul(b, np.array([[v]])).item() == np.float32(v)


@pytest.mark.parametrize("spec, want", [
    ("c=f16", ("float32", "float16", "float16")),
    ("p=f16,c=bf16", ("float16", "bfloat16", "bfloat16")),
    ("p=bf16", ("bfloat16", "bfloat16", "bfloat16")),
    ("bf16", ("bfloat16", "bfloat16", "bfloat16")),
    ("half", ("float16", "float16", "float16")),
    ("full", ("float32", "float32", "float32")),
    ("params=float32,compute=float16,output=float32", ("float32", "float16", "float32")),
    ("p=f32,c=f16,o=f32", ("float32", "float16", "float32")),
])
def test_policy_parse_follows_jmp(spec, want):
    """jmp.get_policy: params default to f32, compute follows params, output follows compute;
    a bare name sets all three."""
    p = mpgrad.Policy.parse(spec)
    assert (p.param.name, p.compute.name, p.output.name) == want


@pytest.mark.parametrize("spec", ["x=f16", "c=f16,q", "c=f99", ""])
def test_policy_parse_refuses_bad_specs(spec):
    with pytest.raises(ValueError):
        mpgrad.Policy.parse(spec)


def test_formats_compare_by_layout():
    """Two formats with the same layout are the same format, whatever their names."""
    e8m23 = mpgrad.Format.custom(8, 23)
    assert e8m23 == mpgrad.float32 and hash(e8m23) == hash(mpgrad.float32)
    assert mpgrad.Format.custom(5, 10, name="half") == mpgrad.float16
    assert mpgrad.Format.custom(5, 10).storage == np.float16
    assert mpgrad.Format.custom(8, 10) == mpgrad.tf32
    assert mpgrad.Format.custom(5, 10, subnormals=False) != mpgrad.float16


def test_engine_treats_equal_formats_alike():
    """A tensor in a format equal to float32 meets float32 without a cast, and GradScaler
    scales a custom format equal to float16 like float16."""
    a = mpgrad.tensor([1.5, 2.0], dtype=mpgrad.Format.custom(8, 23, name="mine"))
    b = mpgrad.tensor([0.25, 0.5], dtype="float32")
    out = a + b
    assert out.dtype == mpgrad.float32
    assert mpgrad.concatenate([a, b]).dtype == mpgrad.float32


def test_trainer_leaves_the_global_generator_alone():
    """Building and stepping a Trainer does not reseed mpgrad's global generator."""
    from mpgrad.demo.train import Trainer
    mpgrad.manual_seed(123)
    want = mpgrad.randn(4).to_float64()
    mpgrad.manual_seed(123)
    run = Trainer("fp32", features=4, classes=3, hidden=5, seed=0)
    run.step(np.ones((2, 4)), np.array([0, 2]))
    got = mpgrad.randn(4).to_float64()
    assert np.array_equal(got, want)


_CALLS = {
    "exp": lambda x: mpgrad.exp(x), "log": lambda x: mpgrad.log(x * x + 1),
    "pow": lambda x: mpgrad.pow(x, 2.0), "softplus": lambda x: mpgrad.softplus(x),
    "softmax": lambda x: F.softmax(x), "log_softmax": lambda x: F.log_softmax(x),
    "layer_norm": lambda x: F.layer_norm(x, 4), "sum": lambda x: mpgrad.sum(x),
    "mean": lambda x: mpgrad.mean(x), "mse_loss": lambda x: F.mse_loss(x, x * 0.5),
    "cross_entropy": lambda x: F.cross_entropy(x.reshape(1, 4), [1]),
    "nll_loss": lambda x: F.nll_loss(x.reshape(1, 4), [1]),
    "matmul": lambda x: mpgrad.matmul(x.reshape(2, 2), x.reshape(2, 2)),
    "linear": lambda x: F.linear(x.reshape(1, 4), x.reshape(1, 4), x[:1]),
}


@pytest.mark.parametrize("name", sorted(_CALLS))
def test_every_autocast_list_entry_is_obeyed(name):
    """Each name on autocast's lists decides its op's format: float32 for the float32 list
    (from float16 inputs), the autocast format for the lower list (from float32 inputs)."""
    from mpgrad.autodiff.policy import AUTOCAST_FLOAT32, AUTOCAST_LOWER
    assert set(_CALLS) == AUTOCAST_FLOAT32 | AUTOCAST_LOWER
    lower = name in AUTOCAST_LOWER
    x = mpgrad.tensor([0.3, -1.7, 2.2, -0.01], dtype="float32" if lower else "float16")
    with mpgrad.autocast("bfloat16" if lower else "float16"):
        out = _CALLS[name](x)
    assert out.dtype == (mpgrad.bfloat16 if lower else mpgrad.float32)


def test_backward_under_a_strict_policy():
    """A strict policy's VJPs see only tensors of its compute format: backward works and
    equals the same computation without the policy (all inputs already in float16)."""
    def grads(ctx):
        x = mpgrad.tensor([1.5, -0.25], dtype="f16", requires_grad=True)
        w = mpgrad.tensor([[0.5, 2.0], [1.0, 3.0]], dtype="f16", requires_grad=True)
        with ctx():
            y = F.layer_norm(mpgrad.erf(mpgrad.matmul(w, x) * 2), 2, w[0], w[1]).sum()
        y.backward()
        return x.grad, w.grad
    strict = grads(lambda: mpgrad.use_policy(mpgrad.Policy.parse("f16", strict=True)))
    for a, b in zip(strict, grads(NONE)):
        mpgrad.testing.assert_bits_equal(a, b)


# --- NaN in a format without NaN -------------------------------------------------------------

# op -> (format, the op on mpgrad tensors, the same in float64); each is undefined somewhere:
# 0/0, sqrt(-1), log(-1), (-1)**0.5
NO_NAN_CASES = {
    "div": ("float6_e2m3fn", lambda t: t(1.0, 0.0) / t(2.0, 0.0),
            lambda: np.array([1.0, 0.0]) / 0.0),
    "sqrt": ("float4_e2m1fn", lambda t: mpgrad.sqrt(t(4.0, -1.0)), lambda: np.sqrt([4.0, -1.0])),
    "log": ("float6_e3m2fn", lambda t: mpgrad.log(t(1.0, -1.0)), lambda: np.log([1.0, -1.0])),
    "pow": ("float6_e2m3fn", lambda t: t(-1.0) ** 0.5, lambda: np.power([-1.0], 0.5)),
}


@pytest.mark.parametrize("op", list(NO_NAN_CASES))
def test_op_producing_nan_in_a_format_without_nan_says_so(op):
    fmt, run, reference = NO_NAN_CASES[op]
    with np.errstate(all="ignore"):
        assert np.isnan(reference()).any()  # the exact result is NaN there
    with pytest.raises(ValueError, match=f"{fmt} has no NaN: {op} produced NaN") as info:
        run(lambda *v: mpgrad.tensor(np.array(v), dtype=fmt))
    assert "input holds" not in str(info.value)  # (the message it used to give)


def test_nan_input_to_a_format_without_nan_is_still_the_inputs_fault():
    with pytest.raises(ValueError, match="input holds"):
        mpgrad.tensor([np.nan], dtype="float32").to("float6_e2m3fn")


def test_nan_in_backward_of_a_format_without_nan_says_so():
    # 1/0 saturates to float6_e2m3fn's max (no inf, OCP MX); div's VJP g / b with g = 0 and
    # b = 0 is 0/0: NaN in the backward pass, reported the same way
    a = mpgrad.tensor([1.0], dtype="float6_e2m3fn", requires_grad=True)
    b = mpgrad.tensor([0.0], dtype="float6_e2m3fn", requires_grad=True)
    out = a / b
    assert out.item() == 7.5  # 1.875 * 2**2, the largest float6_e2m3fn value
    with pytest.raises(ValueError, match="float6_e2m3fn has no NaN: div produced NaN"):
        out.backward(mpgrad.zeros(1, dtype="float6_e2m3fn"))


def test_formats_with_nan_still_give_nan():
    assert np.isnan((mpgrad.tensor([0.0], "f16") / mpgrad.tensor([0.0], "f16")).item())
    assert np.isnan(mpgrad.sqrt(mpgrad.tensor([-1.0], "float8_e4m3fn")).item())
