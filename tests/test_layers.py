"""The package's layering: imports only go down the layers, no module takes another's private
names, and no import hides inside a function (except of optional extras)."""

from pathlib import Path

import pytest

from import_graph import imports, report

ROOT = Path(__file__).resolve().parents[1] / "mpgrad"
# Each layer may import the layers before it; nn, optim and amp share a rank but not code.
LAYERS = ["numerics", "accumulate", "autodiff", "ops", ("nn", "optim", "amp"), "diagnostics",
          "testing", "demo"]


def _rank(module: str) -> tuple[int, str]:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return len(LAYERS), ""  # mpgrad itself and python -m mpgrad: above every layer
    for rank, layer in enumerate(LAYERS):
        if parts[1] in (layer if isinstance(layer, tuple) else (layer,)):
            return rank, parts[1]
    raise AssertionError(f"{module} belongs to no layer")


def test_every_import_goes_down_the_layers():
    wrong = []
    for src, dst, _, _ in imports(ROOT):
        if dst.split(".")[0] != "mpgrad":
            continue
        (r_src, pkg_src), (r_dst, pkg_dst) = _rank(src), _rank(dst)
        if not (r_dst < r_src or pkg_src == pkg_dst):
            wrong.append(f"{src} -> {dst}")
    assert not wrong, wrong


@pytest.mark.parametrize("what", ["cycles", "private", "in_function"])
def test_no_cycles_private_names_or_hidden_imports(what):
    assert report(ROOT)[what] == []


def test_the_checker_sees_what_it_checks(tmp_path):
    """A planted cycle, private import and in-function import are each found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import _hidden\n")
    (pkg / "b.py").write_text("def f():\n    from .a import g\n")
    found = report(pkg)
    assert found["cycles"] == [["pkg.a", "pkg.b"]]
    assert found["private"] == [("pkg.a", "pkg.b", "_hidden")]
    assert found["in_function"] == [("pkg.b", "pkg.a")]
