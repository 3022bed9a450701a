"""mpgrad: a pure-NumPy reference autodiff framework that emulates low-precision arithmetic."""

from .formats import (FORMATS, Format, as_format, bfloat16, float4_e2m1fn, float6_e2m3fn,
                      float6_e3m2fn, float8_e4m3fn, float8_e4m3fnuz, float8_e5m2,
                      float8_e5m2fnuz, float16, float32, float64, tf32)
from .bits import (Description, describe, from_bits, next_down, next_up, to_bits, ulp,
                   ulp_distance)
from .rng import manual_seed
from .autograd import enable_grad, is_grad_enabled, no_grad
from .policy import Policy, autocast, promote, use_policy
from .tensor import Tensor, arange, full, ones, rand, randn, tensor, zeros
from .ops import *  # noqa: F401,F403  (every op as mpgrad.<name>)
from . import accumulate, amp, nn, ops, optim, testing
from .accumulate import hardware
from .rounding import (MODES, STOCHASTIC_BITS, RoundingStats, record_rounding, round_to,
                       to_float64)

__all__ = [
    "FORMATS", "Format", "as_format", "bfloat16", "float4_e2m1fn", "float6_e2m3fn",
    "float6_e3m2fn", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz",
    "float16", "float32", "float64", "tf32", "manual_seed",
    "Description", "describe", "from_bits", "next_down", "next_up", "to_bits", "ulp",
    "ulp_distance",
    "MODES", "STOCHASTIC_BITS", "RoundingStats", "record_rounding", "round_to", "to_float64",
    "enable_grad", "is_grad_enabled", "no_grad", "Policy", "autocast", "promote", "use_policy",
    "Tensor", "arange", "full", "ones", "rand", "randn", "tensor", "zeros", "ops", "testing",
    "accumulate", "hardware", "amp", "nn", "optim",
    *ops.__all__,
]
