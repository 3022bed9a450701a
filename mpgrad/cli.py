"""Command line: `python -m mpgrad formats` (or `mpgrad formats`)."""

from __future__ import annotations

import argparse
import sys

from .bits import describe
from .formats import FORMATS

__all__ = ["main", "formats_table"]


def formats_table() -> str:
    """The built-in formats as a text table."""
    head = ("name", "e", "m", "bias", "max", "min normal", "min subnormal", "eps",
            "inf", "nan", "-0", "storage")
    rows = [head] + [
        (f.name, str(f.exponent_bits), str(f.fraction_bits), str(f.bias), f"{f.max:.6g}",
         f"{f.smallest_normal:.6g}", f"{f.smallest_subnormal:.6g}", f"{f.eps:.6g}",
         "yes" if f.infinities else "no", f.nan, "yes" if f.signed_zero else "no",
         str(f.storage))
        for f in FORMATS.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the mpgrad command."""
    parser = argparse.ArgumentParser(prog="mpgrad", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("formats", help="print the table of built-in number formats")
    d = sub.add_parser("describe", help="show how a value is stored in a format")
    d.add_argument("value", type=float)
    d.add_argument("format", nargs="*", default=list(FORMATS), help="formats (default: all)")
    d.add_argument("--mode", default="nearest_even")
    args = parser.parse_args(argv)
    if args.command == "formats":
        print(formats_table())
    else:
        try:
            print("\n\n".join(str(describe(args.value, f, args.mode)) for f in args.format))
        except ValueError as err:
            parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
