"""Test options: --runslow also runs the exhaustive tests marked slow."""

import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow exhaustive test: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def interrupted_savez():
    """A stand-in for np.savez that writes a few bytes and is then interrupted (Ctrl-C)."""
    def savez(file, *args, **kwds):
        out = open(file, "wb") if isinstance(file, (str, os.PathLike)) else file
        out.write(b"PK\x03\x04 half a file")
        out.flush()
        raise KeyboardInterrupt
    return savez
