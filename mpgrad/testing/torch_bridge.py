"""compare_module: a torch.nn model run beside mpgrad, each layer judged by a rigorous bound.

The torch model runs forward and backward once, hooks capturing each leaf layer's input,
output and output gradient, and the same backward giving the gradients of its input and
parameters. Each layer is then judged in isolation, on what it was given: its output
against the bound of its op (assert_close's, with its own input and parameters), its
gradients against the bound of the op's backward at its own output gradient, and each
tensor against mpgrad's layer run on the same input and output gradient (bit-equal count,
largest ulp distance). Layers: Linear, LayerNorm, GELU, ReLU (a subclass, such as a fused
kernel, is judged as the layer it subclasses) in nested Sequentials.

torch is never imported here: it is taken from sys.modules once a torch module is given.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Mapping

import numpy as np

from ..autodiff.policy import Policy, use_policy
from ..autodiff.tensor import Tensor, is_torch_tensor, tensor
from ..nn.layers import GELU, LayerNorm, Linear, ReLU, Sequential
from ..nn.module import Module
from ..numerics.bits import to_bits, ulp_distance
from ..numerics.formats import Format, as_format
from .close import TensorCheck, compare

__all__ = ["compare_module", "from_torch", "ModuleReport", "LayerRow", "Layer", "GRAD_SEED"]

GRAD_SEED = 0  # the default output gradient: standard normal values from this seed
_OPS = {"Linear": "linear", "LayerNorm": "layer_norm", "GELU": "gelu", "ReLU": "relu"}
_GRADS = ("grad input", "grad weight", "grad bias")


def _torch(module):
    """The torch package of a torch.nn.Module (a TypeError for anything else)."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(module, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
    return torch


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _kind(layer, path: str, nn) -> str:
    """The supported torch class layer is (or subclasses), else a TypeError naming it."""
    for kind in _OPS:
        if isinstance(layer, getattr(nn, kind)):
            return kind
    raise TypeError(f"layer {path or '(the model)'!r} is a {type(layer).__name__}; the bridge "
                    "converts torch.nn.Linear, LayerNorm, GELU and ReLU, in (nested) "
                    "torch.nn.Sequential")


def _build(layer, path: str, nn, seen: set) -> Module:
    """The mpgrad module of one torch layer or Sequential, parameters not yet loaded."""
    if id(layer) in seen:
        raise ValueError(f"layer {path!r} is a layer already used elsewhere in the model; "
                         "the bridge needs each layer once (copy.deepcopy the repeated one)")
    seen.add(id(layer))
    if type(layer) is nn.Sequential:
        children = list(layer.named_children())
        if len(children) != len(layer):
            raise ValueError(f"Sequential {path or '(the model)'!r} holds one layer twice; the "
                             "bridge needs each layer once (copy.deepcopy the repeated one)")
        built = Sequential()
        for name, child in children:
            setattr(built, name, _build(child, _join(path, name), nn, seen))
        return built
    kind = _kind(layer, path, nn)
    if kind == "Linear":
        return Linear(layer.in_features, layer.out_features, layer.bias is not None,
                      tensor(layer.weight.detach()).dtype, rng=0)
    if kind == "LayerNorm":
        dtype = "float32" if layer.weight is None else tensor(layer.weight.detach()).dtype
        return LayerNorm(layer.normalized_shape, layer.eps, layer.elementwise_affine,
                         layer.bias is not None, dtype)
    return GELU(layer.approximate) if kind == "GELU" else ReLU()


def from_torch(module) -> Module:
    """The mpgrad model of a torch.nn one (Linear, LayerNorm, GELU, ReLU in nested
    Sequentials), with torch's parameter names, formats and bits."""
    torch = _torch(module)
    built = _build(module, "", torch.nn, set())
    built.load_state_dict(dict(module.named_parameters()))
    return built


@dataclass(frozen=True)
class Layer:
    """One leaf layer as torch ran it, as mpgrad Tensors: its op's inputs (x, weight, bias;
    None where absent), output, output gradient and torch's gradients of the inputs."""

    path: str
    kind: str
    op: str
    inputs: tuple
    op_args: dict
    output: Tensor
    grad_output: Tensor | None
    grads: tuple  # (input, weight, bias) gradients, None where none was computed


@dataclass(frozen=True)
class LayerRow:
    """One tensor of one layer: torch's against mpgrad's and against the exact bound."""

    path: str
    kind: str
    tensor: str        # "output", "grad input", "grad weight" or "grad bias"
    count: int
    bit_equal: int     # elements bit-equal with mpgrad's
    mpgrad_ulps: float  # the largest |ulp distance| from mpgrad's (inf: NaN against a number)
    check: TensorCheck  # torch's tensor against the rigorous bound

    @property
    def passed(self) -> bool:
        return self.check.passed


@dataclass(frozen=True)
class ModuleReport:
    """compare_module's result: one row per tensor of each leaf layer."""

    arithmetic: str
    rows: tuple
    layers: tuple
    module: Module  # the mpgrad model, torch's parameters bit for bit

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def failures(self) -> list:
        """The rows with elements outside the bound."""
        return [r for r in self.rows if not r.passed]

    def __str__(self) -> str:
        head = ("layer", "type", "tensor", "format", "elements", "bit-equal w/ mpgrad",
                "ulps vs mpgrad", "within bound", "ulps vs exact", "diagnosis")
        body = [(r.path or "(model)", r.kind, r.tensor, r.check.format, str(r.count),
                 str(r.bit_equal), f"{r.mpgrad_ulps:g}",
                 "yes" if r.passed else f"{r.check.failed} outside",
                 f"{abs(r.check.max_ulps):.3g}",
                 r.check.diagnosis or "") for r in self.rows]
        widths = [max(len(row[k]) for row in [head] + body) for k in range(len(head))]
        table = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                 for row in [head] + body]
        verdict = "every layer within" if self.passed else "layers outside"
        lines = [f"torch vs the exact result ({self.arithmetic}): {verdict} the bound"] + table
        for r in self.failures():
            lines.append(f"{r.path or '(model)'} {r.kind}, " + str(r.check))
        return "\n".join(lines)


def _leaves(torch_module, built: Module, path: str = ""):
    """(path, torch layer, mpgrad layer) for each leaf, in the order the model runs them."""
    if isinstance(built, Sequential):
        for (name, child), mine in zip(torch_module.named_children(), built.children()):
            yield from _leaves(child, mine, _join(path, name))
    else:
        yield path, torch_module, built


def _torch_input(x):
    """A model input as a fresh torch leaf (requiring grad if floating point)."""
    t = x.to_torch() if isinstance(x, Tensor) else x
    if not is_torch_tensor(t):
        raise TypeError(f"compare_module: inputs must be torch tensors or mpgrad Tensors, got "
                        f"{type(x).__name__}")
    return t.detach().requires_grad_(t.is_floating_point())


def _run_torch(torch, module, leaves: list, inputs: tuple, grad_output) -> list:
    """Run the model forward and backward with hooks; one Layer per leaf."""
    fwd = {path: [] for path, _, _ in leaves}
    bwd = {}
    for path, layer, _ in leaves:
        if getattr(layer, "inplace", False):
            raise ValueError(f"layer {path!r} is {type(layer).__name__}(inplace=True), whose "
                             "input backward hooks cannot see; use inplace=False to compare")
    handles = []
    for path, layer, _ in leaves:
        handles.append(layer.register_forward_hook(
            lambda m, args, out, p=path: fwd[p].append((args[0].detach(), out.detach()))))
        handles.append(layer.register_full_backward_hook(
            lambda m, gin, gout, p=path: bwd.__setitem__(p, (gin[0], gout[0]))))
    try:
        xs = [_torch_input(x) for x in inputs]
        y = module(*xs)
        if not is_torch_tensor(y):
            raise TypeError(f"compare_module: the model returned a {type(y).__name__}, not "
                            "a tensor")
        fmt = tensor(y.detach()).dtype
        if grad_output is None:
            grad_output = np.random.default_rng(GRAD_SEED).standard_normal(tuple(y.shape))
        g = grad_output if is_torch_tensor(grad_output) else tensor(grad_output,
                                                                    fmt).to_torch()
        params = [p for _, layer, _ in leaves for p in (getattr(layer, "weight", None),
                                                         getattr(layer, "bias", None))
                  if p is not None and p.requires_grad]
        wrt = [x for x in xs if x.requires_grad]
        got = torch.autograd.grad(y, wrt + params, g.to(y.device), allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    param_grads = {id(p): d for p, d in zip(params, got[len(wrt):])}
    return [_layer(path, layer, fwd[path], bwd.get(path), param_grads, torch)
            for path, layer, _ in leaves]


def _mp(t) -> Tensor | None:
    return None if t is None else tensor(t.detach())


def _layer(path: str, layer, calls: list, grads, param_grads: dict, torch) -> Layer:
    """The Layer of one leaf from its captured call and gradients."""
    if len(calls) != 1:
        raise ValueError(f"layer {path!r} ran {len(calls)} times in one forward; the bridge "
                         "judges each layer on one call")
    kind = _kind(layer, path, torch.nn)
    (x, y), op = calls[0], _OPS[kind]
    params = [getattr(layer, "weight", None), getattr(layer, "bias", None)]
    args = {"approximate": layer.approximate} if kind == "GELU" else {}
    if kind == "LayerNorm":
        args = {"normalized_shape": tuple(layer.normalized_shape), "eps": layer.eps}
    inputs = (_mp(x),) + (tuple(_mp(p) for p in params) if kind in ("Linear", "LayerNorm")
                          else ())
    grad_in, grad_out = grads if grads is not None else (None, None)
    mine = (_mp(grad_in),) + tuple(None if p is None else _mp(param_grads.get(id(p)))
                                   for p in params)
    return Layer(path, kind, op, inputs, args, _mp(y), _mp(grad_out), mine[:len(inputs)])


def _ulps_for(ulps, op: str) -> float:
    """The function accuracy (ulps of compute) assumed for op; ReLU is exact."""
    if op == "relu" or ulps is None:
        return 0.5
    if isinstance(ulps, Mapping):
        return float(ulps.get(op, 0.5))
    return float(ulps)


def _distance(a: Tensor, b: Tensor) -> tuple[int, float]:
    """(bit-equal count, largest |ulp distance|) of b from a, both of a's format."""
    fmt = a.dtype
    same = to_bits(a.data, fmt) == to_bits(b.data, fmt)
    av, bv = a.to_float64(), b.to_float64()
    nan_a, nan_b = np.isnan(av), np.isnan(bv)
    if (nan_a != nan_b).any():
        return int(same.sum()), float("inf")
    both = ~nan_a
    d = np.abs(ulp_distance(av[both], bv[both], fmt))
    return int(same.sum()), float(d.max()) if d.size else 0.0


def _mpgrad_run(layer: Layer, mine: Module, policy: Policy) -> tuple:
    """mpgrad's output and (input, weight, bias) gradients of one layer on torch's input and
    output gradient, the output rounded once to torch's output format."""
    x = tensor(layer.inputs[0]).requires_grad_()
    mine.zero_grad()
    with use_policy(policy):
        y = mine(x).to(layer.output.dtype)
    if layer.grad_output is not None:
        y.backward(layer.grad_output)
    params = [getattr(mine, "weight", None), getattr(mine, "bias", None)]
    grads = (x.grad,) + tuple(None if p is None else p.grad for p in params)
    return y.detach(), grads[:len(layer.inputs)]


def _judge(layer: Layer, mine: Module, compute, model, ulps: float, policy) -> list:
    """The rows of one layer: each torch tensor against the bound and against mpgrad's."""
    fmt = layer.inputs[0].dtype
    compute_fmt = as_format(compute) if compute is not None else fmt
    if policy is None:
        policy = Policy(fmt, compute_fmt, fmt, accumulate=model)
    elif isinstance(policy, str):
        policy = Policy.parse(policy)
    given = dict(compute=compute, model=model, ulps=ulps, **layer.op_args)
    try:
        checks = compare(layer.output, layer.op, *layer.inputs, **given).tensors
        if layer.grad_output is not None and any(g is not None for g in layer.grads):
            checks += compare(layer.grads, layer.op, *layer.inputs, grad=layer.grad_output,
                              **given).tensors
    except ValueError as err:
        raise ValueError(f"layer {layer.path!r} ({layer.kind}): {err}") from None
    mp_out, mp_grads = _mpgrad_run(layer, mine, policy)
    theirs = {"output": (layer.output, mp_out)}
    theirs.update({f"grad[{k}]": (g, m) for k, (g, m) in enumerate(zip(layer.grads, mp_grads))
                   if g is not None})
    rows = []
    for check in checks:
        torch_t, mp_t = theirs[check.name]
        equal, far = _distance(torch_t, mp_t)
        name = "output" if check.name == "output" else _GRADS[int(check.name[5:-1])]
        rows.append(LayerRow(layer.path, layer.kind, name, check.count, equal, far,
                             replace(check, name=name)))
    return rows


def _describe(compute, model, ulps, policy) -> str:
    """What the bound assumes and how mpgrad ran, for the report's first line."""
    fmt = as_format(compute).name if compute is not None else "each layer's format"
    text = f"computed in {fmt}" + (f" with {model!r}" if model is not None else
                                   " (any summation order)")
    named = ", ".join(f"{op} {u}" for op, u in ulps.items()) if isinstance(ulps, Mapping) else ""
    text += (f", functions within {0.5 if ulps is None else ulps} ulps" if not named else
             f", functions within ulps: {named} (others 0.5)")
    mp = f"policy {policy}" if policy is not None else f"compute {fmt}"
    return f"{text}; mpgrad under {mp}, outputs rounded once to torch's formats"


def compare_module(module, *inputs, grad_output=None, compute: Format | str | None = "float32",
                   model=None, ulps: float | Mapping[str, float] | None = None,
                   policy: Policy | str | None = None) -> ModuleReport:
    """Run a torch.nn model forward and backward beside mpgrad and judge every leaf layer.

    inputs: torch tensors (or mpgrad Tensors) for module(*inputs); grad_output: the gradient
    of the model's output (default: standard normal values from GRAD_SEED rounded to its
    format; a torch tensor is used as is); compute, model: the arithmetic torch's kernels are
    stated to do, as assert_close takes them (PyTorch's CPU opmath is float32); ulps: the
    accuracy of the kernels' exp, erf, tanh and rsqrt in ulps of compute, one number or
    {op: ulps} for "linear", "layer_norm", "gelu" (default 0.5; ReLU is checked exact);
    policy: the mpgrad Policy each layer runs under (default: the layer's format for
    parameters and output, compute for the arithmetic, model for the sums), its output
    rounded once to torch's output format.
    """
    torch = _torch(module)
    if isinstance(ulps, Mapping) and set(ulps) - set(_OPS.values()):
        raise ValueError(f"ulps names ops {sorted(set(ulps) - set(_OPS.values()))}; the "
                         f"layers' ops are {', '.join(_OPS.values())}")
    built = from_torch(module)
    leaves = list(_leaves(module, built))
    layers = _run_torch(torch, module, leaves, inputs, grad_output)
    rows = []
    for (_, _, mine), layer in zip(leaves, layers):
        rows += _judge(layer, mine, compute, model, _ulps_for(ulps, layer.op), policy)
    return ModuleReport(_describe(compute, model, ulps, policy), tuple(rows), tuple(layers),
                        built)
