"""Elementwise primitives, each a row: exact forward beside its vector-Jacobian product.

Forwards return the exact result (a float64 array or an exact (hi, lo) pair, from the
error-free transformations of mpgrad.exact), or for transcendental functions the value
already correctly rounded to the compute format (mpgrad.elementary); the engine rounds once.
VJPs follow PyTorch's derivative formulas (tools/autograd/derivatives.yaml), each operation
rounded under the active policy.
"""

from __future__ import annotations

import math

import numpy as np

from ..autodiff.engine import Op, apply, as_tensor
from ..autodiff.tensor import Tensor
from ..numerics.elementary import correctly_rounded
from ..numerics.exact import clean_pair, exact_div, exact_sqrt, two_prod, two_sum
from ..numerics.formats import Format, float64, promote
from .shape import broadcast_shape

__all__ = ["add", "sub", "mul", "div", "neg", "abs", "sqrt", "exp", "log", "tanh", "sigmoid",
           "erf", "relu", "maximum", "minimum", "pow", "clamp", "where", "sign",
           "lt", "le", "gt", "ge", "eq", "ne"]


def _elementary(name: str):
    return lambda c, x: correctly_rounded(name, x, c)


def _maximum_vjp(ctx, g, pick):
    a, b = ctx.inputs
    half = where(a == b, g / 2, g)
    return where(pick(a, b), half, 0.0), where(pick(b, a), half, 0.0)


_ADD = Op("add", lambda c, a, b: clean_pair(*two_sum(a, b)), lambda ctx, g: (g, g))
_SUB = Op("sub", lambda c, a, b: clean_pair(*two_sum(a, -b)), lambda ctx, g: (g, -g))
_MUL = Op("mul", lambda c, a, b: clean_pair(*two_prod(a, b)),
          lambda ctx, g: (g * ctx.inputs[1], g * ctx.inputs[0]))
def _quotient(c: Format, a: np.ndarray, b: np.ndarray):
    """a / b as a pair rounding like the exact quotient to c. Below 2**-1019 exact_div's
    pair is rounded to odd on float64's own subnormal grid, fine for every narrower format
    but a second rounding in float64: there the quotient is IEEE's, rounded once."""
    q, r = exact_div(a, b)
    if c == float64:
        r = np.where(np.abs(q) < 2.0 ** -1019, np.copysign(0.0, q), r)
    return clean_pair(q, r)


_DIV = Op("div", lambda c, a, b: _quotient(c, a, b),
          lambda ctx, g: (g / ctx.inputs[1], -g * (ctx.out / ctx.inputs[1])))
_NEG = Op("neg", lambda c, a: -a, lambda ctx, g: (-g,))
_ABS = Op("abs", lambda c, a: np.abs(a), lambda ctx, g: (g * sign(ctx.inputs[0]),))
_SIGN = Op("sign", lambda c, a: np.sign(a))
_SQRT = Op("sqrt", lambda c, a: clean_pair(*exact_sqrt(a)), lambda ctx, g: (g / (2 * ctx.out),))
_EXP = Op("exp", _elementary("exp"), lambda ctx, g: (g * ctx.out,))
_LOG = Op("log", _elementary("log"), lambda ctx, g: (g / ctx.inputs[0],))
_TANH = Op("tanh", _elementary("tanh"), lambda ctx, g: (g * (1 - ctx.out * ctx.out),))
_SIGMOID = Op("sigmoid", _elementary("sigmoid"),
              lambda ctx, g: (g * (1 - ctx.out) * ctx.out,))
_ERF = Op("erf", _elementary("erf"), lambda ctx, g: (
    2 / math.sqrt(math.pi) * exp(-(ctx.inputs[0] * ctx.inputs[0])) * g,))
# relu and where select stored values: they run on storage arrays, nothing to round
_RELU = Op("relu", lambda c, a: np.where((a > 0) | np.isnan(a), a, np.zeros_like(a)),
           lambda ctx, g: (where(ctx.out > 0, g, 0.0),), on_storage=True)
_MAXIMUM = Op("maximum", lambda c, a, b: np.maximum(a, b),
              lambda ctx, g: _maximum_vjp(ctx, g, lambda x, y: x >= y))
_MINIMUM = Op("minimum", lambda c, a, b: np.minimum(a, b),
              lambda ctx, g: _maximum_vjp(ctx, g, lambda x, y: x <= y))
_POW = Op("pow", lambda c, a, exponent: correctly_rounded("pow", a, c, exponent=exponent),
          lambda ctx, g: (g * (ctx.args[0] * pow(ctx.inputs[0],
                                                             ctx.args[0] - 1)),),
          tensor_args=1)
_CLAMP = Op("clamp", lambda c, a, lo, hi: np.clip(a, -np.inf if lo is None else lo,
                                                  np.inf if hi is None else hi),
            lambda ctx, g: (where(ctx.out == ctx.inputs[0], g, 0.0),), tensor_args=1)
_WHERE = Op("where", lambda c, a, b, cond: np.where(cond, a, b),
            lambda ctx, g: (where(ctx.args[0], g, 0.0),
                            where(ctx.args[0], 0.0, g)), tensor_args=2, on_storage=True)


def _binary(op: Op, *args):
    """apply(op, *args) once the shapes of the Tensor and array arguments broadcast."""
    broadcast_shape(op.name, *(x.shape for x in args if isinstance(x, (Tensor, np.ndarray))))
    return apply(op, *args)


def add(a, b): """a + b, correctly rounded."""; return _binary(_ADD, a, b)
def sub(a, b): """a - b, correctly rounded."""; return _binary(_SUB, a, b)
def mul(a, b): """a * b, correctly rounded."""; return _binary(_MUL, a, b)
def div(a, b): """a / b, correctly rounded."""; return _binary(_DIV, a, b)
def neg(a): """-a (exact)."""; return apply(_NEG, a)
def abs(a): """|a| (exact)."""; return apply(_ABS, a)
def sign(a): """-1, 0 or 1 (no gradient)."""; return apply(_SIGN, a)
def sqrt(a): """Square root, correctly rounded."""; return apply(_SQRT, a)
def exp(a): """e**a, correctly rounded (formats up to float32)."""; return apply(_EXP, a)
def log(a): """Natural logarithm, correctly rounded (formats up to float32)."""; return apply(_LOG, a)
def tanh(a): """tanh(a), correctly rounded (formats up to float32)."""; return apply(_TANH, a)
def sigmoid(a): """1 / (1 + e**-a), correctly rounded (up to float32)."""; return apply(_SIGMOID, a)
def erf(a): """The error function, correctly rounded (up to float32)."""; return apply(_ERF, a)
def relu(a): """max(a, 0) (exact)."""; return apply(_RELU, a)
def maximum(a, b): """Elementwise maximum (NaN propagates)."""; return _binary(_MAXIMUM, a, b)
def minimum(a, b): """Elementwise minimum (NaN propagates)."""; return _binary(_MINIMUM, a, b)


def pow(a, exponent: float):
    """a ** exponent for a scalar exponent, correctly rounded (formats up to float32)."""
    if not np.isscalar(exponent) or isinstance(exponent, bool):
        raise TypeError(f"pow takes a scalar exponent, got {type(exponent).__name__}")
    return apply(_POW, a, float(exponent))


def clamp(a, min: float | None = None, max: float | None = None):
    """a limited to [min, max] (exact; bounds are numbers)."""
    if min is None and max is None:
        raise ValueError("clamp needs min, max or both")
    return apply(_CLAMP, a, min, max)


def where(cond, a, b):
    """a where cond holds, else b (cond: a boolean array, e.g. from a comparison)."""
    cond = np.asarray(cond)
    if cond.dtype != bool:
        raise TypeError(f"where's condition must be boolean, got dtype {cond.dtype}")
    return _binary(_WHERE, a, b, cond)


def _compare(fn):
    def compare(a, b) -> np.ndarray:
        given = [t.dtype for t in (a, b) if isinstance(t, Tensor)]
        c = promote(*given)
        return fn(as_tensor(a, c).to_float64(), as_tensor(b, c).to_float64())
    compare.__doc__ = f"Elementwise {fn.__name__} of exact values, as a NumPy bool array."
    return compare


lt, le, gt, ge = _compare(np.less), _compare(np.less_equal), _compare(np.greater), _compare(
    np.greater_equal)
eq, ne = _compare(np.equal), _compare(np.not_equal)
