"""The guarantees of docs/numerics-contract.md ("Guarantees and errors"), as a property test.

Hypothesis drives random sequences of public operations (tensor creation, elementwise ops,
reductions, matmul, backward, optimizer and scaler steps, save/load, refused loads) on random
formats and shapes, empty and 0-d ones included, with NaN, infinities, -0 and huge values.
Every call must end in one of two ways:
- a result, checked against the exact reference (Fractions rounded by tests/reference.py)
  where one applies, or
- a TypeError, ValueError or RuntimeError raised by a `raise` statement in mpgrad's own code:
  never an error NumPy raised on mpgrad's behalf, a NumPy warning, or another exception type;
and a refused call changes nothing (parameters, gradients, optimizer and scaler state).
"""

from __future__ import annotations

import linecache
import math
import os
import tempfile
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import mpgrad
from mpgrad import nn, optim

try:  # tests/ may or may not become a package
    from .reference import ref_round
except ImportError:
    from reference import ref_round

PACKAGE = os.path.dirname(os.path.abspath(mpgrad.__file__))
FORMATS = [mpgrad.float64, mpgrad.float32, mpgrad.tf32, mpgrad.float16, mpgrad.bfloat16,
           mpgrad.float8_e4m3fn, mpgrad.float8_e5m2, mpgrad.float8_e4m3fnuz,
           mpgrad.float6_e2m3fn, mpgrad.float4_e2m1fn]
SHAPES = [(), (0,), (1,), (3,), (2, 3), (0, 3), (3, 0), (1, 3)]
SPECIAL = [0.0, -0.0, 1.0, -1.5, 0.1, 3.0, 1e-30, -1e-300, 6e4, 1e30, -1e300, math.inf,
           -math.inf, math.nan]
BAD_OPERANDS = [None, "1", {"a": 1}, [1, None], object()]


def outcome(call):
    """(result, None) or (None, error) for an error mpgrad raised itself; anything else fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a NumPy RuntimeWarning leaking out is a defect
        try:
            return call(), None
        except (TypeError, ValueError, RuntimeError) as error:
            tb = error.__traceback__
            while tb.tb_next is not None:
                tb = tb.tb_next
            where = tb.tb_frame.f_code.co_filename
            line = linecache.getline(where, tb.tb_lineno)
            assert os.path.abspath(where).startswith(PACKAGE), f"{error!r} raised in {where}"
            assert "raise" in line, f"{error!r} came from {where}:{tb.tb_lineno}: {line.strip()}"
            assert str(error), "an error without a message"
            return None, error


def exact_op(name: str, a: float, b: float) -> float | Fraction:
    """a op b exactly (a Fraction), or its IEEE float64 value when an operand or the result
    is not finite (inf, NaN, x/0)."""
    if math.isfinite(a) and math.isfinite(b) and not (name == "div" and b == 0):
        x, y = Fraction(a), Fraction(b)
        value = {"add": x + y, "sub": x - y, "mul": x * y, "div": x / y if y else None}[name]
        if value == 0:  # the sign of an exact zero, as IEEE 754 section 6.3 gives it
            with np.errstate(all="ignore"):
                return float({"add": np.add, "sub": np.subtract, "mul": np.multiply,
                              "div": np.divide}[name](np.float64(a), np.float64(b)))
        return value
    with np.errstate(all="ignore"):
        return float({"add": np.add, "sub": np.subtract, "mul": np.multiply,
                      "div": np.divide}[name](np.float64(a), np.float64(b)))


def bits(t: mpgrad.Tensor) -> bytes:
    return t.numpy().tobytes()


def expect_rounded(result: mpgrad.Tensor, exact: list, fmt) -> None:
    """Each element of result is the reference rounding of the matching exact value."""
    got = result.to_float64().reshape(-1)
    for g, x in zip(got, exact):
        want = ref_round(x, fmt, "nearest_even")
        assert (math.isnan(g) and math.isnan(want)) or (
            g == want and math.copysign(1, g) == math.copysign(1, want)), (g, want, x, fmt)


class Session(RuleBasedStateMachine):
    """A user's session: a few tensors, a one-layer model, its optimizer and a GradScaler."""

    @initialize(fmt=st.sampled_from([mpgrad.float16, mpgrad.bfloat16, mpgrad.float32]),
                master=st.booleans(), data=st.data())
    def start(self, fmt, master, data):
        self.tensors: list[mpgrad.Tensor] = []
        mpgrad.manual_seed(data.draw(st.integers(0, 2**16)))
        self.model = nn.Linear(3, 2).to(fmt)
        self.opt = optim.SGD(self.model.parameters(), lr=0.5, momentum=0.9,
                             master_dtype="float32" if master and fmt != mpgrad.float32
                             else None)
        self.scaler = mpgrad.amp.GradScaler(init_scale=2.0**8)
        self.folder = tempfile.mkdtemp()

    def snapshot(self) -> tuple:
        params = tuple(bits(p) for p in self.model.parameters())
        grads = tuple(None if p.grad is None else bits(p.grad) for p in self.model.parameters())
        return params, grads, repr(self.opt.state_dict()), repr(self.scaler.state_dict())

    # --- tensors and ops ---------------------------------------------------------------
    @rule(fmt=st.sampled_from(FORMATS), shape=st.sampled_from(SHAPES), data=st.data())
    def make(self, fmt, shape, data):
        size = int(np.prod(shape))
        values = data.draw(st.lists(st.sampled_from(SPECIAL) | st.floats(width=64),
                                    min_size=size, max_size=size))
        result, error = outcome(lambda: mpgrad.tensor(np.array(values).reshape(shape), fmt))
        if error is None:
            assert result.shape == shape and result.dtype == fmt
            expect_rounded(result, values, fmt)
            self.tensors.append(result)
        else:
            assert not fmt.has_nan and any(math.isnan(v) for v in values), error

    @rule(name=st.sampled_from(["add", "sub", "mul", "div"]), data=st.data())
    def binary(self, name, data):
        if not self.tensors:
            return
        a = data.draw(st.sampled_from(self.tensors))
        b = data.draw(st.sampled_from(self.tensors) | st.sampled_from(SPECIAL)
                      | st.sampled_from(BAD_OPERANDS))
        fn = getattr(mpgrad, name)
        result, error = outcome(lambda: fn(a, b))
        if any(b is bad for bad in BAD_OPERANDS):
            assert isinstance(error, TypeError), f"{name}(tensor, {b!r}) gave {result!r}"
            return
        if error is not None:
            return  # shapes that do not broadcast, NaN in a format without NaN, ...
        other = b if isinstance(b, mpgrad.Tensor) else None
        assert result.shape == np.broadcast_shapes(a.shape, () if other is None else b.shape)
        if other is None or other.dtype == a.dtype:  # one format: checked element by element
            x = np.broadcast_to(a.to_float64(), result.shape).reshape(-1)
            # a Python number is weakly typed: rounded to the tensor's format first
            y = np.broadcast_to(b.to_float64() if other is not None else
                                np.float64(ref_round(b, a.dtype, "nearest_even")),
                                result.shape).reshape(-1)
            exact = [exact_op(name, float(u), float(v)) for u, v in zip(x, y)]
            expect_rounded(result, exact, a.dtype)
            self.tensors.append(result)

    @rule(data=st.data())
    def reduce(self, data):
        if not self.tensors:
            return
        a = data.draw(st.sampled_from(self.tensors))
        axis = data.draw(st.sampled_from([None, 0, 1, -1, 2, (0, 0), (0, 1), ()]))
        result, error = outcome(lambda: mpgrad.sum(a, axis=axis))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                want = np.sum(np.zeros(a.shape), axis=axis).shape
            except (ValueError, IndexError):  # torch reduces a 0-d tensor over dim 0 or -1
                want = () if a.ndim == 0 and axis in (0, -1) else None
        if want is None:
            assert error is not None, f"sum over axis {axis} of shape {a.shape} was accepted"
        else:
            assert error is None and result.shape == want, (a.shape, axis, error)

    @rule(data=st.data())
    def matmul(self, data):
        if len(self.tensors) < 2:
            return
        a, b = data.draw(st.sampled_from(self.tensors)), data.draw(st.sampled_from(self.tensors))
        result, error = outcome(lambda: mpgrad.matmul(a, b))
        if error is None:
            assert a.dtype == b.dtype, "mixed formats outside a policy were accepted"
            assert result.shape == np.matmul(np.zeros(a.shape), np.zeros(b.shape)).shape

    # --- training ------------------------------------------------------------------------
    @rule(scale_loss=st.booleans(), poison=st.sampled_from([None, math.inf, math.nan, 1e30]))
    def train_step(self, scale_loss, poison):
        x = mpgrad.tensor([[1.0, -2.0, 0.5]] if poison is None else [[1.0, poison, 0.5]])
        before = self.snapshot()
        self.opt.zero_grad()

        def backward():
            with mpgrad.autocast("float16"):
                loss = mpgrad.sum(self.model(x))
            (self.scaler.scale(loss) if scale_loss else loss).backward()

        def step():
            if scale_loss:
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                self.opt.step()
        _, error = outcome(backward)
        finite = all(np.all(np.isfinite(p.grad.to_float64())) for p in self.model.parameters()
                     if p.grad is not None)
        if error is None:
            _, error = outcome(step)
        if error is not None or (scale_loss and not finite):
            assert self.snapshot()[0] == before[0], "a refused or skipped step changed a weight"

    @rule()
    def save_and_load(self):
        path = os.path.join(self.folder, "checkpoint.npz")
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "scaler": self.scaler.state_dict()}
        nn.save(state, path)
        loaded = nn.load(path)
        before = self.snapshot()
        self.model.load_state_dict(loaded["model"])
        self.opt.load_state_dict(loaded["optimizer"])
        self.scaler.load_state_dict(loaded["scaler"])
        assert self.snapshot() == before

    @rule(which=st.sampled_from(["shape", "format", "names", "optimizer", "scaler", "grad"]))
    def refused(self, which):
        before = self.snapshot()
        weight = self.model.weight
        other = mpgrad.float64 if weight.dtype != mpgrad.float64 else mpgrad.float32
        calls = {
            "shape": lambda: self.model.load_state_dict({"weight": mpgrad.zeros(3, 2, dtype=
                                                         weight.dtype), "bias": self.model.bias}),
            "format": lambda: self.model.load_state_dict({"weight": mpgrad.zeros(
                2, 3, dtype=other), "bias": self.model.bias}),
            "names": lambda: self.model.load_state_dict({"weight": weight}),
            "optimizer": lambda: self.opt.load_state_dict({"state": {}, "param_groups": []}),
            "scaler": lambda: self.scaler.load_state_dict({"scale": -1.0}),
            "grad": lambda: setattr(weight, "grad", mpgrad.zeros(3, dtype=weight.dtype)),
        }
        _, error = outcome(calls[which])
        assert error is not None, f"a bad {which} was accepted"
        assert self.snapshot() == before, f"the refused {which} changed state"

    @invariant()
    def weights_keep_format(self):
        if hasattr(self, "model"):
            for p in self.model.parameters():
                assert p.is_leaf and p.requires_grad and p.data.dtype == p.dtype.storage


def _sessions(examples: int) -> type:
    """Session's test case, run for examples random sessions of up to 30 calls."""
    return type(f"Sessions{examples}", (Session.TestCase,), {"settings": settings(
        max_examples=examples, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow])})


TestSessions = _sessions(200)
TestManySessions = pytest.mark.slow(_sessions(5000))


@pytest.mark.parametrize("bad", BAD_OPERANDS, ids=repr)
def test_bad_operands_are_type_errors(bad):
    """None, strings, dicts, lists holding None: a TypeError from mpgrad, never NaN."""
    for call in (lambda: mpgrad.tensor(bad), lambda: mpgrad.tensor([1.0]) + bad,
                 lambda: bad * mpgrad.tensor([1.0])):
        _, error = outcome(call)
        assert isinstance(error, TypeError), error
