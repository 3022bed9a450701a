"""Which format each operation computes in: promotion, frozen Policies and autocast."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..numerics.formats import Format, as_format, float32, promote
from .tensor import Tensor

__all__ = ["Policy", "promote", "autocast", "use_policy", "current_policy", "restored",
           "AUTOCAST_LOWER", "AUTOCAST_FLOAT32", "compute_format", "accumulate_model"]


_KEYS = {"p": "param", "param": "param", "params": "param", "c": "compute",
         "compute": "compute", "o": "output", "output": "output"}


@dataclass(frozen=True)
class Policy:
    """Formats for parameters, computation and outputs (jmp-style); immutable."""

    param: Format = float32
    compute: Format = float32
    output: Format = float32
    strict: bool = False  # True: an input in another format is an error, not a cast
    accumulate: Any = None  # a model for matmul, sum and mean; None: accumulate.default_model

    def __post_init__(self) -> None:
        for name in ("param", "compute", "output"):
            object.__setattr__(self, name, as_format(getattr(self, name)))

    @classmethod
    def parse(cls, spec: str, *, strict: bool = False) -> Policy:
        """A Policy from a string, as jmp.get_policy: 'p=f32,c=f16,o=f32' (or 'params=...,
        compute=...,output=...'), where params default to float32, compute follows params
        and output follows compute ('c=f16' is p=f32,c=f16,o=f16); or one format name for
        all three ('bf16')."""
        if "=" not in spec:
            if not spec.strip():
                raise ValueError("an empty policy: give 'p=..,c=..,o=..' or a format name")
            fmt = as_format(spec)
            return cls(fmt, fmt, fmt, strict=strict)
        values = {}
        for part in (p.strip() for p in spec.split(",")):
            key, sep, value = part.partition("=")
            if not sep or key.strip().lower() not in _KEYS:
                raise ValueError(f"bad policy item {part!r} in {spec!r}: expected p=, c= or o= "
                                 "followed by a format name, e.g. 'p=f32,c=f16,o=f32'")
            values[_KEYS[key.strip().lower()]] = as_format(value.strip())
        param = values.get("param", float32)
        compute = values.get("compute", param)
        return cls(param, compute, values.get("output", compute), strict=strict)

    def __str__(self) -> str:
        return f"p={self.param.name},c={self.compute.name},o={self.output.name}"

    def cast_to_param(self, x) -> Tensor:
        """x rounded to the parameter format (differentiable for a Tensor)."""
        return _cast(x, self.param)

    def cast_to_compute(self, x) -> Tensor:
        """x rounded to the compute format."""
        return _cast(x, self.compute)

    def cast_to_output(self, x) -> Tensor:
        """x rounded to the output format."""
        return _cast(x, self.output)


def _cast(x, fmt: Format) -> Tensor:
    """A Tensor through its (recorded) to(); other data as a new tensor rounded once."""
    return x.to(fmt) if isinstance(x, Tensor) else Tensor(x, fmt)


# torch.autocast's CUDA lists (aten/src/ATen/autocast_mode.cpp), as data: see docs/autograd.md.
AUTOCAST_LOWER = frozenset({"matmul", "linear"})
AUTOCAST_FLOAT32 = frozenset({
    "exp", "log", "pow", "softplus", "softmax", "log_softmax", "layer_norm", "sum", "mean",
    "mse_loss", "cross_entropy", "nll_loss"})


@dataclass(frozen=True)
class _Autocast:
    dtype: Format
    lower: frozenset = field(default=AUTOCAST_LOWER)
    float32_ops: frozenset = field(default=AUTOCAST_FLOAT32)


_state = threading.local()


def current_policy() -> Policy | _Autocast | None:
    """The innermost active Policy or autocast, or None."""
    stack = getattr(_state, "stack", [])
    return stack[-1] if stack else None


@contextmanager
def restored(item: Policy | _Autocast | None) -> Iterator:
    """Run the block under item, a value current_policy() returned (None: no policy)."""
    stack = _state.__dict__.setdefault("stack", [])
    stack.append(item)
    try:
        yield item
    finally:
        stack.pop()


def use_policy(policy: Policy | str) -> contextmanager:
    """Run every operation in the block in policy.compute (a Policy or 'p=..,c=..,o=..')."""
    return restored(Policy.parse(policy) if isinstance(policy, str) else policy)


def autocast(dtype: Format | str = "float16", *, enabled: bool = True,
             lower: frozenset | set | None = None, float32_ops: frozenset | set | None = None):
    """Like torch.autocast: matmul-like ops in dtype, sensitive ops in float32, others promote."""
    item = None if not enabled else _Autocast(
        as_format(dtype), frozenset(AUTOCAST_LOWER if lower is None else lower),
        frozenset(AUTOCAST_FLOAT32 if float32_ops is None else float32_ops))
    return restored(item)


def accumulate_model(given=None):
    """The accumulation model to use: the one given, else the active Policy's (None: the
    default model)."""
    active = current_policy()
    if given is None and isinstance(active, Policy):
        return active.accumulate
    return given


def compute_format(op: str, formats: list[Format]) -> Format:
    """The format op computes in, given its inputs' formats and the active policy."""
    active = current_policy()
    if isinstance(active, Policy):
        if active.strict and any(f != active.compute for f in formats):
            names = ", ".join(sorted({f.name for f in formats}))
            raise TypeError(f"{op}: inputs in {names} under strict policy {active} (compute "
                            f"{active.compute.name}); cast them first with "
                            f"mpgrad.cast(x, {active.compute.name!r})")
        return active.compute
    if isinstance(active, _Autocast):
        if op in active.lower:
            return active.dtype
        if op in active.float32_ops:
            return promote(float32, *formats)
    if op in AUTOCAST_LOWER:
        _check_same_format(op, formats)
    return promote(*formats)


def _check_same_format(op: str, formats: list[Format]) -> None:
    """Refuse operands of different formats, as torch.matmul and F.linear refuse mixed dtypes:
    promoting would silently compute an fp16 model fed float64 data in float64."""
    if all(f == formats[0] for f in formats):
        return
    names = " != ".join(dict.fromkeys(f.name for f in formats))
    target = min(formats, key=lambda f: f.precision).name
    raise RuntimeError(f"{op}: expected all operands to have the same format, but got: "
                       f"{names}; cast first, e.g. x.to({target!r}), or compute under "
                       f"mpgrad.autocast({target!r}) or mpgrad.use_policy({target!r})")
