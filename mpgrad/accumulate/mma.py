"""The matrix-unit instruction D = A @ B + C, as a block-FMA model computes it.

`mma` takes the operands in their formats' storage dtypes (float16, bfloat16, the float8
formats; float32 holding tf32 values), walks K one block of model.n products at a time
(chained: each block's result is the next block's C, rounded to the output format), and
returns D in the output format's storage dtype. See docs/hardware.md.
"""

from __future__ import annotations

import numpy as np

from ..numerics.formats import Format, as_format, float16, float32, format_of_dtype, tf32
from ..numerics.rounding import round_to, to_float64
from .blockfma import BlockFMA
from .drivers import product_exponents, products

__all__ = ["mma"]


def _storage(x) -> tuple[np.ndarray, Format | None]:
    """x's storage array and its format: an mpgrad Tensor's own, else the dtype's."""
    if isinstance(getattr(x, "dtype", None), Format):  # an mpgrad Tensor
        return np.asarray(x.data), x.dtype
    x = np.asarray(x)
    return x, format_of_dtype(x.dtype)


def _operand(x, name: str) -> tuple[np.ndarray, Format]:
    """x's exact values and format (float32 storage: tf32, as the unit reads it)."""
    x, fmt = _storage(x)
    if fmt is None or fmt.precision > float32.precision:
        raise TypeError(f"mma: {name} must be an array in the storage dtype of its format "
                        f"(float16, bfloat16, float8, or float32 holding tf32 values), "
                        f"got dtype {x.dtype}")
    if fmt == float32:
        fmt = tf32  # the unit reads float32 registers as tf32 operands
        same = round_to(x, tf32).view(np.uint32) == x.view(np.uint32)
        if not np.all(same | np.isnan(x)):  # a NaN is a NaN, whatever its payload
            raise ValueError(f"mma: float32 operand {name} holds values that are not tf32; "
                             "round them first, e.g. mpgrad.round_to(x, 'tf32')")
    return to_float64(x), fmt


def mma(a, b, c=None, *, model: BlockFMA, out: Format | str | None = None) -> np.ndarray:
    """D = A @ B + C as the matrix unit of `model` computes it.

    a (..., M, K) and b (..., K, N): arrays in their formats' storage dtypes, or mpgrad
    Tensors (the formats may differ, e.g. e4m3 x e5m2); batch dimensions broadcast. c
    (..., M, N): values of the output register (float32, or float16 for out="float16"), or
    None for zeros. out: the output format, default the model's accumulator (float32);
    "float16" rounds each block to nearest even in float16, as the fp16-output
    instructions do. Returns out's storage array; a NaN
    result is the units' canonical NaN, 0x7FFFFFFF (float32) or 0x7FFF (float16). A model
    with flush reads inputs and C below their formats' smallest normals as +0 (CDNA2).
    """
    if not isinstance(model, BlockFMA) or not (model.include_accumulator
                                               or model.block_sum == "pairwise"):
        raise ValueError(f"mma needs a BlockFMA model that adds C inside the block or after "
                         f"a pairwise block (a hardware preset), got {model!r}; use "
                         f"mpgrad.matmul for the others")
    (av, fa), (bv, fb) = _operand(a, "a"), _operand(b, "b")
    if av.ndim < 2 or bv.ndim < 2 or av.shape[-1] != bv.shape[-2]:
        raise ValueError(f"mma needs a (..., M, K) and b (..., K, N), got {av.shape}, "
                         f"{bv.shape}")
    fmt = model.acc if out is None else as_format(out)
    mode = model.mode if out is None or fmt == model.acc else "nearest_even"
    if fmt not in (model.acc, float16):
        raise ValueError(f"mma: out must be the model's {model.acc.name} or float16, "
                         f"got {fmt.name}")
    batch = np.broadcast_shapes(av.shape[:-2], bv.shape[:-2])
    M, K, N = av.shape[-2], av.shape[-1], bv.shape[-1]
    shape = batch + (M, N)
    cv = np.zeros(shape) if c is None else to_float64(np.broadcast_to(_storage(c)[0], shape))
    register = format_of_dtype(fmt.storage)  # C and D live in float32 or float16 registers
    if c is not None and not np.array_equal(to_float64(round_to(cv, register)), cv,
                                            equal_nan=True):
        raise ValueError(f"mma: c must hold {register.name} values (the output register)")
    if model.flush:
        av, bv, cv = (np.where(np.abs(x) < f.smallest_normal, 0.0, x)
                      for x, f in ((av, fa), (bv, fb), (cv, register)))
    av = np.broadcast_to(av, batch + (M, K))
    bv = np.broadcast_to(bv, batch + (K, N))
    d = np.empty(shape)
    for i in np.ndindex(batch):
        at, bt = np.ascontiguousarray(av[i].T), bv[i]
        d[i] = model.reduce(K, lambda k0, k1: products(at, bt, k0, k1), (M, N),
                            product_exponents(at, bt, (fa, fb), model),
                            c=cv[i], out=fmt, mode=mode)
    stored = round_to(d, fmt)  # d holds fmt values: this only stores them
    nan = np.isnan(d)
    if nan.any():  # the units' canonical NaN: all fraction bits set, sign clear
        words = stored.view(np.uint32 if stored.itemsize == 4 else np.uint16).copy()
        words[nan] = 0x7FFFFFFF if stored.itemsize == 4 else 0x7FFF
        stored = words.view(stored.dtype)
    return stored
