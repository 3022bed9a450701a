"""Empty and 0-d tensors: results, gradients and errors as NumPy and PyTorch give them.

Reductions over a zero-length axis, the nn functions of (0, C) batches, matmul with a zero
dimension under every accumulation model and hardware preset, Linear with zero features,
shape ops on size-0 and 0-d tensors. The references are NumPy (always) and PyTorch CPU
(torch 2.13.0, skipped cleanly without it); gradients are checked for shape and values.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import mpgrad
import mpgrad.nn.functional as F
from mpgrad import accumulate, nn

FORMATS = ["float32", "float16", "bfloat16", "float8_e4m3fn"]
# (shape, axis): the reduced axis or the kept one has length 0, or both
EMPTY_REDUCTIONS = [((0, 3), 1), ((0, 3), 0), ((0, 3), None), ((3, 0), 1), ((3, 0), 0),
                    ((3, 0), (0, 1)), ((2, 0, 3), (0, 2)), ((2, 0, 3), 1), ((0,), 0),
                    ((0, 3), ())]


def leaf(shape, fmt="float32", fill=1.5):
    """A leaf tensor of shape filled with one value, requiring grad."""
    return mpgrad.full(shape, fill, dtype=fmt, requires_grad=True)


def numpy_of(t: mpgrad.Tensor) -> np.ndarray:
    return np.asarray(t.to_float64())


def assert_same(got: mpgrad.Tensor, want, what: str = "") -> None:
    """Equal shapes, and equal values with NaN equal to NaN and the signs of zeros equal."""
    got, want = numpy_of(got), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    np.testing.assert_array_equal(got, want, err_msg=what)
    zeros = want == 0
    assert np.array_equal(np.signbit(got[zeros]), np.signbit(want[zeros])), what


def backward_ones(y: mpgrad.Tensor) -> None:
    """y.backward() with a gradient of ones (an empty one for an empty y)."""
    y.backward(mpgrad.ones(y.shape, dtype=y.dtype))


# --- reductions -----------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape,axis", EMPTY_REDUCTIONS, ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_sum_and_mean_over_empty_axes_are_numpys(fmt, shape, axis, keepdims):
    """sum: zeros (+0) of NumPy's shape; mean: NaN where no term was averaged; the gradient
    of an empty input is empty, of the input's shape and format."""
    for op, ref in ((mpgrad.sum, np.sum), (mpgrad.mean, np.mean)):
        x = leaf(shape, fmt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's "mean of empty slice"
            want = ref(np.full(shape, 1.5), axis=axis, keepdims=keepdims)
        y = op(x, axis=axis, keepdims=keepdims)
        assert y.dtype == mpgrad.as_format(fmt)
        assert_same(y, want, f"{op.__name__} {shape} axis={axis}")
        backward_ones(y)
        assert x.grad.shape == shape and x.grad.dtype == x.dtype
        if x.size:  # axis=() sums nothing: the gradient is g itself
            assert_same(x.grad, np.ones(shape))


@pytest.mark.parametrize("shape,axis", [s for s in EMPTY_REDUCTIONS if s[1] != ()], ids=str)
def test_sum_and_mean_over_empty_axes_are_torchs(shape, axis):
    torch = pytest.importorskip("torch")
    for op, ref in ((mpgrad.sum, torch.sum), (mpgrad.mean, torch.mean)):
        x, tx = leaf(shape), torch.full(shape, 1.5, requires_grad=True)
        y = op(x, axis=axis)
        ty = ref(tx) if axis is None else ref(tx, dim=axis)
        assert_same(y, ty.detach().numpy(), f"{op.__name__} {shape} axis={axis}")
        backward_ones(y)
        ty.backward(torch.ones_like(ty))
        assert_same(x.grad, tx.grad.numpy())


@pytest.mark.parametrize("fmt", ["float6_e2m3fn", "float6_e3m2fn", "float4_e2m1fn"])
def test_mean_over_an_empty_axis_in_a_format_without_nan_is_an_error(fmt):
    with pytest.raises(ValueError, match=f"NaN, which {fmt} cannot hold"):
        mpgrad.mean(mpgrad.zeros(0, 3, dtype=fmt), axis=0)
    assert mpgrad.mean(mpgrad.zeros(0, 3, dtype=fmt), axis=1).shape == (0,)  # no mean taken
    assert_same(mpgrad.sum(mpgrad.zeros(0, 3, dtype=fmt), axis=0), np.zeros(3))


@pytest.mark.parametrize("axis", [None, (), 0, -1, [0]], ids=str)
def test_reductions_of_a_0d_tensor_are_the_value(axis):
    """sum and mean of a 0-d tensor: the value itself, gradient 1 (axis 0 or -1 names the
    tensor's only "axis" as in torch; NumPy takes None and ())."""
    for op in (mpgrad.sum, mpgrad.mean):
        x = leaf((), "bfloat16", fill=-2.5)
        y = op(x, axis=axis)
        assert y.shape == () and y.dtype == mpgrad.bfloat16 and y.item() == -2.5
        y.backward()
        assert x.grad.shape == () and x.grad.item() == 1.0
    if axis in (None, ()):
        assert np.sum(np.float64(-2.5), axis=axis) == -2.5


def test_reductions_of_a_0d_tensor_follow_torch():
    torch = pytest.importorskip("torch")
    for dim in (0, -1):
        assert torch.sum(torch.tensor(-2.5), dim=dim).item() == \
            mpgrad.sum(mpgrad.tensor(-2.5), axis=dim).item()
    with pytest.raises(RuntimeError, match="multiple times"):
        torch.sum(torch.tensor(-2.5), dim=(0, 0))


@pytest.mark.parametrize("axis", [(0, 0), (0, -1), 1, (0, 1)], ids=str)
def test_a_0d_tensor_refuses_repeated_and_out_of_range_axes(axis):
    """As NumPy (an AxisError, a ValueError) and torch ("dim 0 appears multiple times")."""
    with pytest.raises(ValueError):
        np.sum(np.float64(1.0), axis=axis)
    for op in (mpgrad.sum, mpgrad.mean):
        with pytest.raises(ValueError, match="out of bounds|repeated"):
            op(mpgrad.tensor(1.0), axis=axis)


@pytest.mark.parametrize("axis", [(0, 0), (1, -1), (0, 1, 0)], ids=str)
def test_repeated_axes_are_refused(axis):
    with pytest.raises(ValueError, match="duplicate value"):
        np.sum(np.zeros((2, 3)), axis=axis)
    for op in (mpgrad.sum, mpgrad.mean):
        with pytest.raises(ValueError, match="repeated axis"):
            op(mpgrad.zeros(2, 3), axis=axis)
        with pytest.raises(np.exceptions.AxisError, match="out of bounds"):
            op(mpgrad.zeros(2, 3), axis=2)


# --- nn functions of empty batches ----------------------------------------------------------

def _functional_cases(torch):
    """(name, mpgrad call, torch call) on an input of shape (0, 4) or (3, 0)."""
    tf = torch.nn.functional
    none = np.zeros(0, dtype=np.int64)
    tnone = torch.zeros(0, dtype=torch.long)
    target = mpgrad.zeros(0, 4)
    cases = [
        ("softmax", lambda x: F.softmax(x), lambda x: tf.softmax(x, -1)),
        ("log_softmax", lambda x: F.log_softmax(x), lambda x: tf.log_softmax(x, -1)),
        ("softmax axis 0", lambda x: F.softmax(x, axis=0), lambda x: tf.softmax(x, 0)),
        ("layer_norm", lambda x: F.layer_norm(x, 4), lambda x: tf.layer_norm(x, (4,))),
        ("mse_loss none", lambda x: F.mse_loss(x, target, "none"),
         lambda x: tf.mse_loss(x, torch.zeros(0, 4), reduction="none")),
    ]
    for reduction in ("mean", "sum", "none"):
        cases += [
            (f"cross_entropy {reduction}", lambda x, r=reduction: F.cross_entropy(x, none, r),
             lambda x, r=reduction: tf.cross_entropy(x, tnone, reduction=r)),
            (f"nll_loss {reduction}", lambda x, r=reduction: F.nll_loss(x, none, r),
             lambda x, r=reduction: tf.nll_loss(x, tnone, reduction=r)),
            (f"mse_loss {reduction}", lambda x, r=reduction: F.mse_loss(x, target, r),
             lambda x, r=reduction: tf.mse_loss(x, torch.zeros(0, 4), reduction=r)),
        ]
    return cases


def test_nn_functions_of_an_empty_batch_are_torchs():
    """torch: softmax and layer_norm of (0, C) are (0, C); a mean loss of no samples is NaN,
    a sum 0, 'none' shape (0,); the gradients are empty (0, C) tensors."""
    torch = pytest.importorskip("torch")
    for name, ours, theirs in _functional_cases(torch):
        x, tx = leaf((0, 4)), torch.full((0, 4), 1.5, requires_grad=True)
        y, ty = ours(x), theirs(tx)
        assert_same(y, ty.detach().numpy(), name)
        backward_ones(y)
        ty.backward(torch.ones_like(ty))
        assert_same(x.grad, tx.grad.numpy(), name)


@pytest.mark.parametrize("fmt", FORMATS)
def test_nn_functions_of_an_empty_batch_keep_the_format(fmt):
    """The same calls in low-precision formats: shapes as NumPy's, the mean of no losses NaN."""
    labels = np.zeros(0, dtype=np.int64)
    x = leaf((0, 4), fmt)
    assert F.softmax(x).shape == F.log_softmax(x).shape == F.layer_norm(x, 4).shape == (0, 4)
    loss = F.cross_entropy(x, labels)
    assert loss.dtype == x.dtype and np.isnan(loss.item())
    assert F.cross_entropy(x, labels, "sum").item() == 0.0
    loss.backward()
    assert x.grad.shape == (0, 4) and x.grad.dtype == x.dtype


def test_softmax_and_layer_norm_over_an_empty_axis_are_torchs():
    """An axis of length 0 to normalise over: an empty result of the same shape, as torch."""
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    for ours, theirs in ((lambda x: F.softmax(x), lambda x: tf.softmax(x, -1)),
                         (lambda x: F.log_softmax(x), lambda x: tf.log_softmax(x, -1)),
                         (lambda x: F.layer_norm(x, 0), lambda x: tf.layer_norm(x, (0,)))):
        x, tx = leaf((3, 0)), torch.full((3, 0), 1.5, requires_grad=True)
        y, ty = ours(x), theirs(tx)
        assert_same(y, ty.detach().numpy())
        backward_ones(y)
        ty.backward(torch.ones_like(ty))
        assert_same(x.grad, tx.grad.numpy())


# --- matmul with a zero dimension -----------------------------------------------------------

MATMUL_SHAPES = [((2, 0), (0, 3)), ((0, 4), (4, 3)), ((2, 4), (4, 0)), ((0, 0), (0, 0)),
                 ((0,), (0,)), ((2, 0), (0,)), ((0,), (0, 3)), ((0, 2, 3), (3, 4)),
                 ((2, 1, 3, 0), (4, 0, 2))]
MODELS = {**accumulate.HARDWARE,
          "Exact": accumulate.Exact(), "Sequential": accumulate.Sequential(),
          "Sequential_reverse_nofma": accumulate.Sequential(fma=False, order="reverse"),
          "Pairwise": accumulate.Pairwise(), "NUMPY": accumulate.software.NUMPY,
          "NUMPY_1": accumulate.software.NUMPY_1, "Chunked": accumulate.Chunked(4),
          "BlockFMA": accumulate.BlockFMA(4, 24)}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("fmt", ["float16", "bfloat16", "float8_e4m3fn"])
def test_matmul_with_a_zero_dimension_under_every_model(name, fmt):
    """K = 0: zeros (+0, an empty sum); M, N or a batch size 0: an empty result; the
    gradients are zeros of the operands' shapes (np.matmul's shapes and values)."""
    for sa, sb in MATMUL_SHAPES:
        a, b = leaf(sa, fmt), leaf(sb, fmt)
        with mpgrad.use_policy(mpgrad.Policy(fmt, fmt, fmt, accumulate=MODELS[name])):
            y = mpgrad.matmul(a, b)
            backward_ones(y)
        assert y.dtype == a.dtype
        assert_same(y, np.matmul(np.full(sa, 1.5), np.full(sb, 1.5)), f"{sa} @ {sb}")
        ga = np.matmul(np.ones(y.shape), np.full(sb, 1.5).T) if len(sa) == len(sb) == 2 \
            else np.zeros(sa)
        if len(sa) == len(sb) == 2:
            assert_same(a.grad, ga)
        assert a.grad.shape == sa and b.grad.shape == sb


def test_matmul_with_a_zero_dimension_is_torchs():
    torch = pytest.importorskip("torch")
    for sa, sb in MATMUL_SHAPES:
        a, b = leaf(sa), leaf(sb)
        ta, tb = (torch.full(s, 1.5, requires_grad=True) for s in (sa, sb))
        y, ty = mpgrad.matmul(a, b), torch.matmul(ta, tb)
        assert_same(y, ty.detach().numpy(), f"{sa} @ {sb}")
        backward_ones(y)
        ty.backward(torch.ones_like(ty))
        assert_same(a.grad, ta.grad.numpy()), assert_same(b.grad, tb.grad.numpy())


# --- Linear with zero features --------------------------------------------------------------

@pytest.mark.parametrize("n_in,n_out,batch", [(0, 3, 2), (3, 0, 2), (3, 2, 0), (0, 0, 2)])
def test_linear_with_zero_features_is_torchs(n_in, n_out, batch):
    """torch allows Linear(0, n) and Linear(n, 0): the weight init warns that it is a no-op,
    the bias bound is 0 when in_features is 0, and the output is x @ W.T + b."""
    torch = pytest.importorskip("torch")
    def warns():
        return pytest.warns(UserWarning, match="zero-element tensors is a no-op") \
            if n_in * n_out == 0 else warnings.catch_warnings()
    with warns():
        lin = nn.Linear(n_in, n_out, rng=0)
    with warns():
        ref = torch.nn.Linear(n_in, n_out)
    if n_in == 0:
        assert_same(lin.bias, np.zeros(n_out))  # U(-0, 0): zeros, as torch's
        assert_same(lin.bias, ref.bias.detach().numpy())
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(numpy_of(lin.weight)))
        ref.bias.copy_(torch.from_numpy(numpy_of(lin.bias)))
    x, tx = leaf((batch, n_in)), torch.full((batch, n_in), 1.5, requires_grad=True)
    y, ty = lin(x), ref(tx)
    assert_same(y, ty.detach().numpy())
    backward_ones(y)
    ty.backward(torch.ones_like(ty))
    for ours, theirs in ((x.grad, tx.grad), (lin.weight.grad, ref.weight.grad),
                         (lin.bias.grad, ref.bias.grad)):
        assert_same(ours, theirs.numpy())


def test_an_mlp_with_a_hidden_layer_of_zero_units_trains():
    """(the demo's --hidden 0): the output is the last bias; its gradient the batch sum."""
    with pytest.warns(UserWarning, match="zero-element"):
        mlp = nn.MLP((4, 0, 2), rng=0)
    x = mpgrad.randn(5, 4, rng=1)
    y = mlp(x)
    assert_same(y, np.broadcast_to(numpy_of(mlp[2].bias), (5, 2)))
    F.cross_entropy(y, np.array([0, 1, 1, 0, 1])).backward()
    assert mlp[0].weight.grad.shape == (0, 4) and mlp[2].weight.grad.shape == (2, 0)
    assert mlp[0].bias.grad.shape == (0,)


# --- shape ops on size-0 and 0-d tensors ----------------------------------------------------

# (name, input shape, the mpgrad op, the same op on a NumPy array)
SHAPE_CASES = [
    ("reshape (0,3) -> (-1, 3)", (0, 3), lambda x: mpgrad.reshape(x, -1, 3),
     lambda a: a.reshape(-1, 3)),
    ("reshape (0,3) -> (3, -1)", (0, 3), lambda x: mpgrad.reshape(x, (3, -1)),
     lambda a: a.reshape(3, -1)),
    ("reshape (0,3) -> (-1,)", (0, 3), lambda x: x.reshape(-1), lambda a: a.reshape(-1)),
    ("reshape 0-d -> (1, -1)", (), lambda x: x.reshape(1, -1), lambda a: a.reshape(1, -1)),
    ("reshape (1,) -> ()", (1,), lambda x: x.reshape(()), lambda a: a.reshape(())),
    ("transpose (0,3)", (0, 3), mpgrad.transpose, np.transpose),
    ("permute (2,0,3)", (2, 0, 3), lambda x: mpgrad.permute(x, 2, 0, 1),
     lambda a: np.transpose(a, (2, 0, 1))),
    ("transpose 0-d", (), mpgrad.transpose, np.transpose),
    ("broadcast (1,3) -> (0,3)", (1, 3), lambda x: mpgrad.broadcast_to(x, (0, 3)),
     lambda a: np.broadcast_to(a, (0, 3))),
    ("broadcast 0-d -> (0,)", (), lambda x: mpgrad.broadcast_to(x, (0,)),
     lambda a: np.broadcast_to(a, (0,))),
    ("getitem empty slice", (3, 4), lambda x: x[1:1], lambda a: a[1:1]),
    ("getitem of empty", (0, 4), lambda x: x[:, 1], lambda a: a[:, 1]),
    ("getitem empty int array", (3, 4), lambda x: x[np.array([], dtype=np.int64)],
     lambda a: a[np.array([], dtype=np.int64)]),
    ("getitem 0-d", (), lambda x: x[()], lambda a: a[()]),
    ("getitem 0-d None", (), lambda x: x[None], lambda a: a[None]),
    ("concatenate with empty", (2, 3), lambda x: mpgrad.concatenate([x, x[:0]]),
     lambda a: np.concatenate([a, a[:0]])),
    ("stack empties", (0, 3), lambda x: mpgrad.stack([x, x]), lambda a: np.stack([a, a])),
]


@pytest.mark.parametrize("name,shape,op,numpy_op", SHAPE_CASES,
                         ids=[c[0] for c in SHAPE_CASES])
def test_shape_ops_on_empty_and_0d_tensors_are_numpys(name, shape, op, numpy_op):
    """The result is NumPy's; each output element is a copy of one input element, so the
    gradient of ones counts each input element's copies (np.add.at over their positions)."""
    values = np.arange(1.0, 1.0 + int(np.prod(shape))).reshape(shape)
    x = mpgrad.tensor(values, requires_grad=True)
    y = op(x)
    assert_same(y, numpy_op(values), name)
    backward_ones(y)
    counts = np.zeros(values.size)
    np.add.at(counts, np.asarray(numpy_op(np.arange(values.size).reshape(shape))).ravel(), 1)
    assert_same(x.grad, counts.reshape(shape), name)


SHAPE_ERRORS = [
    ("reshape of 0 elements to (0, -1)", lambda: mpgrad.zeros(0, 3).reshape(0, -1),
     "could be any size"),
    ("reshape 6 elements to (4,)", lambda: mpgrad.reshape(mpgrad.zeros(2, 3), (4,)),
     "6 elements into shape"),
    ("two -1", lambda: mpgrad.reshape(mpgrad.zeros(2, 3), (-1, -1)), "one -1"),
    ("a float size", lambda: mpgrad.reshape(mpgrad.zeros(2, 3), (6.0,)), "integers"),
    ("transpose with too few axes", lambda: mpgrad.transpose(mpgrad.zeros(2, 3), (0,)),
     "do not permute"),
    ("transpose of a 0-d tensor with an axis", lambda: mpgrad.transpose(mpgrad.zeros(), (0,)),
     "do not permute"),
    ("transpose with a repeated axis", lambda: mpgrad.transpose(mpgrad.zeros(2, 3), (1, 1)),
     "repeated axis"),
    ("broadcast (2,3) to (3,3)", lambda: mpgrad.broadcast_to(mpgrad.zeros(2, 3), (3, 3)),
     "cannot broadcast"),
    ("broadcast (2,3) to (3,)", lambda: mpgrad.broadcast_to(mpgrad.zeros(2, 3), (3,)),
     "cannot broadcast"),
    ("broadcast (0,3) to (2,3)", lambda: mpgrad.broadcast_to(mpgrad.zeros(0, 3), (2, 3)),
     "cannot broadcast"),
    ("matmul batch shapes", lambda: mpgrad.matmul(mpgrad.zeros(2, 2, 3), mpgrad.zeros(3, 3, 2)),
     r"batch axes: shapes \(2,\), \(3,\) do not broadcast"),
    ("add (0,) and (0, 3)", lambda: mpgrad.zeros(0) + mpgrad.zeros(0, 3),
     r"add: shapes \(0,\), \(0, 3\) do not broadcast"),
    ("mul by an array", lambda: mpgrad.zeros(3) * np.ones((2, 2)), "mul: shapes"),
    ("where", lambda: mpgrad.where(np.ones(2, bool), mpgrad.zeros(3), 0.0), "where: shapes"),
    ("maximum", lambda: mpgrad.maximum(mpgrad.zeros(2, 3), mpgrad.zeros(3, 2)),
     "maximum: shapes"),
]


@pytest.mark.parametrize("name,call,match", SHAPE_ERRORS, ids=[c[0] for c in SHAPE_ERRORS])
def test_bad_shapes_get_mpgrads_errors(name, call, match):
    """A ValueError (TypeError for a non-integer size) raised by mpgrad, saying what is wrong,
    not NumPy's message from inside NumPy."""
    with pytest.raises((ValueError, TypeError), match=match) as info:
        call()
    assert type(info.value) in (ValueError, TypeError, np.exceptions.AxisError)
