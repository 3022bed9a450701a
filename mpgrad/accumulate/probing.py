"""mpgrad.probe: infer the accumulation model of a black-box matrix unit or reduction.

The black box is fn(a, b, c) -> d with a (T, M, K), b (T, K, N), c (T, M, N) in their
formats' storage dtypes (as mpgrad.mma takes them) and d in the output format. Three steps:

1. Order, by masking (FPRev; mpgrad.accumulate.masking): the tree in which the leaves
   (the K products and C) are added.
2. Features (Fasi, Higham, Mikaitis & Pranesh 2021, "Numerical behavior of NVIDIA tensor
   cores"): in the first fused node, 2**e - 2**e + 2**(e-j) keeps the last term while j is
   at most the alignment bits F; 2**e + 2**(e-j) is exact while j also fits the
   accumulator's fraction bits; c just below 2**e versus at 2**e with products one grid
   unit of the smaller binade tests monotonicity (Mikaitis 2024, IEEE TC).
3. Parameters: the models of mpgrad's families whose tree is the recovered one and whose
   features agree, run on random inputs (raw bit patterns, subnormals, zeros, infinities,
   NaN) against the black box; those that give the same bits on every case, then on a
   fresh set, remain (for AMD CDNA3's aligned C: coordinate descent over its parameters).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import chain, product

import numpy as np

from ..numerics.files import atomic_write
from ..numerics.formats import Format, as_format, float16, float32, float64
from ..numerics.rounding import MODES, round_to, to_float64
from .blockfma import BlockFMA
from .drivers import matmul_model
from .masking import BlackBox, ProbeError, c_alignment, fused_features, recover_order
from .mma import mma
from .models import Exact, Model, Pairwise, Sequential, Tree
from .order import summation_tree

__all__ = ["probe", "ProbeResult", "ProbeError", "compare", "load_vectors", "save_vectors"]


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


def _cases(rng, box: BlackBox, rows: int = 48, cols: int = 4) -> tuple:
    """Random a (1, rows, K), b (1, K, cols), c (1, rows, cols) with specials."""
    return (_values(rng, (1, rows, box.K), box.fa), _values(rng, (1, box.K, cols), box.fb),
            _values(rng, (1, rows, cols), box.fo))


def _same(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Elementwise: the same value (any NaN equals any NaN; zeros of either sign equal)."""
    return (x == y) | (np.isnan(x) & np.isnan(y))


def _out(model: BlockFMA, fo: Format):
    """mma's out= for a unit writing fo: "float16" for the fp16-output instructions."""
    return fo if fo == float16 and model.acc != float16 else None


def _run(model: Model, box: BlackBox, a, b, c) -> np.ndarray:
    """The model's d on exact float64 values."""
    if isinstance(model, BlockFMA):
        return to_float64(mma(round_to(a, box.fa), round_to(b, box.fb), round_to(c, box.fo),
                              model=model, out=_out(model, box.fo)))
    with np.errstate(all="ignore"):
        return to_float64(round_to(matmul_model(a, b, model), box.fo))


def _modes(first: str) -> list:
    """The deterministic rounding modes, `first` first (ties in a search keep it)."""
    return [first] + [md for md in MODES if md not in (first, "stochastic")]


def _fp8(box: BlackBox) -> bool:
    """Whether an input is an fp8 format (then a float16 input floor is a candidate)."""
    return max(box.fa.precision, box.fb.precision) <= 4


def _block_acc(box: BlackBox) -> Format:
    """The blocks' format: the output's, float32 for the fp16-output instructions."""
    return float32 if box.fo == float16 else box.fo


def _shapes(K: int):
    """(n, k) for every power-of-two block n and instruction width up to K (k None: one
    block per instruction)."""
    for n in (2 ** i for i in range(K.bit_length())):
        for width in (n * 2 ** i for i in range(K.bit_length())):
            if width > K:
                break
            yield n, None if width == n else width


def _block_family(K: int, feats: dict, box: BlackBox):
    """BlockFMA rows of every structure up to K, with the measured alignment bits."""
    F = feats.get("fraction_bits")
    A = feats.get("acc_fraction_bits")
    wide = _block_acc(box)
    accs = [wide] if A is None else [Format.custom(wide.exponent_bits, A), wide]
    for n, k in _shapes(K):
        for order, accumulator in product(("consecutive", "pairs"), ("first", "last")):
            if order == "pairs" and k is None:
                continue
            for Fb, acc in product([F] if F is not None else range(0, 30), accs):
                try:
                    yield BlockFMA(n, min(Fb, 52 - (n + 1).bit_length() - 1), True,
                                   "toward_zero", acc, align="exponents", k=k, order=order,
                                   accumulator=accumulator)
                except ValueError:
                    continue


def _aligned_family(K: int, feats: dict, box: BlackBox):
    """BlockFMA rows that add C to their blocks' exact sums (AMD CDNA3), every structure."""
    F = feats.get("fraction_bits")
    if F is None:
        return
    for n, k in _shapes(K):
        for order in ("consecutive", "alternate") if k else ("consecutive",):
            try:
                yield BlockFMA(n, F, True, "nearest_even", _block_acc(box), align="exponents",
                               k=k, order=order, accumulator="aligned", sum_bits=F)
            except ValueError:
                continue


def _descend(m: BlockFMA, box: BlackBox, cases: list, start: dict) -> list:
    """The aligned rule's parameters by coordinate descent: each in turn takes the value
    with the fewest mismatches on the cases, until a pass lowers them no more; [the model]
    if it reaches 0, else []."""
    F = m.fraction_bits
    choices = {"sum_bits": range(F, F + 13), "reach": (None, *range(F, F + 9)),
               "mode": _modes("nearest_even"), "align": ("exponents", "value"),
               "zero_exponent": (None, m.acc.min_exponent), "product_overflow": (False, True),
               "input_emin": (None, -14) if _fp8(box) else (None,)}  # the bit widths first

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


def _variants(m: Model, box: BlackBox):
    """m with each choice of the parameters the tree does not fix."""
    modes = _modes("toward_zero")
    if isinstance(m, BlockFMA) and m.block_sum == "pairwise":
        yield from (replace(m, mode=mode) for mode in modes)
        return
    if isinstance(m, BlockFMA):
        lates = modes if m.accumulator == "last" else [m.late_mode]
        for mode, align, emin, late in product(modes, ("exponents", "value"),
                                               (None, -14) if _fp8(box) else (None,), lates):
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
        box = BlackBox(fn, fa, fb, fo, K, subnormal)
        zero = np.zeros((1, K + 1))
        zero[0, K] = 2.0 ** box.eu
        uses_c = bool(box.leaves(zero)[0] != 0)
        try:
            tree = recover_order(box, uses_c)
            break
        except ProbeError:
            if not subnormal:
                raise
    if tree is None:
        structures = [Exact()]
        feats = {"K": K}
    else:
        feats = fused_features(box, tree, uses_c)
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
    miss, widths = 0, None
    for m in structures:  # the first structure with variants that pass the last set wins
        if isinstance(m, BlockFMA) and m.accumulator == "aligned":
            if widths is None:  # measured once, for every aligned structure
                widths = c_alignment(box, tree)
                feats.update(widths)
            good = []
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
    """Write cases as load_vectors reads them (storage arrays in) to an .npz file at exactly
    path, atomically (mpgrad.numerics.files.atomic_write)."""
    fa = as_format(a_format)
    fb, fo = fa if b_format is None else as_format(b_format), as_format(out)
    bits = {}
    for name, x, f in zip("abcd", (a, b, c, d), (fa, fb, fo, fo)):
        x = np.ascontiguousarray(x, dtype=f.storage)
        bits[name] = x.view(f"u{x.itemsize}")
    atomic_write(path, lambda file: np.savez(file, a_format=fa.name, b_format=fb.name,
                                             out=fo.name, **bits))


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
