"""Plain-text tables for the command line: one renderer for every table mpgrad prints."""

from __future__ import annotations

from typing import Sequence

__all__ = ["text_table"]


def text_table(head: Sequence[str], rows: Sequence[Sequence[str]], right: bool = False) -> str:
    """head, a rule of dashes and the rows, columns two spaces apart; the first column is
    left-aligned, the others right-aligned when right (numbers), else left-aligned."""
    rows = [tuple(head)] + [tuple(r) for r in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if right and i else c.ljust(w)
                       for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
