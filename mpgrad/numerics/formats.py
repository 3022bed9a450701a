"""Number formats as data: one frozen `Format` row per format."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import cached_property

import ml_dtypes
import numpy as np

__all__ = [
    "Format", "as_format", "format_of_dtype", "promote", "FORMATS",
    "float64", "float32", "tf32", "float16", "bfloat16",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
    "float8_e4m3", "float8_e3m4", "float8_e4m3b11fnuz",
    "float6_e2m3fn", "float6_e3m2fn", "float4_e2m1fn",
]

# How a format spends its top exponent field (see docs/formats-and-rounding.md):
#   "ieee": all-ones exponent holds inf (fraction 0) and NaN (fraction != 0);
#   "fn":   finite-only, the single all-ones pattern S.1111.111 is NaN (OCP E4M3);
#   "fnuz": finite-only, no negative zero, the pattern 1000...0 is the only NaN;
#   "none": finite-only, no NaN at all (OCP MX FP6/FP4).
NAN_ENCODINGS = ("ieee", "fn", "fnuz", "none")


@dataclass(frozen=True, eq=False)
class Format:
    """A binary floating-point format: sign, exponent field, fraction field.

    Two formats are equal when their layouts are: the same values with the same encodings.
    The name is a label and the storage dtype a container, so Format.custom(8, 23) equals
    float32; the engine and cast re-store a tensor whose storage dtype differs (exactly).
    """

    name: str
    exponent_bits: int
    fraction_bits: int
    bias: int
    nan: str = "ieee"
    subnormals: bool = True
    storage: np.dtype = field(default=np.dtype(np.float64))

    def __post_init__(self) -> None:
        if self.nan not in NAN_ENCODINGS:
            raise ValueError(f"nan must be one of {NAN_ENCODINGS}, got {self.nan!r}")
        if not 1 <= self.exponent_bits <= 11 or not 0 <= self.fraction_bits <= 52:
            raise ValueError(
                f"{self.name}: need 1 <= exponent_bits <= 11 and 0 <= fraction_bits <= 52, "
                f"got e{self.exponent_bits}m{self.fraction_bits}")
        if self.nan in ("ieee", "fn") and self.fraction_bits < 1:
            raise ValueError(f"{self.name}: nan={self.nan!r} needs a fraction bit to encode NaN")
        if self.max_exponent < self.min_exponent:
            raise ValueError(f"{self.name}: e{self.exponent_bits} with nan={self.nan!r} leaves "
                             "no normal numbers; use more exponent bits")
        if self.max_exponent > 1023 or self.min_exponent - self.fraction_bits < -1074:
            raise ValueError(f"{self.name}: its range does not fit in float64")
        object.__setattr__(self, "storage", np.dtype(self.storage))

    # --- derived parameters -------------------------------------------------------
    @property
    def bits(self) -> int:
        """Total width in bits (sign + exponent + fraction)."""
        return 1 + self.exponent_bits + self.fraction_bits

    @property
    def precision(self) -> int:
        """Significand bits p, counting the implicit leading bit."""
        return self.fraction_bits + 1

    @property
    def infinities(self) -> bool:
        """Whether the format encodes +-inf."""
        return self.nan == "ieee"

    @property
    def has_nan(self) -> bool:
        """Whether the format encodes NaN."""
        return self.nan != "none"

    @property
    def signed_zero(self) -> bool:
        """Whether -0 exists (false for the 'fnuz' formats)."""
        return self.nan != "fnuz"

    @property
    def min_exponent(self) -> int:
        """Exponent of the smallest normal number, emin = 1 - bias."""
        return 1 - self.bias

    @property
    def max_exponent(self) -> int:
        """Exponent of the largest finite number, emax."""
        top_field = 2 ** self.exponent_bits - (2 if self.nan == "ieee" else 1)
        return top_field - self.bias

    @property
    def max_fraction(self) -> int:
        """Fraction field of the largest finite number."""
        return 2 ** self.fraction_bits - (2 if self.nan == "fn" else 1)

    @property
    def max_code(self) -> int:
        """Bit pattern (without sign) of the largest finite number."""
        return ((self.max_exponent + self.bias) << self.fraction_bits) | self.max_fraction

    @cached_property  # computed once per format (exactly, with Fractions)
    def max(self) -> float:
        """Largest finite value."""
        return float(Fraction(2 ** self.fraction_bits + self.max_fraction)
                     * Fraction(2) ** (self.max_exponent - self.fraction_bits))

    @cached_property  # computed once per format (exactly, with Fractions)
    def smallest_normal(self) -> float:
        """Smallest positive normal value, 2**emin."""
        return float(Fraction(2) ** self.min_exponent)

    @cached_property  # computed once per format (exactly, with Fractions)
    def smallest_subnormal(self) -> float:
        """Smallest positive value (the smallest normal when there are no subnormals)."""
        if not self.subnormals:
            return self.smallest_normal
        return float(Fraction(2) ** (self.min_exponent - self.fraction_bits))

    @cached_property  # computed once per format (exactly, with Fractions)
    def eps(self) -> float:
        """Machine epsilon 2**-fraction_bits: the gap above 1 where 1 is a normal number."""
        return float(Fraction(2) ** -self.fraction_bits)

    @property
    def unit_roundoff(self) -> float:
        """u = eps / 2, the relative error bound of round-to-nearest."""
        return self.eps / 2

    @property
    def native(self) -> bool:
        """True when the storage dtype holds this format's own bit pattern."""
        return self.storage in _NATIVE and _NATIVE[self.storage] == self.layout

    @property
    def layout(self) -> tuple:
        """(exponent_bits, fraction_bits, bias, nan, subnormals): what makes two formats equal."""
        return (self.exponent_bits, self.fraction_bits, self.bias, self.nan, self.subnormals)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Format) and self.layout == other.layout

    def __hash__(self) -> int:
        return hash(self.layout)

    def contains(self, other: Format) -> bool:
        """Whether every value of other (infinities and -0 included) is a value of self."""
        return (self.precision >= other.precision and self.max >= other.max
                and self.smallest_subnormal <= other.smallest_subnormal
                and (self.infinities or not other.infinities)
                and (self.signed_zero or not other.signed_zero))

    @classmethod
    def custom(cls, exponent_bits: int, fraction_bits: int, *, bias: int | None = None,
               nan: str = "ieee", subnormals: bool = True, name: str | None = None) -> Format:
        """An IEEE-style format e<E>m<M>: a built-in format when one has this layout (renamed
        if a name is given), else stored in float32 when it fits there, else float64."""
        bias = 2 ** (exponent_bits - 1) - 1 if bias is None else bias
        fmt = cls(name or f"e{exponent_bits}m{fraction_bits}", exponent_bits, fraction_bits,
                  bias, nan, subnormals, np.float64)
        builtin = next((f for f in FORMATS.values() if f == fmt), None)
        if builtin is not None:
            return builtin if name is None else replace(builtin, name=name)
        fits32 = (fmt.precision <= 24 and fmt.max_exponent <= 127
                  and fmt.min_exponent - fmt.fraction_bits >= -149)
        return replace(fmt, storage=np.float32) if fits32 else fmt

    def __repr__(self) -> str:
        return f"mpgrad.{self.name}" if FORMATS.get(self.name) == self else (
            f"Format.custom({self.exponent_bits}, {self.fraction_bits}, bias={self.bias}, "
            f"nan={self.nan!r}, subnormals={self.subnormals})")


def _row(name: str, e: int, m: int, nan: str, storage, bias: int | None = None) -> Format:
    return Format(name, e, m, 2 ** (e - 1) - 1 if bias is None else bias, nan, True, storage)


# The built-in formats. Adding a format is adding a row.
float64 = _row("float64", 11, 52, "ieee", np.float64)
float32 = _row("float32", 8, 23, "ieee", np.float32)
tf32 = _row("tf32", 8, 10, "ieee", np.float32)
float16 = _row("float16", 5, 10, "ieee", np.float16)
bfloat16 = _row("bfloat16", 8, 7, "ieee", ml_dtypes.bfloat16)
float8_e4m3fn = _row("float8_e4m3fn", 4, 3, "fn", ml_dtypes.float8_e4m3fn)
float8_e5m2 = _row("float8_e5m2", 5, 2, "ieee", ml_dtypes.float8_e5m2)
float8_e4m3fnuz = _row("float8_e4m3fnuz", 4, 3, "fnuz", ml_dtypes.float8_e4m3fnuz, bias=8)
float8_e5m2fnuz = _row("float8_e5m2fnuz", 5, 2, "fnuz", ml_dtypes.float8_e5m2fnuz, bias=16)
float8_e4m3 = _row("float8_e4m3", 4, 3, "ieee", ml_dtypes.float8_e4m3)  # IEEE-style: max 240
float8_e3m4 = _row("float8_e3m4", 3, 4, "ieee", ml_dtypes.float8_e3m4)
float8_e4m3b11fnuz = _row("float8_e4m3b11fnuz", 4, 3, "fnuz", ml_dtypes.float8_e4m3b11fnuz,
                          bias=11)
float6_e2m3fn = _row("float6_e2m3fn", 2, 3, "none", ml_dtypes.float6_e2m3fn)
float6_e3m2fn = _row("float6_e3m2fn", 3, 2, "none", ml_dtypes.float6_e3m2fn)
float4_e2m1fn = _row("float4_e2m1fn", 2, 1, "none", ml_dtypes.float4_e2m1fn)

FORMATS: dict[str, Format] = {f.name: f for f in (
    float64, float32, tf32, float16, bfloat16, float8_e4m3fn, float8_e5m2, float8_e4m3fnuz,
    float8_e5m2fnuz, float8_e4m3, float8_e3m4, float8_e4m3b11fnuz, float6_e2m3fn,
    float6_e3m2fn, float4_e2m1fn)}
# ml_dtypes' float8_e8m0fnu (no sign, no zero) and float8_e5m3fnu (no sign) are not Format
# rows: every Format has a sign bit. Tensor refuses their arrays with a TypeError.

# Storage dtypes that hold a format's own encoding (tf32 and custom formats do not).
_NATIVE = {f.storage: f.layout for f in FORMATS.values() if f.name != "tf32"}

ALIASES: dict[str, str] = {
    "f64": "float64", "fp64": "float64", "double": "float64",
    "f32": "float32", "fp32": "float32", "single": "float32", "full": "float32",
    "fp19": "tf32",
    "f16": "float16", "fp16": "float16", "half": "float16",
    "bf16": "bfloat16",
    "e4m3": "float8_e4m3fn", "fp8_e4m3": "float8_e4m3fn", "e4m3fn": "float8_e4m3fn",
    "e5m2": "float8_e5m2", "fp8_e5m2": "float8_e5m2",
    "e4m3fnuz": "float8_e4m3fnuz", "e5m2fnuz": "float8_e5m2fnuz",
    "e3m4": "float8_e3m4", "fp8_e3m4": "float8_e3m4", "e4m3b11fnuz": "float8_e4m3b11fnuz",
    "e2m3": "float6_e2m3fn", "fp6_e2m3": "float6_e2m3fn",
    "e3m2": "float6_e3m2fn", "fp6_e3m2": "float6_e3m2fn",
    "e2m1": "float4_e2m1fn", "fp4": "float4_e2m1fn", "fp4_e2m1": "float4_e2m1fn",
}

_BY_DTYPE = {f.storage: f for f in FORMATS.values() if f.name != "tf32"}


def format_of_dtype(dtype) -> Format | None:
    """The built-in format a NumPy/ml_dtypes storage dtype holds, or None."""
    return _BY_DTYPE.get(np.dtype(dtype))


def promote(*formats: Format) -> Format:
    """The narrowest of the inputs that holds all their values, else float32, else float64."""
    for candidate in (*formats, float32, float64):
        if all(candidate.contains(f) for f in formats):
            return candidate
    names = ", ".join(f.name for f in formats)
    raise ValueError(f"no built-in format holds every value of {names}")


def as_format(x: Format | str | np.dtype | type) -> Format:
    """The Format named by a Format, a name or alias ('bf16', 'e4m3', ...) or a dtype."""
    if isinstance(x, Format):
        return x
    if isinstance(x, str):
        key = x.strip().lower()
        key = ALIASES.get(key, key)
        if key in FORMATS:
            return FORMATS[key]
        names = sorted(set(FORMATS) | set(ALIASES))
        raise ValueError(f"unknown format {x!r}; valid names: {', '.join(names)}; "
                         "or use Format.custom(exponent_bits, fraction_bits)")
    if x is None:
        raise TypeError("a format is required: pass a Format, a name such as 'bf16', or a dtype")
    try:
        dtype = np.dtype(x)
    except TypeError:
        raise TypeError(f"cannot interpret {x!r} as a format: pass a Format, a name such as "
                        "'bf16', or a NumPy/ml_dtypes floating dtype") from None
    if dtype in _BY_DTYPE:
        return _BY_DTYPE[dtype]
    raise ValueError(f"dtype {dtype} has no mpgrad format; supported dtypes: "
                     f"{', '.join(str(d) for d in _BY_DTYPE)}")
