"""Running error analysis: a value computed in float64 beside rigorous bounds on the error
of that float64 value and on the error of a candidate that computes the same formula in
another arithmetic (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed.,
sec. 2.2 (the model with underflow) and 3.3 (running error bounds)).

Every exact real intermediate q of an op's mathematical definition is an `Enclosed` triple
(v, rho, r): v its float64 value, |v - q| <= rho, and |q_hat - q| <= r for the candidate's
q_hat. One step q = op(a, b) propagates both radii with the same rule:

- the error the inputs carry into the exact op (P): a +- b: e_a + e_b; a b: |a| e_b + |b| e_a
  + e_a e_b; a / b: (e_a + |a / b| e_b) / (|b| - e_b); f(a): L e_a, with L the largest |f'|
  on an interval holding every value the inputs can take;
- then one rounding of the arithmetic: delta |p| + eta, with |p| <= |q| + P (see Arithmetic).

|q| is bounded by |v| + rho, so nothing here depends on the candidate's values. The radii are
sums and products of non-negative float64 numbers: their own rounding errors (at most a
factor 1 + n 2**-53 for n operations, n < 2**20 here) are covered by the final factor
1 + 2**-30 of `margin`. The float64 side assumes, as mpgrad.numerics.elementary does, that
NumPy/SciPy's exp, log, tanh, expit and erf are within 2**-42 relative of the true value
wherever that value is normal (and within 2**-1022 absolute below).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import special

from ..accumulate.models import Model, error_bound
from ..accumulate.rounding_error import round_params, tree_bound
from ..numerics.exact_matmul import exact_matmul
from ..numerics.formats import Format, as_format, float64
from ..numerics.rounding import round_to, to_float64

__all__ = ["Arithmetic", "REFERENCE", "Enclosed", "Calc", "exact", "margin", "round_to_format"]

_LIBM = 2.0 ** -42    # the assumed relative accuracy of float64 elementary functions
_SLACK = 1 + 2.0 ** -40  # on every Lipschitz constant evaluated in float64 (see module doc)
_TINY = 2.0 ** -1074


@dataclass(frozen=True)
class Arithmetic:
    """How one side computes: each +, -, *, / and sqrt rounded once to fmt in mode; each
    elementary function within ulps ulps of fmt; reductions by model (None: any order in fmt)."""

    fmt: Format = float64
    mode: str = "nearest_even"
    ulps: float = 0.5
    model: Model | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "fmt", as_format(self.fmt))
        round_params(self.fmt, self.mode)  # a mode without a bound (stochastic) is an error
        if not (np.isfinite(self.ulps) and self.ulps >= 0.5):
            raise ValueError(f"ulps must be a finite number >= 0.5 (correctly rounded), "
                             f"got {self.ulps!r}")

    def basic(self) -> tuple[float, float]:
        """(delta, eta) of one rounding: |fl(x) - x| <= delta |x| + eta."""
        delta, eta = round_params(self.fmt, self.mode)
        return delta, max(eta, _TINY)

    def function(self) -> tuple[float, float]:
        """(delta, eta) of one elementary function: ulps ulps, an ulp <= eps |y| or the
        smallest subnormal (the gap below the smallest normal in formats without subnormals)."""
        return self.ulps * self.fmt.eps, max(self.ulps * self.fmt.smallest_subnormal, _TINY)


REFERENCE = Arithmetic(float64)  # the float64 side; its functions use _LIBM instead


@dataclass(frozen=True)
class Enclosed:
    """A float64 value v of an exact real q with |v - q| <= rho, and a candidate's radius r."""

    v: np.ndarray
    rho: np.ndarray
    r: np.ndarray

    @property
    def mag(self) -> np.ndarray:
        """An upper bound on |q|."""
        return np.abs(self.v) + self.rho


def exact(x) -> Enclosed:
    """An exactly known input: both radii zero."""
    v = np.asarray(x, dtype=np.float64)
    return Enclosed(v, np.zeros(v.shape), np.zeros(v.shape))


def margin(r: np.ndarray) -> np.ndarray:
    """A radius made safe against the float64 rounding of its own evaluation."""
    return r * (1 + 2.0 ** -30) + 2.0 ** -1060


def _interval(x: Enclosed) -> tuple[np.ndarray, np.ndarray]:
    """Every value the exact x, its float64 value and the candidate's can take."""
    w = x.rho + x.r
    return x.v - w, x.v + w


def _distance_from_zero(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """min |t| over [lo, hi]."""
    return np.where((lo <= 0) & (hi >= 0), 0.0, np.minimum(np.abs(lo), np.abs(hi)))


def _positive_low(lo: np.ndarray) -> np.ndarray:
    """lo where positive, else NaN (a function whose derivative is unbounded there)."""
    return np.where(lo > 0, lo, np.nan)


# The largest |f'| on [lo, hi], for each elementary function (NaN: unbounded).
_LIPSCHITZ: dict[str, Callable] = {
    "exp": lambda lo, hi: np.exp(hi),
    "log": lambda lo, hi: 1 / _positive_low(lo),
    "sqrt": lambda lo, hi: 0.5 / np.sqrt(_positive_low(lo)),
    "rsqrt": lambda lo, hi: 0.5 * _positive_low(lo) ** -1.5,
    "erf": lambda lo, hi: 2 / np.sqrt(np.pi) * np.exp(-_distance_from_zero(lo, hi) ** 2),
    "tanh": lambda lo, hi: 1 / np.cosh(_distance_from_zero(lo, hi)) ** 2,
    "sigmoid": lambda lo, hi: (special.expit(_distance_from_zero(lo, hi))
                               * special.expit(-_distance_from_zero(lo, hi))),
}
_FUNCTIONS: dict[str, Callable] = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "rsqrt": lambda x: 1 / np.sqrt(x),
    "erf": special.erf, "tanh": np.tanh, "sigmoid": special.expit,
}
_ROUNDED_IN_FLOAT64 = {"sqrt"}  # correctly rounded by IEEE 754, not a libm function


class Calc:
    """The steps of a formula, each propagating the float64 and the candidate's radii."""

    def __init__(self, candidate: Arithmetic, out: Format | None = None) -> None:
        self.cand = candidate
        self.out = candidate.fmt if out is None else as_format(out)

    def stored(self, x: Enclosed) -> Enclosed:
        """x as the candidate stores a result: rounded to its output format."""
        if self.out == self.cand.fmt:
            return x
        return round_to_format(x, self.out, self.cand.mode)

    def _rounded(self, v, p_ref, p_cand, ref: tuple, cand: tuple) -> Enclosed:
        """q = the exact op's value; v its float64 result, p_* the errors carried in."""
        with np.errstate(all="ignore"):
            v = np.asarray(v, dtype=np.float64)
            d_ref, e_ref = ref
            rho = p_ref + d_ref * (np.abs(v) + e_ref) / (1 - d_ref) + e_ref
            mag = np.abs(v) + rho
            d, e = cand
            r = p_cand + d * (mag + p_cand) + e
            r = np.where(mag + p_cand > self.cand.fmt.max, np.inf, r)  # it may overflow
            bad = ~np.isfinite(v) | np.isnan(rho) | np.isnan(r)
            return Enclosed(v, np.where(bad, np.inf, rho), np.where(bad, np.inf, r))

    def _basic(self, v, p_ref, p_cand) -> Enclosed:
        return self._rounded(v, p_ref, p_cand, REFERENCE.basic(), self.cand.basic())

    def const(self, value: float, exact: bool = False) -> Enclosed:
        """A constant of the formula: value itself if exact, else its float64 rounding
        (within 2**-50 relative); the candidate holds it rounded to its format."""
        v = np.float64(value)
        rho = np.float64(0.0 if exact else abs(v) * 2.0 ** -50)
        held = float(to_float64(round_to(v, self.cand.fmt, self.cand.mode)))
        d, _ = self.cand.basic()
        r = np.float64(0.0 if exact and held == v else d * (abs(v) + rho) + rho)
        return Enclosed(v, rho, r)

    def add(self, a: Enclosed, b: Enclosed) -> Enclosed:
        with np.errstate(all="ignore"):
            return self._basic(a.v + b.v, a.rho + b.rho, a.r + b.r)

    def sub(self, a: Enclosed, b: Enclosed) -> Enclosed:
        return self.add(a, self.neg(b))

    def neg(self, a: Enclosed) -> Enclosed:
        """-a (exact)."""
        return Enclosed(-a.v, a.rho, a.r)

    def mul(self, a: Enclosed, b: Enclosed) -> Enclosed:
        with np.errstate(all="ignore"):
            p_ref = np.abs(a.v) * b.rho + b.mag * a.rho
            p = a.mag * b.r + b.mag * a.r + a.r * b.r
            return self._basic(a.v * b.v, p_ref, p)

    def div(self, a: Enclosed, b: Enclosed) -> Enclosed:
        with np.errstate(all="ignore"):
            low = np.abs(b.v) - b.rho  # <= |b|
            ratio = np.where(low > 0, a.mag / low, np.inf)  # >= |a / b|
            p_ref = (a.rho + ratio * b.rho) / np.abs(b.v)
            cand_low = low - b.r
            p = np.where(cand_low > 0, (a.r + ratio * b.r) / cand_low, np.inf)
            return self._basic(a.v / b.v, p_ref, p)

    def fn(self, name: str, a: Enclosed) -> Enclosed:
        """An elementary function (exp, log, sqrt, rsqrt, erf, tanh, sigmoid) of a."""
        with np.errstate(all="ignore"):
            lo, hi = _interval(a)
            L = _LIPSCHITZ[name](lo, hi) * _SLACK
            ref = REFERENCE.basic() if name in _ROUNDED_IN_FLOAT64 else (_LIBM, 2.0 ** -1022)
            cand = self.cand.basic() if name == "sqrt" else self.cand.function()
            p_ref, p = L * a.rho, L * a.r
            return self._rounded(_FUNCTIONS[name](a.v), np.where(a.rho == 0, 0.0, p_ref),
                                 np.where(a.r == 0, 0.0, p), ref, cand)

    def max(self, a: Enclosed, axis: int) -> Enclosed:
        """The maximum along axis (exact), keeping the axis."""
        return Enclosed(np.max(a.v, axis=axis, keepdims=True),
                        np.max(a.rho, axis=axis, keepdims=True),
                        np.max(a.r, axis=axis, keepdims=True))

    def sum(self, a: Enclosed, axes: tuple, keepdims: bool = True) -> Enclosed:
        """The sum over axes: in float64 in any order, by the candidate's model or in any
        order in its format; a model's result is then rounded to the candidate's format."""
        n = int(np.prod([a.v.shape[k] for k in axes]))
        front = tuple(range(len(axes)))
        v, rho, r, mag = (np.moveaxis(x, axes, front).reshape((n,) + _rest(a.v.shape, axes))
                          for x in (a.v, a.rho, a.r, a.mag))
        shape = v.shape[1:]
        with np.errstate(all="ignore"):
            total = np.sum(v, axis=0)
            p_ref = np.sum(rho, axis=0)
            if n > 1:
                p_ref = p_ref + tree_bound(np.sum(np.abs(v), axis=0), n - 1, n - 1,
                                           float64, "nearest_even")
            bound = mag + r
            p = np.sum(r, axis=0)
            model = self.cand.model
            if n == 0:
                err = np.zeros(shape)
            elif model is None:
                err = tree_bound(np.sum(bound, axis=0), n - 1, n - 1, self.cand.fmt,
                                 self.cand.mode) if n > 1 else np.zeros(shape)
            else:
                err, _ = error_bound(model, n, lambda k0, k1: np.sum(bound[k0:k1], axis=0),
                                     shape)
            out = self._after_model(Enclosed(total, p_ref, p + err))
        out = Enclosed(*(x.reshape(_kept(a.v.shape, axes)) for x in (out.v, out.rho, out.r)))
        if keepdims:
            return out
        return Enclosed(*(np.squeeze(x, axis=axes) for x in (out.v, out.rho, out.r)))

    def _after_model(self, s: Enclosed) -> Enclosed:
        """A model's accumulator value rounded to the candidate's format, if it differs."""
        model = self.cand.model
        if model is None or model.acc == self.cand.fmt:
            return s
        return round_to_format(s, self.cand.fmt, self.cand.mode)

    def matmul(self, a: np.ndarray, b: np.ndarray) -> Enclosed:
        """a @ b of exact arrays (batched as np.matmul): the exact value as a float64 pair;
        the candidate's error from its model (exact products) or, without one, products
        and sums rounded in its format in any order (Higham eq. (3.5)), fused or not."""
        hi, lo = exact_matmul(a, b)
        K = a.shape[-1]
        aa, ab = np.abs(a), np.abs(b)

        def T(k0: int, k1: int) -> np.ndarray:  # sum |a_k b_k|: BLAS sums positive terms,
            t = aa[..., k0:k1] @ ab[..., k0:k1, :]  # within gamma_K(2**-53) of the truth
            return t * (1 + 4 * (k1 - k0 + 2) * 2.0 ** -53) + (k1 - k0) * _TINY

        with np.errstate(all="ignore"):
            rho = np.abs(lo)
            model = self.cand.model
            if K == 0:
                err = np.zeros(hi.shape)
            elif model is None:
                err = tree_bound(T(0, K), K, 2 * K - 1, self.cand.fmt, self.cand.mode)
            else:
                err, _ = error_bound(model, K, T, hi.shape, np.abs(hi) + rho)
            return self._after_model(Enclosed(hi, rho, err))


def round_to_format(x: Enclosed, fmt: Format, mode: str) -> Enclosed:
    """The candidate's value rounded once more, to fmt (its output format)."""
    d, e = Arithmetic(fmt, mode).basic()
    with np.errstate(all="ignore"):
        r = x.r + d * (x.mag + x.r) + e
        return Enclosed(x.v, x.rho, np.where(x.mag + x.r > fmt.max, np.inf, r))


def _rest(shape: tuple, axes: tuple) -> tuple:
    return tuple(s for k, s in enumerate(shape) if k not in axes)


def _kept(shape: tuple, axes: tuple) -> tuple:
    return tuple(1 if k in axes else s for k, s in enumerate(shape))
