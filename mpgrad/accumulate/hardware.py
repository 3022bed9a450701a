"""Matrix-unit presets: one BlockFMA row per GPU instruction family, as data.

Each row aligns products by their inputs' exponents (align="exponents"), keeps F fraction
bits below the largest exponent, adds C inside the block and rounds toward zero to the
float32 result; n is the instruction's k, and longer K is walked by chaining blocks. Sources:
Khattak & Mikaitis, "Accurate Models of NVIDIA Tensor Cores", arXiv 2512.07004 (models and
the measured vectors in tests/data/gpu-vectors); Fasi, Higham, Mikaitis & Pranesh 2021,
"Numerical behavior of NVIDIA tensor cores"; MMA-Sim, arXiv 2511.10909. Every row with a
measured configuration reproduces it bit for bit (docs/hardware.md).
The *_PROMOTED rows add the FP8 GEMMs' promotion to float32 every 128 products along K
(DeepSeek-V3 technical report §3.3). `HARDWARE` maps the names to the rows.
"""

from __future__ import annotations

from ..numerics.formats import Format, float32
from .models import BlockFMA, Chunked, Model, Sequential

# fp8 on Ada and Hopper: the float32 result keeps only 13 fraction bits (Khattak & Mikaitis)
E8M13 = Format.custom(8, 13, name="float32_e8m13")


def _unit(n: int, fraction_bits: int, acc: Format = float32) -> BlockFMA:
    return BlockFMA(n, fraction_bits, True, "toward_zero", acc, align="exponents")


V100_FP16 = _unit(4, 23)                                    # Volta: k = 4, F = 23
A100_FP16, A100_TF32 = _unit(8, 24), _unit(4, 24)            # Ampere: F = 24
ADA_FP16, ADA_TF32, ADA_FP8 = _unit(8, 24), _unit(4, 24), _unit(16, 13, E8M13)
H100_FP16, H100_TF32, H100_FP8 = _unit(16, 25), _unit(8, 25), _unit(32, 13, E8M13)
B200_FP16, B200_TF32 = _unit(16, 25), _unit(8, 25)           # Hopper/Blackwell: F = 25
# mma.sync fp8 on B200 and Hopper: float16 copies of the inputs, two blocks of 16 over
# interleaved pairs, C added at the end rounded to nearest (Khattak & Mikaitis 2025;
# the measured B200 fp8 and H100 fp8-to-float16 results)
B200_FP8 = BlockFMA(16, 25, True, "toward_zero", float32, align="exponents", k=32,
                    order="pairs", accumulator="last", input_emin=-14)
H100_FP8_SYNC = B200_FP8  # H100's fp8 mma.sync (its wgmma is H100_FP8)
H200_FP16, H200_TF32, H200_FP8 = H100_FP16, H100_TF32, H100_FP8  # the same chip model
H200_FP8_SYNC = H100_FP8_SYNC
ADA_FP8_PROMOTED = Chunked(128, ADA_FP8, Sequential(float32, fma=False))
H100_FP8_PROMOTED = Chunked(128, H100_FP8, Sequential(float32, fma=False))
H200_FP8_PROMOTED = H100_FP8_PROMOTED
B200_FP8_PROMOTED = Chunked(128, B200_FP8, Sequential(float32, fma=False))
# bf16 uses the same block FMA as fp16 (V100 has no bf16)
A100_BF16, ADA_BF16 = A100_FP16, ADA_FP16
H100_BF16, H200_BF16, B200_BF16 = H100_FP16, H200_FP16, B200_FP16

HARDWARE: dict[str, Model] = {k: v for k, v in dict(globals()).items()
                              if k.isupper() and k not in ("HARDWARE", "E8M13")}

__all__ = ["HARDWARE", "E8M13", *HARDWARE]
