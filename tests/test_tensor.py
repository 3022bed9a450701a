"""The Tensor API: constructors, dtype defaults, inspection, casts, operators, comparisons.

Expected values are derived by hand (their derivation is in the comments) or rounded by an
independent MPFR reference (gmpy2, `mpfr_round` below). `mpgrad.round_to` is tested against
MPFR elsewhere; here it is the reference only for the cast wrapper `Tensor.to`.
"""

from __future__ import annotations

from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

import mpgrad
from mpgrad.testing import assert_bits_equal

try:
    from .reference import ref_round
except ImportError:
    from reference import ref_round


def mpfr_round(value, fmt: str) -> float:
    """value (exact: a Fraction or a float) rounded once to fmt, nearest even, by MPFR."""
    return ref_round(Fraction(value), mpgrad.as_format(fmt), "nearest_even")


def values(t: mpgrad.Tensor) -> list:
    return t.to_float64().tolist()


# --- construction ---------------------------------------------------------------------------

def test_tensor_rounds_the_exact_input_once():
    x = np.float64(1 + 2**-8 + 2**-30)
    # 1 + 2**-8 is the midpoint between bfloat16's 1 and 1 + 2**-7; the 2**-30 puts x above
    # it, so one rounding gives 1 + 2**-7. (Rounding to float32 first loses the 2**-30 and
    # then ties to even: 1.0. That is what ml_dtypes' cast from float64 gives.)
    t = mpgrad.tensor(x, dtype="bfloat16")
    assert t.item() == 1.0078125 == 1 + 2**-7
    assert t.numpy().dtype == ml_dtypes.bfloat16
    assert mpgrad.tensor(np.array([x]), dtype="bf16").to_float64()[0] == 1.0078125
    assert mpgrad.Tensor(x, "bfloat16").item() == 1.0078125


def test_tensor_rounding_mode_argument():
    x = np.array([1 + 3 * 2**-9, -(1 + 3 * 2**-9)])  # between 1 + 2**-8 and 1 + 2**-7
    assert values(mpgrad.tensor(x, "bf16", mode="toward_zero")) == [1.0, -1.0]
    assert values(mpgrad.tensor(x, "bf16", mode="up")) == [1.0078125, -1.0]
    assert values(mpgrad.tensor(x, "bf16", mode="down")) == [1.0, -1.0078125]


@pytest.mark.parametrize("data, expected", [
    (1.5, "float32"), ([1.0, 2.0], "float32"), ([[0.5], [0.25]], "float32"), (3, "float32"),
    ([1, 2], "float32"), (np.array([1.0, 2.0], np.float16), "float16"),
    (np.array([1.0], np.float64), "float64"), (np.array([1.0], np.float32), "float32"),
    (np.array([1.0], ml_dtypes.bfloat16), "bfloat16"),
    (np.array([1.0], ml_dtypes.float8_e4m3fn), "float8_e4m3fn"),
    (np.float16(2.0), "float16"), (np.array([1, 2], np.int32), "float32"),
], ids=["py-float", "py-list", "py-nested", "py-int", "py-int-list", "np-f16", "np-f64",
        "np-f32", "np-bf16", "np-e4m3", "np-f16-scalar", "np-int32"])
def test_dtype_defaults(data, expected):
    # As PyTorch: Python numbers (and lists of them) give float32, the default dtype;
    # NumPy/ml_dtypes floating data keeps its own format.
    assert mpgrad.tensor(data).dtype.name == expected


def test_python_float_is_rounded_to_float32_by_default():
    t = mpgrad.tensor(0.1)
    assert t.dtype == mpgrad.float32
    assert t.item() == mpfr_round(0.1, "float32") == 0.100000001490116119384765625


def test_explicit_dtype_forms():
    for dtype in ("float16", "f16", "half", mpgrad.float16, np.float16, np.dtype(np.float16)):
        assert mpgrad.tensor([1.0], dtype=dtype).dtype == mpgrad.float16
    t = mpgrad.tensor([1.0, 2.0], dtype="bf16")
    assert mpgrad.tensor(t).dtype == mpgrad.bfloat16  # a Tensor keeps its format
    assert mpgrad.tensor(t, dtype="f32").dtype == mpgrad.float32
    assert mpgrad.tensor([1.0], dtype="tf32").numpy().dtype == np.float32


def test_wrong_format_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown format 'float17'") as info:
        mpgrad.tensor([1.0], dtype="float17")
    assert "valid names" in str(info.value) and "bfloat16" in str(info.value)
    with pytest.raises(ValueError, match="valid names"):
        mpgrad.tensor([1.0]).to("fp17")
    with pytest.raises(ValueError, match="valid names"):
        mpgrad.zeros(2, dtype="halfish")


# --- inspection -----------------------------------------------------------------------------

def test_shape_ndim_size_len():
    t = mpgrad.tensor(np.zeros((2, 3, 4)), dtype="f16")
    assert (t.shape, t.ndim, t.size, len(t)) == ((2, 3, 4), 3, 24, 2)
    s = mpgrad.tensor(np.float64(2.5))
    assert (s.shape, s.ndim, s.size) == ((), 0, 1)
    with pytest.raises(TypeError, match="0-d"):
        len(s)


def test_numpy_is_the_read_only_storage_array():
    for fmt, dtype in [("float16", np.float16), ("bfloat16", ml_dtypes.bfloat16),
                       ("tf32", np.float32), ("float8_e5m2", ml_dtypes.float8_e5m2),
                       ("float64", np.float64)]:
        t = mpgrad.tensor([0.5, -2.0], dtype=fmt)
        a = t.numpy()
        assert a.dtype == np.dtype(dtype) and a.astype(np.float64).tolist() == [0.5, -2.0]
        with pytest.raises(ValueError, match="read-only"):
            a[0] = 1.0
    assert values(mpgrad.tensor([0.5, -2.0], dtype="f16")) == [0.5, -2.0]


def test_to_float64_is_exact():
    t = mpgrad.tensor(np.array([2**-24, 65504.0, -1 / 3]), dtype="float16")
    f = t.to_float64()
    assert f.dtype == np.float64
    # 1/3 in float16: 1.0101010101|0101... * 2**-2 truncated to 10 fraction bits (the rest
    # is below half an ulp): 0x3555 = 1365 * 2**-12.
    assert f.tolist() == [2**-24, 65504.0, -1365 * 2**-12]


def test_item():
    assert mpgrad.tensor([[1.5]], dtype="bf16").item() == 1.5
    assert isinstance(mpgrad.tensor([[1.5]]).item(), float)
    with pytest.raises(ValueError, match="one element"):
        mpgrad.tensor([1.0, 2.0]).item()


def test_detach_and_requires_grad_():
    x = mpgrad.tensor([1.0, 2.0], dtype="f16")
    assert not x.requires_grad and x.is_leaf
    assert x.requires_grad_() is x and x.requires_grad
    y = x * 2.0
    assert y.requires_grad and not y.is_leaf
    d = y.detach()
    assert d.is_leaf and not d.requires_grad and d.dtype == mpgrad.float16
    assert values(d) == [2.0, 4.0]
    assert x.requires_grad_(False) is x and not x.requires_grad
    with pytest.raises(RuntimeError, match="detach"):
        y.requires_grad_(False)


def test_repr():
    r = repr(mpgrad.tensor([1.5, -0.25], dtype="bf16", requires_grad=True))
    assert r.startswith("tensor(") and "1.5" in r and "-0.25" in r
    assert "dtype=bfloat16" in r and "requires_grad=True" in r
    assert "requires_grad" not in repr(mpgrad.tensor([1.5], dtype="bf16"))
    # the exact value is shown, not NumPy's shortest float16 repr (0.1 in float16)
    assert "0.09997559" in repr(mpgrad.tensor([0.1], dtype="f16"))


# --- factories ------------------------------------------------------------------------------

def test_zeros_ones_full():
    z = mpgrad.zeros(2, 3, dtype="f16")
    assert z.shape == (2, 3) and z.dtype == mpgrad.float16 and not z.to_float64().any()
    assert mpgrad.zeros((2, 3)).shape == (2, 3) and mpgrad.zeros(4).dtype == mpgrad.float32
    o = mpgrad.ones(3, dtype="bf16", requires_grad=True)
    assert values(o) == [1.0] * 3 and o.requires_grad and o.dtype == mpgrad.bfloat16
    # 0.1 = 1.6 * 2**-4; bfloat16 keeps 7 fraction bits: 1.6 * 128 = 204.8 -> 205
    f = mpgrad.full((2,), 0.1, dtype="bf16")
    assert values(f) == [205 / 128 / 16] * 2 == [0.10009765625] * 2
    assert values(mpgrad.full(2, 70000.0, dtype="f16")) == [np.inf, np.inf]


def test_arange():
    assert values(mpgrad.arange(4)) == [0.0, 1.0, 2.0, 3.0]
    assert mpgrad.arange(4).dtype == mpgrad.float32
    assert values(mpgrad.arange(1, 2, 0.25, dtype="f16")) == [1.0, 1.25, 1.5, 1.75]
    t = mpgrad.arange(0.0, 1.0, 0.1, dtype="bfloat16")
    # NumPy's float64 values start + i*step, each rounded once to bfloat16
    expected = [mpfr_round(v, "bfloat16") for v in np.arange(0.0, 1.0, 0.1)]
    assert t.dtype == mpgrad.bfloat16 and values(t) == expected


def test_randn_rand_dtype_shape_and_range():
    mpgrad.manual_seed(0)
    n = mpgrad.randn(200, 50, dtype="f16")
    assert n.shape == (200, 50) and n.dtype == mpgrad.float16
    v = n.to_float64()
    assert abs(v.mean()) < 0.05 and abs(v.std() - 1) < 0.05
    r = mpgrad.rand(3, 4, dtype="bf16")
    assert r.shape == (3, 4) and r.dtype == mpgrad.bfloat16
    assert mpgrad.randn(2, requires_grad=True).requires_grad


@pytest.mark.parametrize("fmt", ["float32", "float16", "bfloat16", "float8_e4m3fn"])
def test_rand_stays_below_one(fmt):
    # rand documents uniform samples on [0, 1) (as torch.rand); rounding a float64 draw to
    # nearest must not turn the top of the interval into 1.0. With 2**16 draws, bfloat16
    # (ulp 2**-8 below 1) would hit 1.0 about 2**16 / 2**9 = 128 times.
    mpgrad.manual_seed(1)
    v = mpgrad.rand(1 << 16, dtype=fmt).to_float64()
    assert v.min() >= 0.0 and v.max() < 1.0, f"rand gave {v.max()} in {fmt}"


def test_manual_seed_reproducible():
    x = mpgrad.tensor(np.linspace(-1, 1, 64))

    def draw(seed):
        mpgrad.manual_seed(seed)
        return (mpgrad.randn(64, dtype="f16"), mpgrad.rand(64, dtype="bf16"),
                x.to("bfloat16", "stochastic"), x.to("float8_e4m3fn", mode="stochastic"))

    first, again, other = draw(5), draw(5), draw(6)
    for a, b, c in zip(first, again, other):
        assert_bits_equal(a, b)
        with pytest.raises(AssertionError, match="differ"):
            assert_bits_equal(a, c)


def test_explicit_rng_ignores_the_global_seed():
    mpgrad.manual_seed(1)
    a = mpgrad.randn(16, rng=np.random.default_rng(9))
    mpgrad.manual_seed(2)
    b = mpgrad.randn(16, rng=np.random.default_rng(9))
    c = mpgrad.randn(16, rng=9)
    assert_bits_equal(a, b)
    assert_bits_equal(a, c)


# --- Tensor.to: the cast wrapper against round_to -------------------------------------------

SOURCE = np.concatenate([
    np.random.default_rng(3).standard_normal(200) * 4.0 ** np.arange(-6, 4).repeat(20),
    [0.0, -0.0, 1 + 2**-8, -(1 + 2**-8), 1 + 3 * 2**-8, 1 + 2**-11, 3 * 2**-12, 2**-130,
     -2**-140, 1e5, 6e4, 0.1, 1 / 3],
])
CAST_FORMATS = ["float16", "bfloat16", "tf32", "float32", "float8_e4m3fn", "float8_e5m2",
                "float8_e4m3fnuz", "float6_e2m3fn", "float4_e2m1fn"]


@pytest.mark.parametrize("fmt", CAST_FORMATS)
@pytest.mark.parametrize("mode", [m for m in mpgrad.MODES if m != "stochastic"])
def test_to_matches_round_to(fmt, mode):
    x = mpgrad.tensor(SOURCE, dtype="float64")
    y = x.to(fmt, mode)
    assert y.dtype == mpgrad.as_format(fmt)
    assert_bits_equal(y, mpgrad.round_to(SOURCE, fmt, mode))
    assert_bits_equal(mpgrad.cast(x, fmt, mode), y)


@pytest.mark.parametrize("fmt", ["float16", "bfloat16", "float8_e5m2", "float4_e2m1fn"])
def test_to_stochastic_with_explicit_rng_matches_round_to(fmt):
    x = mpgrad.tensor(SOURCE, dtype="float64")
    y = x.to(fmt, "stochastic", rng=np.random.default_rng(11))
    assert_bits_equal(y, mpgrad.round_to(SOURCE, fmt, "stochastic",
                                         rng=np.random.default_rng(11)))
    assert_bits_equal(x.to(fmt, "stochastic", rng=11), y)  # an int seed is the same


def test_to_from_float32_source_and_specials():
    src = np.array([1 + 2**-11 + 2**-20, np.inf, -np.inf, np.nan, 65520.0, -0.0], np.float32)
    x = mpgrad.tensor(src)
    assert x.dtype == mpgrad.float32
    for mode in mpgrad.MODES[:-1]:
        assert_bits_equal(x.to("float16", mode), mpgrad.round_to(src, "float16", mode))
    # hand check, nearest even: above the midpoint 1 + 2**-11 -> up; 65520 is the overflow
    # threshold (midpoint between 65504 and 2**16) -> inf
    got = x.to("f16").to_float64()
    assert got[0] == 1 + 2**-10 and got[4] == np.inf and np.isnan(got[3])


def test_to_same_format_keeps_values():
    x = mpgrad.tensor([0.1, 0.2], dtype="bf16")
    assert_bits_equal(x.to("bfloat16"), x)
    assert_bits_equal(x.to("bfloat16", "toward_zero"), x)
    assert_bits_equal(x.to("float64").to("bfloat16", "up"), x)


def test_to_unknown_mode():
    with pytest.raises(ValueError, match="valid modes"):
        mpgrad.tensor([1.0]).to("f16", "nearest")


# --- operators and methods ------------------------------------------------------------------

def f16(*v):
    return mpgrad.tensor(np.array(v, np.float64), dtype="float16")


def test_arithmetic_operators_round_once_in_the_format():
    a, b = f16(1.0, 1 + 2**-10, 1 + 2**-10, 3.0), f16(2**-11, 2**-11, 1 + 2**-10, 2.0)
    # add: 1 + 2**-11 is a tie -> even 1.0; 1 + 3 * 2**-11 is a tie -> even 1 + 2**-9
    # mul: (1 + 2**-10)**2 = 1 + 2**-9 + 2**-20 -> 1 + 2**-9 (below half an ulp, 2**-11)
    s, p = a + b, a * b
    assert s.dtype == p.dtype == mpgrad.float16
    assert values(s)[:2] == [1.0, 1 + 2**-9]
    assert values(p)[2] == 1 + 2**-9 and values(p)[3] == 6.0
    assert values(a - b)[3] == 1.0 and values(a - b)[0] == 1 - 2**-11  # exact below 1
    # div: 3 / 2 exact; 1 / 2**-11 exact; (1 + 2**-10) / (1 + 2**-10) = 1
    assert values(a / b)[1:] == [2**11 + 2, 1.0, 1.5]
    assert values(-a)[0] == -1.0 and values(abs(-a)) == values(a)


def test_pow_operator_and_method():
    t = f16(3.0, 4.0)
    assert values(t ** 2) == [9.0, 16.0] and (t ** 2).dtype == mpgrad.float16
    # sqrt(3) = 1.7320508...; / 2**-10 = 1773.6 -> 1774 * 2**-10
    assert values(t ** 0.5) == [1774 / 1024, 2.0]
    assert values(t.pow(-1))[1] == 0.25
    with pytest.raises(TypeError, match="scalar exponent"):
        t ** t


def test_methods_exist():
    t = f16(1.0, 2.0, 2.0, 4.0)
    # exp(1) = 2.71828...; float16 ulp in [2, 4) is 2**-9: 1391.76 -> 1392 * 2**-9
    assert t.exp().to_float64()[0] == 2.71875
    assert t.sum().item() == 9.0 and t.sum().dtype == mpgrad.float16
    # mean 9/4 exact; mean of (1, 2, 2) = 5/3 -> 1706.67 * 2**-10 -> 1707 * 2**-10
    assert t.mean().item() == 2.25 and t[:3].mean().item() == 1707 / 1024
    r = t.reshape(2, 2)
    assert r.shape == (2, 2) and values(r.T) == [[1.0, 2.0], [2.0, 4.0]]
    assert values(t.reshape((4, 1))[1:3, 0]) == [2.0, 2.0]
    assert values(t[np.array([3, 0])]) == [4.0, 1.0] and values(t[t > 1.5]) == [2.0, 2.0, 4.0]
    assert t.sqrt().dtype == mpgrad.float16 and values(t.relu()) == values(t)
    with pytest.raises(AttributeError, match="no attribute 'frobnicate'"):
        t.frobnicate()


def test_reductions_of_a_0d_tensor():
    # as NumPy/PyTorch: axis 0 (or -1) of a 0-d tensor is accepted and gives the value
    s = mpgrad.tensor(np.float64(3.0))
    assert s.sum().item() == 3.0 and s.mean().item() == 3.0
    assert s.sum(axis=0).item() == 3.0 and s.mean(axis=-1).item() == 3.0


def test_sum_is_one_rounding():
    # sequential float16 additions would give 1 + 2**-11 -> 1, then again 1; the exact sum
    # 1 + 2**-10 is representable
    assert f16(1.0, 2**-11, 2**-11).sum().item() == 1 + 2**-10
    # 2048 + 1 = 2049 is a tie between 2048 and 2050 -> even mantissa: 2048
    assert f16(2048.0, 1.0).sum().item() == 2048.0


@pytest.mark.parametrize("number", [2.0, 2, np.float32(2.0), np.float64(2.0), np.float16(2.0)],
                         ids=["float", "int", "np.float32", "np.float64", "np.float16"])
def test_numbers_on_either_side_are_weak(number):
    for fmt in ("float16", "bfloat16"):
        t = mpgrad.tensor([3.0], dtype=fmt)
        for result in (number * t, t * number, t + number, number + t, t - number,
                       number - t, t / number, number / t):
            assert result.dtype.name == fmt, (type(number), fmt)
    t = f16(3.0)
    assert values(number * t) == [6.0] and values(number - t) == [-1.0]
    assert values(number / t) == [mpfr_round(Fraction(2, 3), "float16")]


def test_weak_number_is_rounded_to_the_format_first():
    # 0.1 -> float16 0.0999755859375 = 1638.4 * 2**-14 rounded -> 1638 * 2**-14; then
    # 3 * 1638 * 2**-14 = 1228.5 * 2**-12: a tie -> even 1228 * 2**-12 = 0.2998046875.
    # (The exact 3 * 0.1 would give 1229 * 2**-12.)
    assert values(f16(3.0) * 0.1) == [0.2998046875]
    assert values(0.1 * f16(3.0)) == [0.2998046875]
    assert mpfr_round(3 * Fraction(mpfr_round(0.1, "float16")), "float16") == 0.2998046875


def test_comparisons_return_numpy_bool_arrays():
    t = f16(0.1, 1.0, 2.0)
    for c in (t < 1.5, 1.5 > t, t <= 1.0, t >= 1.0, t > 1.0, t == 1.0, t != 1.0,
              t < mpgrad.tensor([1.0, 1.0, 1.0])):
        assert isinstance(c, np.ndarray) and c.dtype == bool and c.shape == (3,)
    assert (t < 1.5).tolist() == [True, True, False] and (1.5 > t).tolist() == [True] * 2 + [
        False]
    assert (t <= 1.0).tolist() == [True, True, False] and (t != 1.0).tolist() == [
        True, False, True]
    # exact values compared: float16(0.1) = 0.0999755859375 < bfloat16(0.1) = 0.10009765625
    b = mpgrad.tensor([0.1], dtype="bf16")
    assert (t[:1] < b).tolist() == [True] and (t[:1] == b).tolist() == [False]
    # the number is weak: rounded to float16 first, so float16(0.1) == 0.1
    assert (t[:1] == 0.1).tolist() == [True]


def test_where_behaviour():
    a, b = f16(1.0, 2.0, 3.0), f16(-1.0, -2.0, -3.0)
    cond = np.array([True, False, True])
    w = mpgrad.where(cond, a, b)
    assert w.dtype == mpgrad.float16 and values(w) == [1.0, -2.0, 3.0]
    assert values(mpgrad.where(a > 1.5, a, 0.0)) == [0.0, 2.0, 3.0]
    assert mpgrad.where(a > 1.5, a, 0.0).dtype == mpgrad.float16
    m = mpgrad.where(cond, a, mpgrad.tensor([0.5], dtype="float32"))  # promotes, broadcasts
    assert m.dtype == mpgrad.float32 and values(m) == [1.0, 0.5, 3.0]
    grid = mpgrad.where(np.array([[True], [False]]), a, b)
    assert grid.shape == (2, 3) and values(grid) == [[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]]
    with pytest.raises(TypeError, match="boolean"):
        mpgrad.where(np.array([1, 0, 1]), a, b)


def test_clamp_behaviour():
    t = f16(-3.0, -0.25, 0.5, 4.0, np.nan)
    assert values(mpgrad.clamp(t, -1.0, 1.0))[:4] == [-1.0, -0.25, 0.5, 1.0]
    assert np.isnan(mpgrad.clamp(t, -1.0, 1.0).to_float64()[4])  # NaN propagates
    assert values(t.clamp(min=0.0))[:4] == [0.0, 0.0, 0.5, 4.0]
    assert values(mpgrad.clamp(t, max=0.0))[:4] == [-3.0, -0.25, 0.0, 0.0]
    assert mpgrad.clamp(t, -1.0, 1.0).dtype == mpgrad.float16
    # a bound the format lacks gives a value of the format: 0.1 -> 1638 * 2**-14
    assert values(mpgrad.clamp(t, min=0.1))[0] == 1638 * 2**-14
    with pytest.raises(ValueError, match="min, max or both"):
        mpgrad.clamp(t)


# --- what a tensor is made from, and what it refuses ------------------------------------------

@pytest.mark.parametrize("data", [None, [1.0, None], [[1.0], [None]], "1.5", ["1.0", "2.0"],
                                  b"1", {"a": 1}, {1.0, 2.0}, [1.0, {}], 1j, [1.0, 2j],
                                  np.array(["2020-01-01"], dtype="datetime64[D]")],
                         ids=["None", "list-None", "nested-None", "str", "list-str", "bytes",
                              "dict", "set", "list-dict", "complex", "list-complex",
                              "datetime"])
def test_non_numbers_are_a_type_error(data):
    # (None used to become NaN, and complex/strings gave NumPy's own errors)
    for make in (mpgrad.tensor, mpgrad.Tensor, lambda d: mpgrad.tensor(d, dtype="bf16")):
        with pytest.raises(TypeError, match="cannot make a tensor|has no mpgrad format"):
            make(data)


@pytest.mark.parametrize("other", [None, "a", [1.0, None], {"a": 1}], ids=repr)
def test_non_number_operands_are_a_type_error(other):
    t = mpgrad.tensor([1.0, 2.0], dtype="f16")
    for op in (lambda: t + other, lambda: other + t, lambda: t * other, lambda: other / t,
               lambda: t < other, lambda: mpgrad.maximum(t, other)):
        with pytest.raises(TypeError, match="None|cannot make a tensor"):
            op()


def test_ragged_lists_are_a_value_error():
    with pytest.raises(ValueError, match="cannot make a tensor"):
        mpgrad.tensor([[1.0], [1.0, 2.0]])


def test_python_ints_are_exact_or_refused():
    # 2**70 is a float64 (and float32) value; 2**70 + 1 is not a float64: rounding it to
    # float64 first would be a second rounding, so it is refused
    assert mpgrad.tensor([2**70, 3]).to_float64().tolist() == [2.0**70, 3.0]
    with pytest.raises(ValueError, match="not exact in float64"):
        mpgrad.tensor([2**70 + 1, 1])
    with pytest.raises(ValueError, match="not exact in float64"):
        mpgrad.tensor([2**1100, 1])
    assert np.isnan(mpgrad.tensor([float("nan"), 2**70]).to_float64()[0])


def test_integer_and_bool_arrays_round_once_to_the_default_format():
    # mpgrad has floating formats only: integer data (Python or NumPy) is rounded once to the
    # default float32, as torch.tensor(ints, dtype=torch.float32). 2**24 + 1 is a tie between
    # the float32 neighbours 2**24 and 2**24 + 2: to even, 2**24.
    for data in ([2**24 + 1, 7], np.array([2**24 + 1, 7], np.int64),
                 np.array([2**24 + 1, 7], np.uint32)):
        t = mpgrad.tensor(data)
        assert t.dtype == mpgrad.float32
        assert values(t) == [mpfr_round(2**24 + 1, "float32"), 7.0] == [2.0**24, 7.0]
    b = mpgrad.tensor(np.array([True, False]))
    assert b.dtype == mpgrad.float32 and values(b) == [1.0, 0.0]


def _ml_dtype(name):
    if not hasattr(ml_dtypes, name):
        pytest.skip(f"ml_dtypes {ml_dtypes.__version__} has no {name}")
    return np.dtype(getattr(ml_dtypes, name))


@pytest.mark.parametrize("name", ["float8_e8m0fnu", "float8_e5m3fnu"])
def test_ml_dtypes_floats_without_a_format_are_refused(name):
    # no sign bit (and for e8m0fnu no zero): no Format row can hold them
    dt = _ml_dtype(name)
    a = np.array([0.5, 2.0, 4.0]).astype(dt)
    with pytest.raises(TypeError, match=f"dtype {name} has no mpgrad format.*dtype="):
        mpgrad.tensor(a)
    # with a format given, their exact values are rounded once (here exactly)
    t = mpgrad.tensor(a, dtype="float32")
    assert t.dtype == mpgrad.float32 and values(t) == a.astype(np.float64).tolist()


@pytest.mark.parametrize("name", ["int4", "uint4", "int2", "uint2", "int1", "uint1",
                                  "complex32", "bcomplex32"])
def test_ml_dtypes_integers_and_complex_are_refused(name):
    a = np.zeros(3, _ml_dtype(name))
    for dtype in (None, "float32"):
        with pytest.raises(TypeError, match=f"dtype {name} has no mpgrad format.*convert it"):
            mpgrad.tensor(a, dtype=dtype)


@pytest.mark.parametrize("name", ["float8_e4m3", "float8_e3m4", "float8_e4m3b11fnuz",
                                  "float8_e5m2fnuz", "float16", "bfloat16"])
def test_arrays_keep_their_format_and_every_bit(name):
    # every bit pattern, NaN payloads and -0 included, comes back as it was given (these
    # formats used to become float32, or had their NaNs replaced by the canonical NaN)
    dt = _reference_storage(name)
    codes = np.arange(2 ** (8 * dt.itemsize), dtype=np.uint8 if dt.itemsize == 1 else np.uint16)
    a = codes.view(dt)
    t = mpgrad.tensor(a)
    assert t.dtype.name == name and t.numpy().dtype == dt
    np.testing.assert_array_equal(t.numpy().view(codes.dtype), codes)
    assert a.flags.writeable  # the caller's array is copied, not frozen


def _reference_storage(name):
    return np.dtype(np.float16) if name == "float16" else _ml_dtype(name)


def test_explicit_dtype_still_rounds_once():
    a = np.array([1 + 2**-8 + 2**-20, np.nan], np.float32)  # above bfloat16's midpoint
    t = mpgrad.tensor(a, dtype="bf16")
    assert values(t)[0] == mpfr_round(float(a[0]), "bfloat16") == 1 + 2**-7


# --- NumPy and Python protocols ---------------------------------------------------------------

def test_array_protocol_gives_the_storage():
    t = mpgrad.tensor([0.1, -2.0], dtype="bf16")
    a = np.asarray(t)
    assert a.dtype == ml_dtypes.bfloat16 and np.shares_memory(a, t.numpy())
    assert not a.flags.writeable  # the tensor's storage is never changed in place
    assert a.astype(np.float64).tolist() == values(t)
    c = np.array(t)  # a copy (NumPy 2: copy=True is passed; NumPy 1: np.array copies)
    assert c.flags.writeable and not np.shares_memory(c, t.numpy())
    wide = np.asarray(t, dtype=np.float64)  # a widening is exact
    assert wide.tolist() == values(t)


@pytest.mark.skipif(np.lib.NumpyVersion(np.__version__) < "2.0.0", reason="NumPy 2's copy=")
def test_array_protocol_copy_false():
    t = mpgrad.tensor([0.1, -2.0], dtype="f16")
    assert np.shares_memory(np.asarray(t, copy=False), t.numpy())
    with pytest.raises(ValueError, match="needs a copy"):
        np.asarray(t, dtype=np.float64, copy=False)
    assert np.asarray(t, dtype=np.float16, copy=False).dtype == np.float16


def test_numpy_functions_take_tensors():
    # NumPy sees the stored float16 values (it bins in float16, as it does for that array)
    x = mpgrad.tensor(np.linspace(-1, 1, 101), dtype="f16")
    counts, edges = np.histogram(x, bins=5)
    want_counts, want_edges = np.histogram(np.linspace(-1, 1, 101).astype(np.float16), bins=5)
    assert counts.tolist() == want_counts.tolist() and edges.tolist() == want_edges.tolist()
    assert counts.sum() == 101 and edges.dtype == np.float16
    stacked = np.stack([x, x])
    assert stacked.shape == (2, 101) and stacked.dtype == np.float16


def test_float_and_int_of_one_element():
    t = mpgrad.tensor([[-2.75]], dtype="f16")
    assert float(t) == -2.75 and isinstance(float(t), float)
    assert int(t) == -2 == int(-2.75)  # toward zero, as int() and PyTorch
    assert int(mpgrad.tensor(7.0)) == 7
    for bad in (mpgrad.tensor([1.0, 2.0]), mpgrad.zeros(0)):
        with pytest.raises(ValueError, match="only one element tensors"):
            float(bad)
        with pytest.raises(ValueError, match="only one element tensors"):
            int(bad)
    with pytest.raises(ValueError, match="NaN"):
        int(mpgrad.tensor(float("nan")))


@pytest.mark.parametrize("value, truth", [(0.0, False), (-0.0, False), (2.0**-24, True),
                                          (-1.0, True), (float("nan"), True),
                                          (float("inf"), True)])
def test_bool_of_one_element(value, truth):
    # as PyTorch (and Python's bool of a float); it used to be len() > 0, True for [0.0]
    for shape in ((), (1,), (1, 1)):
        assert bool(mpgrad.tensor(np.full(shape, value), dtype="f16")) is truth


def test_bool_of_several_or_no_elements_is_an_error():
    with pytest.raises(RuntimeError, match="more than one value is ambiguous"):
        bool(mpgrad.tensor([0.0, 0.0]))
    with pytest.raises(RuntimeError, match="more than one value is ambiguous"):
        bool(mpgrad.tensor([[1.0], [2.0]]))
    with pytest.raises(RuntimeError, match="no values is ambiguous"):
        bool(mpgrad.zeros(0, 3))


@pytest.mark.parametrize("scalar", [np.float32(0.1), np.float64(0.1), np.float16(0.1)],
                         ids=["np.float32", "np.float64", "np.float16"])
def test_numpy_scalars_and_arrays_on_the_left_dispatch_to_mpgrad(scalar):
    # __array_priority__: NumPy defers to Tensor's reflected operators, so the result is a
    # Tensor rounded as mpgrad rounds (the weak scalar is rounded to float16 first), not a
    # NumPy array computed by NumPy.
    t = f16(3.0, -5.0)
    s16 = Fraction(mpfr_round(float(scalar), "float16"))
    for result, want in ((scalar * t, [3 * s16, -5 * s16]), (scalar + t, [s16 + 3, s16 - 5]),
                         (scalar - t, [s16 - 3, s16 + 5]), (scalar / t, [s16 / 3, s16 / -5])):
        assert isinstance(result, mpgrad.Tensor) and result.dtype == mpgrad.float16
        assert values(result) == [mpfr_round(w, "float16") for w in want]
    a = np.array([scalar, 2 * scalar])  # an ndarray on the left: the same rule, elementwise
    result = a * t
    assert isinstance(result, mpgrad.Tensor) and result.dtype == mpgrad.float16
    s2 = Fraction(mpfr_round(float(a[1]), "float16"))
    assert values(result) == [mpfr_round(3 * s16, "float16"), mpfr_round(-5 * s2, "float16")]


def test_core_does_not_import_torch():
    import subprocess
    import sys
    code = ("import sys, numpy as np, mpgrad; t = mpgrad.tensor([1.0, 2.0], requires_grad=True);"
            " (t * t).sum().backward(); np.asarray(t); mpgrad.tensor(np.ones(2, np.float16));"
            " assert 'torch' not in sys.modules, 'torch was imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
