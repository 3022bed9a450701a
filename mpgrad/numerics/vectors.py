"""Conformance test vectors in Berkeley TestFloat's text format, with IEEE 754 flags.

One line per case: the operands' bit patterns, the result's bit pattern (hex, zero-padded to
the format's width) and the exception flags as two hex digits of SoftFloat's bits: inexact 1,
underflow 2, overflow 4, infinite (divide by zero) 8, invalid 16 (softfloat.h,
`softfloat_flag_*`). A file may start with the header line `# mpgrad vectors OP FORMAT
--mode MODE`, which `check` reads; TestFloat itself takes the function and mode on
testfloat_ver's command line, so headerless files need them given there too.

Each result is the exact result rounded once (round_to), and its flags follow IEEE 754-2019
7.2-7.6, with tininess detected AFTER rounding (7.5; TestFloat's default, testfloat_ver's
TININESS_AFTER_ROUNDING): underflow is raised when the result is inexact and the exact value
rounded to the format's precision with unbounded exponent range is below 2**emin (or a
format without subnormals flushed it to zero). mpgrad has no signalling NaNs, so invalid
comes only from invalid operations (inf - inf, 0 * inf, 0/0, inf/inf, sqrt(x < 0), and
0 * inf + c for any c, as SoftFloat does), and NaN results are written as the format's
canonical NaN (check accepts any NaN). Formats without infinities follow round_to: an
overflow that would give inf gives NaN ("fn", "fnuz") or +-max ("none") with overflow and
inexact raised, and invalid too where the result is NaN; an infinite exact result (x/0, a
conversion of inf) raises invalid there. Cases whose result has no encoding (NaN in a
format without NaN) are left out. An exact zero sum is +0, or -0 rounding "down" (IEEE
6.3), unlike mpgrad's arithmetic, which gives the round-to-nearest zero in every mode.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np

from .cases import ARITY, cases, hex_width, parse_format, parse_op
from .codes import decode, nan_code, to_float64
from .exact import clean_pair, exact_div, exact_sqrt, exact_sum, two_prod, two_sum
from .formats import Format, float32
from .rounding import MODES, encode, round_to

__all__ = ["DETERMINISTIC_MODES", "FLAGS", "compute", "header", "vector_lines", "vectors",
           "read_results", "check_lines", "check", "Mismatch"]

FLAGS = {"inexact": 1, "underflow": 2, "overflow": 4, "infinite": 8, "invalid": 16}
DETERMINISTIC_MODES = tuple(m for m in MODES if m != "stochastic")


def _exact(op: str, x: list[np.ndarray], mode: str) -> tuple[np.ndarray, np.ndarray]:
    """The exact result as a rounding-equivalent pair (hi, lo); IEEE's special values in hi."""
    with np.errstate(all="ignore"):
        if op == "to":
            return x[0], np.zeros_like(x[0])
        if op == "sqrt":
            return clean_pair(*exact_sqrt(x[0]))
        if op == "div":
            return clean_pair(*exact_div(x[0], x[1]))
        if op == "mul":
            return clean_pair(*two_prod(x[0], x[1]))
        if op in ("add", "sub"):
            a, b = x[0], x[1] if op == "add" else -x[1]
            hi, lo = clean_pair(*two_sum(a, b))
            sa, sb = np.signbit(a), np.signbit(b)
        else:  # fma: a*b + c, exact as the sum of three float64 terms where all are finite
            a, b, c = x
            p, e = two_prod(a, b)
            finite = np.isfinite(a) & np.isfinite(b) & np.isfinite(c)
            terms = np.stack([np.where(finite, t, 0.0) for t in (p, e, c)], axis=1)
            hi, lo = exact_sum(terms, axis=1)
            hi, lo = clean_pair(np.where(finite, hi, a * b + c), np.where(finite, lo, 0.0))
            sa, sb = np.signbit(a) ^ np.signbit(b), np.signbit(c)
        # an exact zero sum: the sign both addends share, else +0 (-0 rounding down)
        zero = (hi == 0) & (lo == 0)
        negative = (sa | sb) if mode == "down" else (sa & sb)
        hi = np.where(zero, np.where(negative, -0.0, 0.0), hi)
        return hi, np.where(zero, hi, lo)


def _invalid(op: str, x: list[np.ndarray]) -> np.ndarray:
    """IEEE 754's invalid operations among the operand values (quiet NaNs raise nothing)."""
    a = x[0]
    with np.errstate(all="ignore"):
        if op == "to":
            return np.zeros(a.shape, bool)
        if op == "sqrt":
            return a < 0
        b = x[1]
        inf_ab = np.isinf(a) & np.isinf(b)
        if op == "add":
            return inf_ab & (np.signbit(a) != np.signbit(b))
        if op == "sub":
            return inf_ab & (np.signbit(a) == np.signbit(b))
        if op == "div":
            return inf_ab | (a == 0) & (b == 0)
        zero_inf = (a == 0) & np.isinf(b) | np.isinf(a) & (b == 0)
        if op == "mul":
            return zero_inf
        c = x[2]
        return zero_inf | np.isinf(a * b) & np.isinf(c) & (np.signbit(a * b) != np.signbit(c))


def _codes(values: np.ndarray, fmt: Format) -> np.ndarray:
    """Bit patterns of exact values of fmt (NaN: the canonical NaN, sign clear)."""
    nan = nan_code(fmt) | ((1 << (fmt.bits - 1)) if fmt.nan == "fnuz" else 0)
    nans = np.isnan(values)
    return np.where(nans, nan, encode(np.where(nans, 0.0, values), fmt))


def compute(op: str, fmt: Format | str, operands: tuple[np.ndarray, ...],
            mode: str = "nearest_even") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept, result bit patterns, flags) for operand bit patterns of fmt under mode.

    kept: the mask of cases whose result has an encoding (see the module docstring).
    """
    name, target = parse_op(op)
    fmt = parse_format(fmt)
    out = target or fmt
    if mode not in DETERMINISTIC_MODES:
        raise ValueError(f"vectors need a deterministic mode, one of "
                         f"{', '.join(DETERMINISTIC_MODES)}; got {mode!r}")
    if name != "to" and not float32.contains(fmt):
        raise ValueError(f"{op} vectors support formats inside float32, not {fmt.name}")
    x = [decode(np.asarray(c, dtype=np.int64), fmt) for c in operands]
    hi, lo = _exact(name, x, mode)
    kept = ~np.isnan(hi) | out.has_nan
    hi, lo = hi[kept], lo[kept]
    x = [v[kept] for v in x]
    r = to_float64(round_to((hi, lo), out, mode))
    finite = np.isfinite(hi)
    with np.errstate(all="ignore"):
        s, e = two_sum(np.where(finite, hi, 0.0), lo)
        exact_hi, exact_lo = np.where(lo == 0, hi, s), np.where(lo == 0, 0.0, e)
        wide = Format.custom(11, out.fraction_bits)  # same precision, unbounded exponent
        rw = to_float64(round_to((np.where(finite, hi, 0.0), np.where(finite, lo, 0.0)),
                                 wide, mode))
        inexact = finite & ((exact_hi != r) | (exact_lo != 0))
        overflow = finite & (np.abs(rw) > out.max)
        nonzero = finite & (hi != 0)
        tiny = nonzero & ((np.abs(rw) < out.smallest_normal) | (r == 0))
        underflow = inexact & ~overflow & tiny
        infinite = np.isfinite(x[0]) & (x[0] != 0) & (x[1] == 0) if name == "div" \
            else np.zeros(hi.shape, bool)
        invalid = _invalid(name, x) | np.isinf(hi) & (not out.infinities) | finite & np.isnan(r)
    flags = (inexact * FLAGS["inexact"] | underflow * FLAGS["underflow"]
             | overflow * FLAGS["overflow"] | infinite * FLAGS["infinite"]
             | invalid * FLAGS["invalid"])
    return kept, _codes(r, out), flags.astype(np.int64)


def header(op: str, fmt: Format | str, mode: str) -> str:
    """The header line naming what a vector file is for."""
    return f"# mpgrad vectors {op} {parse_format(fmt).name} --mode {mode}"


def _line(fields: list[int], widths: list[int]) -> str:
    return " ".join(f"{v:0{w}X}" for v, w in zip(fields, widths))


def vector_lines(op: str, fmt: Format | str, mode: str = "nearest_even", *, level: int = 1,
                 count: int = 10_000, exhaustive: bool = False, seed: int = 0, start: int = 0,
                 stop: int | None = None) -> list[str]:
    """One TestFloat line (operands, result, flags) per case number start to stop (see
    cases), leaving out the cases without a result (see the module docstring)."""
    fmt = parse_format(fmt)
    operands = cases(op, fmt, level=level, count=count, exhaustive=exhaustive, seed=seed,
                     start=start, stop=stop)
    kept, result, flags = compute(op, fmt, operands, mode)
    out = parse_op(op)[1] or fmt
    widths = [hex_width(fmt)] * len(operands) + [hex_width(out), 2]
    columns = [c[kept] for c in operands] + [result, flags]
    return [_line(list(row), widths) for row in zip(*(c.tolist() for c in columns))]


def vectors(op: str, fmt: Format | str, mode: str = "nearest_even", *, level: int = 1,
            count: int = 10_000, exhaustive: bool = False, seed: int = 0) -> Iterator[str]:
    """The header, then one TestFloat line per case (operands, result, flags)."""
    lines = vector_lines(op, fmt, mode, level=level, count=count, exhaustive=exhaustive,
                         seed=seed)
    yield header(op, fmt, mode)
    yield from lines


class Mismatch(NamedTuple):
    """A line of a results file that disagrees with the re-computed vector."""

    line_number: int
    line: str
    expected: str


def _is_nan(codes: np.ndarray, fmt: Format) -> np.ndarray:
    return np.isnan(decode(codes, fmt)) if fmt.has_nan else np.zeros(codes.shape, bool)


def read_results(lines: list[str], op: str | None = None, fmt: Format | str | None = None,
                 mode: str | None = None) -> tuple[list[tuple[int, str]], str, Format, str]:
    """(body, op, format, mode) of a results file's lines: the numbered non-blank lines after
    the header, and op, fmt, mode as given, else the header's (mode: nearest_even)."""
    body = [(i + 1, t.strip()) for i, t in enumerate(lines) if t.strip()]
    if body and body[0][1].startswith("#"):
        words = body.pop(0)[1].split()
        if words[:3] != ["#", "mpgrad", "vectors"] or len(words) != 7 or words[5] != "--mode":
            raise ValueError(f"line 1 is not a header '# mpgrad vectors OP FORMAT --mode MODE'"
                             f": {' '.join(words)!r}")
        op, fmt, mode = op or words[3], fmt or words[4], mode or words[6]
    if op is None or fmt is None:
        raise ValueError("no header line: give OP and FORMAT (and --mode)")
    parse_op(op)
    return body, op, parse_format(fmt), mode or "nearest_even"


def _fields(text: str, op: str, n: int, fmt: Format, out: Format) -> list[int]:
    """The hex fields of one results line of op (n operands of fmt, a result of out), or a
    ValueError saying what is wrong with it."""
    try:
        row = [int(w, 16) for w in text.split()]
    except ValueError:
        raise ValueError("a field is not hexadecimal") from None
    if len(row) != n + 2:
        raise ValueError(f"{op} lines need {n + 2} hex fields (operands, result, flags), "
                         f"this one has {len(row)}")
    limits = [1 << fmt.bits] * n + [1 << out.bits, 1 << 8]
    if not all(0 <= v < limit for v, limit in zip(row, limits)):
        raise ValueError(f"a field is wider than its format (operands {fmt.bits} bits, "
                         f"result {out.bits} bits, flags 2 hex digits)")
    return row


def check_lines(body: list[tuple[int, str]], op: str, fmt: Format | str,
                mode: str = "nearest_even") -> tuple[int, list[Mismatch]]:
    """(cases checked, mismatches) of numbered results lines (see read_results). A NaN result
    matches any NaN. The first unusable line (not hex fields of the right widths, or a case
    without a result) is a ValueError naming it."""
    name, target = parse_op(op)
    fmt = parse_format(fmt)
    out = target or fmt
    n = ARITY[name]
    if not body:
        raise ValueError("the file holds no vector lines")
    rows, bad = [], None
    for number, text in body:
        try:
            rows.append(_fields(text, op, n, fmt, out))
        except ValueError as err:
            bad = f"line {number}: {text!r}: {err}"
            break
    if not rows:
        raise ValueError(bad)
    rows = np.array(rows, dtype=np.int64)
    kept, result, flags = compute(op, fmt, tuple(rows[:, :n].T), mode)
    if not kept.all():
        number, text = body[int(np.argmin(kept))]
        raise ValueError(f"line {number}: {text!r}: the case has no {out.name} result (its "
                         "exact result is NaN)")
    if bad is not None:
        raise ValueError(bad)
    got = rows[:, n]
    same = (got == result) | _is_nan(got, out) & _is_nan(result, out)
    wrong = np.flatnonzero(~same | (rows[:, n + 1] != flags))
    widths = [hex_width(fmt)] * n + [hex_width(out), 2]
    return len(body), [Mismatch(body[i][0], body[i][1],
                                _line([*rows[i, :n].tolist(), int(result[i]), int(flags[i])],
                                      widths)) for i in wrong]


def check(lines: list[str], op: str | None = None, fmt: Format | str | None = None,
          mode: str | None = None) -> tuple[int, list[Mismatch]]:
    """(cases checked, mismatches) of a results file's lines; op, fmt, mode default to the
    header's. A NaN result matches any NaN. Raises ValueError for an unreadable file."""
    return check_lines(*read_results(lines, op, fmt, mode))
