"""Conformance vectors (mpgrad.numerics.vectors) against the MPFR reference of tests/reference.py.

Exact results come from rationals (gmpy2 mpq) and, for sqrt, from MPFR at 300 bits with a
sticky bit; special operands from float64 IEEE arithmetic. reference.py's underflow flag is
"the result is subnormal or zero" (exact results included); IEEE 754's flag with tininess
after rounding is "inexact and the exact value rounded to precision p with unbounded
exponent is below 2**emin": computed here by MPFR on a format with a huge exponent range.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import gmpy2
import numpy as np
import pytest
from gmpy2 import mpfr, mpq

from mpgrad.numerics import (Format, bfloat16, float4_e2m1fn, float6_e3m2fn, float8_e4m3fn,
                             float8_e4m3fnuz, float8_e5m2, float16, float32, tf32)
from mpgrad.numerics.codes import decode
from mpgrad.numerics.cases import BLOCK, cases, level2_tables
from mpgrad.numerics.vectors import DETERMINISTIC_MODES, FLAGS, check, compute, vectors
from reference import Spec, reference_modes, round_unbounded, spec_of

ROOT = Path(__file__).resolve().parent.parent


def _exact(op: str, x: list[float]):
    """The exact result: an mpq/mpfr for finite operands, else IEEE's float64 special."""
    with np.errstate(all="ignore"):
        special = {"add": lambda: x[0] + x[1], "sub": lambda: x[0] - x[1],
                   "mul": lambda: x[0] * x[1], "div": lambda: np.float64(x[0]) / x[1],
                   "sqrt": lambda: np.sqrt(np.float64(x[0])),
                   "fma": lambda: x[0] * x[1] + x[2]}[op]()
    if not all(map(math.isfinite, x)) or math.isnan(special) or op == "div" and x[1] == 0:
        return float(special)
    q = [mpq(*v.as_integer_ratio()) for v in x]
    if op == "sqrt":
        if q[0] == 0:
            return mpfr(x[0])
        with gmpy2.context(precision=300, round=gmpy2.RoundToZero):
            s = gmpy2.sqrt(mpfr(x[0], 53))
        if mpq(s) ** 2 == q[0]:
            return s
        with gmpy2.context(precision=400):  # a sticky bit below the 300 exact ones
            return s + mpfr(2) ** (gmpy2.get_exp(s) - 350)
    v = {"add": lambda: q[0] + q[1], "sub": lambda: q[0] - q[1], "mul": lambda: q[0] * q[1],
         "div": lambda: q[0] / q[1], "fma": lambda: q[0] * q[1] + q[2]}[op]()
    return v


def _zero_sign(op: str, x: list[float], mode: str) -> bool:
    """IEEE 754 6.3: the sign of an exact zero result."""
    s = [math.copysign(1, v) < 0 for v in x]
    if op in ("mul", "div"):
        return s[0] != s[1]
    if op == "sqrt":
        return s[0]
    a, b = (s[0] != s[1], s[2]) if op == "fma" else (s[0], s[1] != (op == "sub"))
    return (a or b) if mode == "down" else (a and b)


def _tiny_after(v, spec: Spec, mode: str) -> bool:
    """|v| rounded to precision p with unbounded exponent is below 2**emin."""
    wide = Spec(15, spec.fraction_bits, 2 ** 14 - 1, "ieee")
    r = round_unbounded(v, wide, mode)
    return gmpy2.cmp_abs(r, spec.smallest_normal_mpfr) < 0


def _expected(op: str, x: list[float], fmt) -> list[tuple[float, int]]:
    """(value, flags) in every deterministic mode, from the reference."""
    v = _exact(op, x)
    spec = spec_of(fmt)
    zero = not isinstance(v, float) and v == 0
    out = []
    for mode, ref in zip(DETERMINISTIC_MODES, reference_modes(v, fmt)):
        value = ref.value
        if zero:
            value = -0.0 if _zero_sign(op, x, mode) and spec.signed_zero else 0.0
        invalid = (isinstance(v, float) and math.isnan(v) and not any(map(math.isnan, x))
                   or op == "fma" and (x[0] == 0 and math.isinf(x[1])
                                       or math.isinf(x[0]) and x[1] == 0) or ref.invalid)
        under = ref.inexact and not ref.overflow and (
            not isinstance(v, float) and v != 0 and _tiny_after(v, spec, mode))
        dz = op == "div" and x[1] == 0 and math.isfinite(x[0]) and x[0] != 0
        out.append((value, FLAGS["inexact"] * ref.inexact | FLAGS["overflow"] * ref.overflow
                    | FLAGS["underflow"] * under | FLAGS["invalid"] * invalid
                    | FLAGS["infinite"] * dz))
    return out


def _compare(op: str, fmt, operands: tuple[np.ndarray, ...]) -> int:
    """Check compute() against the reference on every case in every mode; the case count."""
    got = {m: compute(op, fmt, operands, m) for m in DETERMINISTIC_MODES}
    x = [decode(c, fmt) for c in operands]
    for i in range(operands[0].size):
        xi = [float(v[i]) for v in x]
        if not got["up"][0][i]:  # left out: a NaN result in a format without NaN
            v = _exact(op, xi)
            assert not fmt.has_nan and isinstance(v, float) and math.isnan(v)
            continue
        for mode, (value, flags) in zip(DETERMINISTIC_MODES, _expected(op, xi, fmt)):
            kept, result, fl = got[mode]
            j = int(np.count_nonzero(kept[:i]))
            r = float(decode(result[j:j + 1], fmt)[0])
            same = (math.isnan(r) and math.isnan(value)) or (
                r == value and math.copysign(1, r) == math.copysign(1, value))
            assert same and fl[j] == flags, (op, fmt.name, mode, [hex(int(c[i])) for c in
                                             operands], r, value, fl[j], flags)
    return operands[0].size


@pytest.mark.parametrize("fmt", [float16, bfloat16, float8_e4m3fn, float8_e5m2],
                         ids=lambda f: f.name)
@pytest.mark.parametrize("op", ["add", "mul", "div", "sqrt", "fma"])
def test_level1_vectors_match_reference(op, fmt):
    count = 2500 if op != "fma" else 4000
    operands = cases(op, fmt, count=count, seed=3)
    assert _compare(op, fmt, operands) == count


@pytest.mark.parametrize("fmt", [tf32, float8_e4m3fnuz, float6_e3m2fn, float4_e2m1fn,
                                 Format.custom(5, 7)], ids=lambda f: f.name)
@pytest.mark.parametrize("op", ["sub", "mul", "div", "fma"])
def test_other_formats_match_reference(op, fmt):
    """Formats without infinities (overflow: NaN in fnuz, +-max in the MX formats), without
    NaN (invalid cases left out), and tf32 and a custom one."""
    count = min(600, (1 << fmt.bits) ** (3 if op == "fma" else 2))
    assert _compare(op, fmt, cases(op, fmt, count=count, seed=5)) == count


def test_exhaustive_float8_add_matches_reference():
    operands = cases("add", float8_e5m2, exhaustive=True)
    assert _compare("add", float8_e5m2, operands) == 65536


def test_conversion_matches_reference():
    operands = cases("to:e4m3", float16, count=3000, seed=1)
    got = {m: compute("to:e4m3", float16, operands, m) for m in DETERMINISTIC_MODES}
    for i, x in enumerate(decode(operands[0], float16).tolist()):
        if math.isnan(x):
            continue
        for mode, ref in zip(DETERMINISTIC_MODES, reference_modes(x, float8_e4m3fn)):
            kept, result, flags = got[mode]
            r = float(decode(result[i:i + 1], float8_e4m3fn)[0])
            assert (math.isnan(r) and math.isnan(ref.value)) or r == ref.value
            assert flags[i] & (FLAGS["inexact"] | FLAGS["overflow"] | FLAGS["invalid"]) == (
                ref.inexact * FLAGS["inexact"] | ref.overflow * FLAGS["overflow"]
                | ref.invalid * FLAGS["invalid"])


def test_divide_by_zero_flags_by_hand():
    codes = [np.array([0x3C00, 0xBC00, 0x0000, 0x7C00, 0x0001]),  # 1, -1, 0, inf, tiny
             np.array([0x0000, 0x0000, 0x0000, 0x0000, 0x8000])]
    kept, result, flags = compute("div", float16, tuple(codes))
    assert result.tolist()[:2] == [0x7C00, 0xFC00] and result[4] == 0xFC00
    assert flags.tolist() == [8, 8, 16, 0, 8]  # 0/0 invalid; inf/0 exact inf, no flag
    kept, result, flags = compute("div", float8_e4m3fn, (np.array([0x38]), np.array([0x00])))
    assert result[0] == 0x7F and flags[0] == 8 | 16  # no infinity: NaN, invalid too


def _boundary_pair(eps_lo, eps_hi):
    """float16 a, b with a*b = 2**-14 - eps, eps_lo < eps < eps_hi (exactly)."""
    from fractions import Fraction
    for a_code in range(0x3C01, 0x4000):
        a = Fraction(float(decode(np.array([a_code]), float16)[0]))
        for b_code in range(0x0200, 0x0400):
            b = Fraction(float(decode(np.array([b_code]), float16)[0]))
            eps = Fraction(2) ** -14 - a * b
            if eps_lo < eps < eps_hi:
                return a_code, b_code
    raise AssertionError("no case found")


def test_tininess_after_rounding_at_the_boundary():
    """2**-14 - eps with 2**-26 < eps < 2**-25: rounds to the normal 2**-14 (so reference.py
    flags no underflow), but rounded to 11 bits with unbounded exponent it is below 2**-14:
    IEEE's after-rounding underflow. With eps < 2**-27 neither flags one (tininess BEFORE
    rounding would)."""
    from fractions import Fraction
    a, b = _boundary_pair(Fraction(2) ** -26, Fraction(2) ** -25)
    x = [float(decode(np.array([c]), float16)[0]) for c in (a, b)]
    ref = reference_modes(mpq(*x[0].as_integer_ratio()) * mpq(*x[1].as_integer_ratio()),
                          float16, ("nearest_even",))[0]
    assert ref.value == 2.0 ** -14 and not ref.underflow
    kept, result, flags = compute("mul", float16, (np.array([a]), np.array([b])))
    assert result[0] == 0x0400 and flags[0] == FLAGS["inexact"] | FLAGS["underflow"]
    a, b = _boundary_pair(Fraction(0), Fraction(2) ** -27)
    kept, result, flags = compute("mul", float16, (np.array([a]), np.array([b])))
    assert result[0] == 0x0400 and flags[0] == FLAGS["inexact"]


def test_level1_cases_hold_the_special_values():
    (a, b) = cases("add", float16, count=5000)
    present = set(a.tolist())
    for code in (0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0x3C00, 0xBC00, 0x7C00,
                 0xFC00, 0x7E00, 0x3BFF, 0x3C01):
        assert code in present, hex(code)
    assert len(set(zip(a.tolist(), b.tolist()))) > 4000
    assert all(np.array_equal(u, v) for u, v in zip(cases("add", float16, count=5000),
                                                     (a, b)))  # deterministic from the seed


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpgrad", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_round_trip(tmp_path):
    out = tmp_path / "v.txt"
    r = run("vectors", "div", "bf16", "--mode", "up", "--count", "500", "-o", str(out))
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "# mpgrad vectors div bfloat16 --mode up" and len(lines) == 501
    assert run("vectors", "--check", str(out)).returncode == 0
    fields = lines[7].split()
    fields[2] = f"{int(fields[2], 16) ^ 1:04X}"
    lines[7] = " ".join(fields)
    out.write_text("\n".join(lines) + "\n")
    r = run("vectors", "--check", str(out))
    assert r.returncode == 1 and "1 mismatches" in r.stdout and "line 8:" in r.stdout
    out.write_text("\n".join(lines[1:]) + "\n")  # no header: OP FORMAT --mode given instead
    assert run("vectors", "--check", str(out), "div", "bf16", "--mode", "up").returncode == 1
    out.write_text("hello world\n")
    assert run("vectors", "--check", str(out), "add", "f16").returncode == 2
    assert run("vectors", "--check", str(tmp_path / "missing.txt")).returncode == 2


def test_stdout_matches_the_module():
    r = run("vectors", "sqrt", "e5m2", "--count", "40", "--seed", "7")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == list(vectors("sqrt", "e5m2", count=40, seed=7))
    assert check(r.stdout.splitlines()) == (40, [])


# --- TestFloat level 2 -------------------------------------------------------------------
# Berkeley TestFloat 3e's tables, as source/genCases_f16.c and genCases_f32.c list them.
F16_QIN = [0x0000, 0x0400, 0x1000, 0x3400, 0x3800, 0x3C00, 0x4000, 0x4400, 0x6800, 0x7800,
           0x7C00, 0x8000, 0x8400, 0x9000, 0xB400, 0xB800, 0xBC00, 0xC000, 0xC400, 0xE800,
           0xF800, 0xFC00]
F16_QOUT = [0x0000, 0x0400, 0x0800, 0x1000, 0x2C00, 0x3000, 0x3400, 0x3800, 0x3C00, 0x4000,
            0x4400, 0x4800, 0x4C00, 0x6800, 0x7400, 0x7800, 0x7C00, 0x8000, 0x8400, 0x8800,
            0x9000, 0xAC00, 0xB000, 0xB400, 0xB800, 0xBC00, 0xC000, 0xC400, 0xC800, 0xCC00,
            0xE800, 0xF400, 0xF800, 0xFC00]
F16_P2 = [0x0000, 0x0001, 0x0002, 0x0004, 0x0008, 0x0010, 0x0020, 0x0040, 0x0080, 0x0100,
          0x0200, 0x0300, 0x0380, 0x03C0, 0x03E0, 0x03F0, 0x03F8, 0x03FC, 0x03FE, 0x03FF,
          0x03FD, 0x03FB, 0x03F7, 0x03EF, 0x03DF, 0x03BF, 0x037F, 0x02FF, 0x01FF, 0x00FF,
          0x007F, 0x003F, 0x001F, 0x000F, 0x0007, 0x0003]
# f32QIn's and f32QOut's exponents (their comments; "sub" the zero field, "inf" the top one)
F32_QIN_EXPONENTS = ["sub", -126, -24, -2, -1, 0, 1, 2, 24, 127, "inf"]
F32_QOUT_EXPONENTS = ["sub", -126, -125, -24, -4, -3, -2, -1, 0, 1, 2, 3, 4, 24, 29, 30, 31,
                      32, 61, 62, 63, 64, 126, 127, "inf"]
F32_P2 = [0x000000, 0x000001, 0x000002, 0x000004, 0x000008, 0x000010, 0x000020, 0x000040,
          0x000080, 0x000100, 0x000200, 0x000400, 0x000800, 0x001000, 0x002000, 0x004000,
          0x008000, 0x010000, 0x020000, 0x040000, 0x080000, 0x100000, 0x200000, 0x400000,
          0x600000, 0x700000, 0x780000, 0x7C0000, 0x7E0000, 0x7F0000, 0x7F8000, 0x7FC000,
          0x7FE000, 0x7FF000, 0x7FF800, 0x7FFC00, 0x7FFE00, 0x7FFF00, 0x7FFF80, 0x7FFFC0,
          0x7FFFE0, 0x7FFFF0, 0x7FFFF8, 0x7FFFFC, 0x7FFFFE, 0x7FFFFF, 0x7FFFFD, 0x7FFFFB,
          0x7FFFF7, 0x7FFFEF, 0x7FFFDF, 0x7FFFBF, 0x7FFF7F, 0x7FFEFF, 0x7FFDFF, 0x7FFBFF,
          0x7FF7FF, 0x7FEFFF, 0x7FDFFF, 0x7FBFFF, 0x7F7FFF, 0x7EFFFF, 0x7DFFFF, 0x7BFFFF,
          0x77FFFF, 0x6FFFFF, 0x5FFFFF, 0x3FFFFF, 0x1FFFFF, 0x0FFFFF, 0x07FFFF, 0x03FFFF,
          0x01FFFF, 0x00FFFF, 0x007FFF, 0x003FFF, 0x001FFF, 0x000FFF, 0x0007FF, 0x0003FF,
          0x0001FF, 0x0000FF, 0x00007F, 0x00003F, 0x00001F, 0x00000F, 0x000007, 0x000003]


def _f32_codes(exponents: list) -> list[int]:
    fields = [0 if e == "sub" else 255 if e == "inf" else e + 127 for e in exponents]
    return [f << 23 for f in fields] + [1 << 31 | f << 23 for f in fields]


def test_level2_tables_are_testfloats():
    """The tables built from the exponent and significand widths are genCases_f16.c's and
    genCases_f32.c's (whose f32QIn lists exponent 126, not 127, for the negative sign)."""
    t = level2_tables(float16)
    assert t.q_in.tolist() == F16_QIN and t.q_out.tolist() == F16_QOUT
    assert t.p2.tolist() == F16_P2
    t = level2_tables(float32)
    assert t.q_out.tolist() == _f32_codes(F32_QOUT_EXPONENTS)
    assert t.p2.tolist() == F32_P2
    expected_in = _f32_codes(F32_QIN_EXPONENTS)
    assert expected_in[-2] == 0xFF000000  # TestFloat: 0xFE800000 (negative, 126)
    assert t.q_in.tolist() == expected_in


# Level-2 float16 operands (q_in | p2 of genCases_f16.c) that level 1 does not make: 1 with a
# run of six ones on top, 2**15 with all ones but one, 2**-14 with a run of 3 ones at the
# bottom, a negative subnormal with one bit, -2**-11 with a run of two ones, and a NaN
# with a run of nine ones from the bottom
LEVEL2_F16 = [0x3C00 | 0x03F0, 0x7800 | 0x03BF, 0x0400 | 0x0007, 0x8000 | 0x0020,
              0x9000 | 0x0300, 0x7C00 | 0x01FF]


def test_level2_cases_hold_testfloat_patterns():
    n_values = len(F16_QIN) * len(F16_P2)
    count = 2 * 3 * n_values  # random cases between 3 * n_values q_in x p2 combinations
    a, b = cases("add", float16, level=2, count=count, seed=4)
    expected = {q | p for q in F16_QIN for p in F16_P2}
    assert set(a[1::2].tolist()) == expected and set(b[1::2].tolist()) == expected
    level1 = set(np.concatenate(cases("add", float16, count=count, seed=4)).tolist())
    for code in LEVEL2_F16:
        assert code in expected and code not in level1, hex(code)
    (x,) = cases("sqrt", float16, level=2, count=2 * len(F16_QOUT) * len(F16_P2))
    assert set(x[1::2].tolist()) == {q | p for q in F16_QOUT for p in F16_P2}


def test_level2_random_cases_are_testfloats():
    """TestFloat's f32Random: 3/4 of the significands are sums of two f32P2 patterns (of 2**23
    significands, few are), the exponents of half of them from f32QOut."""
    (x,) = cases("sqrt", float32, level=2, count=8000, seed=1)
    random = x[::2] & 0x7FFFFFFF
    sums = {(p + q) & 0x7FFFFF for p in F32_P2 for q in F32_P2}
    assert 0.65 < np.isin(random & 0x7FFFFF, list(sums)).mean() < 0.85
    exponents = {c & 0x7F800000 for c in _f32_codes(F32_QOUT_EXPONENTS)}
    assert 0.45 < np.isin(random & 0x7F800000, list(exponents)).mean() < 0.7
    uniform = np.random.default_rng(0).integers(0, 1 << 23, 4000)
    assert np.isin(uniform, list(sums)).mean() < 0.01  # what the first check tells apart


@pytest.mark.parametrize("level", [1, 2])
def test_cases_are_deterministic_and_indexable(level):
    count = 3 * BLOCK + 123
    full = cases("add", bfloat16, level=level, count=count, seed=9)
    assert all(np.array_equal(u, v) for u, v in
               zip(full, cases("add", bfloat16, level=level, count=count, seed=9)))
    for start, stop in [(0, 1), (BLOCK - 5, 2 * BLOCK + 7), (count - 10, count + 50)]:
        part = cases("add", bfloat16, level=level, count=count, seed=9, start=start, stop=stop)
        assert all(np.array_equal(u[start:stop], v) for u, v in zip(full, part))
    other = cases("add", bfloat16, level=level, count=count, seed=10)
    assert not np.array_equal(full[0], other[0])  # the random cases follow the seed


def test_exhaustive_keeps_its_order_in_any_range():
    a, b = cases("mul", float8_e4m3fn, exhaustive=True)
    assert a.tolist() == [i // 256 for i in range(65536)]
    assert b.tolist() == [i % 256 for i in range(65536)]
    part = cases("mul", float8_e4m3fn, exhaustive=True, start=300, stop=900)
    assert part[0].tolist() == a[300:900].tolist() and part[1].tolist() == b[300:900].tolist()


@pytest.mark.parametrize("fmt", [float16, bfloat16, float8_e4m3fn], ids=lambda f: f.name)
@pytest.mark.parametrize("op", ["add", "div", "fma"])
def test_level2_vectors_match_reference(op, fmt):
    operands = cases(op, fmt, level=2, count=1200, seed=2)
    assert _compare(op, fmt, operands) == 1200


@pytest.mark.parametrize("op,fmt", [("mul", "bf16"), ("sqrt", "f16"), ("to:e5m2", "f16"),
                                    ("fma", "e4m3")])
def test_level2_vectors_check(op, fmt):
    lines = list(vectors(op, fmt, "down", level=2, count=3000, seed=5))
    assert check(lines) == (len(lines) - 1, [])


def test_check_names_the_first_unusable_line():
    lines = list(vectors("add", "f16", count=20))
    lines[5] = "3C00 3C00"  # too few fields
    lines[9] = "3C00 ZZZZ 4000 00"
    with pytest.raises(ValueError, match="line 6: '3C00 3C00': add lines need 4 hex fields"):
        check(lines)
    lines[3] = "10000 3C00 4000 00"  # wider than float16
    with pytest.raises(ValueError, match="line 4: .* wider than its format"):
        check(lines)
    # sqrt(-1) has no float4_e2m1fn result (no NaN there): found before line 4's error
    lines = ["# mpgrad vectors sqrt e2m1 --mode up", "2 2 00", "A 0 10", "nonsense"]
    with pytest.raises(ValueError, match="line 3: 'A 0 10': the case has no float4_e2m1fn"):
        check(lines)
    with pytest.raises(ValueError, match="line 3: 'nonsense': a field is not hexadecimal"):
        check(lines[:2] + lines[3:])
