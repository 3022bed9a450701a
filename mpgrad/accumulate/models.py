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
from typing import Union

import numpy as np

from ..numerics.exact import exact_sum
from ..numerics.formats import Format, float32
from .blockfma import BlockFMA
from .rounding_error import U53, pairwise_depth, round_params, tree_bound
from .steps import NO_EXPONENT, Bound, Terms, add_rounded, check_common, rounded

__all__ = ["Exact", "Sequential", "Pairwise", "Chunked", "BlockFMA", "Tree", "Model", "MODELS",
           "error_bound", "NO_EXPONENT", "uses_exponents"]

@dataclass(frozen=True)
class Exact:
    """The exact sum of the exact terms, rounded once to acc."""

    acc: Format = float32
    mode: str = "nearest_even"

    def __post_init__(self) -> None:
        check_common(self)

    def reduce(self, K: int, terms: Terms, shape: tuple) -> np.ndarray:
        """Reduce K terms of the given shape."""
        return (rounded(exact_sum(terms(0, K), axis=0), self.acc, self.mode) if K
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
        check_common(self)
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
                t = rounded(t, self.acc, self.mode)
            s = add_rounded(s, t, self.acc, self.mode)
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
        check_common(self)
        if self.rule not in ("halving", "numpy"):
            raise ValueError(f"rule must be 'halving' or 'numpy', got {self.rule!r}")
        low = 16 if self.rule == "numpy" else 1  # a split must leave 8 terms a side
        if not isinstance(self.block, int) or self.block < low:
            raise ValueError(f"block must be an int >= {low}, got {self.block!r}")

    def _chain(self, s: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """s + ts[0] + ts[1] + ..., each term rounded to acc, one rounding per addition."""
        for t in ts:
            s = add_rounded(s, rounded(t, self.acc, self.mode), self.acc, self.mode)
        return s

    def _part(self, k0: int, n: int, terms: Terms) -> np.ndarray:
        """The pairwise sum of terms k0 .. k0+n-1 (n >= 1)."""
        if self.rule == "halving":
            if n <= self.block:
                first = terms(k0, k0 + n)
                return self._chain(rounded(first[0], self.acc, self.mode), first[1:])
        elif n < 8:
            return self._chain(np.zeros(terms(k0, k0 + 1).shape[1:]), terms(k0, k0 + n))
        elif n <= self.block:
            ts = terms(k0, k0 + n)
            whole = n - n % 8
            r = rounded(ts[:8], self.acc, self.mode)
            for i in range(8, whole, 8):
                r = add_rounded(r, rounded(ts[i:i + 8], self.acc, self.mode), self.acc, self.mode)
            while len(r) > 1:  # (r0 + r1), (r2 + r3), ... then their sums, as a tree
                r = add_rounded(r[0::2], r[1::2], self.acc, self.mode)
            return self._chain(r[0], ts[whole:])
        h = n // 2 if self.rule == "halving" else n // 2 - (n // 2) % 8
        return add_rounded(self._part(k0, h, terms), self._part(k0 + h, n - h, terms),
                    self.acc, self.mode)

    def reduce(self, K: int, terms: Terms, shape: tuple) -> np.ndarray:
        """Reduce K terms by recursive halving (an empty sum is +0)."""
        if K == 0:
            return np.zeros(shape)
        s = self._part(0, K, terms)
        return add_rounded(np.zeros(shape), s, self.acc, self.mode) if self.rule == "numpy" else s

    def bound(self, K: int, T: Bound, shape: tuple, s_abs=None) -> tuple:
        """(err, mag) for K >= 1 terms (see error_bound)."""
        # Every term is rounded to acc, then at most K additions (K - 1, and the numpy
        # rule's +0 start): R = 2K, and the depth below (<= K + 4).
        err = tree_bound(T(0, K), pairwise_depth(K, self.block, self.rule), 2 * K,
                         self.acc, self.mode)
        return err, T(0, K) + err


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
        check_common(self)
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
                return t if self.fma else rounded(t, self.acc, self.mode)
            return rounded(exact_sum(np.stack([value(c) for c in node]), axis=0),
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
