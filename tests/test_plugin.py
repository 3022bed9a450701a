"""The pytest plugin (pytest_mpgrad, entry point pytest11 "mpgrad"): the mpgrad_golden
fixture fails without a golden file, records one with --mpgrad-record, then checks against
it; a changed computation fails with the per-tensor table. Each inner session is run by
pytester, without a conftest: the plugin comes from the entry point alone."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from importlib.metadata import entry_points

import numpy as np

from mpgrad import golden
from mpgrad.numerics.bits import to_bits
from pytest_mpgrad import golden_name

pytest_plugins = ["pytester"]  # (fnmatch_lines patterns: "[[]" is a literal "[")

# float16 1 + 2**-11 + 2**-11: summed left to right each addition is a tie that rounds to 1
# (0x3c00); the exact sum 1 + 2**-10 (0x3c01) is a float16 number, one ulp above.
SUM = """
import mpgrad
from mpgrad import Policy
from mpgrad.accumulate import Exact, Sequential

def test_sum(mpgrad_golden):
    x = mpgrad.tensor([1.0, {small}, 2.0 ** -11], "float16")
    policy = Policy("float16", "float16", "float16", accumulate={model}(mpgrad.float16))
    mpgrad_golden(mpgrad.sum, [x], policy=policy, tolerance="{tolerance}")
"""


def sum_test(small="2.0 ** -11", model="Sequential", tolerance="bits") -> str:
    return SUM.format(small=small, model=model, tolerance=tolerance)


def run(pytester, *args: str):
    """An inner pytest session in this process, without hypothesis's plugin (which pytest
    would import and assertion-rewrite again each time)."""
    return pytester.runpytest_inprocess("-p", "no:hypothesispytest", *args)


def float16_bits(value) -> int:
    return int(np.float16(value).view(np.uint16))


def test_the_entry_point_names_the_plugin():
    found = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert found.get("mpgrad") == "pytest_mpgrad"


def test_loading_the_plugin_imports_neither_mpgrad_nor_torch():
    code = ("import sys, pytest_mpgrad; print(sorted({m.split('.')[0] for m in sys.modules}"
            " & {'mpgrad', 'torch', 'numpy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"


def test_missing_record_pass_then_a_changed_model_fails_with_the_table(pytester):
    pytester.makepyfile(test_k=sum_test())
    path = pytester.path / "goldens" / "test_k" / "test_sum.safetensors"

    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*the golden file {path} does not exist: run `pytest "
                                 "--mpgrad-record`*"])
    assert not path.exists()

    result = run(pytester, "--mpgrad-record")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*mpgrad: recording golden files (--mpgrad-record)*",
                                 "*mpgrad: 1 golden file recorded*", f"recorded {path}"])
    sequential = (np.float16(1) + np.float16(2.0 ** -11)) + np.float16(2.0 ** -11)
    recorded = golden.read(path)
    assert int(to_bits(recorded.tensors["output.0"].data, "float16")) == \
        float16_bits(sequential) == 0x3C00
    assert recorded.metadata["description"] == "test_k.py::test_sum"

    run(pytester).assert_outcomes(passed=1)

    pytester.makepyfile(test_k=sum_test(model="Exact"))
    exact = Fraction(1) + 2 * Fraction(2) ** -11
    assert Fraction(float(np.float16(exact))) == exact  # a float16 number: Exact gives it
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        f"E * golden {path}, tolerance bits", "E * tensor * result",
        "E * input.0 * float16 * 3 * 3 * 3 *ok", "E * output.0 * float16 * scalar * 1 * 0 * 0 *"
        "1 * 1:1 * FAIL", f"E * output.0[[]]: golden 1.0 (0x3c00), candidate {float(exact)!r} "
        f"(0x{float16_bits(float(exact)):04x}), 1 ulps", "E * FAIL",
        "E * the candidate is saved as *test_sum.safetensors*--mpgrad-record*"])
    assert "inputs differ" not in result.stdout.str()
    assert golden.read(path).tensors["output.0"].data == sequential  # checking writes nothing

    pytester.makepyfile(test_k=sum_test(model="Exact", tolerance="ulps=1"))
    run(pytester).assert_outcomes(passed=1)


def test_changed_inputs_are_named(pytester):
    pytester.makepyfile(test_k=sum_test())
    run(pytester, "--mpgrad-record").assert_outcomes(passed=1)
    pytester.makepyfile(test_k=sum_test(small="2.0 ** -10"))  # the sum: 1 + 2**-10 + 2**-11
    result = run(pytester)
    result.assert_outcomes(failed=1)
    now = (np.float16(1) + np.float16(2.0 ** -10)) + np.float16(2.0 ** -11)
    result.stdout.fnmatch_lines(["E * input.0 * 3 * 3 * 2 * 2 * 1024 * 0:2 513-1024:1 * FAIL",
                                 "E * input.0[[]1]: golden 0.00048828125 (0x1000), candidate "
                                 "0.0009765625 (0x1400), 1024 ulps",  # a binade: 2**10 ulps
                                 f"E * output.0[[]]: golden 1.0 (0x3c00), candidate {float(now)!r}"
                                 f" (0x{float16_bits(now):04x}), 2 ulps",
                                 "E * the inputs differ from the recorded ones (input.0): "
                                 "the test's data changed"])


def test_parametrized_tests_get_their_own_files(pytester):
    pytester.makepyfile(test_p="""
        import pytest
        import mpgrad

        @pytest.mark.parametrize("v", [0.5, 3.0, -2.0], ids=["a b", "x/y", "-2"])
        def test_p(mpgrad_golden, v):
            mpgrad_golden(mpgrad.neg, [mpgrad.tensor([v], "float32")])
            mpgrad_golden(mpgrad.neg, [mpgrad.tensor([2 * v], "float32")], name="twice")

        class TestC:
            def test_m(self, mpgrad_golden):
                mpgrad_golden(mpgrad.neg, [mpgrad.tensor([7.0], "float32")], name="first")
                mpgrad_golden(mpgrad.neg, [mpgrad.tensor([8.0], "float32")], name="second")
    """)
    run(pytester, "--mpgrad-record").assert_outcomes(passed=4)
    folder = pytester.path / "goldens" / "test_p"
    expected = {"test_p_a_b.safetensors": 0.5, "test_p_x_y.safetensors": 3.0,
                "test_p_-2.safetensors": -2.0, "test_p_a_b.twice.safetensors": 1.0,
                "test_p_x_y.twice.safetensors": 6.0, "test_p_-2.twice.safetensors": -4.0,
                "TestC.test_m.first.safetensors": 7.0, "TestC.test_m.second.safetensors": 8.0}
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected)
    for file, v in expected.items():
        tensors = golden.read(folder / file).tensors
        assert float(tensors["input.0"].data[0]) == v
        assert float(tensors["output.0"].data[0]) == -v
    run(pytester).assert_outcomes(passed=4)


def test_an_op_by_name_with_its_arguments(pytester):
    pytester.makepyfile(test_o="""
        import mpgrad

        def test_o(mpgrad_golden):
            x = mpgrad.tensor([[1.0, 2.0], [3.0, 4.0]], "float32")
            mpgrad_golden("sum", [x], op_args={"axis": 0})
    """)
    run(pytester, "--mpgrad-record").assert_outcomes(passed=1)
    recorded = golden.read(pytester.path / "goldens" / "test_o" / "test_o.safetensors")
    assert recorded.metadata["op"] == "sum" and recorded.metadata["op_args"] == '{"axis": 0}'
    assert recorded.tensors["output.0"].data.tolist() == [1.0 + 3.0, 2.0 + 4.0]
    run(pytester).assert_outcomes(passed=1)
    pytester.makepyfile(test_o=pytester.path.joinpath("test_o.py").read_text().replace(
        '"axis": 0', '"axis": 1'))
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E * output.0[[]0]: golden 4.0 (0x40800000), candidate 3.0 "
                                 "(0x40400000), *ulps"])


def test_names_that_collide_are_refused(pytester):
    pytester.makepyfile(test_c="""
        import pytest
        import mpgrad

        @pytest.mark.parametrize("v", [1.0, 2.0], ids=["a b", "a_b"])
        def test_c(mpgrad_golden, v):
            mpgrad_golden(mpgrad.neg, [mpgrad.tensor([v], "float32")])

        def test_twice(mpgrad_golden):
            mpgrad_golden(mpgrad.neg, [mpgrad.tensor([1.0], "float32")])
            mpgrad_golden(mpgrad.neg, [mpgrad.tensor([2.0], "float32")])
    """)
    result = run(pytester, "--mpgrad-record")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*ValueError: test_c.py::test_c[[]a_b] and "
                                 "test_c.py::test_c[[]a b] would share the golden file*"
                                 "give one of them*name=*",
                                 "*ValueError: mpgrad_golden was called twice for "
                                 "test_twice.safetensors in test_c.py::test_twice*"])


def test_a_golden_file_that_does_not_fit_fails_with_a_hint(pytester):
    pytester.makepyfile(test_k=sum_test())
    run(pytester, "--mpgrad-record").assert_outcomes(passed=1)
    pytester.makepyfile(test_k=sum_test().replace('"float16")', '"float16")[:2]'))
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the golden file * does not fit this test: input.0: the "
                                 "candidate is float16 [[]2], the golden tensor float16 [[]3]",
                                 "*re-record it with `pytest --mpgrad-record`*"])


def test_a_wrong_tolerance_fails_before_anything_is_written(pytester):
    pytester.makepyfile(test_k=sum_test(tolerance="ulp=1"))
    result = run(pytester, "--mpgrad-record")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ValueError: unknown tolerance 'ulp=1'*"])
    assert not (pytester.path / "goldens").exists()


def test_golden_dir_mirrors_the_test_files_paths(pytester):
    pytester.makepyfile(**{"sub/test_k": sum_test()})
    result = run(pytester, "--mpgrad-record", "--mpgrad-golden-dir", "store")
    result.assert_outcomes(passed=1)
    assert (pytester.path / "store" / "sub" / "test_k" / "test_sum.safetensors").is_file()
    assert not (pytester.path / "sub" / "goldens").exists()
    run(pytester, "--mpgrad-golden-dir", "store").assert_outcomes(passed=1)
    run(pytester).assert_outcomes(failed=1)  # not in the default place


def test_no_mpgrad_disables_the_plugin(pytester):
    pytester.makepyfile(test_k=sum_test())
    result = run(pytester, "-p", "no:mpgrad")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'mpgrad_golden' not found*"])
    assert "--mpgrad-record" not in run(pytester, "-p", "no:mpgrad",
                                                                 "--help").stdout.str()


def test_a_fresh_interpreter_finds_the_plugin_through_the_entry_point(pytester):
    pytester.makepyfile(test_k=sum_test())
    result = pytester.runpytest_subprocess("--mpgrad-record", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*plugins:*mpgrad*", "recorded *test_sum.safetensors"])


def test_long_names_are_cut_and_stay_distinct():
    a, b = (golden_name("test_x[" + "p" * 300 + c + "]") for c in "ab")
    assert a != b and len(a) <= 150 and len(b) <= 150
    assert a.startswith("test_x_ppp") and a.endswith(".safetensors")
