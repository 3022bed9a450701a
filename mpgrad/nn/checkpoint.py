"""Checkpoints: state trees (model, optimizer, scaler, step, RNG state) as bit-exact .npz files,
without pickle."""

from __future__ import annotations

import json
import os
import struct
import zipfile
from typing import Any, Callable

import numpy as np

from ..autodiff.tensor import Tensor
from ..numerics.bits import from_bits, to_bits
from ..numerics.files import atomic_write
from ..numerics.formats import FORMATS, Format

__all__ = ["save", "load", "CHECKPOINT_VERSION"]

CHECKPOINT_VERSION = "mpgrad.nn checkpoint v2"  # the marker entry of every file save writes


# --- files ----------------------------------------------------------------------------------
# An .npz archive (no pickle) with
#   __mpgrad_nn__  the string CHECKPOINT_VERSION
#   __tree__       the state tree as JSON text, every value a node:
#                    null, true, false, "text"        None, bool, str
#                    {"int": "-0x1f"}                 int (any size), in hex
#                    {"float": "0.1"}                 float: its repr (exact), or for a NaN
#                    {"float": "nan:7ff8000000000000"}   its 64 bits
#                    {"list": [nodes]}, {"tuple": [nodes]}
#                    {"dict": [[key node, value node], ...]}    keys str or int, in order
#                    {"tensor": [i, format name, "e,m,bias,nan,subnormals"]}
#   t0, t1, ...    tensor i's bit patterns, unsigned integers of its format's width
# so every format, custom ones included, round-trips bit for bit.

ALLOWED = "dict, list, tuple, None, bool, int, float, str or an mpgrad Tensor"


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


def _float_text(x: float) -> str:
    """repr(x), exact for every float but NaN; a NaN as its 64 bits (sign and payload kept)."""
    return f"nan:{struct.pack('>d', x).hex()}" if x != x else repr(x)


def _encode(obj: Any, path: str, bits: list[np.ndarray]) -> Any:
    """obj as a JSON node; each tensor's bit patterns are appended to bits."""
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
        obj = obj.item()  # a NumPy scalar: the Python bool, int or float of its value
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return {"int": hex(obj)}
    if isinstance(obj, float):
        return {"float": _float_text(obj)}
    if isinstance(obj, Tensor):
        bits.append(to_bits(obj.data, obj.dtype))
        return {"tensor": [len(bits) - 1, obj.dtype.name, _layout(obj.dtype)]}
    if type(obj) in (list, tuple):
        return {type(obj).__name__: [_encode(v, f"{path}[{i}]", bits) for i, v in enumerate(obj)]}
    if isinstance(obj, dict):
        for key in obj:
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise TypeError(f"save: {path} has the key {key!r}, a {type(key).__name__}: "
                                f"keys must be str or int")
        return {"dict": [[_encode(k, path, bits), _encode(v, f"{path}[{k!r}]", bits)]
                         for k, v in obj.items()]}
    raise TypeError(f"save: {path}: a {type(obj).__name__}, which a checkpoint cannot hold "
                    f"(it holds {ALLOWED})")


def save(obj: Any, path: str | os.PathLike) -> None:
    """Write a state tree bit for bit to the .npz file path (a module or anything with
    state_dict(): its state_dict()); atomically, under exactly that name."""
    tree = obj.state_dict() if hasattr(obj, "state_dict") else obj
    bits: list[np.ndarray] = []
    text = json.dumps(_encode(tree, "state", bits), allow_nan=False)
    entries = {f"t{i}": b for i, b in enumerate(bits)}
    atomic_write(path, lambda out: np.savez(out, __mpgrad_nn__=np.array(CHECKPOINT_VERSION),
                                            __tree__=np.array(text), **entries))


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


class _Decoder:
    """The tree of a checkpoint's JSON nodes and bit entries, every node checked."""

    def __init__(self, entries: dict[str, np.ndarray], bad: Callable[[str], ValueError]) -> None:
        self.entries, self.bad, self.used = entries, bad, set()

    def value(self, node: Any, path: str) -> Any:
        if node is None or isinstance(node, (bool, str)):
            return node
        if not isinstance(node, tuple):  # a JSON object is a (kind, payload) pair, see load
            raise self.bad(f"{path}: {node!r} is not a node")
        kind, payload = node
        if kind == "int" and isinstance(payload, str):
            try:
                value = int(payload, 16)
            except ValueError:
                value = None
            if value is not None and hex(value) == payload:
                return value
        elif kind == "float" and isinstance(payload, str):
            try:
                value = (struct.unpack(">d", bytes.fromhex(payload[4:]))[0]
                         if payload.startswith("nan:") else float(payload))
            except (ValueError, struct.error):
                value = None
            if value is not None and _float_text(value) == payload:
                return value
        elif kind in ("list", "tuple") and isinstance(payload, list):
            items = [self.value(v, f"{path}[{i}]") for i, v in enumerate(payload)]
            return items if kind == "list" else tuple(items)
        elif kind == "dict" and isinstance(payload, list):
            return self.dict(payload, path)
        elif kind == "tensor" and isinstance(payload, list) and len(payload) == 3:
            return self.tensor(*payload, path)
        raise self.bad(f"{path}: {{{kind!r}: {payload!r}}} is not a node")

    def dict(self, pairs: list, path: str) -> dict:
        out: dict = {}
        for pair in pairs:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise self.bad(f"{path}: {pair!r} is not a [key, value] pair")
            key = self.value(pair[0], path)
            if isinstance(key, bool) or not isinstance(key, (str, int)) or key in out:
                raise self.bad(f"{path}: the key {key!r} is not a str or int, or appears twice")
            out[key] = self.value(pair[1], f"{path}[{key!r}]")
        return out

    def tensor(self, index: Any, name: Any, layout: Any, path: str) -> Tensor:
        if (isinstance(index, bool) or not isinstance(index, int) or index in self.used
                or f"t{index}" not in self.entries):
            raise self.bad(f"{path}: tensor entry t{index} is absent or used twice")
        if not (isinstance(name, str) and isinstance(layout, str)):
            raise self.bad(f"{path}: a tensor's format and layout must be strings")
        self.used.add(index)
        try:
            fmt = _format_from(name, layout)
        except ValueError as error:
            raise self.bad(f"{path}: {error}") from None
        bits = self.entries[f"t{index}"]
        width = next(w for w in (1, 2, 4, 8) if fmt.bits <= 8 * w)
        if bits.dtype != np.dtype(f"u{width}"):
            raise self.bad(f"{path}: bits of dtype {bits.dtype}, expected uint{8 * width} for "
                           f"{fmt.name}")
        try:
            return Tensor._wrap(from_bits(bits, fmt), fmt)
        except ValueError as error:
            raise self.bad(f"{path}: {error}") from None


def _object(pairs: list) -> tuple:
    """A JSON object as its (kind, payload) pair (one that is no node: an invalid kind)."""
    return pairs[0] if len(pairs) == 1 else ("", dict(pairs))


def load(path: str | os.PathLike) -> Any:
    """The state tree saved in an .npz file by save, checked in full (no pickle); a module's
    state dict loads as the dict Module.load_state_dict takes."""
    path = os.fspath(path)
    entries = _read(path)

    def bad(why: str) -> ValueError:
        return ValueError(f"{path!r} is not a valid mpgrad.nn checkpoint: {why}")

    marker, text = entries.pop("__mpgrad_nn__", None), entries.pop("__tree__", None)
    if marker is None or marker.shape != () or str(marker) != CHECKPOINT_VERSION:
        raise bad(f"no {CHECKPOINT_VERSION!r} marker")
    if text is None or text.shape != () or text.dtype.kind != "U":
        raise bad("no __tree__ entry (the state tree as JSON text)")
    try:
        node = json.loads(str(text), object_pairs_hook=_object, parse_constant=_constant)
    except ValueError as error:
        raise bad(f"__tree__ is not JSON: {error}") from None
    decoder = _Decoder(entries, bad)
    tree = decoder.value(node, "state")
    unused = sorted(set(entries) - {f"t{i}" for i in decoder.used})
    if unused:
        raise bad(f"entries {unused} not expected")
    return tree


def _constant(name: str) -> None:
    raise ValueError(f"{name} is no JSON value")
