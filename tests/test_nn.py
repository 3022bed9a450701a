"""mpgrad.nn: modules, layers, initialisation, state dicts and bit-exact checkpoint files.

Layers are checked in float64 against finite differences, Linear and MLP in float32 against
PyTorch CPU (bounds: the maxima measured on seeds 0-999, MLP every third; see
tests/test_functional.py for the measures),
Linear under autocast bit for bit against its documented sequence.
"""

from __future__ import annotations

import math
import os
import zipfile

import numpy as np
import pytest

import mpgrad
import mpgrad.nn as nn
import mpgrad.nn.functional as F
from mpgrad.nn import init
from mpgrad.testing import assert_bits_equal, check_grads

TORCH_SEEDS = range(10)  # the bounds asserted are the maxima measured on seeds 0-999
CHECKPOINT_FORMATS = ["float32", "float16", "bfloat16", "float8_e4m3fn", "tf32", "float64"]


def t64(*shape, seed=0, scale=1.0):
    return mpgrad.tensor(np.random.default_rng(seed).standard_normal(shape) * scale,
                         dtype="float64")


def bits_of(module):
    """name -> (format name, bit patterns) of every parameter."""
    return {n: (p.dtype.name, mpgrad.to_bits(p.data, p.dtype).copy())
            for n, p in module.named_parameters()}


def same_bits(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k][0] == b[k][0] and np.array_equal(a[k][1], b[k][1]) for k in a)


class Block(nn.Module):
    """A nested module: parameters and submodules interleaved."""

    def __init__(self, dtype="float32"):
        super().__init__()
        self.scale = mpgrad.ones(3, dtype=dtype, requires_grad=True)
        self.body = nn.Sequential(nn.Linear(3, 4, dtype=dtype, rng=1), nn.ReLU(),
                                  nn.Linear(4, 3, dtype=dtype, rng=2))
        self.norm = nn.LayerNorm(3, dtype=dtype)
        self.drop = nn.Dropout(0.25, rng=0)
        self.cache = mpgrad.zeros(3)  # a plain tensor: not a parameter

    def forward(self, x):
        return self.drop(self.norm(self.body(x * self.scale)))


# --- Module basics --------------------------------------------------------------------------

def test_named_parameters_order_and_names():
    names = [n for n, _ in Block().named_parameters()]
    assert names == ["scale", "body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias",
                     "norm.weight", "norm.bias"]
    assert [n for n, _ in Block().named_modules()] == [
        "", "body", "body.0", "body.1", "body.2", "norm", "drop"]
    assert len(list(Block().children())) == 3
    assert all(p.is_leaf and p.requires_grad for p in Block().parameters())


def test_names_match_torch():
    torch = pytest.importorskip("torch")
    t = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    assert [n for n, _ in nn.MLP((4, 5, 2)).named_parameters()] == [
        n for n, _ in t.named_parameters()]


def test_registration_rules():
    m = Block()
    shared = m.body[0].weight
    m.body[2].extra = shared  # a parameter shared by two modules is listed once
    assert [id(p) for p in m.parameters()].count(id(shared)) == 1
    with pytest.raises(TypeError, match="parameter 'weight'.*leaf Tensor"):
        m.body[0].weight = mpgrad.zeros(4, 3)  # not requires_grad
    m.body[0].bias = None  # allowed: an absent parameter
    assert "body.0.bias" not in dict(m.named_parameters())
    del m.norm
    assert not any(n.startswith("norm") for n, _ in m.named_parameters())
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        m.missing

    class Forgot(nn.Module):
        def __init__(self):
            self.w = mpgrad.zeros(2, requires_grad=True)
    with pytest.raises(AttributeError, match="super\\(\\).__init__\\(\\)"):
        Forgot()
    with pytest.raises(NotImplementedError):
        nn.Module()(1)


def test_train_eval_and_zero_grad():
    m = Block()
    assert all(x.training for x in m.modules())
    assert m.eval() is m and not any(x.training for x in m.modules())
    m.train()
    assert all(x.training for x in m.modules())
    m(mpgrad.randn(2, 3, rng=0)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


@pytest.mark.parametrize("fmt", ["bfloat16", "float16", "float8_e4m3fn"])
def test_to_rounds_every_parameter_once(fmt):
    m = Block()
    m.body[2].shared = m.body[0].bias
    before = {n: p for n, p in m.named_parameters()}
    m(mpgrad.randn(2, 3, rng=0)).sum().backward()
    assert m.to(fmt) is m
    after = dict(m.named_parameters())
    assert list(after) == list(before)
    for name, p in after.items():
        assert p.dtype == mpgrad.as_format(fmt) and p.is_leaf and p.requires_grad
        assert p is not before[name] and p.grad is None
        assert_bits_equal(p, mpgrad.tensor(before[name].numpy(), dtype=fmt))  # rounded once
    assert m.body[2].shared is m.body[0].bias  # still shared
    kept = dict(m.named_parameters())
    m.to(fmt)  # the same format: the same tensors
    assert all(p is kept[n] for n, p in m.named_parameters())
    assert m(mpgrad.randn(2, 3, rng=0, dtype=fmt)).dtype == mpgrad.as_format(fmt)


# --- state dicts and files ------------------------------------------------------------------

def test_state_dict_is_an_ordered_snapshot():
    m = Block()
    sd = m.state_dict()
    assert list(sd) == [n for n, _ in m.named_parameters()]
    old = sd["scale"].to_float64().copy()
    m.scale.copy_(np.full(3, 7.0))
    assert np.array_equal(sd["scale"].to_float64(), old)
    assert not sd["scale"].requires_grad


def test_load_state_dict_round_trip_keeps_identity():
    src, dst = Block(), Block()
    for p in src.parameters():
        p.copy_(np.random.default_rng(3).standard_normal(p.shape))
    ids = [id(p) for p in dst.parameters()]
    result = dst.load_state_dict(src.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert same_bits(bits_of(src), bits_of(dst))
    assert ids == [id(p) for p in dst.parameters()]


def test_load_state_dict_refuses_and_loads_nothing():
    src, dst = Block(), Block()
    for p in src.parameters():
        p.copy_(np.full(p.shape, 0.5))
    before = bits_of(dst)
    good = src.state_dict()
    cases = {
        "missing parameters: norm.bias": {k: v for k, v in good.items() if k != "norm.bias"},
        "unexpected names: extra": {**good, "extra": good["scale"]},
        r"norm.bias: shape \(4,\) in the state dict, \(3,\)": {
            **good, "norm.bias": mpgrad.zeros(4)},
        "norm.bias: format float16 in the state dict, float32 in the module": {
            **good, "norm.bias": good["norm.bias"].to("float16")},
        "norm.bias: expected an mpgrad Tensor": {**good, "norm.bias": np.zeros(3)},
    }
    for message, sd in cases.items():
        with pytest.raises(ValueError, match=message):
            dst.load_state_dict(sd)
        assert same_bits(bits_of(dst), before), message  # the valid entries were not loaded
    partial = {k: v for k, v in good.items() if k != "norm.bias"}
    partial["extra"] = good["scale"]
    result = dst.load_state_dict(partial, strict=False)
    assert result.missing_keys == ["norm.bias"] and result.unexpected_keys == ["extra"]
    assert dst.scale.to_float64().tolist() == [0.5] * 3
    with pytest.raises(ValueError, match="shape"):  # strict=False still checks shapes
        dst.load_state_dict({"scale": mpgrad.zeros(2)}, strict=False)


def test_a_refused_load_changes_nothing():
    """Neither values nor parameter objects nor gradients: the load is all or nothing."""
    m = Block()
    m.scale.grad = mpgrad.ones(3)
    ids, before = [id(p) for p in m.parameters()], bits_of(m)
    sd = {n: mpgrad.full(p.shape, 2.0, dtype=p.dtype) for n, p in m.named_parameters()}
    sd["norm.bias"] = mpgrad.zeros(3, dtype="float64")  # the last one is wrong
    with pytest.raises(ValueError, match="nothing loaded"):
        m.load_state_dict(sd)
    assert same_bits(bits_of(m), before) and ids == [id(p) for p in m.parameters()]
    assert m.scale.grad.to_float64().tolist() == [1.0] * 3
    with pytest.raises(TypeError, match="dict of name -> Tensor"):
        m.load_state_dict(list(sd.items()))


def test_load_state_dict_takes_a_torch_state_dict():
    """torch.nn.Linear in float16 -> mpgrad Linear: the same bits; shapes and formats checked."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    src = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(),
                              torch.nn.Linear(4, 2)).to(torch.float16)
    dst = nn.MLP((3, 4, 2), dtype="float16", rng=5)
    result = dst.load_state_dict(src.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    for name, t in src.state_dict().items():
        mine = dict(dst.named_parameters())[name]
        assert mine.dtype == mpgrad.float16 and mine.shape == tuple(t.shape)
        assert mpgrad.to_bits(mine.data, "float16").tolist() == \
            t.view(torch.int16).numpy().astype(np.uint16).tolist()
    before = bits_of(dst)
    with pytest.raises(ValueError, match="0.weight: format float32 in the state dict, float16"):
        dst.load_state_dict({**src.state_dict(), "0.weight": torch.zeros(4, 3)})
    with pytest.raises(ValueError, match=r"2.bias: shape \(3,\) in the state dict"):
        dst.load_state_dict({**src.state_dict(), "2.bias": torch.zeros(3, dtype=torch.float16)})
    assert same_bits(bits_of(dst), before)
    grads = torch.nn.Linear(3, 4).to(torch.float16)  # parameters that require grad
    lin = nn.Linear(3, 4, dtype="float16", rng=0)
    lin.load_state_dict({k: v for k, v in grads.named_parameters()})
    assert mpgrad.to_bits(lin.bias.data, "float16").tolist() == \
        grads.bias.detach().view(torch.int16).numpy().astype(np.uint16).tolist()


def special_values(fmt: str, n: int) -> np.ndarray:
    """n values of fmt: signed zeros, subnormals, the largest value, inf/NaN where it has them."""
    f = mpgrad.as_format(fmt)
    v = [0.0, -0.0, f.smallest_subnormal, -f.smallest_subnormal, f.max, -f.max, 1 / 3, -2.5]
    if f.infinities:
        v += [np.inf, -np.inf]
    if f.has_nan:
        v += [np.nan]
    v += list(np.random.default_rng(0).standard_normal(n))
    return np.array(v[:n])


@pytest.mark.parametrize("fmt", CHECKPOINT_FORMATS)
def test_save_load_bit_exact(tmp_path, fmt):
    m = Block().to(fmt)
    for p in m.parameters():
        p.copy_(special_values(fmt, p.size).reshape(p.shape))
    path = tmp_path / "model.ckpt"  # any name: nothing is appended, no temporary file left
    m.save(path)
    assert os.listdir(tmp_path) == ["model.ckpt"]
    sd = nn.load(path)
    assert list(sd) == [n for n, _ in m.named_parameters()]
    for name, p in m.named_parameters():
        assert_bits_equal(sd[name], p)
    other = Block().to(fmt)
    other.load(path)
    assert same_bits(bits_of(other), bits_of(m))
    with zipfile.ZipFile(path) as z:  # plain arrays only: loadable without pickle
        assert all(name.endswith(".npy") for name in z.namelist())


@pytest.mark.parametrize("fmt, codes", [("float32", [0x7FC00123, 0xFFA00001]),
                                         ("bfloat16", [0x7FC3, 0xFF81]),
                                         ("float16", [0x7E01, 0xFD00])])
def test_nan_payloads_round_trip(tmp_path, fmt, codes):
    lin = nn.Linear(2, 1, dtype=fmt, rng=0)
    weight = mpgrad.Tensor._wrap(mpgrad.from_bits(np.array([codes]), fmt), mpgrad.as_format(fmt))
    lin.load_state_dict({"weight": weight, "bias": lin.bias.detach()})
    lin.save(tmp_path / "nan.npz")
    other = nn.Linear(2, 1, dtype=fmt, rng=1)
    other.load(tmp_path / "nan.npz")
    assert mpgrad.to_bits(other.weight.data, fmt).tolist() == [codes]  # payloads kept


def test_save_load_custom_format(tmp_path):
    e3m4 = mpgrad.Format.custom(3, 4)
    lin = nn.Linear(3, 2, dtype=e3m4, rng=0)
    nn.save(lin, tmp_path / "c.npz")
    sd = nn.load(tmp_path / "c.npz")
    assert sd["weight"].dtype == e3m4
    assert_bits_equal(sd["weight"], lin.weight)


def test_bad_files_are_refused_with_nothing_loaded(tmp_path):
    m = Block()
    before = bits_of(m)
    good = tmp_path / "good.npz"
    Block().to("float32").save(good)
    with np.load(good) as f:
        entries = {k: f[k] for k in f.files}
    tree = str(entries["__tree__"])

    def write(name: str, **changes) -> str:
        path = tmp_path / name
        with open(path, "wb") as out:
            np.savez(out, **{k: v for k, v in {**entries, **changes}.items() if v is not None})
        return path

    def edited(old: str, new: str) -> np.ndarray:
        assert old in tree
        return np.array(tree.replace(old, new, 1))

    f16 = '"float16", "5,10,15,ieee,1"'
    cases = [
        (write("names.npz", __tree__=edited('"scale"', '"wrong"')), ValueError,
         "missing parameters: scale"),
        (write("shape.npz", t6=np.zeros(4, np.uint32)), ValueError, r"norm.bias: shape \(4,\)"),
        (write("format.npz", __tree__=edited('[6, "float32", "8,23,127,ieee,1"]', f"[6, {f16}]"),
               t6=np.zeros(3, np.uint16)),
         ValueError, "norm.bias: format float16 in the state dict, float32"),
        (write("dtype.npz", t6=np.zeros(3, np.uint16)), ValueError, "expected uint32"),
        (write("marker.npz", __mpgrad_nn__=None), ValueError, "marker"),
        (write("v1.npz", __mpgrad_nn__=np.array("mpgrad.nn checkpoint v1")), ValueError,
         "marker"),
        (write("notree.npz", __tree__=None), ValueError, "no __tree__"),
        (write("json.npz", __tree__=np.array(tree[:-1])), ValueError, "not JSON"),
        (write("node.npz", __tree__=edited('"tensor"', '"tensr"')), ValueError,
         r"state\['scale'\]: .* is not a node"),
        (write("twice.npz", __tree__=edited("[1, ", "[0, ")), ValueError, "used twice"),
        (write("extra.npz", junk=np.zeros(2)), ValueError, r"entries \['junk'\] not expected"),
        (write("absent.npz", t3=None), ValueError, "t3 is absent"),
        (write("object.npz", t6=np.array([object()], dtype=object)), ValueError,
         "not an mpgrad.nn checkpoint"),
        (tmp_path / "missing.npz", FileNotFoundError, "no mpgrad.nn checkpoint"),
    ]
    (tmp_path / "text.npz").write_text("not a zip file")
    cases.append((tmp_path / "text.npz", ValueError, "not an mpgrad.nn checkpoint"))
    np.save(tmp_path / "array.npy", np.zeros(3))
    cases.append((tmp_path / "array.npy", ValueError, "holds one array"))
    for path, error, message in cases:
        with pytest.raises(error, match=message):
            m.load(path)
        assert same_bits(bits_of(m), before), path
    six = tmp_path / "six.npz"
    Block().to("float6_e2m3fn").save(six)
    with np.load(six) as f:
        entries = {k: f[k] for k in f.files}
    entries["t0"] = np.full(3, 200, np.uint8)  # a code beyond the 6-bit format
    with pytest.raises(ValueError, match=r"state\['scale'\]: float6_e2m3fn bit patterns lie in"):
        nn.load(write("six-bad.npz"))


# --- layers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["float32", "bfloat16", "float8_e4m3fn"])
def test_linear_init_is_torchs_rounded_once(fmt):
    lin = nn.Linear(7, 5, dtype=fmt, rng=3)
    a = math.sqrt(5)  # torch: kaiming_uniform_(a=sqrt(5)), then bias U(-1/sqrt(in), ..)
    w_bound = math.sqrt(3.0) * (math.sqrt(2.0 / (1 + a ** 2)) / math.sqrt(7))
    b_bound = 1 / math.sqrt(7)
    gen = np.random.default_rng(3)
    w = gen.uniform(-w_bound, w_bound, (5, 7))
    b = gen.uniform(-b_bound, b_bound, (5,))
    assert_bits_equal(lin.weight, mpgrad.tensor(w, dtype=fmt))  # float64 draw, one rounding
    assert_bits_equal(lin.bias, mpgrad.tensor(b, dtype=fmt))
    top = float(mpgrad.round_to(np.float64(b_bound), fmt).astype(np.float64))
    assert np.all(np.abs(lin.weight.to_float64()) <= top)
    assert lin.weight.shape == (5, 7) and lin.bias.shape == (5,)
    assert nn.Linear(7, 5, bias=False).bias is None
    assert len(list(nn.Linear(7, 5, bias=False).parameters())) == 1


def test_seeding_is_reproducible():
    mpgrad.manual_seed(42)
    a = nn.MLP((6, 8, 3))
    mpgrad.manual_seed(42)
    b = nn.MLP((6, 8, 3))
    assert same_bits(bits_of(a), bits_of(b))
    assert same_bits(bits_of(nn.MLP((6, 8, 3), rng=5)), bits_of(nn.MLP((6, 8, 3), rng=5)))
    assert not same_bits(bits_of(nn.MLP((6, 8, 3), rng=5)), bits_of(nn.MLP((6, 8, 3), rng=6)))
    lin = nn.Linear(4, 4, rng=9)  # one generator for weight and bias: not the same draws
    assert not np.array_equal(lin.weight.to_float64()[0], lin.bias.to_float64())


def test_init_functions():
    torch = pytest.importorskip("torch")
    for name, param in [("relu", None), ("tanh", None), ("leaky_relu", 0.2), ("selu", None),
                        ("linear", None), ("leaky_relu", None)]:
        assert init.calculate_gain(name, param) == torch.nn.init.calculate_gain(name, param)
    w = mpgrad.zeros(300, 200, dtype="bfloat16", requires_grad=True)
    n = w.size
    cases = [  # (function, bound of |value| or None, expected standard deviation)
        (lambda t: init.kaiming_uniform_(t, nonlinearity="relu", rng=1),
         math.sqrt(3.0) * math.sqrt(2) / math.sqrt(200), math.sqrt(2 / 200)),
        (lambda t: init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu", rng=1),
         None, math.sqrt(2 / 300)),
        (lambda t: init.xavier_uniform_(t, rng=1),
         math.sqrt(3.0) * math.sqrt(2 / 500), math.sqrt(2 / 500)),
        (lambda t: init.xavier_normal_(t, gain=2.0, rng=1), None, 2 * math.sqrt(2 / 500)),
    ]
    for fill, bound, std in cases:
        assert fill(w) is w and w.requires_grad and w.dtype == mpgrad.bfloat16
        v = w.to_float64()
        if bound is not None:
            assert np.all(np.abs(v) <= mpgrad.round_to(np.float64(bound), "bf16").astype(float))
            assert np.abs(v).max() > 0.99 * bound
        assert abs(v.std() / std - 1) < 5 / math.sqrt(n)  # a few standard errors
        assert abs(v.mean()) < 5 * std / math.sqrt(n)
        again = mpgrad.zeros(300, 200, dtype="bfloat16", requires_grad=True)
        assert_bits_equal(fill(again), w)  # the same seed, the same values
    assert init.zeros_(w).to_float64().max() == 0 and init.ones_(w).to_float64().min() == 1
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.kaiming_uniform_(mpgrad.zeros(3, requires_grad=True))
    with pytest.raises(ValueError, match="mode"):
        init.kaiming_normal_(w, mode="fan")
    with pytest.raises(ValueError, match="nonlinearity"):
        init.kaiming_normal_(w, nonlinearity="swish")


def test_layer_grads_float64():
    x = t64(4, 3, seed=1)
    lin = nn.Linear(3, 2, dtype="float64", rng=0)
    check_grads(lin, x)
    check_grads(nn.ReLU(), x)
    check_grads(nn.GELU(), x)
    check_grads(nn.GELU("tanh"), x)
    check_grads(nn.LayerNorm(3, dtype="float64"), x, rtol=1e-4)
    check_grads(nn.MLP((3, 5, 2), activation=nn.GELU, dtype="float64", rng=0), x)
    check_grads(nn.Dropout(0.4).eval(), x)
    check_grads(lambda a: F.dropout(a, 0.4, rng=3), x)  # training, with a fixed mask
    # gradients of the parameters, through the functional forms the layers call
    check_grads(lambda w, b: F.linear(x, w, b), t64(2, 3, seed=2), t64(2, seed=3))
    check_grads(lambda w, b: F.layer_norm(x, 3, w, b), t64(3, seed=4), t64(3, seed=5),
                rtol=1e-4)


def test_layers_match_their_definitions():
    x = mpgrad.randn(5, 4, rng=0)
    mlp = nn.MLP((4, 6, 6, 3), rng=1)
    assert len(mlp) == 5 and isinstance(mlp[1], nn.ReLU) and mlp[-1] is mlp[4]
    assert [type(m).__name__ for m in mlp] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    manual = x
    for layer in mlp:
        manual = layer(manual)
    assert_bits_equal(mlp(x), manual)
    head = mlp[:2]
    assert isinstance(head, nn.Sequential) and len(head) == 2
    assert_bits_equal(head(x), F.relu(F.linear(x, mlp[0].weight, mlp[0].bias)))
    with pytest.raises(IndexError, match="out of range"):
        mlp[5]
    with pytest.raises(TypeError, match="Modules"):
        nn.Sequential(nn.ReLU(), lambda v: v)
    with pytest.raises(ValueError, match="approximate"):
        nn.GELU("fast")
    ln = nn.LayerNorm((2, 4), elementwise_affine=False)
    assert list(ln.parameters()) == []
    assert_bits_equal(ln(mpgrad.randn(3, 2, 4, rng=2)),
                      F.layer_norm(mpgrad.randn(3, 2, 4, rng=2), (2, 4)))
    assert "Linear(in_features=4, out_features=6" in repr(mlp)


def test_dropout_module():
    x = mpgrad.randn(40, 50, rng=0)
    a, b = nn.Dropout(0.3, rng=7), nn.Dropout(0.3, rng=7)
    ya, yb = a(x), b(x)
    assert_bits_equal(ya, yb)  # the same seed: the same masks
    assert not np.array_equal(a(x).to_float64(), ya.to_float64())  # the next mask differs
    assert 0.6 < np.mean(ya.to_float64() != 0) < 0.8
    assert a.eval()(x) is x  # identity in eval mode
    for p in (-0.5, 1.0, 2):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            nn.Dropout(p)


# --- Linear under autocast and policies --------------------------------------------------------

def test_linear_autocast_float16_adds_the_bias_in_float16():
    lin = nn.Linear(6, 4, rng=0)
    x = mpgrad.randn(3, 6, rng=1, requires_grad=True)
    with mpgrad.autocast("float16"):
        y = lin(x)
    assert y.dtype == mpgrad.float16
    x16, w16, b16 = (mpgrad.cast(t.detach(), "float16") for t in (x, lin.weight, lin.bias))
    xw = x16 @ w16.T  # exact products summed, rounded once to float16
    assert_bits_equal(y, xw + b16)  # the bias rounded to float16, then a float16 addition
    assert y.to_float64().tolist() != (xw.to("float32") + lin.bias).to_float64().tolist()
    y.sum().backward()  # gradients flow back through the casts, in the parameters' format
    assert lin.weight.grad.dtype == lin.bias.grad.dtype == x.grad.dtype == mpgrad.float32
    with mpgrad.autocast("bfloat16"):
        assert lin(x).dtype == mpgrad.bfloat16
        assert nn.MLP((6, 5, 2), rng=0)(x).dtype == mpgrad.bfloat16


def test_linear_refuses_mixed_formats_without_policy_and_follows_a_policy():
    lin = nn.Linear(6, 4, rng=0)
    x16 = mpgrad.randn(3, 6, rng=1, dtype="float16")
    with pytest.raises(RuntimeError, match="float16 != float32"):  # as torch: no promotion
        lin(x16)
    with pytest.raises(RuntimeError, match="float16 != bfloat16"):
        nn.Linear(6, 4, dtype="bf16", rng=0)(x16)
    with mpgrad.use_policy("p=f32,c=bf16,o=f32"):
        assert lin(x16).dtype == mpgrad.bfloat16
    with mpgrad.use_policy(mpgrad.Policy(compute="float16", strict=True)):
        with pytest.raises(TypeError, match="strict"):
            lin(x16)


# --- PyTorch CPU float32 -----------------------------------------------------------------------

def normwise_ulps(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / mpgrad.ulp(np.max(np.abs(want)), "float32"))


def torch_copy(module):
    """A torch Sequential/Linear with module's float32 parameters."""
    torch = pytest.importorskip("torch")
    if isinstance(module, nn.Linear):
        t = torch.nn.Linear(module.in_features, module.out_features)
    else:
        t = torch.nn.Sequential(*[
            torch.nn.Linear(m.in_features, m.out_features) if isinstance(m, nn.Linear)
            else torch.nn.ReLU() for m in module])
    with torch.no_grad():
        for (name, p), (tname, tp) in zip(module.named_parameters(), t.named_parameters()):
            assert name == tname
            tp.copy_(torch.from_numpy(p.numpy().copy()))
    return t


def test_linear_vs_torch():
    torch = pytest.importorskip("torch")
    for seed in TORCH_SEEDS:
        lin = nn.Linear(16, 8, rng=seed)
        tl = torch_copy(lin)
        v = (np.random.default_rng(seed).standard_normal((5, 16)) * 3).astype(np.float32)
        g = np.random.default_rng(seed + 1).standard_normal((5, 8)).astype(np.float32)
        x, xt = mpgrad.tensor(v, requires_grad=True), torch.tensor(v, requires_grad=True)
        y, yt = lin(x), tl(xt)
        y.backward(mpgrad.tensor(g)), yt.backward(torch.tensor(g))
        assert normwise_ulps(y.numpy(), yt.detach().numpy()) <= 2.125
        assert normwise_ulps(x.grad.numpy(), xt.grad.numpy()) <= 3
        assert normwise_ulps(lin.weight.grad.numpy(), tl.weight.grad.numpy()) <= 2
        assert normwise_ulps(lin.bias.grad.numpy(), tl.bias.grad.numpy()) <= 2


def test_mlp_with_cross_entropy_vs_torch():
    torch = pytest.importorskip("torch")
    bounds = {"0.weight": 3, "0.bias": 5.5, "2.weight": 4, "2.bias": 2.25}
    for seed in TORCH_SEEDS[::3]:
        mlp = nn.MLP((16, 32, 10), rng=seed)
        tm = torch_copy(mlp)
        v = np.random.default_rng(seed).standard_normal((8, 16)).astype(np.float32)
        labels = np.random.default_rng(seed).integers(0, 10, 8)
        y, yt = mlp(mpgrad.tensor(v)), tm(torch.tensor(v))
        assert normwise_ulps(y.numpy(), yt.detach().numpy()) <= 2.5
        loss = F.cross_entropy(y, labels)
        tloss = torch.nn.functional.cross_entropy(yt, torch.tensor(labels))
        assert abs(mpgrad.ulp_distance(loss.numpy(), np.float32(tloss.item()), "float32")) <= 2
        loss.backward(), tloss.backward()
        for (name, p), (_, tp) in zip(mlp.named_parameters(), tm.named_parameters()):
            assert normwise_ulps(p.grad.numpy(), tp.grad.numpy()) <= bounds[name], name
