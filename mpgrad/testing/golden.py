"""Golden files: record a computation's inputs, outputs and gradients (the file format is
mpgrad.testing.goldenfile's safetensors), and check a candidate against them tensor by tensor."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib.metadata import version
from typing import Callable, Mapping

import numpy as np

from ..accumulate.drivers import default_model
from ..autodiff.engine import backward
from ..autodiff.policy import Policy, current_policy, restored
from ..autodiff.tensor import Tensor
from ..numerics.bits import from_bits, to_bits, ulp_distance
from ..numerics.files import output_path
from ..numerics.formats import Format, as_format
from .goldenfile import Golden, encoding, read, write

__all__ = ["record", "check", "Report", "Row", "Offender", "parse_tolerance", "Golden",
           "read", "write", "encoding"]


def _named(values, prefix: str) -> dict[str, Tensor]:
    """A Tensor, a list/tuple or a dict of Tensors as {prefix.name: Tensor}."""
    items = (values.items() if isinstance(values, Mapping) else
             enumerate(values) if isinstance(values, (list, tuple)) else [(0, values)])
    named = {f"{prefix}.{k}": v for k, v in items}
    for name, v in named.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"{name} is a {type(v).__name__}, not an mpgrad Tensor")
    return named


def record(path: str | os.PathLike, fn: Callable, inputs, *, policy: Policy | str | None = None,
           grad: bool = False, name: str | None = None) -> Golden:
    """Run fn(**inputs) (a dict) or fn(*inputs) (a list) under policy and write a golden file.

    policy None runs under the active policy (if any). The output(s) may be a Tensor, a
    tuple/list or a dict of Tensors, saved as "output.<i or key>", the inputs as
    "input.<key or i>". With grad=True every output that requires grad is back-propagated
    in turn with a gradient of ones (in its format), the inputs' .grad (cleared first)
    accumulate, and each input that requires grad has its gradient saved as "grad.<key>".
    name is the description saved (default: fn's qualified name). Returns the file read back.
    """
    path = output_path(path)
    if not isinstance(inputs, (Mapping, list, tuple)):
        raise TypeError(f"inputs must be a dict name -> Tensor or a list of Tensors, not "
                        f"{type(inputs).__name__}")
    given = _named(inputs, "input")
    if policy is None:
        active = current_policy()
    elif isinstance(policy, (Policy, str)):
        active = Policy.parse(policy) if isinstance(policy, str) else policy
    else:
        raise TypeError(f"policy must be a Policy, a policy string or None, not {policy!r}")
    for t in given.values():
        t.grad = None
    with restored(active):
        result = fn(**inputs) if isinstance(inputs, Mapping) else fn(*inputs)
        outputs = _named(result, "output")
        if grad:
            chained = [t for t in outputs.values() if t.requires_grad]
            if not chained:
                raise RuntimeError("record(grad=True): no output requires grad; give inputs "
                                   "with requires_grad=True")
            for i, t in enumerate(chained):
                backward(t, np.ones(t.shape), retain_graph=i < len(chained) - 1)
    grads = {"grad." + k.split(".", 1)[1]: t.grad for k, t in given.items()
             if grad and t.requires_grad and t.grad is not None}
    model = getattr(active, "accumulate", None)
    compute = getattr(active, "compute", None)
    meta = {"mpgrad_version": version("mpgrad"),
            "description": name or getattr(fn, "__qualname__", repr(fn)),
            "policy": repr(active),
            "accumulate": repr(model) if model is not None else
            repr(default_model(compute)) if compute is not None else
            "the default model of each op's compute format (accumulate.default_model)"}
    write(path, {**given, **outputs, **grads}, meta)
    return read(path)


# --- checking a candidate against a golden file ----------------------------------------

@dataclass(frozen=True)
class Offender:
    """One element outside the tolerance: where, both values, both bit patterns, ulps apart
    (None where exactly one of them is NaN)."""

    index: tuple[int, ...]
    golden: float
    candidate: float
    golden_bits: str
    candidate_bits: str
    ulps: int | None


@dataclass(frozen=True)
class Row:
    """The comparison of one tensor: counts, the |ulp distance| histogram, first offenders."""

    name: str
    format: str
    shape: tuple[int, ...]
    count: int
    bit_equal: int
    within: int
    max_ulps: int | None  # the largest |ulp distance| between non-NaN pairs (None: none)
    histogram: tuple[tuple[str, int], ...]  # ("0", n), ("1", n), ("2", n), ("3-4", n), ...
    offenders: tuple[Offender, ...]

    @property
    def passed(self) -> bool:
        return self.within == self.count


@dataclass(frozen=True)
class Report:
    """The result of check: passed iff every element of every tensor is within tolerance."""

    golden: str
    tolerance: str
    rows: tuple[Row, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def to_json(self) -> str:
        """The report as JSON (values as Python reprs, so NaN, inf and -0.0 survive)."""
        def offender(o: Offender) -> dict:
            return {"index": list(o.index), "golden": repr(o.golden),
                    "candidate": repr(o.candidate), "golden_bits": o.golden_bits,
                    "candidate_bits": o.candidate_bits, "ulps": o.ulps}
        rows = [{"name": r.name, "format": r.format, "shape": list(r.shape), "count": r.count,
                 "bit_equal": r.bit_equal, "within": r.within, "max_ulps": r.max_ulps,
                 "histogram": dict(r.histogram), "passed": r.passed,
                 "offenders": [offender(o) for o in r.offenders]} for r in self.rows]
        return json.dumps({"golden": self.golden, "tolerance": self.tolerance,
                           "passed": self.passed, "tensors": rows}, indent=1)


def parse_tolerance(tolerance: str) -> int | None:
    """The ulps a tolerance allows ("ulps=N": N), or None for "bits" (bit-equal)."""
    text = tolerance.strip().lower() if isinstance(tolerance, str) else tolerance
    if text == "bits":
        return None
    if text == "bound":
        raise ValueError("tolerance 'bound' is not available yet: it needs the rigorous "
                         "per-op bounds of mpgrad.testing.assert_close; use 'bits' or 'ulps=N'")
    if isinstance(text, str) and text.startswith("ulps=") and text[5:].isdigit():
        return int(text[5:])
    raise ValueError(f"unknown tolerance {tolerance!r}: give 'bits', 'ulps=N' (N >= 0) "
                     "or 'bound'")


def _as_candidate(name: str, value, like: Format) -> Tensor:
    """A candidate: a Tensor, or an array of like's values in its storage or own dtype."""
    if isinstance(value, Tensor):
        return value
    a = np.asarray(value)
    if a.dtype != like.storage:
        return Tensor(a, as_format(a.dtype))
    try:
        return Tensor(from_bits(to_bits(a, like), like), like)  # exact, or an error
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def _bucket(d: int) -> str:
    """The histogram bin of an |ulp distance|: 0, 1, 2, 3-4, 5-8, 9-16, ..."""
    if d <= 2:
        return str(d)
    top = 1 << (d - 1).bit_length()
    return f"{top // 2 + 1}-{top}"


def _row(name: str, g: Tensor, c: Tensor, ulps: int | None, max_report: int) -> Row:
    """Compare one candidate tensor with its golden one (same format and shape)."""
    fmt = g.dtype
    gv, cv = g.to_float64().ravel(), c.to_float64().ravel()
    gb, cb = to_bits(g.data, fmt).ravel(), to_bits(c.data, fmt).ravel()
    same = gb == cb
    gn, cn = np.isnan(gv), np.isnan(cv)
    both = ~gn & ~cn
    dist = np.zeros(gv.shape, dtype=np.int64)
    dist[both] = np.abs(ulp_distance(gv[both], cv[both], fmt))
    # bits: equal patterns, any NaN for a NaN; ulps=N: |distance| <= N, NaN for NaN only
    ok = (same | (gn & cn)) if ulps is None else ((gn & cn) | (both & (dist <= ulps)))
    hist: dict[str, int] = {}
    for d, n in zip(*np.unique(dist[both], return_counts=True)):
        hist[_bucket(int(d))] = hist.get(_bucket(int(d)), 0) + int(n)
    if (gn != cn).any():
        hist["NaN vs number"] = int((gn != cn).sum())
    width = (fmt.bits + 3) // 4
    offenders = tuple(
        Offender(tuple(int(i) for i in np.unravel_index(k, g.shape)), float(gv[k]),
                 float(cv[k]), f"0x{int(gb[k]):0{width}x}", f"0x{int(cb[k]):0{width}x}",
                 int(dist[k]) if both[k] else None)
        for k in np.flatnonzero(~ok)[:max_report])
    return Row(name, fmt.name, tuple(g.shape), int(gv.size), int(same.sum()), int(ok.sum()),
               int(dist[both].max()) if both.any() else None, tuple(hist.items()), offenders)


def check(golden_path: str | os.PathLike, candidate, *, tolerance: str = "bits",
          max_report: int = 5) -> Report:
    """Compare a candidate (a golden-format file, or a dict name -> Tensor/array) with a
    golden file, tensor by tensor, within tolerance "bits" or "ulps=N".

    The candidate must hold every tensor of the golden file except (optionally) its
    "input.*" ones, and no other, each with the golden format and shape; else the input is
    unusable: a ValueError (as for a missing or damaged file).
    """
    ulps = parse_tolerance(tolerance)
    golden = read(golden_path).tensors
    if isinstance(candidate, (str, os.PathLike)):
        candidate = read(candidate).tensors
    if not isinstance(candidate, Mapping):
        raise TypeError(f"candidate must be a file name or a dict of tensors, not "
                        f"{type(candidate).__name__}")
    needed = {k for k in golden if not k.startswith("input.")}
    missing, extra = needed - set(candidate), set(candidate) - set(golden)
    if missing or extra:
        raise ValueError(f"the candidate's tensors do not match the golden file's: missing "
                         f"{sorted(missing)}, unknown {sorted(extra)}")
    rows = []
    for name, g in golden.items():
        if name not in candidate:
            continue
        c = _as_candidate(name, candidate[name], g.dtype)
        if c.dtype != g.dtype or c.shape != g.shape:
            raise ValueError(f"{name}: the candidate is {c.dtype.name} {list(c.shape)}, the "
                             f"golden tensor {g.dtype.name} {list(g.shape)}")
        rows.append(_row(name, g, c, ulps, max_report))
    return Report(os.fspath(golden_path), tolerance, tuple(rows))
