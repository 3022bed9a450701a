"""mpgrad.optim: SGD / Adam / AdamW against torch.optim bit for bit (float32), against
hand-derived roundings (Fractions rounded by the MPFR reference), master weights, stochastic
and Kahan updates, state_dict, clipping and argument errors."""

from __future__ import annotations

import math
from fractions import Fraction

import gmpy2
import numpy as np
import pytest

import mpgrad
import mpgrad.optim as optim
from mpgrad.optim import SGD, Adam, AdamW, clip_grad_norm_, clip_grad_value_

try:  # tests/ may or may not become a package
    from .reference import ref_round
except ImportError:
    from reference import ref_round

F16, BF16, F32 = mpgrad.float16, mpgrad.bfloat16, mpgrad.float32
SHAPE = (5, 7)  # 35 elements: full 8-wide vectors and a tail in torch's kernels


def rn(x, fmt=F32) -> float:
    """The exact value x (Fraction or float) rounded to nearest even by the MPFR reference."""
    return ref_round(Fraction(x), fmt, "nearest_even")


def rn_sqrt(x: Fraction, fmt=F32) -> float:
    """sqrt(x) rounded once: MPFR at 300 bits, then to fmt (the root of a value of < 60 bits
    is never within 2**-300 of a midpoint without being one)."""
    with gmpy2.context(precision=300):
        r = gmpy2.sqrt(gmpy2.mpq(x.numerator, x.denominator))
    return ref_round(Fraction(*r.as_integer_ratio()), fmt, "nearest_even")


def leaf(values, dtype=F32) -> mpgrad.Tensor:
    return mpgrad.tensor(np.asarray(values), dtype=dtype, requires_grad=True)


def data(shape=SHAPE, steps=6, seed=5):
    """Initial float32 parameters and one gradient per step, of varied magnitudes."""
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(shape).astype(np.float32)
    grads = [(rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 2)).astype(np.float32)
             for _ in range(steps)]
    return p0, grads


def run_mpgrad(cls, kwargs, p0, grads, dtype=F32):
    p = leaf(p0, dtype)
    opt = cls([p], **kwargs)
    for g in grads:
        p.grad = mpgrad.tensor(g, dtype=dtype)
        opt.step()
    return p, opt


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32))


# --- torch ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch_any():
    """torch, where it is installed."""
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def torch(torch_any):
    """torch, where its CPU kernels fuse as measured on AVX2 (else the bit-for-bit tests skip).

    Measured (torch 2.13 CPU, AVX2): add(alpha), lerp and the last step of addcmul are one
    fused multiply-add; with ATEN_CPU_CAPABILITY=default they round twice.
    """
    torch = torch_any
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(64).astype(np.float32) for _ in range(3))
    ta, tb, tc = (torch.from_numpy(x.copy()) for x in (a, b, c))
    from mpgrad.ops.fused import lerp as _lerp, muladd as _muladd
    t = lambda x: mpgrad.tensor(x)  # noqa: E731
    probes = [
        (ta.add(tb, alpha=0.1234567), _muladd(0.1234567, t(b), t(a))),
        (ta.addcmul(tb, tc, value=0.01), _muladd(mpgrad.mul(t(b), 0.01), t(c), t(a))),
        (ta.lerp(tb, 0.1), _lerp(t(a), t(b), 0.1)),
        (ta.lerp(tb, 0.7), _lerp(t(a), t(b), 0.7)),
    ]
    if not all(np.array_equal(x.numpy(), y.numpy()) for x, y in probes):
        pytest.skip(f"torch's CPU kernels (capability {torch.backends.cpu.get_cpu_capability()})"
                    " do not fuse add(alpha)/addcmul/lerp as on AVX2; see docs/optim.md")
    return torch


def run_torch(torch, cls, kwargs, p0, grads, cr_sqrt=False):
    """torch.optim's single-tensor path; cr_sqrt replaces Tensor.sqrt by NumPy's (correctly
    rounded) float32 sqrt, since torch 2.13's CPU float32 sqrt is not correctly rounded."""
    p = torch.tensor(p0, requires_grad=True)
    opt = cls([p], foreach=False, **kwargs)
    old = torch.Tensor.sqrt
    if cr_sqrt:
        torch.Tensor.sqrt = lambda self: torch.from_numpy(np.sqrt(self.numpy()))
    try:
        for g in grads:
            p.grad = torch.tensor(g)
            opt.step()
    finally:
        torch.Tensor.sqrt = old
    return p.detach().numpy(), opt


SGD_VARIANTS = [
    {"lr": 0.0123},
    {"lr": 0.0123, "momentum": 0.9},
    {"lr": 0.0123, "momentum": 0.9, "dampening": 0.3},
    {"lr": 0.0123, "momentum": 0.9, "nesterov": True},
    {"lr": 0.0123, "weight_decay": 0.05},
    {"lr": 0.1, "momentum": 0.8, "weight_decay": 0.05, "nesterov": True, "maximize": True},
]


@pytest.mark.parametrize("kwargs", SGD_VARIANTS, ids=str)
def test_sgd_matches_torch_bit_for_bit(torch, kwargs):
    p0, grads = data()
    for steps in (1, len(grads)):
        p, opt = run_mpgrad(SGD, kwargs, p0, grads[:steps])
        tp, topt = run_torch(torch, torch.optim.SGD, kwargs, p0, grads[:steps])
        np.testing.assert_array_equal(p.numpy(), tp)
        if kwargs.get("momentum"):
            tbuf = next(iter(topt.state.values()))["momentum_buffer"].numpy()
            np.testing.assert_array_equal(opt.state[p]["momentum_buffer"].numpy(), tbuf)


ADAM_VARIANTS = [
    (Adam, "Adam", {"lr": 0.0123}),
    (Adam, "Adam", {"lr": 0.0123, "weight_decay": 0.1}),
    (AdamW, "AdamW", {"lr": 0.0123}),
    (AdamW, "AdamW", {"lr": 0.0123, "weight_decay": 0.3, "betas": (0.6, 0.95)}),
    (Adam, "Adam", {"lr": 0.0123, "betas": (0.6, 0.95), "eps": 1e-3, "maximize": True}),
]


@pytest.mark.parametrize("cls,name,kwargs", ADAM_VARIANTS, ids=lambda v: str(v))
def test_adam_matches_torch_with_correctly_rounded_sqrt(torch, cls, name, kwargs):
    p0, grads = data()
    for steps in (1, len(grads)):
        p, opt = run_mpgrad(cls, kwargs, p0, grads[:steps])
        tp, topt = run_torch(torch, getattr(torch.optim, name), kwargs, p0, grads[:steps],
                             cr_sqrt=True)
        np.testing.assert_array_equal(p.numpy(), tp)
        tstate = next(iter(topt.state.values()))
        assert opt.state[p]["step"] == tstate["step"].item() == steps
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(opt.state[p][key].numpy(), tstate[key].numpy())


def test_torch_sqrt_is_not_correctly_rounded(torch_any):
    """The measured fact behind cr_sqrt: torch 2.13 CPU float32 sqrt is off by one ulp on
    about 1 in 6 random inputs; mpgrad's (and NumPy's) is correctly rounded."""
    x = (np.abs(np.random.default_rng(1).standard_normal(4000)) + 0.01).astype(np.float32)
    mine = mpgrad.sqrt(mpgrad.tensor(x)).numpy()
    np.testing.assert_array_equal(mine, np.sqrt(x))
    d = ulp_distance(torch_any.from_numpy(x).sqrt().numpy(), mine)
    assert d.max() <= 1
    print(f"torch float32 sqrt: {np.count_nonzero(d)} of {d.size} one ulp off")


@pytest.mark.parametrize("cls,name", [(Adam, "Adam"), (AdamW, "AdamW")])
def test_adam_one_step_against_real_torch_within_sqrt_bound(torch, cls, name):
    """Unpatched torch: the moments are equal bit for bit; the parameter differs only
    through torch's sqrt (<= 1 ulp), so by at most 2**-21 |delta| + 1 ulp of the result."""
    rng = np.random.default_rng(9)
    n = 4000
    p0 = rng.standard_normal(n).astype(np.float32)
    m0 = (rng.standard_normal(n) * 0.1).astype(np.float32)
    v0 = (np.abs(rng.standard_normal(n)) * 0.01).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    p = leaf(p0)
    opt = cls([p], lr=0.01)
    sd = opt.state_dict()
    sd["state"] = {0: {"step": 4, "exp_avg": mpgrad.tensor(m0), "exp_avg_sq": mpgrad.tensor(v0)}}
    opt.load_state_dict(sd)
    p.grad = mpgrad.tensor(g)
    opt.step()
    tp = torch.tensor(p0, requires_grad=True)
    topt = getattr(torch.optim, name)([tp], lr=0.01, foreach=False)
    topt.state[tp] = {"step": torch.tensor(4.0), "exp_avg": torch.tensor(m0),
                      "exp_avg_sq": torch.tensor(v0)}
    tp.grad = torch.tensor(g)
    topt.step()
    for key in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_array_equal(opt.state[p][key].numpy(), topt.state[tp][key].numpy())
    mine, theirs = p.to_float64(), tp.detach().numpy().astype(np.float64)
    delta = np.abs(mine - p0)
    bound = 2.0 ** -21 * delta + np.spacing(np.abs(mine).astype(np.float32))
    assert np.all(np.abs(mine - theirs) <= bound)
    print(f"{name}: {np.count_nonzero(mine != theirs)} of {n} parameters differ from torch")


# --- hand-derived, torch-free ------------------------------------------------------------

def test_sgd_update_is_one_fused_rounding():
    """p + (-lr)*g rounded once (torch's add(alpha) is an FMA), lr first rounded to the format."""
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(64).astype(np.float32)
    g = rng.standard_normal(64).astype(np.float32)
    p = leaf(p0)
    opt = SGD([p], lr=0.1)
    p.grad = mpgrad.tensor(g)
    opt.step()
    lr = Fraction(rn(-0.1))
    fused = [rn(Fraction(float(a)) + lr * Fraction(float(b))) for a, b in zip(p0, g)]
    twice = [rn(Fraction(float(a)) + Fraction(rn(lr * Fraction(float(b))))) for a, b in zip(p0, g)]
    np.testing.assert_array_equal(p.to_float64(), fused)
    assert fused != twice  # the data tells one rounding from two


def test_sgd_momentum_bf16_by_hand():
    """Two steps in bfloat16, every value rounded by the MPFR reference from Fractions."""
    p0, g1, g2 = [1.0, -0.3, 2.5], [0.7, 0.11, -1.3], [0.2, -0.9, 0.45]
    p0, g1, g2 = ([rn(v, BF16) for v in vs] for vs in (p0, g1, g2))
    p = leaf(p0, BF16)
    opt = SGD([p], lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)
    F = lambda v: Fraction(v)  # noqa: E731
    lr, mom, damp, wd = (F(rn(v, BF16)) for v in (-0.05, 0.9, 1 - 0.1, 0.01))
    want, buf = list(p0), None
    for g in (g1, g2):
        p.grad = mpgrad.tensor(g, dtype=BF16)
        opt.step()
        gd = [rn(wd * F(x) + F(gi), BF16) for x, gi in zip(want, g)]
        buf = gd if buf is None else [rn(damp * F(gi) + F(rn(F(b) * mom, BF16)), BF16)
                                      for b, gi in zip(buf, gd)]
        want = [rn(F(x) + lr * F(b), BF16) for x, b in zip(want, buf)]
        np.testing.assert_array_equal(p.to_float64(), want)
        np.testing.assert_array_equal(opt.state[p]["momentum_buffer"].to_float64(), buf)


def test_adam_step_by_hand():
    """Adam's third step from a given state, float32, by the documented sequence."""
    p0 = [0.5, -1.25, 3.0]
    m0, v0 = [0.01, -0.2, 0.3], [1e-4, 0.04, 0.5]
    g = [0.3, -0.7, 2.0]
    p0, m0, v0, g = ([rn(x) for x in vs] for vs in (p0, m0, v0, g))
    p = leaf(p0)
    opt = Adam([p], lr=0.01)
    sd = opt.state_dict()
    sd["state"] = {0: {"step": 2, "exp_avg": mpgrad.tensor(m0), "exp_avg_sq": mpgrad.tensor(v0)}}
    opt.load_state_dict(sd)
    p.grad = mpgrad.tensor(g)
    opt.step()
    F = Fraction
    w, b2, c2 = F(rn(1 - 0.9)), F(rn(0.999)), F(rn(1 - 0.999))
    assert abs(w) < F(1, 2)  # lerp's first branch: m + w*(g - m), the product-sum fused
    m = [rn(F(a) + w * F(rn(F(gi) - F(a)))) for a, gi in zip(m0, g)]
    v = [rn(F(rn(c2 * F(gi))) * F(gi) + F(rn(F(a) * b2))) for a, gi in zip(v0, g)]
    step_size = 0.01 / (1 - 0.9 ** 3)
    bc2_sqrt = F(rn((1 - 0.999 ** 3) ** 0.5))
    denom = [rn(F(rn(F(rn_sqrt(F(x))) / bc2_sqrt)) + F(rn(1e-8))) for x in v]
    delta = [rn(F(rn(F(rn(-step_size)) * F(a))) / F(d)) for a, d in zip(m, denom)]
    want = [rn(F(x) + F(d)) for x, d in zip(p0, delta)]
    np.testing.assert_array_equal(opt.state[p]["exp_avg"].to_float64(), m)
    np.testing.assert_array_equal(opt.state[p]["exp_avg_sq"].to_float64(), v)
    np.testing.assert_array_equal(p.to_float64(), want)
    assert opt.state[p]["step"] == 3


def test_adamw_decay_is_a_separate_rounding():
    p0 = [rn(1.7), rn(-0.3)]
    p = leaf(p0)
    opt = AdamW([p], lr=0.1, weight_decay=0.5)
    p.grad = mpgrad.tensor([0.0, 0.0])
    opt.step()  # zero gradient: m = v = 0, delta = 0 / eps = 0; only the decay acts
    np.testing.assert_array_equal(p.to_float64(), [rn(Fraction(x) * Fraction(rn(1 - 0.1 * 0.5)))
                                                   for x in p0])
    assert opt.lost_updates == 0


# --- master weights, stochastic and Kahan updates ----------------------------------------

def test_master_weights_keep_updates_float16_loses():
    """lr*g = 1e-4 is below half an ulp of 1.0 in float16 (2**-12): lost without a master."""
    n = 6
    plain = leaf(np.ones(n), F16)
    opt = SGD([plain], lr=1e-4)
    for _ in range(5):
        plain.grad = mpgrad.ones(n, dtype=F16)
        opt.step()
    np.testing.assert_array_equal(plain.to_float64(), np.ones(n))
    assert opt.lost_updates == 5 * n and opt.steps == 5

    p = leaf(np.ones(n), F16)
    opt = SGD([p], lr=1e-4, master_dtype="float32")
    p.grad = mpgrad.ones(n, dtype=F16)
    opt.step()
    master = opt.state[p]["master"]
    assert master.dtype == F32 and np.all(master.to_float64() < 1)
    np.testing.assert_array_equal(p.to_float64(), np.ones(n))  # 1 - 1e-4 rounds back to 1
    for _ in range(4):
        p.grad = mpgrad.ones(n, dtype=F16)
        opt.step()
    assert opt.lost_updates == 0
    np.testing.assert_array_equal(p.to_float64(), np.full(n, 1 - 2 ** -11))  # 1 - 5e-4
    np.testing.assert_array_equal(p.numpy(), mpgrad.round_to(opt.state[p]["master"].numpy(), F16))


def test_master_trajectory_equals_float32_optimizer():
    """A bfloat16 model with a float32 master follows exactly a float32 model's trajectory."""
    p0, grads = data(steps=4)
    p0 = mpgrad.round_to(p0, BF16)
    grads = [mpgrad.round_to(g, BF16) for g in grads]
    low = leaf(p0, BF16)
    ref = leaf(mpgrad.to_float64(p0), F32)
    o_low = AdamW([low], lr=0.01, master_dtype=F32)
    o_ref = AdamW([ref], lr=0.01)
    for g in grads:
        low.grad, ref.grad = mpgrad.tensor(g), mpgrad.tensor(mpgrad.to_float64(g), dtype=F32)
        o_low.step()
        o_ref.step()
        np.testing.assert_array_equal(o_low.state[low]["master"].numpy(), ref.numpy())
        np.testing.assert_array_equal(low.numpy(), mpgrad.round_to(ref.numpy(), BF16))


def test_stochastic_update_is_unbiased_and_reproducible():
    """p = 1 - 2**-10 * g in bfloat16: each element rounds down with probability equal to the
    discarded fraction, so the mean over elements and seeds approaches the exact update."""
    n = 2000
    rng = np.random.default_rng(4)
    g = mpgrad.round_to(rng.uniform(0.5, 1.5, n), BF16)
    exact = 1 - 2.0 ** -10 * mpgrad.to_float64(g)
    means = []
    for seed in range(5):
        p = leaf(np.ones(n), BF16)
        opt = SGD([p], lr=2.0 ** -10, update_mode="stochastic", rng=seed)
        p.grad = mpgrad.tensor(g)
        opt.step()
        err = p.to_float64() - exact
        assert np.all(np.abs(err) < 2.0 ** -8)  # one of the two neighbours
        means.append(err.mean())
    sigma = 2.0 ** -8 * 0.5 / math.sqrt(5 * n)  # worst case p(1-p) = 1/4
    assert abs(np.mean(means)) < 5 * sigma
    q = leaf(np.ones(n), BF16)
    q.grad = mpgrad.tensor(g)
    SGD([q], lr=2.0 ** -10).step()
    assert abs((q.to_float64() - exact).mean()) > 20 * sigma  # nearest: biased

    def run(seed=None, rng=None):
        if seed is not None:
            mpgrad.manual_seed(seed)
        p = leaf(np.ones(n), BF16)
        opt = Adam([p], lr=1e-3, update_mode="stochastic", rng=rng)
        for _ in range(3):
            p.grad = mpgrad.tensor(g)
            opt.step()
        return p.numpy().copy()
    np.testing.assert_array_equal(run(seed=7), run(seed=7))
    np.testing.assert_array_equal(run(rng=11), run(rng=11))
    assert not np.array_equal(run(rng=11), run(rng=12))


def test_kahan_tracks_the_exact_sum():
    """300 updates of about -1e-4 on bfloat16 ones (half an ulp below 1 is 2**-9)."""
    n, steps, lr = 50, 300, 1e-4
    rng = np.random.default_rng(6)
    grads = [mpgrad.round_to(rng.uniform(0.5, 1.5, n), BF16) for _ in range(steps)]
    lr_b = rn(-lr, BF16)
    exact = 1 + lr_b * np.sum([mpgrad.to_float64(g) for g in grads], axis=0)
    errors = {}
    for name, kw in {"nearest": {}, "kahan": {"kahan": True}}.items():
        p = leaf(np.ones(n), BF16)
        opt = SGD([p], lr=lr, **kw)
        for g in grads:
            p.grad = mpgrad.tensor(g)
            opt.step()
        errors[name] = np.abs(p.to_float64() - exact).max()
        if name == "kahan":
            assert opt.state[p]["kahan_comp"].dtype == BF16
    assert errors["nearest"] > 0.02  # every update lost: p stays 1
    assert errors["kahan"] <= 2.0 ** -8  # within one ulp of the exact sum


def test_kahan_sequence_by_hand():
    """c = fma(-lr, g, c); t = p; p = p + c; c = c + (t - p), each rounded to bfloat16."""
    p = leaf([1.0, 3.0], BF16)
    opt = SGD([p], lr=0.003, kahan=True)
    F = Fraction
    want, c = [1.0, 3.0], [0.0, 0.0]
    lr = F(rn(-0.003, BF16))
    for g in ([1.0, 0.5], [2.0, -1.5], [0.25, 1.0]):
        p.grad = mpgrad.tensor(g, dtype=BF16)
        opt.step()
        c = [rn(lr * F(gi) + F(ci), BF16) for gi, ci in zip(g, c)]
        new = [rn(F(x) + F(ci), BF16) for x, ci in zip(want, c)]
        c = [rn(F(ci) + F(rn(F(x) - F(y), BF16)), BF16) for ci, x, y in zip(c, want, new)]
        want = new
        np.testing.assert_array_equal(p.to_float64(), want)
        np.testing.assert_array_equal(opt.state[p]["kahan_comp"].to_float64(), c)


# --- state_dict ------------------------------------------------------------------------

def test_state_dict_round_trip_is_exact():
    p0, grads = data(steps=6)
    a, b = leaf(p0, BF16), leaf(np.zeros(3), BF16)
    opt = Adam([{"params": [a]}, {"params": [b], "lr": 0.1}], lr=0.01, master_dtype="f32")
    for g in grads[:3]:
        a.grad, b.grad = mpgrad.tensor(g, dtype=BF16), mpgrad.tensor([1.0, -2.0, 0.5], dtype=BF16)
        opt.step()
    sd = opt.state_dict()
    assert sd["counters"] == {"steps": 3, "lost_updates": opt.lost_updates}
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    a2, b2 = leaf(a.to_float64(), BF16), leaf(b.to_float64(), BF16)
    opt2 = Adam([{"params": [a2]}, {"params": [b2], "lr": 0.5}], lr=0.01, master_dtype="f32")
    opt2.load_state_dict(sd)
    assert opt2.param_groups[1]["lr"] == 0.1 and opt2.param_groups[1]["params"][0] is b2
    for key, t in opt.state[a].items():
        t2 = opt2.state[a2][key]
        assert t2 == t if key == "step" else np.array_equal(t2.numpy(), t.numpy())
    for g in grads[3:]:
        for (x, o) in ((a, opt), (a2, opt2)):
            x.grad = mpgrad.tensor(g, dtype=BF16)
            o.step()
        np.testing.assert_array_equal(a.numpy(), a2.numpy())
        np.testing.assert_array_equal(opt.state[a]["exp_avg_sq"].numpy(),
                                      opt2.state[a2]["exp_avg_sq"].numpy())


def _snapshot(opt):
    sd = opt.state_dict()
    return repr(sd["param_groups"]), {k: {n: (v if isinstance(v, int) else v.numpy().tobytes())
                                          for n, v in s.items()} for k, s in sd["state"].items()}


@pytest.mark.parametrize("corrupt,match", [
    (lambda sd: sd["state"][1].update(exp_avg=mpgrad.zeros(4)), "shape"),
    (lambda sd: sd["state"][1].update(exp_avg=mpgrad.zeros(3, dtype="bf16")), "bfloat16"),
    (lambda sd: sd["state"][1].pop("exp_avg_sq"), "missing keys"),
    (lambda sd: sd["state"][1].update(momentum_buffer=mpgrad.zeros(3)), "unexpected keys"),
    (lambda sd: sd["state"][1].update(step=-1), "step"),
    (lambda sd: sd["state"][1].update(exp_avg=np.zeros(3, np.float32)), "mpgrad Tensor"),
    (lambda sd: sd["state"].update({7: {}}), "index 7"),
    (lambda sd: sd["param_groups"].pop(), "number of parameter groups"),
    (lambda sd: sd["param_groups"][1]["params"].append(9), "size"),
    (lambda sd: sd["param_groups"][0].pop("eps"), "keys"),
    (lambda sd: sd.pop("counters"), "keys"),
])
def test_bad_state_dict_is_refused_and_nothing_loaded(corrupt, match):
    a, b = leaf([1.0, 2.0]), leaf([3.0, 4.0, 5.0])
    opt = Adam([{"params": [a]}, {"params": [b]}], lr=0.01)
    for _ in range(2):
        a.grad, b.grad = mpgrad.tensor([0.5, 1.0]), mpgrad.tensor([1.0, -1.0, 2.0])
        opt.step()
    good = opt.state_dict()
    other = Adam([{"params": [leaf([0.0, 0.0])]}, {"params": [leaf([0.0, 0.0, 0.0])]}], lr=0.5)
    before = _snapshot(opt)
    bad = opt.state_dict()
    corrupt(bad)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(bad)
    assert _snapshot(opt) == before
    opt.load_state_dict(good)
    other.load_state_dict(good)
    assert other.param_groups[0]["lr"] == 0.01


def test_master_state_dict_refused_without_master():
    a = leaf([1.0, 2.0], BF16)
    opt = SGD([a], lr=0.1, momentum=0.9, master_dtype="float32")
    a.grad = mpgrad.tensor([1.0, 1.0], dtype=BF16)
    opt.step()
    assert opt.state[a]["momentum_buffer"].dtype == F32
    with pytest.raises(ValueError, match="unexpected keys \\['master'\\]"):
        SGD([leaf([1.0, 2.0], BF16)], lr=0.1, momentum=0.9).load_state_dict(opt.state_dict())


# --- state derived from the parameters (master copy, Kahan compensation) -----------------

def test_loading_the_model_refreshes_the_master_copy():
    """The issue's run: Linear in float16, SGD with a float32 master; save the model, 2 steps,
    load the saved model, 1 step: the step starts from the loaded weights, re-widened, with
    the momentum buffer kept (torch keeps it too)."""
    lin = mpgrad.nn.Linear(2, 1, dtype=F16, rng=0)
    opt = SGD(lin.parameters(), lr=0.1, momentum=0.9, master_dtype="float32")
    saved = lin.state_dict()
    x = mpgrad.tensor([[1.0, 1.0]], dtype=F16)  # weight and bias gradients: all ones

    def step():
        opt.zero_grad()
        lin(x).sum().backward()
        opt.step()

    step(), step()
    lin.load_state_dict(saved)
    step()
    F, lr, mom = Fraction, Fraction(rn(-0.1)), Fraction(rn(0.9))
    buf = 1.0  # step 1: the gradient; then buf = fma(1 - 0, g, round(buf * 0.9)), twice
    for _ in range(2):
        buf = rn(1 + F(rn(F(buf) * mom)))
    for name, p in lin.named_parameters():
        w0 = saved[name].to_float64().ravel()
        master = [rn(F(w) + lr * F(buf)) for w in w0]  # from the loaded weights, exactly
        np.testing.assert_array_equal(opt.state[p]["master"].to_float64().ravel(), master)
        np.testing.assert_array_equal(p.to_float64().ravel(), [rn(m, F16) for m in master])
        np.testing.assert_array_equal(opt.state[p]["momentum_buffer"].to_float64(),
                                      np.full(p.shape, buf))


def test_copy_into_a_parameter_resets_the_kahan_compensation():
    """kahan=True: p.copy_ between steps starts the compensation again from zero."""
    p = leaf([1.0, 3.0], BF16)
    opt = SGD([p], lr=0.003, kahan=True)
    for g in ([1.0, 0.5], [2.0, -1.5]):
        p.grad = mpgrad.tensor(g, dtype=BF16)
        opt.step()
    assert np.any(opt.state[p]["kahan_comp"].to_float64() != 0)
    p.copy_(np.array([2.0, -1.0]))
    p.grad = mpgrad.tensor([0.25, 1.0], dtype=BF16)
    opt.step()
    F, lr = Fraction, Fraction(rn(-0.003, BF16))
    c = [rn(lr * F(g), BF16) for g in (0.25, 1.0)]  # c = fma(-lr, g, 0)
    want = [rn(F(x) + F(ci), BF16) for x, ci in zip((2.0, -1.0), c)]
    c = [rn(F(ci) + F(rn(F(x) - F(y), BF16)), BF16) for ci, x, y in zip(c, (2.0, -1.0), want)]
    np.testing.assert_array_equal(p.to_float64(), want)
    np.testing.assert_array_equal(opt.state[p]["kahan_comp"].to_float64(), c)


def test_reloading_the_same_bits_keeps_the_master():
    """A parameter that holds the bits the last step wrote keeps its more precise master."""
    p0, grads = data(steps=4)
    runs = []
    for reload in (False, True):
        p = leaf(mpgrad.round_to(p0, F16), F16)
        opt = SGD([p], lr=1e-3, master_dtype="float32")
        for i, g in enumerate(grads):
            if reload and i == 2:
                p.data = np.array(p.data)  # new storage, same bits
                p.data.flags.writeable = False
            p.grad = mpgrad.tensor(g, dtype=F16)
            opt.step()
        runs.append((p.numpy().copy(), opt.state[p]["master"].numpy().copy()))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(mpgrad.to_float64(runs[0][1]), mpgrad.to_float64(runs[0][0]))


@pytest.mark.parametrize("model_first", [True, False])
def test_model_and_optimizer_load_in_either_order(model_first):
    """Rolling a run back to a checkpoint of model + optimizer redoes its steps exactly,
    whichever is loaded first (the loaded master copy holds, whatever the parameter held
    when it was loaded)."""
    p0, grads = data(steps=5)
    p = leaf(mpgrad.round_to(p0, BF16), BF16)
    opt = Adam([p], lr=0.01, master_dtype="float32")
    trajectory = []
    for i, g in enumerate(grads):
        if i == 3:
            model, state = p.detach(), opt.state_dict()
        p.grad = mpgrad.tensor(g, dtype=BF16)
        opt.step()
        trajectory.append((p.numpy().copy(), opt.state[p]["master"].numpy().copy()))
    loads = [lambda: p.copy_(model), lambda: opt.load_state_dict(state)]
    for load in (loads if model_first else loads[::-1]):
        load()
    for g, (weights, master) in zip(grads[3:], trajectory[3:]):
        p.grad = mpgrad.tensor(g, dtype=BF16)
        opt.step()
        np.testing.assert_array_equal(p.numpy(), weights)
        np.testing.assert_array_equal(opt.state[p]["master"].numpy(), master)


def test_the_optimizers_own_generator_is_saved():
    """update_mode='stochastic' with rng=seed: the generator's state is in the state_dict, so a
    resumed optimizer rounds as the uninterrupted one; None when it draws from the global one."""
    p0, grads = data(steps=6)
    p0 = mpgrad.round_to(p0, BF16)
    p = leaf(p0, BF16)
    opt = SGD([p], lr=0.01, update_mode="stochastic", rng=7)
    for i, g in enumerate(grads):
        if i == 3:
            model, state = p.detach(), opt.state_dict()
        p.grad = mpgrad.tensor(g, dtype=BF16)
        opt.step()
    assert state["rng"]["bit_generator"] == "PCG64"
    q = leaf(model.to_float64(), BF16)
    resumed = SGD([q], lr=0.01, update_mode="stochastic", rng=123)
    resumed.load_state_dict(state)
    for g in grads[3:]:
        q.grad = mpgrad.tensor(g, dtype=BF16)
        resumed.step()
    np.testing.assert_array_equal(q.numpy(), p.numpy())
    assert SGD([leaf([1.0])], lr=0.1).state_dict()["rng"] is None
    with pytest.raises(ValueError, match="create this one without rng="):
        SGD([leaf([1.0])], lr=0.1, rng=3).load_state_dict(
            SGD([leaf([1.0])], lr=0.1).state_dict())
    with pytest.raises(ValueError, match="create this one with rng="):
        SGD([leaf([1.0])], lr=0.1).load_state_dict(SGD([leaf([1.0])], lr=0.1, rng=3).state_dict())


@pytest.mark.parametrize("corrupt,match", [
    (lambda sd: sd["param_groups"][0].update(params=["0"]), "list of parameter indices"),
    (lambda sd: sd["param_groups"][0].update(params=(0,)), "list of parameter indices"),
    (lambda sd: sd["rng"].update(has_uint32=2), r"rng.*has_uint32"),
    (lambda sd: sd["rng"]["state"].update(inc=2), r"rng.*odd"),
    (lambda sd: sd["rng"].update(bit_generator="MT19937"), r"rng.*PCG64"),
    (lambda sd: sd.pop("rng"), "keys"),
])
def test_bad_groups_and_generators_are_refused(corrupt, match):
    p = leaf([1.0, 2.0], BF16)
    opt = SGD([p], lr=0.1, momentum=0.9, master_dtype="float32", update_mode="stochastic",
              rng=0)
    p.grad = mpgrad.tensor([1.0, -1.0], dtype=BF16)
    opt.step()
    bad, before = opt.state_dict(), opt.state_dict()
    corrupt(bad)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["rng"] == before["rng"] and after["param_groups"] == before["param_groups"]
    assert np.array_equal(after["state"][0]["master"].numpy(), before["state"][0]["master"].numpy())


# --- clipping ------------------------------------------------------------------------------

def _grads_pair(torch, arrays):
    mp = [leaf(np.zeros_like(a)) for a in arrays]
    tp = [torch.zeros(a.shape, requires_grad=True) for a in arrays]
    for x, y, a in zip(mp, tp, arrays):
        x.grad, y.grad = mpgrad.tensor(a), torch.tensor(a)
    return mp, tp


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_grad_norm_against_torch(torch_any, norm_type):
    torch = torch_any
    rng = np.random.default_rng(8)
    arrays = [(rng.standard_normal(s) * 3).astype(np.float32) for s in ((5, 7), (33,), (2, 2))]
    mp, tp = _grads_pair(torch, arrays)
    total = clip_grad_norm_(mp, 1.5, norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(tp, 1.5, norm_type, foreach=False)
    assert total.dtype == F32
    d = ulp_distance(total.numpy().reshape(1), ttotal.numpy().reshape(1))[0]
    assert d <= (0 if norm_type == math.inf else 2)
    if d == 0:  # the same norm: the same coefficient and products, bit for bit
        for x, y in zip(mp, tp):
            np.testing.assert_array_equal(x.grad.numpy(), y.grad.numpy())
    else:
        for x, y in zip(mp, tp):
            assert ulp_distance(x.grad.numpy(), y.grad.numpy()).max() <= 4


def test_clip_grad_norm_is_correctly_rounded():
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal(n).astype(np.float32) for n in (40, 9)]
    mp = [leaf(np.zeros_like(a)) for a in arrays]
    for x, a in zip(mp, arrays):
        x.grad = mpgrad.tensor(a)
    total = clip_grad_norm_(mp, 0.5)
    norms = [rn_sqrt(sum(Fraction(float(v)) ** 2 for v in a)) for a in arrays]
    want = rn_sqrt(sum(Fraction(n) ** 2 for n in norms))
    assert total.item() == want
    recip = rn(1 / Fraction(rn(Fraction(want) + Fraction(rn(1e-6)))))
    coef = rn(Fraction(recip) * Fraction(rn(0.5)))  # torch: (t + 1e-6).reciprocal() * max_norm
    for x, a in zip(mp, arrays):
        np.testing.assert_array_equal(x.grad.to_float64(),
                                      [rn(Fraction(float(v)) * Fraction(coef)) for v in a])


def test_vector_norm_types():
    x = mpgrad.tensor([3.0, -4.0, 0.0, 0.1], dtype=BF16)
    v = [Fraction(float(a)) for a in x.to_float64()]
    assert optim.vector_norm(x, norm_type=math.inf).item() == 4.0
    assert optim.vector_norm(x, norm_type=-math.inf).item() == 0.0
    assert optim.vector_norm(x, norm_type=0).item() == 3.0
    assert optim.vector_norm(x, norm_type=1).item() == rn(sum(abs(a) for a in v), BF16)
    assert optim.vector_norm(x).item() == rn_sqrt(sum(a * a for a in v), BF16)
    cubes = sum(Fraction(rn(abs(a) ** 3, BF16)) for a in v)  # each power rounded, then the sum
    with gmpy2.context(precision=300):
        root = gmpy2.mpfr(rn(cubes, BF16)) ** gmpy2.mpfr(1.0 / 3)  # pow(s, fl64(1/3))
    assert optim.vector_norm(x, norm_type=3).item() == rn(Fraction(*root.as_integer_ratio()), BF16)
    assert optim.vector_norm(x, F32).dtype == F32


def test_clip_no_clipping_and_errors():
    x = leaf([0.0, 0.0])
    assert clip_grad_norm_([x], 1.0).item() == 0.0  # no grads
    x.grad = mpgrad.tensor([0.3, 0.4])
    assert clip_grad_norm_(x, 10.0).item() == pytest.approx(0.5, rel=1e-7)
    np.testing.assert_array_equal(x.grad.to_float64(), mpgrad.to_float64(
        mpgrad.round_to(np.array([0.3, 0.4]), F32)))  # coefficient clamped to 1
    x.grad = mpgrad.tensor([np.inf, 1.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_([x], 1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="norm_type"):
        clip_grad_norm_([x], 1.0, norm_type=-1)


def test_clip_grad_norm_float16_is_one_rounding():
    """A float16 gradient's norm is rounded once to float16: sqrt(1000 * 300**2) = 9486.8
    fits, although the sum of squares (9e7) would overflow float16 if it were rounded."""
    x = leaf(np.zeros(1000), F16)
    x.grad = mpgrad.full(1000, 300.0, dtype=F16)
    total = clip_grad_norm_([x], 1.0)
    assert total.dtype == F16 and total.item() == rn_sqrt(Fraction(1000 * 300 ** 2), F16)


def test_clip_grad_value_against_torch(torch_any):
    torch = torch_any
    rng = np.random.default_rng(12)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((4, 9), (17,))]
    mp, tp = _grads_pair(torch, arrays)
    clip_grad_value_(mp, 0.1)
    torch.nn.utils.clip_grad_value_(tp, 0.1, foreach=False)
    for x, y in zip(mp, tp):
        np.testing.assert_array_equal(x.grad.numpy(), y.grad.numpy())


# --- API and errors -----------------------------------------------------------------------

def test_param_groups_zero_grad_closure():
    a, b = leaf([1.0]), leaf([1.0])
    opt = SGD([{"params": [a], "lr": 0.5}, {"params": b}], lr=0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.25]
    assert opt.param_groups[1]["params"][0] is b
    a.grad = mpgrad.tensor([1.0])  # b has no grad: skipped
    loss = opt.step(lambda: "loss")
    assert loss == "loss" and a.item() == 0.5 and b.item() == 1.0
    opt.param_groups[0]["lr"] = 0.125  # schedules edit the groups
    opt.step()
    assert a.item() == 0.375
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(a.grad.to_float64(), [0.0])
    opt.zero_grad()
    assert a.grad is None
    c = leaf([2.0, 3.0])
    opt.add_param_group({"params": [c], "momentum": 0.9})
    assert opt.param_groups[2]["lr"] == 0.25 and opt.param_groups[2]["momentum"] == 0.9
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})


@pytest.mark.parametrize("make,error,match", [
    (lambda p: SGD([p], lr=-1), ValueError, "Invalid learning rate: -1"),
    (lambda p: SGD([p], lr=0.1, momentum=-0.5), ValueError, "Invalid momentum value"),
    (lambda p: SGD([p], lr=0.1, weight_decay=-1), ValueError, "Invalid weight_decay value"),
    (lambda p: SGD([p], lr=0.1, nesterov=True), ValueError, "Nesterov momentum requires"),
    (lambda p: SGD([p], lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError,
     "zero dampening"),
    (lambda p: Adam([p], lr=-0.1), ValueError, "Invalid learning rate"),
    (lambda p: Adam([p], eps=-1.0), ValueError, "Invalid epsilon value"),
    (lambda p: Adam([p], betas=(1.0, 0.999)), ValueError, "beta parameter at index 0"),
    (lambda p: Adam([p], betas=(0.9, -0.1)), ValueError, "beta parameter at index 1"),
    (lambda p: AdamW([p], weight_decay=-0.1), ValueError, "Invalid weight_decay value"),
    (lambda p: Adam([p], amsgrad=True), NotImplementedError, "amsgrad"),
    (lambda p: SGD(p, lr=0.1), TypeError, "iterable of Tensors or dicts"),
    (lambda p: SGD([], lr=0.1), ValueError, "empty parameter list"),
    (lambda p: SGD([p, np.zeros(2)], lr=0.1), TypeError, "numpy.ndarray"),
    (lambda p: SGD([mpgrad.tensor([1.0])], lr=0.1), ValueError, "require grad"),
    (lambda p: SGD([p * 2], lr=0.1), ValueError, "non-leaf"),
    (lambda p: SGD([p], lr="0.1"), TypeError, "lr must be a Python number"),
    (lambda p: SGD([p], update_mode="toward_zero"), ValueError, "update_mode"),
    (lambda p: SGD([p], kahan=True, master_dtype="f32"), ValueError, "kahan"),
    (lambda p: SGD([p], kahan=True, update_mode="stochastic"), ValueError, "kahan"),
    (lambda p: SGD([p], master_dtype="bf16"), ValueError, "master_dtype bfloat16"),
    (lambda p: SGD([{"params": [p], "momentum": -1}]), ValueError, "Invalid momentum"),
])
def test_errors(make, error, match):
    with pytest.raises(error, match=match):
        make(leaf([1.0, 2.0]))


def test_step_ignores_an_active_policy():
    p, q = leaf([1.0, 2.0]), leaf([1.0, 2.0])
    o1, o2 = Adam([p], lr=0.1), Adam([q], lr=0.1)
    p.grad = q.grad = mpgrad.tensor([0.3, -0.7])
    o1.step()
    with mpgrad.use_policy("p=f32,c=bf16,o=f32"):
        o2.step()
    np.testing.assert_array_equal(p.numpy(), q.numpy())
