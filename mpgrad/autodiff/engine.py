"""The engine every op goes through: compute format, conversion, one rounding, the tape.

An op is declared once, as an `Op` row: its forward (on exact values, or on storage arrays
for ops that only move values) next to its vector-Jacobian product (written with mpgrad ops,
so the backward pass rounds by the same rules). `apply` does the shared work: it picks the
compute format (autodiff.policy), converts the inputs to it (a recorded, differentiable
`cast`, once per operand), rounds the exact result once to it and records a `Node`.

A node keeps the policy it ran under, and `backward` runs its VJP under that policy again,
so a gradient has the same bits wherever backward() is called. The engine alone turns a
VJP's output into an input's gradient (summed over broadcast axes under the node's
accumulation model, rounded to the input's format) and adds gradients that meet.
"""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from ..accumulate import default_model, reduce_sum
from ..numerics.exact import clean_pair, two_sum
from ..numerics.formats import Format, as_format
from ..numerics.rounding import RoundingStats, round_to, to_float64
from . import observe
from .policy import Policy, accumulate_model, compute_format, current_policy, restored
from .tensor import Tensor, check_like, is_torch_tensor

__all__ = ["no_grad", "enable_grad", "is_grad_enabled", "Op", "Ctx", "Node", "apply", "cast",
           "as_tensor", "composite", "backward", "unbroadcast"]

# --- grad mode ------------------------------------------------------------------------
_mode = threading.local()


def is_grad_enabled() -> bool:
    """Whether operations are being recorded for backward."""
    return getattr(_mode, "enabled", True)


@contextmanager
def _grad_mode(enabled: bool) -> Iterator[None]:
    previous = is_grad_enabled()
    _mode.enabled = enabled
    try:
        yield
    finally:
        _mode.enabled = previous


def no_grad():
    """Context in which operations are not recorded (as torch.no_grad)."""
    return _grad_mode(False)


def enable_grad():
    """Context in which operations are recorded again."""
    return _grad_mode(True)


# --- ops and nodes ----------------------------------------------------------------------
@dataclass(frozen=True)
class Op:
    """One primitive: forward and VJP side by side.

    forward(c, *args, **params) receives the inputs' exact float64 values in the compute
    format c and returns the exact result (a float64 array, or a (hi, lo) pair meaning
    hi + lo), or, for `on_storage` ops that only rearrange values, receives and returns
    storage arrays. vjp(ctx, g) returns one gradient (Tensor or None) per tensor input.
    """

    name: str
    forward: Callable[..., Any]
    vjp: Callable[..., tuple] | None = None
    on_storage: bool = False
    tensor_args: int | None = None  # how many leading arguments are tensors (None: all)


@dataclass
class Ctx:
    """What a VJP sees: the inputs and output (in the compute format), the op's other
    positional arguments and its keyword parameters."""

    inputs: tuple
    out: Tensor
    args: tuple
    params: dict


@dataclass
class Node:
    """How a non-leaf tensor was made: its op, inputs, what its VJP needs (the context) and
    the policy it ran under (which decides the VJP's formats and accumulation model)."""

    op: Op
    inputs: tuple                 # the input Tensors, in the op's compute format
    ctx: Ctx | None               # saved values for the VJP; None once freed
    policy: Any = None            # current_policy() when the op ran
    freed: bool = field(default=False)
    origin: Any = None            # observe.Origin while an observer is active, else None

    def release(self) -> None:
        """Free the saved values (after a backward without retain_graph)."""
        self.ctx, self.freed = None, True


def _record(op: Op, out: Tensor, inputs: tuple, args: tuple, params: dict) -> Tensor:
    ctx = Ctx(tuple(t.detach() for t in inputs), out.detach(), args, params)
    out._node = Node(op, inputs, ctx, current_policy(),
                     origin=observe.origin() if observe.active() else None)
    return out


def _stored_as(data: np.ndarray, dtype: Format, fmt: Format) -> bool:
    """Whether data of format dtype already is fmt's: an equal format in fmt's storage."""
    return dtype == fmt and data.dtype == fmt.storage


# The gradient passes straight through and is rounded back to the source format.
_CAST = Op("cast", forward=None, vjp=lambda ctx, g: (cast(g, ctx.params["source"]),))


def cast(x, dtype: Format | str, mode: str = "nearest_even", *, rng=None) -> Tensor:
    """x rounded once to dtype in the given mode (differentiable)."""
    fmt = as_format(dtype)
    if not isinstance(x, Tensor):  # raw data: its exact values, rounded once
        if x is None:
            raise TypeError("cannot cast None to a tensor")
        return Tensor._wrap(round_to(np.asarray(x), fmt, mode, rng=rng), fmt)
    if _stored_as(x.data, x.dtype, fmt):
        return x
    out = Tensor._wrap(_rounded("cast", x.data, (x.data,), fmt, mode, rng), fmt)
    if not (is_grad_enabled() and x.requires_grad):
        return out
    out.requires_grad = True
    return _record(_CAST, out, (x,), (), {"source": x.dtype, "mode": mode})


def as_tensor(x, fmt: Format | None = None) -> Tensor:
    """x itself if a Tensor, else a constant rounded once to fmt (numbers are weakly typed)."""
    if isinstance(x, Tensor):
        return x
    if x is None:
        raise TypeError("an operand is None; expected a Tensor, a number or an array")
    if is_torch_tensor(x):  # it would be rounded to the other operand's format
        raise TypeError("a torch tensor as an operand: convert it first with mpgrad.tensor(x), "
                        "which keeps its format and bits")
    return Tensor(np.float64(x) if isinstance(x, (int, float)) else x, fmt)


def _rounded(name: str, exact, inputs: tuple, fmt: Format, mode: str = "nearest_even",
             rng=None) -> np.ndarray:
    """round_to(exact, fmt, mode), told to an active observer as op `name` on inputs."""
    if not observe.active():
        return round_to(exact, fmt, mode, rng=rng)
    stats = RoundingStats()
    out = round_to(exact, fmt, mode, rng=rng, stats=stats)
    observe.emit(name, inputs, out, fmt, stats)
    return out


def _check_nan(exact, c: Format, op: Op) -> None:
    """An op whose exact result holds NaN in a format without NaN: say so (not 'the input')."""
    parts = exact if isinstance(exact, tuple) else (exact,)
    if not c.has_nan and any(np.isnan(p).any() for p in parts):
        raise ValueError(f"{c.name} has no NaN: {op.name} produced NaN (e.g. 0/0 or the "
                         "square root of a negative number)")


def apply(op: Op, *args, **params) -> Tensor:
    """Run op on tensors (or numbers) under the active policy and record it for backward."""
    count = len(args) if op.tensor_args is None else op.tensor_args
    given = [a for a in args[:count] if isinstance(a, Tensor)]
    if not given:
        raise TypeError(f"{op.name} needs at least one mpgrad Tensor argument")
    c = compute_format(op.name, [t.dtype for t in given])
    tensors = tuple(cast(as_tensor(a, c), c) for a in args[:count])
    rest = args[count:]
    if op.on_storage:
        stored = op.forward(c, *(t.data for t in tensors), *rest, **params)
    else:
        exact = op.forward(c, *(to_float64(t.data) for t in tensors), *rest, **params)
        _check_nan(exact, c, op)
        stored = _rounded(op.name, exact, tuple(t.data for t in tensors), c)
    out = Tensor._wrap(stored, c)
    if not (is_grad_enabled() and op.vjp is not None and any(t.requires_grad for t in tensors)):
        return out
    out.requires_grad = True
    return _record(op, out, tensors, rest, params)


def composite(name: str) -> Callable:
    """Decorator for a function made of primitives (softplus, layer_norm, a loss, ...): its
    Tensor arguments are cast once to compute_format(name, their formats) and every step of
    its body computes in that format (under Policy(c, c, c) with the active accumulation
    model), so an autocast list entry for name governs the whole function."""
    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            given = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
            if not given:
                return fn(*args, **kwargs)  # fn reports its own argument errors
            c = compute_format(name, [t.dtype for t in given])
            args = [cast(a, c) if isinstance(a, Tensor) else a for a in args]
            kwargs = {k: cast(v, c) if isinstance(v, Tensor) else v for k, v in kwargs.items()}
            with restored(Policy(c, c, c, accumulate=accumulate_model())):
                return fn(*args, **kwargs)
        return run
    return decorate


# --- backward -------------------------------------------------------------------------
def _topological(root: Tensor) -> list[Tensor]:
    """Tensors reachable from root through requires_grad inputs, each after all its inputs."""
    order, done, stack = [], set(), [(root, False)]
    while stack:
        t, expanded = stack.pop()
        if expanded:
            order.append(t)
            continue
        if id(t) in done:
            continue
        done.add(id(t))
        stack.append((t, True))
        if t._node is not None:
            stack.extend((inp, False) for inp in reversed(t._node.inputs)
                         if inp.requires_grad and id(inp) not in done)
    return order


def unbroadcast(g: Tensor, x: Tensor, model=None) -> Tensor:
    """The VJP's g as x's gradient: summed over the axes x was broadcast along (under model,
    rounded to g's format), then rounded to x's format."""
    data, fmt = g.data, g.dtype
    if g.shape != x.shape:
        lead = g.ndim - x.ndim
        axes = list(range(lead)) + [lead + i for i, n in enumerate(x.shape)
                                    if n == 1 and g.shape[lead + i] != 1]
        kept = [i for i in range(g.ndim) if i not in axes]
        flat = np.transpose(to_float64(data), kept + axes)
        flat = flat.reshape(flat.shape[:len(kept)] + (int(np.prod(flat.shape[len(kept):])),))
        data = _rounded("sum", reduce_sum(flat, -1, model or default_model(fmt)), (data,),
                        fmt).reshape(x.shape)
    if not _stored_as(data, fmt, x.dtype):
        data = _rounded("cast", data, (data,), x.dtype)
    return Tensor._wrap(data, x.dtype)


def _add_gradients(a: Tensor, b: Tensor) -> Tensor:
    """a + b rounded once in their (common) format: gradients meeting at one tensor."""
    pair = clean_pair(*two_sum(to_float64(a.data), to_float64(b.data)))
    return Tensor._wrap(_rounded("add", pair, (a.data, b.data), a.dtype), a.dtype)


def _accumulate(grads: dict, t: Tensor, g: Tensor) -> None:
    grads[id(t)] = g if id(t) not in grads else _add_gradients(grads[id(t)], g)


def _model(node: Node | None):
    """The accumulation model of the policy a node ran under (None: the default)."""
    policy = None if node is None else node.policy
    return policy.accumulate if isinstance(policy, Policy) else None


def _hooked(hook: Callable, g: Tensor, t: Tensor) -> Tensor:
    """hook(g), or g where it returns None; like PyTorch, a replacement of another type,
    shape or format is an error (PyTorch's "hook has changed the type/size of value")."""
    replaced = hook(g)
    if replaced is None:
        return g
    name = getattr(hook, "__name__", repr(hook))
    if not isinstance(replaced, Tensor):
        raise TypeError(f"hook {name!r} returned {type(replaced).__name__}; a hook returns "
                        "None or an mpgrad Tensor (the replacement gradient)")
    check_like(replaced, g, f"the gradient hook {name!r} returned")
    return unbroadcast(replaced, t)  # the same values, re-stored if the container differs


def backward(root: Tensor, grad=None, retain_graph: bool = False) -> None:
    """Propagate grad (default 1 for a scalar root) to every leaf that requires grad and add
    it into .grad, in a fixed order, so results are deterministic."""
    if not root.requires_grad:
        raise RuntimeError("backward() on a tensor that does not require grad: no input "
                           "of the computation had requires_grad=True")
    if grad is None:
        if root.size != 1:
            raise RuntimeError(f"backward() without a gradient needs a scalar output, this "
                               f"one has shape {root.shape}; pass grad=, e.g. "
                               f"mpgrad.ones({root.shape}, dtype=...)")
        grad = np.ones(root.shape)
    grad = grad if isinstance(grad, Tensor) else Tensor(grad, dtype=root.dtype)
    if grad.shape != root.shape:
        raise ValueError(f"grad has shape {grad.shape}, the tensor has shape {root.shape}")
    with _watched("grad accumulation", None):  # (each VJP below: as its node's op)
        _propagate(root, {id(root): unbroadcast(grad, root)}, retain_graph)


def _watched(op: str, made):
    """The backward steps of op told to an active observer (else nothing)."""
    return observe.in_backward(op, made) if observe.active() else nullcontext()


def _propagate(root: Tensor, grads: dict, retain_graph: bool) -> None:
    """The backward pass proper: each tensor's gradient through its node's VJP."""
    for t in reversed(_topological(root)):
        g = grads.pop(id(t), None)
        if g is None:
            continue
        for hook in list(t._hooks.values()):  # a hook may remove itself
            g = _hooked(hook, g, t)
        node = t._node
        if node is None:  # a leaf: accumulate into .grad in its own format
            t.grad = g if t.grad is None else _add_gradients(t.grad, g)
            continue
        if node.freed:
            raise RuntimeError(
                f"backward through the graph a second time (at a {node.op.name} node): its "
                "saved values were freed by the first backward; call backward(retain_graph=True) "
                "the first time if you need to backward twice")
        with _watched(node.op.name, node.origin):
            with no_grad(), restored(node.policy):
                vjps = node.op.vjp(node.ctx, g)
            for inp, gi in zip(node.inputs, vjps):
                if gi is not None and inp.requires_grad:
                    _accumulate(grads, inp, unbroadcast(gi, inp, _model(node)))
        if not retain_graph:
            node.release()
