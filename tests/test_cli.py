"""The command line, run as `python -m mpgrad` in a subprocess from the repository root.

Checked: `formats` prints one row per built-in format with its largest finite value (taken
from ml_dtypes.finfo, tf32 from its definition); `describe` prints the sign/exponent/fraction
bits; an unknown format name fails with the valid names on stderr.
"""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import ml_dtypes
import pytest

import mpgrad

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpgrad", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def _max(name: str) -> float:
    if name == "tf32":
        return float((2 - Fraction(2) ** -10) * Fraction(2) ** 127)
    return float(ml_dtypes.finfo(mpgrad.FORMATS[name].storage).max)


@pytest.fixture(scope="module")
def formats_output() -> str:
    r = run("formats")
    assert r.returncode == 0, r.stderr
    return r.stdout


def _numbers(tokens):
    out = []
    for t in tokens:
        try:
            out.append(float(t))
        except ValueError:
            pass
    return out


@pytest.mark.parametrize("name", list(mpgrad.FORMATS))
def test_formats_row(formats_output, name):
    rows = [line.split() for line in formats_output.splitlines()
            if line.split() and line.split()[0] == name]
    assert len(rows) == 1, f"expected one row for {name}"
    expected = _max(name)
    assert any(v == pytest.approx(expected, rel=1e-5) for v in _numbers(rows[0][1:]))


def test_formats_exact_small_maxima(formats_output):
    rows = {line.split()[0]: line.split() for line in formats_output.splitlines() if line.split()}
    assert "448" in rows["float8_e4m3fn"]      # 1.75 * 2**8
    assert "240" in rows["float8_e4m3fnuz"]    # 1.875 * 2**7
    assert "57344" in rows["float8_e5m2"]      # 1.75 * 2**15
    assert "65504" in rows["float16"]          # (2 - 2**-10) * 2**15
    assert "6" in rows["float4_e2m1fn"]        # 1.5 * 2**2
    assert "7.5" in rows["float6_e2m3fn"]      # 1.875 * 2**2
    assert "28" in rows["float6_e3m2fn"]       # 1.75 * 2**4


def test_describe_prints_bits():
    r = run("describe", "0.1", "bf16")
    assert r.returncode == 0, r.stderr
    # 0.1 in bfloat16: sign 0, exponent 123 = 01111011, fraction 77 = 1001101 (see test_bits)
    assert "0 01111011 1001101" in r.stdout
    assert "0.10009765625" in r.stdout


def test_describe_every_format_by_default():
    r = run("describe", "1.0")
    assert r.returncode == 0, r.stderr
    for name in mpgrad.FORMATS:
        assert name in r.stdout


def test_bad_format_name():
    r = run("describe", "0.1", "bf17")
    assert r.returncode != 0
    assert "bf17" in r.stderr
    for name in ("bfloat16", "float16", "float8_e4m3fn", "tf32", "bf16", "fp16"):
        assert name in r.stderr


def test_no_command_is_usage_error():
    r = run()
    assert r.returncode == 2  # argparse: the subcommand is required
    assert "usage" in r.stderr.lower()


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout == f"mpgrad {mpgrad.__version__}\n"


def test_describe_one_bad_format_does_not_silence_the_others():
    r = run("describe", "1e6", "fp16", "bf17", "e4m3", "nope")
    assert r.returncode == 2  # a bad argument value, as argparse reports them
    assert "1000000.0 in float16" in r.stdout and "1000000.0 in float8_e4m3fn" in r.stdout
    assert r.stdout.count("overflow") == 2  # 1e6 is beyond both formats' range
    assert "'bf17'" in r.stderr and "'nope'" in r.stderr and "bf17" not in r.stdout


def test_describe_bad_mode_is_usage_error():
    r = run("describe", "0.1", "fp16", "--mode", "nearest")
    assert r.returncode == 2 and "toward_zero" in r.stderr and not r.stdout
