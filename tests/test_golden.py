"""Golden files (mpgrad.golden): the safetensors file read back bit for bit, by mpgrad, by
plain Python and by the safetensors package; check's counts, tolerances and unusable inputs;
the `mpgrad check` command's exit codes."""

import hashlib
import json
import struct

import ml_dtypes
import numpy as np
import pytest

import mpgrad
from mpgrad import Format, Policy, from_bits, golden
from mpgrad.accumulate import Exact, Sequential
from mpgrad.demo.cli import main
from mpgrad.testing import assert_bits_equal
import mpgrad.nn.functional as F
from mpgrad.accumulate.hardware import HARDWARE
from mpgrad.demo.cli import check_table

CUSTOM = [Format.custom(3, 1, nan="none"), Format.custom(6, 5, nan="fnuz"),
          Format.custom(9, 20, nan="fnuz")]  # one NaN code at most: no payload to lose
FORMATS = list(mpgrad.FORMATS.values()) + CUSTOM


def every_code(fmt: Format, n: int = 4096) -> np.ndarray:
    """Every bit pattern of fmt when there are at most 2**16, else the specials (zeros,
    infinities, NaNs with payloads, extremes) and random patterns."""
    if fmt.bits <= 16:
        return np.arange(1 << fmt.bits, dtype=np.int64)
    top = 1 << (fmt.bits - 1)
    special = [0, top, 1, top - 1, top | 1, (top - 1) ^ 1, top | (top - 1) ^ 3]
    rng = np.random.default_rng(fmt.bits)
    sign = rng.integers(0, 2, n).astype(np.uint64) << np.uint64(fmt.bits - 1)
    return np.concatenate([np.array(special, dtype=np.uint64),
                           rng.integers(0, top, n).astype(np.uint64) | sign])


def tensor_of(fmt: Format) -> mpgrad.Tensor:
    return mpgrad.Tensor(from_bits(every_code(fmt), fmt), fmt)


def plain_read(path):
    """The header and data of a safetensors file, parsed with struct and json only."""
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0  # the header padded, as safetensors does
    return json.loads(raw[8:8 + n]), raw[8 + n:]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_write_read_round_trip_bit_for_bit(tmp_path, fmt):
    t = tensor_of(fmt)
    scalar = mpgrad.Tensor(from_bits(np.array(1 << (fmt.bits - 1)), fmt), fmt)  # -0 (or NaN)
    golden.write(tmp_path / "g.safetensors", {"t": t, "s": scalar, "e": t[:0]})
    back = golden.read(tmp_path / "g.safetensors").tensors
    assert list(back) == ["t", "s", "e"]
    for name, original in (("t", t), ("s", scalar), ("e", t[:0])):
        assert back[name].dtype == fmt and back[name].dtype.name == fmt.name
        assert back[name].shape == original.shape
        assert_bits_equal(back[name], original)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_plain_python_reads_the_file(tmp_path, fmt):
    """The header, bytes and hashes as the docstring of mpgrad.testing.goldenfile says, checked
    with struct/json/hashlib and NumPy's own byte views, independent of mpgrad's reader."""
    t = tensor_of(fmt).reshape(-1, 1)
    golden.write(tmp_path / "g.safetensors", {"t": t}, {"note": "hi"})
    header, data = plain_read(tmp_path / "g.safetensors")
    meta, entry = header["__metadata__"], header["t"]
    named = {"float64": "F64", "float32": "F32", "tf32": "F32", "float16": "F16",
             "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
             "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ"}
    width = next(w for w in (1, 2, 4, 8) if fmt.bits <= 8 * w)
    if fmt not in CUSTOM and fmt.name in named:
        assert entry["dtype"] == named[fmt.name]
        expected = np.ascontiguousarray(t.data).view(f"u{t.data.itemsize}")
    else:
        assert entry["dtype"] == f"U{8 * width}"
        expected = every_code(fmt).astype(f"u{width}").reshape(-1, 1)
    assert entry["shape"] == [t.shape[0], 1] and entry["data_offsets"] == [0, len(data)]
    assert data == expected.astype(expected.dtype.newbyteorder("<")).tobytes()
    assert meta["note"] == "hi" and meta["mpgrad_golden"] == "1"
    assert json.loads(meta["sha256"]) == {"t": hashlib.sha256(data).hexdigest()}
    layout = json.loads(meta["formats"])["t"]
    assert layout == {"format": fmt.name, "layout": [fmt.exponent_bits, fmt.fraction_bits,
                                                     fmt.bias, fmt.nan, fmt.subnormals]}


def test_the_safetensors_package_reads_the_same_bits(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    tensors = {f: tensor_of(mpgrad.FORMATS[f]) for f in
               ("float64", "float32", "float16", "float8_e4m3", "float6_e2m3fn")}
    golden.write(tmp_path / "g.safetensors", tensors)
    loaded = st.load_file(str(tmp_path / "g.safetensors"))
    for f in ("float64", "float32", "float16"):
        assert loaded[f].dtype == np.dtype(f)
        np.testing.assert_array_equal(loaded[f].view(f"u{loaded[f].itemsize}"),
                                      tensors[f].data.view(f"u{loaded[f].itemsize}"))
    for f in ("float8_e4m3", "float6_e2m3fn"):  # no safetensors name: the bit patterns
        np.testing.assert_array_equal(loaded[f], every_code(mpgrad.FORMATS[f]))


def test_safetensors_torch_reads_every_format(tmp_path):
    """The reference reader (safetensors' Rust header check, then torch) takes every format:
    those it names in their torch dtype with mpgrad's bits, the others as bit patterns."""
    pytest.importorskip("safetensors")
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file
    tensors = {f"t{i}": tensor_of(f) for i, f in enumerate(FORMATS)}
    golden.write(tmp_path / "g.safetensors", tensors)
    loaded = load_file(str(tmp_path / "g.safetensors"))
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    for (name, t), fmt in zip(tensors.items(), FORMATS):
        got = loaded[name]
        if got.dtype.is_floating_point:
            assert str(got.dtype) == "torch." + ("float32" if fmt.name == "tf32" else fmt.name)
            bits = got.view(ints[got.element_size()]).numpy().view(f"u{got.element_size()}")
            np.testing.assert_array_equal(bits, t.data.view(f"u{t.data.itemsize}"))
        else:
            np.testing.assert_array_equal(got.numpy(), every_code(fmt))


def affine(x, w):
    return {"y": mpgrad.matmul(x, w), "z": x * 2.0}


def inputs(dtype="float32", requires_grad=False):
    rng = np.random.default_rng(1)
    return {"x": mpgrad.tensor(rng.standard_normal((3, 16)), dtype, requires_grad),
            "w": mpgrad.tensor(rng.standard_normal((16, 4)), dtype, requires_grad)}


def test_record_writes_inputs_outputs_grads_and_metadata(tmp_path):
    given = inputs(requires_grad=True)
    g = golden.record(tmp_path / "g.safetensors", affine, given, policy="bf16", grad=True,
                      name="x @ w and 2x")
    back = golden.read(tmp_path / "g.safetensors")
    assert list(back.tensors) == ["input.x", "input.w", "output.y", "output.z", "grad.x",
                                  "grad.w"]
    assert back.metadata["description"] == "x @ w and 2x"
    assert back.metadata["mpgrad_version"] == mpgrad.__version__
    assert back.metadata["policy"] == repr(Policy.parse("bf16"))
    assert back.metadata["accumulate"] == repr(Exact(mpgrad.float32))
    assert back.tensors["output.y"].dtype == mpgrad.bfloat16
    # the reference: float64 products of the bf16-rounded inputs, rounded once (Exact)
    x = ml_dtypes.bfloat16
    xb, wb = (given[k].to_float64().astype(x).astype(np.float64) for k in ("x", "w"))
    np.testing.assert_array_equal(back.tensors["output.y"].to_float64(),
                                  (xb @ wb).astype(np.float32).astype(x).astype(np.float64))
    # d/dx sum(x @ w) + sum(2x) = rowsum(w) + 2, rounded to bfloat16
    expect = (wb.sum(axis=1)[None, :].repeat(3, 0)).astype(np.float32).astype(x)
    assert back.tensors["grad.x"].dtype == mpgrad.float32
    np.testing.assert_allclose(back.tensors["grad.x"].to_float64(),
                               expect.astype(np.float64) + 2, rtol=2 ** -7)
    for k, t in g.tensors.items():
        assert_bits_equal(back.tensors[k], t)


def test_one_ulp_off_fails_bits_passes_ulps_and_shows_the_offender(tmp_path):
    golden.record(tmp_path / "g.safetensors", affine, inputs())
    ref = golden.read(tmp_path / "g.safetensors").tensors
    y = ref["output.y"].data.copy()
    y[1, 2] = np.nextafter(y[1, 2], np.float32(np.inf))
    candidate = {"output.y": y, "output.z": ref["output.z"]}
    report = golden.check(tmp_path / "g.safetensors", candidate)
    assert not report.passed
    row = {r.name: r for r in report.rows}["output.y"]
    assert (row.count, row.bit_equal, row.within, row.max_ulps) == (12, 11, 11, 1)
    assert dict(row.histogram) == {"0": 11, "1": 1}
    (o,) = row.offenders
    assert o.index == (1, 2) and o.ulps == 1
    assert o.golden == float(ref["output.y"].data[1, 2]) and o.candidate == float(y[1, 2])
    assert golden.check(tmp_path / "g.safetensors", candidate, tolerance="ulps=1").passed
    assert not golden.check(tmp_path / "g.safetensors", candidate, tolerance="ulps=0").passed
    rows = {r["name"]: r for r in json.loads(report.to_json())["tensors"]}
    assert rows["output.y"]["offenders"][0]["index"] == [1, 2] and not rows["output.y"]["passed"]


def test_nan_and_signed_zero_rules(tmp_path):
    f = mpgrad.float16
    g = mpgrad.Tensor(from_bits(np.array([0x7E00, 0x0000, 0x3C00]), f), f)
    golden.write(tmp_path / "g.safetensors", {"output.0": g})
    other_nan = from_bits(np.array([0x7E01, 0x0000, 0x3C00]), f)
    minus_zero = from_bits(np.array([0x7E00, 0x8000, 0x3C00]), f)
    number = from_bits(np.array([0x3C00, 0x0000, 0x3C00]), f)
    path = tmp_path / "g.safetensors"
    assert golden.check(path, {"output.0": other_nan}).passed  # any NaN for a NaN
    assert not golden.check(path, {"output.0": minus_zero}).passed  # -0 is other bits
    assert golden.check(path, {"output.0": minus_zero}, tolerance="ulps=0").passed
    bad = golden.check(path, {"output.0": number}, tolerance="ulps=1000").rows[0]
    assert bad.within == 2 and bad.offenders[0].ulps is None
    assert dict(bad.histogram)["NaN vs number"] == 1


@pytest.mark.parametrize("change", ["shape", "format", "missing", "unknown", "inexact"])
def test_mismatched_candidates_are_unusable(tmp_path, change):
    golden.record(tmp_path / "g.safetensors", affine, inputs())
    ref = golden.read(tmp_path / "g.safetensors").tensors
    c = {"output.y": ref["output.y"], "output.z": ref["output.z"]}
    if change == "shape":
        c["output.y"] = ref["output.y"].data[:2]
    elif change == "format":
        c["output.y"] = ref["output.y"].to("bf16")
    elif change == "missing":
        del c["output.z"]
    elif change == "unknown":
        c["output.q"] = ref["output.z"]
    else:  # float32 storage that does not hold tf32 values
        golden.write(tmp_path / "g.safetensors", {"o": ref["output.y"].to("tf32")})
        c = {"o": ref["output.y"].data}
    with pytest.raises(ValueError):
        golden.check(tmp_path / "g.safetensors", c)


@pytest.mark.parametrize("damage", ["truncate", "flip", "header", "length", "empty", "offsets"])
def test_damaged_files_are_a_value_error(tmp_path, damage):
    path = tmp_path / "g.safetensors"
    golden.record(path, affine, inputs())
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[:-3]
    elif damage == "flip":
        raw[-1] ^= 1
    elif damage == "header":
        raw[9] = ord("!")
    elif damage == "length":
        raw[:8] = struct.pack("<Q", len(raw))
    elif damage == "empty":
        raw = raw[:5]
    else:
        raw = raw.replace(b'"data_offsets":[0,', b'"data_offsets":[1,')
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="not a valid mpgrad golden file"):
        golden.read(path)


def test_check_tolerances_are_validated():
    assert golden.parse_tolerance("bound") == "bound"
    for bad in ("ulps=-1", "ulps=x", "close"):
        with pytest.raises(ValueError, match="unknown tolerance"):
            golden.parse_tolerance(bad)
    assert golden.parse_tolerance("ulps=3") == 3 and golden.parse_tolerance("bits") is None


def test_cli_exit_codes_and_json(tmp_path, capsys):
    g, c = str(tmp_path / "g.safetensors"), str(tmp_path / "c.safetensors")
    golden.record(g, affine, inputs())
    tensors = dict(golden.read(g).tensors)
    assert main(["check", g, g]) == 0 and "PASS" in capsys.readouterr().out
    y = tensors["output.y"].data.copy()
    y[0, 0] = np.nextafter(y[0, 0], np.float32(-np.inf))
    golden.write(c, {**tensors, "output.y": mpgrad.Tensor(y, "float32")})
    assert main(["check", g, c]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "output.y[0, 0]" in out and "1 ulps" in out
    assert main(["check", g, c, "--tolerance", "ulps=1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True
    assert main(["check", g, str(tmp_path / "absent.safetensors")]) == 2
    golden.write(c, {"output.y": tensors["output.y"]})
    assert main(["check", g, c]) == 2
    assert "missing" in capsys.readouterr().err
    for bad in (["--tolerance", "close"], ["--compute", "bogus"], ["--model", "X1"],
                ["--ulps", "0.1"]):
        with pytest.raises(SystemExit) as stop:  # validated before any file is read
            main(["check", str(tmp_path / "absent"), c, *bad])
        assert stop.value.code == 2 and "error: argument" in capsys.readouterr().err
    assert main(["check", g, g, "--tolerance", "bound"]) == 2  # a function, not an op
    assert "needs a golden file recorded from an op" in capsys.readouterr().err


def _bf16(shape, seed):
    values = np.random.default_rng(seed).standard_normal(shape) * 3
    return mpgrad.tensor(values, "bf16", requires_grad=True)


def test_bound_tolerance_judges_against_the_exact_result(tmp_path, capsys):
    """mpgrad's bf16 layer norm (every step in bf16) is the golden; a kernel computing in
    float32 and rounding once differs from it in bits but lies inside the bound."""
    g, c = str(tmp_path / "g.safetensors"), str(tmp_path / "c.safetensors")
    x, w, b = _bf16((8, 64), 40), _bf16((64,), 41), _bf16((64,), 42)
    golden.record(g, "layer_norm", [x, w, b], grad=True, op_args={"normalized_shape": (64,)})
    assert golden.read(g).metadata["op"] == "layer_norm"
    x32, w32, b32 = (mpgrad.tensor(t.to_float64(), "float32", requires_grad=True)
                     for t in (x, w, b))
    y = F.layer_norm(x32, (64,), w32, b32)
    y.backward(mpgrad.ones(8, 64, dtype="float32"))
    kernel = {"output.0": y.to("bf16"), "grad.0": x32.grad.to("bf16"),
              "grad.1": w32.grad.to("bf16"), "grad.2": b32.grad.to("bf16")}
    assert not golden.check(g, kernel).passed
    report = golden.check(g, kernel, tolerance="bound", compute="float32")
    assert report.passed, check_table(report)
    wrong = dict(kernel)
    v = kernel["output.0"].data.copy()
    v[3, 5] = -v[3, 5] if v[3, 5] != 0 else 1.0  # a sign error
    wrong["output.0"] = mpgrad.Tensor(v, "bf16")
    report = golden.check(g, wrong, tolerance="bound", compute="float32")
    row = next(r for r in report.rows if r.name == "output.0")
    assert row.name == "output.0" and row.within == row.count - 1
    assert row.offenders[0].index == (3, 5)
    golden.write(c, wrong)
    assert main(["check", g, c, "--tolerance", "bound", "--compute", "float32"]) == 1
    assert "output.0[3, 5]" in capsys.readouterr().out
    golden.write(c, kernel)
    assert main(["check", g, c, "--tolerance", "bound", "--compute", "float32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True


def test_bound_tolerance_with_a_hardware_preset(tmp_path):
    g = str(tmp_path / "g.safetensors")
    A = mpgrad.tensor(np.random.default_rng(43).standard_normal((16, 256)), "float16")
    B = mpgrad.tensor(np.random.default_rng(44).standard_normal((256, 8)), "float16")
    golden.record(g, mpgrad.matmul, [A, B])
    preset = HARDWARE["H100_FP16"]
    y = mpgrad.matmul(A, B, accumulate=preset)
    assert golden.check(g, {"output.0": y}, tolerance="bound", model=preset).passed
    fp16 = mpgrad.matmul(A, B, accumulate=Sequential("float16"))
    assert not golden.check(g, {"output.0": fp16}, tolerance="bound", model=preset).passed


def test_a_linear_layer_forward_and_backward(tmp_path):
    lin = mpgrad.nn.Linear(64, 8, rng=np.random.default_rng(2))
    x = mpgrad.tensor(np.random.default_rng(3).standard_normal((5, 64)), "float32",
                      requires_grad=True)
    given = {"x": x, "weight": lin.weight, "bias": lin.bias}

    def forward(x, weight, bias):
        return lin(x)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    golden.record(a, forward, given, grad=True)
    assert {"grad.x", "grad.weight", "grad.bias"} <= set(golden.read(a).tensors)
    golden.record(b, forward, given, grad=True)  # a re-run: the same bits
    assert golden.check(a, b).passed
    golden.record(b, forward, given, grad=True, policy=Policy(accumulate=Exact(mpgrad.float32)))
    assert golden.check(a, b).passed  # the default model, stated
    golden.record(b, forward, given, grad=True, policy=Policy(accumulate=Sequential(
        mpgrad.bfloat16)))
    report = golden.check(a, b)
    rows = {r.name: r for r in report.rows}
    ya, yb = (golden.read(p).tensors["output.0"].data for p in (a, b))
    assert not report.passed and rows["output.0"].bit_equal == int((ya == yb).sum()) < ya.size
    assert rows["input.x"].passed and rows["grad.bias"].passed  # bias grad: no matmul


def test_overlapping_tensors_are_refused(tmp_path):
    """Offsets must tile the data without gaps or overlaps, as safetensors requires (here
    every length and hash is right: only the tiling is wrong)."""
    path = tmp_path / "g.safetensors"
    golden.write(path, {k: mpgrad.zeros(1) for k in "abc"})
    header, data = plain_read(path)
    for k, span in zip("abc", ([0, 4], [2, 6], [4, 8])):
        header[k]["data_offsets"] = span
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[:8])
    with pytest.raises(ValueError, match="do not follow on"):
        golden.read(path)


def test_record_refuses_bad_arguments_before_running(tmp_path):
    ran = []

    def fn(x):
        ran.append(x)
        return x
    x = mpgrad.ones(2)
    with pytest.raises(TypeError, match="dict name -> Tensor or a list"):
        golden.record(tmp_path / "g.safetensors", fn, x)
    with pytest.raises(TypeError, match="not an mpgrad Tensor"):
        golden.record(tmp_path / "g.safetensors", fn, {"x": [1.0]})
    with pytest.raises(ValueError, match="does not exist"):
        golden.record(tmp_path / "no" / "g.safetensors", fn, {"x": x})
    with pytest.raises(RuntimeError, match="no output requires grad"):
        golden.record(tmp_path / "g.safetensors", fn, {"x": x}, grad=True)
    assert len(ran) == 1 and not (tmp_path / "g.safetensors").exists()
