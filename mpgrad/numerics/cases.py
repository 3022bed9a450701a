"""Test cases as Berkeley TestFloat generates them, for every format: every operand combination
(exhaustive), level 1 (special operands crossed, then random bit patterns) and level 2
(TestFloat 3e's tables of exponents and significand patterns, built from the format's widths;
ucb-bar/berkeley-testfloat-3, source/genCases_f16.c and genCases_f32.c). Case i is the same
whatever range is asked for: random cases come in blocks, each from its own seed."""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

from .codes import nan_code
from .formats import Format, as_format

__all__ = ["ARITY", "EXHAUSTIVE_LIMIT", "LEVELS", "BLOCK", "parse_format", "parse_op",
           "hex_width", "Tables", "level2_tables", "case_count", "cases"]

ARITY = {"add": 2, "sub": 2, "mul": 2, "div": 2, "sqrt": 1, "fma": 3, "to": 1}
EXHAUSTIVE_LIMIT = 1 << 24  # most cases --exhaustive writes (all triples of an 8-bit format)
LEVELS = (1, 2)
BLOCK = 1 << 12  # random cases come in blocks of this many, each block from its own seed


def parse_format(text: str | Format) -> Format:
    """A format by name or alias, or a custom IEEE-style one written eXmY (e.g. e5m7)."""
    match = re.fullmatch(r"e(\d+)m(\d+)", text.strip().lower()) if isinstance(text, str) \
        else None
    try:
        return as_format(text)
    except ValueError:
        if match is None:
            raise
        return Format.custom(int(match[1]), int(match[2]))


def parse_op(op: str) -> tuple[str, Format | None]:
    """("to", target) for 'to:FORMAT', else (op, None) for an arithmetic op name."""
    if op.startswith("to:"):
        return "to", parse_format(op[3:])
    if op not in ARITY or op == "to":
        raise ValueError(f"unknown op {op!r}; valid ops: add, sub, mul, div, sqrt, fma, "
                         "to:FORMAT")
    return op, None


def hex_width(fmt: Format) -> int:
    return -(-fmt.bits // 4)


def _specials(fmt: Format) -> np.ndarray:
    """Bit patterns of TestFloat-style special operands: zeros, the subnormal and normal
    extremes, one, powers of two across the range and their neighbours, inf and NaN."""
    m, top = fmt.fraction_bits, fmt.max_code
    one = fmt.bias << m
    mags = [0, 1, (1 << m) - 1, 1 << m, (1 << m) + 1, top, top - 1, one, one - 1, one + 1]
    for e in np.linspace(1, fmt.max_exponent + fmt.bias, 6).astype(int):
        mags += [e << m, (e << m) - 1, (e << m) + 1]
    mags = [c for c in mags if 0 <= c <= top] + [top + 1] * fmt.infinities + (
        [nan_code(fmt)] if fmt.nan in ("ieee", "fn") else [])
    sign = 1 << (fmt.bits - 1)
    codes = set(mags) | {c | sign for c in mags if fmt.signed_zero or c != 0}
    if fmt.nan == "fnuz":
        codes.add(sign)  # its NaN
    return np.array(sorted(codes), dtype=np.int64)


class Tables(NamedTuple):
    """TestFloat's operand pieces for a format (bit patterns): sign-and-exponent patterns for
    operands of two- and three-operand functions (q_in) and of one-operand ones (q_out), and
    the level-2 significand patterns (p2). An operand is a q pattern OR-ed with a p2 one."""

    q_in: np.ndarray
    q_out: np.ndarray
    p2: np.ndarray


def _distinct(values) -> np.ndarray:
    """The values in order, each once, as int64."""
    return np.array(list(dict.fromkeys(int(v) for v in values)), dtype=np.int64)


def level2_tables(fmt: Format | str) -> Tables:
    """TestFloat 3e's level-2 tables (source/genCases_f16.c, genCases_f32.c: f16QIn,
    f16QOut, f16P2, ...) for any exponent and significand width, built by their rules.

    Exponent fields, each with both signs: q_in the zero field, 1, bias - (m + 1), bias - 2
    .. bias + 2, bias + m + 1, the top two fields; q_out also 2, bias - 4 .. bias + 4, the
    integer-conversion edges bias + 29 .. 32 and bias + 61 .. 64, and the top three fields
    (those inside the format). Significands p2, for m fraction bits: 0; each single one
    bit; runs of ones from the top (2 .. m ones); all ones but one zero; runs of ones from
    the bottom (m - 2 .. 2 ones). These reproduce genCases_f16.c's tables and genCases_f32.c's
    but for one entry there (its f32QIn holds exponent 127 positive but 126 negative).
    """
    fmt = parse_format(fmt)
    e, m, b = fmt.exponent_bits, fmt.fraction_bits, fmt.bias
    top = (1 << e) - 1
    fields_in = [0, 1, b - m - 1, *range(b - 2, b + 3), b + m + 1, top - 1, top]
    fields_out = [0, 1, 2, b - m - 1, *range(b - 4, b + 5), b + m + 1, *range(b + 29, b + 33),
                  *range(b + 61, b + 65), top - 2, top - 1, top]
    sign = 1 << (fmt.bits - 1)

    def signed(fields: list[int]) -> np.ndarray:
        codes = sorted({f for f in fields if 0 <= f <= top})
        return _distinct([f << m for f in codes] + [sign | f << m for f in codes])

    ones = (1 << m) - 1
    p2 = [0, *(1 << k for k in range(m)), *(ones >> k << k for k in range(m - 2, -1, -1)),
          *(ones ^ 1 << k for k in range(1, m)), *(ones >> k for k in range(2, m - 1))]
    return Tables(signed(fields_in), signed(fields_out), _distinct(p2))


def _testfloat_random(t: Tables, fmt: Format, rng: np.random.Generator,
                      shape: tuple[int, ...]) -> np.ndarray:
    """Random operands the way TestFloat's f32Random (genCases_f32.c) draws them: 3/8 a q_out
    exponent with the sum of two p2 significands, 1/8 a q_out exponent with a random
    significand, 3/8 and 1/8 the same with a random sign and exponent instead, the exponent
    confined for weight k >= 1 to the 2**(e-k) fields around the middle (QInfWeightMasks)."""
    e, m = fmt.exponent_bits, fmt.fraction_bits
    kind = rng.integers(0, 8, shape)
    p3 = (rng.choice(t.p2, shape) + rng.choice(t.p2, shape)) & ((1 << m) - 1)
    significand = np.where(kind % 4 == 3, rng.integers(0, 1 << m, shape), p3)
    k = np.maximum(rng.integers(0, 2 + max(e - 3, 0), shape) - 1, 0)
    first = np.where(k == 0, 0, (1 << (e - 1)) - (1 << np.maximum(e - 1 - k, 0)))
    field = first + (rng.integers(0, 1 << e, shape) & ((1 << (e - k)) - 1))
    weighted = rng.integers(0, 2, shape) << (fmt.bits - 1) | field << m
    return np.where(kind < 4, rng.choice(t.q_out, shape), weighted) | significand


def _crossed(values: np.ndarray, n: int, index: np.ndarray) -> list[np.ndarray]:
    """Combination number index of n operands from values, in diagonal order: with index's
    base-k digits d0, d1, ..., operand j is values[(d0 + ... + dj) mod k], so any k
    consecutive combinations hold every value in every operand."""
    k = values.size
    digits = np.cumsum([index // k ** j % k for j in range(n)], axis=0) % k
    return [values[d] for d in digits]


def _random(draw, n: int, index: np.ndarray, seed: int) -> np.ndarray:
    """Random case number index (sorted) of n operands: block index // BLOCK drawn whole by
    draw(rng, (n, BLOCK)) from SeedSequence(seed, spawn_key=(block,)), the same in any shard."""
    out = np.empty((n, index.size), dtype=np.int64)
    blocks = index // BLOCK
    edges = np.flatnonzero(np.diff(blocks)) + 1
    for lo, hi in zip([0, *edges], [*edges, index.size]):
        if lo < hi:
            seq = np.random.SeedSequence(seed, spawn_key=(int(blocks[lo]),))
            out[:, lo:hi] = draw(np.random.default_rng(seq), (n, BLOCK))[:, index[lo:hi] % BLOCK]
    return out


def case_count(op: str, fmt: Format | str, *, count: int = 10_000,
               exhaustive: bool = False) -> int:
    """How many cases cases() makes: count, or every combination when exhaustive."""
    fmt = parse_format(fmt)
    if not exhaustive:
        return count
    total = (1 << fmt.bits) ** ARITY[parse_op(op)[0]]
    if total > EXHAUSTIVE_LIMIT:
        raise ValueError(f"--exhaustive {op} on {fmt.name} would be {total} cases (more than "
                         f"2**24); use --count N for level-1 or level-2 cases instead")
    return total


def cases(op: str, fmt: Format | str, *, level: int = 1, count: int = 10_000,
          exhaustive: bool = False, seed: int = 0, start: int = 0,
          stop: int | None = None) -> tuple[np.ndarray, ...]:
    """Operand bit patterns (one int64 array per operand) of the cases number start to stop
    (default: all) for op on fmt; case i is the same whatever start and stop.

    exhaustive: every combination (at most 2**24 cases), the first operand varying slowest.
    Otherwise count cases of a TestFloat-style level. Level 1: every combination of the
    special operands (diagonal order, see _crossed), then uniformly random bit patterns.
    Level 2 (TestFloat's, level2_tables): TestFloat-style random operands alternating
    with the combinations of the q_in x p2 operands (q_out x p2 for one operand), then
    random ones. Random cases come from seed, by blocks of BLOCK (see _random).
    """
    fmt = parse_format(fmt)
    n = ARITY[parse_op(op)[0]]
    if level not in LEVELS:
        raise ValueError(f"level must be 1 or 2 (TestFloat's levels), not {level!r}")
    total = case_count(op, fmt, count=count, exhaustive=exhaustive)
    stop = total if stop is None else min(stop, total)
    index = np.arange(start, max(start, stop), dtype=np.int64)
    if exhaustive:
        side = 1 << fmt.bits
        return tuple(index // side ** (n - 1 - j) % side for j in range(n))
    if level == 1:
        values = _specials(fmt)
        combinations = values.size ** n
        grid, g, r = index < combinations, index, index - combinations

        def draw(rng, shape):
            return rng.integers(0, 1 << fmt.bits, shape, dtype=np.int64)
    else:
        t = level2_tables(fmt)
        values = ((t.q_out if n == 1 else t.q_in)[:, None] | t.p2[None, :]).ravel()
        combinations = values.size ** n
        interleaved = index < 2 * combinations
        grid = interleaved & (index % 2 == 1)
        g, r = index // 2, np.where(interleaved, index // 2, index - combinations)

        def draw(rng, shape):
            return _testfloat_random(t, fmt, rng, shape)
    out = np.empty((n, index.size), dtype=np.int64)
    out[:, grid] = _crossed(values, n, g[grid])
    out[:, ~grid] = _random(draw, n, r[~grid], seed)
    return tuple(out)
