"""SGD with momentum, dampening, Nesterov and weight decay: torch's single-tensor formulas."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ..autodiff.tensor import Tensor
from ..numerics.formats import Format
from ..ops import mul, neg
from ..ops.fused import muladd
from .optimizer import Optimizer, Update, hyperparameter

__all__ = ["SGD"]


class SGD(Optimizer):
    """torch.optim.SGD (torch/optim/sgd.py, _single_tensor_sgd), every operation rounded in
    the state format; fused operations (add with alpha) rounded once, as torch's kernels do.

    With g the gradient (negated if maximize), in the state format, numbers rounded to it:
      g = fma(weight_decay, p, g)                      # grad.add(p, alpha=weight_decay)
      buf = g (first step), else fma(1 - dampening, g, round(buf * momentum))
      g = fma(momentum, buf, g) if nesterov else buf
      delta = -lr * g: p = fma(-lr, g, p)              # p.add_(g, alpha=-lr), rounded once
    fma(a, b, c) is a*b + c rounded once; a Python number is rounded to the format first.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, *,
                 maximize: bool = False, master_dtype: Format | str | None = None,
                 update_mode: str = "nearest_even", kahan: bool = False,
                 rng: np.random.Generator | int | None = None) -> None:
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening,
                    "weight_decay": weight_decay, "nesterov": nesterov, "maximize": maximize}
        self._validate_group(defaults)
        super().__init__(params, defaults, master_dtype=master_dtype,
                         update_mode=update_mode, kahan=kahan, rng=rng)

    def _validate_group(self, group: dict[str, Any]) -> None:
        lr = hyperparameter("lr", group["lr"])
        momentum = hyperparameter("momentum", group["momentum"])
        dampening = hyperparameter("dampening", group["dampening"])
        weight_decay = hyperparameter("weight_decay", group["weight_decay"])
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {group['lr']}")
        if not 0.0 <= momentum:
            raise ValueError(f"Invalid momentum value: {group['momentum']}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")
        if group["nesterov"] and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _state_keys(self, group: dict[str, Any]) -> tuple[set[str], set[str]]:
        return {"momentum_buffer"}, set()

    def _update(self, group: dict[str, Any], state: dict[str, Any], x: Tensor,
                grad: Tensor) -> Update:
        g = neg(grad) if group["maximize"] else grad
        if group["weight_decay"] != 0:
            g = muladd(group["weight_decay"], x, g)
        momentum = group["momentum"]
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = g.detach()  # torch: grad.detach().clone()
            else:
                buf = muladd(1 - group["dampening"], g, mul(buf, momentum))
            state["momentum_buffer"] = buf
            g = muladd(momentum, buf, g) if group["nesterov"] else buf
        return Update(direction=g, scale=-group["lr"])
