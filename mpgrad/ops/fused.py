"""Fused operations of the optimizers' kernels: a*b + z rounded once (torch's vectorised
fmadd, behind add with alpha, addcmul and lerp), and torch's lerp."""

from __future__ import annotations

import numpy as np

from ..autodiff.engine import Op, apply
from ..autodiff.tensor import Tensor
from ..numerics.exact import clean_pair, exact_sum, two_prod, two_sum
from ..numerics.formats import Format
from ..numerics.rounding import round_to, to_float64
from .elementwise import sub

__all__ = ["muladd", "muladd_exact", "lerp", "rounded"]


def muladd_exact(a, b, z) -> tuple[np.ndarray, np.ndarray]:
    """The exact a*b + z as a pair (hi, lo), exact or rounding-equivalent (see mpgrad.exact)."""
    a, b, z = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a, b, z)))
    p, e = clean_pair(*two_prod(a, b))  # -0 * 1 + -0 stays -0, as IEEE's fma
    if np.any(e):  # the product is not a double (float64 operands): add three terms exactly
        hi, lo = exact_sum(np.stack((z, p, e), axis=-1), axis=-1)
    else:  # operands of <= 26 bits: the product is exact, TwoSum is exact
        with np.errstate(invalid="ignore"):
            hi, lo = two_sum(z, p)
    return clean_pair(hi, lo)


# a*b + z rounded once: what torch's vectorised fmadd computes for add(alpha), addcmul, lerp.
_MULADD = Op("muladd", lambda c, a, b, z: muladd_exact(a, b, z))


def muladd(a, b, z) -> Tensor:
    """a*b + z rounded once (a fused multiply-add) in the compute format; numbers are
    rounded to that format first, as in every mpgrad op."""
    return apply(_MULADD, a, b, z)


def rounded(value: float, fmt: Format) -> float:
    """A Python number rounded (nearest even) to fmt, as a float: how ops see numbers."""
    return float(to_float64(round_to(np.float64(value), fmt)))


def lerp(start: Tensor, end: Tensor, weight: float) -> Tensor:
    """torch's lerp kernel: w = weight rounded; d = end - start rounded; then, rounded once,
    start + w*d if |w| < 0.5, else end + (w - 1)*d with w - 1 rounded."""
    w = rounded(weight, start.dtype)
    diff = sub(end, start)
    if abs(w) < 0.5:
        return muladd(w, diff, start)
    return muladd(rounded(w - 1.0, start.dtype), diff, end)
