"""Masking: the summation tree of a black-box matrix unit or reduction, and the feature
tests on its first fused node (see mpgrad.accumulate.probing for the whole probe).

Order (FPRev: Xie, Gao, Wang & Xue, "Revealing Floating-Point Accumulation Orders in
Software/Hardware Implementations", arXiv 2411.00442): for each pair of leaves i, j (the K
products and C), leaf i is +M, leaf j is -M and every other leaf a small u; below the node
where i and j meet every u is lost against +-M, there M - M = 0, and above it the remaining
u add up exactly, so d / u = K + 1 - (the leaves under that node). Features: Fasi, Higham,
Mikaitis & Pranesh 2021; Mikaitis 2024 (monotonicity).
"""

from __future__ import annotations

import numpy as np

from ..numerics.formats import Format
from ..numerics.rounding import round_to, to_float64

__all__ = ["ProbeError", "BlackBox", "recover_order", "first_fused", "fused_features",
           "c_alignment"]


class ProbeError(ValueError):
    """The black box's outputs fit no summation tree (or no model of mpgrad's families)."""


def _split(e: int, fa: Format, fb: Format, low: dict) -> tuple[int, int]:
    """Exponents (ea, eb) of fa and fb values, at least low[format], with ea + eb = e."""
    lo, hi = max(low[fa], e - fb.max_exponent), min(fa.max_exponent, e - low[fb])
    if lo > hi:
        raise ProbeError(f"2**{e} is not a product of {fa.name} and {fb.name} values")
    ea = min(max((e + 1) // 2, lo), hi)
    return ea, e - ea


class BlackBox:
    """The black box with the probe's bookkeeping: leaf values in, counts out."""

    def __init__(self, fn, fa: Format, fb: Format, fo: Format, K: int, subnormal: bool):
        self.fn, self.fa, self.fb, self.fo, self.K = fn, fa, fb, fo, K
        self.low = {f: f.min_exponent - subnormal * f.fraction_bits for f in (fa, fb, fo)}
        self.eM = min(fa.max_exponent + fb.max_exponent, fo.max_exponent - 2, 60)
        self.eu = max(self.low[fa] + self.low[fb], self.low[fo], -60)

    def call(self, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        """fn on exact float64 values (rounded to storage first), d as exact float64."""
        d = self.fn(round_to(a, self.fa), round_to(b, self.fb), round_to(c, self.fo))
        return to_float64(np.asarray(d)).reshape(c.shape)

    def leaves(self, values: np.ndarray) -> np.ndarray:
        """Run rows of leaf values (T, K + 1) (products: short significands times powers of
        two, the significand on a; column K is C) and return d (T,)."""
        T, K = values.shape[0], self.K
        sign, mag = np.sign(values[:, :K]), np.abs(values[:, :K])
        e = np.where(mag > 0, np.frexp(np.where(mag > 0, mag, 1))[1] - 1, 0)
        uniq, inv = np.unique(e, return_inverse=True)
        split = np.array([_split(int(x), self.fa, self.fb, self.low) for x in uniq]).reshape(-1, 2)
        ea, eb = split[inv.reshape(e.shape), 0], split[inv.reshape(e.shape), 1]
        m = np.where(mag > 0, mag / np.ldexp(1.0, e), 0.0)  # significand in [1, 2), on a
        a = (sign * m * np.ldexp(1.0, ea)).reshape(T, 1, K)
        b = np.where(mag > 0, np.ldexp(1.0, eb), 0.0).reshape(T, K, 1)
        return self.call(a, b, values[:, K].reshape(T, 1, 1)).reshape(T)


def _leading(flags: np.ndarray) -> int:
    """How many of flags, from the first, are True before the first False."""
    return int(np.argmin(flags)) if not flags.all() else len(flags)


def _tree_from_sizes(ids: list, S: np.ndarray):
    """The tree over leaves ids in which S[i, j] is the number of leaves under the node
    where i and j meet."""
    if len(ids) == 1:
        return ids[0]
    size, group = len(ids), {i: {i} for i in ids}
    for x, i in enumerate(ids):
        for j in ids[x + 1:]:
            if S[i, j] < size and group[i] is not group[j]:
                merged = group[i] | group[j]
                for m in merged:
                    group[m] = merged
            elif S[i, j] > size:
                raise ProbeError("the outputs fit no summation tree")
    classes = {id(g): sorted(g) for g in group.values()}.values()
    if len(classes) == 1:
        raise ProbeError("the outputs fit no summation tree (no masking: the sum is exact "
                         "over this range, or the order is not a tree)")
    for ga in classes:
        for gb in classes:
            if ga is not gb and np.any(S[np.ix_(ga, gb)] != size):
                raise ProbeError("the outputs fit no summation tree")
    kids = [_tree_from_sizes(g, S) for g in sorted(classes, key=min)]
    return tuple(kids)


def recover_order(box: BlackBox, uses_c: bool):
    """The recovered tree (leaf K is C when it is used), by masking."""
    K, L = box.K, box.K + uses_c
    M, u = 2.0 ** box.eM, 2.0 ** box.eu
    pairs = [(i, j) for i in range(L) for j in range(i + 1, L)]
    rows = np.full((len(pairs) + 1, K + 1), u)  # the last row: every leaf u
    if not uses_c:
        rows[:, K] = 0.0
    for r, (i, j) in enumerate(pairs):
        rows[r, i], rows[r, j] = M, -M
    counts = box.leaves(rows) / u
    if counts[-1] != L:
        raise ProbeError(f"{L} terms 2**{box.eu} do not add up exactly (flushed?)")
    counts = counts[:-1]
    if np.any(counts != np.round(counts)) or np.any((counts < 0) | (counts > L - 2)):
        raise ProbeError("masking failed: the outputs are not counts of the small terms "
                         f"(2**{box.eM} against 2**{box.eu} is not enough spread, or the "
                         "unit flushes these values)")
    S = np.zeros((L, L), dtype=int)
    for (i, j), n in zip(pairs, counts):
        S[i, j] = S[j, i] = L - int(n)
    if np.all(S[np.triu_indices(L, 1)] == 2) and L > 2:
        return None  # nothing was lost: an exact (or wider) accumulator
    return _tree_from_sizes(list(range(L)), S)


def first_fused(tree) -> list:
    """The leaf children of the first node to be added (the deepest first) that has at least
    three of them."""
    if isinstance(tree, int):
        return []
    for c in tree:
        found = first_fused(c)
        if found:
            return found
    kids = [c for c in tree if isinstance(c, int)]
    return kids if len(kids) >= 3 else []


def fused_features(box: BlackBox, tree, uses_c: bool) -> dict:
    """Fasi et al.'s tests on the first fused node: alignment bits, accumulator bits, and
    monotonicity in C."""
    feats = {"K": box.K}
    node = first_fused(tree)
    if not node:
        return feats
    feats["block"] = len(node) - (box.K in node)
    p, q, r = sorted(node, key=lambda i: i == box.K)[:3]  # C last: it takes any value
    e = box.eM
    js = np.arange(1, e - box.eu + 1)
    rows = np.zeros((2 * len(js), box.K + 1))
    rows[:len(js), p], rows[:len(js), q] = 2.0 ** e, -2.0 ** e
    rows[:len(js), r] = 2.0 ** (e - js)
    rows[len(js):, p], rows[len(js):, r] = 2.0 ** e, 2.0 ** (e - js)
    d = box.leaves(rows)
    kept = d[:len(js)] == 2.0 ** (e - js)
    exact = d[len(js):] == 2.0 ** e + 2.0 ** (e - js)
    F = _leading(kept)
    feats["fraction_bits"] = F
    A = _leading(exact)
    if A < min(F + 1, box.fo.fraction_bits):
        feats["acc_fraction_bits"] = A  # narrower than the output format (fp8's e8m13)
    if uses_c and box.K in node and F < len(js):
        feats["monotonic"] = _monotonic(box, node, F)
    return feats


def c_alignment(box: BlackBox, tree) -> dict:
    """How far below the products C still counts, and how many bits of the products' sum
    survive next to a larger C (AMD CDNA3's reach and sum_bits; both equal F where C is
    just one more term of the block): 2**e - 2**(e-j) is not 2**e while C = -2**(e-j)
    counts; with C = 2**e, the products 2**(e-p) + 2**(e-j) (p: the output's precision)
    round up to the next output value while 2**(e-j) survives (without it the sum is a tie,
    rounded to even)."""
    node = first_fused(tree)
    if box.K not in node:
        return {}
    p, q = sorted(node, key=lambda i: i == box.K)[:2]
    e, P = box.eM, box.fo.precision
    js = np.arange(1, e - box.eu + 1)
    rows = np.zeros((2 * len(js), box.K + 1))
    rows[:len(js), p], rows[:len(js), box.K] = 2.0 ** e, -2.0 ** (e - js)
    rows[len(js):, box.K] = 2.0 ** e
    rows[len(js):, p], rows[len(js):, q] = 2.0 ** (e - P), 2.0 ** (e - js)
    ok = js > P  # j = P + 1, P + 2, ...: below the tie's own bit
    rows[len(js):][~ok] = 0.0
    d = box.leaves(rows)
    counts = d[:len(js)] != 2.0 ** e
    survive = (d[len(js):] > 2.0 ** e)[ok]
    reach, bits = _leading(counts), P + _leading(survive)
    return {"c_reach": None if reach == len(js) else reach,
            "sum_bits": None if not survive.size or bits == P + survive.size else bits}


def _monotonic(box: BlackBox, node: list, F: int, tries: int = 64) -> bool:
    """Whether raising C from just below 2**e to 2**e never lowers the result: the node's
    products, odd multiples of one alignment unit of the lower binade, lose a unit each
    when the grid coarsens (Mikaitis 2024); random multiples of 1, 3, 5, 7 units."""
    e, prods = box.eM, [i for i in node if i != box.K]
    if e - 1 - F < box.eu:
        return True  # the test's products are not representable: none found
    rng = np.random.default_rng(1)
    below = float(round_to(2.0 ** e * (1 - 2.0 ** -box.fo.precision), box.fo, "down"))
    rows = np.zeros((2 * tries, box.K + 1))
    rows[:, prods] = np.tile(2 * rng.integers(0, 4, (tries, len(prods))) + 1.0, (2, 1))
    rows[:, prods] *= 2.0 ** (e - 1 - F)
    rows[:tries, box.K] = below
    rows[tries:, box.K] = 2.0 ** e
    d = box.leaves(rows)
    return bool(np.all(d[tries:] >= d[:tries]))
