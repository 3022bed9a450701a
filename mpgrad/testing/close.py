"""assert_close: is a kernel's result within a rigorous bound of the exact result of the op?

Elementwise ops are checked in ulps of the output format against the exact value (exact
pairs for +, -, *, / and sqrt; 2**-42-accurate float64 or 120-bit mpmath values for the
elementary functions), with the sign of zero IEEE 754 gives. Every other op is checked
against the running error bound of its candidate arithmetic (opbounds.py, enclosure.py):
a candidate c is accepted where |c - v| <= r + rho, v the float64 value of the exact result q
with |v - q| <= rho, r the bound on the candidate's error. So an accepted c is within
r + 2 rho of q, and every c within r of q is accepted; rho comes from the same analysis
in float64 with 2**-42-accurate functions, some 2**-18 of a float32 kernel's r.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mpmath
import numpy as np
from scipy import special

from ..accumulate.bounds import abs_up
from ..autodiff.tensor import Tensor, is_torch_tensor, tensor
from ..nn import functional as F
from .. import ops
from ..numerics.bits import ulp
from ..numerics.exact import exact_div, exact_sqrt, exact_sum, two_prod, two_sum
from ..numerics.formats import Format, as_format, bfloat16, float16, float64
from ..numerics.rounding import round_to, to_float64
from .enclosure import Arithmetic, Calc, Enclosed, exact, margin
from .opbounds import ELEMENTWISE, RULES

__all__ = ["assert_close", "compare", "Comparison", "TensorCheck", "Offender", "OPS", "OP_CALLS",
           "op_name"]

OPS = tuple(RULES)
_BY_FUNCTION = {getattr(module, name): name for name in RULES for module in (ops, F)
                if hasattr(module, name)}
_SUMS = ("linear", "matmul", "sum", "mean")  # a model reduces their terms as they are
_REDUCING = set(_SUMS) | {"softmax", "log_softmax", "cross_entropy", "layer_norm"}
_WORST = 5


def _layer_norm(x, weight=None, bias=None, normalized_shape=None, eps=1e-5):
    shape = x.shape[-1:] if normalized_shape is None else normalized_shape
    return F.layer_norm(x, shape, weight, bias, eps)


# mpgrad's implementation of each op, called with assert_close's inputs and op arguments
OP_CALLS = {**{name: getattr(ops, name) for name in RULES if hasattr(ops, name)},
            "softmax": F.softmax, "log_softmax": F.log_softmax, "linear": F.linear,
            "cross_entropy": F.cross_entropy, "layer_norm": _layer_norm}


@dataclass(frozen=True)
class Offender:
    """One element outside its bound."""

    index: tuple
    exact: float       # the float64 value of the exact result
    candidate: float
    bound: float       # the largest |candidate - exact| accepted there
    ulps: float        # |candidate - exact| in ulps of the output format at exact


@dataclass(frozen=True)
class TensorCheck:
    """The verdict on one tensor (the output, or the gradient of one input)."""

    name: str
    format: str
    count: int
    failed: int
    max_ulps: float
    worst: list = field(default_factory=list)
    diagnosis: str | None = None

    @property
    def passed(self) -> bool:
        return self.failed == 0

    def __str__(self) -> str:
        head = (f"{self.name} ({self.format}): {self.failed} of {self.count} elements outside "
                f"the bound; largest distance {self.max_ulps:.4g} ulps")
        # the exact value to 12 digits: its float64 value is known to 2**-42 relative
        lines = [head] + [f"  at {o.index}: candidate {o.candidate!r}, exact {o.exact:.12g}, "
                          f"bound {o.bound:.4g}, {o.ulps:.4g} ulps" for o in self.worst]
        if self.diagnosis:
            lines.append(f"  diagnosis: {self.diagnosis}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Comparison:
    """compare's result: one TensorCheck per checked tensor."""

    op: str
    arithmetic: str
    tensors: list

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.tensors)

    def __str__(self) -> str:
        verdict = "within" if self.passed else "outside"
        lines = [f"{self.op}: candidate {verdict} the rigorous bound of {self.arithmetic}"]
        lines += [str(t) if not t.passed else f"{t.name} ({t.format}): all {t.count} "
                  f"elements within the bound; largest distance {t.max_ulps:.4g} ulps"
                  for t in self.tensors]
        return "\n".join(lines)


def op_name(op) -> str:
    """The name in OPS of an op given by name or as the mpgrad function."""
    name = op if isinstance(op, str) else _BY_FUNCTION.get(op)
    if name not in RULES:
        raise ValueError(f"assert_close: no bound for op {op!r}; ops with bounds: "
                         f"{', '.join(OPS)}")
    return name


def _candidate(x, what: str, out) -> tuple[np.ndarray, Format]:
    """The exact values of a candidate and its format (out if given)."""
    if is_torch_tensor(x):
        x = tensor(x)
    if isinstance(x, Tensor):
        return np.array(x.to_float64(), dtype=np.float64), as_format(out or x.dtype)
    a = np.asarray(x)
    if a.dtype.kind != "f" and a.dtype.name not in ("bfloat16",) and out is None:
        raise TypeError(f"assert_close: {what} has dtype {a.dtype}; give out=FORMAT")
    fmt = as_format(out if out is not None else a.dtype)
    return np.array(to_float64(a), dtype=np.float64), fmt


def _input(x, k: int, compute: Format, labels: bool) -> Enclosed | None:
    """Input k as exact values, checked finite and held exactly by the compute format."""
    if x is None:
        return None
    if is_torch_tensor(x):
        x = tensor(x)
    if labels:
        return exact(np.asarray(x.to_float64() if isinstance(x, Tensor) else x))
    v = np.array(x.to_float64() if isinstance(x, Tensor) else to_float64(np.asarray(x)),
                 dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"assert_close: input {k} has non-finite values; compare such "
                         "cases bit for bit (assert_bits_equal)")
    if not np.array_equal(to_float64(round_to(v, compute)), v):
        raise ValueError(f"assert_close: input {k} has values {compute.name} does not hold; "
                         "the candidate would round them: round the inputs first, or give "
                         "a wider compute format")
    return exact(v)


def _ulps(dist: np.ndarray, v: np.ndarray, fmt: Format) -> np.ndarray:
    with np.errstate(all="ignore"):
        return dist / ulp(np.where(np.isfinite(v), v, fmt.max), fmt)


def _verdict(name: str, c: np.ndarray, fmt: Format, v: np.ndarray, dist: np.ndarray,
             bound: np.ndarray, ok: np.ndarray) -> TensorCheck:
    """The TensorCheck of candidate c: ok where accepted, dist its distance from v."""
    u = np.nan_to_num(_ulps(dist, v, fmt), nan=np.inf)
    bad = ~ok
    worst = []
    if bad.any():
        with np.errstate(all="ignore"):
            ratio = np.where(bad, np.nan_to_num(dist / bound, nan=np.inf, posinf=np.inf), -1)
        flat = np.argsort(-ratio, axis=None, kind="stable")[:min(_WORST, int(bad.sum()))]
        for i in flat:
            k = np.unravel_index(int(i), c.shape) if c.ndim else ()
            worst.append(Offender(tuple(int(j) for j in k), float(v[k]), float(c[k]),
                                  float(bound[k]), float(u[k])))
    return TensorCheck(name, fmt.name, int(c.size), int(bad.sum()),
                       float(u.max()) if u.size else 0.0, worst)


def _check_enclosed(name: str, c: np.ndarray, fmt: Format, y: Enclosed) -> TensorCheck:
    """Accept c where |c - v| <= r + rho; a non-finite c only where r is inf."""
    if c.shape != y.v.shape:
        raise ValueError(f"assert_close: {name} has shape {c.shape}, the op gives "
                         f"{y.v.shape}")
    fin = np.isfinite(c)
    with np.errstate(all="ignore"):
        dist = np.where(fin, abs_up(two_sum(np.where(fin, c, 0.0), -y.v)), np.inf)
        bound = margin(y.r) + y.rho
        ok = (dist <= bound) | np.isinf(y.r)
    return _verdict(name, c, fmt, y.v, dist, bound, ok)


# --- elementwise forward: in ulps of the output format ---

def _mp_function(name: str, x: np.ndarray) -> np.ndarray:
    """f(x) by mpmath at 120 bits, for outputs too precise for the 2**-42 float64 values."""
    f = {"exp": mpmath.exp, "log": mpmath.log, "tanh": mpmath.tanh, "erf": mpmath.erf,
         "sigmoid": lambda t: 1 / (1 + mpmath.exp(-t))}[name]
    with mpmath.workprec(120):
        return np.array([float(f(mpmath.mpf(float(t)))) if not (name == "log" and t <= 0)
                         else np.log(t) for t in x.ravel()]).reshape(x.shape)


def _reference(name: str, xs: list, fmt: Format, mode: str) -> tuple:
    """(hi, lo, extra, ieee): the exact value as a pair hi + lo (or hi within extra), and the
    float64 IEEE result whose sign a zero result must have."""
    a = xs[0]
    with np.errstate(all="ignore"):
        if name in ("add", "sub"):
            b = xs[1] if name == "add" else -xs[1]
            hi, lo = two_sum(a, b)
            ieee = a + b
            if mode == "down":  # x + (-x) is -0 when rounding down (IEEE 754 sec. 6.3)
                ieee = np.where((ieee == 0) & ~((a == 0) & (b == 0) & (np.signbit(a) ==
                                                                         np.signbit(b))),
                                -0.0, ieee)
            return hi, lo, 0.0, ieee
        if name == "mul":
            hi, lo = two_prod(a, xs[1])
            return hi, lo, 0.0, a * xs[1]
        if name == "div":
            hi, lo = exact_div(a, xs[1])
            return hi, lo, 0.0, a / xs[1]
        if name == "sqrt":
            hi, lo = exact_sqrt(a)
            return hi, lo, 0.0, np.sqrt(a)
        if name in ("relu", "neg", "abs"):
            hi = {"relu": np.maximum(a, 0.0), "neg": -a, "abs": np.abs(a)}[name]
            return hi, np.zeros(a.shape), 0.0, hi
        y = {"exp": np.exp, "log": np.log, "tanh": np.tanh, "erf": special.erf,
             "sigmoid": special.expit}[name](a)
        if fmt.precision > 40:
            y = _mp_function(name, a)
            return y, np.zeros(a.shape), np.abs(y) * 2.0 ** -100, y
        return y, np.zeros(a.shape), np.abs(y) * 2.0 ** -42 + 2.0 ** -1022, y


def _step(hi: np.ndarray, lo: np.ndarray, fmt: Format) -> np.ndarray:
    """The ulp of fmt at the exact value hi + lo (the smaller one just below a power of two)."""
    with np.errstate(all="ignore"):
        gap = ulp(np.where(np.isfinite(hi), hi, fmt.max), fmt)
        below = ((np.frexp(hi)[0] == 0.5) | (np.frexp(hi)[0] == -0.5)) & (lo * hi < 0)
        return np.where(below & (np.abs(hi) > fmt.smallest_normal), gap / 2, gap)


def _check_elementwise(name: str, op: str, c: np.ndarray, fmt: Format, ref: tuple,
                       ulps: float) -> TensorCheck:
    """Accept c within ulps ulps of the exact value (the format's own result for a non-finite
    one), a zero with the sign IEEE 754 gives it."""
    hi, lo, extra, ieee = ref
    if c.shape != hi.shape:
        raise ValueError(f"assert_close: {name} has shape {c.shape}, the op gives {hi.shape}")
    with np.errstate(all="ignore"):
        y = hi + lo
        ref_fin = np.isfinite(hi) & np.isfinite(lo)
        tol = ulps * _step(hi, lo, fmt) + extra
        fin = np.isfinite(c)
        both = fin & ref_fin
        dist = np.full(c.shape, np.inf)
        if both.any():
            terms = np.stack([np.where(both, c, 0.0), -np.where(both, hi, 0.0),
                              -np.where(both, lo, 0.0)])
            dist = np.where(both, abs_up(exact_sum(terms, axis=0)), np.inf)
        top = fmt.max + float(ulp(fmt.max, fmt))  # an overflow to +-inf stands for +-top
        same = np.sign(c) == np.sign(y)
        over = np.isinf(c) & ref_fin & same
        dist = np.where(over, np.where(np.abs(y) >= top, 0.0, np.abs(top - np.abs(y))), dist)
        ok = dist <= tol
        special_ref = ~ref_fin
        if special_ref.any():  # x / 0, 0 / 0, sqrt(-1), log(0): the format's rounding of it
            expected = to_float64(round_to(np.where(special_ref, hi, 0.0), fmt))
            ok = np.where(special_ref, (np.isnan(c) & np.isnan(expected)) | (c == expected), ok)
        if op != "relu":
            sign = np.where(y != 0, np.signbit(y), np.signbit(ieee))
            ok &= ~(fin & (c == 0) & ref_fin & (np.signbit(c) != sign))
    return _verdict(name, c, fmt, y, dist, tol, ok)


def _broadcast(xs: list) -> list:
    vs = np.broadcast_arrays(*[x.v for x in xs])
    return [Enclosed(v, np.zeros(v.shape), np.zeros(v.shape)) for v in vs]


def _expected(name: str, calc: Calc, xs: list, g: Enclosed | None, op_args: dict,
              ulps: float) -> list:
    """[(label, Enclosed or an elementwise reference)] for each tensor to check."""
    rule = RULES[name]
    if name in ELEMENTWISE:
        full = _broadcast(xs)
        ref = _reference(name, [x.v for x in full], calc.out, calc.cand.mode)
        if g is None:
            return [("output", ref)]
        hi, lo, extra, _ = ref
        y = Enclosed(hi, np.abs(lo) + extra, ulps * _step(hi, lo, calc.out))
        grads = rule.backward(calc, xs, y, g)
    else:
        y = calc.stored(rule.forward(calc, *xs, **op_args))
        if g is None:
            return [("output", y)]
        grads = rule.backward(calc, xs, y, g, **op_args)
    return [(f"grad[{k}]", None if e is None else calc.stored(e)) for k, e in enumerate(grads)]


def _checks(name: str, expected: list, cands: list, ulps: float) -> list:
    out = []
    for (label, ref), cand in zip(expected, cands):
        if ref is None or cand is None:
            continue
        c, fmt = cand
        if isinstance(ref, Enclosed):
            out.append(_check_enclosed(label, c, fmt, ref))
        else:
            out.append(_check_elementwise(label, name, c, fmt, ref, ulps))
    return out


def _hypotheses(name: str, calc: Calc, xs: list) -> list:
    """(diagnosis, Arithmetic) pairs worth trying when a candidate fails."""
    narrow = []
    if name not in ELEMENTWISE and calc.out != calc.cand.fmt:
        text = (f"looks like {calc.out.name} accumulation" if name in _SUMS else
                f"looks like intermediates rounded to {calc.out.name} (computed in the "
                "output format)")
        if name == "linear":
            text += f", or the product rounded to {calc.out.name} before the bias is added"
        narrow = [(text, Arithmetic(calc.out, calc.cand.mode, calc.cand.ulps))]
    fmts = [f for f in (float16, bfloat16) if f not in (calc.cand.fmt, calc.out)]
    out = narrow + ([(f"looks like {f.name} accumulation",
                      Arithmetic(f, calc.cand.mode, calc.cand.ulps)) for f in fmts]
                    if name in _REDUCING else [])
    return [h for h in out if all(x is None or np.array_equal(  # inputs it holds
        to_float64(round_to(x.v, h[1].fmt)), x.v) for x in xs)]


def _dropped_term(xs: list, check: TensorCheck) -> str | None:
    """Whether each worst element of a matmul is the exact result less one product."""
    a, b = xs[0].v, xs[1].v
    batch_shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    ab = np.broadcast_to(a, batch_shape + a.shape[-2:])
    bb = np.broadcast_to(b, batch_shape + b.shape[-2:])
    eps = as_format(check.format).eps  # the sum less a term is rounded to another value
    found = []
    for o in check.worst:
        *batch, i, j = o.index
        t = ab[tuple(batch) + (i, slice(None))] * bb[tuple(batch) + (slice(None), j)]
        k = int(np.argmin(np.abs(o.candidate - (o.exact - t))))
        if not abs(o.candidate - (o.exact - t[k])) <= o.bound + eps * abs(o.candidate):
            return None
        found.append(k)
    return (f"looks like a dropped term: each worst element is the exact sum less one "
            f"product (k = {', '.join(map(str, found))})") if found else None


def _diagnosis(name: str, calc: Calc, xs: list, g, op_args: dict, cands: list,
               checks: list) -> list:
    """The checks again, each failing one with a one-line diagnosis where one fits."""
    found = {}
    for text, arith in _hypotheses(name, calc, xs):
        alt = _checks(name, _expected(name, Calc(arith, calc.out), xs, g, op_args, arith.ulps),
                      cands, arith.ulps)
        for t in alt:
            if t.passed:
                found.setdefault(t.name, text)
    out = []
    for t in checks:
        text = found.get(t.name)
        if not t.passed and name == "matmul" and g is None and text is None:
            text = _dropped_term(xs, t)
        if not t.passed and name in ELEMENTWISE and text is None:
            zeros = [o for o in t.worst if o.candidate == 0 and o.exact == 0]
            if zeros and len(zeros) == len(t.worst):
                text = "wrong sign of zero (the exact result's IEEE 754 sign differs)"
            elif all(o.ulps <= 1 for o in t.worst):
                text = ("within 1 ulp: one rounding too many (double rounding through a "
                        "wider format) or a faithful, not correctly rounded, result")
        out.append(TensorCheck(t.name, t.format, t.count, t.failed, t.max_ulps, t.worst,
                               text) if not t.passed else t)
    return out


def compare(candidate, op, *inputs, compute: Format | str | None = None, model=None,
            out: Format | str | None = None, grad=None, ulps: float = 0.5,
            mode: str = "nearest_even", **op_args) -> Comparison:
    """The verdict assert_close gives, as a Comparison (see assert_close)."""
    name = op_name(op)
    rule = RULES[name]
    if not 1 <= len(inputs) <= rule.inputs:
        raise TypeError(f"assert_close: {name} takes 1 to {rule.inputs} inputs, "
                        f"got {len(inputs)}")
    if grad is None:
        listed = [candidate]
    else:
        listed = list(candidate) if isinstance(candidate, (list, tuple)) else [candidate]
    cands = [None if c is None else _candidate(c, f"candidate {k}", out)
             for k, c in enumerate(listed)]
    known = [c for c in cands if c is not None]
    if not known:
        raise ValueError("assert_close: no candidate tensor to check")
    fmt_out = known[0][1]
    compute_fmt = as_format(compute) if compute is not None else (
        model.acc if model is not None else fmt_out)
    arith = Arithmetic(compute_fmt, mode, ulps, model)
    held = float64 if model is not None and name in _SUMS else compute_fmt
    xs = [_input(x, k, held, name == "cross_entropy" and k == 1)
          for k, x in enumerate(inputs)]
    g = None if grad is None else _input(grad, -1, compute_fmt, False)
    calc = Calc(arith, fmt_out)
    checks = _checks(name, _expected(name, calc, xs, g, op_args, ulps), cands, ulps)
    if not all(t.passed for t in checks):
        checks = _diagnosis(name, calc, xs, g, op_args, cands, checks)
    what = f"{'the backward of ' if grad is not None else ''}{name}"
    if name in ELEMENTWISE and grad is None:
        what += " correctly rounded" if ulps == 0.5 else f" within {ulps} ulps"
    else:
        what += f" computed in {compute_fmt.name}"
        what += f" with {model!r}" if model is not None else " (any summation order)"
        what += f", out {fmt_out.name}"
        if name not in _SUMS + ("add", "sub", "mul", "div", "neg", "abs", "relu"):
            what += f", functions within {ulps} ulps"
    return Comparison(name, what, checks)


def assert_close(candidate, op, *inputs, compute: Format | str | None = None, model=None,
                 out: Format | str | None = None, grad=None, ulps: float = 0.5,
                 mode: str = "nearest_even", **op_args) -> None:
    """Assert candidate lies within a rigorous bound of the exact op(*inputs, **op_args).

    op: a name in OPS or the mpgrad function; compute: the format the candidate computes in
    (default: model.acc, else its output format); model: the accumulation model of its
    reductions (default: any order in compute); out: its output format (default: its own);
    grad: the gradient of the output, making candidate the gradients of the inputs (a tuple,
    None where not checked); ulps: for elementwise ops, the tolerance in ulps of out (0.5:
    correctly rounded), for the others the accuracy of the candidate's exp, log, erf, tanh
    and rsqrt in ulps of compute; mode: its rounding mode. Raises AssertionError with the
    counts, the worst elements and a diagnosis where one fits.
    """
    result = compare(candidate, op, *inputs, compute=compute, model=model, out=out, grad=grad,
                     ulps=ulps, mode=mode, **op_args)
    if not result.passed:
        raise AssertionError(str(result))
