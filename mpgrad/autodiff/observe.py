"""What the engine tells an observer (mpgrad.diagnostics.track): every rounding of an op
forward or backward, with the module it ran in and the user's line that created it.

Nothing here runs unless an observer is active: the engine checks `active()` once per op.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

__all__ = ["OpEvent", "Origin", "active", "observing", "in_module", "origin", "in_backward",
           "emit", "module_output"]

_local = threading.local()
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Origin:
    """Where a tensor was made: the module stack (outermost first) and the user's line."""

    modules: tuple
    file: str
    line: int
    function: str


@dataclass(frozen=True)
class OpEvent:
    """One op's rounding: its name, "forward" or "backward", where the op was created, its
    input and output storage arrays, the output format and the RoundingStats of the rounding
    (None for ops that only move values)."""

    op: str
    phase: str
    origin: Origin | None
    inputs: tuple
    output: Any
    fmt: Any
    stats: Any


def active() -> bool:
    """Whether an observer is listening (the engine's only cost when none is)."""
    return bool(getattr(_local, "observers", None))


@contextmanager
def observing(observer: Callable[[str, Any], None]) -> Iterator[None]:
    """Call observer(kind, payload) for each event in the block: ("op", OpEvent) and
    ("module", (module, output))."""
    observers = _local.__dict__.setdefault("observers", [])
    observers.append(observer)
    try:
        yield
    finally:
        observers.remove(observer)


@contextmanager
def in_module(module) -> Iterator[None]:
    """Ops in the block ran inside module (nn.Module.__call__ enters it when active)."""
    stack = _local.__dict__.setdefault("modules", [])
    stack.append(module)
    try:
        yield
    finally:
        stack.pop()


def origin() -> Origin:
    """The module stack now and the innermost line of code outside the mpgrad package."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
    modules = tuple(getattr(_local, "modules", ()))
    if frame is None:
        return Origin(modules, "", 0, "")
    return Origin(modules, frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)


@contextmanager
def in_backward(op: str, made: Origin | None) -> Iterator[None]:
    """Ops in the block are the VJP of op, whose node was made at `made`."""
    previous = getattr(_local, "backward", None)
    _local.backward = (op, made)
    try:
        yield
    finally:
        _local.backward = previous


def emit(op: str, inputs: tuple, output, fmt, stats) -> None:
    """Tell every observer about one op's rounding (forward, or inside a VJP: backward)."""
    backward = getattr(_local, "backward", None)
    if backward is None:
        event = OpEvent(op, "forward", origin(), inputs, output, fmt, stats)
    else:
        event = OpEvent(backward[0], "backward", backward[1], inputs, output, fmt, stats)
    for observer in list(_local.observers):
        observer("op", event)


def module_output(module, output) -> None:
    """Tell every observer a module returned output."""
    for observer in list(_local.observers):
        observer("module", (module, output))
