"""Reference vectors for mpgrad's AMD presets, computed by MMA-Sim's own AMD simulator.

Usage: python generate.py /path/to/MMA-Sim-checkout [cases]   (needs torch; writes here)

Each configuration runs MMA-Sim's `mmasim.simulator.amd.mfma(arch, qualifier)` on random
16 x 16 instructions and keeps the diagonal outputs D[i, i] (row i of A, column i of B,
C[i, i]) as independent cases. One fix is applied, in memory only: MMA-Sim's CDNA1/CDNA2
path hands float16/bfloat16 slices to `pairwise_dot`, which asserts float32 operands, so
it is given float32 copies (exact: every such value is a float32 value).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SEED = 20251114  # arXiv 2511.10909 v1 date

# preset -> (MMA-Sim arch, instruction qualifier); one file per configuration
CONFIGS = {
    "MI100_FP16": ("CDNA1", "f32_16x16x16f16"),
    "MI100_BF16": ("CDNA1", "f32_16x16x8bf16"),
    "MI250_FP16": ("CDNA2", "f32_16x16x16f16"),
    "MI250_BF16": ("CDNA2", "f32_16x16x16bf16_1k"),
    "MI300_FP16": ("CDNA3", "f32_16x16x16_f16"),
    "MI300_BF16": ("CDNA3", "f32_16x16x16_bf16"),
    "MI300_TF32": ("CDNA3", "f32_16x16x8_xf32"),
    "MI300_FP8-fp8_fp8": ("CDNA3", "f32_16x16x32_fp8_fp8"),
    "MI300_FP8-fp8_bf8": ("CDNA3", "f32_16x16x32_fp8_bf8"),
    "MI300_FP8-bf8_fp8": ("CDNA3", "f32_16x16x32_bf8_fp8"),
    "MI300_FP8-bf8_bf8": ("CDNA3", "f32_16x16x32_bf8_bf8"),
}
# torch dtype -> (mpgrad format name, bits, fraction bits, minimum exponent)
FORMATS = {
    torch.float32: ("float32", 32, 23, -126),
    torch.float16: ("float16", 16, 10, -14),
    torch.bfloat16: ("bfloat16", 16, 7, -126),
    torch.float8_e4m3fnuz: ("float8_e4m3fnuz", 8, 3, -7),
    torch.float8_e5m2fnuz: ("float8_e5m2fnuz", 8, 2, -15),
}
SIGNED = {8: np.int8, 16: np.int16, 32: np.int32}
UNSIGNED = {8: np.uint8, 16: np.uint16, 32: np.uint32}


def to_torch(codes: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Raw codes as a torch tensor of dtype (through a signed view: torch lacks uint32)."""
    bits = FORMATS[dtype][1]
    return torch.from_numpy(codes.astype(UNSIGNED[bits]).view(SIGNED[bits]).copy()).view(dtype)


def to_codes(x: torch.Tensor) -> np.ndarray:
    """A torch tensor's raw codes as unsigned integers."""
    bits = FORMATS[x.dtype][1]
    return x.contiguous().view(getattr(torch, f"int{bits}")).numpy().view(UNSIGNED[bits])


def finite(codes: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Whether each code is a finite value of dtype."""
    return np.isfinite(to_torch(codes, dtype).double().numpy())


def operand(rng, dtype, shape, kind: str) -> np.ndarray:
    """Random codes of one kind: raw bits (every class), finite raw bits, small magnitudes
    (subnormals, zeros of both signs), values near 1 with zeros, near 2**(emin / 2) (their
    products near the smallest normal), or huge (a partner for a zero input)."""
    name, bits, frac, emin = FORMATS[dtype]
    raw = rng.integers(0, 1 << bits, shape, dtype=np.uint64)
    if kind == "raw":
        return raw
    if kind == "finite":
        flip = np.uint64(1 << (bits - 2))  # the exponent field's top bit
        return np.where(finite(raw, dtype), raw, raw ^ flip)
    sign = rng.integers(0, 2, shape, dtype=np.uint64) << (bits - 1)
    if kind == "small":
        return sign | rng.integers(0, 1 << (frac + 3), shape, dtype=np.uint64)
    if kind == "huge":  # the 8 binades below the largest finite value
        top = (1 << (bits - 1)) - 1 - (0 if "fnuz" in name else 1 << frac)
        return sign | (top - rng.integers(0, 1 << (frac + 3), shape, dtype=np.uint64))
    scale = {"near1": 0, "tiny": emin // 2}[kind]
    x = rng.standard_normal(shape) * 2.0 ** (scale + rng.integers(-4, 5, shape))
    x[rng.random(shape) < 0.15] = 0.0
    codes = to_codes(torch.from_numpy(x).to(dtype)).astype(np.uint64)
    signed_zero = sign * np.uint64("fnuz" not in name)  # fnuz: the code of -0 is NaN
    return np.where(codes == 0, signed_zero, codes)


def instruction(sim, rng):
    """One random instruction: A (16, k), B (k, 16), C (16, 16) as torch tensors, kinds
    drawn per row of A / column of B (the cases); some rows negate their column, some
    put zeros opposite huge values (a zero input has an exponent in MMA-Sim's CDNA3)."""
    m, n, k = sim.m, sim.n, sim.k
    kinds = rng.choice(["raw", "finite", "small", "near1", "tiny", "zeros"], m,
                       p=[0.15, 0.2, 0.15, 0.2, 0.1, 0.2])
    a = np.stack([operand(rng, sim.a_type, k, "near1" if kinds[i] == "zeros" else kinds[i])
                  for i in range(m)])
    b = np.stack([operand(rng, sim.b_type, k, "near1" if kinds[j] == "zeros" else kinds[j])
                  for j in range(n)], axis=1)
    for i in np.flatnonzero(kinds == "zeros"):  # all, or about half, of the row zeros
        zero = rng.random(k) < (1.0 if rng.random() < 0.3 else 0.5)
        a[i, zero] = 0
        b[zero, i] = operand(rng, sim.b_type, int(zero.sum()), "huge")
    A, B = to_torch(a, sim.a_type), to_torch(b, sim.b_type)
    for i in np.flatnonzero(rng.random(m) < 0.2):  # cancellation: opposite pairs of products
        A[i, k // 2:] = (-A[i, :k // 2].float()).to(sim.a_type)
        B[k // 2:, i] = B[:k // 2, i]
    c_kind = rng.choice(["raw", "zero", "small", "tiny", "normal", "cancel"], m,
                        p=[0.15, 0.1, 0.1, 0.15, 0.35, 0.15])
    C = to_torch(rng.integers(0, 1 << 32, (m, n), dtype=np.uint64), torch.float32)
    exact = (A.double() @ B.double()).diagonal()
    for i in range(m):
        if c_kind[i] == "zero":
            C[i, i] = -0.0 if rng.random() < 0.5 else 0.0
        elif c_kind[i] == "small":
            C[i, i] = to_torch(np.array([rng.integers(0, 1 << 26)
                                         | (rng.integers(0, 2) << 31)]), torch.float32)[0]
        elif c_kind[i] == "tiny":  # below the exponent of a zero times a huge value
            C[i, i] = float(rng.standard_normal() * 2.0 ** rng.integers(-140, -100))
        elif c_kind[i] == "normal":
            C[i, i] = float(rng.standard_normal() * 2.0 ** rng.integers(-20, 21))
        elif c_kind[i] == "cancel" and torch.isfinite(exact[i]):
            C[i, i] = -exact[i].float()
    return A, B, C


def generate(mmasim: Path, cases: int) -> None:
    sys.path.insert(0, str(mmasim))
    from mmasim.simulator import amd, arithmetic

    # the CDNA1/CDNA2 fix: float32 copies for pairwise_dot (see the module docstring)
    amd.pairwise_dot = lambda a, b, flush=False: arithmetic.pairwise_dot(
        a.float(), b.float(), flush)
    for preset, (arch, qualifier) in CONFIGS.items():
        sim = amd.mfma(arch, qualifier)
        rng = np.random.default_rng([SEED, len(preset), sum(map(ord, preset))])
        rows = {x: [] for x in "abcd"}
        while len(rows["d"]) * sim.m < cases:
            A, B, C = instruction(sim, rng)
            D = sim(A.clone(), B.clone(), C.clone())  # MMA-Sim flushes its inputs in place
            idx = torch.arange(sim.m)
            rows["a"].append(to_codes(A)[:, None, :])
            rows["b"].append(to_codes(B.T.contiguous())[:, :, None])
            rows["c"].append(to_codes(C[idx, idx].contiguous())[:, None, None])
            rows["d"].append(to_codes(D[idx, idx].contiguous())[:, None, None])
        data = {x: np.concatenate(v)[:cases] for x, v in rows.items()}
        np.savez_compressed(
            HERE / f"{preset}.npz", **data, preset=preset.split("-")[0], arch=arch,
            instruction=f"v_mfma_{qualifier}", a_format=FORMATS[sim.a_type][0],
            b_format=FORMATS[sim.b_type][0], c_format="float32", d_format="float32")
        print(f"{preset:18} {arch} {qualifier:22} {cases} cases")


if __name__ == "__main__":
    generate(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1024)
