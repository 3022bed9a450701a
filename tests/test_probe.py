"""mpgrad.probe: the model it infers from a black box reproduces the black box.

Every black box here is something the probe does not see inside: mpgrad.mma with a preset
or with parameters no preset has, np.sum, torch's sum and matmul. The check is always on
fresh random raw bit patterns (NaN, infinities, subnormals, both zeros) that the probe
never ran, compared bit for bit.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

import mpgrad
from mpgrad.accumulate import (BlockFMA, Exact, Pairwise, ProbeError, Sequential, Tree,
                               hardware, mma, probe, reduce_sum, summation_tree)
from mpgrad.accumulate.probing import compare, load_vectors, save_vectors
from mpgrad.demo.cli import main

F16, F32 = mpgrad.float16, mpgrad.float32


def _bits(rng, shape, fmt) -> np.ndarray:
    """Random raw bit patterns of fmt as its storage array (tf32: float32 with 13 zero bits)."""
    if fmt == mpgrad.tf32:
        words = rng.integers(0, 2 ** 32, shape, dtype=np.uint64).astype(np.uint32)
        x = (words & np.uint32(0xFFFFE000)).view(np.float32)
        return mpgrad.round_to(x, fmt)  # exact, but NaN payloads become tf32's NaN
    width = np.dtype(fmt.storage).itemsize
    words = rng.integers(0, 2 ** (8 * width), shape, dtype=np.uint64)
    x = words.astype(f"u{width}").view(fmt.storage)
    # half of the values from a narrow range, so that products meet in the same blocks
    narrow = mpgrad.round_to(rng.standard_normal(shape) * 2.0 ** rng.integers(-3, 4, shape),
                             fmt)
    return np.where(rng.random(shape) < 0.5, narrow, x)


def _same_bits(x: np.ndarray, y: np.ndarray) -> int:
    """Mismatching outputs (float32 or float16 results)."""
    u = f"u{x.dtype.itemsize}"
    return int(np.count_nonzero(x.view(u) != y.view(u)))


def _fresh(fa, fb, out, K: int, seed: int = 7) -> tuple:
    """Fresh random a (96, K), b (K, 8), c (96, 8) bit patterns the probe never saw."""
    rng = np.random.default_rng(seed)
    fa, fb, fo = (mpgrad.as_format(f) for f in (fa, fb, out))
    return _bits(rng, (96, K), fa), _bits(rng, (K, 8), fb), _bits(rng, (96, 8), fo)


@functools.lru_cache(maxsize=None)
def _probed(unit: BlockFMA, fa, fb, out, k) -> tuple:
    """(probe's result, the black box) for mma with the unit."""
    o = "float16" if out == "float16" else None
    box = lambda a, b, c: mma(a, b, c, model=unit, out=o)  # noqa: E731
    return probe(box, fa, fb, out=out, k=k), box


def _check_unit(unit: BlockFMA, fa, fb=None, out="float32", k=None):
    fb = fa if fb is None else fb
    o = "float16" if out == "float16" else None
    r, box = _probed(unit, fa, fb, out, k)
    assert r.model is not None and r.mismatches == 0, r.report()
    a, b, c = _fresh(fa, fb, out, K=k or 64)
    got = mma(a, b, c, model=r.model, out=o)
    assert _same_bits(got, box(a, b, c)) == 0, r.report()
    return r


# (preset, a format, b format, output): every distinct matrix-unit row, each input kind
UNITS = [(name, fa, fb or fa, out) for name, fa, fb, out in [
    ("V100_FP16", "float16", None, "float32"), ("A100_FP16", "float16", None, "float32"),
    ("A100_BF16", "bfloat16", None, "float32"), ("A100_TF32", "tf32", None, "float32"),
    ("ADA_FP8", "float8_e4m3fn", "float8_e5m2", "float32"),
    ("H100_FP16", "float16", None, "float32"), ("H100_FP16", "float16", None, "float16"),
    ("H100_TF32", "tf32", None, "float32"), ("H100_FP8", "float8_e4m3fn", None, "float32"),
    ("H100_FP8", "float8_e5m2", "float8_e4m3fn", "float32"),
    ("B200_FP8", "float8_e4m3fn", None, "float32"), ("B200_FP8", "float8_e5m2", None, "float16"),
]]


@pytest.mark.parametrize("name,fa,fb,out", UNITS, ids=lambda x: str(x))
def test_probe_recovers_preset(name, fa, fb, out):
    _check_unit(getattr(hardware, name), fa, fb, out)


@pytest.mark.parametrize("name,fa,fb", [
    ("MI300_FP16", "float16", None), ("MI300_BF16", "bfloat16", None),
    ("MI300_TF32", "tf32", None), ("MI300_FP8", "float8_e4m3fnuz", None),
    ("MI300_FP8", "float8_e5m2fnuz", "float8_e4m3fnuz")])
def test_probe_recovers_amd_cdna3(name, fa, fb):
    """CDNA3 adds its blocks' exact sums and C with one rounding (one fused node per
    instruction); the cut widths and modes come from coordinate descent on random cases."""
    r = _check_unit(getattr(hardware, name), fa, fb, k=32)
    assert r.model.accumulator == "aligned"
    # MMA-Sim's amd_fused_dot_rd_add: 24 product bits, the sum kept to 31 next to C, and
    # (fp8 only) C dropped more than 25 binades down
    reach = 25 if name == "MI300_FP8" else None
    assert (r.features["fraction_bits"], r.features["sum_bits"], r.features["c_reach"]) == (
        24, 31, reach)


@pytest.mark.slow
@pytest.mark.parametrize("name,fa", [("MI100_FP16", "float16"), ("MI100_BF16", "bfloat16"),
                                     ("MI250_FP16", "float16")])
def test_probe_recovers_amd_pairwise_units(name, fa):
    """CDNA1/CDNA2: groups added by halving, then to C; MI250 flushes subnormals (the probe
    then masks with normal inputs), which the fresh random rows with subnormals show."""
    r = _check_unit(getattr(hardware, name), fa, k=32)
    assert r.model.flush == (name == "MI250_FP16")


# What the sources document for these units (Fasi et al. 2021; Khattak & Mikaitis 2025:
# block size n, instruction k, alignment bits F, accumulator fraction bits for fp8 on
# Hopper (e8m13)), written here from the papers, not from the presets.
DOCUMENTED = {
    "V100_FP16": dict(block=4, instruction_k=4, fraction_bits=23),
    "A100_FP16": dict(block=8, instruction_k=8, fraction_bits=24),
    "A100_TF32": dict(block=4, instruction_k=4, fraction_bits=24),
    "H100_FP16": dict(block=16, instruction_k=16, fraction_bits=25),
    "H100_TF32": dict(block=8, instruction_k=8, fraction_bits=25),
    "H100_FP8": dict(block=32, instruction_k=32, fraction_bits=13, acc_fraction_bits=13),
    "B200_FP8": dict(block=16, instruction_k=32, fraction_bits=25),
}
INPUT = {"FP16": "float16", "TF32": "tf32", "FP8": "float8_e4m3fn"}


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_feature_tests_give_documented_answers(name):
    fa = INPUT[name.split("_")[1]]
    r, _ = _probed(getattr(hardware, name), fa, fa, "float32", None)
    assert {k: r.features.get(k) for k in DOCUMENTED[name]} == DOCUMENTED[name]


def test_monotonicity_witness():
    """V100 is not monotonic in C (Mikaitis 2024): C from just below 2**e up to 2**e cuts
    the products' last aligned bits. Checked here by hand on the block rule itself."""
    r, _ = _probed(hardware.V100_FP16, "float16", "float16", "float32", None)
    assert r.features["monotonic"] is False
    # products 2**-24 each (one unit of 2**(-1 - 23)); C = 1 - 2**-24 keeps them, C = 1 not
    a = np.full((1, 4), 2.0 ** -12, dtype=np.float16)
    b = np.array([[2.0 ** -12], [2.0 ** -12], [2.0 ** -12], [2.0 ** -11]], dtype=np.float16)
    lo = mma(a, b, np.array([[1 - 2.0 ** -24]], np.float32), model=hardware.V100_FP16)
    hi = mma(a, b, np.array([[1.0]], np.float32), model=hardware.V100_FP16)
    # C = 1 - 2**-24: grid 2**-24, all kept: 1 + 4 * 2**-24. C = 1: grid 2**-23, the three
    # 2**-24 products are cut: 1 + 2**-23, lower.
    assert lo[0, 0] == np.float32(1 + 2.0 ** -22) and hi[0, 0] == np.float32(1 + 2.0 ** -23)


@pytest.mark.parametrize("unit,fa,out", [
    (BlockFMA(8, 20, mode="nearest_even", align="exponents", k=16, order="pairs"),
     "float16", "float32"),
    (BlockFMA(4, 17, mode="up", acc=mpgrad.Format.custom(8, 17), align="exponents"),
     "bfloat16", "float32"),
    (BlockFMA(16, 30, mode="down", align="value", k=32, order="pairs", accumulator="last",
              late_mode="toward_zero"), "float16", "float32"),
    (BlockFMA(2, 11, mode="toward_zero", align="exponents", k=8), "float8_e5m2", "float16"),
], ids=["pairs8", "e8m17_up", "late_down", "fp8_k8_f16out"])
def test_probe_recovers_unseen_parameters(unit, fa, out):
    _check_unit(unit, fa, out=out, k=32)


def _np_sum(a, b, c):
    """np.sum over K of a contiguous array of the float32 products (a black box)."""
    with np.errstate(all="ignore"):
        p = a[..., :, :, None] * b[..., None, :, :]
        return np.sum(np.ascontiguousarray(np.swapaxes(p, -1, -2)), axis=-1)


@pytest.mark.parametrize("K", [16, 100, 200])
def test_probe_recovers_np_sum(K):
    r = probe(_np_sum, "float32", k=K)
    assert r.model == Pairwise(F32, block=128, rule="numpy") and r.mismatches == 0
    x = (np.random.default_rng(K).standard_normal((50, K)) * 1e3).astype(np.float32)
    want = np.sum(x, axis=1)
    assert _same_bits(reduce_sum(x.T, 0, r.model).astype(np.float32), want) == 0


def test_probe_recovers_torch():
    torch = pytest.importorskip("torch")

    def tsum(a, b, c):
        with np.errstate(all="ignore"):
            p = np.ascontiguousarray(np.swapaxes(a[..., :, :, None] * b[..., None, :, :], -1, -2))
        return torch.from_numpy(p).sum(-1).numpy()

    r = probe(tsum, "float32", k=64)
    assert r.model is not None and r.mismatches == 0
    x = (np.random.default_rng(1).standard_normal((40, 64)) * 1e3).astype(np.float32)
    want = torch.from_numpy(x).sum(-1).numpy()
    assert _same_bits(reduce_sum(x.T, 0, r.model).astype(np.float32), want) == 0

    r = probe(lambda a, b, c: torch.matmul(torch.from_numpy(a), torch.from_numpy(b)).numpy(),
              "float32", k=48)
    assert r.model is not None and r.mismatches == 0


def test_exact_accumulation_and_garbage():
    def exact(a, b, c):  # an exact dot product rounded once to float32
        return mpgrad.round_to(mpgrad.accumulate.matmul_model(
            mpgrad.to_float64(a), mpgrad.to_float64(b), Exact(mpgrad.float64)), F32)
    assert isinstance(probe(exact, "float32", k=8).model, Exact)
    rng = np.random.default_rng(0)
    with pytest.raises(ProbeError):
        probe(lambda a, b, c: rng.standard_normal(c.shape).astype(np.float32), "float16", k=8)
    with pytest.raises(ValueError, match="k must"):
        probe(_np_sum, "float32", k=1)


def test_report_in_words():
    text = _probed(hardware.H100_FP16, "float16", "float16", "float32", None)[0].report()
    assert "fused block size: 16" in text and "0 mismatches" in text


@pytest.mark.parametrize("model,K,tree", [
    (Sequential(), 4, (((0, 1), 2), 3)),
    (Sequential(order="reverse"), 3, (0, (1, 2))),  # children sorted by smallest leaf
    (Pairwise(block=2), 4, ((0, 1), (2, 3))),
    (Pairwise(block=16, rule="numpy"), 20,  # 20 = 8 + 12; 12 = 8 partial sums + 4 more
     ((((0, 1), (2, 3)), ((4, 5), (6, 7))),
      (((((((8, 9), (10, 11)), ((12, 13), (14, 15))), 16), 17), 18), 19))),
    (Exact(), 3, (0, 1, 2)),
], ids=["seq", "seq_rev", "pairwise", "numpy", "exact"])
def test_summation_tree(model, K, tree):
    assert summation_tree(model, K) == tree


def test_summation_tree_of_units():
    assert summation_tree(hardware.V100_FP16, 8, accumulator=True) == (
        (0, 1, 2, 3, 8), 4, 5, 6, 7)
    # B200 fp8: two blocks over interleaved pairs, C added last
    tree = summation_tree(hardware.B200_FP8, 32, accumulator=True)
    first = (0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29)
    assert tree == ((first, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31), 32)


def test_tree_model_equals_the_model_with_its_order():
    rng = np.random.default_rng(5)
    x = mpgrad.to_float64(mpgrad.round_to(rng.standard_normal((37, 6)), F16))
    for m, fma in ((Sequential(), True), (Pairwise(block=4), False),
                   (Pairwise(block=16, rule="numpy"), False)):
        t = Tree(summation_tree(m, 37), fma=fma)
        assert np.array_equal(reduce_sum(x, 0, t), reduce_sum(x, 0, m))
    with pytest.raises(ValueError, match="adds 37"):
        reduce_sum(x[:5], 0, t)
    for bad in ((0, 0), (0, 2), (), 3, ((0, 1), "2")):
        with pytest.raises(ValueError):
            Tree(bad)


def test_tree_error_bound():
    rng = np.random.default_rng(2)
    x = mpgrad.to_float64(mpgrad.round_to(rng.standard_normal((33, 50)) * 100, F16))
    t = Tree(summation_tree(Sequential(), 33), acc=F16)
    got = reduce_sum(x, 0, t)
    exact = np.array([sum(map(float, col)) for col in x.T])  # float64: exact for these
    err, _ = mpgrad.accumulate.error_bound(t, 33, lambda k0, k1: np.abs(x[k0:k1]).sum(0),
                                            (50,))
    assert np.all(np.abs(got - exact) <= err) and np.any(got != exact)


def test_vectors_file_and_cli(tmp_path, capsys):
    from gpu_vectors import DATA
    with np.load(DATA) as z:
        a = z["H100/fp16/a"].view(np.float32).astype(np.float16)[:, None, :]
        b = z["H100/fp16/b"].view(np.float32).astype(np.float16)[:, :, None]
        c = z["H100/fp16/c"].view(np.float32)[:, None, None]
        d = z["H100/fp16/d_fp32"].view(np.float32)[:, None, None]
    path = tmp_path / "h100.npz"
    save_vectors(path, a, b, c, d, "float16")
    (a2, b2, c2, d2), formats = load_vectors(path)
    assert formats == (F16, F16, F32) and np.array_equal(d2.view(np.uint32), d.view(np.uint32))
    misses = compare(hardware.HARDWARE, a2, b2, c2, d2)
    assert misses["H100_FP16"] == 0 and misses["V100_FP16"] > 0
    assert main(["probe", "--vectors", str(path)]) == 0
    text = capsys.readouterr().out
    assert "H100_FP16" in text and f"{d.size} outputs" in text
    np.savez(tmp_path / "bad.npz", a=np.zeros(3))
    with pytest.raises(SystemExit):
        main(["probe", "--vectors", str(tmp_path / "bad.npz")])


def test_save_vectors_is_atomic(tmp_path, monkeypatch, interrupted_savez):
    """The file is the path given; Ctrl-C while it is written leaves the old file whole and
    no temporary file; a folder is no file name."""
    a, b = np.ones((1, 1, 2), np.float16), np.ones((1, 2, 1), np.float16)
    c = d = np.full((1, 1, 1), 2.0, np.float32)
    path = tmp_path / "cases"
    save_vectors(path, a, b, c, d, "float16")
    assert os.listdir(tmp_path) == ["cases"] and load_vectors(path)[0][3][0, 0, 0] == 2.0
    before = path.read_bytes()
    monkeypatch.setattr(np, "savez", interrupted_savez)
    for target in (path, tmp_path / "new.npz"):
        with pytest.raises(KeyboardInterrupt):
            save_vectors(target, a, b, c, 2 * d, "float16")
        assert os.listdir(tmp_path) == ["cases"] and path.read_bytes() == before
    with pytest.raises(ValueError, match="is a directory"):
        save_vectors(tmp_path, a, b, c, d, "float16")
