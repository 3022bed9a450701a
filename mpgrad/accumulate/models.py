"""Accumulation models: how a dot product or a sum is added up, bit-faithfully.

Each model is a frozen dataclass reducing a sequence of exact terms t_0 .. t_{K-1}
(the products a_k * b_k of a matmul, or the terms of a sum) to one value of its
accumulator format, returned as exact float64 values; the caller rounds to the output
format. Products of inputs with at most 26 significant bits (float32/tf32/bf16/fp16/fp8
values) are exact in float64, so every step below is one documented rounding of an exact
value (mpgrad.round_to). Sources: Higham, "Accuracy and Stability of Numerical
Algorithms" ch. 4 (recursive and pairwise summation); Fasi, Higham, Mikaitis, Pranesh
2021, "Numerical behavior of NVIDIA tensor cores"; Khattak & Mikaitis, arXiv 2512.07004
(block-FMA parameters); DeepSeek-V3 technical report §3.3 (FP8 promotion every 128).
The `hardware` presets are models from those papers, not guarantees about any GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np

from ..numerics.exact import clean_pair, exact_sum, two_sum
from ..numerics.formats import Format, as_format, float32
from ..numerics.rounding import MODES, round_to, to_float64
from .rounding_error import U53, pairwise_depth, round_params, tree_bound

__all__ = ["Exact", "Sequential", "Pairwise", "Chunked", "BlockFMA", "Tree", "Model", "MODELS",
           "error_bound", "NO_EXPONENT", "uses_exponents"]

Terms = Callable[[int, int], np.ndarray]  # (k0, k1) -> exact terms k0..k1-1 on a first axis
Bound = Callable[[int, int], np.ndarray]  # (k0, k1) -> an upper bound on sum |t_k| over them
NO_EXPONENT = -(1 << 20)  # the exponent of a zero term: below every other


def _check_common(obj) -> None:
    """Normalise acc to a Format and check the rounding mode (stochastic is not a model)."""
    object.__setattr__(obj, "acc", as_format(obj.acc))
    if obj.mode not in MODES or obj.mode == "stochastic":
        raise ValueError(f"mode must be a deterministic rounding mode of {MODES[:-1]}, "
                         f"got {obj.mode!r}")


def _round(x, fmt: Format, mode: str) -> np.ndarray:
    """x (an exact array or (hi, lo) pair) rounded once to fmt, back as exact float64."""
    return to_float64(round_to(x, fmt, mode))


def _add(s: np.ndarray, t: np.ndarray, fmt: Format, mode: str) -> np.ndarray:
    """round(s + t) with one rounding: the exact sum as a TwoSum pair (specials pass through)."""
    return _round(clean_pair(*two_sum(s, t)), fmt, mode)


@dataclass(frozen=True)
class Exact:
    """The exact sum of the exact terms, rounded once to acc."""

    acc: Format = float32
    mode: str = "nearest_even"

    def __post_init__(self) -> None:
        _check_common(self)

    def reduce(self, K: int, terms: Terms, shape: tuple) -> np.ndarray:
        """Reduce K terms of the given shape."""
        return (_round(exact_sum(terms(0, K), axis=0), self.acc, self.mode) if K
                else np.zeros(shape))

    def bound(self, K: int, T: Bound, shape: tuple, s_abs=None) -> tuple:
        """(err, mag) for K >= 1 terms (see error_bound)."""
        # One rounding of the exact sum s: |fl(s) - s| <= delta |s| + eta.
        delta, eta = round_params(self.acc, self.mode)
        s = T(0, K) if s_abs is None else np.minimum(s_abs, T(0, K))
        err = delta * s + eta
        mag = s + err
        return err, mag


@dataclass(frozen=True)
class Sequential:
    """One term at a time: s_0 = 0, s_k = round(s_{k-1} + t_k) (fma) or
    round(s_{k-1} + round(t_k)), over k = 0 .. K-1 (order="forward") or K-1 .. 0 ("reverse")."""

    acc: Format = float32
    fma: bool = True
    mode: str = "nearest_even"
    order: str = "forward"

    def __post_init__(self) -> None:
        _check_common(self)
        if not isinstance(self.fma, bool):
            raise ValueError(f"fma must be a bool, got {self.fma!r}")
        if self.order not in ("forward", "reverse"):
            raise ValueError(f"order must be 'forward' or 'reverse', got {self.order!r}")

    def indices(self, K: int) -> range:
        """The order in which the K terms are added."""
        return range(K) if self.order == "forward" else range(K - 1, -1, -1)

    def reduce(self, K: int, terms: Terms, shape: tuple) -> np.ndarray:
        """Reduce K terms, one (shape) term at a time."""
        s = np.zeros(shape)
        for k in self.indices(K):
            t = terms(k, k + 1)[0]
            if not self.fma:
                t = _round(t, self.acc, self.mode)
            s = _add(s, t, self.acc, self.mode)
        return s

    def bound(self, K: int, T: Bound, shape: tuple, s_abs=None) -> tuple:
        """(err, mag) for K >= 1 terms (see error_bound)."""
        # d = K roundings on a path at most: with fma, t_1 passes the K roundings s_1..s_K
        # and t_k passes K - k + 1; without fma t_k is rounded first (1) and then passes
        # s_k..s_K, except that s_1 = fl(0 + fl(t_1)) is exact, so again at most K.
        # R = K (fma) or 2K - 1 roundings.  Any order of the additions gives the same d.
        R = K if self.fma else 2 * K - 1
        err = tree_bound(T(0, K), K, R, self.acc, self.mode)
        return err, T(0, K) + err


@dataclass(frozen=True)
class Pairwise:
    """Pairwise summation of the terms rounded to acc (Higham §4.2), by one of two rules.

    rule="halving": P(k0, n) = sequential sum (round after each addition, starting from
    the first term) when n <= block, else round(P(k0, n//2) + P(k0 + n//2, n - n//2)).
    rule="numpy": NumPy's pairwise_sum (numpy/_core/src/umath/loops_utils.h.src, with
    block = PW_BLOCKSIZE = 128): n < 8 terms are added one at a time to +0; up to block
    terms go to 8 strided partial sums r_j = t_j + t_{j+8} + ..., combined as
    ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)), then the n mod 8 left over added one at a time;
    longer runs split at n2 = n//2 - (n//2 mod 8). The reduction starts from the identity
    +0, so a zero result is +0 (np.sum of float16 accumulates in float32: acc=float32).
    """

    acc: Format = float32
    block: int = 8
    mode: str = "nearest_even"
    rule: str = "halving"

    def __post_init__(self) -> None:
        _check_common(self)
        if self.rule not in ("halving", "numpy"):
            raise ValueError(f"rule must be 'halving' or 'numpy', got {self.rule!r}")
        low = 16 if self.rule == "numpy" else 1  # a split must leave 8 terms a side
        if not isinstance(self.block, int) or self.block < low:
            raise ValueError(f"block must be an int >= {low}, got {self.block!r}")

    def _chain(self, s: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """s + ts[0] + ts[1] + ..., each term rounded to acc, one rounding per addition."""
        for t in ts:
            s = _add(s, _round(t, self.acc, self.mode), self.acc, self.mode)
        return s

    def _part(self, k0: int, n: int, terms: Terms) -> np.ndarray:
        """The pairwise sum of terms k0 .. k0+n-1 (n >= 1)."""
        if self.rule == "halving":
            if n <= self.block:
                first = terms(k0, k0 + n)
                return self._chain(_round(first[0], self.acc, self.mode), first[1:])
        elif n < 8:
            return self._chain(np.zeros(terms(k0, k0 + 1).shape[1:]), terms(k0, k0 + n))
        elif n <= self.block:
            ts = terms(k0, k0 + n)
            whole = n - n % 8
            r = _round(ts[:8], self.acc, self.mode)
            for i in range(8, whole, 8):
                r = _add(r, _round(ts[i:i + 8], self.acc, self.mode), self.acc, self.mode)
            while len(r) > 1:  # (r0 + r1), (r2 + r3), ... then their sums, as a tree
                r = _add(r[0::2], r[1::2], self.acc, self.mode)
            return self._chain(r[0], ts[whole:])
        h = n // 2 if self.rule == "halving" else n // 2 - (n // 2) % 8
        return _add(self._part(k0, h, terms), self._part(k0 + h, n - h, terms),
                    self.acc, self.mode)

    def reduce(self, K: int, terms: Terms, shape: tuple) -> np.ndarray:
        """Reduce K terms by recursive halving (an empty sum is +0)."""
        if K == 0:
            return np.zeros(shape)
        s = self._part(0, K, terms)
        return _add(np.zeros(shape), s, self.acc, self.mode) if self.rule == "numpy" else s

    def bound(self, K: int, T: Bound, shape: tuple, s_abs=None) -> tuple:
        """(err, mag) for K >= 1 terms (see error_bound)."""
        # Every term is rounded to acc, then at most K additions (K - 1, and the numpy
        # rule's +0 start): R = 2K, and the depth below (<= K + 4).
        err = tree_bound(T(0, K), pairwise_depth(K, self.block, self.rule), 2 * K,
                         self.acc, self.mode)
        return err, T(0, K) + err


@dataclass(frozen=True)
class BlockFMA:
    """Block FMA of matrix units (Fasi et al. 2021; Khattak & Mikaitis, arXiv 2512.07004).

    For each block of n consecutive terms (the last may be shorter), plus the running
    accumulator c when include_accumulator: E = max floor(log2|x|) over the block's finite
    nonzero terms; each term is truncated toward zero to a multiple of 2**(E - F),
    F = fraction_bits; the truncated terms are added exactly and the sum rounded once to
    acc with `mode`, giving the next c (c starts at +0). Without include_accumulator
    the block sum is rounded to acc and then c = round(c + that), one more rounding.
    Zero terms take no part in E; a block of zeros (and c = 0) sums to +0. A NaN term,
    or infinities of both signs, make the block NaN; otherwise an infinity passes through;
    specials are then converted to acc as round_to does (e.g. inf -> NaN in e4m3fn).

    align="exponents" is the GPUs' rule (Khattak & Mikaitis 2025; MMA-Sim, arXiv
    2511.10909): a product's exponent is the sum of its inputs' exponents (its significand
    product lies in [1, 4), so it may exceed 2**(E+1)), an input below its format's
    smallest normal takes the format's minimum exponent, and c's exponent is floor(log2|c|).
    The drivers supply the inputs' exponents for matrix products (mma, matmul_model);
    for a plain sum the terms' own exponents are used, which is align="value".
    input_emin, when given, replaces the formats' minimum exponents (fp8 instructions that
    work on float16 copies of their inputs: -14).

    An instruction of k products (default n) is walked as k/n blocks: of consecutive
    products (order="consecutive"), or of interleaved pairs (order="pairs": products
    2j, 2j+1 go to block j mod k/n). With accumulator="first" C joins the first block;
    with "last" the blocks start from +0 and C is added to their result at the end with one
    rounding in late_mode (B200's and Hopper's mma.sync fp8: Khattak & Mikaitis 2025).
    """

    n: int = 16
    fraction_bits: int = 25
    include_accumulator: bool = True
    mode: str = "toward_zero"
    acc: Format = float32
    align: str = "value"
    k: int | None = None
    order: str = "consecutive"
    accumulator: str = "first"
    late_mode: str = "nearest_even"
    input_emin: int | None = None

    def __post_init__(self) -> None:
        _check_common(self)
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an int >= 1, got {self.n!r}")
        if self.align not in ("value", "exponents"):
            raise ValueError(f"align must be 'value' or 'exponents', got {self.align!r}")
        if self.k is not None and (not isinstance(self.k, int) or self.k < 1
                                   or self.k % self.n):
            raise ValueError(f"k must be a multiple of n = {self.n}, got {self.k!r}")
        if self.order not in ("consecutive", "pairs"):
            raise ValueError(f"order must be 'consecutive' or 'pairs', got {self.order!r}")
        if self.accumulator not in ("first", "last"):
            raise ValueError(f"accumulator must be 'first' or 'last', got {self.accumulator!r}")
        if self.late_mode not in MODES[:-1]:
            raise ValueError(f"late_mode must be a deterministic mode, got {self.late_mode!r}")
        # bits the exact sum of n + 1 terms can add (one more: a product may reach 2**(E+2))
        width = int(self.n + 1).bit_length() + (self.align == "exponents")
        if not isinstance(self.fraction_bits, int) or not 0 <= self.fraction_bits <= 52 - width:
            raise ValueError(f"fraction_bits must be an int in [0, {52 - width}] for n="
                             f"{self.n} (the aligned sum must be exact in float64), "
                             f"got {self.fraction_bits!r}")

    def _block(self, t: np.ndarray, c: np.ndarray | None, e: np.ndarray | None = None,
              out: Format | None = None, mode: str | None = None) -> np.ndarray:
        """Align, truncate, add exactly and round (to out in mode; default acc in the model's
        mode) a stack t of terms (block axis first), with the accumulator c when given.

        E is the largest exponent: of the terms' magnitudes, or the given exponents e of
        the terms (align="exponents"; NO_EXPONENT for a zero term), and of c. A NaN or
        infinity makes E so large that every finite term truncates to 0, leaving IEEE's sum
        of the specials.
        """
        with np.errstate(invalid="ignore", over="ignore", under="ignore"):
            m = np.maximum(t.max(axis=0), -t.min(axis=0))
            if c is not None:
                m = np.maximum(m, np.abs(c))
            finite = np.isfinite(m)
            if e is None or self.align == "value":
                E = np.frexp(np.where(finite, m, 0.0))[1] - 1
            else:
                E = e.max(axis=0)
                if c is not None:
                    E = np.maximum(E, np.where(c != 0, np.frexp(c)[1] - 1, NO_EXPONENT))
                E = np.where(E < NO_EXPONENT // 2, 0, E)  # all zero: any alignment gives +0
            E = np.where(finite, E, 1100)
            shift = self.fraction_bits - E  # terms are truncated to multiples of 2**-shift
            if -1022 <= shift.min() and shift.max() <= 1023:
                ints = np.multiply(t, np.ldexp(1.0, shift), out=np.empty_like(t))
            else:
                ints = np.ldexp(t, shift)
            total = np.trunc(ints, out=ints).sum(axis=0)  # exact: integers below 2**(F+2)
            if c is not None:
                total += np.trunc(np.ldexp(c, shift))
            s = np.ldexp(total, -shift) + 0.0  # exact; a zero sum is +0
        return _round(s, out or self.acc, mode or self.mode)

    def reduce(self, K: int, terms: Terms, shape: tuple, exponents: Terms | None = None,
               c: np.ndarray | None = None, out: Format | None = None,
               mode: str | None = None) -> np.ndarray:
        """Reduce K terms instruction by instruction with an (shape) accumulator starting at
        c (+0), each block rounded to out in mode (default: acc in the model's mode);
        exponents(k0, k1) gives the terms' exponents for align="exponents"."""
        c = np.zeros(shape) if c is None else c
        width = self.k or self.n
        for k0 in range(0, K, width):
            k1 = min(k0 + width, K)
            e = None if exponents is None else exponents(k0, k1)
            c = self._instruction(terms(k0, k1), e, c, out or self.acc, mode or self.mode)
        return c

    def blocks(self, size: int) -> list:
        """The term indices of each block of an instruction of `size` terms."""
        blocks = max(1, (self.k or self.n) // self.n)
        j = np.arange(size)
        if self.order == "pairs":
            return [j[(j // 2) % blocks == b] for b in range(blocks) if size > 2 * b]
        return [j[k0:k0 + self.n] for k0 in range(0, size, self.n)]

    def _instruction(self, t, e, c, out: Format, mode: str) -> np.ndarray:
        """One instruction: its blocks chained, with C first (or late, or per block)."""
        acc = c if self.accumulator == "first" else None
        for cols in self.blocks(len(t)):
            eb = None if e is None else e[cols]
            if not self.include_accumulator:
                c = _add(c, self._block(t[cols], None, eb), out, mode)
            else:
                acc = self._block(t[cols], acc, eb, out, mode)
        if not self.include_accumulator:
            return c
        return acc if self.accumulator == "first" else _add(acc, c, out, self.late_mode)

    def bound(self, K: int, T: Bound, shape: tuple, s_abs=None) -> tuple:
        """(err, mag) for K >= 1 terms (see error_bound)."""
        # Valid when each item's exponent is at most floor(log2|item|): always for
        # align="value", and for align="exponents" when no input lies below its format's
        # smallest normal or below 2**input_emin (the unit then aligns it higher).
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
        # With order="pairs" a block's terms are not contiguous: T of the whole instruction
        # bounds each block's T_b. With accumulator="last" each instruction's blocks run
        # from +0 (c = 0 above) and C is added at the end: one more rounding in late_mode,
        #   e <= e_C + e_blocks + delta' (S + e_C + e_blocks) + eta'.
        delta, eta = round_params(self.acc, self.mode)
        late = round_params(self.acc, self.late_mode)
        f = 2.0 ** -self.fraction_bits
        e, S = np.zeros(shape), np.zeros(shape)
        width = self.k or self.n
        for i0 in range(0, K, width):
            i1 = min(i0 + width, K)
            last = self.include_accumulator and self.accumulator == "last"
            eb_, Sb_ = (np.zeros(shape), np.zeros(shape)) if last else (e, S)
            for cols in self.blocks(i1 - i0):
                k0, k1 = i0 + int(cols[0]), i0 + int(cols[-1]) + 1
                Tb = T(i0, i1) if self.order == "pairs" else T(k0, k1)
                eb_, Sb_ = self._block_bound(len(cols), Tb, eb_, Sb_, delta, eta, f)
            if last:
                S = S + Sb_
                e = e + eb_ + late[0] * (S + e + eb_) + late[1]
            else:
                e, S = eb_, Sb_
        return e, S + e

    def _block_bound(self, n_b: int, Tb, e, S, delta: float, eta: float, f: float) -> tuple:
        """(e, S) after one block of n_b terms with |terms| summing to at most Tb."""
        if self.include_accumulator:
            tau = (n_b + 1) * f * (S + e + Tb)
            S = S + Tb
            return (e + tau) * (1 + delta) + delta * S + eta, S
        tau = n_b * f * Tb
        eb = tau + delta * (Tb + tau) + eta
        S = S + Tb
        return e + eb + delta * (S + e + eb) + eta, S


@dataclass(frozen=True)
class Chunked:
    """K split into chunks of `chunk` terms, each reduced by inner, the results by outer.

    DeepSeek-V3 §3.3: FP8 tensor-core partial sums promoted to fp32 every 128 elements.
    """

    chunk: int = 128
    inner: "Model" = field(default_factory=lambda: Sequential(float32))
    outer: "Model" = field(default_factory=lambda: Sequential(float32))

    def __post_init__(self) -> None:
        if not isinstance(self.chunk, int) or self.chunk < 1:
            raise ValueError(f"chunk must be an int >= 1, got {self.chunk!r}")
        for name in ("inner", "outer"):
            if not isinstance(getattr(self, name), MODELS):
                raise ValueError(f"{name} must be an accumulation model, "
                                 f"got {getattr(self, name)!r}")

    @property
    def acc(self) -> Format:
        """The format of the result: the outer model's accumulator."""
        return self.outer.acc

    def reduce(self, K: int, terms: Terms, shape: tuple,
               exponents: Terms | None = None) -> np.ndarray:
        """Reduce each chunk with inner, then the stacked chunk results with outer
        (exponents, for an inner model that aligns by them, as BlockFMA.reduce)."""
        def part(k0: int) -> np.ndarray:
            chunk = (min(self.chunk, K - k0), lambda a, b: terms(k0 + a, k0 + b), shape)
            if exponents is None:
                return self.inner.reduce(*chunk)
            return self.inner.reduce(*chunk, lambda a, b: exponents(k0 + a, k0 + b))
        parts = [part(k0) for k0 in range(0, K, self.chunk)]
        stack = np.stack(parts) if parts else np.zeros((0,) + shape)
        return self.outer.reduce(len(parts), lambda a, b: stack[a:b], shape)

    def bound(self, K: int, T: Bound, shape: tuple, s_abs=None) -> tuple:
        """(err, mag) for K >= 1 terms (see error_bound)."""
        # Inner model on each chunk c: |r_c - s_c| <= e_c and |r_c| <= m_c (its magnitude
        # bound).  The outer model sums the exact values r_c, so its error is bounded by its
        # own bound with term magnitudes m_c; the total is sum_c e_c + outer error.
        errs, mags = [], []
        for k0 in range(0, K, self.chunk):
            k1 = min(k0 + self.chunk, K)
            e, m = error_bound(self.inner, k1 - k0, lambda a, b, k0=k0: T(k0 + a, k0 + b),
                               shape)
            errs.append(e), mags.append(m)
        stack = np.stack(mags)
        inner_err = np.sum(np.stack(errs), axis=0) * (1 + 4 * (len(errs) + 2) * U53)
        outer_err, mag = error_bound(
            self.outer, len(mags),
            lambda a, b: np.sum(stack[a:b], axis=0) * (1 + 4 * (b - a + 2) * U53), shape)
        return inner_err + outer_err, mag


@dataclass(frozen=True)
class Tree:
    """A summation order as data: each node rounds the exact sum of its children once to acc.

    order: nested tuples over the term indices 0 .. K-1, each exactly once, e.g.
    ((0, 1), (2, 3)) is pairwise and (((0, 1), 2), 3) sequential; a node of more than two
    children is a fused multi-term addition. fma=False rounds each term to acc first.
    It reduces exactly K terms (what mpgrad.probe recovers of an unknown reduction).
    """

    order: tuple
    acc: Format = float32
    mode: str = "nearest_even"
    fma: bool = True

    def __post_init__(self) -> None:
        _check_common(self)
        if not isinstance(self.order, tuple) or (
                sorted(_leaves(self.order)) != list(range(len(_leaves(self.order))))):
            raise ValueError(f"order must be nested tuples over the indices 0 .. K-1, each "
                             f"once, got {self.order!r}")

    @property
    def size(self) -> int:
        """K: the number of terms the tree adds."""
        return len(_leaves(self.order))

    def reduce(self, K: int, terms: Terms, shape: tuple) -> np.ndarray:
        """Reduce exactly K = size terms in the tree's order."""
        if K != self.size:
            raise ValueError(f"this Tree adds {self.size} terms, got {K}")

        def value(node) -> np.ndarray:
            if isinstance(node, int):
                t = terms(node, node + 1)[0]
                return t if self.fma else _round(t, self.acc, self.mode)
            return _round(exact_sum(np.stack([value(c) for c in node]), axis=0),
                          self.acc, self.mode)
        return value(self.order)

    def bound(self, K: int, T: Bound, shape: tuple, s_abs=None) -> tuple:
        """(err, mag) for K >= 1 terms (see error_bound)."""
        # Each node's one rounding multiplies the exact sum below it by (1 + d), |d| <= delta
        # (plus eta): a term passes at most depth roundings (one more with fma=False).
        def depth(node) -> int:
            return 0 if isinstance(node, int) else 1 + max(depth(c) for c in node)

        def nodes(node) -> int:
            return 0 if isinstance(node, int) else 1 + sum(nodes(c) for c in node)
        extra = 0 if self.fma else 1
        err = tree_bound(T(0, K), depth(self.order) + extra,
                         nodes(self.order) + extra * K, self.acc, self.mode)
        return err, T(0, K) + err


def _leaves(node) -> list:
    """The term indices under a node of a Tree order (ValueError for anything else)."""
    if isinstance(node, (int, np.integer)) and not isinstance(node, bool):
        return [int(node)]
    if isinstance(node, tuple) and node:
        return [i for c in node for i in _leaves(c)]
    raise ValueError(f"a Tree node is a term index or a non-empty tuple, got {node!r}")


MODELS = (Exact, Sequential, Pairwise, BlockFMA, Chunked, Tree)
Model = Union[MODELS]


def uses_exponents(model: Model) -> bool:
    """Whether the model aligns products by their inputs' exponents (see BlockFMA)."""
    if isinstance(model, Chunked):
        return uses_exponents(model.inner)
    return isinstance(model, BlockFMA) and model.align == "exponents"


def error_bound(model: Model, K: int, T: Bound, shape: tuple, s_abs=None) -> tuple:
    """(err, mag): bounds on |result - exact sum| and on |result| for K terms reduced by model.

    T(k0, k1) is an upper bound on sum_{k0 <= k < k1} |t_k| (an array of the given shape);
    s_abs, if given, an upper bound on |exact sum| (used by Exact only). err is inf where an
    intermediate value could reach the accumulator's overflow threshold: every intermediate
    value is at most the final magnitude bound in size (partial sums of the terms plus their
    errors), so below acc.max nothing overflows.
    """
    if K == 0:  # every model returns +0 for an empty sum
        return np.zeros(shape), np.zeros(shape)
    err, mag = model.bound(K, T, shape, s_abs)
    err = np.where(mag > model.acc.max, np.inf, err)
    return err, np.where(np.isinf(err), np.inf, mag)
