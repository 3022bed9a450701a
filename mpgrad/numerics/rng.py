"""The global random generator behind every draw mpgrad makes (seed it with manual_seed)."""

from __future__ import annotations

import numpy as np

__all__ = ["manual_seed", "generator"]

_global = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed mpgrad's global generator so every later random draw is reproducible."""
    global _global
    _global = np.random.default_rng(seed)
    return _global


def generator(rng: np.random.Generator | int | None = None) -> np.random.Generator:
    """The generator to draw from: rng itself, a new one seeded with rng, or the global one."""
    if rng is None:
        return _global
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, got {type(rng).__name__}")
