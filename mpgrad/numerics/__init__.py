"""The numerics layer: formats, exact rounding, bit patterns, error-free arithmetic and
correctly rounded elementary functions, on NumPy arrays (no Tensor, no tape)."""

from .formats import (FORMATS, Format, as_format, bfloat16, float4_e2m1fn, float6_e2m3fn,
                      float6_e3m2fn, float8_e3m4, float8_e4m3, float8_e4m3b11fnuz,
                      float8_e4m3fn, float8_e4m3fnuz, float8_e5m2,
                      float8_e5m2fnuz, float16, float32, float64, format_of_dtype, promote, tf32)
from .codes import to_float64
from .rounding import MODES, STOCHASTIC_BITS, RoundingStats, record_rounding, round_to
from .bits import (Description, describe, from_bits, next_down, next_up, to_bits, ulp,
                   ulp_distance)
from .rng import generator, get_rng_state, manual_seed, set_rng_state

__all__ = [
    "FORMATS", "Format", "as_format", "bfloat16", "float4_e2m1fn", "float6_e2m3fn",
    "float6_e3m2fn", "float8_e3m4", "float8_e4m3", "float8_e4m3b11fnuz",
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz",
    "float16", "float32", "float64", "format_of_dtype", "promote", "tf32", "to_float64",
    "MODES", "STOCHASTIC_BITS", "RoundingStats", "record_rounding", "round_to",
    "Description", "describe", "from_bits", "next_down", "next_up", "to_bits", "ulp",
    "ulp_distance", "generator", "get_rng_state", "manual_seed", "set_rng_state",
]
