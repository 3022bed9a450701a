"""The mpgrad pytest plugin, loaded through the pytest11 entry point: the `mpgrad_golden`
fixture checks a computation against its golden file; `pytest --mpgrad-record` records it.

This module lies outside the mpgrad package and imports mpgrad only when a test calls the
fixture: importing mpgrad takes over a second, and pytest loads this plugin in every session
of everyone who has mpgrad installed. Disable it with `pytest -p no:mpgrad`.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

import pytest

if TYPE_CHECKING:
    from mpgrad import Policy

__all__ = ["GoldenFixture", "golden_name", "mpgrad_golden"]

_CLAIMED = pytest.StashKey[dict]()  # golden file -> the node id of the test that uses it
_RECORDED = "mpgrad_recorded"  # the user property (key, path) of each golden file written


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mpgrad", "mpgrad golden files (the mpgrad_golden fixture)")
    group.addoption("--mpgrad-record", action="store_true",
                    help="record (overwrite) the golden files of the tests that use "
                         "mpgrad_golden, instead of checking against them")
    group.addoption("--mpgrad-golden-dir", metavar="DIR",
                    help="keep golden files under DIR, in folders mirroring the test files' "
                         "paths from the rootdir (default: a goldens/ folder beside each "
                         "test file)")


def pytest_report_header(config: pytest.Config) -> list[str]:
    folder = config.getoption("mpgrad_golden_dir")
    return (["mpgrad: recording golden files (--mpgrad-record)"]
            if config.getoption("mpgrad_record") else []) + (
            [f"mpgrad: golden files under {folder}"] if folder else [])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # from the teardown reports, which pytest-xdist also sends to the controller
    paths = [value for reports in terminalreporter.stats.values() for report in reports
             if getattr(report, "when", None) == "teardown"
             for key, value in getattr(report, "user_properties", ()) if key == _RECORDED]
    if paths:
        terminalreporter.write_sep("-", f"mpgrad: {len(paths)} golden file"
                                        f"{'s' if len(paths) > 1 else ''} recorded")
        for path in paths:
            terminalreporter.write_line(f"recorded {path}")


def golden_name(test: str, name: str | None = None) -> str:
    """The file name of a test's golden file: the test's node id within its module
    ('TestA::test_b[x-1]') and the name, each with runs of characters other than ASCII
    letters, digits, '_', '.' and '-' replaced by '_', joined by '.'; a long one is cut and
    given a hash of the whole ('TestA.test_b_x-1.name.safetensors')."""
    parts = [test.replace("::", ".")] + ([] if name is None else [name])
    safe = ".".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", p).strip("_.") or "_" for p in parts)
    if len(safe) > 120:  # file names have at most 255 bytes
        safe = safe[:100] + "-" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    return safe + ".safetensors"


class GoldenFixture:
    """mpgrad_golden(fn, inputs, ...): check fn against the test's golden file, or record it
    under --mpgrad-record."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request
        self._paths: set[Path] = set()

    @property
    def recording(self) -> bool:
        """Whether this session records golden files (--mpgrad-record) instead of checking."""
        return bool(self._request.config.getoption("mpgrad_record"))

    def path(self, name: str | None = None) -> Path:
        """The golden file of this test (and name)."""
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"mpgrad_golden: name must be a non-empty string or None, not "
                            f"{name!r}")
        config, node = self._request.config, self._request.node
        test_file = Path(node.path)
        folder = config.getoption("mpgrad_golden_dir")
        if folder is None:
            base = test_file.parent / "goldens" / test_file.stem
        else:
            try:
                inside = test_file.relative_to(config.rootpath).with_suffix("")
            except ValueError:
                raise ValueError(f"--mpgrad-golden-dir: the test file {test_file} is outside "
                                 f"pytest's rootdir {config.rootpath}, so it has no place "
                                 "under that folder") from None
            base = Path(config.invocation_params.dir, folder) / inside
        return base / golden_name(node.nodeid.split("::", 1)[-1], name)

    def _claim(self, path: Path) -> None:
        """Refuse a second use of path in this test, or its use by another test."""
        nodeid = self._request.node.nodeid
        if path in self._paths:
            raise ValueError(f"mpgrad_golden was called twice for {path.name} in {nodeid}: "
                             "give each call in a test its own name=")
        self._paths.add(path)
        owner = self._request.config.stash.setdefault(_CLAIMED, {}).setdefault(path, nodeid)
        if owner != nodeid:
            raise ValueError(f"{nodeid} and {owner} would share the golden file {path} "
                             "(their names differ only in characters a file name cannot "
                             "hold): give one of them mpgrad_golden(..., name=...)")

    def __call__(self, fn: Callable | str, inputs, *, policy: Policy | str | None = None,
                 grad: bool = False, tolerance: str = "bits", name: str | None = None,
                 op_args: Mapping | None = None) -> None:
        """Run fn(**inputs) or fn(*inputs) under policy (with grad=True also backward; fn
        may be an op's name with op_args: all as mpgrad.golden.record takes them) and check
        inputs, outputs and gradients against the golden file within tolerance (as
        mpgrad.golden.check takes it); with --mpgrad-record, write the golden file."""
        __tracebackhide__ = True
        from mpgrad.testing import golden  # here, not at the top: see the module docstring

        golden.parse_tolerance(tolerance)  # a wrong tolerance fails when recording too
        path = self.path(name)
        self._claim(path)
        nodeid = self._request.node.nodeid
        run = {"policy": policy, "grad": grad, "op_args": op_args,
               "name": nodeid + ("" if name is None else f" ({name})")}  # the description
        if self.recording:
            path.parent.mkdir(parents=True, exist_ok=True)
            golden.record(path, fn, inputs, **run)
            self._request.node.user_properties.append((_RECORDED, str(path)))
            return
        if not path.exists():
            pytest.fail(f"the golden file {path} does not exist: run `pytest --mpgrad-record` "
                        "to record it, then review and commit it")
        scratch = self._request.getfixturevalue("tmp_path_factory").mktemp("mpgrad")
        candidate = scratch / path.name
        golden.record(candidate, fn, inputs, **run)
        try:
            report = golden.check(path, candidate, tolerance=tolerance)
        except ValueError as err:  # a damaged file, or other tensors, formats or shapes
            pytest.fail(f"the golden file {path} does not fit this test: {err}\nIf the test "
                        "changed on purpose, re-record it with `pytest --mpgrad-record`")
        if not report.passed:
            from mpgrad.demo.cli import check_table

            changed = [r.name for r in report.rows if r.name.startswith("input.")
                       and not r.passed]
            raise AssertionError(
                check_table(report) + ("\nthe inputs differ from the recorded ones ("
                                       + ", ".join(changed) + "): the test's data changed"
                                       if changed else "")
                + f"\nthe candidate is saved as {candidate} (`mpgrad check GOLDEN CANDIDATE`"
                " compares them); if the change is intended, re-record with "
                "`pytest --mpgrad-record`")


@pytest.fixture
def mpgrad_golden(request: pytest.FixtureRequest) -> GoldenFixture:
    """Check a computation against this test's golden file (goldens/<module>/<test>
    .safetensors beside the test file); `pytest --mpgrad-record` records it."""
    return GoldenFixture(request)
