"""The cast shortcuts of round_to give exactly the bits of its integer algorithm.

round_to takes NumPy/ml_dtypes casts for nearest-even rounding where they are exact:
float32 sources cast directly, float64 sources through float32 rounded to odd. The integer
algorithm (rounding._encode, itself checked against MPFR in test_rounding.py) is called
directly here, so comparing the two shows the shortcut exact: over all 2**32 float32 bit
patterns (slow), and over float64 values built to sit on and next to every rounding boundary.
"""

import ml_dtypes
import numpy as np
import pytest

import mpgrad
from mpgrad.numerics import rounding
from mpgrad.numerics.codes import store
from mpgrad.numerics.rounding import _ASTYPE_CORRECTLY_ROUNDED

TARGETS = [mpgrad.as_format(d) for _, d in sorted(_ASTYPE_CORRECTLY_ROUNDED, key=str)]


def integer_path(x: np.ndarray, fmt) -> np.ndarray:
    """round_to's integer algorithm alone (no cast shortcut), in pieces of 2**16."""
    x = mpgrad.to_float64(x.ravel())
    out = np.empty(x.size, fmt.storage)
    for a in range(0, x.size, 1 << 16):
        codes = rounding._encode(x[a:a + (1 << 16)], None, fmt, "nearest_even", None, False,
                                 True, [])
        out[a:a + (1 << 16)] = store(codes, fmt)
    return out


def both_paths(x, fmt):
    return mpgrad.round_to(x, fmt), integer_path(x, fmt)


def same_bits(a, b):
    width = {1: np.uint8, 2: np.uint16}[a.dtype.itemsize]
    return np.array_equal(a.view(width), b.view(width))


@pytest.mark.parametrize("fmt", TARGETS, ids=lambda f: f.name)
def test_float64_shortcut_on_boundaries(fmt):
    """float64 on, just inside and just outside every midpoint of fmt, and random bits."""
    values = mpgrad.to_float64(mpgrad.from_bits(np.arange(2 ** fmt.bits), fmt))
    values = np.unique(values[np.isfinite(values)])
    mids = (values[1:] + values[:-1]) / 2  # exact: midpoints of close floats
    tiny = np.ldexp(np.abs(mids), -52)
    x = np.concatenate([values, mids, mids + tiny, mids - tiny, mids + tiny / 2 ** 20,
                        [fmt.max * 2, -fmt.max * 2, np.inf, -np.inf, np.nan, 1e300, 2.0 ** -1074]])
    rng = np.random.default_rng(7)
    x = np.concatenate([x, -x, rng.integers(0, 2 ** 64, 200_000, dtype=np.uint64).view(np.float64)])
    fast, slow = both_paths(x, fmt)
    assert fast.dtype == slow.dtype == fmt.storage
    assert same_bits(fast, slow)


def test_float64_to_bfloat16_double_rounding_trap():
    """A float32 detour double-rounds 1 + 2**-8 + 2**-30 to 1.0; the shortcut rounds once."""
    x = np.array([1 + 2.0 ** -8 + 2.0 ** -30])
    detour = x.astype(np.float32).astype(ml_dtypes.bfloat16)  # float32 -> bf16 rounds once
    assert detour.astype(np.float64)[0] == 1.0
    assert mpgrad.round_to(x, "bf16").astype(np.float64)[0] == 1.0078125


@pytest.mark.slow
@pytest.mark.parametrize("fmt", TARGETS, ids=lambda f: f.name)
def test_float32_shortcut_all_bit_patterns(fmt):
    """Every float32 bit pattern: the direct cast equals the integer algorithm bit for bit."""
    step = 1 << 24
    for start in range(0, 1 << 32, step):
        x = np.arange(start, start + step, dtype=np.uint32).view(np.float32)
        fast, slow = both_paths(x, fmt)
        if not same_bits(fast, slow):
            bad = np.flatnonzero(fast.view(np.uint8 if fmt.bits <= 8 else np.uint16)
                                 != slow.view(np.uint8 if fmt.bits <= 8 else np.uint16))
            pytest.fail(f"{len(bad)} mismatches, first float32 {x[bad[0]]!r}")
