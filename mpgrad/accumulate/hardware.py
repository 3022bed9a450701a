"""Block-FMA presets from the facts table (Khattak & Mikaitis 2025; DeepSeek-V3 §3.3).

Models from papers, not guarantees. fp16/bf16 and FP8 use the table's (n, F); TF32 uses the
table's n with F = 24 (the table gives no F for TF32). The accumulator is fp32, included in
each block and rounded toward zero. One row a preset; `HARDWARE` maps the names to them.
"""

from __future__ import annotations

from ..numerics.formats import float32
from .models import BlockFMA, Chunked, Model, Sequential

V100_FP16 = BlockFMA(4, 23)
A100_FP16, A100_TF32 = BlockFMA(8, 24), BlockFMA(4, 24)
ADA_FP16, ADA_TF32, ADA_FP8 = BlockFMA(8, 24), BlockFMA(4, 24), BlockFMA(16, 13)
H100_FP16, H100_TF32, H100_FP8 = BlockFMA(16, 25), BlockFMA(8, 24), BlockFMA(32, 13)
B200_FP16, B200_TF32, B200_FP8 = BlockFMA(16, 25), BlockFMA(8, 24), BlockFMA(32, 25)
H200_FP16, H200_TF32, H200_FP8 = H100_FP16, H100_TF32, H100_FP8  # same chip model
ADA_FP8_PROMOTED = Chunked(128, ADA_FP8, Sequential(float32, fma=False))
H100_FP8_PROMOTED = Chunked(128, H100_FP8, Sequential(float32, fma=False))
H200_FP8_PROMOTED = H100_FP8_PROMOTED
B200_FP8_PROMOTED = Chunked(128, B200_FP8, Sequential(float32, fma=False))
# bf16 uses the same block FMA as fp16 in these models (V100 has no bf16)
A100_BF16, ADA_BF16 = A100_FP16, ADA_FP16
H100_BF16, H200_BF16, B200_BF16 = H100_FP16, H200_FP16, B200_FP16

HARDWARE: dict[str, Model] = {k: v for k, v in dict(globals()).items()
                              if k.isupper() and k != "HARDWARE"}

__all__ = ["HARDWARE", *HARDWARE]
