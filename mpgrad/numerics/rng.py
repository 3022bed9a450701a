"""The global random generator behind every draw mpgrad makes (seed it with manual_seed), and
generator states as plain dicts (get_rng_state / set_rng_state), to save and resume runs."""

from __future__ import annotations

import numbers
from typing import Any, Callable

import numpy as np

__all__ = ["manual_seed", "generator", "get_rng_state", "set_rng_state", "generator_state",
           "state_setter"]

_global = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed mpgrad's global generator so every later random draw is reproducible."""
    global _global
    _global = np.random.default_rng(seed)
    return _global


def generator(rng: np.random.Generator | int | None = None) -> np.random.Generator:
    """The generator to draw from: rng itself, a new one seeded with rng, or the global one."""
    if rng is None:
        return _global
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, got "
                    f"{type(rng).__name__}")


def generator_state(gen: np.random.Generator) -> dict[str, Any]:
    """The state of a PCG64 generator (np.random.default_rng's) as a plain dict of ints."""
    if not isinstance(gen.bit_generator, np.random.PCG64):
        raise TypeError(f"only the states of PCG64 generators (np.random.default_rng(seed)) are "
                        f"saved, this one is a {type(gen.bit_generator).__name__}")
    return _checked(gen.bit_generator.state)


def state_setter(gen: np.random.Generator, state: dict[str, Any]) -> Callable[[], None]:
    """Check a state from generator_state against the PCG64 generator gen (a malformed state
    is a TypeError/ValueError, gen unchanged) and return the function that restores it."""
    checked = _checked(state)
    if not isinstance(gen.bit_generator, np.random.PCG64):
        raise TypeError(f"a PCG64 state cannot be set into a {type(gen.bit_generator).__name__} "
                        f"generator")

    def restore() -> None:
        gen.bit_generator.state = checked
    return restore


def get_rng_state() -> dict[str, Any]:
    """The state of mpgrad's global generator, a plain (JSON-able) dict: torch.get_rng_state."""
    return generator_state(_global)


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global generator to a state from get_rng_state (torch.set_rng_state)."""
    state_setter(_global, state)()


_FIELDS = {"bit_generator", "state", "has_uint32", "uinteger"}


def _checked(state: Any) -> dict[str, Any]:
    """A copy of a PCG64 generator state, or a TypeError/ValueError saying what is wrong."""
    def fields(d: Any, name: str, keys: set[str]) -> None:
        if not isinstance(d, dict):
            raise TypeError(f"{name} must be a dict, got {type(d).__name__}")
        if set(d) != keys:
            raise ValueError(f"{name} must have the keys {sorted(keys)}; missing "
                             f"{sorted(keys - set(d))}, unexpected "
                             f"{sorted(map(str, set(d) - keys))}")

    fields(state, "a generator state", _FIELDS)
    if not (isinstance(state["bit_generator"], str) and state["bit_generator"] == "PCG64"):
        raise ValueError(f"a generator state must be for 'PCG64', got "
                         f"{state['bit_generator']!r}")
    fields(state["state"], "state['state']", {"state", "inc"})
    bits = {"state": 128, "inc": 128, "has_uint32": 1, "uinteger": 32}
    values = {**state["state"], "has_uint32": state["has_uint32"], "uinteger": state["uinteger"]}
    for name, width in bits.items():
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"generator state: {name} must be an int, got {type(value).__name__}")
        if not 0 <= value < 2**width:
            raise ValueError(f"generator state: {name} must lie in [0, 2**{width}), got {value}")
        values[name] = int(value)
    if values["inc"] % 2 == 0:
        raise ValueError("generator state: PCG64's increment 'inc' is always odd, got an even one")
    return {"bit_generator": "PCG64", "state": {"state": values["state"], "inc": values["inc"]},
            "has_uint32": values["has_uint32"], "uinteger": values["uinteger"]}
