"""Numerical diagnostics for teaching and debugging: the IEEE events of every rounding by op
and module (`track`), exponent histograms against a format's range (`histogram`, `plot`),
and plain-text tables. Off unless used: the engine checks for an observer once per op."""

from .histogram import Histogram, histogram, merged, plot
from .table import text_table
from .track import Counts, NonFinite, Report, track

__all__ = ["Counts", "Histogram", "NonFinite", "Report", "histogram", "merged", "plot",
           "text_table", "track"]
