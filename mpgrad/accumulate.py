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

from .exact import exact_sum, two_sum
from .exact_matmul import exact_matmul
from .formats import Format, as_format, float32
from .rounding import MODES, round_to, to_float64

__all__ = ["Exact", "Sequential", "Pairwise", "Chunked", "BlockFMA", "Model", "hardware",
           "HARDWARE", "dot", "matmul_model", "reduce_sum", "default_model", "check_inputs"]

Terms = Callable[[int, int], np.ndarray]  # (k0, k1) -> exact terms k0..k1-1 on a first axis
_LIMIT = 2.0 ** 500  # finite nonzero inputs must lie in [2**-500, 2**500]: nothing over/underflows


def _check_common(obj) -> None:
    """Normalise acc to a Format and check the rounding mode (stochastic is not a model)."""
    object.__setattr__(obj, "acc", as_format(obj.acc))
    if obj.rounding not in MODES or obj.rounding == "stochastic":
        raise ValueError(f"rounding must be a deterministic mode of {MODES[:-1]}, "
                         f"got {obj.rounding!r}")


def _round(x, fmt: Format, mode: str) -> np.ndarray:
    """x (an exact array or (hi, lo) pair) rounded once to fmt, back as exact float64."""
    return to_float64(round_to(x, fmt, mode))


def _add(s: np.ndarray, t: np.ndarray, fmt: Format, mode: str) -> np.ndarray:
    """round(s + t) with one rounding: the exact sum as a TwoSum pair (specials pass through)."""
    hi, lo = two_sum(s, t)
    with np.errstate(invalid="ignore"):
        lo = np.where(np.isfinite(hi), lo, 0.0)
    return _round((hi, lo), fmt, mode)


@dataclass(frozen=True)
class Exact:
    """The exact sum of the exact terms, rounded once to acc."""

    acc: Format = float32
    rounding: str = "nearest_even"

    def __post_init__(self) -> None:
        _check_common(self)

    def reduce(self, K: int, terms: Terms, shape: tuple) -> np.ndarray:
        """Reduce K terms of the given shape."""
        return (_round(exact_sum(terms(0, K), axis=0), self.acc, self.rounding) if K
                else np.zeros(shape))


@dataclass(frozen=True)
class Sequential:
    """One term at a time: s_0 = 0, s_k = round(s_{k-1} + t_k) (fma) or
    round(s_{k-1} + round(t_k)), over k = 0 .. K-1 (order="forward") or K-1 .. 0 ("reverse")."""

    acc: Format = float32
    fma: bool = True
    rounding: str = "nearest_even"
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
                t = _round(t, self.acc, self.rounding)
            s = _add(s, t, self.acc, self.rounding)
        return s


@dataclass(frozen=True)
class Pairwise:
    """Pairwise summation of the terms rounded to acc (Higham §4.2).

    Split rule: P(k0, n) = sequential sum (round after each addition, starting from the
    first term) when n <= block, else round(P(k0, n//2) + P(k0 + n//2, n - n//2)).
    (NumPy's rule differs in detail: 8 strided partial sums inside blocks of 128.)
    """

    acc: Format = float32
    block: int = 8
    rounding: str = "nearest_even"

    def __post_init__(self) -> None:
        _check_common(self)
        if not isinstance(self.block, int) or self.block < 1:
            raise ValueError(f"block must be an int >= 1, got {self.block!r}")

    def _part(self, k0: int, n: int, terms: Terms) -> np.ndarray:
        """The pairwise sum of terms k0 .. k0+n-1 (n >= 1)."""
        if n <= self.block:
            s = _round(terms(k0, k0 + 1)[0], self.acc, self.rounding)
            for k in range(k0 + 1, k0 + n):
                s = _add(s, _round(terms(k, k + 1)[0], self.acc, self.rounding),
                         self.acc, self.rounding)
            return s
        h = n // 2
        return _add(self._part(k0, h, terms), self._part(k0 + h, n - h, terms),
                    self.acc, self.rounding)

    def reduce(self, K: int, terms: Terms, shape: tuple) -> np.ndarray:
        """Reduce K terms by recursive halving (an empty sum is +0)."""
        return np.zeros(shape) if K == 0 else self._part(0, K, terms)


@dataclass(frozen=True)
class BlockFMA:
    """Block FMA of matrix units (Fasi et al. 2021; Khattak & Mikaitis, arXiv 2512.07004).

    For each block of n consecutive terms (the last may be shorter), plus the running
    accumulator c when include_accumulator: E = max floor(log2|x|) over the block's finite
    nonzero terms; each term is truncated toward zero to a multiple of 2**(E - F),
    F = fraction_bits; the truncated terms are added exactly and the sum rounded once to
    acc with `rounding`, giving the next c (c starts at +0). Without include_accumulator
    the block sum is rounded to acc and then c = round(c + that), one more rounding.
    Zero terms take no part in E; a block of zeros (and c = 0) sums to +0. A NaN term,
    or infinities of both signs, make the block NaN; otherwise an infinity passes through;
    specials are then converted to acc as round_to does (e.g. inf -> NaN in e4m3fn).
    """

    n: int = 16
    fraction_bits: int = 25
    include_accumulator: bool = True
    rounding: str = "toward_zero"
    acc: Format = float32

    def __post_init__(self) -> None:
        _check_common(self)
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an int >= 1, got {self.n!r}")
        width = int(self.n + 1).bit_length()  # bits the exact sum of n + 1 terms can add
        if not isinstance(self.fraction_bits, int) or not 0 <= self.fraction_bits <= 52 - width:
            raise ValueError(f"fraction_bits must be an int in [0, {52 - width}] for n="
                             f"{self.n} (the aligned sum must be exact in float64), "
                             f"got {self.fraction_bits!r}")

    def _block(self, t: np.ndarray, c: np.ndarray | None) -> np.ndarray:
        """Align, truncate, add exactly and round a stack t of terms (block axis first),
        with the accumulator c when given.

        E comes from the largest magnitude (its floor(log2)); a NaN or infinity makes E so
        large that every finite term truncates to 0, leaving IEEE's sum of the specials.
        """
        with np.errstate(invalid="ignore", over="ignore", under="ignore"):
            m = np.maximum(t.max(axis=0), -t.min(axis=0))
            if c is not None:
                m = np.maximum(m, np.abs(c))
            finite = np.isfinite(m)
            E = np.where(finite, np.frexp(np.where(finite, m, 0.0))[1] - 1, 1100)
            shift = self.fraction_bits - E  # terms are truncated to multiples of 2**-shift
            if -1022 <= shift.min() and shift.max() <= 1023:
                ints = np.multiply(t, np.ldexp(1.0, shift), out=np.empty_like(t))
            else:
                ints = np.ldexp(t, shift)
            total = np.trunc(ints, out=ints).sum(axis=0)  # exact: integers below 2**(F+1)
            if c is not None:
                total += np.trunc(np.ldexp(c, shift))
            s = np.ldexp(total, -shift) + 0.0  # exact; a zero sum is +0
        return _round(s, self.acc, self.rounding)

    def reduce(self, K: int, terms: Terms, shape: tuple) -> np.ndarray:
        """Reduce K terms block by block with an (shape) accumulator."""
        c = np.zeros(shape)
        for k0 in range(0, K, self.n):
            t = terms(k0, min(k0 + self.n, K))
            if self.include_accumulator:
                c = self._block(t, c)
            else:
                c = _add(c, self._block(t, None), self.acc, self.rounding)
        return c


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
            if not isinstance(getattr(self, name), _MODELS):
                raise ValueError(f"{name} must be an accumulation model, "
                                 f"got {getattr(self, name)!r}")

    @property
    def acc(self) -> Format:
        """The format of the result: the outer model's accumulator."""
        return self.outer.acc

    def reduce(self, K: int, terms: Terms, shape: tuple) -> np.ndarray:
        """Reduce each chunk with inner, then the stacked chunk results with outer."""
        parts = [self.inner.reduce(min(self.chunk, K - k0),
                                   lambda a, b, k0=k0: terms(k0 + a, k0 + b), shape)
                 for k0 in range(0, K, self.chunk)]
        stack = np.stack(parts) if parts else np.zeros((0,) + shape)
        return self.outer.reduce(len(parts), lambda a, b: stack[a:b], shape)


_MODELS = (Exact, Sequential, Pairwise, BlockFMA, Chunked)
Model = Union[_MODELS]


def default_model(compute: Format) -> Exact:
    """The model used when none is given: exact, rounded once to float32 (float64 when
    computing in a format float32 does not hold), then to the compute format."""
    from .policy import promote
    return Exact(promote(float32, compute))


def _bits_at_most(v: np.ndarray, bits: int) -> bool:
    """Whether every finite value of v has at most `bits` significant bits."""
    c = v * (2.0 ** (53 - bits) + 1)  # Veltkamp: the high part keeps `bits` bits
    return not np.any(v - (c - (c - v)) != 0)


def check_inputs(x: np.ndarray, bits: int | None = None) -> None:
    """Refuse finite nonzero values outside [2**-500, 2**500] (or with more than bits bits)."""
    fin = np.isfinite(x) & (x != 0)
    v = np.abs(x[fin])
    if v.size and (v.max() > _LIMIT or v.min() < 1 / _LIMIT):
        raise ValueError("accumulation models need finite nonzero inputs in [2**-500, 2**500]")
    if bits is not None and v.size and not _bits_at_most(v, bits):
        raise ValueError(f"matmul inputs must have at most {bits} significant bits (the "
                         "values of float32 or a narrower format), so products are exact")


def _float32_products(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether every product a_ik * b_kj is a normal float32 or zero, exactly (finite inputs
    of at most 12 significant bits, magnitudes in range): then float32 arithmetic is exact
    for the products and correctly rounded for each sum."""
    va, vb = (np.abs(x[x != 0]) for x in (a, b))
    if not (va.size and vb.size):
        return False
    return bool(np.all(np.isfinite(va)) and np.all(np.isfinite(vb))
                and va.max() * vb.max() < 2.0 ** 127 and va.min() * vb.min() >= 2.0 ** -126
                and _bits_at_most(va, 12) and _bits_at_most(vb, 12))


def _sequential_float32(a: np.ndarray, b: np.ndarray, model: Sequential) -> np.ndarray:
    """Sequential(float32) by NumPy float32 arithmetic (IEEE, round to nearest even): each
    product is exact in float32, each addition one correct rounding, in the model's order."""
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    s = np.zeros((a.shape[0], b.shape[1]), dtype=np.float32)
    t = np.empty_like(s)
    with np.errstate(over="ignore", invalid="ignore"):
        for k in model.indices(a.shape[1]):
            np.multiply(a32[:, k, None], b32[None, k, :], out=t)
            np.add(s, t, out=s)
    return s.astype(np.float64)


def _check_model(model) -> None:
    if not isinstance(model, _MODELS):
        raise ValueError(f"expected an accumulation model (Exact, Sequential, Pairwise, "
                         f"BlockFMA, Chunked), got {model!r}")


_TILE = 1 << 14  # outputs reduced at a time by a block model (its term stack stays small)


def _matmul2(a: np.ndarray, b: np.ndarray, model: Model) -> np.ndarray:
    """One (M, K) @ (K, N) product under a model other than Exact."""
    if (isinstance(model, Sequential) and model.acc == float32
            and model.rounding == "nearest_even" and _float32_products(a, b)):
        return _sequential_float32(a, b, model)
    rows = a.shape[0] if isinstance(model, Sequential) else max(1, _TILE // max(b.shape[1], 1))
    out = np.empty((a.shape[0], b.shape[1]))
    for i in range(0, a.shape[0], rows):
        at = np.ascontiguousarray(a[i:i + rows].T)

        def terms(k0: int, k1: int) -> np.ndarray:
            with np.errstate(invalid="ignore"):  # inf * 0 is NaN, as IEEE says
                return at[k0:k1, :, None] * b[k0:k1, None, :]  # exact products, (k, rows, N)

        out[i:i + rows] = model.reduce(a.shape[1], terms, (at.shape[1], b.shape[1]))
    return out


def matmul_model(a, b, model: Model, storage: bool = False,
                 max_bits: int | None = None) -> np.ndarray:
    """a (..., M, K) @ b (..., K, N) of exact values under the model, as acc-format float64
    (storage=True: Exact's result in acc's storage dtype, saving a conversion; max_bits:
    see exact_matmul).

    Exact takes the error-free BLAS path (mpgrad.exact_matmul) for any float64 inputs;
    the other models need inputs of at most 26 significant bits (exact float64 products).
    """
    _check_model(model)
    a, b = to_float64(a), to_float64(b)
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul_model needs (..., M, K) and (..., K, N) arrays, got "
                         f"{a.shape}, {b.shape}")
    if isinstance(model, Exact):
        stored = round_to(exact_matmul(a, b, max_bits), model.acc, model.rounding)
        return stored if storage else to_float64(stored)
    check_inputs(a, 26), check_inputs(b, 26)
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a, b = np.broadcast_to(a, batch + a.shape[-2:]), np.broadcast_to(b, batch + b.shape[-2:])
    out = np.empty(batch + (a.shape[-2], b.shape[-1]))
    for i in np.ndindex(batch):
        out[i] = _matmul2(a[i], b[i], model)
    return out


def dot(a, b, model: Model) -> np.ndarray:
    """Same as matmul_model (1-D operands are treated as a row and a column)."""
    a, b = to_float64(a), to_float64(b)
    out = matmul_model(a.reshape(1, -1) if a.ndim == 1 else a,
                       b.reshape(-1, 1) if b.ndim == 1 else b, model)
    out = out[0] if a.ndim == 1 else out
    return out[..., 0] if b.ndim == 1 else out


def reduce_sum(x, axis: int, model: Model) -> np.ndarray:
    """The sum of exact values x along one axis under the model, as acc-format float64."""
    _check_model(model)
    x = to_float64(x)
    if not isinstance(model, Exact):  # exact_sum takes any float64 values
        check_inputs(x)
    xs = np.moveaxis(x, axis, 0)
    return model.reduce(xs.shape[0], lambda k0, k1: xs[k0:k1], xs.shape[1:])


class hardware:
    """Block-FMA presets from the facts table (Khattak & Mikaitis 2025; DeepSeek-V3 §3.3).

    Models from papers, not guarantees. fp16/bf16 and FP8 use the table's (n, F); TF32
    uses the table's n with F = 24 (the table gives no F for TF32). The accumulator is
    fp32, included in each block and rounded toward zero.
    """

    V100_FP16 = BlockFMA(4, 23)
    A100_FP16, A100_TF32 = BlockFMA(8, 24), BlockFMA(4, 24)
    ADA_FP16, ADA_TF32, ADA_FP8 = BlockFMA(8, 24), BlockFMA(4, 24), BlockFMA(16, 13)
    H100_FP16, H100_TF32, H100_FP8 = BlockFMA(16, 25), BlockFMA(8, 24), BlockFMA(32, 13)
    B200_FP16, B200_TF32, B200_FP8 = BlockFMA(16, 25), BlockFMA(8, 24), BlockFMA(32, 25)
    H200_FP16, H200_TF32, H200_FP8 = H100_FP16, H100_TF32, H100_FP8  # same chip model
    ADA_FP8_PROMOTED = Chunked(128, ADA_FP8, Sequential(float32, fma=False))
    H100_FP8_PROMOTED = Chunked(128, H100_FP8, Sequential(float32, fma=False))
    H200_FP8_PROMOTED = H100_FP8_PROMOTED
    B200_FP8_PROMOTED = Chunked(128, B200_FP8, Sequential(float32, fma=False))
    # bf16 uses the same block FMA as fp16 in these models (V100 has no bf16)
    A100_BF16, ADA_BF16 = A100_FP16, ADA_FP16
    H100_BF16, H200_BF16, B200_BF16 = H100_FP16, H200_FP16, B200_FP16


HARDWARE: dict[str, Model] = {k: v for k, v in vars(hardware).items() if k.isupper()}
