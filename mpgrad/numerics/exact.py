"""Error-free float64 arithmetic, vectorised: exact sums, products, quotients, square roots.

Each function returns a pair (hi, lo) of float64 arrays. two_sum and two_prod give the exact
result hi + lo. exact_div, exact_sqrt and exact_sum give a pair that is *rounding-equivalent*
to the exact result x: `round_to((hi, lo), fmt, mode)` is x correctly rounded, for every
format of precision <= 53 and every deterministic mode (not "stochastic", which depends on
the exact fraction); for quotients below 2**-1019, every format but float64 (see
_correction).

Why equivalence suffices. Let G be the numbers k * 2**e with integers |k| < 2**54 and
e >= -1075: the 54-bit grid, unbounded above, with spacing 2**-1075 at the bottom. A format F
of precision p <= 53 inside float64's range has its values, the midpoints between neighbours
and its overflow threshold (max + half an ulp) all in G, and each deterministic rounding of
x depends only on where x lies relative to those points. So two reals that are equal, or lie
strictly between the same two consecutive points of G, round identically; a zero keeps its
sign in hi. Every |x| > 2**1024 - 2**970 (float64's overflow threshold, the highest of any
such F) overflows alike in every format and mode: exact_sum returns the sums of 2**1024 or
more, and exact_div the quotients that overflow float64, as (+-DBL_MAX, +-DBL_MAX), a pair
above 2**1024 whose float64 sum is IEEE's +-inf.

Sources: Knuth, TAOCP vol. 2, 4.2.2 (TwoSum); Dekker 1971, "A floating-point technique for
extending the available precision" (TwoProduct, Veltkamp splitting); Boldo & Melquiond 2008,
"Emulation of FMA and correctly rounded sums: proved algorithms using rounding to odd".
"""

from __future__ import annotations

import numpy as np

from .codes import to_float64

__all__ = ["two_sum", "two_prod", "exact_div", "exact_sqrt", "exact_sum", "bit_span",
           "clean_pair", "round_odd", "normalize_axes"]

DBL_MAX = np.finfo(np.float64).max
_TINY = 2.0 ** -1074            # the smallest subnormal, float64's unit at the bottom
_LOW = 2.0 ** -1019             # below this a quotient's pair cannot sit inside G's cells
_SPLITTER = 2.0 ** 27 + 1       # Veltkamp: splits a double into two 26-bit halves
_M32 = (1 << 32) - 1
_MAX_TERMS = 1 << 30            # terms per sum: 2**30 limb pieces of < 2**33 fit in int64
_CHUNK = 1 << 14                # terms decomposed at a time (in cache)


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def clean_pair(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An exact pair whose rounding keeps IEEE's result hi where hi needs no rounding.

    Where hi is inf or NaN, lo is dropped; a zero lo takes hi's sign, so that a zero result
    keeps the sign IEEE gives it (-0 * 1 = -0, -0 + -0 = -0), hi + lo being rounded as a sum.
    """
    with np.errstate(invalid="ignore"):
        lo = np.where(np.isfinite(hi), lo, 0.0)
    return hi, np.where(lo == 0, np.copysign(0.0, hi), lo)


def round_odd(s: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """s + rest rounded to odd in float64, for s = fl(s + rest) and rest the remainder (or
    its sign): s moved one step toward rest where rest != 0 and s is even and finite.

    Rounding to odd at 53 bits and then to nearest at p <= 51 bits rounds once (Boldo &
    Melquiond 2008, "Emulation of FMA and correctly rounded sums: proved algorithms using
    rounding to odd", Thm. 1).
    """
    nudge = (rest != 0) & ((s.view(np.int64) & 1) == 0) & np.isfinite(s)
    with np.errstate(over="ignore"):  # (only where not selected: DBL_MAX is odd)
        return np.where(nudge, np.nextafter(s, np.where(rest > 0, np.inf, -np.inf)), s)


def two_sum(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Knuth's TwoSum: s = fl(a + b) and e with s + e == a + b exactly.

    Exact for all finite a, b whose operations do not overflow (always when |a|, |b| <=
    2**1022); underflow is harmless since float64 addition of subnormals is exact.
    """
    a, b = _f64(a), _f64(b)
    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN: the low part is meaningless
        s = a + b
        bb = s - a
        return s, (a - (s - bb)) + (b - bb)


def _split(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Veltkamp's split a == ah + al, each half with at most 26 significant bits."""
    c = _SPLITTER * a
    ah = c - (c - a)
    return ah, a - ah


def two_prod(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Dekker's TwoProduct (no FMA): p = fl(a * b) and e with p + e == a * b exactly.

    Exact when |a|, |b| <= 2**996 (the split's (2**27 + 1) * a stays finite) and either
    a * b == 0, or |a * b| <= 2**1023 and ea + eb >= -970 where |a| is in [2**ea, 2**(ea+1))
    and likewise b (then every partial product is a multiple of 2**-1074, so nothing
    underflows inexactly). Any a, b of float32's range (subnormals included) qualify. Where
    the split overflows (|a| or |b| > 2**996) but p is finite, e is 0: p alone, IEEE's
    product, which is the correctly rounded float64 result.
    """
    a, b = _f64(a), _f64(b)
    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN: the low part is meaningless
        p = a * b
        ah, al = _split(a)
        bh, bl = _split(b)
        e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
        return p, np.where(np.isfinite(p) & ~np.isfinite(e), 0.0, e)


def _correction(q: np.ndarray, sign: np.ndarray, approx: np.ndarray) -> np.ndarray:
    """The second term r for the round-to-nearest result q of an exact x.

    sign = sign(x - q) exactly; approx ~ x - q (only its size is used). In the normal
    range (|q| >= 2**-1019), x lies strictly inside the cell of G next to q on its side,
    (q, q + h) with h half the gap to q's neighbour (x is never on G unless x == q: see the
    callers), so any r with 0 < |r| < h and the sign of x - q will do; r is approx clamped
    to [2**-1074, h). Below, no float64 fits strictly inside G's cells, so q + r is x
    rounded to odd on the grid of multiples of 2**-1074 (Boldo & Melquiond 2008): equal to x,
    or strictly between the same two multiples of 2**-1073 as x. This is rounding-equivalent
    for every format whose smallest subnormal is >= 2**-1072 (every built-in format except
    float64), and then r is 0 or +-2**-1074, 0 also where x is inexact but q is odd.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        h = np.abs(np.nextafter(q, np.where(sign > 0, np.inf, -np.inf)) - q) / 2
        r_normal = np.clip(np.abs(approx), _TINY, np.nextafter(h, 0))
        q_odd = np.fmod(np.ldexp(np.abs(np.where(np.abs(q) < _LOW, q, 0.0)), 1074), 2) == 1
    r = sign * np.where(np.abs(q) >= _LOW, r_normal, np.where(q_odd, 0.0, _TINY))
    return np.where(sign == 0, np.copysign(0.0, q), r)


def exact_div(a, b) -> tuple[np.ndarray, np.ndarray]:
    """q = fl(a / b) and r with q + r rounding-equivalent to the exact quotient.

    r has the sign of a/b - q, |r| < ulp(q)/2, r == 0 iff the quotient is exact, for
    |q| >= 2**-1019; see _correction for smaller quotients. Why that suffices: q is the
    quotient rounded to nearest, so a/b lies within half a gap of q; and a/b is never a
    point of G other than q (a 54-bit odd significand M with a/b = M * 2**k would need a's
    odd significand to be M times b's, >= 55 bits, unless b is a power of two and a/b = q).
    So a/b and q + r lie strictly between the same two consecutive points of G, or equal q.
    The remainder a - q*b is exact (Dekker's two_prod on a, b, q scaled to [1/4, 4] by powers
    of two, and Sterbenz's lemma for a - fl(q*b)); its sign is that of a/b - q.
    Where a/b overflows (q = +-inf for finite a, b != 0) the pair is (+-DBL_MAX, +-DBL_MAX).
    """
    a, b = np.broadcast_arrays(_f64(a), _f64(b))
    with np.errstate(all="ignore"):
        q = a / b
    finite = np.isfinite(a) & np.isfinite(b) & (a != 0) & (b != 0)
    over = finite & np.isinf(q)
    ok = finite & ~over
    ma, ea = np.frexp(np.where(ok, a, 1.0))  # a = ma * 2**ea with 1/2 <= |ma| < 1
    mb, eb = np.frexp(np.where(ok, b, 1.0))
    qs = np.ldexp(np.where(ok, q, 1.0), eb - ea)  # exact: q * 2**(eb - ea) is in [1/4, 4]
    p, e = two_prod(qs, mb)
    rem = (ma - p) - e  # ma - q*mb exactly
    r = _correction(np.where(ok, q, 0.0), np.sign(rem) * np.sign(mb) * ok,
                    np.ldexp(rem / mb, ea - eb))
    big = np.copysign(DBL_MAX, q)
    return np.where(over, big, q), np.where(over, big, np.where(ok, r, np.copysign(0.0, q)))


def exact_sqrt(a) -> tuple[np.ndarray, np.ndarray]:
    """s = fl(sqrt(a)) and r with s + r rounding-equivalent to the exact square root.

    r has the sign of sqrt(a) - s, |r| < ulp(s)/2, r == 0 iff the root is exact. As for
    exact_div: sqrt(a) is never a point of G other than s (a root M * 2**k with M odd of 54
    bits would need a = M**2 * 2**(2k), 107 bits), and the remainder a - s*s is exact (on a, s
    scaled to [1/2, 2]); s >= 2**-537 is always in the normal range of _correction.
    """
    a = _f64(a)
    with np.errstate(invalid="ignore"):
        s = np.sqrt(a)
    ok = np.isfinite(a) & (a > 0)
    k = np.frexp(np.where(ok, a, 1.0))[1] >> 1
    a_s = np.ldexp(np.where(ok, a, 1.0), -2 * k)  # in [1/2, 2)
    s_s = np.ldexp(np.where(ok, s, 1.0), -k)
    p, e = two_prod(s_s, s_s)
    rem = (a_s - p) - e  # a_s - s_s**2 exactly
    r = _correction(np.where(ok, s, 1.0), np.sign(rem) * ok, np.ldexp(rem / (2 * s_s), k))
    return np.asarray(s), np.where(ok, r, np.copysign(0.0, s))


# --- exact sums -----------------------------------------------------------------------------

def _carry(limbs: np.ndarray) -> None:
    """Normalise rows of signed base-2**32 digits in place: all but the last in [0, 2**32)."""
    for j in range(limbs.shape[1] - 1):
        c = limbs[:, j] >> 32  # floor division: the arithmetic shift
        limbs[:, j] &= _M32
        limbs[:, j + 1] += c


def _top_bit(limbs: np.ndarray) -> np.ndarray:
    """Position of the highest set bit of each row's integer (-1 for zero)."""
    nz = limbs != 0
    j = limbs.shape[1] - 1 - np.argmax(nz[:, ::-1], axis=1)
    top = limbs[np.arange(len(limbs)), j]
    return np.where(nz.any(axis=1), 32 * j + np.frexp(top.astype(np.float64))[1] - 1, -1)


def _window(limbs: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """floor(N / 2**pos) mod 2**53 for each row's integer N, and whether N mod 2**pos != 0."""
    rows = np.arange(len(limbs))
    j, s = pos >> 5, (pos & 31).astype(np.uint64)
    u = np.pad(limbs, ((0, 0), (0, 3))).astype(np.uint64)
    a0, a1, a2 = u[rows, j], u[rows, j + 1], u[rows, j + 2]
    # the 53 bits span limbs j..j+2 (31 + 53 < 96); bits shifted past 2**64 are not needed
    w = (((a1 | (a2 << np.uint64(32))) << (np.uint64(32) - s)) | (a0 >> s)) & np.uint64(2**53 - 1)
    nonzero_below = np.pad(np.cumsum(limbs != 0, axis=1), ((0, 0), (1, 0)))[rows, j] > 0
    sticky = nonzero_below | ((a0 & ((np.uint64(1) << s) - np.uint64(1))) != 0)
    return w, sticky


def _terms(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|x| = m * 2**(field - 1075) with m < 2**53 (0 for zeros, inf, NaN), field >= 1."""
    field = (bits >> 52) & 0x7FF  # the biased exponent; subnormals share field 1's scale
    m = (bits & (2 ** 52 - 1)) | ((field != 0).astype(np.int64) << 52)
    return np.where(field == 0x7FF, 0, m), np.maximum(field, 1)


def normalize_axes(ndim: int, axis) -> tuple[int, ...]:
    """axis (None, an int or a sequence) as non-negative axes in the order given, by NumPy's
    rules: out of range is an AxisError, a repeated axis a ValueError. A 0-d array takes
    axis 0 or -1 as no axis, as torch does."""
    if axis is None:
        return tuple(range(ndim))
    axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    for ax in axes:
        if isinstance(ax, bool) or not isinstance(ax, (int, np.integer)):
            raise TypeError(f"an axis must be an integer, got {type(ax).__name__}")
    if ndim == 0 and len(axes) == 1 and axes[0] in (0, -1):  # (0, 0): repeated, refused
        return ()
    for ax in axes:
        if not -ndim <= ax < ndim:
            raise np.exceptions.AxisError(int(ax), ndim)
    axes = tuple(int(ax) % ndim for ax in axes)
    if len(set(axes)) != len(axes):
        raise ValueError(f"repeated axis in {axis}")
    return axes


def bit_span(x: np.ndarray, axis: int, max_bits: int | None = None) -> tuple[np.ndarray, int]:
    """(e, span): per line along axis, |x| < 2**e (e = 0 on a zero line), and the largest
    number of bit positions any line needs, from its top (e) to its lowest set bit.

    Read from the float64 bit fields; a subnormal counts as if normal with exponent -1022
    (its bottom is then one below the true lowest bit: a bound, never too small). Given
    max_bits, a bound on every value's significant bits (a format's precision), the span
    is bounded from the line's smallest magnitude instead, in fewer passes: each value's
    lowest bit is at least floor(log2|x|) - (max_bits - 1).
    """
    if max_bits is not None:
        mag = np.abs(x)
        top = np.max(mag, axis=axis, keepdims=True)
        small = np.min(np.where(mag > 0, mag, np.inf), axis=axis, keepdims=True)
        used = top > 0
        e = np.where(used, np.frexp(np.where(used, top, 1.0))[1], 0)
        bottom = np.frexp(np.where(used, small, 1.0))[1] - max_bits
        return e, int(np.max(np.where(used, e - bottom, 0), initial=0))
    bits = x.view(np.int64)
    field = (bits >> 52) & 0x7FF
    sig = (bits & ((1 << 52) - 1)) | (1 << 52)  # the significand with its leading bit
    lowest = (sig & -sig).astype(np.float64).view(np.int64) >> 52  # 1023 + trailing zeros
    nonzero = (bits & ((1 << 63) - 1)) != 0  # not +-0
    e = np.max(np.where(nonzero, field - 1022, -4096), axis=axis, keepdims=True)
    bottom = np.min(np.where(nonzero, field + lowest - 2098, 4096), axis=axis, keepdims=True)
    used = e > -4096
    return np.where(used, e, 0), int(np.max(np.where(used, e - bottom, 0), initial=0))


def _signed_zeros(xs: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> tuple:
    """The pair with IEEE's zero sign for sums of the rows of xs: hi is -0 only when every
    term is -0 (and there is one), and a zero lo takes hi's sign."""
    hi = np.where(np.all((xs == 0) & np.signbit(xs), axis=1) & (xs.shape[1] > 0), -0.0, hi)
    return clean_pair(hi, lo)


def exact_sum(x, axis=None, keepdims: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The exact sum along axis (None: all; an int or a tuple) as a rounding-equivalent pair.

    Method: each finite term is +-m * 2**e with m < 2**53 an integer and e >= e0, the
    lowest such e present; m * 2**(e - e0) spreads over at most three base-2**32 limbs
    (31 + 53 < 96 bits). The limbs of all terms are added in int64 (exact, hence
    independent of order, NumPy, BLAS and threads), carried, and the integer N * 2**e0
    becomes hi = N rounded toward zero to 53 bits plus lo = the rest rounded to odd at
    53 bits. hi + lo equals the sum or lies strictly inside the same cell of G: the rest
    lies in [0, ulp(hi)), where the points of G are hi, hi + ulp(hi)/2, hi + ulp(hi), all
    on the 53-bit grid, which rounding to odd never crosses (Boldo & Melquiond 2008).
    The float64 sum hi + lo is the exact sum rounded to nearest.

    Specials follow IEEE: NaN if any term is NaN or both infinities occur, else +-inf if
    any term is infinite. A zero sum is -0 only when every term is -0 (as IEEE addition
    rounding to nearest gives), +0 otherwise and for an empty sum. A sum of 2**1024 or
    more in magnitude gives (+-DBL_MAX, +-DBL_MAX). Limits: fewer than 2**30 terms per sum;
    memory O(len(x) + outputs * limbs), limbs ~ (exponent range present + 53 +
    log2(terms)) / 32: 3 to 5 for float32/float16/bfloat16 data, ~70 at most.
    """
    x = to_float64(x)
    axes = normalize_axes(x.ndim, axis)
    kept = [d for i, d in enumerate(x.shape) if i not in axes]
    out_shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) if keepdims \
        else tuple(kept)
    xs = np.moveaxis(x, axes, tuple(range(x.ndim - len(axes), x.ndim)))
    xs = xs.reshape(int(np.prod(kept, dtype=np.int64)), -1) if xs.size else \
        np.zeros((int(np.prod(kept, dtype=np.int64)), 0))
    rows, terms = xs.shape
    if terms >= _MAX_TERMS:
        raise ValueError(f"exact_sum adds fewer than 2**30 terms per sum, got {terms}")

    xs = np.ascontiguousarray(xs)
    if rows and terms and np.isfinite(xs).all():
        top, span = bit_span(xs, axis=1)
        width = (terms - 1).bit_length()  # terms <= 2**width
        if span + width <= 53 and top.max() + width <= 1023:
            # every partial sum, in any order, is a multiple of the lowest bit below
            # 2**53 of them: NumPy's float64 sum is exact (its zero signs are redone,
            # since NumPy starts some sums from +0)
            hi, lo = _signed_zeros(xs, xs.sum(axis=1), np.zeros(rows))
            return hi.reshape(out_shape), lo.reshape(out_shape)
    bits = xs.view(np.int64)
    rows_per, terms_per = max(1, _CHUNK // max(terms, 1)), max(1, min(terms, _CHUNK))
    blocks = [(slice(i, i + rows_per), slice(j, j + terms_per))
              for i in range(0, rows, rows_per) for j in range(0, terms, terms_per)]
    lowest, highest = 2047, 0
    for blk in blocks:  # the exponent fields present
        m, field = _terms(bits[blk])
        lowest = min(lowest, np.where(m != 0, field, 2047).min())
        highest = max(highest, np.where(m != 0, field, 0).max())

    hi, lo = np.zeros(rows), np.zeros(rows)
    if highest > 0:
        e0 = int(lowest) - 1075  # every term is a multiple of 2**e0 and below 2**(highest-1022)
        n_limbs = (int(highest) - 1022 - e0 + terms.bit_length()) // 32 + 3  # carries, sign
        limbs = np.zeros(rows * n_limbs, dtype=np.int64)
        for blk in blocks:  # blocks keep the temporaries small; the limb sums are exact
            m, field = _terms(bits[blk])
            shift = np.where(m != 0, field - 1075 - e0, 0)
            k, r = shift >> 5, shift & 31
            t0, t1 = (m & _M32) << r, (m >> 32) << r  # m * 2**r = t0 + t1 * 2**32; t0 < 2**63
            sgn = bits[blk] >> 63  # -1 for negative terms, else 0: (t ^ sgn) - sgn is +-t
            at = (np.arange(rows)[blk[0], None] * n_limbs + k).ravel()
            for j, piece in enumerate((t0 & _M32, (t0 >> 32) + (t1 & _M32), t1 >> 32)):
                np.add.at(limbs, at + j, ((piece ^ sgn) - sgn).ravel())  # each piece < 2**33
        limbs = limbs.reshape(rows, n_limbs)
        _carry(limbs)
        neg = limbs[:, -1] < 0  # the top limb holds the sign: |N| < 2**(32 * (n_limbs - 2))
        limbs[neg] = -limbs[neg]
        _carry(limbs)

        b = _top_bit(limbs)
        pos = np.maximum(b - 52, 0)
        w, _ = _window(limbs, pos)  # N rounded toward zero to 53 bits is w * 2**pos
        rest = np.where(np.arange(n_limbs) > (pos >> 5)[:, None], 0, limbs)
        rest[np.arange(rows), pos >> 5] &= (1 << (pos & 31)) - 1  # N mod 2**pos
        pos2 = np.maximum(_top_bit(rest) - 52, 0)
        w2, sticky = _window(rest, pos2)
        with np.errstate(over="ignore"):
            hi = np.ldexp(w.astype(np.float64), pos + e0)
            lo = np.ldexp((w2 | sticky).astype(np.float64), pos2 + e0)  # rounded to odd
        huge = b + e0 >= 1024
        hi, lo = np.where(huge, DBL_MAX, hi), np.where(huge, DBL_MAX, lo)
        hi, lo = np.where(neg, -hi, hi), np.where(neg, -lo, lo)

    hi, lo = _signed_zeros(xs, hi, lo)
    pinf, ninf = np.any(xs == np.inf, axis=1), np.any(xs == -np.inf, axis=1)
    nan = np.any(np.isnan(xs), axis=1) | (pinf & ninf)
    hi = np.where(nan, np.nan, np.where(pinf, np.inf, np.where(ninf, -np.inf, hi)))
    lo = np.where(nan | pinf | ninf, 0.0, lo)
    return hi.reshape(out_shape), lo.reshape(out_shape)
