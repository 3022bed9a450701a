"""mpgrad.probe: infer the accumulation model of a black-box matrix unit or reduction.

The black box is fn(a, b, c) -> d with a (T, M, K), b (T, K, N), c (T, M, N) in their
formats' storage dtypes (as mpgrad.mma takes them) and d in the output format. Three steps:

1. Order, by masking (FPRev: Xie, Gao, Wang & Xue, "Revealing Floating-Point Accumulation
   Orders in Software/Hardware Implementations", arXiv 2411.00442). For each pair of
   leaves i, j (the K products and C), leaf i is +M, leaf j is -M and every other leaf a
   small u. Below the node where i and j meet, every u is lost against +-M; there M - M = 0,
   and above it the remaining u add up exactly, so d / u = K + 1 - (the leaves under that
   node). Those sizes determine the tree (each node's children are the classes of leaves
   that meet below it).
2. Features (Fasi, Higham, Mikaitis & Pranesh 2021, "Numerical behavior of NVIDIA tensor
   cores"): in the first fused node, 2**e - 2**e + 2**(e-j) keeps the last term while j is
   at most the alignment bits F; 2**e + 2**(e-j) is exact while j also fits the
   accumulator's fraction bits; c just below 2**e versus at 2**e with products one grid
   unit of the smaller binade tests monotonicity (Mikaitis 2024, IEEE TC).
3. Parameters: the models of mpgrad's families whose tree is the recovered one and whose
   features agree, run on random inputs (subnormals, zeros, infinities, NaN) against the
   black box; those that give the same bits on every case, then on a fresh set, remain.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from itertools import chain, product

import numpy as np

from ..numerics.formats import Format, as_format, float16, float32, float64
from ..numerics.rounding import MODES, round_to, to_float64
from .drivers import matmul_model
from .mma import mma
from .blockfma import BlockFMA
from .models import Exact, Model, Pairwise, Sequential, Tree
from .order import summation_tree

__all__ = ["probe", "ProbeResult", "ProbeError", "compare", "load_vectors", "save_vectors"]


class ProbeError(ValueError):
    """The black box's outputs fit no summation tree (or no model of mpgrad's families)."""


@dataclass(frozen=True)
class ProbeResult:
    """What probe found: the order, the features, the model and the cases it was checked on."""

    tree: object
    uses_c: bool
    features: dict
    model: Model | None
    candidates: tuple = field(default=())
    checked: int = 0
    mismatches: int = 0

    def report(self) -> str:
        """The findings in words."""
        f, lines = self.features, []
        lines.append(f"summation order over K = {f['K']} products"
                     + (" and the accumulator C (leaf K)" if self.uses_c else "")
                     + f": {self.tree}")
        for key, text in (("block", "fused block size"), ("instruction_k", "instruction k"),
                          ("fraction_bits", "alignment: fraction bits kept below the largest "
                                            "exponent"),
                          ("acc_fraction_bits", "accumulator fraction bits"),
                          ("c_reach", "C still counts this many binades below the products"),
                          ("sum_bits", "bits of the products' sum kept next to C"),
                          ("monotonic", "monotonic in C")):
            if key in f:
                lines.append(f"{text}: {f[key]}")
        if self.model is None:
            lines.append("no model of mpgrad's families reproduces it")
        else:
            lines.append(f"model: {self.model!r}")
            lines.append(f"reproduced {self.checked} random cases with {self.mismatches} "
                         f"mismatches; {len(self.candidates)} parameter sets agree")
        return "\n".join(lines)


def _split(e: int, fa: Format, fb: Format, low: dict) -> tuple[int, int]:
    """Exponents (ea, eb) of fa and fb values, at least low[format], with ea + eb = e."""
    lo, hi = max(low[fa], e - fb.max_exponent), min(fa.max_exponent, e - low[fb])
    if lo > hi:
        raise ProbeError(f"2**{e} is not a product of {fa.name} and {fb.name} values")
    ea = min(max((e + 1) // 2, lo), hi)
    return ea, e - ea


class _Box:
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


def _order(box: _Box, uses_c: bool):
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


def _first_fused(tree) -> list:
    """The leaf children of the first node to be added (the deepest first) that has at least
    three of them."""
    if isinstance(tree, int):
        return []
    for c in tree:
        found = _first_fused(c)
        if found:
            return found
    kids = [c for c in tree if isinstance(c, int)]
    return kids if len(kids) >= 3 else []


def _features(box: _Box, tree, uses_c: bool) -> dict:
    """Fasi et al.'s tests on the first fused node: alignment bits, accumulator bits, and
    monotonicity in C."""
    feats = {"K": box.K}
    node = _first_fused(tree)
    if not node:
        return feats
    feats["block"] = len(node) - (box.K in node)
    p, q, r = sorted(node, key=lambda i: i == box.K)[:3]  # C last: it takes any value
    e = box.eM
    js = np.arange(1, e - box.eu + 1)
    rows = np.zeros((2 * len(js), box.K + 1))
    rows[:len(js), p], rows[:len(js), q], rows[:len(js), r] = 2.0 ** e, -2.0 ** e, 2.0 ** (e - js)
    rows[len(js):, p], rows[len(js):, r] = 2.0 ** e, 2.0 ** (e - js)
    d = box.leaves(rows)
    kept = d[:len(js)] == 2.0 ** (e - js)
    exact = d[len(js):] == 2.0 ** e + 2.0 ** (e - js)
    F = int(np.argmin(kept)) if not kept.all() else len(js)  # leading run of kept terms
    feats["fraction_bits"] = F
    A = int(np.argmin(exact)) if not exact.all() else len(js)
    if A < min(F + 1, box.fo.fraction_bits):
        feats["acc_fraction_bits"] = A  # narrower than the output format (fp8's e8m13)
    if uses_c and box.K in node and F < len(js):
        feats["monotonic"] = _monotonic(box, node, F)
    return feats


def _c_alignment(box: _Box, tree) -> dict:
    """How far below the products C still counts, and how many bits of the products' sum
    survive next to a larger C (AMD CDNA3's reach and sum_bits; both equal F where C is
    just one more term of the block): 2**e - 2**(e-j) is not 2**e while C = -2**(e-j)
    counts; with C = 2**e, the products 2**(e-24) + 2**(e-j) round up to the next float32
    while 2**(e-j) survives (without it the sum is a tie, rounded to even)."""
    node = _first_fused(tree)
    if box.K not in node:
        return {}
    p, q = sorted(node, key=lambda i: i == box.K)[:2]
    e = box.eM
    js = np.arange(1, e - box.eu + 1)
    rows = np.zeros((2 * len(js), box.K + 1))
    rows[:len(js), p], rows[:len(js), box.K] = 2.0 ** e, -2.0 ** (e - js)
    rows[len(js):, box.K] = 2.0 ** e
    rows[len(js):, p], rows[len(js):, q] = 2.0 ** (e - 24), 2.0 ** (e - js)
    ok = js >= 25
    rows[len(js):][~ok] = 0.0
    d = box.leaves(rows)
    counts = d[:len(js)] != 2.0 ** e
    kept = d[len(js):] > 2.0 ** e
    reach = int(np.argmin(counts)) if not counts.all() else None
    survive = kept[ok]
    bits = int(js[ok][np.argmin(survive)] - 1) if survive.size and not survive.all() else None
    return {"c_reach": reach, "sum_bits": bits}


def _monotonic(box: _Box, node: list, F: int, tries: int = 64) -> bool:
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


def _values(rng, shape, fmt: Format) -> np.ndarray:
    """Random values of fmt: wide exponents, some subnormals, zeros, infinities and NaN."""
    x = rng.standard_normal(shape) * 2.0 ** rng.integers(-12, 13, shape)
    tiny = rng.random(shape[:-1] + (1,)) < 0.2  # rows near the subnormal range
    x = np.where(tiny, x * fmt.smallest_normal * 2.0 ** -12, x)
    pick = rng.random(shape)
    x = np.where(pick < 0.05, 0.0, x)
    sub = fmt.smallest_subnormal * rng.integers(1, 8, shape)
    x = np.where((pick > 0.05) & (pick < 0.1), sub, x)
    x = np.where(pick > 0.997, np.nan, np.where(pick > 0.994, np.inf, x))
    v = to_float64(round_to(x * 2.0 ** rng.integers(-2, 3), fmt))
    v = np.where(np.isfinite(v) | np.isnan(x) | np.isinf(x), v, 0.0)
    width = np.dtype(fmt.storage).itemsize  # a third of the rows: raw bit patterns
    words = rng.integers(0, 2 ** (8 * width), shape, dtype=np.uint64).astype(f"u{width}")
    raw = to_float64(round_to(to_float64(words.view(fmt.storage)), fmt, "toward_zero"))
    return np.where(rng.random(shape[:-1] + (1,)) < 1 / 3, raw, v)


def _cases(rng, box: _Box, rows: int = 48, cols: int = 4) -> tuple:
    """Random a (1, rows, K), b (1, K, cols), c (1, rows, cols) with specials."""
    return (_values(rng, (1, rows, box.K), box.fa), _values(rng, (1, box.K, cols), box.fb),
            _values(rng, (1, rows, cols), box.fo))


def _same(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Elementwise: the same value (any NaN equals any NaN; zeros of either sign equal)."""
    return (x == y) | (np.isnan(x) & np.isnan(y))


def _out(model: BlockFMA, fo: Format):
    """mma's out= for a unit writing fo: "float16" for the fp16-output instructions."""
    return fo if fo == float16 and model.acc != float16 else None


def _run(model: Model, box: _Box, a, b, c) -> np.ndarray:
    """The model's d on exact float64 values."""
    if isinstance(model, BlockFMA):
        return to_float64(mma(round_to(a, box.fa), round_to(b, box.fb), round_to(c, box.fo),
                              model=model, out=_out(model, box.fo)))
    with np.errstate(all="ignore"):
        return to_float64(round_to(matmul_model(a, b, model), box.fo))


def _block_family(K: int, feats: dict, box: _Box):
    """BlockFMA rows of every structure up to K, with the measured alignment bits."""
    F = feats.get("fraction_bits")
    A = feats.get("acc_fraction_bits")
    wide = float32 if box.fo == float16 else box.fo  # fp16 output: float32 blocks, then out
    accs = [wide] if A is None else [Format.custom(wide.exponent_bits, A), wide]
    for n in (2 ** i for i in range(K.bit_length())):
        for width in (n * 2 ** i for i in range(K.bit_length())):
            if width > K and width != n:
                break
            for order, accumulator in product(("consecutive", "pairs"), ("first", "last")):
                if order == "pairs" and width == n:
                    continue
                Fs = [F] if F is not None else range(0, 30)
                for Fb, acc in product(Fs, accs):
                    try:
                        yield BlockFMA(n, min(Fb, 52 - (n + 1).bit_length() - 1), True,
                                       "toward_zero", acc, align="exponents",
                                       k=None if width == n else width, order=order,
                                       accumulator=accumulator)
                    except ValueError:
                        continue


def _aligned_family(K: int, feats: dict, box: _Box):
    """BlockFMA rows that add C to their blocks' exact sums (AMD CDNA3), every structure."""
    F = feats.get("fraction_bits")
    if F is None:
        return
    wide = float32 if box.fo == float16 else box.fo
    for n in (2 ** i for i in range(K.bit_length())):
        for width in (n * 2 ** i for i in range(K.bit_length())):
            if width > K:
                break
            for order in ("consecutive", "alternate") if width > n else ("consecutive",):
                try:
                    yield BlockFMA(n, F, True, "nearest_even", wide, align="exponents",
                                   k=None if width == n else width, order=order,
                                   accumulator="aligned", sum_bits=F)
                except ValueError:
                    continue


def _descend(m: BlockFMA, box: _Box, cases: list, start: dict) -> list:
    """The aligned rule's parameters by coordinate descent: each in turn takes the value
    with the fewest mismatches on the cases, until a pass lowers them no more; [the model]
    if it reaches 0, else []."""
    modes = ["nearest_even"] + [md for md in MODES if md not in ("nearest_even", "stochastic")]
    F, fp8 = m.fraction_bits, max(box.fa.precision, box.fb.precision) <= 4
    choices = {"sum_bits": range(F, F + 13), "reach": (None, *range(F, F + 9)),
               "mode": modes, "align": ("exponents", "value"),
               "zero_exponent": (None, m.acc.min_exponent), "product_overflow": (False, True),
               "input_emin": (None, -14) if fp8 else (None,)}  # the bit widths first
    def cost(v: BlockFMA) -> int:
        return sum(int((~_same(_run(v, box, a, b, c), want)).sum()) for a, b, c, want in cases)
    try:  # from the measured widths, where they fit the rule
        m = replace(m, **{k: v for k, v in start.items() if v is not None})
    except ValueError:
        pass
    best, low = m, cost(m)
    while low:
        start = low
        for name, values in choices.items():
            for value in values:
                try:
                    v = replace(best, **{name: value})
                except ValueError:
                    continue
                n = cost(v)
                if n < low:
                    best, low = v, n
        if low == start:
            break
    return [best] if low == 0 else []


def _pairwise_family(K: int):
    """BlockFMA rows that add each block by halving, then to C (AMD CDNA1/CDNA2)."""
    for n in (2 ** i for i in range(K.bit_length())):
        for flush in (False, True):
            yield BlockFMA(n, include_accumulator=False, mode="nearest_even",
                           block_sum="pairwise", flush=flush)


def _variants(m: Model, box: _Box):
    """m with each choice of the parameters the tree does not fix."""
    modes = ["toward_zero"] + [md for md in MODES if md not in ("toward_zero", "stochastic")]
    if isinstance(m, BlockFMA) and m.block_sum == "pairwise":
        yield from (replace(m, mode=mode) for mode in modes)
        return
    if isinstance(m, BlockFMA):
        fp8 = max(box.fa.precision, box.fb.precision) <= 4
        lates = modes if m.accumulator == "last" else [m.late_mode]
        for mode, align, emin, late in product(modes, ("exponents", "value"),
                                               (None, -14) if fp8 else (None,), lates):
            yield replace(m, mode=mode, align=align, input_emin=emin, late_mode=late)
        return
    accs = list(dict.fromkeys([box.fo, float32, float64]))
    for acc, mode in product(accs, modes):
        if isinstance(m, (Sequential, Tree)):
            yield from (replace(m, acc=acc, mode=mode, fma=f) for f in (True, False))
        else:
            yield replace(m, acc=acc, mode=mode)


def _software_family(K: int):
    yield Sequential(order="forward")
    yield Sequential(order="reverse")
    for block in range(1, K + 1):
        yield Pairwise(block=block)
    for block in (128, 16, 32, 64, 256, 512, 1024):  # NumPy's first
        yield Pairwise(block=block, rule="numpy")


def probe(fn, a_format, b_format=None, *, out="float32", k: int | None = None,
          seed: int = 0) -> ProbeResult:
    """Infer the accumulation model of fn(a, b, c) -> d (see the module docstring): K = k
    products per dot product (default 64), inputs in a_format and b_format (default
    a_format), d in out. Raises ProbeError when the outputs fit no tree."""
    fa = as_format(a_format)
    fb = fa if b_format is None else as_format(b_format)
    fo, K = as_format(out), 64 if k is None else k
    if not isinstance(K, int) or K < 2:
        raise ValueError(f"k must be an int >= 2, got {k!r}")
    for subnormal in (True, False):  # small terms from subnormal inputs spread the most
        box = _Box(fn, fa, fb, fo, K, subnormal)
        zero = np.zeros((1, K + 1))
        zero[0, K] = 2.0 ** box.eu
        uses_c = bool(box.leaves(zero)[0] != 0)
        try:
            tree = _order(box, uses_c)
            break
        except ProbeError:
            if not subnormal:
                raise
    if tree is None:
        structures = [Exact()]
        feats = {"K": K}
    else:
        feats = _features(box, tree, uses_c)
        families = (_block_family(K, feats, box), _aligned_family(K, feats, box),
                    _pairwise_family(K))
        if "fraction_bits" not in feats:  # no fused node: try the pairwise blocks first
            families = families[::-1]
        family = chain(*families) if uses_c else _software_family(K)
        seen, structures = set(), []
        for m in family:
            t = summation_tree(m, K, uses_c)
            if t == tree and repr(m) not in seen:
                seen.add(repr(m))
                structures.append(m)
        if not structures and not uses_c:
            structures = [Tree(tree)]
    rng = np.random.default_rng(seed)
    sets = []
    for rows, cols in ((48, 4), (96, 8), (128, 8), (128, 8), (128, 8)):
        a, b, c = _cases(rng, box, rows, cols)
        c = c if uses_c else np.zeros_like(c)
        sets.append((a, b, c, box.call(a, b, c)))
    miss = 0
    for m in structures:  # the first structure with variants that pass the last set wins
        if isinstance(m, BlockFMA) and m.accumulator == "aligned":
            good, widths = [], _c_alignment(box, tree)
            feats.update(widths)
            for i in (2, 3, 4):  # a set it fails on joins the descent; the next one checks
                good = _descend(good[0] if good else m, box, sets[:i],
                                {"sum_bits": widths.get("sum_bits"),
                                 "reach": widths.get("c_reach")})
                if not good or _same(_run(good[0], box, *sets[i][:3]), sets[i][3]).all():
                    break
            a, b, c, want = sets[i]
        else:
            good = [v for v in _variants(m, box) if _same(_run(v, box, *sets[0][:3]),
                                                           sets[0][3]).all()]
            a, b, c, want = sets[2]
        passed = [v for v in good if _same(_run(v, box, a, b, c), want).all()]
        if passed:
            if isinstance(m, BlockFMA):
                feats["block"], feats["instruction_k"] = m.n, m.k or m.n
            return ProbeResult(tree, uses_c, feats, passed[0], tuple(passed), want.size, 0)
        if good:
            miss = int((~_same(_run(good[0], box, a, b, c), want)).sum())
    return ProbeResult(tree, uses_c, feats, None, (), sets[2][3].size if miss else 0, miss)


def load_vectors(path) -> tuple:
    """Recorded cases from an .npz file (no pickle): a (T, M, K), b (T, K, N), c, d as raw
    bit patterns (unsigned ints) of their formats, and the strings a_format, b_format, out.
    Returns (a, b, c, d) as storage arrays and (a_format, b_format, out) as Formats."""
    with np.load(path, allow_pickle=False) as z:
        missing = {"a", "b", "c", "d", "a_format", "b_format", "out"} - set(z.files)
        if missing:
            raise ValueError(f"{path}: a vectors file needs the arrays {sorted(missing)}")
        fa, fb, fo = (as_format(str(z[k])) for k in ("a_format", "b_format", "out"))
        arrays = [z[x] for x in "abcd"]
    storage = [fa, fb, fo, fo]
    out = []
    for name, x, f in zip("abcd", arrays, storage):
        if x.dtype.kind != "u" or x.dtype.itemsize != np.dtype(f.storage).itemsize:
            raise ValueError(f"{path}: {name} must hold {f.name}'s raw bits as "
                             f"uint{8 * np.dtype(f.storage).itemsize}, got {x.dtype}")
        out.append(x.view(f.storage))
    return tuple(out), (fa, fb, fo)


def save_vectors(path, a, b, c, d, a_format, b_format=None, out="float32") -> None:
    """Write cases as load_vectors reads them (storage arrays in; the file appears whole,
    through a temporary name in the same folder)."""
    fa = as_format(a_format)
    fb, fo = fa if b_format is None else as_format(b_format), as_format(out)
    bits = {}
    for name, x, f in zip("abcd", (a, b, c, d), (fa, fb, fo, fo)):
        x = np.ascontiguousarray(x, dtype=f.storage)
        bits[name] = x.view(f"u{x.itemsize}")
    tmp = f"{path}.part.npz"
    np.savez(tmp, a_format=fa.name, b_format=fb.name, out=fo.name, **bits)
    os.replace(tmp, path)


def compare(models: dict, a, b, c, d, out="float32") -> dict:
    """For recorded cases (storage arrays a (T, M, K), b (T, K, N), c, d), how many
    outputs each BlockFMA model of `models` (name -> model) gets wrong (NaNs count as
    equal); models that cannot take these inputs are left out."""
    fo = as_format(out)
    want = to_float64(d)
    result, done = {}, {}
    for name, m in models.items():
        if not isinstance(m, BlockFMA):
            continue
        if m not in done:  # aliases (H200_FP16 is H100_FP16) run once
            try:
                got = to_float64(mma(a, b, c, model=m, out=_out(m, fo)))
                done[m] = int((~_same(got, want)).sum())
            except (ValueError, TypeError):
                done[m] = None
        if done[m] is not None:
            result[name] = done[m]
    return result
