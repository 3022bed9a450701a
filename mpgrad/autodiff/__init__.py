"""The autodiff layer: Tensor (data), policies and autocast (which format an op computes in),
and the engine (conversion, one rounding per op, the tape and backward)."""

from .engine import apply, backward, cast, composite, enable_grad, is_grad_enabled, no_grad
from .policy import Policy, autocast, compute_format, current_policy, use_policy
from .tensor import Tensor, arange, full, ones, rand, randn, tensor, zeros

__all__ = ["Tensor", "tensor", "zeros", "ones", "full", "arange", "randn", "rand", "Policy",
           "autocast", "use_policy", "compute_format", "current_policy", "apply", "backward",
           "cast", "composite", "no_grad", "enable_grad", "is_grad_enabled"]
