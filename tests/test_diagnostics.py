"""mpgrad.diagnostics against hand-built cases: known counts of underflows, an inf from a
known op forward and backward, histogram bins against NumPy's, and no cost when off."""

import numpy as np
import pytest

import mpgrad
from mpgrad import diagnostics, nn
from mpgrad.autodiff import observe
from mpgrad.nn import functional as F


def test_counts_a_known_number_of_underflows():
    # float16: smallest normal 2**-14, smallest subnormal 2**-24; 2**-26 rounds to zero
    x = mpgrad.tensor(np.array([1.0, 2.0 ** -10, 2.0 ** -12, 2.0 ** -13, 1.0]), "float16")
    y = mpgrad.tensor(np.array([1.0, 2.0 ** -10, 2.0 ** -13, 2.0 ** -13, 3.0]), "float16")
    with diagnostics.track() as report:
        x * y
    c = report.counts[("", "mul", "forward")]
    # products 1, 2**-20 (subnormal), 2**-25 (a tie: to zero), 2**-26 (zero), 3 (normal)
    assert (c.calls, c.values, c.subnormal, c.to_zero, c.inexact, c.overflow) == (1, 5, 1, 2, 2, 0)
    assert report.first_nonfinite is None


def test_inf_from_a_known_op_forward():
    m = nn.Sequential(nn.Linear(2, 2, dtype="float16", rng=0), nn.ReLU())
    with mpgrad.no_grad():
        m[0].weight.copy_(mpgrad.tensor(np.array([[300.0, 0.0], [0.0, 1.0]]), "float16"))
    x = mpgrad.tensor(np.array([[300.0, 1.0]]), "float16")
    with diagnostics.track(m) as report:
        out = m(x)  # 300 * 300 = 90000 > 65504: the matmul overflows
    bad = report.first_nonfinite
    assert (bad.op, bad.module, bad.phase, bad.format, bad.count) == (
        "matmul", "model.0", "forward", "float16", 1)
    assert bad.input_ranges[0] == (1.0, 300.0)
    assert "out = m(x)" in bad.line and __file__ in bad.line
    assert report.counts[("model.0", "matmul", "forward")].overflow == 1
    assert np.isinf(out.to_float64()).sum() == 1


def test_inf_from_a_known_op_backward():
    v = mpgrad.tensor(np.array([1.0, 2.0]), "float16", requires_grad=True)
    with diagnostics.track() as report:
        y = (v * 1000.0).sum()               # finite forward
        y.backward(mpgrad.tensor(np.array(100.0), "float16"))  # 100 * 1000 = 1e5: inf
    bad = report.first_nonfinite
    assert (bad.op, bad.phase, bad.count) == ("mul", "backward", 2)
    assert "y = (v * 1000.0).sum()" in bad.line  # where the op was made, not backward()
    assert report.counts[("", "mul", "backward")].overflow == 2


def test_module_paths_and_totals():
    m = nn.MLP((3, 4, 2), dtype="bfloat16", rng=0)
    x = mpgrad.tensor(np.ones((5, 3)), "bfloat16")
    with diagnostics.track(m, name="net") as report:
        F.cross_entropy(m(x), np.array([0, 1, 0, 1, 1])).backward()
    modules = {k[0] for k in report.counts}
    assert {"net.0", "net.2"} <= modules
    by_phase = report.total("phase")
    assert set(by_phase) == {"forward", "backward"}
    assert report.counts[("net.0", "matmul", "forward")].values == 5 * 4
    assert "net.0" in report.summary() and "no op produced inf" in report.summary()


def test_off_by_default_and_nothing_recorded_outside():
    assert not observe.active()
    a = mpgrad.tensor(np.array([1.0]), "float16", requires_grad=True)
    (a * 2).sum().backward()
    assert (a * 2)._node.origin is None  # no stack walked when nobody listens
    with diagnostics.track() as report:
        assert observe.active()
    assert not observe.active() and report.counts == {}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float8_e4m3fn"])
def test_histogram_bins_match_numpy(dtype):
    rng = np.random.default_rng(0)
    v = rng.standard_normal(2000) * 2.0 ** rng.integers(-30, 10, 2000)
    v[:7] = 0.0
    t = mpgrad.tensor(v, dtype)
    h = diagnostics.histogram(t)
    values = t.to_float64()
    nz = values[values != 0]
    edges = np.arange(h.lowest, h.lowest + len(h.counts) + 1)
    want, _ = np.histogram(np.log2(np.abs(nz)), bins=edges)
    assert np.array_equal(h.counts, want)
    assert h.zeros == np.count_nonzero(values == 0) and h.total == v.size
    below = np.mean(np.abs(nz) < 2.0 ** -24)
    assert h.fraction_below(2.0 ** -24) == pytest.approx(below, abs=0)


def test_histogram_of_module_grads_and_scaling():
    m = nn.Linear(3, 2, dtype="float32", rng=0)
    with pytest.raises(ValueError, match="backward first"):
        diagnostics.histogram(m.weight, kind="grad")
    m(mpgrad.tensor(np.ones((4, 3)), "float32")).sum().backward()
    hs = diagnostics.histogram(m, kind="grad")
    assert set(hs) == {"weight", "bias"} and hs["bias"].counts.sum() == 2
    h = hs["weight"]
    assert h.scaled(2.0 ** 16).lowest == h.lowest + 16
    with pytest.raises(ValueError, match="power of two"):
        h.scaled(3.0)
    both = diagnostics.merged(h, h)
    assert np.array_equal(both.counts, 2 * h.counts)


def test_track_histograms_of_module_outputs_and_their_gradients():
    m = nn.MLP((3, 4, 2), dtype="float32", rng=0)
    with diagnostics.track(m, histograms=True) as report:
        m(mpgrad.tensor(np.ones((5, 3)), "float32")).sum().backward()
    assert report.histograms["model.0"]["value"].total == 20
    assert report.histograms["model.2"]["grad"].total == 10   # d sum / d out = 1
    assert report.histograms["model.2"]["grad"].counts.tolist() == [10]


def test_plot_draws_the_float16_range():
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    h = diagnostics.histogram(mpgrad.tensor(np.array([2.0 ** -30, 1.0]), "float32"))
    ax = diagnostics.plot([h, h.scaled(2.0 ** 10)])
    assert len(ax.patches) >= 2 + 2  # two shaded spans and the bars
