"""The exact matrix product through float64 BLAS, by error-free slicing (Ozaki's scheme).

Each row of A is cut into slices A_s of integers below 2**beta in magnitude, scaled by a
power of two per row (likewise each column of B, into B_t), with beta chosen so that
K * (2**beta - 1)**2 < 2**53. Then every partial sum of every dot product inside
A_s @ B_t is an integer below 2**53, so the float64 BLAS result is exact whatever order,
blocking, FMA use or thread count the BLAS chooses. A @ B is the sum of the scaled slice
products, added exactly. Source: Ozaki, Ogita, Oishi, Rump 2012,
"Error-free transformations of matrix multiplication by using fast routines of matrix
multiplication and its applications", Numer. Algorithms 59.

The number of BLAS calls is (slices of A) x (slices of B). The slice widths beta_a,
beta_b (with K * 2**(beta_a + beta_b) <= 2**53) are chosen from the bits each operand's
rows or columns span, so that one or two products suffice where possible; their results
form an exact (hi, lo) pair as they are. Otherwise equal widths (beta = 22 for K = 512)
give levels of equal unit, added as int64 base-2**beta digits. Inputs with bits outside
[2**-300, 2**300) take a slower elementwise path instead: Dekker's exact products in blocks
of K, summed exactly (exact.exact_sum). Inputs holding inf or NaN give the sum of their
finite products, with IEEE's specials put in by counting. An exact zero result is +0 (the
sum starts from +0), as in the accumulation models.
"""

from __future__ import annotations

import numpy as np

from .codes import pow2
from .exact import bit_span, clean_pair, exact_sum, two_prod

__all__ = ["exact_matmul", "slice_bits"]

_BOTTOM, _TOP = -300, 300  # every bit of every input within 2**-300 .. 2**300: no scaled
                           # slice product can under- or overflow
_CHUNK = 1 << 13  # outputs combined at a time
K_BLOCK = 32  # the elementwise path's products per block: memory O(M*N*K_BLOCK)


def slice_bits(K: int) -> int:
    """The largest beta with K * (2**beta - 1)**2 < 2**53: bits per slice for dots of length K."""
    beta = 26
    while K * (2 ** beta - 1) ** 2 >= 2 ** 53:
        beta -= 1
    return beta


def _slices(x: np.ndarray, e: np.ndarray, beta: int) -> list:
    """X_s with x = sum_s X_s * 2**(e - beta*(s+1)), integers |X_s| < 2**beta (|x| < 2**e)."""
    out, rest, s = [], x, 0
    while np.any(rest != 0):
        shift = beta * (s + 1) - e  # within +-(300 + 53 * 26): the powers of two are normal
        ints = np.trunc(rest * pow2(shift))  # exact: a power-of-two scaling, then trunc
        out.append(ints)
        rest = rest - ints * pow2(-shift)    # exact: removes the leading bits of rest
        s += 1
    return out


def _widths(K: int, span_a: int, span_b: int) -> tuple[int, int]:
    """Slice widths (beta_a, beta_b) with K * 2**(beta_a + beta_b) <= 2**53 that need the
    fewest BLAS products, when one or two suffice; else the equal widths of slice_bits."""
    budget = 53 - (K - 1).bit_length()  # K <= 2**(53 - budget)
    if max(span_a, 1) + max(span_b, 1) <= budget:  # (a zero operand has span 0)
        return max(span_a, 1), budget - max(span_a, 1)
    if 1 <= span_b < budget and span_a <= 2 * (budget - span_b):  # A in two slices, B in one
        return budget - span_b, span_b
    if 1 <= span_a < budget and span_b <= 2 * (budget - span_a):  # A in one, B in two
        return span_a, budget - span_a
    beta = slice_bits(K)
    return beta, beta


def _products(K: int, span_a: int, span_b: int) -> int:
    """How many BLAS products the widths _widths picks need (at most)."""
    beta_a, beta_b = _widths(K, span_a, span_b)
    return -(-max(span_a, 1) // beta_a) * -(-max(span_b, 1) // beta_b)


def _elementwise(a: np.ndarray, b: np.ndarray, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The exact pair from Dekker products, K_BLOCK at a time (handles inf, NaN, any range)."""
    parts = []
    for k in range(0, a.shape[-1], K_BLOCK):
        hi, lo = clean_pair(*two_prod(a[..., :, k:k + K_BLOCK, None],
                                      b[..., None, k:k + K_BLOCK, :]))
        parts.extend(exact_sum(np.concatenate([hi, lo], axis=-2), axis=-2))
    if not parts:  # K == 0: the empty sum
        return np.zeros(shape), np.zeros(shape)
    return exact_sum(np.stack(parts, axis=-1), axis=-1)


def _with_specials(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a @ b where some inputs are inf or NaN: the exact sum of the finite products (a and b
    with their other entries zeroed), overwritten where IEEE's sum of products is NaN (a
    NaN factor, inf * 0, +inf and -inf products both present) or +-inf. The kinds of
    product are counted by BLAS products of 0/1 matrices: small integers, so exact."""
    hi, lo = exact_matmul(np.where(np.isfinite(a), a, 0.0), np.where(np.isfinite(b), b, 0.0))
    ia, ib = np.isinf(a), np.isinf(b)
    pa, na, pb, nb = a > 0, a < 0, b > 0, b < 0  # (NaN is neither)

    def count(x, y):
        return x.astype(np.float64) @ y.astype(np.float64)

    nan = (np.isnan(a).sum(-1)[..., :, None] + np.isnan(b).sum(-2)[..., None, :]
           + count(ia, b == 0) + count(a == 0, ib))
    def infinite(same, other):  # products +-inf * (b: same sign) and finite * (b: +-inf)
        return (count(ia & pa, same) + count(ia & na, other)
                + count(~ia & pa, ib & same) + count(~ia & na, ib & other))

    pos, neg = infinite(pb, nb), infinite(nb, pb)  # +inf products, -inf products
    special = np.where((nan > 0) | (pos > 0) & (neg > 0), np.nan,
                       np.where(pos > 0, np.inf, -np.inf))
    odd = (nan > 0) | (pos > 0) | (neg > 0)
    return np.where(odd, special, hi), np.where(odd, 0.0, lo)


def _digits(levels: np.ndarray, beta: int) -> tuple[np.ndarray, np.ndarray]:
    """(D, negative): base-2**beta digits of |V|, most significant first, and V < 0, for
    V = sum_L levels[L] * 2**(beta * (Lmax - L)) (int64 levels, each below 2**63).

    Three digits are added on top for the carries. Normalising from the bottom makes every
    digit but the first lie in [0, 2**beta), so V < 0 exactly when the first is negative;
    then the digits are negated and normalised again.
    """
    D = np.concatenate([np.zeros((3,) + levels.shape[1:], dtype=np.int64), levels])
    negative = None
    for _ in range(2):
        for j in range(len(D) - 1, 0, -1):
            carry = D[j] >> beta  # floor: D[j] - carry * 2**beta lies in [0, 2**beta)
            D[j] -= carry << beta
            D[j - 1] += carry
        if negative is None:
            negative = D[0] < 0
            D = np.where(negative, -D, D)
    return D, negative


def _pair_from_levels(levels: np.ndarray, beta: int, exponent: np.ndarray) -> tuple:
    """A rounding-equivalent (hi, lo) of 2**exponent * sum_L levels[L] 2**(beta(Lmax-L)).

    hi takes the two leading nonzero digits (44 bits, exact), lo the next two plus half a
    unit of the last when any digit below is nonzero. hi is a multiple of the spacing of the
    54-bit grid at the value, and that spacing is a multiple of lo's last unit, so hi + lo
    lies in the same open cell of the grid as the exact value: all rounding needs.
    """
    D, negative = _digits(levels, beta)
    W = len(D) - 1
    nonzero = D != 0
    j0 = np.argmax(nonzero, axis=0)  # 0 when V = 0: every digit below is 0 too
    below = np.logical_or.accumulate(nonzero[::-1], axis=0)[::-1]
    pad = np.zeros((4,) + D.shape[1:], dtype=np.int64)
    D, below = np.concatenate([D, pad]), np.concatenate([below, pad != 0])
    d = [np.take_along_axis(D, (j0 + k)[None], axis=0)[0].astype(np.float64) for k in range(4)]
    sticky = np.take_along_axis(below, (j0 + 4)[None], axis=0)[0]
    sign = np.where(negative, -1.0, 1.0)
    hi = np.ldexp(sign * (d[0] * 2.0 ** beta + d[1]), exponent + beta * (W - j0 - 1))
    lo = np.ldexp(sign * (d[2] * 2.0 ** beta + d[3] + 0.5 * sticky), exponent + beta * (W - j0 - 3))
    return hi + 0.0, lo + 0.0


def exact_matmul(a, b, max_bits: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) rounding like the exact a @ b (float64 arrays, batch dims as np.matmul).

    The pair is rounding-equivalent as exact.exact_sum's is; IEEE specials as in a sum of
    IEEE products (inf * 0 is NaN, inf - inf is NaN). max_bits: a bound on the significant
    bits of every input (their format's precision), which makes the bit spans cheaper; a
    wrong bound gives wrong results.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    K = a.shape[-1]
    shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
    if 0 in shape or K == 0:  # nothing to compute, or the empty sum (+0)
        return np.zeros(shape), np.zeros(shape)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return _with_specials(a, b)
    ea, span_a = bit_span(a, -1, max_bits)
    eb, span_b = bit_span(b, -2, max_bits)
    if max_bits is not None and _products(K, span_a, span_b) > 2:  # the exact spans may
        ea, span_a = bit_span(a, -1)                               # need fewer products
        eb, span_b = bit_span(b, -2)
    if max(ea.max(), eb.max()) > _TOP or min(np.min(ea - span_a), np.min(eb - span_b)) < _BOTTOM:
        # (this also refuses subnormal inputs, whose bits lie below 2**-1022)
        return _elementwise(a, b, shape)  # (a zero line has e = 0: it passes)
    beta_a, beta_b = _widths(K, span_a, span_b)
    sa, sb = _slices(a, ea, beta_a), _slices(b, eb, beta_b)
    if not sa or not sb:  # an all-zero operand: every product is 0, the sum +0
        return np.zeros(shape), np.zeros(shape)
    if len(sa) * len(sb) <= 2:  # one or two exact scaled products: an exact pair as it is
        terms = [np.ldexp(x @ y, ea - beta_a * (i + 1) + eb - beta_b * (j + 1)) + 0.0
                 for i, x in enumerate(sa) for j, y in enumerate(sb)]
        return terms[0], terms[1] if len(terms) == 2 else np.zeros(shape)
    if beta_a != beta_b:  # more slices than the spans promised: cannot happen, but the
        beta_a = beta_b = slice_bits(K)  # levels below need equal widths
        sa, sb = _slices(a, ea, beta_a), _slices(b, eb, beta_b)
    beta = beta_a  # equal widths: slice products of one level share a unit
    exponent = ea + eb - 2 * beta  # the unit of the leading slice product
    levels = np.zeros((len(sa) + len(sb) - 1,) + shape, dtype=np.int64)
    for i, x in enumerate(sa):  # slice products of one level share a unit: add as integers
        for j, y in enumerate(sb):
            levels[i + j] += (x @ y).astype(np.int64)
    levels = levels.reshape(len(levels), -1)
    exponent = np.broadcast_to(exponent - beta * (len(levels) - 1), shape).reshape(-1)
    hi, lo = np.empty(levels.shape[1]), np.empty(levels.shape[1])
    for k in range(0, levels.shape[1], _CHUNK):  # in pieces that stay in cache
        part = slice(k, k + _CHUNK)
        hi[part], lo[part] = _pair_from_levels(levels[:, part], beta, exponent[part])
    return hi.reshape(shape), lo.reshape(shape)
