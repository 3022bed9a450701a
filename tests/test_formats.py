"""Format parameters and lookup.

Checked: every built-in Format against ``ml_dtypes.finfo`` of its storage dtype (tf32 against
its definition); custom formats against an exact enumeration of their bit patterns with
``fractions.Fraction`` under the IEEE 754 / OCP encoding rules; the float32/float64 storage
choice; rejection of invalid formats; ``as_format`` names, aliases and dtypes; immutability.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

import mpgrad
from mpgrad import FORMATS, Format, as_format
from mpgrad.numerics import format_of_dtype
from mpgrad.numerics.codes import decode

BUILTINS = list(FORMATS.values())
WITH_FINFO = [f for f in BUILTINS if f.name != "tf32"]  # tf32 has no NumPy/ml_dtypes dtype
BUILTIN_NAMES = ("float64", "float32", "tf32", "float16", "bfloat16", "float8_e4m3fn",
                 "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e4m3",
                 "float8_e3m4", "float8_e4m3b11fnuz", "float6_e2m3fn", "float6_e3m2fn",
                 "float4_e2m1fn")


def _name(f):
    return f.name


def _reference_dtype(name: str) -> np.dtype:
    """The NumPy / ml_dtypes dtype of the same name (looked up independently of mpgrad)."""
    return np.dtype(getattr(np, name) if name in ("float16", "float32", "float64")
                    else getattr(ml_dtypes, name))


# --- built-in formats against ml_dtypes.finfo ----------------------------------------------

def test_builtin_names():
    assert tuple(FORMATS) == BUILTIN_NAMES
    assert all(FORMATS[n].name == n for n in FORMATS)


@pytest.mark.parametrize("fmt", WITH_FINFO, ids=_name)
def test_parameters_match_finfo(fmt):
    fi = ml_dtypes.finfo(_reference_dtype(fmt.name))
    assert fmt.storage == _reference_dtype(fmt.name)
    assert fmt.bits == fi.bits
    assert fmt.exponent_bits == fi.nexp
    assert fmt.fraction_bits == fi.nmant
    assert fmt.precision == fi.nmant + 1
    assert fmt.min_exponent == fi.minexp
    assert fmt.max_exponent == fi.maxexp - 1
    assert fmt.bias == 1 - fi.minexp
    assert fmt.max == float(fi.max)
    assert fmt.smallest_normal == float(fi.smallest_normal)
    assert fmt.smallest_subnormal == float(fi.smallest_subnormal)
    assert fmt.eps == float(fi.eps)
    assert fmt.unit_roundoff == float(fi.eps) / 2
    assert fmt.native


@pytest.mark.parametrize("fmt", WITH_FINFO, ids=_name)
def test_special_values_match_ml_dtypes_casts(fmt):
    dt = _reference_dtype(fmt.name)
    cast = np.array([np.inf, np.nan, -0.0]).astype(dt).astype(np.float64)
    assert fmt.infinities == bool(np.isinf(cast[0]))   # a format without inf saturates or gives NaN
    assert fmt.has_nan == bool(np.isnan(cast[1]))      # OCP FP6/FP4 turn NaN into a number
    assert fmt.signed_zero == bool(np.signbit(cast[2]))  # fnuz formats have no -0


# How many of the 2**bits patterns are NaN, per encoding (IEEE 754 / OCP 8-bit FP / OCP MX):
# ieee: exponent all ones and fraction != 0, both signs; fn: S.1111.111 only; fnuz: 1000...0 only.
_NAN_PATTERNS = {"ieee": lambda f: 2 * (2 ** f.fraction_bits - 1), "fn": lambda f: 2,
                 "fnuz": lambda f: 1, "none": lambda f: 0}


@pytest.mark.parametrize("fmt", [f for f in WITH_FINFO if f.bits <= 16], ids=_name)
def test_nan_encoding_matches_ml_dtypes(fmt):
    uint = np.uint8 if fmt.storage.itemsize == 1 else np.uint16
    with np.errstate(invalid="ignore"):
        values = np.arange(2 ** fmt.bits, dtype=uint).view(fmt.storage).astype(np.float64)
    assert int(np.isnan(values).sum()) == _NAN_PATTERNS[fmt.nan](fmt)
    assert int(np.isinf(values).sum()) == (2 if fmt.infinities else 0)
    assert float(np.nanmax(values[np.isfinite(values)])) == fmt.max


SMALL = [f for f in WITH_FINFO if f.bits <= 16]


def _patterns_of(fmt) -> np.ndarray:
    return np.arange(2 ** fmt.bits, dtype=np.uint8 if fmt.storage.itemsize == 1 else np.uint16)


@pytest.mark.parametrize("fmt", SMALL, ids=_name)
def test_decoding_every_pattern_matches_ml_dtypes(fmt):
    # mpgrad decodes a bit pattern from the Format's fields alone (bias, NaN encoding,
    # infinities, signed zero); ml_dtypes' own conversion of the same pattern is the reference.
    codes = _patterns_of(fmt)
    with np.errstate(invalid="ignore"):
        want = codes.view(_reference_dtype(fmt.name)).astype(np.float64)
    got = decode(codes.astype(np.int64), fmt)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_array_equal(got[ok], want[ok])
    np.testing.assert_array_equal(np.signbit(got[ok]), np.signbit(want[ok]))


def _rounding_points(fmt) -> np.ndarray:
    """Every value of fmt, the midpoints between neighbours (and the overflow threshold), and
    the float32 numbers next to each: where a rounding rule shows. In float32, where all of
    them are exact, since ml_dtypes 0.5.0's float64 casts round twice (through float32)."""
    with np.errstate(invalid="ignore"):
        v = np.unique(_patterns_of(fmt).view(fmt.storage).astype(np.float32))
    v = v[np.isfinite(v)]
    top = v[-1] + (v[-1] - v[-2]) / 2  # the overflow threshold (a tie: to even, beyond max)
    mid = np.concatenate([v[:-1] + (v[1:] - v[:-1]) / 2, [top, -top]]).astype(np.float32)
    up, down = np.float32(np.inf), np.float32(-np.inf)
    return np.concatenate([v, mid, np.nextafter(mid, up), np.nextafter(mid, down),
                           np.array([0.0, -0.0, np.inf, -np.inf, np.nan], np.float32)])


@pytest.mark.parametrize("fmt", SMALL, ids=_name)
def test_rounding_matches_ml_dtypes_conversion(fmt):
    # round_to (nearest even) against ml_dtypes' float32 -> format cast, bit for bit: ties,
    # overflow (to inf, NaN or saturation as the encoding says), -0 and NaN.
    x = _rounding_points(fmt)
    uint = _patterns_of(fmt).dtype
    if not fmt.has_nan:  # OCP MX formats: NaN is refused (ml_dtypes turns it into a number)
        x = x[~np.isnan(x)]
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(_reference_dtype(fmt.name))
        nan = np.isnan(want.astype(np.float64))
    got = mpgrad.round_to(x, fmt)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(np.isnan(got.astype(np.float64)), nan)
    np.testing.assert_array_equal(got.view(uint)[~nan], want.view(uint)[~nan])


def test_ml_dtypes_floats_are_rows_when_a_format_can_hold_them():
    # Every ml_dtypes floating dtype with a sign bit is a built-in format (formats are data);
    # the others (float8_e8m0fnu: no sign and no zero; float8_e5m3fnu: no sign) cannot be a
    # Format, whose values always come in +- pairs, and Tensor refuses their arrays.
    for name in dir(ml_dtypes):
        if not name.startswith(("float", "bfloat")) or name == "finfo":
            continue
        dt = np.dtype(getattr(ml_dtypes, name))
        with np.errstate(invalid="ignore"):
            values = np.arange(256, dtype=np.uint8).view(dt).astype(np.float64) \
                if dt.itemsize == 1 else np.array([-1.0]).astype(dt).astype(np.float64)
        signed = bool((values < 0).any())
        assert (format_of_dtype(dt) is not None) == signed, name
        if signed:
            assert format_of_dtype(dt).name == name


def test_new_formats_hand_checked():
    # IEEE-style float8_e4m3 (bias 7, inf and NaN in the top exponent field): max 1.875 * 2**7;
    # float8_e3m4 (bias 3): max (1 + 15/16) * 2**3; float8_e4m3b11fnuz (bias 11, fnuz):
    # max 1.875 * 2**(15 - 11), smallest subnormal 2**(1 - 11 - 3).
    e4m3, e3m4, b11 = (FORMATS[n] for n in ("float8_e4m3", "float8_e3m4", "float8_e4m3b11fnuz"))
    assert (e4m3.max, e4m3.infinities, e4m3.has_nan) == (240.0, True, True)
    assert (e3m4.max, e3m4.smallest_subnormal, e3m4.infinities) == (15.5, 2.0 ** -6, True)
    assert (b11.max, b11.smallest_subnormal, b11.signed_zero, b11.infinities) == (
        30.0, 2.0 ** -13, False, False)
    assert as_format("e4m3") is mpgrad.float8_e4m3fn  # the OCP format keeps the short alias


def test_tf32():
    f = mpgrad.tf32
    assert (f.exponent_bits, f.fraction_bits, f.bias, f.bits) == (8, 10, 127, 19)
    assert f.storage == np.dtype(np.float32)
    assert f.nan == "ieee" and f.infinities and f.has_nan and f.signed_zero
    assert not f.native  # float32 storage does not hold tf32's own 19-bit pattern
    two = Fraction(2)
    assert f.max == float((2 - two ** -10) * two ** 127)
    assert f.smallest_normal == float(two ** -126)
    assert f.smallest_subnormal == float(two ** (-126 - 10))
    assert f.eps == float(two ** -10)


# --- custom formats against an exact enumeration -------------------------------------------

def _enumerate(e: int, m: int, bias: int, nan: str, subnormals: bool):
    """Every finite non-negative value of the format, from its fields, as exact Fractions.

    IEEE 754: exponent field all ones is inf (fraction 0) or NaN. OCP "fn": only the
    all-ones exponent *and* fraction pattern is NaN. "fnuz": only 1000...0 is NaN (so only the
    negative zero pattern is lost). "none": every pattern is a number. Without subnormals the
    patterns with exponent field 0 and fraction != 0 are not values.
    """
    values = []
    top = 2 ** e - 1
    for ef in range(2 ** e):
        for mf in range(2 ** m):
            if nan == "ieee" and ef == top:
                continue
            if nan == "fn" and ef == top and mf == 2 ** m - 1:
                continue
            if ef == 0:
                if mf and not subnormals:
                    continue
                values.append(Fraction(mf, 2 ** m) * Fraction(2) ** (1 - bias))
            else:
                values.append((1 + Fraction(mf, 2 ** m)) * Fraction(2) ** (ef - bias))
    return sorted(set(values))


def _check_against_enumeration(fmt, e, m, bias, nan, subnormals):
    vals = _enumerate(e, m, bias, nan, subnormals)
    positive = [v for v in vals if v > 0]
    assert fmt.max == float(vals[-1])
    assert fmt.smallest_subnormal == float(positive[0])
    assert fmt.smallest_normal == float(Fraction(2) ** (1 - bias))
    assert fmt.bits == 1 + e + m
    if bias >= 1 and 1 in vals and vals[-1] > 1:  # eps is defined where 1 is a normal value
        assert fmt.eps == float(vals[vals.index(1) + 1] - 1)


def test_custom_e6m9():
    f = Format.custom(6, 9)
    assert f.name == "e6m9"
    assert (f.exponent_bits, f.fraction_bits, f.bias, f.nan, f.subnormals) == (
        6, 9, 31, "ieee", True)
    _check_against_enumeration(f, 6, 9, 31, "ieee", True)
    two = Fraction(2)  # by hand: emax = 62 - 31 = 31, emin = 1 - 31 = -30
    assert f.max == float((2 - two ** -9) * two ** 31)
    assert f.smallest_normal == float(two ** -30)
    assert f.smallest_subnormal == float(two ** -39)
    assert f.eps == float(two ** -9)
    assert f.storage == np.dtype(np.float32)


_GRID = [(e, m, nan, sub) for e in range(1, 6) for m in range(0, 5)
         for nan in ("ieee", "fn", "fnuz", "none") for sub in (True, False)
         if not (nan in ("ieee", "fn") and m == 0)  # invalid: no fraction bit for NaN
         and not (nan == "ieee" and e == 1)]        # see test_e1_ieee_format_max below


@pytest.mark.parametrize("e,m,nan,subnormals", _GRID)
def test_small_custom_formats_against_enumeration(e, m, nan, subnormals):
    f = Format.custom(e, m, nan=nan, subnormals=subnormals)
    assert f.nan == nan and f.subnormals == subnormals
    assert f.infinities == (nan == "ieee")
    assert f.has_nan == (nan != "none")
    assert f.signed_zero == (nan != "fnuz")
    _check_against_enumeration(f, e, m, 2 ** (e - 1) - 1, nan, subnormals)


@pytest.mark.parametrize("bias", [-3, 0, 5, 20])
def test_custom_bias(bias):
    f = Format.custom(5, 3, bias=bias, nan="fn")
    assert f.bias == bias and f.min_exponent == 1 - bias
    _check_against_enumeration(f, 5, 3, bias, "fn", True)


def test_e1_ieee_format_max():
    # e1m2, IEEE encoding, bias 0: exponent field 0 holds 0, 0.5, 1, 1.5 (subnormals,
    # m/4 * 2**(1-0)); field 1 holds inf/NaN. There are no normal numbers, so the largest
    # finite value is 1.5. Such a format must either be rejected or report max == 1.5.
    try:
        f = Format.custom(1, 2)
    except ValueError:
        return
    assert f.max == float(_enumerate(1, 2, 0, "ieee", True)[-1]) == 1.5
    assert f.smallest_normal <= f.max


@pytest.mark.parametrize("name,nan,bias", [
    ("float8_e4m3fn", "fn", None), ("float8_e4m3fnuz", "fnuz", 8),
    ("float8_e5m2fnuz", "fnuz", 16), ("float6_e2m3fn", "none", None),
    ("float6_e3m2fn", "none", None), ("float4_e2m1fn", "none", None),
    ("float8_e5m2", "ieee", None), ("bfloat16", "ieee", None), ("float8_e4m3", "ieee", None),
    ("float8_e3m4", "ieee", None), ("float8_e4m3b11fnuz", "fnuz", 11)])
def test_custom_reproduces_ml_dtypes_formats(name, nan, bias):
    fi = ml_dtypes.finfo(getattr(ml_dtypes, name))
    f = Format.custom(int(fi.nexp), int(fi.nmant), bias=bias, nan=nan)
    assert f.max == float(fi.max)
    assert f.smallest_normal == float(fi.smallest_normal)
    assert f.smallest_subnormal == float(fi.smallest_subnormal)
    assert f.eps == float(fi.eps)
    assert f.layout == FORMATS[name].layout
    assert f == FORMATS[name] and f is FORMATS[name]  # the same layout is the same format
    renamed = Format.custom(int(fi.nexp), int(fi.nmant), bias=bias, nan=nan, name="mine")
    assert renamed == FORMATS[name] and renamed.storage == FORMATS[name].storage
    assert renamed.name == "mine" and renamed.native


def test_custom_without_subnormals():
    f = Format.custom(5, 2, subnormals=False)
    assert not f.subnormals
    assert f.smallest_subnormal == f.smallest_normal == float(Fraction(2) ** -14)


def test_custom_equality_and_hash():
    assert Format.custom(5, 2) == Format.custom(5, 2)
    assert hash(Format.custom(5, 2)) == hash(Format.custom(5, 2))
    assert Format.custom(5, 2) != Format.custom(5, 2, nan="fnuz")
    assert Format.custom(5, 2) != Format.custom(5, 2, subnormals=False)


def _fits_float32(v: Fraction) -> bool:
    with np.errstate(over="ignore"):
        f32 = np.float32(float(v))
    return bool(np.isfinite(f32)) and Fraction(float(f32)) == v


@pytest.mark.parametrize("e,m,bias", [
    (6, 9, None), (8, 10, None), (8, 23, None), (8, 24, None), (9, 3, None), (11, 30, None),
    (5, 23, None), (7, 23, None), (7, 24, None), (8, 23, 128), (8, 10, 136), (8, 10, 140),
    (4, 3, None), (8, 7, 126), (8, 7, 127)])
def test_storage_choice(e, m, bias):
    f = Format.custom(e, m, bias=bias)
    b = 2 ** (e - 1) - 1 if bias is None else bias
    two = Fraction(2)
    # All values fit float32 iff the extreme ones do: the largest value, the smallest
    # subnormal (every value is a multiple of it) and 1 + eps (the full precision).
    witnesses = [(2 - two ** -m) * two ** (2 ** e - 2 - b), two ** (1 - b - m), 1 + two ** -m]
    expected = np.float32 if all(_fits_float32(w) for w in witnesses) else np.float64
    builtin = [g for g in FORMATS.values() if g.layout == f.layout]
    if builtin:  # a built-in layout keeps the built-in's storage
        assert f.storage == builtin[0].storage
        return
    assert f.storage == np.dtype(expected)
    if expected is np.float64:
        assert not all(_fits_float32(w) for w in witnesses)


def test_storage_float64_for_e11m30():
    assert Format.custom(11, 30).storage == np.dtype(np.float64)
    assert Format.custom(6, 9).storage == np.dtype(np.float32)


def test_custom_float64_layout_is_float64():
    f = Format.custom(11, 52)
    assert f.max == float(np.finfo(np.float64).max)
    assert f.smallest_subnormal == float(np.finfo(np.float64).smallest_subnormal)


@pytest.mark.parametrize("args,kwargs,match", [
    ((0, 3), {}, "exponent_bits"),
    ((12, 3), {}, "exponent_bits"),
    ((8, 53), {}, "fraction_bits"),
    ((8, -1), {}, "fraction_bits"),
    ((5, 0), {}, "fraction bit"),
    ((4, 0), {"nan": "fn"}, "fraction bit"),
    ((11, 52), {"bias": 1000}, "float64"),    # emax = 2046 - 1000 = 1046 > 1023
    ((11, 52), {"bias": 1024}, "float64"),    # smallest subnormal 2**(-1023-52) < 2**-1074
    ((11, 10), {"bias": 1100}, "float64"),
    ((5, 2), {"nan": "ocp"}, "fnuz"),          # the message lists the valid kinds
])
def test_invalid_custom_formats(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Format.custom(*args, **kwargs)


# --- as_format -------------------------------------------------------------------------------

@pytest.mark.parametrize("alias,name", [
    ("fp16", "float16"), ("half", "float16"), ("bf16", "bfloat16"), ("e4m3", "float8_e4m3fn"),
    ("tf32", "tf32"), ("fp32", "float32"), ("e5m2", "float8_e5m2"), ("fp4", "float4_e2m1fn"),
    ("FP16", "float16"), ("BF16", "bfloat16"), ("E4M3", "float8_e4m3fn"), ("TF32", "tf32"),
    ("Float8_E5M2FNUZ", "float8_e5m2fnuz"), (" half ", "float16"), ("e2m3", "float6_e2m3fn"),
    ("e3m2", "float6_e3m2fn"), ("e4m3fnuz", "float8_e4m3fnuz"), ("fp64", "float64"),
    ("e3m4", "float8_e3m4"), ("float8_e4m3", "float8_e4m3"), ("e4m3b11fnuz", "float8_e4m3b11fnuz")])
def test_as_format_aliases(alias, name):
    assert as_format(alias) is FORMATS[name]


@pytest.mark.parametrize("fmt", BUILTINS, ids=_name)
def test_as_format_names_and_formats(fmt):
    assert as_format(fmt) is fmt
    assert as_format(fmt.name) is fmt
    assert as_format(fmt.name.upper()) is fmt


def test_as_format_passes_custom_format_through():
    f = Format.custom(6, 9)
    assert as_format(f) is f


@pytest.mark.parametrize("fmt", WITH_FINFO, ids=_name)
def test_as_format_dtypes(fmt):
    dt = _reference_dtype(fmt.name)
    assert as_format(dt) is fmt
    assert as_format(dt.type) is fmt


def test_as_format_dtype_examples():
    assert as_format(np.float16) is mpgrad.float16
    assert as_format(np.dtype("float32")) is mpgrad.float32
    assert as_format(ml_dtypes.bfloat16) is mpgrad.bfloat16


def test_as_format_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        as_format("float7")
    msg = str(info.value)
    assert "float7" in msg
    for name in ("float16", "bfloat16", "tf32", "float8_e4m3fn", "float4_e2m1fn", "bf16", "fp16"):
        assert name in msg


@pytest.mark.parametrize("junk", [3.5, object(), [1, 2]])
def test_as_format_nonsense_is_type_error(junk):
    with pytest.raises(TypeError):
        as_format(junk)


@pytest.mark.parametrize("dt", [np.int32, np.dtype("int8"), np.complex64, np.bool_])
def test_as_format_non_float_dtype_is_value_error(dt):
    with pytest.raises(ValueError, match="dtype"):
        as_format(dt)


@pytest.mark.parametrize("fmt", BUILTINS + [Format.custom(6, 9)], ids=_name)
def test_formats_are_frozen_and_hashable(fmt):
    with pytest.raises(dataclasses.FrozenInstanceError):
        fmt.bias = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        fmt.name = "other"
    assert {fmt: 1}[fmt] == 1
    assert hash(fmt) == hash(dataclasses.replace(fmt))


def test_builtins_distinct():
    assert len(set(BUILTINS)) == len(BUILTINS) == len(BUILTIN_NAMES)
    assert len({f.layout for f in BUILTINS}) == len(BUILTIN_NAMES)


def test_top_level_exports():
    from mpgrad import (bfloat16, float4_e2m1fn, float6_e2m3fn, float6_e3m2fn,  # noqa: F401
                        float8_e3m4, float8_e4m3, float8_e4m3b11fnuz, float8_e4m3fn,
                        float8_e4m3fnuz, float8_e5m2, float8_e5m2fnuz, float16, float32,
                        float64, tf32)
    for name in BUILTIN_NAMES:
        assert getattr(mpgrad, name) is FORMATS[name]
        assert name in mpgrad.__all__
        assert isinstance(getattr(mpgrad, name), Format)


def test_max_is_finite_and_ordering():
    for f in BUILTINS:
        assert math.isfinite(f.max)
        assert 0 < f.smallest_subnormal <= f.smallest_normal < f.max
