"""Test helpers: gradient checks against finite differences and bit-exact comparisons."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..accumulate.bounds import accumulation_error_bound
from ..autodiff.engine import no_grad
from ..autodiff.tensor import Tensor
from ..numerics.bits import to_bits
from ..numerics.formats import Format, as_format, float64
from ..numerics.rounding import to_float64
from .close import OPS, Comparison, Offender, TensorCheck, assert_close, compare
from .torch_bridge import ModuleReport, compare_module, from_torch

__all__ = ["check_grads", "assert_bits_equal", "accumulation_error_bound", "assert_matmul_close",
           "assert_close", "compare", "Comparison", "TensorCheck", "Offender", "OPS",
           "compare_module", "from_torch", "ModuleReport"]

_SEED = 0  # the weights w are drawn from this seed, so every check is reproducible


def _float64_input(x, index: int) -> np.ndarray:
    """The values of input number index, which must be a float64 Tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"check_grads: input {index} is a {type(x).__name__}, not an mpgrad "
                        "Tensor; pass mpgrad.tensor(values, dtype='float64')")
    if x.dtype != float64:
        raise TypeError(f"check_grads: input {index} is {x.dtype.name}; finite differences "
                        "need float64 inputs: pass x.to('float64')")
    return np.array(x.to_float64(), dtype=np.float64)


def _output(fn: Callable[..., Tensor], inputs: list[Tensor]) -> Tensor:
    """fn(*inputs), checked to be a Tensor."""
    out = fn(*inputs)
    if not isinstance(out, Tensor):
        raise TypeError(f"check_grads: fn must return an mpgrad Tensor, got {type(out).__name__}")
    return out


def check_grads(fn: Callable[..., Tensor], *inputs: Tensor, eps: float = 1e-6,
                rtol: float = 1e-5, atol: float = 1e-8) -> None:
    """Assert reverse-mode gradients of sum(fn(*inputs) * w) match central differences."""
    values = [_float64_input(x, i) for i, x in enumerate(inputs)]
    leaves = [Tensor(v, float64, requires_grad=True) for v in values]
    out = _output(fn, leaves)
    w = np.random.default_rng(_SEED).standard_normal(out.shape)
    loss = (out * Tensor(w, float64)).sum()
    if any(v.size for v in values) and loss.requires_grad:
        loss.backward()
    analytic = [np.zeros(v.shape) if t.grad is None else t.grad.to_float64() for v, t in
                zip(values, leaves)]

    def objective(args: list[np.ndarray]) -> float:
        with no_grad():
            result = _output(fn, [Tensor(a, float64) for a in args])
        return float(np.sum(result.to_float64() * w))

    for i, (v, g) in enumerate(zip(values, analytic)):
        if g.shape != v.shape:
            raise AssertionError(f"input {i}: gradient has shape {g.shape}, input {v.shape}")
        for element in np.ndindex(*v.shape):
            shifted = []
            for step in (eps, -eps):
                args = [a.copy() for a in values]
                args[i][element] += step
                shifted.append(objective(args))
            numeric = (shifted[0] - shifted[1]) / (2 * eps)
            if not abs(g[element] - numeric) <= atol + rtol * abs(numeric):
                raise AssertionError(
                    f"gradient of input {i} at element {element}: reverse mode gives "
                    f"{float(g[element])!r}, central differences give {numeric!r} "
                    f"(eps={eps}, rtol={rtol}, atol={atol})")


def _bits_of(x, name: str, like: Format | None = None) -> tuple[np.ndarray, Format]:
    """The storage array and format of a Tensor, or of an array (like's, if its storage)."""
    if isinstance(x, Tensor):
        return x.data, x.dtype
    a = np.asarray(x)
    if like is not None and a.dtype == like.storage:  # e.g. tf32 values in float32 storage
        return a, like
    try:
        return a, as_format(a.dtype)
    except (TypeError, ValueError) as e:
        raise TypeError(f"assert_bits_equal: {name} has dtype {a.dtype}, not a format's "
                        f"storage dtype: {e}") from None


def assert_bits_equal(a, b, max_report: int = 5) -> None:
    """Assert two Tensors/arrays have the same format, shape and bit patterns (NaNs too)."""
    like = a.dtype if isinstance(a, Tensor) else b.dtype if isinstance(b, Tensor) else None
    da, fa = _bits_of(a, "a", like)
    db, fb = _bits_of(b, "b", like)
    if fa != fb:
        raise AssertionError(f"formats differ: {fa.name} vs {fb.name}")
    if da.shape != db.shape:
        raise AssertionError(f"shapes differ: {da.shape} vs {db.shape}")
    try:
        ba, bb = to_bits(da, fa), to_bits(db, fb)
    except ValueError as e:  # an array in fa's storage holding values fa lacks (tf32)
        raise AssertionError(f"assert_bits_equal: {e}") from None
    diff = np.argwhere(ba != bb) if ba.ndim else np.argwhere(np.atleast_1d(ba != bb))
    if diff.size == 0:
        return
    va, vb = to_float64(da), to_float64(db)
    width = (fa.bits + 3) // 4
    lines = []
    for pos in diff[:max_report]:
        k = tuple(int(i) for i in pos) if ba.ndim else ()
        lines.append(f"  at {k}: {float(va[k])!r} (0x{int(ba[k]):0{width}x}) vs "
                     f"{float(vb[k])!r} (0x{int(bb[k]):0{width}x})")
    raise AssertionError(f"{len(diff)} of {max(ba.size, 1)} {fa.name} elements differ in "
                         "their bits; first mismatches:\n" + "\n".join(lines))


# ---------------------------------------------------------------------------------------
# Rigorous error bounds for accumulation models (Higham, "Accuracy and Stability of
# Numerical Algorithms", 2nd ed., sections 2.1-2.2 (the model with underflow), 3.1 and
# 4.2; Fasi, Higham, Mikaitis, Pranesh 2021 and Khattak & Mikaitis, arXiv 2512.07004 for
# the block-FMA alignment and truncation).
#
# The rounding model.  One rounding of a real x to a format F in mode m, inside F's range,
# is fl(x) = x (1 + d) + e with |d| <= delta and |e| <= eta, where
#   round to nearest (even or away):  delta = u = eps/2,  eta = smallest_subnormal / 2;
#   directed modes and round to odd:  delta = eps = 2u,   eta = smallest_subnormal;
# (in the normal range the error is below half an ulp resp. one ulp, and ulp(x) <= eps |x|;
# in the subnormal range it is below half the resp. the whole subnormal spacing).  For a
# format without subnormals we take eta = smallest_normal (its smallest_subnormal) for
# every mode, the whole gap between 0 and the smallest normal.
#
# Summation trees.  If every rounding of a summation (in any order, any tree shape) is
# written in that form, the computed sum is exactly
#   s_hat = sum_k t_k prod_{roundings on t_k's path} (1 + d_i)
#           + sum_i e_i prod_{roundings above i} (1 + d_j),
# so with d the most roundings on any path and R the number of roundings,
#   |s_hat - s| <= ((1 + delta)^d - 1) sum_k |t_k| + R eta (1 + delta)^d
#               <= gamma_d sum_k |t_k| + R eta / (1 - d delta),   gamma_d = d delta/(1 - d delta)
# (Higham Lemma 3.1 and eq. (4.3), with Higham's absolute underflow term added).
# ---------------------------------------------------------------------------------------

def assert_matmul_close(candidate, A, B, model, out: Format | str | None = None,
                        out_mode: str = "nearest_even") -> None:
    """assert_close(candidate, "matmul", A, B, model=model, out=out) for 2-D A and B: the
    candidate is the model's accumulator value, or that value rounded to out in out_mode."""
    assert_close(candidate, "matmul", A, B, model=model, out=model.acc if out is None else out,
                 mode=out_mode)
