"""mpgrad.nn.save / load of state trees, the global generator's state, and a full training
checkpoint (model, optimizer, GradScaler, step, RNG state) that resumes a run bit for bit.

Values are compared by their bits (tensors by to_bits, floats by their IEEE-754 patterns),
so NaN payloads and signed zeros count; the resumed run is checked against the same run
uninterrupted, step by step, by hashes of every parameter's bits.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections import OrderedDict, namedtuple

import numpy as np
import pytest

import mpgrad
import mpgrad.nn as nn
import mpgrad.nn.functional as F
from mpgrad.amp import GradScaler
from mpgrad.numerics.rng import get_rng_state, set_rng_state
from mpgrad.optim import SGD, Adam

BF16 = mpgrad.bfloat16


def float_bits(x: float) -> int:
    return struct.unpack(">Q", struct.pack(">d", x))[0]


def assert_same_tree(a, b, path="state"):
    """Equal structure, types and order; tensors of equal format and bits; floats bit equal."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_same_tree(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{path}[{i}]")
    elif isinstance(a, mpgrad.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert np.array_equal(mpgrad.to_bits(a.data, a.dtype), mpgrad.to_bits(b.data, b.dtype))
    elif isinstance(a, float):
        assert float_bits(a) == float_bits(b), path
    else:
        assert a == b, path


def round_trip(tree, tmp_path, name="tree.ckpt"):
    path = tmp_path / name
    nn.save(tree, path)
    return nn.load(path)


# --- trees ----------------------------------------------------------------------------------

def test_every_kind_of_value_round_trips(tmp_path):
    e3m4 = mpgrad.Format.custom(3, 4)
    signalling = struct.unpack(">d", bytes.fromhex("fff4000000000123"))[0]
    tree = {
        "ints": [0, -1, 2**200 + 1, -(2**64), 10**5000],  # any size (beyond str()'s limit)
        "floats": (0.1, -0.0, 0.0, math.inf, -math.inf, math.nan, signalling, 5e-324, 1e308),
        "misc": [None, True, False, "", "ünïcode \"quoted\" \n"],
        7: {3: "int keys", "3": "str key", -2: [[], (), {}]},
        "tensors": [mpgrad.tensor([1.5, -2.0], dtype=f) for f in
                    ("float64", "float32", "float16", "bfloat16", "float8_e4m3fn",
                     "float6_e2m3fn", "tf32")] + [mpgrad.tensor([0.5, 3.0], dtype=e3m4),
                                                 mpgrad.zeros(0, 3), mpgrad.tensor(2.0)],
    }
    loaded = round_trip(tree, tmp_path)
    assert_same_tree(tree, loaded)
    assert list(loaded) == ["ints", "floats", "misc", 7, "tensors"]  # order kept
    assert loaded["tensors"][7].dtype == e3m4


def test_numpy_scalars_become_python_numbers(tmp_path):
    tree = {"f32": np.float32(0.1), "f16": np.float16(-0.0), "i": np.int64(-3),
            "u": np.uint64(2**64 - 1), "b": np.bool_(True)}
    loaded = round_trip(tree, tmp_path)
    assert_same_tree(loaded, {"f32": float(np.float32(0.1)), "f16": -0.0, "i": -3,
                              "u": 2**64 - 1, "b": True})


Point = namedtuple("Point", "x y")


@pytest.mark.parametrize("tree, where", [
    ({"optimizer": {"state": {0: {"x": {1, 2}}}}}, r"state\['optimizer'\]\['state'\]\[0\]\['x'\]: "
                                                   r"a set"),
    ([1, np.zeros(3)], r"state\[1\]: a ndarray"),
    ({"a": (1, Point(1, 2))}, r"state\['a'\]\[1\]: a Point"),
    ({"a": b"bytes"}, r"state\['a'\]: a bytes"),
    ({"a": 1j}, r"state\['a'\]: a complex"),
    ({"a": np.complex64(1)}, r"state\['a'\]: a complex64"),
    ({"a": object()}, r"state\['a'\]: a object"),
    ({"a": {1.5: 0}}, r"state\['a'\] has the key 1.5, a float"),
    ({True: 0}, "state has the key True, a bool"),
])
def test_anything_else_is_a_type_error_naming_its_path(tree, where, tmp_path):
    path = tmp_path / "old.ckpt"
    nn.save({"old": 1}, path)
    with pytest.raises(TypeError, match=where):
        nn.save(tree, path)
    assert nn.load(path) == {"old": 1}  # nothing written


def test_writes_are_atomic_and_keep_the_name(tmp_path, monkeypatch, interrupted_savez):
    path = tmp_path / "run"
    nn.save({"a": 1}, path)
    assert os.listdir(tmp_path) == ["run"]  # no ".npz" appended, no temporary file left
    monkeypatch.setattr(np, "savez", interrupted_savez)
    with pytest.raises(KeyboardInterrupt):
        nn.save({"a": 2}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["run"] and nn.load(path) == {"a": 1}
    with pytest.raises(ValueError, match="is a directory"):
        nn.save({"a": 3}, tmp_path)


def tree_file(tmp_path, text: str, **entries):
    path = tmp_path / "forged.ckpt"
    with open(path, "wb") as out:
        np.savez(out, __mpgrad_nn__=np.array(nn.CHECKPOINT_VERSION), __tree__=np.array(text),
                 **entries)
    return path


@pytest.mark.parametrize("text, match", [
    ('{"int": "0x01"}', "is not a node"),       # not the canonical hex
    ('{"int": "12"}', "is not a node"),
    ('{"float": "1e0"}', "is not a node"),      # not repr(1.0)
    ('{"float": "NaN"}', "is not a node"),
    ('{"float": "nan:7ff0000000000000"}', "is not a node"),  # the bits of inf
    ('{"float": 1.0}', "is not a node"),
    ('NaN', "not JSON"),
    ('5', "is not a node"),
    ('[1, 2]', "is not a node"),
    ('{"int": "0x1", "float": "1.0"}', "is not a node"),
    ('{"set": []}', "is not a node"),
    ('{"dict": [["a", null], ["a", null]]}', "appears twice"),
    ('{"dict": [[{"float": "1.5"}, null]]}', "not a str or int"),
    ('{"dict": [["a"]]}', "not a \\[key, value\\] pair"),
    ('{"list": [{"tensor": [0, "float16", "5,10,15,ieee,1"]}, '
     '{"tensor": [0, "float16", "5,10,15,ieee,1"]}]}', "used twice"),
    ('{"tensor": [true, "float16", "5,10,15,ieee,1"]}', "absent or used twice"),
    ('{"tensor": [0, "float16", "5,10,15"]}', "layout"),
    ('{"list": []}', r"entries \['t0'\] not expected"),
])
def test_forged_trees_are_refused(tmp_path, text, match):
    path = tree_file(tmp_path, text, t0=np.zeros(2, np.uint16))
    with pytest.raises(ValueError, match=match):
        nn.load(path)


def test_the_file_holds_json_and_bits_only(tmp_path):
    path = tmp_path / "x.ckpt"
    nn.save({"w": mpgrad.tensor([1.0, 2.0], dtype="float16"), "step": 3}, path)
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == ["__mpgrad_nn__", "__tree__", "t0"]
        assert f["t0"].dtype == np.uint16
        assert json.loads(str(f["__tree__"])) == {"dict": [
            ["w", {"tensor": [0, "float16", "5,10,15,ieee,1"]}], ["step", {"int": "0x3"}]]}


def test_a_module_state_dict_loads_into_a_module(tmp_path):
    src, dst = nn.MLP((3, 4, 2), rng=0), nn.MLP((3, 4, 2), rng=1)
    loaded = round_trip(src.state_dict(), tmp_path)
    dst.load_state_dict(loaded)
    assert_same_tree(OrderedDict(dst.state_dict()), OrderedDict(src.state_dict()))


# --- the global generator's state -----------------------------------------------------------

def test_rng_state_round_trips():
    mpgrad.manual_seed(3)
    mpgrad.rand(5)
    state = get_rng_state()
    assert json.loads(json.dumps(state)) == state  # plain ints and strings
    first = mpgrad.rand(7).numpy().copy()
    mpgrad.rand(3)
    set_rng_state(state)
    np.testing.assert_array_equal(mpgrad.rand(7).numpy(), first)
    assert get_rng_state() != state


def corrupt(path, value):
    state = get_rng_state()
    *outer, last = path
    target = state
    for key in outer:
        target = target[key]
    if value is None:
        del target[last]
    else:
        target[last] = value
    return state


@pytest.mark.parametrize("make, error, match", [
    (lambda: [1, 2], TypeError, "must be a dict"),
    (lambda: corrupt(["uinteger"], None), ValueError, r"missing \['uinteger'\]"),
    (lambda: {**get_rng_state(), "extra": 0}, ValueError, r"unexpected \['extra'\]"),
    (lambda: corrupt(["bit_generator"], "MT19937"), ValueError, "PCG64"),
    (lambda: corrupt(["state"], 5), TypeError, r"state\['state'\] must be a dict"),
    (lambda: corrupt(["state", "state"], "12"), TypeError, "state must be an int"),
    (lambda: corrupt(["state", "state"], 1.5), TypeError, "state must be an int"),
    (lambda: corrupt(["state", "state"], -1), ValueError, r"state must lie in \[0, 2\*\*128\)"),
    (lambda: corrupt(["state", "inc"], 2**128 + 1), ValueError, "inc must lie in"),
    (lambda: corrupt(["state", "inc"], 4), ValueError, "always odd"),
    (lambda: corrupt(["has_uint32"], 2), ValueError, "has_uint32"),
    (lambda: corrupt(["has_uint32"], True), TypeError, "has_uint32"),
    (lambda: corrupt(["uinteger"], 2**32), ValueError, "uinteger"),
])
def test_malformed_rng_states_are_refused_and_change_nothing(make, error, match):
    mpgrad.manual_seed(0)
    bad, before = make(), get_rng_state()
    with pytest.raises(error, match=match):
        set_rng_state(bad)
    assert get_rng_state() == before


# --- optimizer and scaler states through a file ----------------------------------------------

def test_optimizer_and_scaler_states_round_trip_bit_exactly(tmp_path):
    """Adam (two groups, float32 master, stochastic with its own generator) and a GradScaler:
    saved, loaded into fresh objects, continued: the same bits as the originals."""
    def make(seed):
        a = mpgrad.tensor(np.linspace(-1, 1, 6).reshape(2, 3), dtype=BF16, requires_grad=True)
        b = mpgrad.tensor([0.25, -3.0], dtype=BF16, requires_grad=True)
        opt = Adam([{"params": [a]}, {"params": [b], "lr": 0.1, "betas": (0.5, 0.75)}],
                   lr=0.01, master_dtype="float32", update_mode="stochastic", rng=seed)
        return [a, b], opt, GradScaler(init_scale=2.0**10, growth_interval=2)

    def steps(params, opt, scaler, grads):
        for g in grads:
            scaler.scale(mpgrad.tensor(1.0))
            for p, v in zip(params, g):
                p.grad = mpgrad.tensor(v, dtype=BF16)
            scaler.step(opt)
            scaler.update()

    rng = np.random.default_rng(0)
    grads = [[rng.standard_normal((2, 3)) * 1e3, rng.standard_normal(2) * 1e3] for _ in range(6)]
    grads[4][1][0] = math.inf  # one skipped step
    params, opt, scaler = make(0)
    steps(params, opt, scaler, grads[:3])
    loaded = round_trip({"optimizer": opt.state_dict(), "scaler": scaler.state_dict()}, tmp_path)
    assert_same_tree(loaded, {"optimizer": opt.state_dict(), "scaler": scaler.state_dict()})
    params2, opt2, scaler2 = make(99)
    for p, q in zip(params, params2):
        q.copy_(p)
    opt2.load_state_dict(loaded["optimizer"])
    scaler2.load_state_dict(loaded["scaler"])
    steps(params, opt, scaler, grads[3:])
    steps(params2, opt2, scaler2, grads[3:])
    assert scaler.skipped_steps == 1
    assert_same_tree(params2, params)
    assert_same_tree(opt2.state_dict(), opt.state_dict())
    assert_same_tree(scaler2.state_dict(), scaler.state_dict())


# --- a full training checkpoint ---------------------------------------------------------------

STEPS, CHECKPOINT_AT = 8, 4


def build(seed):
    """A bfloat16 MLP with dropout (mpgrad's global generator), Adam with a float32 master
    written back stochastically (its own generator), and a GradScaler that skips and grows."""
    model = nn.Sequential(nn.Linear(4, 8, dtype=BF16, rng=seed), nn.ReLU(), nn.Dropout(0.25),
                          nn.Linear(8, 3, dtype=BF16, rng=seed + 1))
    opt = Adam(model.parameters(), lr=0.05, master_dtype="float32", update_mode="stochastic",
               rng=seed)
    return model, opt, GradScaler(init_scale=2.0**126, growth_interval=2)


def train_step(model, opt, scaler, step):
    """One step on batch number step; returns the hash of every parameter's bits after it."""
    data = np.random.default_rng(1000 + step)
    x, y = data.standard_normal((16, 4)), data.integers(0, 3, 16)
    opt.zero_grad()
    loss = F.cross_entropy(model(mpgrad.tensor(x, dtype=BF16)), y, reduction="sum")
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode() + p.dtype.name.encode() + mpgrad.to_bits(p.data, p.dtype).tobytes())
    return h.hexdigest()


def uninterrupted():
    mpgrad.manual_seed(0)
    model, opt, scaler = build(0)
    hashes = [train_step(model, opt, scaler, i) for i in range(STEPS)]
    return hashes, scaler


def resumed(tmp_path, restore=("model", "optimizer", "scaler", "rng")):
    mpgrad.manual_seed(0)
    model, opt, scaler = build(0)
    hashes = [train_step(model, opt, scaler, i) for i in range(CHECKPOINT_AT)]
    path = tmp_path / "checkpoint"
    nn.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
             "scaler": scaler.state_dict(), "step": CHECKPOINT_AT, "rng": get_rng_state()}, path)
    del model, opt, scaler
    mpgrad.manual_seed(12345)  # a new process: another global state
    model, opt, scaler = build(7)
    ck = nn.load(path)
    if "model" in restore:
        model.load_state_dict(ck["model"])
    if "optimizer" in restore:
        opt.load_state_dict(ck["optimizer"])
    if "scaler" in restore:
        scaler.load_state_dict(ck["scaler"])
    if "rng" in restore:
        set_rng_state(ck["rng"])
    hashes += [train_step(model, opt, scaler, i) for i in range(ck["step"], STEPS)]
    return hashes, scaler


def test_a_checkpoint_resumes_the_run_bit_for_bit(tmp_path):
    full, scaler = uninterrupted()
    assert len(set(full)) >= STEPS - scaler.skipped_steps  # every step taken changed bits
    assert scaler.skipped_steps >= 1 and scaler.get_scale() != 2.0**126  # the scaler worked
    hashes, resumed_scaler = resumed(tmp_path)
    assert hashes == full
    assert resumed_scaler.state_dict() == scaler.state_dict()


@pytest.mark.parametrize("left_out", ["rng", "optimizer", "scaler"])
def test_resuming_without_a_part_of_the_state_differs(tmp_path, left_out):
    full, _ = uninterrupted()
    parts = {"model", "optimizer", "scaler", "rng"} - {left_out}
    hashes, _ = resumed(tmp_path, restore=parts)
    assert hashes[:CHECKPOINT_AT] == full[:CHECKPOINT_AT]
    assert hashes[CHECKPOINT_AT:] != full[CHECKPOINT_AT:]


def test_sgd_checkpoint_with_the_global_generator(tmp_path):
    """SGD without rng= draws its stochastic roundings from the global generator: its
    state_dict has rng None, and the global state saved beside it resumes the run."""
    def run(resume):
        mpgrad.manual_seed(1)
        p = mpgrad.tensor(np.linspace(-2, 2, 10), dtype=BF16, requires_grad=True)
        opt = SGD([p], lr=0.01, momentum=0.9, update_mode="stochastic")
        out = []
        for i in range(6):
            if resume and i == 3:
                nn.save({"p": p.detach(), "opt": opt.state_dict(), "rng": get_rng_state()},
                        tmp_path / "sgd")
                mpgrad.manual_seed(2)
                p = mpgrad.tensor(np.zeros(10), dtype=BF16, requires_grad=True)
                opt = SGD([p], lr=0.01, momentum=0.9, update_mode="stochastic")
                ck = nn.load(tmp_path / "sgd")
                p.copy_(ck["p"])
                opt.load_state_dict(ck["opt"])
                set_rng_state(ck["rng"])
            p.grad = mpgrad.tensor(np.cos(np.arange(10) + i), dtype=BF16)
            opt.step()
            out.append(mpgrad.to_bits(p.data, BF16).tobytes())
        return out

    assert run(resume=True) == run(resume=False)
