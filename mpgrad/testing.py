"""Test helpers: gradient checks against finite differences and bit-exact comparisons."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .autograd import no_grad
from .bits import to_bits
from .formats import Format, as_format, float64
from .rounding import to_float64
from .tensor import Tensor

__all__ = ["check_grads", "assert_bits_equal", "accumulation_error_bound", "assert_matmul_close"]

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

_U53 = 2.0 ** -53  # float64's unit roundoff: the arithmetic the bound itself is computed in


def _round_params(fmt: Format, mode: str) -> tuple[float, float]:
    """(delta, eta) of one rounding to fmt in mode: |fl(x) - x| <= delta |x| + eta."""
    if mode in ("nearest_even", "nearest_away"):
        return fmt.unit_roundoff, (fmt.smallest_subnormal / 2 if fmt.subnormals
                                   else fmt.smallest_subnormal)
    if mode in ("toward_zero", "up", "down", "odd"):
        return fmt.eps, fmt.smallest_subnormal
    raise ValueError(f"no error bound for rounding mode {mode!r} (stochastic rounding is "
                     "not an accumulation model)")


def _gamma(d: int, delta: float) -> float:
    """gamma_d = d delta / (1 - d delta), inf when d delta >= 1 (no bound)."""
    x = d * delta
    return x / (1 - x) if x < 1 else np.inf


def _tree_bound(T: np.ndarray, d: int, R: int, fmt: Format, mode: str) -> np.ndarray:
    """gamma_d T + R eta / (1 - d delta): a tree of R roundings, at most d on any path."""
    delta, eta = _round_params(fmt, mode)
    if d * delta >= 1:
        return np.full(T.shape, np.inf)
    return _gamma(d, delta) * T + R * eta / (1 - d * delta)


def _pairwise_depth(n: int, block: int) -> int:
    """Most roundings on a leaf's path in Pairwise(block) over n >= 1 terms.

    A leaf block of n <= block terms: each term is rounded to acc (1) and the first one
    then passes the n - 1 additions (1 + n - 1 = n); a split adds one rounding above the
    deeper half, which is the larger one, n - n//2.  This is <= n, so gamma_K also holds.
    """
    depth = 1
    while n > block:
        n, depth = n - n // 2, depth + 1
    return depth - 1 + n


def _model_bound(model, K: int, T, shape: tuple, s_abs=None) -> tuple[np.ndarray, np.ndarray]:
    """(err, mag): bounds on |result - exact sum| and on |result| for K terms.

    T(k0, k1) is an upper bound on sum_{k0 <= k < k1} |t_k| (an (M, N) array); s_abs, if
    given, an upper bound on |exact sum| (used by Exact only).  err is inf where an
    intermediate value could reach the accumulator's overflow threshold.
    """
    from .accumulate import BlockFMA, Chunked, Exact, Pairwise, Sequential

    if K == 0:  # every model returns +0 for an empty sum
        return np.zeros(shape), np.zeros(shape)
    if isinstance(model, Chunked):
        # Inner model on each chunk c: |r_c - s_c| <= e_c and |r_c| <= m_c (its magnitude
        # bound).  The outer model sums the exact values r_c, so its error is bounded by its
        # own bound with term magnitudes m_c; the total is sum_c e_c + outer error.
        errs, mags = [], []
        for k0 in range(0, K, model.chunk):
            k1 = min(k0 + model.chunk, K)
            e, m = _model_bound(model.inner, k1 - k0, lambda a, b, k0=k0: T(k0 + a, k0 + b),
                                shape)
            errs.append(e), mags.append(m)
        stack = np.stack(mags)
        inner_err = np.sum(np.stack(errs), axis=0) * (1 + 4 * (len(errs) + 2) * _U53)
        outer_err, mag = _model_bound(
            model.outer, len(mags),
            lambda a, b: np.sum(stack[a:b], axis=0) * (1 + 4 * (b - a + 2) * _U53), shape)
        return inner_err + outer_err, mag
    acc = model.acc
    total = T(0, K)
    if isinstance(model, Exact):
        # One rounding of the exact sum s: |fl(s) - s| <= delta |s| + eta.
        delta, eta = _round_params(acc, model.rounding)
        s = total if s_abs is None else np.minimum(s_abs, total)
        err = delta * s + eta
        mag = s + err
    elif isinstance(model, Sequential):
        # d = K roundings on a path at most: with fma, t_1 passes the K roundings s_1..s_K
        # and t_k passes K - k + 1; without fma t_k is rounded first (1) and then passes
        # s_k..s_K, except that s_1 = fl(0 + fl(t_1)) is exact, so again at most K.
        # R = K (fma) or 2K - 1 roundings.  Any order of the additions gives the same d.
        R = K if model.fma else 2 * K - 1
        err = _tree_bound(total, K, R, acc, model.rounding)
        mag = total + err
    elif isinstance(model, Pairwise):
        # Every term is rounded to acc, then K - 1 additions: R = 2K - 1, and the depth
        # below (<= K; ~ block + log2(K / block)).
        err = _tree_bound(total, _pairwise_depth(K, model.block), 2 * K - 1, acc,
                          model.rounding)
        mag = total + err
    elif isinstance(model, BlockFMA):
        # Per block b (terms t_j, j in the block, plus c when include_accumulator): with
        # E = max floor(log2 |x|) over the items, 2^E <= max |x|, and truncating each item
        # toward zero to a multiple of 2^(E - F) loses less than 2^(E - F) (an item below
        # that is lost whole, also < 2^(E - F)).  So the aligned exact sum is
        #   sum(items) + tau,  |tau| <= n_items 2^-F max|x| <= n_items 2^-F (|c| + T_b),
        # with T_b = sum_{j in b} |t_j| and |c| <= S_{b-1} + e_{b-1} (S_b: the running
        # sum of |t|, e_b: the error bound after block b).  Then one rounding to acc:
        #   c_b = (c_{b-1} + sum t_j + tau)(1 + d) + e',  so
        #   e_b <= (e_{b-1} + |tau|)(1 + delta) + delta S_b + eta.
        # Without include_accumulator the block sum is rounded (error
        # eb = |tau| + delta (T_b + |tau|) + eta, with tau <= n_b 2^-F T_b) and then
        # c_b = fl(c_{b-1} + that):  e_b <= e_{b-1} + eb + delta (S_b + e_{b-1} + eb) + eta.
        delta, eta = _round_params(acc, model.rounding)
        f = 2.0 ** -model.fraction_bits
        e, S = np.zeros(shape), np.zeros(shape)
        for k0 in range(0, K, model.n):
            k1 = min(k0 + model.n, K)
            Tb = T(k0, k1)
            if model.include_accumulator:
                tau = (k1 - k0 + 1) * f * (S + e + Tb)
                S = S + Tb
                e = (e + tau) * (1 + delta) + delta * S + eta
            else:
                tau = (k1 - k0) * f * Tb
                eb = tau + delta * (Tb + tau) + eta
                S = S + Tb
                e = e + eb + delta * (S + e + eb) + eta
        err, mag = e, S + e
    else:
        raise ValueError(f"expected an accumulation model, got {model!r}")
    # Overflow: every intermediate value is at most the final magnitude bound in size
    # (partial sums of the terms plus their errors), so below acc.max nothing overflows.
    err = np.where(mag > acc.max, np.inf, err)
    return err, np.where(np.isinf(err), np.inf, mag)


def _values(x, name: str) -> np.ndarray:
    """The exact float64 values of a Tensor or array."""
    a = x.to_float64() if isinstance(x, Tensor) else to_float64(x)
    return np.array(a, dtype=np.float64)


def _abs_up(pair) -> np.ndarray:
    """An upper bound on |hi + lo| of a rounding-equivalent pair, in float64."""
    from .rounding import round_to
    up = to_float64(round_to(pair, float64, "up"))
    down = to_float64(round_to(pair, float64, "down"))
    return np.maximum(up, -down)


def _products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The exact products a[:, k] * b[k, :] stacked on a first axis (K, M, N)."""
    with np.errstate(invalid="ignore"):
        return np.ascontiguousarray(a.T)[:, :, None] * b[:, None, :]


def _operands(A, B) -> tuple[np.ndarray, np.ndarray]:
    from .accumulate import check_inputs
    a, b = _values(A, "A"), _values(B, "B")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"need (M, K) and (K, N) arrays, got {a.shape}, {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("error bounds need finite inputs")
    check_inputs(a, 26), check_inputs(b, 26)  # as matmul_model: the products are exact
    return a, b


def accumulation_error_bound(A, B, model, out: Format | str | None = None,
                             out_rounding: str = "nearest_even") -> np.ndarray:
    """A rigorous elementwise bound on |result - A @ B| for the model's result.

    A (M, K) and B (K, N) hold exact values (float64 arrays or Tensors, at most 26
    significant bits, finite, as matmul_model needs).  The result is the model's
    accumulator-format value (matmul_model(A, B, model)), then, if out is given, that
    value rounded once to out in out_rounding.  inf where overflow cannot be excluded.
    See the comments above _model_bound for the derivations (Higham ch. 2-4; Fasi et
    al. 2021; Khattak & Mikaitis, arXiv 2512.07004).

    The bound is itself computed in float64.  |A| @ |B| by BLAS, in any order, is within
    gamma_K(2^-53) <= 2 K 2^-53 of the true sum of |products| (all positive, no
    underflow: products are >= 2^-1000), so each such sum is multiplied by
    1 + 4 (K + 2) 2^-53.  The rest is a chain of at most ~8 K additions and
    multiplications of non-negative numbers, each losing at most a factor (1 - 2^-53), or
    2^-1075 in absolute terms when subnormal: the final factor 1 + 32 (K + 16) 2^-53 and
    the final absolute 32 (K + 16) 2^-1074 cover that.
    """
    a, b = _operands(A, B)
    M, K, N = a.shape[0], a.shape[1], b.shape[1]
    aa, ab = np.abs(a), np.abs(b)

    def T(k0: int, k1: int) -> np.ndarray:
        return (aa[:, k0:k1] @ ab[k0:k1, :]) * (1 + 4 * (k1 - k0 + 2) * _U53)

    from .accumulate import Exact
    s_abs = None
    if isinstance(model, Exact) and K:  # |s| itself, for the single rounding of Exact
        from .exact import exact_sum
        s_abs = _abs_up(exact_sum(_products(a, b), axis=0))
    err, mag = _model_bound(model, K, T, (M, N), s_abs)
    if out is not None:
        fmt = as_format(out)
        delta, eta = _round_params(fmt, out_rounding)
        err = np.where(mag > fmt.max, np.inf, err + delta * mag + eta)
    fac = 1 + 32 * (K + 16) * _U53
    return err * fac + 32 * (K + 16) * 2.0 ** -1074


def assert_matmul_close(candidate, A, B, model, out: Format | str | None = None,
                        out_rounding: str = "nearest_even") -> None:
    """Assert |candidate - A @ B| <= accumulation_error_bound(A, B, model, out) elementwise.

    The difference is evaluated exactly: the products and -candidate are summed by
    mpgrad.exact.exact_sum, and that rounding-equivalent pair rounded up/down to float64
    bounds |candidate - exact| from above.  A non-finite candidate passes only where the
    bound is inf (overflow possible).  On failure the message gives the number of
    violating elements and the worst one (largest |difference| / bound).
    """
    from .exact import exact_sum
    a, b = _operands(A, B)
    c = _values(candidate, "candidate")
    shape = (a.shape[0], b.shape[1])
    if c.shape != shape:
        raise AssertionError(f"candidate has shape {c.shape}, A @ B has {shape}")
    bound = accumulation_error_bound(a, b, model, out, out_rounding)
    fin = np.isfinite(c)
    terms = np.concatenate([_products(a, b), -np.where(fin, c, 0.0)[None]])
    diff = _abs_up(exact_sum(terms, axis=0))  # >= |exact - candidate| where finite
    diff = np.where(fin, diff, np.inf)
    with np.errstate(invalid="ignore"):
        bad = ~(diff <= bound) & ~(~fin & np.isinf(bound))
    if not bad.any():
        return
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(bad, diff / bound, -np.inf)
    ratio = np.where(np.isnan(ratio), np.inf, ratio)
    worst = np.unravel_index(int(np.argmax(ratio)), shape)
    exact = exact_sum(_products(a, b), axis=0)
    ex = float(exact[0][worst] + exact[1][worst])
    raise AssertionError(
        f"{int(bad.sum())} of {bad.size} elements exceed the {model!r} error bound"
        f"{'' if out is None else f' (out={as_format(out).name})'}; worst at "
        f"{tuple(int(i) for i in worst)}: candidate {float(c[worst])!r}, exact {ex!r}, "
        f"|difference| {float(diff[worst])!r}, bound {float(bound[worst])!r}, "
        f"ratio {float(ratio[worst]):.4g}")
