"""Layers: Linear, ReLU, GELU, Sequential, MLP, LayerNorm, Dropout (as torch.nn's)."""

from __future__ import annotations

import math
import numbers
from typing import Callable, Iterator, Sequence

import numpy as np

from ..autodiff.tensor import Tensor, ones, zeros
from ..numerics import rng as _rng
from ..numerics.formats import Format
from . import functional as F
from . import init
from .module import Module

__all__ = ["Linear", "ReLU", "GELU", "Sequential", "MLP", "LayerNorm", "Dropout"]


class Linear(Module):
    """y = x @ weight.T + bias, with weight (out, in) and bias (out,) in dtype.

    Initialised as torch: weight by kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(in),
    1/sqrt(in)), then bias by U(-1/sqrt(in), 1/sqrt(in)), both drawn in float64 from
    mpgrad's generator (or rng) and rounded once to dtype.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: Format | str = "float32", rng=None) -> None:
        super().__init__()
        if in_features < 0 or out_features < 0:
            raise ValueError(f"Linear needs non-negative sizes, got in_features={in_features}, "
                             f"out_features={out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        gen = _rng.generator(rng)  # one generator for both draws (an int seed gives one)
        self.weight = zeros(out_features, in_features, dtype=dtype, requires_grad=True)
        init.kaiming_uniform_(self.weight, a=math.sqrt(5), rng=gen)
        if bias:
            self.bias = zeros(out_features, dtype=dtype, requires_grad=True)
            bound = 1 / math.sqrt(in_features) if in_features > 0 else 0.0
            init.uniform_(self.bias, -bound, bound, rng=gen)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        """F.linear(x, weight, bias)."""
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, dtype={self.weight.dtype.name}")


class ReLU(Module):
    """max(x, 0)."""

    def forward(self, x: Tensor) -> Tensor:
        """F.relu(x)."""
        return F.relu(x)


class GELU(Module):
    """GELU, exact (erf) or approximate='tanh'."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        """F.gelu(x, approximate)."""
        return F.gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class Sequential(Module):
    """Modules applied in turn, registered under the names '0', '1', ..."""

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential takes Modules, argument {i} is a "
                                f"{type(m).__name__}")
            setattr(self, str(i), m)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, index: int | slice) -> Module:
        items = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(*items[index])
        try:
            return items[index]
        except IndexError:
            raise IndexError(f"index {index} is out of range for a Sequential of "
                             f"{len(items)} modules") from None

    def forward(self, x: Tensor) -> Tensor:
        """Each module applied to the previous one's output."""
        for m in self._modules.values():
            x = m(x)
        return x


class MLP(Sequential):
    """Linear, activation(), Linear, ... for sizes (in, hidden..., out); no final activation.

    activation is a Module class (or any callable returning a new Module).

    Named as torch's Sequential: '0' (Linear), '1' (activation), '2' (Linear), ...
    """

    def __init__(self, sizes: Sequence[int], activation: Callable[[], Module] = ReLU,
                 bias: bool = True, dtype: Format | str = "float32", rng=None) -> None:
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2:
            raise ValueError(f"MLP needs at least (in, out) sizes, got {sizes}")
        gen = _rng.generator(rng)
        layers: list[Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(Linear(n_in, n_out, bias, dtype, rng=gen))
            if i < len(sizes) - 2:
                layers.append(activation())
        super().__init__(*layers)


class LayerNorm(Module):
    """F.layer_norm over the last axes, with weight (ones) and bias (zeros) in dtype."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True,
                 dtype: Format | str = "float32") -> None:
        super().__init__()
        shape = (normalized_shape,) if np.isscalar(normalized_shape) else tuple(
            normalized_shape)
        self.normalized_shape = tuple(int(n) for n in shape)
        self.eps = float(eps)
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = ones(self.normalized_shape, dtype=dtype, requires_grad=True)
            if bias:
                self.bias = zeros(self.normalized_shape, dtype=dtype, requires_grad=True)
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        """F.layer_norm(x, normalized_shape, weight, bias, eps)."""
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


class Dropout(Module):
    """F.dropout with probability p while training, the identity in eval mode.

    Masks come from rng (an int seed makes one generator at construction) or mpgrad's
    global generator.
    """

    def __init__(self, p: float = 0.5, rng=None) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
            raise ValueError(f"dropout probability must lie in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng = None if rng is None else _rng.generator(rng)

    def forward(self, x: Tensor) -> Tensor:
        """F.dropout(x, p, training, rng)."""
        return F.dropout(x, self.p, self.training, self.rng)

    def extra_repr(self) -> str:
        return f"p={self.p}"
