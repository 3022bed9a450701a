"""GradScaler: PyTorch's dynamic loss scaling (torch.amp.GradScaler), bit for bit.

The scale is a float32 value and the growth tracker an int, updated as ATen's
`_amp_update_scale_` CPU kernel does; gradients are checked and unscaled as
`_amp_foreach_non_finite_check_and_unscale_` does (see docs/amp.md for the exact roundings).
"""

from __future__ import annotations

import math
import numbers
from collections import abc, defaultdict
from enum import Enum
from typing import Any, Iterable

import numpy as np

from ..autodiff.policy import autocast, promote
from ..autodiff.tensor import Tensor
from ..numerics.formats import float16, float32
from ..numerics.rounding import round_to, to_float64
from ..ops import mul

__all__ = ["GradScaler", "OptState", "unscale_values", "update_scale"]


class OptState(Enum):
    """Where one optimizer is in the iteration: READY, UNSCALED (unscale_ done), STEPPED."""

    READY = 0
    UNSCALED = 1
    STEPPED = 2


def _refresh_per_optimizer_state() -> dict[str, Any]:
    # found_inf None: no gradient was checked (torch's empty found_inf_per_device)
    return {"stage": OptState.READY, "found_inf": None}


def unscale_values(grad: Tensor, inv_scale: np.float32) -> np.ndarray:
    """grad * inv_scale as torch CPU does: in float32 (float64 if wider), then in grad's format."""
    opmath = promote(float32, grad.dtype)  # at::opmath_type: float for half/bfloat16/float
    with np.errstate(all="ignore"):
        # exact when opmath is float32 (24 x 24 bits); the IEEE float64 product otherwise
        product = to_float64(grad.data) * np.float64(inv_scale)
    stored = round_to(product, opmath)
    return stored if opmath == grad.dtype else round_to(to_float64(stored), grad.dtype)


def update_scale(scale: np.float32, growth_tracker: int, found_inf: float, growth_factor: float,
                 backoff_factor: float, growth_interval: int) -> tuple[np.float32, int]:
    """The new (scale, growth_tracker), as ATen's _amp_update_scale_ CPU kernel computes them."""
    with np.errstate(over="ignore"):
        if found_inf:
            # float * double is computed in double, then stored to the float scale
            return np.float32(np.float64(scale) * np.float64(backoff_factor)), 0
        successful = growth_tracker + 1
        if successful == growth_interval:
            new_scale = np.float32(np.float64(scale) * np.float64(growth_factor))
            return (new_scale if np.isfinite(new_scale) else np.float32(scale)), 0
        return np.float32(scale), successful


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def _check_scale(value: Any, name: str = "init_scale") -> None:
    """A TypeError/ValueError unless value is a number that is finite and > 0 in float32."""
    with np.errstate(over="ignore"):
        stored = np.float32(_real(name, value))
    if not (np.isfinite(stored) and stored > 0):
        raise ValueError(f"{name} must be a finite number > 0 (the scale is a float32), "
                         f"got {value!r}")


def _check_growth_factor(value: Any) -> None:
    if not 1.0 < _real("growth_factor", value) < math.inf:
        raise ValueError(f"The growth factor must be > 1.0 (and finite), got {value!r}.")


def _check_backoff_factor(value: Any) -> None:
    if not 0.0 < _real("backoff_factor", value) < 1.0:
        raise ValueError(f"The backoff factor must be < 1.0 (and > 0), got {value!r}.")


def _check_count(name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")


_STATE_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")


class GradScaler:
    """Dynamic loss scaling with torch.amp.GradScaler's semantics, defaults and state.

    When enabled, hyperparameters are checked at the call (torch checks only the two factors,
    with AssertionError): a TypeError or ValueError for a scale that is not finite and > 0 in
    float32, a growth factor not > 1 or infinite, a backoff factor not in (0, 1) or a growth
    interval not an int >= 1; so are the setters' values and load_state_dict's.
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000,
                 enabled: bool = True) -> None:
        self._enabled = bool(enabled)
        if self._enabled:  # as torch, a disabled scaler checks nothing
            _check_scale(init_scale)
            _check_growth_factor(growth_factor)
            _check_backoff_factor(backoff_factor)
            _check_count("growth_interval", growth_interval, 1)
        self._init_scale = init_scale
        self._scale: np.float32 | None = None  # set on the first scale(), as in torch
        self._growth_factor = growth_factor
        self._backoff_factor = backoff_factor
        self._growth_interval = growth_interval
        self._init_growth_tracker = 0
        self._growth_tracker: int | None = None
        self._per_optimizer_states: dict[int, dict[str, Any]] = defaultdict(
            _refresh_per_optimizer_state)
        self._skipped_steps = 0

    def __repr__(self) -> str:
        return (f"GradScaler(scale={self.get_scale()!r}, growth_tracker="
                f"{self._get_growth_tracker()}, enabled={self._enabled})")

    # --- the scale ------------------------------------------------------------------------
    def _check_scale_growth_tracker(self, funcname: str) -> tuple[np.float32, int]:
        fix = ("This may indicate your script did not use scaler.scale(loss or outputs) "
               "earlier in the iteration.")
        if self._scale is None:
            raise AssertionError(f"Attempted {funcname} but _scale is None.  " + fix)
        if self._growth_tracker is None:
            raise AssertionError(f"Attempted {funcname} but _growth_tracker is None.  " + fix)
        return self._scale, self._growth_tracker

    def _lazy_init_scale_growth_tracker(self) -> None:
        with np.errstate(over="ignore"):
            self._scale = np.float32(self._init_scale)
        self._growth_tracker = int(self._init_growth_tracker)

    def _scale_tensor(self) -> Tensor:
        if self._scale is None:
            self._lazy_init_scale_growth_tracker()
        return Tensor._wrap(np.asarray(self._scale, dtype=np.float32), float32)

    def scale(self, outputs: Tensor | Iterable) -> Tensor | Iterable:
        """outputs * scale (a recorded float32 multiply; lists and tuples keep their structure)."""
        if not self._enabled:
            return outputs

        def apply_scale(val):
            if isinstance(val, Tensor):
                with autocast(enabled=False):  # plain promotion, whatever policy is active
                    return mul(val, self._scale_tensor())
            if isinstance(val, abc.Iterable) and not isinstance(val, (str, bytes)):
                scaled = map(apply_scale, val)
                return type(val)(scaled) if isinstance(val, (list, tuple)) else scaled
            raise ValueError("outputs must be a Tensor or an iterable of Tensors")

        return apply_scale(outputs)

    # --- gradients ------------------------------------------------------------------------
    def _unscale_grads_(self, optimizer: Any, inv_scale: np.float32,
                        allow_fp16: bool) -> float | None:
        with_grads = []
        for group in optimizer.param_groups:
            for param in group["params"]:
                if not isinstance(param, Tensor):
                    raise AssertionError(
                        f"expected param to be mpgrad.Tensor, got {type(param).__name__}")
                if param.grad is None:
                    continue
                if not allow_fp16 and param.grad.dtype == float16:  # equal by layout
                    raise ValueError("Attempting to unscale FP16 gradients.")
                with_grads.append(param)
        if not with_grads:
            return None
        found_inf = 0.0
        for param in with_grads:
            grad = param.grad
            if not np.isfinite(grad.to_float64()).all():  # checked on the scaled values
                found_inf = 1.0
            param.grad = Tensor._wrap(unscale_values(grad, inv_scale), grad.dtype)
        return found_inf

    def unscale_(self, optimizer: Any) -> None:
        """Divide the optimizer's gradients by the scale (once per step); check them for inf/NaN."""
        if not self._enabled:
            return
        self._check_scale_growth_tracker("unscale_")
        state = self._per_optimizer_states[id(optimizer)]
        if state["stage"] is OptState.UNSCALED:
            raise RuntimeError(
                "unscale_() has already been called on this optimizer since the last update().")
        if state["stage"] is OptState.STEPPED:
            raise RuntimeError("unscale_() is being called after step().")
        # torch takes the reciprocal in float64, then rounds it to float32
        with np.errstate(divide="ignore", over="ignore"):
            inv_scale = np.float32(np.float64(1.0) / np.float64(self._scale))
        state["found_inf"] = self._unscale_grads_(optimizer, inv_scale, False)
        state["stage"] = OptState.UNSCALED

    def step(self, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
        """Unscale if not yet done; optimizer.step(...) unless an inf/NaN was found (then None)."""
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs:
            raise RuntimeError("Closure use is not currently supported if GradScaler is enabled.")
        self._check_scale_growth_tracker("step")
        state = self._per_optimizer_states[id(optimizer)]
        if state["stage"] is OptState.STEPPED:
            raise RuntimeError("step() has already been called since the last update().")
        if state["stage"] is OptState.READY:
            self.unscale_(optimizer)
        if state["found_inf"] is None:
            raise AssertionError("No inf checks were recorded for this optimizer.")
        retval = None
        if not state["found_inf"]:
            retval = optimizer.step(*args, **kwargs)
        else:
            self._skipped_steps += 1
        state["stage"] = OptState.STEPPED
        return retval

    def update(self, new_scale: float | Tensor | None = None) -> None:
        """Back off after an inf/NaN, grow after growth_interval clean steps, or set new_scale."""
        if not self._enabled:
            return
        scale, tracker = self._check_scale_growth_tracker("update")
        if new_scale is not None:
            if isinstance(new_scale, Tensor):
                if new_scale.size != 1 or new_scale.requires_grad:
                    raise AssertionError("new_scale should be a float or a 1-element mpgrad "
                                         "Tensor with requires_grad=False.")
                value = float(new_scale.to_float64().reshape(()))
            elif isinstance(new_scale, numbers.Real) and not isinstance(new_scale, bool):
                value = float(new_scale)
            else:
                raise TypeError(f"new_scale should be a float or a 1-element mpgrad Tensor, "
                                f"got {type(new_scale).__name__}")
            with np.errstate(over="ignore"):
                self._scale = np.float32(value)
        else:
            found_infs = [state["found_inf"] for state in self._per_optimizer_states.values()
                          if state["found_inf"] is not None]
            if not found_infs:
                raise AssertionError("No inf checks were recorded prior to update.")
            self._scale, self._growth_tracker = update_scale(
                scale, tracker, sum(found_infs), self._growth_factor, self._backoff_factor,
                self._growth_interval)
        self._per_optimizer_states = defaultdict(_refresh_per_optimizer_state)

    # --- getters, setters, state ----------------------------------------------------------
    def get_scale(self) -> float:
        """The current scale (init_scale before the first scale(); 1.0 when disabled)."""
        if not self._enabled:
            return 1.0
        return self._init_scale if self._scale is None else float(self._scale)

    def get_growth_factor(self) -> float:
        """The factor the scale grows by."""
        return self._growth_factor

    def set_growth_factor(self, new_factor: float) -> None:
        """Set the growth factor (> 1)."""
        _check_growth_factor(new_factor)
        self._growth_factor = new_factor

    def get_backoff_factor(self) -> float:
        """The factor the scale backs off by."""
        return self._backoff_factor

    def set_backoff_factor(self, new_factor: float) -> None:
        """Set the backoff factor (in (0, 1))."""
        _check_backoff_factor(new_factor)
        self._backoff_factor = new_factor

    def get_growth_interval(self) -> int:
        """The number of consecutive clean steps before the scale grows."""
        return self._growth_interval

    def set_growth_interval(self, new_interval: int) -> None:
        """Set the growth interval (an int >= 1)."""
        _check_count("growth_interval", new_interval, 1)
        self._growth_interval = new_interval

    def _get_growth_tracker(self) -> int:
        if not self._enabled:
            return 0
        return self._init_growth_tracker if self._growth_tracker is None else self._growth_tracker

    @property
    def skipped_steps(self) -> int:
        """How many optimizer steps were skipped for inf/NaN gradients (not in state_dict)."""
        return self._skipped_steps

    def is_enabled(self) -> bool:
        """Whether scaling is enabled."""
        return self._enabled

    def state_dict(self) -> dict[str, Any]:
        """The scale, factors, interval and growth tracker, as torch ({} when disabled)."""
        if not self._enabled:
            return {}
        return {"scale": self.get_scale(), "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor, "growth_interval": self._growth_interval,
                "_growth_tracker": self._get_growth_tracker()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict() (a no-op when disabled); checked first: a malformed one is a
        TypeError/ValueError and nothing changes."""
        if not self._enabled:
            return
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        if len(state_dict) == 0:
            raise RuntimeError("The source state dict is empty, possibly because it was saved "
                               "from a disabled instance of GradScaler.")
        if set(state_dict) != set(_STATE_KEYS):
            raise ValueError(f"GradScaler state_dict must have the keys {list(_STATE_KEYS)}; "
                             f"missing {sorted(set(_STATE_KEYS) - set(state_dict))}, unexpected "
                             f"{sorted(map(str, set(state_dict) - set(_STATE_KEYS)))}")
        _check_scale(state_dict["scale"], "state_dict['scale']")
        _check_growth_factor(state_dict["growth_factor"])
        _check_backoff_factor(state_dict["backoff_factor"])
        _check_count("growth_interval", state_dict["growth_interval"], 1)
        _check_count("_growth_tracker", state_dict["_growth_tracker"], 0)
        self._init_scale = state_dict["scale"]
        if self._scale is not None:
            with np.errstate(over="ignore"):
                self._scale = np.float32(state_dict["scale"])
        self._growth_factor = state_dict["growth_factor"]
        self._backoff_factor = state_dict["backoff_factor"]
        self._growth_interval = state_dict["growth_interval"]
        self._init_growth_tracker = int(state_dict["_growth_tracker"])
        if self._growth_tracker is not None:
            self._growth_tracker = int(state_dict["_growth_tracker"])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._enabled:
            if len(self._per_optimizer_states) != 0:
                raise AssertionError("A GradScaler instance may only be pickled at the beginning "
                                     "of an iteration, or at the end after scaler.update().")
            state["_init_scale"] = self.get_scale()
            state["_init_growth_tracker"] = self._get_growth_tracker()
            state["_scale"] = None
            state["_growth_tracker"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

