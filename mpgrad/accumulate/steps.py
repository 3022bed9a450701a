"""Steps shared by the accumulation models: checking a model's fields, one rounding of an
exact value, one rounded addition, and the types of the callables the models reduce."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..numerics.exact import clean_pair, two_sum
from ..numerics.formats import Format, as_format
from ..numerics.rounding import MODES, round_to, to_float64

__all__ = ["Terms", "Bound", "NO_EXPONENT", "check_common", "rounded", "add_rounded"]

Terms = Callable[[int, int], np.ndarray]  # (k0, k1) -> exact terms k0..k1-1 on a first axis
Bound = Callable[[int, int], np.ndarray]  # (k0, k1) -> an upper bound on sum |t_k| over them
NO_EXPONENT = -(1 << 20)  # the exponent of a zero term: below every other


def check_common(obj) -> None:
    """Normalise acc to a Format and check the rounding mode (stochastic is not a model)."""
    object.__setattr__(obj, "acc", as_format(obj.acc))
    if obj.mode not in MODES or obj.mode == "stochastic":
        raise ValueError(f"mode must be a deterministic rounding mode of {MODES[:-1]}, "
                         f"got {obj.mode!r}")


def rounded(x, fmt: Format, mode: str) -> np.ndarray:
    """x (an exact array or (hi, lo) pair) rounded once to fmt, back as exact float64."""
    return to_float64(round_to(x, fmt, mode))


def add_rounded(s: np.ndarray, t: np.ndarray, fmt: Format, mode: str) -> np.ndarray:
    """round(s + t) with one rounding: the exact sum as a TwoSum pair (specials pass through)."""
    return rounded(clean_pair(*two_sum(s, t)), fmt, mode)
