"""Module: parameters registered by attribute assignment, children, state dicts."""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Iterator, Mapping, NamedTuple

import numpy as np

from ..autodiff import observe
from ..autodiff.tensor import Tensor
from ..numerics.formats import Format, as_format
from ..ops import cast
from .checkpoint import load, save

__all__ = ["Module", "LoadResult"]


def _is_torch_tensor(value: Any) -> bool:
    """Whether value is a torch tensor (recognised without importing torch)."""
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach")


def _is_parameter(value: Any) -> bool:
    """A parameter is a leaf Tensor with requires_grad=True."""
    return isinstance(value, Tensor) and value.is_leaf and value.requires_grad


class LoadResult(NamedTuple):
    """What load_state_dict(strict=False) skipped, as torch's return value."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Base class: assigning a parameter (leaf Tensor, requires_grad) or a Module registers it."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # --- registration ------------------------------------------------------------------
    def _registry(self, name: str) -> tuple[OrderedDict, OrderedDict]:
        params, modules = self.__dict__.get("_parameters"), self.__dict__.get("_modules")
        if params is None or modules is None:
            raise AttributeError(f"cannot assign {name!r} before Module.__init__() ran: call "
                                 f"super().__init__() first in {type(self).__name__}.__init__")
        return params, modules

    def __setattr__(self, name: str, value: Any) -> None:
        if _is_parameter(value) or isinstance(value, Module):
            params, modules = self._registry(name)
            params.pop(name, None), modules.pop(name, None), self.__dict__.pop(name, None)
            (modules if isinstance(value, Module) else params)[name] = value
            return
        params, modules = self.__dict__.get("_parameters", {}), self.__dict__.get("_modules", {})
        for kind, registry in (("parameter", params), ("submodule", modules)):
            if name in registry:
                if value is not None:
                    raise TypeError(
                        f"cannot assign a {type(value).__name__} to {kind} {name!r} of "
                        f"{type(self).__name__}: expected "
                        + ("a leaf Tensor with requires_grad=True" if kind == "parameter"
                           else "a Module") + " or None")
                registry[name] = None
                return
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        for registry in ("_parameters", "_modules"):
            found = self.__dict__.get(registry, {})
            if name in found:
                return found[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for registry in ("_parameters", "_modules"):
            if name in self.__dict__.get(registry, {}):
                del self.__dict__[registry][name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Tensor | None) -> None:
        """Register a parameter (or None, a declared but absent one, like a bias=False bias)."""
        if param is not None and not _is_parameter(param):
            raise TypeError(f"parameter {name!r} must be a leaf Tensor with requires_grad=True "
                            "(e.g. mpgrad.zeros(3, requires_grad=True)) or None")
        params, modules = self._registry(name)
        modules.pop(name, None), self.__dict__.pop(name, None)
        params[name] = param

    # --- traversal ---------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        """The direct submodules with their names, in registration order."""
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self) -> Iterator[Module]:
        """The direct submodules, in registration order."""
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and every submodule (depth first, each once), with dotted names."""
        seen: set[int] = set()

        def walk(module: Module, name: str):
            if id(module) in seen:
                return
            seen.add(id(module))
            yield name, module
            for child_name, child in module.named_children():
                yield from walk(child, f"{name}.{child_name}" if name else child_name)
        yield from walk(self, prefix)

    def modules(self) -> Iterator[Module]:
        """This module and every submodule (depth first, each once)."""
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        """Every parameter with its dotted name ('0.weight'), in registration order, each once."""
        seen: set[int] = set()
        for module_name, module in self.named_modules(prefix):
            for name, p in module._parameters.items():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{module_name}.{name}" if module_name else name), p

    def parameters(self) -> Iterator[Tensor]:
        """Every parameter, in the order of named_parameters()."""
        for _, p in self.named_parameters():
            yield p

    # --- modes, formats, gradients -------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Set training mode on this module and every submodule; returns self."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        """Set evaluation mode (train(False)); returns self."""
        return self.train(False)

    def to(self, dtype: Format | str, mode: str = "nearest_even", *, rng=None) -> Module:
        """Round every parameter once to dtype, in place; returns self (build optimizers after).

        A parameter whose format changes becomes a new leaf (requires_grad, no grad); one
        already in dtype is kept.
        """
        fmt = as_format(dtype)
        replaced: dict[int, Tensor] = {}
        for module in self.modules():
            for name, p in module._parameters.items():
                if p is None or p.dtype == fmt:
                    continue
                if id(p) not in replaced:  # a shared parameter stays shared
                    replaced[id(p)] = cast(p.detach(), fmt, mode, rng=rng).requires_grad_()
                module._parameters[name] = replaced[id(p)]
        return self

    def zero_grad(self) -> None:
        """Forget every parameter's gradient (grad = None, as torch's default)."""
        for p in self.parameters():
            p.grad = None

    # --- state ---------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict[str, Tensor]:
        """Name -> detached snapshot of each parameter (later updates do not change it)."""
        return OrderedDict((name, p.detach()) for name, p in self.named_parameters())

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> LoadResult:
        """Copy state_dict's values (mpgrad or torch tensors) into the parameters, which are
        kept as objects, bit for bit; all or nothing.

        Everything is checked first: missing and unexpected names (with strict), shapes and
        formats (always). A torch tensor counts as mpgrad.Tensor(t) of its own format.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"load_state_dict expects a dict of name -> Tensor, got "
                            f"{type(state_dict).__name__}")
        own = OrderedDict(self.named_parameters())
        missing = [n for n in own if n not in state_dict]
        unexpected = [n for n in state_dict if n not in own]
        problems, sources = [], {}
        if strict and missing:
            problems.append(f"missing parameters: {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected names: {', '.join(map(str, unexpected))}")
        for name, p in own.items():
            if name not in state_dict:
                continue
            src = state_dict[name]
            if _is_torch_tensor(src):
                try:
                    src = Tensor(src.detach())
                except (TypeError, ValueError) as error:
                    problems.append(f"{name}: the torch tensor cannot be read: {error}")
                    continue
            if not isinstance(src, Tensor):
                problems.append(f"{name}: expected an mpgrad Tensor, got {type(src).__name__}")
            elif src.shape != p.shape:
                problems.append(f"{name}: shape {src.shape} in the state dict, {p.shape} in "
                                "the module")
            elif src.dtype != p.dtype:
                problems.append(f"{name}: format {src.dtype.name} in the state dict, "
                                f"{p.dtype.name} in the module (convert with module.to("
                                f"{src.dtype.name!r}) first)")
            else:
                sources[name] = src
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__}: nothing loaded:\n  "
                             + "\n  ".join(problems))
        for name, src in sources.items():
            # the stored bits themselves, as copy_ does it but without its rounding, which
            # would canonicalise NaN payloads: a new read-only array (grad, hooks kept)
            stored = np.array(src.data, copy=True)
            stored.flags.writeable = False
            own[name].data = stored
        return LoadResult(missing, unexpected)

    def save(self, path: str | os.PathLike) -> None:
        """Write the parameters' exact bits to an .npz file (see mpgrad.nn.save)."""
        save(self, path)

    def load(self, path: str | os.PathLike, strict: bool = True) -> LoadResult:
        """Load parameters from a file written by save (checked in full before copying)."""
        return self.load_state_dict(load(path), strict)

    # --- calling and printing -------------------------------------------------------------
    def forward(self, *args, **kwargs):
        """The computation; subclasses define it."""
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        if not observe.active():
            return self.forward(*args, **kwargs)
        with observe.in_module(self):
            out = self.forward(*args, **kwargs)
        observe.module_output(self, out)
        return out

    def extra_repr(self) -> str:
        """The text inside the parentheses of this module's repr."""
        return ""

    def __repr__(self) -> str:
        children = [f"  ({name}): " + repr(m).replace("\n", "\n  ")
                    for name, m in self.named_children()]
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + "\n" + "\n".join(children) + "\n)"
