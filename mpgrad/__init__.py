"""mpgrad: a pure-NumPy reference autodiff framework that emulates low-precision arithmetic.

The layers, each importing only the ones above it in this list:
numerics (formats, rounding, exact arithmetic) -> accumulate (accumulation models) ->
autodiff (Tensor, policy, engine) -> ops -> nn, optim, amp -> diagnostics -> testing -> demo.
"""

__version__ = "0.1.0"

from .numerics import (FORMATS, MODES, STOCHASTIC_BITS, Description, Format, RoundingStats,
                       as_format, bfloat16, describe, float4_e2m1fn, float6_e2m3fn,
                       float6_e3m2fn, float8_e3m4, float8_e4m3, float8_e4m3b11fnuz,
                       float8_e4m3fn, float8_e4m3fnuz, float8_e5m2,
                       float8_e5m2fnuz, float16, float32, float64, from_bits, get_rng_state,
                       manual_seed, set_rng_state,
                       next_down, next_up, promote, record_rounding, round_to, tf32, to_bits,
                       to_float64, ulp, ulp_distance)
from . import accumulate
from .accumulate import hardware, mma, probe
from .autodiff import (Policy, Tensor, arange, autocast, enable_grad, full, is_grad_enabled,
                       no_grad, ones, rand, randn, tensor, use_policy, zeros)
from . import ops
from .ops import *  # noqa: F401,F403  (every op as mpgrad.<name>)
from . import amp, diagnostics, nn, optim, testing
from .testing import golden

__all__ = [
    "__version__",
    "FORMATS", "Format", "as_format", "bfloat16", "float4_e2m1fn", "float6_e2m3fn",
    "float6_e3m2fn", "float8_e3m4", "float8_e4m3", "float8_e4m3b11fnuz",
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz",
    "float16", "float32", "float64", "tf32", "manual_seed", "get_rng_state", "set_rng_state",
    "Description", "describe", "from_bits", "next_down", "next_up", "to_bits", "ulp",
    "ulp_distance",
    "MODES", "STOCHASTIC_BITS", "RoundingStats", "record_rounding", "round_to", "to_float64",
    "enable_grad", "is_grad_enabled", "no_grad", "Policy", "autocast", "promote", "use_policy",
    "Tensor", "arange", "full", "ones", "rand", "randn", "tensor", "zeros", "ops", "testing",
    "accumulate", "hardware", "mma", "probe", "amp", "nn", "optim", "golden", "diagnostics",
    *ops.__all__,
]
