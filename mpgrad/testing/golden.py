"""Golden files: record a computation's inputs, outputs and gradients (the file format is
mpgrad.testing.goldenfile's safetensors), and check a candidate against them tensor by tensor."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
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
from .close import OP_CALLS, OPS, compare, op_name
from .goldenfile import Golden, encoding, read, write

__all__ = ["record", "check", "tensor_pairs", "compare_tensor", "Report", "Row", "Offender",
           "parse_tolerance", "Golden", "read", "write", "encoding"]


def _named(values, prefix: str) -> dict[str, Tensor]:
    """A Tensor, a list/tuple or a dict of Tensors as {prefix.name: Tensor}."""
    items = (values.items() if isinstance(values, Mapping) else
             enumerate(values) if isinstance(values, (list, tuple)) else [(0, values)])
    named = {f"{prefix}.{k}": v for k, v in items}
    for name, v in named.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"{name} is a {type(v).__name__}, not an mpgrad Tensor")
    return named


def record(path: str | os.PathLike, fn: Callable | str, inputs, *,
           policy: Policy | str | None = None, grad: bool = False, name: str | None = None,
           op_args: Mapping | None = None) -> Golden:
    """Run fn(**inputs) (a dict) or fn(*inputs) (a list) under policy and write a golden file.

    fn may be an op of mpgrad.testing.OPS (its name or mpgrad function) with a list of inputs
    and op_args as assert_close takes them: the file then names the op and its arguments,
    and `check(..., tolerance="bound")` can judge a candidate against the exact result.
    policy None runs under the active policy (if any). The output(s) may be a Tensor, a
    tuple/list or a dict of Tensors, saved as "output.<i or key>", the inputs as
    "input.<key or i>". With grad=True every output that requires grad is back-propagated
    in turn with a gradient of ones (in its format), the inputs' .grad (cleared first)
    accumulate, and each input that requires grad has its gradient saved as "grad.<key>".
    name is the description saved (default: fn's qualified name). Returns the file read back.
    """
    path = output_path(path)
    listed = isinstance(inputs, (list, tuple))
    op = op_name(fn) if isinstance(fn, str) or (listed and fn in OP_CALLS.values()) else None
    op_args = dict(op_args or {})
    if op is not None:
        if not listed:
            raise TypeError(f"record: the op {op} takes a list of inputs, as assert_close")
        fn = OP_CALLS[op]
    elif op_args:
        raise TypeError("record: op_args are for an op of mpgrad.testing.OPS; pass a "
                        "function of the inputs instead")
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
        result = fn(**inputs) if isinstance(inputs, Mapping) else fn(*inputs, **op_args)
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
            "description": name or op or getattr(fn, "__qualname__", repr(fn)),
            "policy": repr(active),
            "accumulate": repr(model) if model is not None else
            repr(default_model(compute)) if compute is not None else
            "the default model of each op's compute format (accumulate.default_model)"}
    if op is not None:
        meta.update(op=op, op_args=json.dumps(op_args))
        if compute is not None:
            meta["compute"] = compute.name
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


def parse_tolerance(tolerance: str) -> int | str | None:
    """The ulps a tolerance allows ("ulps=N": N), None for "bits" (bit-equal), or "bound"."""
    text = tolerance.strip().lower() if isinstance(tolerance, str) else tolerance
    if text == "bits":
        return None
    if text == "bound":
        return "bound"
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


def _bounded(row: Row, g: Tensor, c: Tensor, verdict, max_report: int) -> Row:
    """row with its within count and offenders from assert_close's verdict on c."""
    width = (g.dtype.bits + 3) // 4
    gb, cb = to_bits(g.data, g.dtype), to_bits(c.data, c.dtype)
    gv, cv = g.to_float64(), c.to_float64()
    offenders = []
    for o in verdict.worst[:max_report]:
        k = o.index
        both = not (np.isnan(gv[k]) or np.isnan(cv[k]))
        offenders.append(Offender(k, float(gv[k]), float(cv[k]), f"0x{int(gb[k]):0{width}x}",
                                  f"0x{int(cb[k]):0{width}x}",
                                  int(abs(ulp_distance(gv[k], cv[k], g.dtype))) if both
                                  else None))
    return replace(row, within=row.count - verdict.failed, offenders=tuple(offenders))


def _bound_verdicts(meta: dict, golden: dict, candidate: dict, compute, model, ulps) -> dict:
    """assert_close's verdict on each output.* and grad.* candidate tensor of an op's file
    (candidate: name -> Tensor, as _pairs validated it)."""
    if "op" not in meta:
        raise ValueError("tolerance 'bound' needs a golden file recorded from an op of "
                         f"mpgrad.testing.OPS ({', '.join(OPS)}); this one records "
                         f"{meta.get('description', 'a function')!r}")
    op = meta["op"]
    op_args = {k: tuple(v) if isinstance(v, list) else v  # JSON has no tuples
               for k, v in json.loads(meta.get("op_args", "{}")).items()}
    inputs = [golden[k] for k in golden if k.startswith("input.")]
    verdicts = {}
    for name in [k for k in golden if k.startswith("output.")]:
        verdicts[name] = compare(candidate[name], op, *inputs, compute=compute, model=model,
                                 ulps=ulps, **op_args).tensors[0]
    grads = ["grad." + k.split(".", 1)[1] for k in golden if k.startswith("input.")]
    if any(k in golden for k in grads):  # one gradient per input, None where not recorded
        out = golden["output.0"]
        result = compare([candidate.get(k) for k in grads], op, *inputs, compute=compute,
                         model=model, ulps=ulps, grad=Tensor(np.ones(out.shape), out.dtype),
                         **op_args)
        verdicts.update(zip([k for k in grads if k in golden], result.tensors))
    return verdicts


def _pairs(golden: dict, candidate) -> list[tuple[str, Tensor, Tensor]]:
    """(name, golden, candidate) of each tensor to compare, in the golden file's order."""
    if not isinstance(candidate, Mapping):
        raise TypeError(f"candidate must be a file name or a dict of tensors, not "
                        f"{type(candidate).__name__}")
    needed = {k for k in golden if not k.startswith("input.")}
    missing, extra = needed - set(candidate), set(candidate) - set(golden)
    if missing or extra:
        raise ValueError(f"the candidate's tensors do not match the golden file's: missing "
                         f"{sorted(missing)}, unknown {sorted(extra)}")
    pairs = []
    for name, g in golden.items():
        if name not in candidate:
            continue
        c = _as_candidate(name, candidate[name], g.dtype)
        if c.dtype != g.dtype or c.shape != g.shape:
            raise ValueError(f"{name}: the candidate is {c.dtype.name} {list(c.shape)}, the "
                             f"golden tensor {g.dtype.name} {list(g.shape)}")
        pairs.append((name, g, c))
    return pairs


def tensor_pairs(golden_path: str | os.PathLike, candidate) -> list[tuple[str, Tensor, Tensor]]:
    """(name, golden, candidate) of each tensor check compares, in the golden file's order,
    validated as check validates them (a ValueError for an unusable input)."""
    if isinstance(candidate, (str, os.PathLike)):
        candidate = read(candidate).tensors
    return _pairs(read(golden_path).tensors, candidate)


def compare_tensor(name: str, golden: Tensor, candidate: Tensor, *, tolerance: str = "bits",
                   max_report: int = 5) -> Row:
    """check's Row of one candidate tensor against its golden one (same format and shape),
    within tolerance "bits" or "ulps=N"."""
    ulps = parse_tolerance(tolerance)
    if ulps == "bound":
        raise ValueError("compare_tensor takes 'bits' or 'ulps=N'; 'bound' needs the op: use "
                         "check")
    return _row(name, golden, candidate, ulps, max_report)


def check(golden_path: str | os.PathLike, candidate, *, tolerance: str = "bits",
          max_report: int = 5, compute: Format | str | None = None, model=None,
          ulps: float = 0.5) -> Report:
    """Compare a candidate (a golden-format file, or a dict name -> Tensor/array) with a
    golden file, tensor by tensor, within tolerance "bits", "ulps=N" or "bound".

    "bound" judges each output and gradient against the rigorous bound of
    mpgrad.testing.assert_close for the op the file records, with the candidate's compute
    format (default: the one recorded, else the output's), accumulation model and ulps.
    The candidate must hold every tensor of the golden file except (optionally) its
    "input.*" ones, and no other, each with the golden format and shape; else the input is
    unusable: a ValueError (as for a missing or damaged file).
    """
    ulps_allowed = parse_tolerance(tolerance)
    file = read(golden_path)
    golden = file.tensors
    if isinstance(candidate, (str, os.PathLike)):
        candidate = read(candidate).tensors
    pairs = _pairs(golden, candidate)
    rows = [_row(name, g, c, None if ulps_allowed == "bound" else ulps_allowed, max_report)
            for name, g, c in pairs]
    if ulps_allowed == "bound":
        given = {name: c for name, _, c in pairs}
        verdicts = _bound_verdicts(file.metadata, golden, given,
                                   compute or file.metadata.get("compute"), model, ulps)
        rows = [_bounded(r, golden[r.name], given[r.name], verdicts[r.name], max_report)
                if r.name in verdicts else r for r in rows]
    return Report(os.fspath(golden_path), tolerance, tuple(rows))
