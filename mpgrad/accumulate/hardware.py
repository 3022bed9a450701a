"""Matrix-unit presets: one BlockFMA row per GPU instruction family, as data.

Each row aligns products by their inputs' exponents (align="exponents"), keeps F fraction
bits below the largest exponent, adds C inside the block and rounds toward zero to the
float32 result; n is the instruction's k, and longer K is walked by chaining blocks. Sources:
Khattak & Mikaitis, "Accurate Models of NVIDIA Tensor Cores", arXiv 2512.07004 (models and
the measured vectors in tests/data/gpu-vectors); Fasi, Higham, Mikaitis & Pranesh 2021,
"Numerical behavior of NVIDIA tensor cores"; MMA-Sim, arXiv 2511.10909. Every row with a
measured configuration reproduces it bit for bit (docs/hardware.md). The AMD rows (MI100,
MI250, MI300) follow MMA-Sim's AMD models instead: see their comments below.
The *_PROMOTED rows add the FP8 GEMMs' promotion to float32 every 128 products along K
(DeepSeek-V3 technical report §3.3). `HARDWARE` maps the names to the rows.
"""

from __future__ import annotations

from ..numerics.formats import Format, float32
from .blockfma import BlockFMA
from .models import Chunked, Model, Sequential

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

# AMD matrix cores (MFMA, float32 results), after MMA-Sim's bit-accurate models (arXiv
# 2511.10909; github.com/microsoft/MMA-Sim, mmasim/simulator/amd.py class mfma and
# arithmetic.py), reproduced bit for bit on tests/data/mmasim-vectors (docs/hardware.md).


def _pairwise(n: int, flush: bool) -> BlockFMA:
    """CDNA1/CDNA2 f16/bf16 (mfma "pairwise", pairwise_dot): groups of n products, each
    rounded to float32, added by halving in float32 and then to D, all to nearest even;
    CDNA2 flushes subnormal inputs, C and every result to zero (flush_denormal)."""
    return BlockFMA(n, include_accumulator=False, mode="nearest_even", block_sum="pairwise",
                    flush=flush)


def _cdna3(n: int, k: int | None = None, reach: int | None = None) -> BlockFMA:
    """CDNA3 (mfma "fused_dot_rd_add", amd_fused_dot_rd_add): n products aligned to their
    largest exponent (a zero input's is -126, extract_significand_exponent), truncated to
    24 fraction bits, added exactly; that sum cut toward -inf to 31 fraction bits and C to
    24 below their common exponent, added, rounded to nearest even; a product of 2**128 or
    more is an infinity. fp8: two blocks of alternate products (fused_sum over [0::2] and
    [1::2]) merged with the same cut, and C below 2**(E' - 25) dropped."""
    return BlockFMA(n, 24, True, "nearest_even", float32, align="exponents", k=k,
                    order="alternate" if k else "consecutive", accumulator="aligned",
                    sum_bits=31, reach=reach, zero_exponent=-126, product_overflow=True)


MI100_FP16, MI100_BF16 = _pairwise(4, False), _pairwise(2, False)  # CDNA1: groups of 4, 2
MI250_FP16, MI250_BF16 = _pairwise(4, True), _pairwise(4, True)    # CDNA2; bf16: the _1k ones
MI300_FP16 = MI300_BF16 = _cdna3(8)  # group min(8, k): k = 4 instructions are n = 4
MI300_TF32 = _cdna3(4)  # xf32 truncates float32 operands to tf32 first (truncate_to_tf32)
MI300_FP8 = _cdna3(8, k=16, reach=25)  # fnuz e4m3 / e5m2 in any pairing, groups of 16

HARDWARE: dict[str, Model] = {k: v for k, v in dict(globals()).items()
                              if k.isupper() and k not in ("HARDWARE", "E8M13")}

__all__ = ["HARDWARE", "E8M13", *HARDWARE]
