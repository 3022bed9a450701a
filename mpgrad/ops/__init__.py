"""mpgrad operations: every function takes Tensors (or numbers) and returns a Tensor.

Importing this package also binds Tensor's operators and methods (see methods.py).
"""

from ..autodiff.engine import cast
from .composite import gelu, silu, softplus
from .elementwise import (abs, add, clamp, div, eq, erf, exp, ge, gt, le, log, lt, maximum,
                          minimum, mul, ne, neg, pow, relu, sigmoid, sign, sqrt, sub, tanh,
                          where)
from .fused import lerp, muladd
from .linalg import matmul
from .reduce import mean, sum
from .shape import (broadcast_to, concatenate, expand, getitem, index_add, permute, reshape,
                    stack, transpose)
from . import methods  # noqa: F401  (binds Tensor's operators)

__all__ = [
    "cast", "gelu", "silu", "softplus", "abs", "add", "clamp", "div", "eq", "erf", "exp", "ge",
    "gt", "le", "log", "lt", "maximum", "minimum", "mul", "ne", "neg", "pow", "relu",
    "sigmoid", "sign", "sqrt", "sub", "tanh", "where", "lerp", "muladd", "matmul", "mean",
    "sum", "broadcast_to", "concatenate", "expand", "getitem", "index_add", "permute",
    "reshape", "stack", "transpose",
]
