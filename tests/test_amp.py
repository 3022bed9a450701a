"""mpgrad.amp: GradScaler against its rules and torch.amp.GradScaler; jmp-style loss scales.

* GradScaler: every rule without torch (growth at the interval, backoff, tracker reset, inf/NaN
  found on the scaled values, the state machine's errors, skipped steps, fp16 gradients
  refused, state_dict, disabled scaler), then scripted runs step by step against
  torch.amp.GradScaler("cpu") (skipped without torch): scale, growth tracker, skipped steps and
  the gradients' bits.
* Loss scales: jmp's adjust rule against an independent re-statement (the loop in jmp's
  docstring, float32 arithmetic by MPFR), scale/unscale by MPFR, validation, trees.
"""

from __future__ import annotations

import dataclasses
import pickle

import gmpy2
import ml_dtypes
import numpy as np
import pytest

import mpgrad
from mpgrad.amp import (DynamicLossScale, GradScaler, NoOpLossScale, StaticLossScale,
                        all_finite, select_tree, update_scale)

F16, BF16, F32, F64 = mpgrad.float16, mpgrad.bfloat16, mpgrad.float32, mpgrad.float64
INF, NAN = float("inf"), float("nan")


class FakeOptimizer:
    """param_groups and a step() that counts calls, records the grads it saw, returns a tag."""

    def __init__(self, *params, result="stepped"):
        self.param_groups = [{"params": list(params)}]
        self.steps, self.calls, self.result = 0, [], result

    def step(self, *args, **kwargs):
        self.steps += 1
        self.calls.append((args, kwargs))
        return self.result


def param(values, fmt=F32):
    return mpgrad.tensor(np.asarray(values, dtype=np.float64), dtype=fmt, requires_grad=True)


def set_grads(*pairs):
    """Give each parameter a gradient (the scaled values, rounded to its format)."""
    for p, values in pairs:
        p.grad = mpgrad.tensor(np.asarray(values, dtype=np.float64), dtype=p.dtype)


def ready(scaler):
    """Make the scaler's scale exist (torch creates it on the first scale())."""
    scaler.scale(mpgrad.tensor(1.0))
    return scaler


def iteration(scaler, opt, p, grad, unscale_first=False):
    """One iteration with an already-scaled gradient; returns step()'s result."""
    scaler.scale(mpgrad.tensor(1.0))
    set_grads((p, grad))
    if unscale_first:
        scaler.unscale_(opt)
    result = scaler.step(opt)
    scaler.update()
    return result


# --- GradScaler: construction and scale() ---------------------------------------------------

def test_defaults_are_torchs():
    s = GradScaler()
    assert (s.get_scale(), s.get_growth_factor(), s.get_backoff_factor(),
            s.get_growth_interval(), s.is_enabled()) == (65536.0, 2.0, 0.5, 2000, True)
    assert s.state_dict() == {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                              "growth_interval": 2000, "_growth_tracker": 0}
    assert s.skipped_steps == 0


def test_scale_is_float32_and_created_lazily():
    s = GradScaler(init_scale=0.1)
    assert s.get_scale() == 0.1  # before the first scale(): init_scale as given, as torch
    ready(s)
    assert s.get_scale() == float(np.float32(0.1)) != 0.1


BAD_HYPERPARAMETERS = [
    ({"init_scale": 0.0}, ValueError, "init_scale must be a finite number > 0"),
    ({"init_scale": -1.0}, ValueError, "init_scale"),
    ({"init_scale": NAN}, ValueError, "init_scale"),
    ({"init_scale": INF}, ValueError, "init_scale"),
    ({"init_scale": 1e39}, ValueError, "init_scale"),  # inf in float32
    ({"init_scale": 1e-50}, ValueError, "init_scale"),  # 0 in float32
    ({"init_scale": "1"}, TypeError, "init_scale must be a real number"),
    ({"init_scale": True}, TypeError, "init_scale"),
    ({"growth_factor": 1.0}, ValueError, "The growth factor must be > 1.0"),
    ({"growth_factor": 0.5}, ValueError, "The growth factor must be > 1.0"),
    ({"growth_factor": NAN}, ValueError, "The growth factor must be > 1.0"),
    ({"growth_factor": INF}, ValueError, "The growth factor must be > 1.0"),
    ({"backoff_factor": 1.0}, ValueError, "The backoff factor must be < 1.0"),
    ({"backoff_factor": 0.0}, ValueError, "The backoff factor"),
    ({"backoff_factor": -0.5}, ValueError, "The backoff factor"),
    ({"backoff_factor": NAN}, ValueError, "The backoff factor"),
    ({"growth_interval": 0}, ValueError, "growth_interval must be an int >= 1"),
    ({"growth_interval": -3}, ValueError, "growth_interval"),
    ({"growth_interval": 2.0}, TypeError, "growth_interval must be an int"),
    ({"growth_interval": True}, TypeError, "growth_interval"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_are_refused_at_the_call(kwargs, error, match):
    with pytest.raises(error, match=match):
        GradScaler(**kwargs)
    GradScaler(**kwargs, enabled=False)  # as torch, a disabled scaler checks nothing
    (name, value), = kwargs.items()
    setter = getattr(GradScaler, f"set_{name}", None)
    if setter is not None:  # the setters check the same (torch's do not)
        s = GradScaler()
        with pytest.raises(error, match=match):
            setter(s, value)
        assert s.state_dict() == GradScaler().state_dict()


@pytest.mark.parametrize("kwargs", [{"growth_factor": 1.0}, {"growth_factor": 0.5},
                                    {"backoff_factor": 1.0}, {"backoff_factor": 2.0}])
def test_torch_refuses_these_factors_too(kwargs):
    torch = pytest.importorskip("torch")
    with pytest.raises(AssertionError, match="factor must be"):
        torch.amp.GradScaler("cpu", **kwargs)
    with pytest.raises(ValueError, match="factor must be"):  # a ValueError in mpgrad
        GradScaler(**kwargs)


def test_scale_multiplies_as_a_recorded_float32_op():
    s = GradScaler(init_scale=1024.0)
    w = param([0.5, 3.0], F16)
    loss = (w * w).sum()
    scaled = s.scale(loss)
    assert scaled.dtype == F32 and scaled.item() == 9.25 * 1024
    scaled.backward()
    assert w.grad.dtype == F16 and w.grad.to_float64().tolist() == [1024.0, 6 * 1024.0]
    w.grad = None
    GradScaler().scale((w * w).sum()).backward()  # float16(65536) is inf: as in torch
    assert w.grad.to_float64().tolist() == [INF, INF]


def test_scale_ignores_an_active_policy():
    s = GradScaler()
    loss = mpgrad.tensor(1 + 2.0**-20)  # float32; bfloat16 would round it to 1
    with mpgrad.use_policy("p=f32,c=bf16,o=bf16"):
        scaled = s.scale(loss)
    assert scaled.dtype == F32 and scaled.item() == (1 + 2.0**-20) * 65536


def test_scale_keeps_lists_and_tuples():
    s = GradScaler(init_scale=4.0)
    a, b = mpgrad.tensor(1.0), mpgrad.tensor([2.0], dtype=BF16)
    out = s.scale([a, (b, [a])])
    assert isinstance(out, list) and isinstance(out[1], tuple) and isinstance(out[1][1], list)
    assert [out[0].item(), out[1][0].item(), out[1][1][0].item()] == [4.0, 8.0, 4.0]
    assert out[1][0].dtype == F32
    lazy = s.scale(x for x in [a, b])
    assert [t.item() for t in lazy] == [4.0, 8.0]
    with pytest.raises(ValueError, match="outputs must be a Tensor"):
        s.scale([a, 3.0])


# --- GradScaler: unscale_ and step ----------------------------------------------------------

def test_unscale_divides_each_gradient_into_a_new_tensor():
    s = ready(GradScaler(init_scale=2.0**10))
    p, q, r = param([1.0, 2.0]), param([1.0], BF16), param([0.0])
    set_grads((p, [3.0 * 2**10, -2.0**-139]), (q, [2.0**11]))
    old = p.grad
    opt = FakeOptimizer(p, q, r)
    s.unscale_(opt)
    assert p.grad is not old and old.to_float64().tolist() == [3.0 * 2**10, -2.0**-139]
    assert p.grad.to_float64().tolist() == [3.0, -2.0**-149]
    assert q.grad.dtype == BF16 and q.grad.item() == 2.0 and r.grad is None
    assert s.step(opt) == "stepped" and opt.steps == 1


@pytest.mark.parametrize("bad", [INF, -INF, NAN])
def test_inf_or_nan_skips_the_step_and_backs_off(bad):
    s = ready(GradScaler())
    p, q = param([1.0, 1.0]), param([1.0])
    set_grads((p, [1.0, bad]), (q, [65536.0]))
    opt = FakeOptimizer(p, q)
    assert s.step(opt) is None and opt.steps == 0 and s.skipped_steps == 1
    assert q.grad.item() == 1.0  # still unscaled, as torch does
    s.update()
    assert s.get_scale() == 32768.0 and s._get_growth_tracker() == 0


def test_inf_is_found_on_the_scaled_values_only():
    s = ready(GradScaler(init_scale=0.5))  # scale < 1: unscaling doubles the gradient
    p = param([1.0])
    set_grads((p, [np.finfo(np.float32).max]))
    opt = FakeOptimizer(p)
    assert s.step(opt) == "stepped"  # the finite scaled value passed the check
    assert p.grad.item() == INF


def test_step_forwards_arguments_and_rejects_closures():
    s = ready(GradScaler())
    p = param([1.0])
    set_grads((p, [1.0]))
    opt = FakeOptimizer(p, result=42)
    assert s.step(opt, 1, lr=2) == 42 and opt.calls == [((1,), {"lr": 2})]
    with pytest.raises(RuntimeError, match="Closure use is not currently supported"):
        s.step(FakeOptimizer(p), closure=lambda: 0)


def test_the_per_optimizer_state_machine():
    s = ready(GradScaler())
    p = param([1.0])
    set_grads((p, [65536.0]))
    opt = FakeOptimizer(p)
    s.unscale_(opt)
    with pytest.raises(RuntimeError, match=r"^unscale_\(\) has already been called on this "
                       r"optimizer since the last update\(\)\.$"):
        s.unscale_(opt)
    assert s.step(opt) == "stepped" and p.grad.item() == 1.0  # not unscaled twice
    with pytest.raises(RuntimeError, match=r"^step\(\) has already been called since the last"):
        s.step(opt)
    with pytest.raises(RuntimeError, match=r"unscale_\(\) is being called after step\(\)"):
        s.unscale_(opt)
    s.update()
    set_grads((p, [65536.0]))
    s.unscale_(opt)  # a new iteration
    assert p.grad.item() == 1.0


def test_fp16_gradients_are_refused_before_anything_changes():
    s = ready(GradScaler())
    p, h = param([1.0]), param([1.0], F16)
    set_grads((p, [65536.0]), (h, [65536.0]))
    opt = FakeOptimizer(p, h)
    with pytest.raises(ValueError, match=r"^Attempting to unscale FP16 gradients\.$"):
        s.step(opt)
    assert p.grad.item() == 65536.0 and opt.steps == 0
    h.grad = None  # without the fp16 gradient the same iteration goes on
    assert s.step(opt) == "stepped" and p.grad.item() == 1.0


def test_calls_before_scale_and_without_gradients():
    s = GradScaler()
    p = param([1.0])
    for call in (lambda: s.unscale_(FakeOptimizer(p)), lambda: s.step(FakeOptimizer(p)),
                 s.update):
        with pytest.raises(AssertionError, match="did not use scaler.scale"):
            call()
    ready(s)
    with pytest.raises(AssertionError, match="No inf checks were recorded for this optimizer"):
        s.step(FakeOptimizer(p))  # p has no gradient
    s2 = ready(GradScaler())
    with pytest.raises(AssertionError, match="No inf checks were recorded prior to update"):
        s2.update()


# --- GradScaler: update ---------------------------------------------------------------------

def test_growth_backoff_and_tracker():
    s = GradScaler(init_scale=8.0, growth_interval=3)
    p = param([1.0])
    opt = FakeOptimizer(p)
    seen = []
    for bad in [0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0]:
        iteration(s, opt, p, [INF if bad else 8.0])
        seen.append((s.get_scale(), s._get_growth_tracker()))
    assert seen == [(8, 1), (8, 2), (16, 0), (16, 1), (16, 2), (8, 0), (8, 1), (8, 2), (16, 0),
                    (8, 0), (4, 0), (4, 1)]
    assert s.skipped_steps == 3 and opt.steps == 9


def test_growth_stops_below_float32_overflow_and_backoff_has_no_floor():
    s = GradScaler(init_scale=2.0**127, growth_interval=1)
    p = param([1.0])
    opt = FakeOptimizer(p)
    iteration(s, opt, p, [1.0])
    assert s.get_scale() == 2.0**127 and s._get_growth_tracker() == 0
    s = GradScaler(init_scale=1.0)
    for _ in range(3):
        iteration(s, opt, p, [NAN])
    assert s.get_scale() == 0.125


def test_scale_products_are_double_products_stored_to_float32():
    # ATen: *current_scale = (*current_scale) * backoff_factor, float * double, in double
    s = GradScaler(init_scale=3.0, growth_factor=1.7, backoff_factor=0.3, growth_interval=1)
    p = param([1.0])
    opt = FakeOptimizer(p)
    want, differs = np.float32(3.0), 0
    for i in range(200):
        bad = i % 3 == 0
        factor = 0.3 if bad else 1.7
        iteration(s, opt, p, [INF if bad else 1.0])
        new = np.float32(np.float64(want) * factor)
        differs += new != np.float32(want) * np.float32(factor)  # factor rounded first: not it
        want = new
        assert s.get_scale() == float(want), i
    assert differs > 0


def test_update_scale_function():
    assert update_scale(np.float32(4), 5, 1.0, 2.0, 0.5, 7) == (2.0, 0)
    assert update_scale(np.float32(4), 5, 0.0, 2.0, 0.5, 7) == (4.0, 6)
    assert update_scale(np.float32(4), 6, 0.0, 2.0, 0.5, 7) == (8.0, 0)
    assert update_scale(np.float32(4), 7, 0.0, 2.0, 0.5, 7) == (4.0, 8)  # past it: never equal


def test_update_with_a_new_scale():
    s = ready(GradScaler())
    p = param([1.0])
    set_grads((p, [1.0]))
    opt = FakeOptimizer(p)
    s.step(opt)
    s.update(0.1)
    assert s.get_scale() == float(np.float32(0.1)) and s._get_growth_tracker() == 0
    s.unscale_(opt)  # update() began a new iteration
    s.update(mpgrad.tensor([1.0 + 2.0**-30], dtype=F64))
    assert s.get_scale() == 1.0
    for bad in (mpgrad.tensor([1.0, 2.0]), mpgrad.tensor(1.0, requires_grad=True)):
        with pytest.raises(AssertionError, match="new_scale should be"):
            s.update(bad)


def test_two_optimizers_share_one_update():
    s = ready(GradScaler(growth_interval=1))
    p, q = param([1.0]), param([1.0])
    set_grads((p, [1.0]), (q, [INF]))
    o1, o2 = FakeOptimizer(p), FakeOptimizer(q)
    assert s.step(o1) == "stepped" and s.step(o2) is None
    s.update()
    assert s.get_scale() == 32768.0 and s.skipped_steps == 1


# --- GradScaler: state ----------------------------------------------------------------------

def test_state_dict_round_trip_and_pickle():
    s = GradScaler(init_scale=1024.0, growth_interval=5, backoff_factor=0.25)
    p = param([1.0])
    opt = FakeOptimizer(p)
    for g in [1.0, INF, 1.0, 1.0]:
        iteration(s, opt, p, [g])
    state = s.state_dict()
    assert state == {"scale": 256.0, "growth_factor": 2.0, "backoff_factor": 0.25,
                     "growth_interval": 5, "_growth_tracker": 2}
    t = GradScaler()
    t.load_state_dict(state)
    assert t.state_dict() == state  # before its first scale()
    u = ready(GradScaler())
    u.load_state_dict(state)
    assert u.state_dict() == state  # after it
    for scaler in (s, t, u, pickle.loads(pickle.dumps(s))):
        for _ in range(3):
            iteration(scaler, opt, p, [1.0])
        assert (scaler.get_scale(), scaler._get_growth_tracker()) == (512.0, 0)
    with pytest.raises(RuntimeError, match="The source state dict is empty"):
        GradScaler().load_state_dict({})
    s.scale(mpgrad.tensor(1.0))
    set_grads((p, [1.0]))
    s.unscale_(opt)
    with pytest.raises(AssertionError, match="may only be pickled"):
        pickle.dumps(s)


GOOD_STATE = {"scale": 256.0, "growth_factor": 2.0, "backoff_factor": 0.25,
              "growth_interval": 5, "_growth_tracker": 2}


@pytest.mark.parametrize("change, error, match", [
    ({"scale": None}, ValueError, r"missing \['scale'\]"),
    ({"extra": 1}, ValueError, r"unexpected \['extra'\]"),
    ({"scale": 0.0}, ValueError, r"state_dict\['scale'\] must be a finite number > 0"),
    ({"scale": -2.0}, ValueError, "scale"),
    ({"scale": INF}, ValueError, "scale"),
    ({"scale": NAN}, ValueError, "scale"),
    ({"scale": "256"}, TypeError, "scale"),
    ({"growth_factor": 1.0}, ValueError, "growth factor"),
    ({"backoff_factor": 1.5}, ValueError, "backoff factor"),
    ({"growth_interval": 0}, ValueError, "growth_interval"),
    ({"growth_interval": 5.0}, TypeError, "growth_interval"),
    ({"_growth_tracker": -1}, ValueError, "_growth_tracker must be an int >= 0"),
    ({"_growth_tracker": 1.0}, TypeError, "_growth_tracker must be an int"),
    ({"_growth_tracker": None}, ValueError, "missing"),
])
def test_malformed_state_dicts_are_refused_and_nothing_changes(change, error, match):
    bad = {k: v for k, v in {**GOOD_STATE, **change}.items() if v is not None}
    for s in (GradScaler(init_scale=8.0), ready(GradScaler(init_scale=8.0))):
        before = (s.state_dict(), s._scale)
        with pytest.raises(error, match=match):
            s.load_state_dict(bad)
        assert (s.state_dict(), s._scale) == before
        s.load_state_dict(GOOD_STATE)
        assert s.state_dict() == GOOD_STATE
    with pytest.raises(TypeError, match="state_dict must be a dict"):
        GradScaler().load_state_dict([("scale", 1.0)])


def test_setters():
    s = GradScaler()
    s.set_growth_factor(3.0)
    s.set_backoff_factor(0.125)
    s.set_growth_interval(7)
    assert (s.get_growth_factor(), s.get_backoff_factor(), s.get_growth_interval()) == (3.0,
                                                                                       0.125, 7)


def test_disabled_scaler_passes_through():
    s = GradScaler(enabled=False)
    loss = mpgrad.tensor(2.0)
    assert s.scale(loss) is loss and not s.is_enabled() and s.get_scale() == 1.0
    p = param([1.0])
    set_grads((p, [INF]))
    opt = FakeOptimizer(p)
    s.unscale_(opt)
    assert s.step(opt) == "stepped" and p.grad.item() == INF
    s.update()
    assert s.state_dict() == {} and s.skipped_steps == 0
    s.load_state_dict({"scale": 5.0})  # a no-op
    assert s.get_scale() == 1.0


# --- GradScaler: how gradients are rounded --------------------------------------------------

def test_bfloat16_gradients_round_through_float32():
    # ATen's CPU kernel multiplies in opmath (float32) and converts the product to bfloat16
    s = ready(GradScaler(init_scale=0.3))
    inv = np.float32(1.0 / np.float64(np.float32(0.3)))
    values = np.random.default_rng(1).standard_normal(4000).astype(ml_dtypes.bfloat16)
    p = param(values.astype(np.float64), BF16)
    set_grads((p, values.astype(np.float64)))
    s.unscale_(FakeOptimizer(p))
    want = (values.astype(np.float32) * inv).astype(ml_dtypes.bfloat16)
    assert np.array_equal(p.grad.numpy().view(np.uint16), want.view(np.uint16))
    once = mpgrad.round_to(values.astype(np.float64) * np.float64(inv), BF16)  # exact, 32 bits
    assert (once.view(np.uint16) != want.view(np.uint16)).sum() > 100  # it is double rounding


def test_float64_gradients_are_checked_and_unscaled_in_float64():
    s = ready(GradScaler(init_scale=3.0))
    p = param([1.0, 1.0], F64)
    set_grads((p, [1e300, 0.1]))
    opt = FakeOptimizer(p)
    assert s.step(opt) == "stepped"  # 1e300 is finite in float64 (inf in float32)
    inv = np.float64(np.float32(1 / 3.0))
    assert p.grad.to_float64().tolist() == [1e300 * inv, 0.1 * inv]


# --- GradScaler against torch ---------------------------------------------------------------

SCRIPT = {2: "inf", 5: "nan", 6: "inf", 11: "overflow", 17: "nan", 18: "nan", 19: "inf",
          24: "overflow", 28: "-inf"}
EXPLICIT_UNSCALE = {1, 5, 9, 10, 17, 23, 28}
CONFIGS = [dict(init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=3),
           dict(init_scale=3.0, growth_factor=1.7, backoff_factor=0.3, growth_interval=3),
           dict(init_scale=2.0**100, growth_factor=2.0**10, backoff_factor=0.5,
                growth_interval=2)]


def _bits(array: np.ndarray) -> np.ndarray:
    """Bit patterns, with every NaN the same (torch keeps NaN payloads, mpgrad canonicalizes)."""
    as_f64 = array.astype(np.float64)
    view = array.view(np.uint32 if array.dtype.itemsize == 4 else np.uint16).astype(np.int64)
    return np.where(np.isnan(as_f64), -1, view)


def _torch_values(t, fmt):
    torch = pytest.importorskip("torch")
    if fmt == BF16:
        return t.detach().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.detach().numpy()


@pytest.mark.parametrize("fmt", [F32, BF16], ids=lambda f: f.name)
@pytest.mark.parametrize("config", CONFIGS, ids=["pow2", "odd-factors", "near-max"])
def test_scripted_run_matches_torch_step_by_step(config, fmt):
    torch = pytest.importorskip("torch")
    tdtype = {F32: torch.float32, BF16: torch.bfloat16}[fmt]
    rng = np.random.default_rng(7)
    w0 = mpgrad.round_to(rng.standard_normal(6), fmt)
    mine, theirs = GradScaler(**config), torch.amp.GradScaler("cpu", **config)
    w = mpgrad.tensor(w0, dtype=fmt, requires_grad=True)
    wt = torch.tensor(mpgrad.to_float64(w0), dtype=tdtype, requires_grad=True)
    opt, topt = FakeOptimizer(w), FakeOptimizer(wt)
    for i in range(30):
        x = mpgrad.to_float64(mpgrad.round_to(rng.standard_normal(6) * 4.0 ** rng.integers(-8, 8),
                                              fmt))
        event = SCRIPT.get(i)
        if event:
            x[i % 6] = {"inf": INF, "-inf": -INF, "nan": NAN, "overflow": 3e38}[event]
        w.grad, wt.grad = None, None
        mine.scale((w * mpgrad.tensor(x, dtype=fmt)).sum()).backward()
        theirs.scale((wt * torch.tensor(x, dtype=tdtype)).sum()).backward()
        assert np.array_equal(_bits(w.grad.numpy()), _bits(_torch_values(wt.grad, fmt))), i
        if i in EXPLICIT_UNSCALE:
            mine.unscale_(opt)
            theirs.unscale_(topt)
            assert np.array_equal(_bits(w.grad.numpy()), _bits(_torch_values(wt.grad, fmt))), i
        result, tresult = mine.step(opt), theirs.step(topt)
        assert (result is None) == (tresult is None) and opt.steps == topt.steps, i
        assert np.array_equal(_bits(w.grad.numpy()), _bits(_torch_values(wt.grad, fmt))), i
        mine.update()
        theirs.update()
        assert mine.get_scale() == theirs.get_scale(), i
        assert mine._get_growth_tracker() == theirs._get_growth_tracker(), i
        assert mine.state_dict() == theirs.state_dict(), i
    assert mine.skipped_steps == 30 - topt.steps
    assert mine.skipped_steps >= 6


@pytest.mark.parametrize("fmt", [F32, BF16, F64], ids=lambda f: f.name)
@pytest.mark.parametrize("init_scale", [2.0**16, 3.0, 0.3, 1e-3, 12345.678, 2.0**-100])
def test_unscaled_bits_match_torch(fmt, init_scale):
    torch = pytest.importorskip("torch")
    tdtype = {F32: torch.float32, BF16: torch.bfloat16, F64: torch.float64}[fmt]
    rng = np.random.default_rng(3)
    values = rng.standard_normal(3000) * 2.0 ** rng.integers(-140, 127, 3000)
    values[:4] = [0.0, -0.0, 2.0**-149, -3.0e38]
    stored = mpgrad.round_to(values, fmt)
    p = param(np.zeros(3000), fmt)
    p.grad = mpgrad.Tensor._wrap(stored, fmt)
    mine = ready(GradScaler(init_scale=init_scale))
    mine.unscale_(FakeOptimizer(p))
    pt = torch.zeros(3000, dtype=tdtype, requires_grad=True)
    if fmt == BF16:
        pt.grad = torch.from_numpy(stored.view(np.int16).copy()).view(torch.bfloat16)
    else:
        pt.grad = torch.from_numpy(stored.copy())
    theirs = torch.amp.GradScaler("cpu", init_scale=init_scale)
    theirs.scale(torch.tensor(1.0))
    theirs.unscale_(FakeOptimizer(pt))
    got = p.grad.numpy()
    want = _torch_values(pt.grad, fmt)
    if fmt == F64:
        assert np.array_equal(got.view(np.uint64), want.view(np.uint64))
    else:
        assert np.array_equal(_bits(got), _bits(want))


def test_torch_refuses_fp16_gradients_too():
    torch = pytest.importorskip("torch")
    pt = torch.zeros(2, dtype=torch.float16, requires_grad=True)
    pt.grad = torch.ones(2, dtype=torch.float16)
    theirs = torch.amp.GradScaler("cpu")
    theirs.scale(torch.tensor(1.0))
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients."):
        theirs.unscale_(FakeOptimizer(pt))


def test_update_scale_matches_torchs_kernel():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    for _ in range(2000):
        scale = np.float32(rng.standard_normal() * 2.0 ** rng.integers(-140, 126))
        growth, backoff = 1 + rng.random() * 3, rng.random()
        tracker, interval = int(rng.integers(0, 4)), int(rng.integers(1, 5))
        found = float(rng.random() < 0.5)
        ts, tt = torch.tensor(scale), torch.tensor(tracker, dtype=torch.int32)
        torch._amp_update_scale_(ts, tt, torch.tensor(found), growth, backoff, interval)
        got = update_scale(scale, tracker, found, growth, backoff, interval)
        assert got[0].view(np.uint32) == ts.numpy().view(np.uint32) and got[1] == tt.item()


# --- jmp-style loss scales ------------------------------------------------------------------

def _f32(x) -> float:
    """x (an exact number) correctly rounded to float32 by MPFR."""
    with gmpy2.context(gmpy2.ieee(32)):
        return float(gmpy2.mpfr(x))


def _f32_div(a: float, b: float) -> float:
    with gmpy2.context(gmpy2.ieee(32)):
        return float(gmpy2.mpfr(a) / b)


def _f32_mul(a: float, b: float) -> float:
    with gmpy2.context(gmpy2.ieee(32)):
        return float(gmpy2.mpfr(a) * b)


def _jmp_reference(loss_scale, finites, period, factor, min_loss_scale):
    """The loop in jmp's DynamicLossScale docstring, in MPFR float32; the states after each step."""
    factor32 = _f32(factor)
    counter, states = 0, []
    for finite in finites:
        if finite:
            counter += 1
            if counter == period:
                counter = 0
                grown = _f32_mul(loss_scale, factor32)
                loss_scale = grown if np.isfinite(grown) else loss_scale
        else:
            counter = 0
            loss_scale = max(_f32(min_loss_scale), _f32_div(loss_scale, factor32))
        states.append((loss_scale, counter))
    return states


@pytest.mark.parametrize("start,period,factor,min_scale", [
    (2.0**15, 3, 2, 1.0), (7.0, 2, 3, 1.0), (5.0, 4, 1.5, 0.001), (2.0**126, 1, 2, 1.0),
    (1.3, 3, 10, 0.1)])
def test_dynamic_loss_scale_follows_jmps_rule(start, period, factor, min_scale):
    rng = np.random.default_rng(5)
    finites = (rng.random(300) < 0.8).tolist()
    ls = DynamicLossScale(start, period=period, factor=factor, min_loss_scale=min_scale)
    want = _jmp_reference(_f32(start), finites, period, factor, min_scale)
    for i, (finite, (scale, counter)) in enumerate(zip(finites, want)):
        ls = ls.adjust(finite)
        assert (float(ls.loss_scale), int(ls.counter)) == (scale, counter), i
        assert ls.loss_scale.dtype == np.float32 and ls.counter.dtype == np.int32


def test_dynamic_loss_scale_defaults_and_immutability():
    ls = DynamicLossScale(2.0**15)
    assert (ls.counter, ls.period, ls.factor, ls.min_loss_scale) == (0, 2000, 2, 1.0)
    assert ls.adjust(np.bool_(True)) is not ls and ls.counter == 0
    assert ls.adjust(True) == DynamicLossScale(2.0**15, counter=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ls.loss_scale = np.float32(1.0)
    with pytest.raises(TypeError, match="boolean scalar"):
        ls.adjust(np.array([True, False]))
    assert DynamicLossScale(1.0).adjust(False).loss_scale == 1.0  # the floor


@pytest.mark.parametrize("bad", [NAN, INF, -INF, 0.0, -1.0, 1e-50, 1e39, "2"])
def test_bad_loss_scales_are_refused(bad):
    with pytest.raises(ValueError, match="loss_scale must be"):
        StaticLossScale(bad)
    with pytest.raises(ValueError, match="loss_scale must be"):
        DynamicLossScale(bad)
    with pytest.raises(ValueError, match="min_loss_scale must be"):
        DynamicLossScale(1.0, min_loss_scale=bad)


def test_bad_periods_and_factors_are_refused():
    for kwargs in ({"period": 0}, {"period": 2.5}, {"factor": 0}, {"factor": INF}):
        with pytest.raises(ValueError, match="period|factor"):
            DynamicLossScale(2.0, **kwargs)


@pytest.mark.parametrize("cls", [StaticLossScale, DynamicLossScale])
def test_scale_and_unscale_in_float32(cls):
    ls = cls(3.0)
    inv = _f32_div(1.0, 3.0)
    g32 = mpgrad.tensor([1.0, 2.0**-126, 7.0e37])
    gbf = mpgrad.tensor([0.1], dtype=BF16)
    out = ls.unscale({"a": [g32, None], "b": (gbf,)})
    assert out["a"][1] is None and out["a"][0].dtype == F32 and out["b"][0].dtype == F32
    assert out["a"][0].to_float64().tolist() == [_f32_mul(v, inv) for v in g32.to_float64()]
    assert out["b"][0].item() == _f32_mul(gbf.item(), inv)  # promoted, as JAX does
    w = mpgrad.tensor(2.0, dtype=BF16, requires_grad=True)
    scaled = ls.scale(w * w)
    assert scaled.dtype == F32 and scaled.item() == 12.0
    scaled.backward()
    assert w.grad.item() == 12.0


def test_noop_loss_scale():
    ls = NoOpLossScale()
    tree = [mpgrad.tensor(1.0)]
    assert ls.scale(tree) is tree and ls.unscale(tree) is tree and ls.loss_scale == 1
    assert ls.adjust(False) is ls


def test_all_finite_and_select_tree():
    good = {"w": mpgrad.tensor([1.0, 2.0]), "b": [mpgrad.tensor(0.0, dtype=BF16), None]}
    assert all_finite(good) and all_finite([]) and all_finite(None)
    for bad in (INF, NAN):
        tree = {"w": mpgrad.tensor([1.0, bad]), "b": [mpgrad.tensor(0.0, dtype=BF16), None]}
        assert not all_finite(tree)
        assert select_tree(all_finite(tree), tree, good) is good
    assert select_tree(np.bool_(True), good, good) is good
    with pytest.raises(ValueError, match="same structure"):
        select_tree(True, [mpgrad.tensor(1.0)], [mpgrad.tensor(1.0, dtype=BF16)])
    a, b = DynamicLossScale(4.0), DynamicLossScale(2.0)
    assert select_tree(False, a, b) is b


def test_a_jmp_style_training_loop():
    w = mpgrad.tensor([1.0, -2.0], dtype=F16, requires_grad=True)
    ls, params, skipped = DynamicLossScale(2.0**15, period=2), [w], 0
    for step, x in enumerate([[1.0, 1.0], [3.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]):
        w.grad = None
        loss = (params[0] * mpgrad.tensor(x, dtype=F16)).sum() * (70000.0 if step == 1 else 1.0)
        ls.scale(loss).backward()
        grads = ls.unscale([params[0].grad])
        finite = all_finite(grads)
        skipped += not finite
        ls = ls.adjust(finite)
    assert skipped == 1 and float(ls.loss_scale) == 2.0**15 and int(ls.counter) == 1
