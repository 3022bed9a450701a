"""Composite functions: documented sequences of primitives, each rounded in turn.

Each step below is one primitive, so each intermediate is rounded to the compute format and
the backward pass is the chain of the primitives' VJPs. Each function enters through the
engine's `composite` rule: its inputs are cast once to compute_format(name, ...) and every
step computes in that format (softplus in float32 under autocast, as torch does).
"""

from __future__ import annotations

import math

from ..autodiff.engine import composite
from .elementwise import erf, exp, log, sigmoid, tanh, where

__all__ = ["gelu", "softplus", "silu"]


@composite("gelu")
def gelu(x, approximate: str = "none"):
    """GELU: x * 0.5 * (1 + erf(x * 2**-0.5)), or the 'tanh' approximation (as PyTorch)."""
    if approximate == "none":
        return x * 0.5 * (1 + erf(x * math.sqrt(0.5)))
    if approximate == "tanh":
        inner = math.sqrt(2 / math.pi) * (x + 0.044715 * (x * x * x))
        return x * 0.5 * (1 + tanh(inner))
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


@composite("softplus")
def softplus(x, beta: float = 1.0, threshold: float = 20.0):
    """log(1 + exp(beta * x)) / beta, and x itself where beta * x > threshold (as PyTorch)."""
    bx = x * beta
    linear = bx > threshold
    safe = where(linear, 0.0, bx)  # keeps exp from overflowing in the branch not taken
    return where(linear, x, log(1 + exp(safe)) / beta)


@composite("silu")
def silu(x):
    """x * sigmoid(x)."""
    return x * sigmoid(x)
