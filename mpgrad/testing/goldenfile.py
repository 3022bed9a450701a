"""The golden file format: tensors of any mpgrad format, bit for bit, in one safetensors file.

The file is safetensors (8-byte little-endian header length, a JSON header, raw little-endian
bytes), readable without mpgrad. A format safetensors names is stored under that name
(F64, F32, F16, BF16, F8_E4M3 = float8_e4m3fn, F8_E5M2, F8_E4M3FNUZ, F8_E5M2FNUZ; tf32 as
F32, the float32 values it is); every other format as its bit patterns in U8/U16/U32/U64
(safetensors' F4/F6 are bit-packed, which NumPy readers cannot view). The string dict
"__metadata__" holds "mpgrad_golden" (the file version), "mpgrad_version", "description",
"policy", "accumulate", "formats" (JSON: tensor -> {"format", "layout"}) and "sha256"
(JSON: tensor -> hex digest of its bytes). Never pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..autodiff.tensor import Tensor
from ..numerics.bits import from_bits, to_bits
from ..numerics.files import atomic_write, output_path
from ..numerics.formats import FORMATS, Format

__all__ = ["Golden", "write", "read", "encoding", "FILE_VERSION"]

FILE_VERSION = "1"
_NAMED = {"float64": "F64", "float32": "F32", "tf32": "F32", "float16": "F16",
          "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
          "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ"}
_WIDTH = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
          "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "U8": 1, "U16": 2, "U32": 4, "U64": 8}


@dataclass(frozen=True)
class Golden:
    """The tensors of a golden file (name -> Tensor, in file order) and its metadata."""

    tensors: dict[str, Tensor]
    metadata: dict[str, str]


def _builtin(fmt: Format) -> bool:
    return FORMATS.get(fmt.name) == fmt


def encoding(fmt: Format) -> str:
    """The safetensors dtype a tensor of fmt is stored as: its own name, else U<bits>."""
    if _builtin(fmt) and fmt.name in _NAMED:
        return _NAMED[fmt.name]
    return "U" + str(8 * next(w for w in (1, 2, 4, 8) if fmt.bits <= 8 * w))


def _to_bytes(t: Tensor) -> bytes:
    """The tensor's little-endian bytes in its encoding."""
    width = _WIDTH[encoding(t.dtype)]
    if encoding(t.dtype).startswith("U"):
        bits = to_bits(t.data, t.dtype)
    else:  # the storage itself: the format's own encoding (tf32: its float32 values)
        bits = np.ascontiguousarray(t.data).view(f"u{width}")
    return np.ascontiguousarray(bits, dtype=f"<u{width}").tobytes()


def _from_bytes(raw: bytes, fmt: Format, shape: tuple) -> np.ndarray:
    """The storage array of fmt values whose bytes _to_bytes wrote."""
    width = _WIDTH[encoding(fmt)]
    bits = np.frombuffer(raw, dtype=f"<u{width}").astype(f"u{width}").reshape(shape)
    if encoding(fmt).startswith("U"):
        return from_bits(bits, fmt)
    return bits.view(fmt.storage)


def write(path: str | os.PathLike, tensors: Mapping[str, Tensor],
          metadata: Mapping[str, str] | None = None) -> None:
    """Write tensors (name -> Tensor) and string metadata to a golden file, atomically."""
    path = output_path(path)
    header: dict[str, Any] = {}
    chunks, formats, digests, offset = [], {}, {}, 0
    for name, t in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"a tensor name must be a non-empty string, not {name!r}")
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected an mpgrad Tensor, got {type(t).__name__}")
        raw = _to_bytes(t)
        header[name] = {"dtype": encoding(t.dtype), "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        formats[name] = {"format": t.dtype.name, "layout": list(t.dtype.layout)}
        digests[name] = hashlib.sha256(raw).hexdigest()
        chunks.append(raw)
        offset += len(raw)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update(mpgrad_golden=FILE_VERSION, formats=json.dumps(formats),
                sha256=json.dumps(digests))
    text = json.dumps({"__metadata__": meta, **header}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # pad to 8 bytes, as safetensors does, for alignment

    def dump(file) -> None:
        file.write(len(text).to_bytes(8, "little"))
        file.write(text)
        for raw in chunks:
            file.write(raw)
    atomic_write(path, dump)


def _format(entry: Any) -> Format:
    """The Format a "formats" metadata entry describes."""
    e, m, bias, nan, subnormals = entry["layout"]
    label = entry["format"]
    if label in FORMATS and list(FORMATS[label].layout) == [e, m, bias, nan, subnormals]:
        return FORMATS[label]
    return Format.custom(e, m, bias=bias, nan=nan, subnormals=subnormals, name=label)


def _parse(data: bytes) -> Golden:
    """The Golden in a file's bytes; any inconsistency is an error (ValueError, KeyError,
    TypeError), checked before any tensor is built."""
    if len(data) < 8:
        raise ValueError(f"{len(data)} bytes, shorter than the 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError(f"the header length {n} exceeds the file's {len(data) - 8} bytes")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError("__metadata__ must map strings to strings")
    if meta.get("mpgrad_golden") != FILE_VERSION:
        raise ValueError(f"not an mpgrad golden file of version {FILE_VERSION} "
                         f"(mpgrad_golden = {meta.get('mpgrad_golden')!r})")
    formats, digests = json.loads(meta["formats"]), json.loads(meta["sha256"])
    body = data[8 + n:]
    spans = sorted((tuple(v["data_offsets"]), k) for k, v in header.items())
    end = 0
    for (begin, stop), name in spans:
        if begin != end or stop < begin:
            raise ValueError(f"{name}: data_offsets {[begin, stop]} do not follow on {end}")
        end = stop
    if end != len(body):
        raise ValueError(f"the tensors take {end} bytes, the file holds {len(body)}")
    if set(formats) != set(header) or set(digests) != set(header):
        raise ValueError("the formats/sha256 metadata do not list exactly the file's tensors")
    tensors = {}
    for name, entry in header.items():
        fmt = _format(formats[name])
        shape = tuple(entry["shape"])
        if entry["dtype"] != encoding(fmt):
            raise ValueError(f"{name}: dtype {entry['dtype']!r}, but {fmt.name} is stored as "
                             f"{encoding(fmt)!r}")
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"{name}: bad shape {list(shape)}")
        begin, stop = entry["data_offsets"]
        raw = body[begin:stop]
        if len(raw) != int(np.prod(shape, dtype=np.int64)) * _WIDTH[entry["dtype"]]:
            raise ValueError(f"{name}: {len(raw)} bytes do not hold shape {list(shape)}")
        if hashlib.sha256(raw).hexdigest() != digests[name]:
            raise ValueError(f"{name}: its bytes do not match their SHA-256 (damaged file)")
        tensors[name] = Tensor(_from_bytes(raw, fmt, shape), fmt)
    return Golden(tensors, meta)


def read(path: str | os.PathLike) -> Golden:
    """The tensors and metadata of a golden file, fully validated (ValueError if damaged)."""
    with open(path, "rb") as file:
        data = file.read()
    try:
        return _parse(data)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        what = f"missing entry {err}" if isinstance(err, KeyError) else str(err)
        raise ValueError(f"{os.fspath(path)!r} is not a valid mpgrad golden file: "
                         f"{what}") from None
