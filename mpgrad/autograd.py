"""The tape: graph nodes, grad mode, and reverse-mode backward with exact rounding rules."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from .tensor import Tensor

__all__ = ["no_grad", "enable_grad", "is_grad_enabled", "Node", "backward"]

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


@dataclass
class Node:
    """How a non-leaf tensor was made: its op, inputs and what its VJP needs (the context)."""

    op: Any                       # the Op (name, forward, vjp)
    inputs: tuple                 # the input Tensors, in the op's compute format
    ctx: Any                      # saved values for the VJP; None once freed
    accumulate: Any = None        # the Policy's accumulation model when the op ran
    freed: bool = field(default=False)

    def release(self) -> None:
        """Free the saved values (after a backward without retain_graph)."""
        self.ctx, self.freed = None, True


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


def _no_policy():
    """A block where no policy or autocast applies (gradient bookkeeping)."""
    from .policy import autocast
    return autocast(enabled=False)


def backward(root: Tensor, grad: Tensor, retain_graph: bool,
             accumulate: Callable[[Tensor, Tensor], Tensor],
             to_input: Callable[[Tensor, Tensor, Any], Tensor]) -> None:
    """Propagate grad from root to every leaf that requires grad; accumulate into .grad.

    accumulate(a, b) adds two gradients of one tensor (a rounded addition in its format);
    to_input(g, x, model) turns the VJP's g into x's gradient (sum over broadcast axes
    under the accumulation model the op ran with, round to x's format). Both are applied
    in a fixed order, so results are deterministic.
    """
    order = _topological(root)
    grads: dict[int, Tensor] = {id(root): grad}
    for t in reversed(order):
        g = grads.pop(id(t), None)
        if g is None:
            continue
        for hook in t._hooks:
            replaced = hook(g)
            if replaced is not None:
                if tuple(replaced.shape) != tuple(g.shape):
                    raise RuntimeError(f"hook {hook!r} returned a gradient of shape "
                                       f"{tuple(replaced.shape)} for a tensor of shape {t.shape}")
                with no_grad(), _no_policy():
                    g = to_input(replaced, t, None if t._node is None else t._node.accumulate)
        node = t._node
        if node is None:  # a leaf: accumulate into .grad in its own format
            if t.requires_grad:
                with no_grad(), _no_policy():
                    t.grad = g if t.grad is None else accumulate(t.grad, g)
            continue
        if node.freed:
            raise RuntimeError(
                f"backward through the graph a second time (at a {node.op.name} node): its "
                "saved values were freed by the first backward; call backward(retain_graph=True) "
                "the first time if you need to backward twice")
        with no_grad():
            vjps = node.op.vjp(node.ctx, g)
        for inp, gi in zip(node.inputs, vjps):
            if gi is None or not inp.requires_grad:
                continue
            with no_grad(), _no_policy():  # gradients are rounded to their inputs' formats
                gi = to_input(gi, inp, node.accumulate)
                grads[id(inp)] = gi if id(inp) not in grads else accumulate(grads[id(inp)], gi)
        if not retain_graph:
            node.release()
