"""mpgrad operations: every function takes Tensors (or numbers) and returns a Tensor."""

from . import core
from .cast import cast
from .composite import gelu, silu, softplus
from .elementwise import (abs, add, clamp, div, eq, erf, exp, ge, gt, le, log, lt, maximum,
                          minimum, mul, ne, neg, pow, relu, sigmoid, sign, sqrt, sub, tanh,
                          where)
from .linalg import matmul
from .reduce import mean, sum
from .shape import (broadcast_to, concatenate, expand, getitem, index_add, permute, reshape,
                    stack, transpose)

__all__ = [
    "cast", "gelu", "silu", "softplus", "abs", "add", "clamp", "div", "eq", "erf", "exp", "ge",
    "gt", "le", "log", "lt", "maximum", "minimum", "mul", "ne", "neg", "pow", "relu",
    "sigmoid", "sign", "sqrt", "sub", "tanh", "where", "matmul", "mean", "sum", "broadcast_to",
    "concatenate", "expand", "getitem", "index_add", "permute", "reshape", "stack", "transpose",
]

# Ops reachable as Tensor methods: t.exp(), t.sum(axis), t.reshape(2, 3), t.to(...), ...
METHODS = frozenset({
    "cast", "gelu", "silu", "softplus", "abs", "add", "clamp", "div", "erf", "exp", "log",
    "maximum", "minimum", "mul", "neg", "pow", "relu", "sigmoid", "sign", "sqrt", "sub", "tanh",
    "matmul", "mean", "sum", "broadcast_to", "expand", "permute", "reshape", "transpose"})
