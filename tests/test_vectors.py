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
                             float8_e4m3fnuz, float8_e5m2, float16, tf32)
from mpgrad.numerics.codes import decode
from mpgrad.numerics.vectors import (DETERMINISTIC_MODES, FLAGS, cases, check, compute,
                                     vectors)
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
