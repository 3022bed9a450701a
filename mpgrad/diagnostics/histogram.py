"""Exponent histograms: how many values fall in each binade [2**e, 2**(e+1)), against a
format's subnormal, normal and overflow limits, and the figure of Micikevicius et al. 2018
("Mixed precision training", ICLR, fig. 3): gradients in log2 with float16's range shaded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..autodiff.tensor import Tensor
from ..nn.module import Module
from ..numerics.formats import Format, as_format, float16
from ..numerics.rounding import to_float64

__all__ = ["Histogram", "histogram", "merged", "plot"]


@dataclass(frozen=True)
class Histogram:
    """counts[i]: values v with floor(log2|v|) == lowest + i; zeros and non-finite apart."""

    name: str
    lowest: int
    counts: np.ndarray
    zeros: int
    nonfinite: int

    @property
    def exponents(self) -> np.ndarray:
        """The binade of each count: counts[i] is in [2**exponents[i], 2**(exponents[i]+1))."""
        return np.arange(self.lowest, self.lowest + len(self.counts))

    @property
    def total(self) -> int:
        """Every value counted, zeros and non-finite included."""
        return int(self.counts.sum()) + self.zeros + self.nonfinite

    def fraction_below(self, threshold: float) -> float:
        """The fraction of nonzero finite values of magnitude below threshold (a power of
        two, e.g. a format's smallest subnormal or smallest normal)."""
        e = np.log2(threshold)
        if e != np.round(e):
            raise ValueError(f"the threshold {threshold} is not a power of two")
        n = int(self.counts.sum())
        return float(self.counts[self.exponents < e].sum()) / n if n else 0.0

    def scaled(self, scale: float) -> Histogram:
        """The histogram of the values times scale (a power of two): shifted binades."""
        e = np.log2(scale)
        if e != np.round(e):
            raise ValueError(f"the scale {scale} is not a power of two")
        return Histogram(f"{self.name} x {scale:g}", self.lowest + int(e), self.counts,
                         self.zeros, self.nonfinite)


def merged(a: Histogram, b: Histogram) -> Histogram:
    """The histogram of a's values and b's together (under a's name)."""
    if not b.counts.size:
        return Histogram(a.name, a.lowest, a.counts, a.zeros + b.zeros, a.nonfinite + b.nonfinite)
    if not a.counts.size:
        return Histogram(a.name, b.lowest, b.counts, a.zeros + b.zeros, a.nonfinite + b.nonfinite)
    lowest = min(a.lowest, b.lowest)
    counts = np.zeros(max(a.lowest + len(a.counts), b.lowest + len(b.counts)) - lowest, np.int64)
    for h in (a, b):
        counts[h.lowest - lowest:h.lowest - lowest + len(h.counts)] += h.counts
    return Histogram(a.name, lowest, counts, a.zeros + b.zeros, a.nonfinite + b.nonfinite)


def _of_values(name: str, values) -> Histogram:
    v = to_float64(values.data if isinstance(values, Tensor) else np.asarray(values)).ravel()
    finite = np.isfinite(v)
    nonzero = v[finite & (v != 0)]
    zeros = int(np.count_nonzero(finite & (v == 0)))
    if not nonzero.size:
        return Histogram(name, 0, np.zeros(0, dtype=np.int64), zeros, int((~finite).sum()))
    e = np.frexp(nonzero)[1] - 1  # floor(log2|v|), exact for every float64 (subnormals too)
    lowest = int(e.min())
    counts = np.bincount(e - lowest).astype(np.int64)
    return Histogram(name, lowest, counts, zeros, int((~finite).sum()))


def histogram(x: Tensor | Module | np.ndarray, kind: str = "value",
              name: str = "") -> Histogram | dict[str, Histogram]:
    """The exponent histogram of a tensor's values or .grad (kind "value" or "grad"), or of
    every parameter of a module ({parameter name: Histogram}; parameters without a .grad
    are left out for kind "grad")."""
    if kind not in ("value", "grad"):
        raise ValueError(f"kind must be 'value' or 'grad', got {kind!r}")
    if isinstance(x, Module):
        return {n: histogram(p, kind, n) for n, p in x.named_parameters()
                if kind == "value" or p.grad is not None}
    if kind == "grad":
        if not isinstance(x, Tensor) or x.grad is None:
            raise ValueError("kind='grad' needs a Tensor with a .grad (run backward first)")
        x = x.grad
    return _of_values(name, x)


def plot(histograms, fmt: Format | str = float16, ax=None, title: str | None = None):
    """Bars of the fraction of nonzero values per binade (log2 |v| on x), one series per
    histogram, with fmt's subnormal range shaded light, its normal range darker and a line
    at its smallest subnormal; returns the matplotlib Axes (needs matplotlib)."""
    import matplotlib.pyplot as plt
    fmt = as_format(fmt)
    hists = [histograms] if isinstance(histograms, Histogram) else list(histograms)
    if ax is None:
        ax = plt.subplots(figsize=(8, 3.2))[1]
    sub = fmt.min_exponent - fmt.fraction_bits
    ax.axvspan(sub, fmt.min_exponent, color="tab:orange", alpha=0.15,
               label=f"{fmt.name} subnormal")
    ax.axvspan(fmt.min_exponent, fmt.max_exponent + 1, color="tab:green", alpha=0.15,
               label=f"{fmt.name} normal")
    ax.axvline(sub, color="tab:red", lw=1, label=f"smallest subnormal 2^{sub}")
    for i, h in enumerate(hists):
        n = max(int(h.counts.sum()), 1)
        ax.bar(h.exponents + 0.5 + 0.8 * (i / len(hists) - 0.4), h.counts / n,
               width=0.8 / len(hists), label=h.name or None, alpha=0.9)
    ax.set_yscale("log")
    ax.set_xlabel("log2 |value| (binade)")
    ax.set_ylabel("fraction of nonzero values")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    return ax
