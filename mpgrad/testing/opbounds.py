"""What a candidate kernel computes for each op, forward beside backward, as steps of a Calc.

The formulas are those of PyTorch's CPU kernels (aten/src/ATen/native/cpu: the GELU,
SiLU, softmax and layer-norm kernels and their backward), each step rounded once in the
candidate's compute format, reductions by its accumulation model, and each saved result
stored in its output format. Where kernels differ in their formula (the variance of a layer
norm: two-pass or one-pass; x_hat = (x - mu) r or x r - mu r; rsqrt or 1 / sqrt) the bound is
the larger of the two (`either`): a radius bounds the distance to the exact value, whichever
formula produced the candidate. Adding a rounding to the formula only widens the bound, so
a kernel that rounds less (fused, or keeping intermediates wider) is covered too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..numerics.exact import normalize_axes
from .enclosure import Calc, Enclosed, exact

__all__ = ["Rule", "RULES", "either"]

G = Enclosed  # the gradient flowing into an op's output


@dataclass(frozen=True)
class Rule:
    """An op's forward (calc, *inputs, **args) -> output and backward (calc, inputs, y, g,
    **args) -> one gradient per input (None where it has none)."""

    forward: Callable
    backward: Callable
    inputs: int  # how many positional inputs it takes at most


def either(a: Enclosed, b: Enclosed) -> Enclosed:
    """The exact value a and b both enclose, with a radius covering either formula."""
    return Enclosed(a.v, a.rho, np.maximum(a.r, b.r))


def _where(mask: np.ndarray, a: Enclosed, b: Enclosed) -> Enclosed:
    return Enclosed(*(np.where(mask, x, y) for x, y in ((a.v, b.v), (a.rho, b.rho), (a.r, b.r))))


def _count(calc: Calc, n: int) -> Enclosed:
    return calc.const(float(n), exact=True)


def _unbroadcast(calc: Calc, g: Enclosed, shape: tuple) -> Enclosed:
    """g summed over the axes an input of this shape was broadcast along."""
    lead = g.v.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + k for k, s in enumerate(shape)
                                      if s == 1 and g.v.shape[lead + k] != 1)
    if not axes:
        return g
    s = calc.sum(g, axes, keepdims=True)
    return Enclosed(*(x.reshape(shape) for x in (s.v, s.rho, s.r)))


# --- elementwise ops: forward checked in ulps (see close.py); backward as PyTorch's ---

def _binary(backward: Callable) -> Rule:
    return Rule(lambda calc, a, b: None, backward, 2)


def _unary(backward: Callable) -> Rule:
    return Rule(lambda calc, a: None, backward, 1)


def _both(calc, a, b, ga, gb):
    return _unbroadcast(calc, ga, a.v.shape), _unbroadcast(calc, gb, b.v.shape)


ELEMENTWISE = {
    "add": _binary(lambda calc, x, y, g: _both(calc, *x, g, g)),
    "sub": _binary(lambda calc, x, y, g: _both(calc, *x, g, calc.neg(g))),
    "mul": _binary(lambda calc, x, y, g: _both(calc, *x, calc.mul(g, x[1]), calc.mul(g, x[0]))),
    # d(a/b): g / b and -g * a / (b * b) (PyTorch's div backward)
    "div": _binary(lambda calc, x, y, g: _both(
        calc, *x, calc.div(g, x[1]),
        calc.div(calc.mul(calc.neg(g), x[0]), calc.mul(x[1], x[1])))),
    "sqrt": _unary(lambda calc, x, y, g: (calc.div(g, calc.mul(_count(calc, 2), y)),)),
    "exp": _unary(lambda calc, x, y, g: (calc.mul(g, y),)),
    "log": _unary(lambda calc, x, y, g: (calc.div(g, x[0]),)),
    "tanh": _unary(lambda calc, x, y, g: (
        calc.mul(g, calc.sub(_count(calc, 1), calc.mul(y, y))),)),
    "sigmoid": _unary(lambda calc, x, y, g: (
        calc.mul(calc.mul(g, calc.sub(_count(calc, 1), y)), y),)),
    "erf": _unary(lambda calc, x, y, g: (calc.mul(g, calc.mul(
        calc.const(2 / math.sqrt(math.pi)),
        calc.fn("exp", calc.neg(calc.mul(x[0], x[0]))))),)),
    "relu": _unary(lambda calc, x, y, g: (_where(x[0].v > 0, g, exact(np.zeros(g.v.shape))),)),
    "neg": _unary(lambda calc, x, y, g: (calc.neg(g),)),
    "abs": _unary(lambda calc, x, y, g: (Enclosed(g.v * np.sign(x[0].v), g.rho, g.r),)),
}


# --- reductions and matmul ---

def _matmul_backward(calc, x, y, g):
    a, b = x
    ga = calc.matmul(g.v, np.swapaxes(b.v, -1, -2))
    gb = calc.matmul(np.swapaxes(a.v, -1, -2), g.v)
    return _unbroadcast(calc, ga, a.v.shape), _unbroadcast(calc, gb, b.v.shape)


def _sum(calc, a, axis=None, keepdims=False):
    return calc.sum(a, normalize_axes(a.v.ndim, axis), keepdims)


def _spread(g: Enclosed, shape: tuple, axis, keepdims: bool) -> Enclosed:
    """g broadcast back over the reduced axes (exact)."""
    axes = normalize_axes(len(shape), axis)
    kept = tuple(1 if k in axes else s for k, s in enumerate(shape))
    return Enclosed(*(np.broadcast_to(x.reshape(kept), shape) for x in (g.v, g.rho, g.r)))


def _n(shape: tuple, axis) -> int:
    return int(np.prod([shape[k] for k in normalize_axes(len(shape), axis)]))


def _mean(calc, a, axis=None, keepdims=False):
    return calc.div(_sum(calc, a, axis, keepdims), _count(calc, _n(a.v.shape, axis)))


def _linear(calc, x, weight, bias=None):
    """x @ weight.T + bias: the bias added after the product, or as one more term of its
    accumulation (a GEMM with beta = 1), whichever the kernel does."""
    wt = np.swapaxes(weight.v, -1, -2)
    y = calc.matmul(x.v, wt)
    if bias is None:
        return y
    ones = np.ones(x.v.shape[:-1] + (1,))
    inside = calc.matmul(np.concatenate([x.v, ones], axis=-1),
                         np.concatenate([wt, bias.v[None, :]], axis=0))
    return either(calc.add(y, bias), inside)


def _linear_backward(calc, x, y, g):
    x, weight, bias = (list(x) + [None])[:3]
    gx = calc.matmul(g.v, weight.v)
    g2, x2 = g.v.reshape(-1, g.v.shape[-1]), x.v.reshape(-1, x.v.shape[-1])
    gw = calc.matmul(g2.T, x2)
    gb = None if bias is None else calc.sum(Enclosed(g2, g.rho.reshape(g2.shape),
                                                     g.r.reshape(g2.shape)), (0,), False)
    return gx, gw, gb


REDUCTIONS = {
    "linear": Rule(_linear, _linear_backward, 3),
    "matmul": Rule(lambda calc, a, b: calc.matmul(a.v, b.v), _matmul_backward, 2),
    "sum": Rule(_sum, lambda calc, x, y, g, axis=None, keepdims=False: (
        _spread(g, x[0].v.shape, axis, keepdims),), 1),
    "mean": Rule(_mean, lambda calc, x, y, g, axis=None, keepdims=False: (
        _spread(calc.div(g, _count(calc, _n(x[0].v.shape, axis))), x[0].v.shape, axis,
                keepdims),), 1),
}


# --- softmax, log_softmax, cross_entropy ---

def _exp_shifted(calc, x, axis):
    """d = x - max(x) and e = exp(d) along axis."""
    d = calc.sub(x, calc.max(x, axis))
    return d, calc.fn("exp", d)


def _softmax(calc, x, axis=-1):
    _, e = _exp_shifted(calc, x, axis)
    return calc.div(e, calc.sum(e, (axis % x.v.ndim,)))


def _softmax_backward(calc, x, y, g, axis=-1):  # y * (g - sum(g * y))
    t = calc.sum(calc.mul(g, y), (axis % y.v.ndim,))
    return (calc.mul(calc.sub(g, t), y),)


def _log_softmax(calc, x, axis=-1):
    d, e = _exp_shifted(calc, x, axis)
    return calc.sub(d, calc.fn("log", calc.sum(e, (axis % x.v.ndim,))))


def _log_softmax_backward(calc, x, y, g, axis=-1):  # g - exp(y) * sum(g)
    return (calc.sub(g, calc.mul(calc.fn("exp", y), calc.sum(g, (axis % y.v.ndim,)))),)


def _picked(labels: np.ndarray, C: int) -> np.ndarray:
    return np.arange(C)[None, :] == labels[:, None]


def _nll(calc, ls, labels, reduction):
    """-ls[b, label_b], then the mean or the sum over the batch (PyTorch's nll_loss)."""
    row = np.arange(len(labels))
    loss = Enclosed(-ls.v[row, labels], ls.rho[row, labels], ls.r[row, labels])
    if reduction == "none":
        return loss
    total = calc.sum(loss, (0,), keepdims=False)
    return total if reduction == "sum" else calc.div(total, _count(calc, len(labels)))


def _cross_entropy(calc, logits, labels, reduction="mean"):
    ls = calc.stored(_log_softmax(calc, logits, 1))
    return _nll(calc, ls, labels.v.astype(np.int64), reduction)


def _cross_entropy_backward(calc, x, y, g, reduction="mean"):
    logits, labels = x
    B, C = logits.v.shape
    w = g if reduction == "none" else Enclosed(*(np.broadcast_to(t, (B,)) for t in
                                                 (g.v, g.rho, g.r)))
    if reduction == "mean":
        w = calc.div(w, _count(calc, B))
    col = Enclosed(*(t[:, None] for t in (w.v, w.rho, w.r)))
    onehot = _picked(labels.v.astype(np.int64), C)
    zero = exact(np.zeros((B, C)))
    grad_ls = _where(onehot, Enclosed(*(np.broadcast_to(-t if k == 0 else t, (B, C)) for k, t in
                                        enumerate((col.v, col.rho, col.r)))), zero)
    ls = calc.stored(_log_softmax(calc, logits, 1))
    return _log_softmax_backward(calc, [logits], ls, grad_ls, 1)[0], None


SOFTMAX = {
    "softmax": Rule(_softmax, _softmax_backward, 1),
    "log_softmax": Rule(_log_softmax, _log_softmax_backward, 1),
    "cross_entropy": Rule(_cross_entropy, _cross_entropy_backward, 2),
}


# --- activations ---

def _gelu(calc, x, approximate="none"):
    one, half = _count(calc, 1), calc.const(0.5, exact=True)
    if approximate == "none":  # x * 0.5 * (1 + erf(x * M_SQRT1_2))
        erf = calc.fn("erf", calc.mul(x, calc.const(math.sqrt(0.5))))
        return calc.mul(calc.mul(x, half), calc.add(one, erf))
    if approximate == "tanh":  # 0.5 * x * (1 + tanh(kBeta * (x + kKappa * x**3)))
        cube = calc.mul(calc.mul(x, x), x)
        inner = calc.mul(calc.const(math.sqrt(2 / math.pi)),
                         calc.add(x, calc.mul(calc.const(0.044715), cube)))
        return calc.mul(calc.mul(half, x), calc.add(one, calc.fn("tanh", inner)))
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


def _gelu_backward(calc, x, y, g, approximate="none"):
    (x,) = x
    one, half = _count(calc, 1), calc.const(0.5, exact=True)
    if approximate == "none":  # g * (cdf + x * pdf)
        cdf = calc.mul(half, calc.add(one, calc.fn("erf", calc.mul(x, calc.const(
            math.sqrt(0.5))))))
        pdf = calc.mul(calc.const(1 / math.sqrt(2 * math.pi)),
                       calc.fn("exp", calc.mul(calc.mul(x, x), calc.const(-0.5, exact=True))))
        return (calc.mul(g, calc.add(cdf, calc.mul(x, pdf))),)
    beta, kappa = calc.const(math.sqrt(2 / math.pi)), calc.const(0.044715)
    sq = calc.mul(x, x)
    inner = calc.mul(beta, calc.add(x, calc.mul(kappa, calc.mul(sq, x))))
    t = calc.fn("tanh", inner)
    left_d = calc.mul(half, calc.add(one, t))
    slope = calc.mul(beta, calc.add(one, calc.mul(calc.const(3 * 0.044715), sq)))
    right_d = calc.mul(calc.mul(calc.mul(half, x), calc.sub(one, calc.mul(t, t))), slope)
    return (calc.mul(g, calc.add(left_d, right_d)),)


def _sigmoid_by_exp(calc, x):
    return calc.div(_count(calc, 1), calc.add(_count(calc, 1), calc.fn("exp", calc.neg(x))))


def _silu(calc, x):  # x / (1 + exp(-x)) (PyTorch) or x * sigmoid(x)
    return either(calc.div(x, calc.add(_count(calc, 1), calc.fn("exp", calc.neg(x)))),
                  calc.mul(x, calc.fn("sigmoid", x)))


def _silu_backward(calc, x, y, g):  # g * s * (1 + x * (1 - s)), s = 1 / (1 + exp(-x))
    (x,) = x
    s = _sigmoid_by_exp(calc, x)
    one = _count(calc, 1)
    return (calc.mul(calc.mul(g, s), calc.add(one, calc.mul(x, calc.sub(one, s)))),)


ACTIVATIONS = {
    "gelu": Rule(_gelu, _gelu_backward, 1),
    "silu": Rule(_silu, _silu_backward, 1),
}


# --- layer_norm ---

def _norm_axes(x: Enclosed, normalized_shape) -> tuple:
    shape = (normalized_shape,) if np.isscalar(normalized_shape) else tuple(normalized_shape)
    if not shape or tuple(x.v.shape[x.v.ndim - len(shape):]) != shape:
        raise ValueError(f"layer_norm: input of shape {x.v.shape} does not end in "
                         f"normalized_shape {shape}")
    return tuple(range(x.v.ndim - len(shape), x.v.ndim))


def _moments(calc, x, normalized_shape, eps):
    """(mu, r = 1/sqrt(var + eps), x_hat, axes, n): the variance two-pass or one-pass, r by
    rsqrt or 1/sqrt, x_hat = (x - mu) r, x r - mu r or (x - mu) / sqrt(var + eps)."""
    axes = _norm_axes(x, normalized_shape)
    n = _count(calc, int(np.prod([x.v.shape[k] for k in axes])))
    mu = calc.div(calc.sum(x, axes), n)
    d = calc.sub(x, mu)
    two_pass = calc.div(calc.sum(calc.mul(d, d), axes), n)
    one_pass = calc.sub(calc.div(calc.sum(calc.mul(x, x), axes), n), calc.mul(mu, mu))
    v = calc.add(either(two_pass, one_pass), calc.const(eps))
    r = either(calc.fn("rsqrt", v), calc.div(_count(calc, 1), calc.fn("sqrt", v)))
    x_hat = either(either(calc.mul(d, r), calc.sub(calc.mul(x, r), calc.mul(r, mu))),
                   calc.div(d, calc.fn("sqrt", v)))
    return mu, r, x_hat, axes, n


def _layer_norm(calc, x, weight=None, bias=None, normalized_shape=None, eps=1e-5):
    shape = x.v.shape[-1:] if normalized_shape is None else normalized_shape
    *_, y, _, _ = _moments(calc, x, shape, eps)
    if weight is not None:
        y = calc.mul(y, weight)
    return y if bias is None else calc.add(y, bias)


def _layer_norm_backward(calc, x, y, g, normalized_shape=None, eps=1e-5):
    x, weight, bias = (list(x) + [None, None])[:3]
    shape = x.v.shape[-1:] if normalized_shape is None else normalized_shape
    mu, r, _, axes, n = _moments(calc, x, shape, eps)
    mu, r = calc.stored(mu), calc.stored(r)  # saved by the forward (in the input's format
    x_hat = either(calc.mul(calc.sub(x, mu), r),  # on PyTorch's CPU), x_hat recomputed
                   calc.sub(calc.mul(x, r), calc.mul(r, mu)))
    gw = g if weight is None else calc.mul(g, weight)
    # textbook: r (gw - mean(gw) - x_hat mean(gw x_hat))
    textbook = calc.mul(r, calc.sub(calc.sub(gw, calc.div(calc.sum(gw, axes), n)),
                                    calc.mul(x_hat, calc.div(calc.sum(calc.mul(gw, x_hat),
                                                                      axes), n))))
    # PyTorch's CPU kernel: r gw + b x + c, b = (db mu - ds) r**3 / n, c = -b mu - db r / n
    ds, db = calc.sum(calc.mul(gw, x), axes), calc.sum(gw, axes)
    b = calc.div(calc.mul(calc.sub(calc.mul(db, mu), ds), calc.mul(calc.mul(r, r), r)), n)
    c = calc.sub(calc.neg(calc.mul(b, mu)), calc.div(calc.mul(db, r), n))
    aten = calc.add(calc.add(calc.mul(r, gw), calc.mul(b, x)), c)
    batch = tuple(range(x.v.ndim - len(axes)))
    dw = None if weight is None else _batch_sum(calc, calc.mul(g, x_hat), batch)
    db = None if bias is None else _batch_sum(calc, g, batch)
    return either(textbook, aten), dw, db


def _batch_sum(calc, g, batch: tuple) -> Enclosed:
    return calc.sum(g, batch, keepdims=False) if batch else g


RULES: dict[str, Rule] = {
    **ELEMENTWISE, **REDUCTIONS, **SOFTMAX, **ACTIVATIONS,
    "layer_norm": Rule(_layer_norm, _layer_norm_backward, 3),
}
