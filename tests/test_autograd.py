"""Autograd semantics: leaves, accumulation and its rounding, hooks, grad modes, errors, policies.

Expected low-precision values come from hand derivations (in the comments) or from MPFR via
gmpy2 (`mpfr_round`): a gmpy2 context with the format's precision, exponent range and
subnormalize=True rounds an exact rational once, to nearest even, independently of mpgrad.
"""

from __future__ import annotations

from fractions import Fraction

import gmpy2
import numpy as np
import pytest

import mpgrad

try:
    from .reference import ref_round
except ImportError:
    from reference import ref_round


def mpfr_round(value, fmt: str) -> float:
    """value (exact: a Fraction or a float) rounded once to fmt, nearest even, by MPFR."""
    return ref_round(Fraction(value), mpgrad.as_format(fmt), "nearest_even")


def mpfr_function(name: str, x: float, fmt: str) -> float:
    """name(x) (gmpy2.exp, gmpy2.log, ...) at 200 bits, then rounded to fmt by the reference."""
    with gmpy2.context(precision=200):
        value = getattr(gmpy2, name)(gmpy2.mpfr(x, 53))
    return ref_round(value, mpgrad.as_format(fmt), "nearest_even")


def T(values, fmt="float64", requires_grad=False) -> mpgrad.Tensor:
    return mpgrad.tensor(np.asarray(values, dtype=np.float64), dtype=fmt,
                         requires_grad=requires_grad)


def values(t: mpgrad.Tensor) -> list:
    return t.to_float64().tolist()


# --- leaves and non-leaves ------------------------------------------------------------------

def test_grad_only_on_leaves():
    x = T([1.0, 2.0], requires_grad=True)
    c = T([3.0, 4.0])
    h = x * c
    y = (h * h).sum()
    assert x.is_leaf and c.is_leaf and not h.is_leaf and not y.is_leaf
    assert h.requires_grad and y.requires_grad and not c.requires_grad
    y.backward()
    # d/dx (x c)^2 = 2 x c^2
    assert values(x.grad) == [18.0, 64.0] and x.grad.dtype == mpgrad.float64
    assert h.grad is None and y.grad is None and c.grad is None
    assert x.grad.is_leaf and not x.grad.requires_grad  # no graph built for gradients


def test_requires_grad_propagates_only_from_inputs_that_require_it():
    a, b = T([1.0], requires_grad=True), T([2.0])
    assert (a + b).requires_grad and not (b * 2.0).requires_grad
    assert (b * 2.0).is_leaf


# --- accumulation into .grad: one rounding per accumulation, in the leaf's format ------------

# float16 gradient values (each exactly representable) and what accumulating them gives
G1 = [1.0, 1 + 2**-10, 1.0, 2**-24, 1000.0, -2.0]
G2 = [2**-11, 2**-11, 3 * 2**-12, 2**-24, 0.3994140625, 2**-10]
G3 = [2**-11, 2**-11, 2**-11, 3 * 2**-24, 0.5, 2**-10]


def backward_with(x: mpgrad.Tensor, g: list) -> None:
    """A fresh graph y = sum(x * g): the gradient reaching x is g exactly (g * 1 is exact)."""
    (x * T(g, "float16")).sum().backward()


def test_accumulation_across_backward_calls_rounds_once_per_accumulation_in_float16():
    assert all(mpfr_round(v, "float16") == v for v in G1 + G2 + G3)  # operands are float16
    x = T(np.ones(6), "float16", requires_grad=True)
    backward_with(x, G1)
    assert x.grad.dtype == mpgrad.float16 and values(x.grad) == G1  # the first: stored as is
    backward_with(x, G2)
    # The exact sum rounded once to float16 (MPFR): e.g. 1 + 2**-11 is a tie -> 1.0;
    # (1 + 2**-10) + 2**-11 a tie -> 1 + 2**-9; 1 + 3 * 2**-12 -> 1 + 2**-10.
    second = [mpfr_round(Fraction(a) + Fraction(b), "float16") for a, b in zip(G1, G2)]
    assert second[:3] == [1.0, 1 + 2**-9, 1 + 2**-10]
    assert x.grad.dtype == mpgrad.float16 and values(x.grad) == second
    backward_with(x, G3)
    third = [mpfr_round(Fraction(a) + Fraction(b), "float16") for a, b in zip(second, G3)]
    assert values(x.grad) == third
    # sanity: one rounding per accumulation differs here from rounding the total once
    total = [mpfr_round(Fraction(a) + Fraction(b) + Fraction(c), "float16")
             for a, b, c in zip(G1, G2, G3)]
    assert third[0] == 1.0 and total[0] == 1 + 2**-10


def test_accumulation_in_bfloat16_leaf():
    x = T([1.0, 256.0], "bfloat16", requires_grad=True)
    (x * T([1.0, 256.0], "bfloat16")).sum().backward()
    (x * T([2**-8 + 2**-15, 1.0], "bfloat16")).sum().backward()
    # 1 + 2**-8 + 2**-15 is above the bfloat16 midpoint 1 + 2**-8 -> 1 + 2**-7;
    # 256 + 1 is the midpoint of 256 and 258 -> even: 256
    assert x.grad.dtype == mpgrad.bfloat16 and values(x.grad) == [1 + 2**-7, 256.0]


def test_tensor_used_twice_accumulates():
    x = T([3.0, -1.5], requires_grad=True)
    (x * x).sum().backward()
    assert values(x.grad) == [6.0, -3.0]
    x.grad = None
    (x + x).sum().backward()
    assert values(x.grad) == [2.0, 2.0]
    x.grad = None
    mpgrad.concatenate([x, x, x]).sum().backward()
    assert values(x.grad) == [3.0, 3.0]


def test_input_reached_directly_and_through_a_longer_path():
    # A residual: x is an input of the last op and, via x * 3, of an earlier one. Every path
    # contributes: d/dx (3x + x) = 4, d/dx (exp(x) + x) = exp(x) + 1, ...
    x = T([0.5, 2.0], requires_grad=True)
    (x * 3.0 + x).sum().backward()
    assert values(x.grad) == [4.0, 4.0]
    x.grad = None
    (x + (x * 2.0) * 3.0).sum().backward()
    assert values(x.grad) == [7.0, 7.0]
    x.grad = None
    (mpgrad.exp(x) + x).sum().backward()
    assert values(x.grad) == [float(np.exp(0.5)) + 1, float(np.exp(2.0)) + 1]
    x.grad = None
    h = x * 2.0
    (h * h + h).sum().backward()  # d/dx (4x^2 + 2x) = 8x + 2
    assert values(x.grad) == [6.0, 18.0]


def test_in_graph_accumulation_is_rounded_in_the_inputs_format_in_reverse_build_order():
    # y = x*a + x*b + x*c: contributions a, b, c reach x (float16). The contract adds them in
    # the reverse of the order the graph was built in, each addition rounded to float16:
    # (c + b) + a = (1 + 2**-11) + 2**-11 -> 1.0 + 2**-11 -> 1.0 (ties to even, twice);
    # the other order, (a + b) + c = 2**-10 + 1, would give 1 + 2**-10.
    x = T([5.0], "float16", requires_grad=True)
    a, b, c = T([2**-11], "float16"), T([2**-11], "float16"), T([1.0], "float16")
    (x * a + x * b + x * c).sum().backward()
    assert x.grad.dtype == mpgrad.float16 and values(x.grad) == [1.0]


# --- broadcasting and formats of gradients ---------------------------------------------------

def test_broadcast_gradient_summed_once_in_the_same_format():
    # float16 (3, 1) * float16 (1, 4): the gradient of a is sum_j b_j, the exact sum rounded
    # once: 1 + 2**-11 + 2**-11 + 0 = 1 + 2**-10 (adding in turn in float16 would give 1.0)
    a = T(np.ones((3, 1)), "float16", requires_grad=True)
    b = T([[1.0, 2**-11, 2**-11, 0.0]], "float16", requires_grad=True)
    (a * b).sum().backward()
    assert a.grad.shape == (3, 1) and a.grad.dtype == mpgrad.float16
    assert values(a.grad) == [[1 + 2**-10]] * 3
    assert b.grad.shape == (1, 4) and values(b.grad) == [[3.0] * 4]


def test_broadcast_gradient_of_narrow_input_against_float32():
    # float16 (3, 1) * float32 (1, 4) computes in float32. The VJP g * b (float32, exact) is
    # summed over the broadcast axis (exact sum, rounded once to the gradient's format,
    # float32) and then rounded to the input's format, float16 (docs/numerics-contract.md,
    # "Backward"). Row sums: 1 + 2**-11 + 2**-30 -> float32 1 + 2**-11 -> float16 tie -> 1.0;
    # 3 * 2**-12 + 2**-5 + 1 (exact in float32) -> float16.
    a = T(np.ones((2, 1)), "float16", requires_grad=True)
    b = T([[1.0, 2**-11, 2**-30, 0.0]], "float32", requires_grad=True)
    b2 = T([[1.0, 2**-5, 2**-12, 2**-11]], "float32", requires_grad=True)
    (a * b).sum().backward()
    assert a.grad.dtype == mpgrad.float16 and a.grad.shape == (2, 1)
    row = Fraction(1) + Fraction(2**-11) + Fraction(2**-30)
    assert values(a.grad) == [[mpfr_round(mpfr_round(row, "float32"), "float16")]] * 2
    assert values(a.grad) == [[1.0], [1.0]]
    assert b.grad.dtype == mpgrad.float32 and values(b.grad) == [[2.0] * 4]
    a.grad = None
    (a * b2).sum().backward()
    row2 = Fraction(1) + Fraction(2**-5) + Fraction(2**-12) + Fraction(2**-11)
    assert values(a.grad) == [[mpfr_round(row2, "float16")]] * 2


@pytest.mark.parametrize("fmt, n", [("float16", 2049), ("bfloat16", 257), ("float16", 70000)])
def test_mean_gradient_is_one_over_n_rounded_once(fmt, n):
    # d mean / dx_i = 1/n, correctly rounded to the format (as the forward mean rounds the
    # exact quotient once). n itself is not a value of the format here (2049 and 257 round to
    # 2048 and 256; 70000 overflows float16), so dividing by n rounded first is wrong: it
    # gives 2**-11 instead of float16(1/2049) = 0.000488042831..., and 0 for n = 70000.
    x = T(np.ones(n), fmt, requires_grad=True)
    x.mean().backward()
    expected = mpfr_round(Fraction(1, n), fmt)
    assert expected != 0.0
    assert x.grad.dtype.name == fmt and set(x.grad.to_float64().tolist()) == {expected}


def test_scalar_broadcast_gradient():
    s = T(2.0, "float16", requires_grad=True)
    m = T(np.full((2, 3), 0.5), "float16", requires_grad=True)
    (s * m).sum().backward()
    assert s.grad.shape == () and s.grad.dtype == mpgrad.float16 and s.grad.item() == 3.0
    assert values(m.grad) == [[2.0] * 3] * 2


def test_gradient_of_narrower_input_is_rounded_to_its_format():
    # bfloat16 * float32 computes in float32; d/da (a * b) = b, rounded to bfloat16
    a = T([1.0, -3.0], "bfloat16", requires_grad=True)
    bv = [1 + 2**-8 + 2**-20, 0.1]
    b = T(bv, "float32", requires_grad=True)
    y = a * b
    assert y.dtype == mpgrad.float32
    y.sum().backward()
    b32 = [mpfr_round(v, "float32") for v in bv]
    assert a.grad.dtype == mpgrad.bfloat16
    assert values(a.grad) == [mpfr_round(v, "bfloat16") for v in b32] == [1.0078125,
                                                                          0.10009765625]
    assert b.grad.dtype == mpgrad.float32 and values(b.grad) == [1.0, -3.0]


def test_cast_passes_gradient_back_rounded_to_the_source_format():
    x = T([1.0, 2.0], "float32", requires_grad=True)
    y = x.to("float16")
    (y * T([1 + 2**-11 + 2**-20, 3.0], "float16")).sum().backward()
    # the float16 constant is rounded at creation: 1 + 2**-11 + 2**-20 -> 1 + 2**-10; the
    # gradient reaches x exactly as float32
    assert x.grad.dtype == mpgrad.float32 and values(x.grad) == [1 + 2**-10, 3.0]


# --- hooks ----------------------------------------------------------------------------------

def test_hook_sees_the_gradient_and_may_replace_it():
    x = T([1.0, 2.0], requires_grad=True)
    h = x * 3.0
    seen = []
    h.register_hook(lambda g: seen.append(values(g)))
    h.register_hook(lambda g: g * 10.0)
    (h * T([1.0, -1.0])).sum().backward()
    assert seen == [[1.0, -1.0]]
    assert values(x.grad) == [30.0, -30.0]  # the replacement flowed on


def test_hooks_run_in_registration_order_each_seeing_the_last_replacement():
    x = T([1.0], requires_grad=True)
    seen = []
    x.register_hook(lambda g: g + 1.0)
    x.register_hook(lambda g: seen.append(values(g)))
    (x * 5.0).sum().backward()
    assert seen == [[6.0]] and values(x.grad) == [6.0]


def test_hook_removal_handle():
    x = T([1.0], requires_grad=True)
    calls = []
    remove = x.register_hook(lambda g: calls.append(1) or g * 2.0)
    (x * 1.0).sum().backward()
    remove()
    (x * 1.0).sum().backward()
    assert calls == [1] and values(x.grad) == [3.0]  # 2 (hooked) + 1 (after removal)


def test_hook_on_leaf_runs_before_accumulation():
    x = T([1.0], "float16", requires_grad=True)
    seen = []
    x.register_hook(lambda g: seen.append(values(g)) or g * 0.5)
    (x * 4.0).sum().backward()
    (x * 6.0).sum().backward()
    # each call sees that backward's gradient alone, and its replacement is accumulated
    assert seen == [[4.0], [6.0]] and values(x.grad) == [5.0]


def test_hook_on_tensor_used_twice_sees_the_total():
    x = T([2.0], requires_grad=True)
    h = x * 1.0
    seen = []
    h.register_hook(lambda g: seen.append(values(g)))
    (h * h + h).sum().backward()  # d/dh (h^2 + h) = 2h + 1 = 5, seen once
    assert seen == [[5.0]] and values(x.grad) == [5.0]


def test_hook_replacement_in_another_format_or_shape_does_not_corrupt_grad():
    # .grad holds the leaf's format and shape: a hook returning a float32 tensor for a
    # float16 leaf must be rounded back or rejected with an error naming the hook (PyTorch
    # raises), not silently change .grad's format.
    for replacement in (lambda g: g.to("float32"), lambda g: mpgrad.zeros(3, dtype="f16")):
        x = T([1.0, 2.0], "float16", requires_grad=True)
        x.register_hook(replacement)
        try:
            (x * 2.0).sum().backward()
        except (TypeError, ValueError, RuntimeError) as e:
            assert "hook" in str(e)
        else:
            assert x.grad.dtype == mpgrad.float16 and x.grad.shape == (2,)


def test_register_hook_needs_requires_grad():
    with pytest.raises(RuntimeError, match="does not require grad"):
        T([1.0]).register_hook(lambda g: g)


def test_hook_returning_a_non_tensor_is_a_type_error_naming_the_hook():
    def scale(g):
        return 2.0  # a number, not a Tensor
    x = T([1.0], requires_grad=True)
    x.register_hook(scale)
    with pytest.raises(TypeError, match="hook 'scale' returned float"):
        (x * 3.0).sum().backward()
    assert x.grad is None


def test_hook_returning_another_format_is_an_error_as_in_pytorch():
    # PyTorch raises "hook has changed the type of value"; rounding the replacement back
    # silently would hide a second rounding the user did not ask for
    def widen(g):
        return g.to("float32")
    x = T([1.0, 2.0], "float16", requires_grad=True)
    x.register_hook(widen)
    with pytest.raises(RuntimeError, match="hook 'widen' returned has data of a different "
                                           "type: float32 for a float16 tensor"):
        (x * 2.0).sum().backward()
    assert x.grad is None


def test_hook_removed_twice_is_a_no_op_as_in_pytorch():
    x = T([1.0], requires_grad=True)
    calls = []
    first = x.register_hook(lambda g: calls.append("first") or g * 2.0)
    first.remove()
    second = x.register_hook(lambda g: calls.append("second") or g * 3.0)
    first.remove()  # again: nothing happens, and the newer hook stays
    first()
    (x * 1.0).sum().backward()
    assert calls == ["second"] and values(x.grad) == [3.0]
    second.remove()
    second.remove()
    (x * 1.0).sum().backward()
    assert calls == ["second"] and values(x.grad) == [4.0]


def test_hook_may_remove_itself():
    x = T([1.0], requires_grad=True)
    seen = []

    def once(g):
        seen.append(values(g))
        handle.remove()
    handle = x.register_hook(once)
    x.register_hook(lambda g: seen.append("next"))
    (x * 2.0).sum().backward()
    (x * 2.0).sum().backward()
    assert seen == [[2.0], "next", "next"]


# --- assigning .grad ------------------------------------------------------------------------

def test_grad_assignment_checked_as_in_pytorch():
    # (torch THPVariable_set_grad: a Tensor or None, of the tensor's size and dtype)
    x = T([1.0, 2.0, 3.0], "float16", requires_grad=True)
    with pytest.raises(RuntimeError, match=r"different size: shape \(1,\) for a tensor of "
                                           r"shape \(3,\)"):
        x.grad = T([1.0], "float16")
    with pytest.raises(RuntimeError, match="different size"):
        x.grad = T([[1.0, 2.0, 3.0]], "float16")
    with pytest.raises(RuntimeError, match="different type: float32 for a float16 tensor"):
        x.grad = T([1.0, 2.0, 3.0], "float32")
    for bad in (np.ones(3), 1.0, [1.0, 1.0, 1.0]):
        with pytest.raises(TypeError, match="expected to be a Tensor or None"):
            x.grad = bad
    with pytest.raises(RuntimeError, match="its own grad"):
        x.grad = x
    assert x.grad is None  # nothing was assigned
    x.grad = T([0.5, 0.5, 0.5], "float16")
    x.grad = None
    assert x.grad is None


def test_assigned_grad_is_accumulated_into_in_its_format():
    # a valid .grad is added to (one rounding per element, in float16); a wrong-shaped one
    # used to broadcast here and a wrong-format one to accumulate in its own format
    x = T([1.0, 2.0], "float16", requires_grad=True)
    x.grad = T([1.0, 2.0**-11], "float16")
    (x * 3.0).sum().backward()
    # 1 + 3 = 4 exact; 2**-11 + 3 is below half an ulp of 3 (2**-10): 3
    assert x.grad.dtype == mpgrad.float16
    assert values(x.grad) == [mpfr_round(4, "float16"), mpfr_round(3 + Fraction(1, 2048),
                                                                    "float16")] == [4.0, 3.0]


# --- grad modes, detach, retain_graph -------------------------------------------------------

def test_no_grad_builds_no_graph():
    x = T([1.0, 2.0], requires_grad=True)
    assert mpgrad.is_grad_enabled()
    with mpgrad.no_grad():
        assert not mpgrad.is_grad_enabled()
        y = mpgrad.exp(x * 2.0).sum()
        z = x.to("float16")
    assert mpgrad.is_grad_enabled()
    for t in (y, z):
        assert not t.requires_grad and t.is_leaf
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_enable_grad_inside_no_grad():
    x = T([1.0, 2.0], requires_grad=True)
    with mpgrad.no_grad():
        with mpgrad.enable_grad():
            assert mpgrad.is_grad_enabled()
            y = (x * x).sum()
        assert not mpgrad.is_grad_enabled()
    assert y.requires_grad
    y.backward()
    assert values(x.grad) == [2.0, 4.0]


def test_grad_mode_restored_after_an_exception():
    with pytest.raises(KeyError):
        with mpgrad.no_grad():
            raise KeyError
    assert mpgrad.is_grad_enabled()


def test_detach_cuts_the_graph():
    x = T([3.0], requires_grad=True)
    (x * x.detach()).sum().backward()
    assert values(x.grad) == [3.0]  # not 2x
    d = (x * 2.0).detach()
    assert not d.requires_grad and d.is_leaf and values(d) == [6.0]


def test_retain_graph_allows_a_second_backward():
    x = T([1.5], requires_grad=True)
    y = (mpgrad.exp(x) * x).sum()
    y.backward(retain_graph=True)
    first = values(x.grad)
    y.backward()
    assert values(x.grad) == [2 * first[0]]  # accumulated: exact doubling in float64
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()


def test_backward_with_an_explicit_gradient():
    x = T([1.0, 2.0], requires_grad=True)
    y = x * 3.0
    y.backward(T([1.0, 10.0]))
    assert values(x.grad) == [3.0, 30.0]
    x.grad = None
    (x * 3.0).backward(np.array([2.0, 0.5]))  # an array is taken in y's format
    assert values(x.grad) == [6.0, 1.5]


# --- error paths: each message says what to do ----------------------------------------------

def test_error_backward_twice_without_retain_graph():
    x = T([1.0], requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.backward()


def test_error_backward_on_non_scalar_without_grad():
    x = T([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="grad=") as info:
        (x * 2.0).backward()
    assert "(2,)" in str(info.value)


def test_error_backward_on_tensor_not_requiring_grad():
    with pytest.raises(RuntimeError, match="requires_grad=True"):
        (T([1.0]) * 2.0).sum().backward()


def test_error_grad_of_the_wrong_shape():
    x = T([1.0, 2.0], requires_grad=True)
    with pytest.raises(ValueError, match=r"grad has shape \(3,\).*shape \(2,\)"):
        (x * 2.0).backward(T([1.0, 1.0, 1.0]))


def test_error_wrong_format_name():
    with pytest.raises(ValueError, match="valid names") as info:
        T([1.0]).to("float12")
    assert "float16" in str(info.value) and "bf16" in str(info.value)


@pytest.mark.parametrize("op", [mpgrad.add, mpgrad.sub, mpgrad.mul, mpgrad.div,
                                mpgrad.maximum])
def test_error_shape_mismatch_in_binary_op(op):
    a, b = T(np.ones(3), requires_grad=True), T(np.ones(4))
    with pytest.raises(ValueError) as info:
        op(a, b)
    message = str(info.value)
    assert "(3,)" in message and "(4,)" in message, message


def test_error_mixing_formats_under_strict_policy():
    policy = mpgrad.Policy.parse("c=f16", strict=True)
    with mpgrad.use_policy(policy):
        h = T([1.0], "float16")
        assert (h * 2.0).dtype == mpgrad.float16  # numbers are weak: allowed
        with pytest.raises(TypeError, match="cast") as info:
            T([1.0], "float32") + T([2.0], "float32")
        assert "float16" in str(info.value) and "float32" in str(info.value)
        with pytest.raises(TypeError, match="cast"):
            h * T([2.0], "float32")


def test_error_messages_of_other_misuse():
    with pytest.raises(ValueError, match="one element"):
        T([1.0, 2.0]).item()
    with pytest.raises(TypeError, match="scalar exponent"):
        T([2.0], requires_grad=True) ** T([2.0])
    with pytest.raises(TypeError, match="scalar exponent"):
        mpgrad.pow(T([2.0]), np.array([2.0, 3.0]))
    with pytest.raises(TypeError, match="boolean"):
        mpgrad.where(np.array([1.0, 0.0]), T([1.0, 2.0]), T([3.0, 4.0]))
    with pytest.raises(RuntimeError, match="detach"):
        (T([1.0], requires_grad=True) * 2.0).requires_grad_(False)


# --- policies and autocast ------------------------------------------------------------------

def test_promotion_without_policy():
    assert mpgrad.promote(mpgrad.float16, mpgrad.bfloat16) == mpgrad.float32
    h = T([1 + 2**-10], "float16", requires_grad=True)
    b = T([2**-8 + 2**-15], "bfloat16", requires_grad=True)
    y = h + b
    # both exact in float32: 1 + 2**-8 + 2**-10 + 2**-15
    assert y.dtype == mpgrad.float32 and values(y) == [1 + 2**-8 + 2**-10 + 2**-15]
    (y * T([1 + 2**-9], "float32")).sum().backward()
    # d/dh = d/db = 1 + 2**-9, rounded to each input's format: float16 keeps it; in bfloat16
    # (ulp 2**-7 at 1) 2**-9 is a quarter ulp, below the midpoint -> 1.0
    assert h.grad.dtype == mpgrad.float16 and values(h.grad) == [1 + 2**-9]
    assert b.grad.dtype == mpgrad.bfloat16 and values(b.grad) == [1.0]


def test_autocast_float32_ops_and_promotion():
    h = T([1.0, 3.0], "float16", requires_grad=True)
    with mpgrad.autocast("float16"):
        e, lg = mpgrad.exp(h), mpgrad.log(h)
        s, m = mpgrad.sum(T([2048.0, 1.0], "float16")), T([1.0, 2.0, 2.0], "float16").mean()
        assert e.dtype == lg.dtype == s.dtype == m.dtype == mpgrad.float32
        # float32 results: 2049 exactly (in float16 it would tie to 2048); 5/3 rounded once
        assert s.item() == 2049.0 and m.item() == mpfr_round(Fraction(5, 3), "float32")
        assert values(e) == [mpfr_function("exp", v, "float32") for v in (1.0, 3.0)]
        assert values(lg) == [0.0, mpfr_function("log", 3.0, "float32")]
        assert (h + h).dtype == mpgrad.float16 and (h * h).dtype == mpgrad.float16
        assert (h * T([1.0, 1.0], "float32")).dtype == mpgrad.float32
        assert (h + T([1.0, 1.0], "bfloat16")).dtype == mpgrad.float32
        loss = (e + lg).sum()
        loss.backward()
    assert mpgrad.sum(T([2048.0, 1.0], "float16")).dtype == mpgrad.float16  # block ended
    # d/dh = exp(h) + 1/h. Each op cast h to float32 on its own (two recorded casts), so each
    # float32 VJP (g * out, g / x) is rounded to float16 at its cast, and the two float16
    # gradients are then added with one rounding in float16. For h = 3: 20.078125 +
    # 0.333251953125 = 20.411376953125 -> 20.40625 (rounding the float32 sum instead: 20.421875)
    assert h.grad.dtype == mpgrad.float16

    def f16(v):
        return Fraction(mpfr_round(v, "float16"))
    expected = [mpfr_round(f16(mpfr_function("exp", v, "float32"))
                           + f16(mpfr_round(Fraction(1) / Fraction(v), "float32")), "float16")
                for v in (1.0, 3.0)]
    assert expected[1] == 20.40625
    assert values(h.grad) == expected


def test_autocast_gradient_sum_reaches_float16_leaf():
    h = T([2048.0, 1.0], "float16", requires_grad=True)
    with mpgrad.autocast("float16"):
        y = (h * T([1.0, 2**-12], "float16")).sum()  # mul in float16, sum in float32
    assert y.dtype == mpgrad.float32
    y.backward()
    assert h.grad.dtype == mpgrad.float16 and values(h.grad) == [1.0, 2**-12]


def test_policy_computes_in_its_compute_format():
    x = T([1 + 2**-9, 3.0], "float32", requires_grad=True)
    w = T([1 + 2**-8 + 2**-20, 0.1], "float32", requires_grad=True)
    with mpgrad.use_policy("p=f32,c=bf16,o=f32"):
        y = x * w
        assert y.dtype == mpgrad.bfloat16
        assert mpgrad.exp(x).dtype == mpgrad.bfloat16
    # inputs rounded to bfloat16 (nearest even) first, then the product rounded once
    xb = [mpfr_round(v, "bfloat16") for v in values(x)]
    wb = [mpfr_round(v, "bfloat16") for v in values(w)]
    assert xb[0] == 1.0 and wb[0] == 1 + 2**-7
    assert values(y) == [mpfr_round(Fraction(a) * Fraction(b), "bfloat16")
                         for a, b in zip(xb, wb)]
    y.sum().backward()
    # the bfloat16 VJPs g * w and g * x reach the float32 leaves, widened exactly
    assert x.grad.dtype == w.grad.dtype == mpgrad.float32
    assert values(x.grad) == wb and values(w.grad) == xb


def test_backward_inside_policy_block_keeps_leaf_formats():
    # The contract: gradients are rounded to each input's format and accumulated into .grad
    # in the leaf's format, whatever policy is active when backward() runs.
    x = T([1 + 2**-9, 3.0], "float32", requires_grad=True)
    with mpgrad.use_policy("p=f32,c=bf16,o=f32"):
        (x * x).sum().backward()  # two contributions of xb each, added in float32
        assert x.grad.dtype == mpgrad.float32 and values(x.grad) == [2.0, 6.0]
        (x * 3.0).sum().backward()
    assert x.grad.dtype == mpgrad.float32 and values(x.grad) == [5.0, 9.0]


def test_autocast_keeps_float64_and_can_be_disabled():
    d = T([1.0], "float64")
    with mpgrad.autocast("float16"):
        assert mpgrad.exp(d).dtype == mpgrad.float64  # float32 ops: float64 stays float64
    x = T([1.0], "float32")
    with mpgrad.use_policy("c=bf16"):
        assert (x * x).dtype == mpgrad.bfloat16
        with mpgrad.autocast(enabled=False):  # turns the outer policy off
            assert (x * x).dtype == mpgrad.float32
        assert (x * x).dtype == mpgrad.bfloat16


def test_policy_parse():
    p = mpgrad.Policy.parse("p=f32,c=bf16,o=f32")
    assert (p.param, p.compute, p.output) == (mpgrad.float32, mpgrad.bfloat16, mpgrad.float32)
    assert not p.strict and mpgrad.Policy.parse("c=f16", strict=True).strict
    assert mpgrad.Policy.parse("params=float16, compute=float16").compute == mpgrad.float16
    assert str(p) == "p=float32,c=bfloat16,o=float32"


@pytest.mark.parametrize("spec, fragment", [
    ("x=f16", "expected p=, c= or o="), ("c", "unknown format"),
    ("c=f17", "valid names"), ("p=f32;c=f16", "valid names"),
])
def test_policy_parse_errors(spec, fragment):
    with pytest.raises(ValueError, match=fragment):
        mpgrad.Policy.parse(spec)
    with pytest.raises(ValueError, match=fragment):
        with mpgrad.use_policy(spec):
            pass


# --- the same gradients from PyTorch CPU, where installed -----------------------------------

def test_gradient_formats_and_rounding_match_pytorch():
    torch = pytest.importorskip("torch")
    dt = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}

    def pair(v, fmt, requires_grad=True):
        return (T(v, fmt, requires_grad=requires_grad),
                torch.tensor(np.asarray(v, np.float64), dtype=dt[fmt],
                             requires_grad=requires_grad))

    def same(m, t):
        assert m.dtype.name == str(t.dtype).removeprefix("torch.")
        assert values(m) == t.detach().double().numpy().tolist()

    # .grad accumulation over three backward calls, float16 leaf
    xm, xt = pair(np.ones(6), "float16")
    for g in (G1, G2, G3):
        (xm * T(g, "float16")).sum().backward()
        (xt * torch.tensor(g, dtype=torch.float16)).sum().backward()
        same(xm.grad, xt.grad)
    # narrower input times float32, with broadcasting; float16 + bfloat16
    cases = [(("bfloat16", [[1.0], [-3.0]]), ("float32", [[1 + 2**-8 + 2**-20, 0.1, 2**-30]])),
             (("float16", [[1.0], [2.0]]), ("float32", [[1.0, 2**-11, 2**-30, 0.0]])),
             (("float16", [1 + 2**-10, 3.0]), ("bfloat16", [2**-8 + 2**-15, 0.1]))]
    for (fa, va), (fb, vb) in cases:
        (am, at), (bm, bt) = pair(va, fa), pair(vb, fb)
        ym, yt = am * bm, at * bt
        same(ym, yt)
        (ym * T(0.7, "float32")).sum().backward()
        (yt * torch.tensor(0.7, dtype=torch.float32)).sum().backward()
        same(am.grad, at.grad)
        same(bm.grad, bt.grad)
