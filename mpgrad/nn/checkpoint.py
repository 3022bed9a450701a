"""Checkpoints: a model's parameters as bit-exact .npz files (no pickle)."""

from __future__ import annotations

import os
import zipfile
from collections import OrderedDict

import numpy as np

from ..autodiff.tensor import Tensor
from ..numerics.bits import from_bits, to_bits
from ..numerics.formats import FORMATS, Format

__all__ = ["save", "load", "CHECKPOINT_VERSION"]

CHECKPOINT_VERSION = "mpgrad.nn checkpoint v1"  # the marker entry of every file save writes


# --- files ----------------------------------------------------------------------------------
# An .npz archive (no pickle) with
#   __mpgrad_nn__  the string CHECKPOINT_VERSION
#   __names__      the parameter names, in order (a unicode array)
#   __formats__    each parameter's format name
#   __layouts__    each format's layout "exponent_bits,fraction_bits,bias,nan,subnormals"
#   p0, p1, ...    each parameter's bit patterns, unsigned integers of the format's width
# so every format, custom ones included, round-trips bit for bit.

def _layout(fmt: Format) -> str:
    return ",".join(str(v) for v in (*fmt.layout[:4], int(fmt.layout[4])))


def _format_from(name: str, layout: str) -> Format:
    """The format saved under name with that layout (a built-in one, or a custom format)."""
    if name in FORMATS and _layout(FORMATS[name]) == layout:
        return FORMATS[name]
    try:
        e, m, bias, nan, subnormals = layout.split(",")
        return Format.custom(int(e), int(m), bias=int(bias), nan=nan,
                             subnormals=bool(int(subnormals)), name=name)
    except (ValueError, TypeError) as error:
        raise ValueError(f"format {name!r} with layout {layout!r}: {error}") from None


def save(module_or_state, path: str | os.PathLike) -> None:
    """Write a module's (or a state dict's) parameters bit for bit to the .npz file path."""
    state = (module_or_state.state_dict() if hasattr(module_or_state, "state_dict")
             else module_or_state)
    names, entries = list(state), {}
    for i, name in enumerate(names):
        t = state[name]
        if not isinstance(t, Tensor):
            raise TypeError(f"save: {name!r} is a {type(t).__name__}, not an mpgrad Tensor")
        entries[f"p{i}"] = to_bits(t.data, t.dtype)
    formats = [state[n].dtype for n in names]
    path = os.fspath(path)
    partial = path + ".partial"
    try:  # a complete file or none: written aside, then renamed
        with open(partial, "wb") as out:
            np.savez(out, __mpgrad_nn__=np.array(CHECKPOINT_VERSION),
                     __names__=np.array(names, dtype=str),
                     __formats__=np.array([f.name for f in formats], dtype=str),
                     __layouts__=np.array([_layout(f) for f in formats], dtype=str), **entries)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _read(path: str) -> dict[str, np.ndarray]:
    """Every entry of the .npz file, read without pickle."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no mpgrad.nn checkpoint at {path!r}: file not found")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):  # a .npy file: one array
            raise ValueError("it holds one array, not an .npz archive")
        with archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path!r} is not an mpgrad.nn checkpoint (an .npz file written by "
                         f"mpgrad.nn.save): {error}") from None


def load(path: str | os.PathLike) -> OrderedDict[str, Tensor]:
    """The state dict saved in an .npz file by save, checked in full (no pickle)."""
    path = os.fspath(path)
    entries = _read(path)

    def bad(why: str) -> ValueError:
        return ValueError(f"{path!r} is not a valid mpgrad.nn checkpoint: {why}")

    marker = entries.get("__mpgrad_nn__")
    if marker is None or marker.shape != () or str(marker) != CHECKPOINT_VERSION:
        raise bad(f"no {CHECKPOINT_VERSION!r} marker")
    columns = [entries.get(k) for k in ("__names__", "__formats__", "__layouts__")]
    if any(c is None or c.ndim != 1 or c.dtype.kind != "U" for c in columns) or len(
            {len(c) for c in columns}) != 1:
        raise bad("the __names__, __formats__ and __layouts__ entries are missing or differ")
    names, formats, layouts = ([str(v) for v in c] for c in columns)
    if len(set(names)) != len(names):
        raise bad("a parameter name appears twice")
    expected = {f"p{i}" for i in range(len(names))} | {
        "__mpgrad_nn__", "__names__", "__formats__", "__layouts__"}
    if set(entries) != expected:
        extra, absent = sorted(set(entries) - expected), sorted(expected - set(entries))
        raise bad(f"entries {extra} not expected, {absent} absent")
    state = OrderedDict()
    for i, (name, fname, layout) in enumerate(zip(names, formats, layouts)):
        try:
            fmt = _format_from(fname, layout)
        except ValueError as error:
            raise bad(f"{name}: {error}") from None
        bits = entries[f"p{i}"]
        width = next(w for w in (1, 2, 4, 8) if fmt.bits <= 8 * w)
        if bits.dtype != np.dtype(f"u{width}"):
            raise bad(f"{name}: bits of dtype {bits.dtype}, expected uint{8 * width} for "
                      f"{fmt.name}")
        try:
            state[name] = Tensor._wrap(from_bits(bits, fmt), fmt)
        except ValueError as error:
            raise bad(f"{name}: {error}") from None
    return state
