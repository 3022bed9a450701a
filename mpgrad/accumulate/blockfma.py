"""The block FMA of matrix units: blocks of products aligned to their largest exponent,
cut to a number of fraction bits, added exactly and rounded once, as data (BlockFMA).

Sources: Fasi, Higham, Mikaitis & Pranesh 2021, "Numerical behavior of NVIDIA tensor
cores"; Khattak & Mikaitis, arXiv 2512.07004; MMA-Sim, arXiv 2511.10909 (the AMD rules).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..numerics.formats import Format, float32
from ..numerics.rounding import MODES
from .rounding_error import pairwise_depth, round_params
from .steps import NO_EXPONENT, Bound, Terms, add_rounded, check_common, rounded

__all__ = ["BlockFMA"]


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

    AMD matrix cores (MMA-Sim, arXiv 2511.10909: mmasim/simulator/amd.py and arithmetic.py):
    with accumulator="aligned" (CDNA3, amd_fused_dot_rd_add) C joins after the blocks,
    which are not rounded: their exact sums s_b, each aligned to its own exponent E_b, are
    cut toward -inf (floor, as on two's complement) to multiples of 2**(E - F), E = max E_b,
    and added; that sum is cut toward -inf to multiples of 2**(E' - sum_bits) and C to
    multiples of 2**(E' - F), E' = max(E, C's exponent), C dropped when its exponent is
    below E' - reach (reach given); the two are added exactly and rounded once in mode.
    C's exponent there is floor(log2|c|), or acc's minimum exponent for a C below acc's
    smallest normal, zero included. order="alternate" sends product j to block j mod k/n.
    zero_exponent, when given, is the exponent a zero input takes (MMA-Sim: -126), so a
    product with a zero factor joins its block's E (mma supplies it; matmul_model's
    exponents leave zeros out). With product_overflow, a product of
    magnitude 2**(acc's max exponent + 1) or more is an infinity of its sign, unless the
    instruction already holds a NaN or an infinity. block_sum="pairwise" (CDNA1/CDNA2,
    pairwise_dot; with include_accumulator=False, fraction_bits and align unused) adds a
    block by halving instead: each term rounded to acc as fma(a, b, +0) rounds it (a zero
    term gives +0), the first n//2 and the rest summed alike, one rounding per addition.
    flush (CDNA2, flush_denormal) makes every rounded result below acc's smallest normal a
    zero of its sign; mma then also reads inputs and C below their formats' smallest normals
    as +0.
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
    sum_bits: int | None = None
    reach: int | None = None
    zero_exponent: int | None = None
    product_overflow: bool = False
    block_sum: str = "exact"
    flush: bool = False

    def __post_init__(self) -> None:
        check_common(self)
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an int >= 1, got {self.n!r}")
        if self.align not in ("value", "exponents"):
            raise ValueError(f"align must be 'value' or 'exponents', got {self.align!r}")
        if self.k is not None and (not isinstance(self.k, int) or self.k < 1
                                   or self.k % self.n):
            raise ValueError(f"k must be a multiple of n = {self.n}, got {self.k!r}")
        if self.order not in ("consecutive", "pairs", "alternate"):
            raise ValueError(f"order must be 'consecutive', 'pairs' or 'alternate', "
                             f"got {self.order!r}")
        if self.accumulator not in ("first", "last", "aligned"):
            raise ValueError(f"accumulator must be 'first', 'last' or 'aligned', "
                             f"got {self.accumulator!r}")
        if self.late_mode not in MODES[:-1]:
            raise ValueError(f"late_mode must be a deterministic mode, got {self.late_mode!r}")
        # bits the exact sum of n + 1 terms can add (one more: a product may reach 2**(E+2))
        width = int(self.n + 1).bit_length() + (self.align == "exponents")
        if not isinstance(self.fraction_bits, int) or not 0 <= self.fraction_bits <= 52 - width:
            raise ValueError(f"fraction_bits must be an int in [0, {52 - width}] for n="
                             f"{self.n} (the aligned sum must be exact in float64), "
                             f"got {self.fraction_bits!r}")
        self._check_amd(width)

    def _check_amd(self, width: int) -> None:
        """Validate the fields of the AMD rules (see the class docstring)."""
        for name in ("product_overflow", "flush"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.block_sum not in ("exact", "pairwise"):
            raise ValueError(f"block_sum must be 'exact' or 'pairwise', got {self.block_sum!r}")
        if self.block_sum == "pairwise" and self.include_accumulator:
            raise ValueError("block_sum='pairwise' adds C after each block: it needs "
                             "include_accumulator=False")
        if self.zero_exponent is not None and not isinstance(self.zero_exponent, int):
            raise ValueError(f"zero_exponent must be an int or None, got {self.zero_exponent!r}")
        if self.accumulator != "aligned":
            if self.sum_bits is not None or self.reach is not None:
                raise ValueError("sum_bits and reach belong to accumulator='aligned'")
            return
        if not self.include_accumulator:
            raise ValueError("accumulator='aligned' adds C in the instruction: it needs "
                             "include_accumulator=True")
        # the merged sum must stay exact in float64: k/n blocks of n terms, and C
        top = 52 - width - ((self.k or self.n) // self.n).bit_length()
        if not isinstance(self.sum_bits, int) or not self.fraction_bits <= self.sum_bits <= top:
            raise ValueError(f"accumulator='aligned' needs sum_bits, an int in "
                             f"[fraction_bits, {top}], got {self.sum_bits!r}")
        if self.reach is not None and (not isinstance(self.reach, int)
                                       or self.reach < self.fraction_bits):
            raise ValueError(f"reach must be None or an int >= fraction_bits, "
                             f"got {self.reach!r}")

    def _block(self, t: np.ndarray, c: np.ndarray | None, e: np.ndarray | None = None,
              out: Format | None = None, mode: str | None = None) -> np.ndarray:
        """A stack t of terms (block axis first), with the accumulator c when given, added
        (aligned and truncated, or pairwise) and rounded to out in mode (default: acc in
        the model's mode)."""
        out, mode = out or self.acc, mode or self.mode
        if self.block_sum == "pairwise":
            return self._pairwise(t, out, mode)
        return self._flush(rounded(self._aligned(t, c, e)[0], out, mode))

    def _aligned(self, t: np.ndarray, c: np.ndarray | None,
                 e: np.ndarray | None = None) -> tuple:
        """(s, E): the exact sum of the terms t (and c when given), each truncated toward
        zero to a multiple of 2**(E - F).

        E is the largest exponent: of the terms' magnitudes, or the given exponents e of
        the terms (align="exponents"; NO_EXPONENT for a zero term), and of c; below
        NO_EXPONENT // 2 when every item is zero. A NaN or infinity makes E so large that
        every finite term truncates to 0, leaving IEEE's sum of the specials.
        """
        with np.errstate(invalid="ignore", over="ignore", under="ignore"):
            m = np.maximum(t.max(axis=0), -t.min(axis=0))
            if c is not None:
                m = np.maximum(m, np.abs(c))
            finite = np.isfinite(m)
            if e is None or self.align == "value":
                E = np.where(m > 0, np.frexp(np.where(finite, m, 0.0))[1] - 1, NO_EXPONENT)
            else:
                E = e.max(axis=0)
                if c is not None:
                    E = np.maximum(E, np.where(c != 0, np.frexp(c)[1] - 1, NO_EXPONENT))
            E = np.where(finite, E, 1100)
            # terms are truncated to multiples of 2**-shift (all zero: any alignment gives +0)
            shift = self.fraction_bits - np.where(E < NO_EXPONENT // 2, 0, E)
            if shift.size and -1022 <= shift.min() and shift.max() <= 1023:  # size 0: no outputs
                ints = np.multiply(t, np.ldexp(1.0, shift), out=np.empty_like(t))
            else:
                ints = np.ldexp(t, shift)
            total = np.trunc(ints, out=ints).sum(axis=0)  # exact: integers below 2**(F+2)
            if c is not None:
                total += np.trunc(np.ldexp(c, shift))
            s = np.ldexp(total, -shift) + 0.0  # exact; a zero sum is +0
        return s, E

    def _pairwise(self, t: np.ndarray, out: Format, mode: str) -> np.ndarray:
        """block_sum="pairwise": one term rounded as fma(a, b, +0) rounds its product, or
        the rounded sum of the halves t[:n//2] and t[n//2:] (MMA-Sim pairwise_dot)."""
        if len(t) == 1:
            return self._flush(add_rounded(np.zeros(t.shape[1:]), t[0], out, mode))
        h = len(t) // 2
        return self._flush(add_rounded(self._pairwise(t[:h], out, mode),
                                self._pairwise(t[h:], out, mode), out, mode))

    def _flush(self, x: np.ndarray) -> np.ndarray:
        """x, with values below acc's smallest normal made zeros of their sign if flush."""
        if not self.flush:
            return x
        return np.where(np.abs(x) < self.acc.smallest_normal, np.copysign(0.0, x), x)

    def _merge(self, t: np.ndarray, e: np.ndarray | None, c: np.ndarray, out: Format,
               mode: str) -> np.ndarray:
        """accumulator="aligned": one instruction's blocks and C (class docstring)."""
        F = self.fraction_bits
        parts = [self._aligned(t[cols], None, None if e is None else e[cols])
                 for cols in self._selectors(len(t))]
        sums = np.stack([p[0] for p in parts])
        with np.errstate(invalid="ignore", over="ignore", under="ignore"):
            special = ~np.all(np.isfinite(sums), axis=0) | ~np.isfinite(c)
            ieee = np.where(np.isfinite(sums), 0.0, sums).sum(axis=0) + np.where(
                np.isfinite(c), 0.0, c)  # the IEEE sum of the NaNs and infinities
            sums, c = np.where(special, 0.0, sums), np.where(special, 0.0, c)
            E = np.max([p[1] for p in parts], axis=0)
            s = sum(self._floor(x, E - F) for x in sums)
            ec = np.where(np.abs(c) >= self.acc.smallest_normal, np.frexp(c)[1] - 1,
                          self.acc.min_exponent)
            E2 = np.maximum(E, ec)
            cut = self._floor(c, E2 - F)
            if self.reach is not None:
                cut = np.where(ec < E2 - self.reach, 0.0, cut)
            total = self._floor(s, E2 - self.sum_bits) + cut + 0.0  # exact; a zero sum is +0
        return self._flush(rounded(np.where(special, ieee, total), out, mode))

    @staticmethod
    def _floor(x: np.ndarray, q: np.ndarray) -> np.ndarray:
        """x cut toward -inf to a multiple of 2**q."""
        return np.ldexp(np.floor(np.ldexp(x, -q)), q)

    def _overflow(self, t: np.ndarray, c: np.ndarray) -> np.ndarray:
        """product_overflow: products of magnitude 2**(emax + 1) or more, emax acc's largest
        exponent, as infinities where the instruction holds no NaN or infinity (MMA-Sim
        amd_fused_dot_rd_add checks its float64 sum first)."""
        with np.errstate(invalid="ignore"):
            plain = np.all(np.isfinite(t), axis=0) & np.isfinite(c)
            big = plain & (np.abs(t) >= 2.0 ** (self.acc.max_exponent + 1))
        return np.where(big, np.copysign(np.inf, t), t)

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
        if self.order == "alternate":
            return [j[j % blocks == b] for b in range(blocks) if size > b]
        return [j[k0:k0 + self.n] for k0 in range(0, size, self.n)]

    def _selectors(self, size: int) -> list:
        """blocks(size) as indices into the terms: slices (views, not copies) for
        consecutive blocks."""
        if self.order != "consecutive":
            return self.blocks(size)
        return [slice(int(cols[0]), int(cols[-1]) + 1) for cols in self.blocks(size)]

    def _instruction(self, t, e, c, out: Format, mode: str) -> np.ndarray:
        """One instruction: its blocks chained, with C first (or late, or per block, or
        aligned with the blocks' exact sums)."""
        if self.product_overflow:
            t = self._overflow(t, c)
        if self.accumulator == "aligned":
            return self._merge(t, e, c, out, mode)
        acc = c if self.accumulator == "first" else None
        for cols in self._selectors(len(t)):
            eb = None if e is None else e[cols]
            if not self.include_accumulator:
                c = self._flush(add_rounded(c, self._block(t[cols], None, eb), out, mode))
            else:
                acc = self._block(t[cols], acc, eb, out, mode)
        if not self.include_accumulator:
            return c
        if self.accumulator == "first":
            return acc
        return self._flush(add_rounded(acc, c, out, self.late_mode))

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
        # With order="pairs" or "alternate" a block's terms are not contiguous: T of the
        # whole instruction bounds each block's T_b. With accumulator="last" each
        # instruction's blocks run from +0 (c = 0 above) and C is added at the end: one
        # more rounding in late_mode,
        #   e <= e_C + e_blocks + delta' (S + e_C + e_blocks) + eta'.
        # The AMD fields. flush: a rounded result below acc's smallest normal made zero
        # moves by less than that much more, so eta grows by it. block_sum="pairwise": a
        # tree of 2 n_b - 1 roundings, at most d = pairwise_depth(n_b, 1) on a path (the
        # term's own and one per level), eb <= (d delta T_b + (2 n_b - 1) eta)/(1 - d delta)
        # (tree_bound). accumulator="aligned", per instruction of terms with |t| summing to
        # at most T (2^E_b <= max|t| <= T under the condition above, which with
        # zero_exponent also needs no zero input): truncation loses < n_b 2^-F T per block;
        # cutting the block sums toward -inf (floor) to multiples of 2^(E - F) loses < 2^(E -
        # F) <= 2^-F T for each block but the one with E_b = E (exact); then 2^E' <=
        # T + |c| + 2^emin (C's exponent is at least acc's emin), cutting the sum loses
        # < 2^(E' - sum_bits) and C < 2^(E' - F) (a dropped C: |c| < 2^(E' - reach) <=
        # 2^(E' - F)). A floor cut, like truncation, loses less than one unit, so the
        # argument above carries over: e <= (e + tau)(1 + delta) + delta S + eta with
        #   tau = (k + blocks - 1) 2^-F T + (2^-sum_bits + 2^-F)(T + S + e + 2^emin).
        # product_overflow: an infinite product had |t| >= 2^(emax + 1) > acc.max, which
        # error_bound already turns into an infinite bound.
        delta, eta = round_params(self.acc, self.mode)
        late = round_params(self.acc, self.late_mode)
        if self.flush:
            eta, late = eta + self.acc.smallest_normal, (late[0],
                                                         late[1] + self.acc.smallest_normal)
        f = 2.0 ** -self.fraction_bits
        e, S = np.zeros(shape), np.zeros(shape)
        width = self.k or self.n
        for i0 in range(0, K, width):
            i1 = min(i0 + width, K)
            if self.accumulator == "aligned":
                Ti, blocks = T(i0, i1), len(self.blocks(i1 - i0))
                tau = (i1 - i0 + blocks - 1) * f * Ti + (2.0 ** -self.sum_bits + f) * (
                    Ti + S + e + self.acc.smallest_normal)
                S = S + Ti
                e = (e + tau) * (1 + delta) + delta * S + eta
                continue
            last = self.include_accumulator and self.accumulator == "last"
            eb_, Sb_ = (np.zeros(shape), np.zeros(shape)) if last else (e, S)
            for cols in self.blocks(i1 - i0):
                k0, k1 = i0 + int(cols[0]), i0 + int(cols[-1]) + 1
                Tb = T(i0, i1) if self.order != "consecutive" else T(k0, k1)
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
        if self.block_sum == "pairwise":
            d = pairwise_depth(n_b, 1)
            eb = np.inf if d * delta >= 1 else (
                (d * delta * Tb + (2 * n_b - 1) * eta) / (1 - d * delta))
        else:
            tau = n_b * f * Tb
            eb = tau + delta * (Tb + tau) + eta
        S = S + Tb
        return e + eb + delta * (S + e + eb) + eta, S
