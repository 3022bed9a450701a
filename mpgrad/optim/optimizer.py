"""The Optimizer base: param groups, state, master weights, and how an update is written.

A subclass computes, for one parameter, the update delta in the state format (exactly what
PyTorch would add to the parameter) as an `Update`; the base applies it: rounded to nearest
once (as torch's fused kernels do), rounded stochastically once, or Kahan-compensated; to the
parameter itself or to its master copy, which is then rounded back into the parameter.
See docs/optim.md.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from ..autodiff.engine import enable_grad, no_grad
from ..autodiff.policy import autocast
from ..autodiff.tensor import Tensor
from ..numerics.exact import two_prod
from ..numerics.formats import Format, as_format
from ..numerics.rng import generator, generator_state, state_setter
from ..numerics.rounding import round_to, to_float64
from ..ops import add, cast, mul, sub
from ..ops.fused import muladd, muladd_exact, rounded

__all__ = ["Optimizer", "Update", "UPDATE_MODES"]

UPDATE_MODES = ("nearest_even", "stochastic")


def hyperparameter(name: str, value: Any) -> float:
    """value as a float, or a TypeError naming the hyperparameter."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a Python number, got {type(value).__name__}")
    return float(value)


def _typename(x: Any) -> str:
    t = type(x)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


@dataclass(frozen=True, eq=False)
class Update:
    """One parameter's update: delta = scale * direction exactly (scale None: 1), after the
    parameter is first multiplied by decay (decoupled weight decay; None: no decay)."""

    direction: Tensor
    scale: float | None = None
    decay: float | None = None


class Optimizer:
    """Base class: param_groups, state, zero_grad, step, state_dict, master weights, and
    the rounding of the parameter write (nearest, stochastic or Kahan-compensated)."""

    def __init__(self, params: Iterable, defaults: dict[str, Any], *,
                 master_dtype: Format | str | None = None,
                 update_mode: str = "nearest_even", kahan: bool = False,
                 rng: np.random.Generator | int | None = None) -> None:
        if update_mode not in UPDATE_MODES:
            raise ValueError(f"update_mode must be one of {', '.join(UPDATE_MODES)}, "
                             f"got {update_mode!r}")
        if kahan and master_dtype is not None:
            raise ValueError("kahan=True compensates the rounding of a low-precision "
                             "parameter; with master_dtype the master copy already keeps "
                             "the update: use one or the other")
        if kahan and update_mode != "nearest_even":
            raise ValueError("kahan=True rounds every operation to nearest; it cannot be "
                             "combined with update_mode='stochastic'")
        self.defaults = dict(defaults)
        self.master_dtype = None if master_dtype is None else as_format(master_dtype)
        self.update_mode = update_mode
        self.kahan = bool(kahan)
        self._rng = None if rng is None else generator(rng)  # None: mpgrad's global one
        self.state: dict[Tensor, dict[str, Any]] = {}
        # the storage array each parameter's last step wrote: other bits in a parameter mean
        # it was changed outside a step (loaded, copy_), and its derived state is made anew
        self._written: dict[Tensor, np.ndarray] = {}
        self.param_groups: list[dict[str, Any]] = []
        self.lost_updates = 0  # elements whose nonzero delta left the stored value unchanged
        self.lost_by_param: dict = {}  # the same per parameter (since construction)
        self.steps = 0
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            "Tensors or dicts, but got mpgrad.Tensor")
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params"]
        return "\n".join(lines) + ")"

    # --- subclass hooks ----------------------------------------------------------------
    def _validate_group(self, group: dict[str, Any]) -> None:
        """Raise ValueError for invalid hyperparameters (torch's messages)."""

    def _state_keys(self, group: dict[str, Any]) -> tuple[set[str], set[str]]:
        """The (allowed, required) keys of a parameter's own state, master/kahan aside."""
        return set(), set()

    def _init_state(self, state: dict[str, Any], p: Tensor, group: dict[str, Any],
                    fmt: Format) -> None:
        """Add the subclass's initial state for p (formats: fmt)."""

    def _update(self, group: dict[str, Any], state: dict[str, Any], x: Tensor,
                grad: Tensor) -> Update:
        """The update of parameter values x (state format) given grad (same format)."""
        raise NotImplementedError

    # --- param groups --------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters with its own hyperparameters (the rest from defaults)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("param_group must have a 'params' entry")
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, "
                            "but the ordering of tensors in sets will change between runs. "
                            "Please use a list instead.")
        params = list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError("optimizer can only optimize mpgrad Tensors, but one of the "
                                "params is " + _typename(p))
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
            if not p.requires_grad:
                raise ValueError(f"optimizer can only optimize tensors that require grad; a "
                                 f"{p.dtype.name} parameter of shape {p.shape} does not: call "
                                 f"p.requires_grad_() or leave it out")
            if self.master_dtype is not None and not self.master_dtype.contains(p.dtype):
                raise ValueError(f"master_dtype {self.master_dtype.name} does not hold every "
                                 f"{p.dtype.name} value, so the master copy of a {p.dtype.name} "
                                 f"parameter would not be exact; use a wider master format")
        merged = {**self.defaults, **param_group, "params": params}
        self._validate_group(merged)
        if len({id(p) for p in params}) != len(params):
            warnings.warn("optimizer contains a parameter group with duplicate parameters; "
                          "in future, this will cause an error", stacklevel=3)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        param_group.clear()
        param_group.update(merged)
        self.param_groups.append(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every parameter's .grad: to None, or to zeros in place."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                elif p.grad.is_leaf:
                    p.grad.copy_(np.zeros(p.grad.shape))
                else:
                    p.grad = Tensor(np.zeros(p.grad.shape), p.grad.dtype)

    # --- the step ----------------------------------------------------------------------
    def state_format(self, p: Tensor) -> Format:
        """The format p's state and update are computed in: master_dtype, else p's own."""
        return self.master_dtype if self.master_dtype is not None else p.dtype

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a .grad; returns closure() if given."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        with no_grad(), autocast(enabled=False):  # no policy may change how a step rounds
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        self._step_param(p, group)
        self.steps += 1
        return loss

    def _step_param(self, p: Tensor, group: dict[str, Any]) -> None:
        if p.grad.shape != p.shape:
            raise ValueError(f"a parameter of shape {p.shape} has a gradient of shape "
                             f"{p.grad.shape}")
        fmt = self.state_format(p)
        state = self.state.get(p)
        if not state:
            state = self.state[p] = {}
            self._derive(state, p)
            self._init_state(state, p, group, fmt)
        elif p in self._written and not _same_bits(p.data, self._written[p]):
            self._derive(state, p)
        x = state["master"] if self.master_dtype is not None else p.detach()
        grad = p.grad.detach() if p.grad.dtype == fmt else cast(p.grad.detach(), fmt)
        update = self._update(group, state, x, grad)
        if update.decay is not None:
            x = self._decayed(x, update.decay)
        new = self._apply(state, x, update)
        delta_nonzero = to_float64(update.direction.data) != 0
        if update.scale is not None and rounded(update.scale, fmt) == 0:
            delta_nonzero = np.zeros_like(delta_nonzero)
        unchanged = to_float64(new.data) == to_float64(x.data)
        lost = int(np.count_nonzero(delta_nonzero & unchanged))
        self.lost_updates += lost
        self.lost_by_param[p] = self.lost_by_param.get(p, 0) + lost
        if self.master_dtype is not None:
            state["master"] = new
            p.copy_(new, mode=self.update_mode, rng=self._rng)
        else:
            p.copy_(new)
        self._written[p] = p.data

    def _derive(self, state: dict[str, Any], p: Tensor) -> None:
        """Set the state derived from p's values: its master copy (the exact widening) and a
        zero Kahan compensation; the rest of the state (momenta) is kept, as in torch."""
        if self.master_dtype is not None:
            state["master"] = cast(p.detach(), self.master_dtype).detach()
        if self.kahan:
            state["kahan_comp"] = Tensor(np.zeros(p.shape), p.dtype)

    def _stochastic(self) -> bool:
        return self.update_mode == "stochastic" and self.master_dtype is None

    def _decayed(self, x: Tensor, factor: float) -> Tensor:
        """x * factor (factor rounded to x's format), rounded once: to nearest, or
        stochastically when the parameter itself is written stochastically."""
        f = rounded(factor, x.dtype)
        if self._stochastic():
            exact = two_prod(to_float64(x.data), np.float64(f))
            return Tensor._wrap(round_to(exact, x.dtype, "stochastic", rng=self._rng), x.dtype)
        return mul(x, f)

    def _apply(self, state: dict[str, Any], x: Tensor, update: Update) -> Tensor:
        """x + delta, written as configured (every operation rounded in x's format)."""
        d, scale = update.direction, update.scale
        if self.kahan:  # optimi's Kahan update: c += delta; t = p; p += c; c += t - p
            comp = state["kahan_comp"]
            comp = add(comp, d) if scale is None else muladd(scale, d, comp)
            new = add(x, comp)
            state["kahan_comp"] = add(comp, sub(x, new))
            return new
        if self._stochastic():  # the exact x + scale*d, rounded stochastically once
            s = 1.0 if scale is None else rounded(scale, x.dtype)
            exact = muladd_exact(s, to_float64(d.data), to_float64(x.data))
            return Tensor._wrap(round_to(exact, x.dtype, "stochastic", rng=self._rng), x.dtype)
        return add(x, d) if scale is None else muladd(scale, d, x)

    # --- saving and loading --------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """{"state": {index: {...}}, "param_groups": [...], "counters": {...}, "rng": ...};
        the state's tensors are exact (their stored values), parameters are numbered in group
        order; rng is the state of the optimizer's own generator (None: it draws from
        mpgrad's global one, whose state mpgrad.numerics.rng.get_rng_state gives)."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if self.state.get(p):
                    state[index[id(p)]] = {k: v.detach() if isinstance(v, Tensor) else v
                                           for k, v in self.state[p].items()}
        return {"state": state, "param_groups": groups,
                "counters": {"steps": self.steps, "lost_updates": self.lost_updates},
                "rng": None if self._rng is None else generator_state(self._rng)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict of this optimizer's layout; anything that does not fit (keys,
        shapes, formats, group sizes, generator) is a ValueError and nothing is changed.

        A loaded master copy or Kahan compensation is used as it is at the next step,
        whatever the parameter holds then (load the model before or after the optimizer).
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        expected = {"state", "param_groups", "counters", "rng"}
        if set(state_dict) != expected:
            raise ValueError(f"state_dict must have the keys {sorted(expected)}; missing "
                             f"{sorted(expected - set(state_dict))}, unexpected "
                             f"{sorted(map(str, set(state_dict) - expected))}")
        saved = state_dict["param_groups"]
        if not isinstance(saved, list) or len(saved) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        new_groups, id_map, group_of = [], {}, {}
        for i, (group, sg) in enumerate(zip(self.param_groups, saved)):
            indices = sg.get("params") if isinstance(sg, dict) else None
            if not isinstance(indices, list) or not all(
                    isinstance(k, int) and not isinstance(k, bool) for k in indices):
                raise ValueError(f"parameter group {i}: 'params' must be a list of parameter "
                                 f"indices (ints)")
            if len(indices) != len(group["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't "
                                 "match the size of optimizer's group")
            if set(sg) != set(group):
                raise ValueError(f"parameter group {i}: loaded keys {sorted(sg)} differ from "
                                 f"the optimizer's {sorted(group)}")
            ng = {k: v for k, v in sg.items() if k != "params"}
            ng["params"] = group["params"]
            try:
                self._validate_group(ng)
            except (TypeError, NotImplementedError) as e:
                raise ValueError(f"parameter group {i}: {e}") from e
            for k, p in zip(sg["params"], group["params"]):
                if k in id_map:
                    raise ValueError(f"parameter index {k!r} appears twice in param_groups")
                id_map[k], group_of[id(p)] = p, ng
            new_groups.append(ng)
        if not isinstance(state_dict["state"], dict):
            raise ValueError("state_dict['state'] must be a dict {parameter index: state}")
        new_state: dict[Tensor, dict[str, Any]] = {}
        for k, s in state_dict["state"].items():
            if k not in id_map:
                raise ValueError(f"state for parameter index {k!r}, which no group lists")
            p = id_map[k]
            checked = self._checked_state(k, p, group_of[id(p)], s)
            if checked:
                new_state[p] = checked
        counters = state_dict["counters"]
        if (not isinstance(counters, dict) or set(counters) != {"steps", "lost_updates"}
                or not all(_is_count(v) for v in counters.values())):
            raise ValueError("state_dict['counters'] must be {'steps': int >= 0, "
                             "'lost_updates': int >= 0}")
        rng = state_dict["rng"]
        if (rng is None) != (self._rng is None):
            raise ValueError("state_dict['rng'] is " + (
                "None: the saved optimizer drew from mpgrad's global generator; create this "
                "one without rng=" if rng is None else
                "a generator state: the saved optimizer drew from its own generator; create "
                "this one with rng=<a seed>"))
        restore_rng = None
        if rng is not None:
            try:
                restore_rng = state_setter(self._rng, rng)
            except (TypeError, ValueError) as e:
                raise ValueError(f"state_dict['rng']: {e}") from e
        for group, ng in zip(self.param_groups, new_groups):  # commit: nothing can fail now
            group.clear()
            group.update(ng)
        self.state = new_state
        self._written = {}  # the loaded derived state holds, whatever the parameters hold
        self.steps, self.lost_updates = int(counters["steps"]), int(counters["lost_updates"])
        if restore_rng is not None:
            restore_rng()

    def _checked_state(self, k: Any, p: Tensor, group: dict[str, Any],
                       s: Any) -> dict[str, Any]:
        """A copy of one parameter's loaded state, or a ValueError saying what is wrong."""
        if not isinstance(s, dict):
            raise ValueError(f"state of parameter {k!r} must be a dict, got {type(s).__name__}")
        if not s:
            return {}
        allowed, required = self._state_keys(group)
        extra = ({"master"} if self.master_dtype is not None else set()) | \
                ({"kahan_comp"} if self.kahan else set())
        allowed, required = allowed | extra, required | extra
        keys = set(s)
        if not required <= keys <= allowed:
            raise ValueError(f"state of parameter {k!r}: missing keys "
                             f"{sorted(required - keys)}, unexpected keys "
                             f"{sorted(map(str, keys - allowed))}")
        fmt, out = self.state_format(p), {}
        for key, v in s.items():
            if key == "step":
                if not _is_count(v):
                    raise ValueError(f"state of parameter {k!r}: 'step' must be an int >= 0, "
                                     f"got {v!r}")
                out[key] = int(v)
                continue
            want = p.dtype if key == "kahan_comp" else fmt
            if not isinstance(v, Tensor):
                raise ValueError(f"state of parameter {k!r}: {key!r} must be an mpgrad "
                                 f"Tensor, got {type(v).__name__}")
            if v.shape != p.shape or v.dtype != want:
                raise ValueError(f"state of parameter {k!r}: {key!r} is {v.dtype.name} of "
                                 f"shape {v.shape}, expected {want.name} of shape {p.shape}")
            out[key] = v.detach()
        return out


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two storage arrays hold the same bit patterns (NaN payloads included)."""
    return a is b or (a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes())


def _is_count(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0
