"""Adam and AdamW: torch's single-tensor formulas (foreach=False, capturable=False)."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ..autodiff.tensor import Tensor
from ..numerics.formats import Format
from ..ops import add, div, mul, neg, sqrt
from ..ops.fused import lerp, muladd
from .optimizer import Optimizer, Update, hyperparameter

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    """torch.optim.Adam (torch/optim/adam.py, _single_tensor_adam), every operation rounded
    in the state format, numbers rounded to it first; fma(a, b, c) = a*b + c rounded once.

    With g the gradient (negated if maximize) and t the step (an exact integer):
      p = round(p * (1 - lr*wd))      if decoupled (AdamW), the factor computed in float64
      g = fma(wd, p, g)               otherwise, if wd != 0   # grad.add(p, alpha=wd)
      m = lerp(m, g, 1 - beta1)       # torch's kernel: w < 0.5: fma(w, round(g - m), m)
      v = fma(round((1 - beta2) * g), g, round(v * beta2))     # mul_ then addcmul_
      bc1 = 1 - beta1**t, bc2 = 1 - beta2**t, step_size = lr / bc1     (Python float64)
      denom = round(round(sqrt(v)) / sqrt(bc2)) + eps, rounded
      delta = round(round(-step_size * m) / denom)             # addcdiv_'s two roundings
      p = round(p + delta)
    amsgrad is not implemented.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
                 decoupled_weight_decay: bool = False, master_dtype: Format | str | None = None,
                 update_mode: str = "nearest_even", kahan: bool = False,
                 rng: np.random.Generator | int | None = None) -> None:
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                    "amsgrad": amsgrad, "maximize": maximize,
                    "decoupled_weight_decay": decoupled_weight_decay}
        self._validate_group(defaults)
        super().__init__(params, defaults, master_dtype=master_dtype,
                         update_mode=update_mode, kahan=kahan, rng=rng)

    def _validate_group(self, group: dict[str, Any]) -> None:
        lr, eps = hyperparameter("lr", group["lr"]), hyperparameter("eps", group["eps"])
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        beta1, beta2 = hyperparameter("betas[0]", betas[0]), hyperparameter("betas[1]", betas[1])
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {group['lr']}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {group['eps']}")
        if not 0.0 <= beta1 < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= beta2 < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= hyperparameter("weight_decay", group["weight_decay"]):
            raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")
        if group["amsgrad"]:
            raise NotImplementedError("amsgrad=True is not implemented in mpgrad.optim "
                                      "(only torch's default amsgrad=False)")

    def _state_keys(self, group: dict[str, Any]) -> tuple[set[str], set[str]]:
        keys = {"step", "exp_avg", "exp_avg_sq"}
        return keys, keys

    def _init_state(self, state: dict[str, Any], p: Tensor, group: dict[str, Any],
                    fmt: Format) -> None:
        state["step"] = 0
        state["exp_avg"] = Tensor(np.zeros(p.shape), fmt)
        state["exp_avg_sq"] = Tensor(np.zeros(p.shape), fmt)

    def _update(self, group: dict[str, Any], state: dict[str, Any], x: Tensor,
                grad: Tensor) -> Update:
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        g = neg(grad) if group["maximize"] else grad
        state["step"] += 1
        step = state["step"]
        decay = None
        if wd != 0:
            if group["decoupled_weight_decay"]:
                decay = 1 - lr * wd
            else:
                g = muladd(wd, x, g)
        m = lerp(state["exp_avg"], g, 1 - beta1)
        v = muladd(mul(g, 1 - beta2), g, mul(state["exp_avg_sq"], beta2))
        state["exp_avg"], state["exp_avg_sq"] = m, v
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        step_size = lr / bias_correction1
        denom = add(div(sqrt(v), bias_correction2 ** 0.5), eps)
        return Update(direction=div(mul(m, -step_size), denom), decay=decay)


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (default 1e-2)."""

    def __init__(self, params: Iterable, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 master_dtype: Format | str | None = None,
                 update_mode: str = "nearest_even", kahan: bool = False,
                 rng: np.random.Generator | int | None = None) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True, master_dtype=master_dtype,
                         update_mode=update_mode, kahan=kahan, rng=rng)
