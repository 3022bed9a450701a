"""mpgrad.numerics.files: output paths checked up front, files written whole or not at all."""

import os
import stat

import pytest

from mpgrad.numerics.files import atomic_write, output_path


def test_output_path_refusals(tmp_path):
    (tmp_path / "a_file").write_text("x")
    cases = {str(tmp_path): "is a directory", "": "empty",
             str(tmp_path / "missing" / "run.npz"): "does not exist",
             str(tmp_path / "a_file" / "run.npz"): "is a file, not a folder"}
    for path, why in cases.items():
        with pytest.raises(ValueError, match=why):
            output_path(path)
    with pytest.raises(ValueError, match="must end in .png or .svg"):
        output_path(tmp_path / "plot.jpg", suffixes=(".png", ".svg"))
    assert output_path(tmp_path / "PLOT.SVG", suffixes=(".png", ".svg")).endswith("PLOT.SVG")
    with pytest.raises(ValueError, match="exists"):
        output_path(tmp_path / "a_file", overwrite=False)
    assert output_path(tmp_path / "a_file") == str(tmp_path / "a_file")


def test_atomic_write_writes_the_path_given_with_normal_permissions(tmp_path):
    target = tmp_path / "run"
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["run"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~mask
    os.chmod(target, 0o640)
    atomic_write(target, lambda f: f.write(b"newer"))
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640 and target.read_bytes() == b"newer"


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError, ValueError])
def test_an_interrupted_write_leaves_the_old_file(tmp_path, error):
    target = tmp_path / "run.npz"
    target.write_bytes(b"old")

    def write(f):
        f.write(b"half")
        raise error("interrupted")
    with pytest.raises(error):
        atomic_write(target, write)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["run.npz"]
