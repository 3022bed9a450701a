"""`track()`: the IEEE events of every rounding in a block of code, by op and module, and the
first op that produced an infinity or NaN, forward or backward."""

from __future__ import annotations

import linecache
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Iterator

import numpy as np

from ..autodiff import observe
from ..nn.module import Module
from ..autodiff.tensor import Tensor
from ..numerics.rounding import to_float64
from .histogram import histogram, merged
from .table import text_table

__all__ = ["Counts", "NonFinite", "Report", "track"]


@dataclass
class Counts:
    """Events of the roundings of one op in one module and phase (each value counts once)."""

    calls: int = 0
    values: int = 0
    inexact: int = 0
    overflow: int = 0    # finite exact value beyond the format's largest
    subnormal: int = 0   # nonzero exact value rounded to a subnormal
    to_zero: int = 0     # nonzero exact value flushed to zero
    invalid: int = 0     # NaN from a non-NaN value, or an infinity the format lacks
    nonfinite: int = 0   # inf or NaN outputs of an op whose inputs were all finite

    def add(self, other: Counts) -> None:
        """Add another record's counts into this one."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(frozen=True)
class NonFinite:
    """The first op whose output held inf or NaN while all its inputs were finite."""

    op: str
    module: str
    phase: str
    format: str
    input_ranges: tuple   # per input: (min, max) of its values
    count: int            # its non-finite outputs
    line: str             # "file:line in function: code" of the user's code that made it

    def __str__(self) -> str:
        ranges = ", ".join(f"[{lo:.4g}, {hi:.4g}]" for lo, hi in self.input_ranges)
        return (f"{self.count} non-finite value(s) first produced by {self.op} ({self.phase}, "
                f"{self.format}) in {self.module or 'no module'}; input ranges {ranges}; "
                f"made at {self.line}")


def _finite_range(x: np.ndarray) -> tuple[float, float]:
    v = to_float64(x)
    return (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)


@dataclass
class Report:
    """What track() saw: counts[(module, op, phase)] and the first non-finite result."""

    names: dict = field(default_factory=dict)      # id(module) -> dotted path
    counts: dict = field(default_factory=dict)
    first_nonfinite: NonFinite | None = None
    histograms: dict | None = None  # with track(histograms=True): {module path: {"value":
                                    # Histogram of its outputs, "grad": of their gradients}}

    def _add_histogram(self, path: str, kind: str, values) -> None:
        h = histogram(values, name=f"{path} {kind}")
        slot = self.histograms.setdefault(path, {})
        slot[kind] = merged(slot[kind], h) if kind in slot else h

    def _see_module(self, module, out) -> None:
        if self.histograms is None or not isinstance(out, Tensor):
            return
        path = self.names.get(id(module), type(module).__name__)
        self._add_histogram(path, "value", out)
        if out.requires_grad:
            out.register_hook(lambda g: self._add_histogram(path, "grad", g))

    def _module(self, origin) -> str:
        if origin is None or not origin.modules:
            return ""
        inner = origin.modules[-1]
        return self.names.get(id(inner), type(inner).__name__)

    def _line(self, origin) -> str:
        if origin is None or not origin.file or origin.file.startswith("<frozen"):
            return "(no user code: mpgrad's own, e.g. the optimizer under the CLI)"
        code = linecache.getline(origin.file, origin.line).strip()
        return f"{origin.file}:{origin.line} in {origin.function}: {code}"

    def _see(self, kind: str, payload) -> None:
        if kind == "module":
            return self._see_module(*payload)
        event = payload
        module = self._module(event.origin)
        row = self.counts.setdefault((module, event.op, event.phase), Counts())
        out = np.asarray(event.output)
        finite_in = all(np.isfinite(to_float64(x)).all() for x in event.inputs)
        bad = int(np.count_nonzero(~np.isfinite(to_float64(out)))) if finite_in else 0
        s = event.stats
        row.add(Counts(1, out.size, s.inexact, s.overflow, s.underflow - s.to_zero,
                       s.to_zero, s.invalid, bad))
        if bad and self.first_nonfinite is None:
            self.first_nonfinite = NonFinite(
                event.op, module, event.phase, event.fmt.name,
                tuple(_finite_range(x) for x in event.inputs), bad, self._line(event.origin))

    def total(self, by: str = "op") -> dict:
        """The counts summed by "op", "module" or "phase"."""
        key = {"module": 0, "op": 1, "phase": 2}[by]
        out: dict = {}
        for k, c in self.counts.items():
            out.setdefault(k[key], Counts()).add(c)
        return out

    def summary(self) -> str:
        """The counts as a text table, one row per (module, op, phase), then the first
        non-finite result."""
        head = ("module", "op", "phase", *(f.name for f in fields(Counts)))
        rows = [(m or "-", op, phase, *(str(getattr(c, f.name)) for f in fields(Counts)))
                for (m, op, phase), c in self.counts.items()]
        text = text_table(head, rows)
        tail = ("no op produced inf or NaN from finite inputs" if self.first_nonfinite is None
                else str(self.first_nonfinite))
        return f"{text}\n{tail}"


@contextmanager
def track(model: Module | None = None, name: str = "model",
          histograms: bool = False) -> Iterator[Report]:
    """Record the IEEE events of every op's rounding in the block, forward and backward, by
    op and module (paths from model.named_modules, under `name`); histograms: also the
    exponent histograms of every module's outputs and of their gradients."""
    report = Report(histograms={} if histograms else None)
    if model is not None:
        report.names = {id(m): (f"{name}.{path}" if path else name)
                        for path, m in model.named_modules()}
    with observe.observing(report._see):
        yield report
