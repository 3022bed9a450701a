"""The measured GPU dot products (tests/data/gpu-vectors) put through mpgrad.mma.

`python tests/gpu_vectors.py` prints, for every configuration, the preset used and how many
of its cases it does not reproduce bit for bit, for the float32 and float16 results.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import mpgrad
from mpgrad.accumulate import hardware

DATA = Path(__file__).resolve().parent / "data" / "gpu-vectors" / "measured-dot-products.npz"
FORMATS = {"fp16": mpgrad.float16, "bf16": mpgrad.bfloat16, "tf32": mpgrad.tf32,
           "E4M3": mpgrad.float8_e4m3fn, "E5M2": mpgrad.float8_e5m2}
GPUS = {"V100": "V100", "A100": "A100", "Ada": "ADA", "H100": "H100", "B200": "B200"}
PRECISIONS = {"fp16": "FP16", "bf16": "BF16", "tf32": "TF32", "E4M3": "FP8", "E5M2": "FP8"}


def configurations(data) -> list[tuple[str, str, str]]:
    """(gpu, input, result field) for every measured result."""
    keys = sorted({tuple(k.split("/")) for k in data.files})
    return [(g, i, f) for g, i, f in keys if f.startswith("d_")]


def preset_name(gpu: str, inp: str, field: str) -> str:
    """The preset of the instruction measured: H100's fp8 results in float16 come from
    mma.sync, its float32 ones from wgmma."""
    sync = gpu == "H100" and PRECISIONS[inp] == "FP8" and field == "d_fp16"
    return f"{GPUS[gpu]}_{PRECISIONS[inp]}" + ("_SYNC" if sync else "")


def mismatches(data, gpu: str, inp: str, field: str) -> int:
    """How many cases mpgrad.mma with the preset does not reproduce bit for bit."""
    key = f"{gpu}/{inp}"
    fmt = FORMATS[inp]
    a, b = (data[f"{key}/{x}"].view(np.float32).astype(fmt.storage) for x in "ab")
    c = data[f"{key}/c"].view(np.float32)
    if gpu == "H100" and inp in ("E4M3", "E5M2") and field == "d_fp32":
        c = np.zeros_like(c)  # wgmma D = A B + D ran with a zero D (README)
    out = "float16" if field == "d_fp16" else None
    if out:
        c = c.astype(np.float16)  # nearest even, as the GPU was given it
    d = mpgrad.mma(a[:, None, :], b[:, :, None], c[:, None, None], model=getattr(hardware, preset_name(gpu, inp, field)),
                   out=out)[:, 0, 0]
    got = d.astype(np.float32).view(np.uint32)
    return int(np.count_nonzero(got != data[f"{key}/{field}"]))


if __name__ == "__main__":
    with np.load(DATA) as data:
        total = 0
        for gpu, inp, field in configurations(data):
            n = mismatches(data, gpu, inp, field)
            total += n
            name = preset_name(gpu, inp, field)
            print(f"{gpu:5} {inp:5} {field:7} {name:14} {n:5} of {len(data[f'{gpu}/{inp}/c'])}")
        print(f"total mismatches: {total}")
