"""Neural-network functions, each a documented sequence of mpgrad primitives.

Every step below is one primitive, rounded once to the compute format c (nearest even), and
the backward pass is the chain of the primitives' VJPs. Each function enters through the
engine's `composite` rule: its tensor inputs are cast to c = compute_format(NAME, formats)
and every step computes in c. Under mpgrad.autocast the loss and normalisation functions
(softmax, log_softmax, cross_entropy, nll_loss, mse_loss, layer_norm) run in float32,
linear in the autocast format, as torch.autocast does; under a Policy, in its compute
format; otherwise in the widest input format, except linear, which refuses operands of two
formats (as torch does). Sums and means are mpgrad.sum and mpgrad.mean, so they follow the
active Policy's accumulation model. Empty batches give torch's results: (0, C) stays (0, C),
a mean loss of no samples is NaN.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np

from .. import ops
from ..autodiff.engine import composite
from ..autodiff.tensor import Tensor
from ..numerics import rng as _rng

__all__ = ["softmax", "log_softmax", "cross_entropy", "nll_loss", "mse_loss", "layer_norm",
           "linear", "dropout", "relu", "gelu"]

REDUCTIONS = ("mean", "sum", "none")


def _check_tensor(x, what: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be an mpgrad Tensor, got {type(x).__name__}")


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return ops.mean(values)
    if reduction == "sum":
        return ops.sum(values)
    return values


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, "
                         f"got {reduction!r}")


def _shifted(x: Tensor, axis: int) -> Tensor:
    """z = x - m, m the max of x's values over axis, a constant (no gradient flows to it)."""
    if x.ndim == 0:
        raise ValueError("softmax needs a tensor of at least one dimension")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for a tensor of {x.ndim} dimensions")
    if x.size == 0:  # nothing to shift: the result is empty, as torch's
        return x
    m = np.max(x.to_float64(), axis=axis, keepdims=True)
    return x - Tensor(m, x.dtype)  # m holds values of x's format: no rounding


@composite("softmax")
def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """exp(z) / sum(exp(z), axis) with z = x - max(x, axis) (max detached)."""
    _check_tensor(x, "softmax's input")
    e = ops.exp(_shifted(x, axis))
    return e / ops.sum(e, axis=axis, keepdims=True)


@composite("log_softmax")
def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """z - log(sum(exp(z), axis)) with z = x - max(x, axis) (max detached)."""
    _check_tensor(x, "log_softmax's input")
    z = _shifted(x, axis)
    return z - ops.log(ops.sum(ops.exp(z), axis=axis, keepdims=True))


def _labels(labels, logits: Tensor, name: str = "cross_entropy") -> np.ndarray:
    """labels as a checked integer array: shape (N, d1, ...) for logits (N, C, d1, ...)."""
    if isinstance(labels, Tensor):
        raise TypeError("labels must be integer class indices (a NumPy integer array, a list "
                        "or an int), not an mpgrad Tensor (whose values are floats)")
    array = np.asarray(labels)
    if array.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class indices, got dtype {array.dtype}")
    if logits.ndim == 0:
        raise ValueError(f"{name} needs an input of shape (C,) or (N, C, ...), got a 0-d "
                         "tensor")
    want = () if logits.ndim == 1 else (logits.shape[0],) + logits.shape[2:]
    if array.shape != want:
        raise ValueError(f"labels have shape {array.shape}; logits of shape {logits.shape} "
                         f"need labels of shape {want}")
    classes = logits.shape[0 if logits.ndim == 1 else 1]
    outside = (array < 0) | (array >= classes)
    if outside.any():
        raise IndexError(f"label {int(array[outside].flat[0])} is out of range for "
                         f"{classes} classes (labels lie in [0, {classes}))")
    return array.astype(np.int64)


@composite("cross_entropy")
def cross_entropy(logits: Tensor, labels, reduction: str = "mean") -> Tensor:
    """nll_loss(log_softmax(logits, class axis), labels, reduction).

    logits (N, C) with labels (N,), (C,) with a scalar label, or (N, C, d1, ...) with
    labels (N, d1, ...): the class axis is 1 (0 for 1-D logits), as in torch.
    """
    _check_tensor(logits, "cross_entropy's logits")
    _check_reduction(reduction)
    _labels(labels, logits)
    return nll_loss(log_softmax(logits, axis=0 if logits.ndim == 1 else 1), labels, reduction)


@composite("nll_loss")
def nll_loss(log_probs: Tensor, labels, reduction: str = "mean") -> Tensor:
    """-log_probs picked at the labels along the class axis, then mean, sum or none (as
    torch.nn.functional.nll_loss without weights; shapes as cross_entropy)."""
    _check_tensor(log_probs, "nll_loss's input")
    _check_reduction(reduction)
    array = _labels(labels, log_probs, "nll_loss")
    if log_probs.ndim == 1:
        picked = log_probs[int(array)]
    else:
        grid = np.indices(array.shape, sparse=True)
        picked = log_probs[(grid[0], array, *grid[1:])]
    return _reduce(-picked, reduction)


@composite("mse_loss")
def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """d = input - target; d * d; then mean, sum or none."""
    _check_tensor(input, "mse_loss's input")
    _check_tensor(target, "mse_loss's target")
    _check_reduction(reduction)
    if input.shape != target.shape:
        raise ValueError(f"mse_loss: input shape {input.shape} and target shape "
                         f"{target.shape} differ (no broadcasting)")
    d = input - target
    return _reduce(d * d, reduction)


@composite("layer_norm")
def layer_norm(x: Tensor, normalized_shape: int | Sequence[int], weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Over the last len(normalized_shape) axes: mu = mean(x); d = x - mu;
    var = mean(d * d); y = d / sqrt(var + eps); then y * weight, then + bias."""
    _check_tensor(x, "layer_norm's input")
    shape = (normalized_shape,) if np.isscalar(normalized_shape) else tuple(normalized_shape)
    k = len(shape)
    if k == 0 or x.ndim < k or tuple(x.shape[x.ndim - k:]) != shape:
        raise ValueError(f"layer_norm: input of shape {x.shape} does not end in "
                         f"normalized_shape {shape}")
    for t, what in ((weight, "weight"), (bias, "bias")):
        if t is not None:
            _check_tensor(t, f"layer_norm's {what}")
            if t.shape != shape:
                raise ValueError(f"layer_norm: {what} has shape {t.shape}, expected {shape}")
    axes = tuple(range(x.ndim - k, x.ndim))
    d = x - ops.mean(x, axis=axes, keepdims=True)
    var = ops.mean(d * d, axis=axes, keepdims=True)
    y = d / ops.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    return y if bias is None else y + bias


@composite("linear")
def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T + bias, all three first cast to compute_format('linear', ...) (the
    autocast format under autocast, as torch's 'linear'), so the bias is added in it too."""
    _check_tensor(x, "linear's input")
    _check_tensor(weight, "linear's weight")
    if weight.ndim != 2:
        raise ValueError(f"linear's weight must be 2-D (out, in), got shape {weight.shape}")
    if x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input of shape {x.shape} does not end in in_features = "
                         f"{weight.shape[1]} (weight shape {weight.shape})")
    if bias is not None:
        _check_tensor(bias, "linear's bias")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"linear's bias has shape {bias.shape}, expected "
                             f"({weight.shape[0]},)")
    y = ops.matmul(x, ops.transpose(weight))
    return y if bias is None else y + bias


def dropout(x: Tensor, p: float = 0.5, training: bool = True, rng=None) -> Tensor:
    """x * m with m = 1/(1-p) (rounded to the compute format) where U >= p, else 0.

    U ~ U[0, 1) is drawn in float64 from mpgrad's generator, one per element, so each
    element is kept with probability 1 - p; one rounded product. Identity when not
    training or p == 0.
    """
    _check_tensor(x, "dropout's input")
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
        raise ValueError(f"dropout probability must lie in [0, 1), got {p!r}")
    if not training or p == 0:
        return x
    p = float(p)
    keep = _rng.generator(rng).random(x.shape) >= p
    # a float64 array is weakly typed: mul rounds it to the compute format, like a number
    return ops.mul(x, np.where(keep, 1.0 / (1.0 - p), 0.0))


def relu(x: Tensor) -> Tensor:
    """max(x, 0) (mpgrad.relu, exact)."""
    return ops.relu(x)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """GELU, erf or tanh form (mpgrad.gelu: a documented sequence of primitives)."""
    return ops.gelu(x, approximate)
