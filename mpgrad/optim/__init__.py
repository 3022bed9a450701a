"""Optimizers (SGD, Adam, AdamW) and gradient clipping, every operation rounded as documented.

They follow PyTorch's single-tensor formulas operation by operation (docs/optim.md), in the
parameters' format or in a master format, with a choice of how the parameter is written:
rounded to nearest, stochastically, or Kahan-compensated.
"""

from .adam import Adam, AdamW
from .clip import clip_grad_norm_, clip_grad_value_, vector_norm
from .optimizer import UPDATE_MODES, Optimizer, Update
from .sgd import SGD

__all__ = ["Optimizer", "Update", "UPDATE_MODES", "SGD", "Adam", "AdamW",
           "clip_grad_norm_", "clip_grad_value_", "vector_norm"]
