"""Time of each accumulation model for an M = N = K matmul next to NumPy's float32 matmul.

Run: python benchmarks/bench_matmul.py [--n 512]
Not a test: it prints median times, ratios to float32 BLAS measured in the same run, and
peak memory allocated by NumPy (traced in a separate call); it asserts nothing.
"""

from __future__ import annotations

import argparse

import numpy as np

import mpgrad
from timing import timed
from mpgrad.accumulate import Exact, Sequential, hardware, matmul_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=512)
    args = parser.parse_args()
    n = args.n
    rng = np.random.default_rng(0)
    for fmt in ("float16", "bfloat16"):
        a = mpgrad.tensor(rng.standard_normal((n, n)), dtype=fmt)
        b = mpgrad.tensor(rng.standard_normal((n, n)), dtype=fmt)
        a32, b32 = a.to_float64().astype(np.float32), b.to_float64().astype(np.float32)
        a64, b64 = a.to_float64(), b.to_float64()
        base = timed(lambda: a32 @ b32, 21)[0]
        rows = {
            "mpgrad.matmul (default model)": lambda: a @ b,
            "Exact(float32)": lambda: matmul_model(a64, b64, Exact()),
            "Sequential(float32, fma)": lambda: matmul_model(a64, b64, Sequential()),
            "BlockFMA H100_FP16": lambda: matmul_model(a64, b64, hardware.H100_FP16),
        }
        print(f"\n{fmt} inputs, M = N = K = {n}; float32 BLAS matmul: {base * 1e3:.2f} ms")
        print(f"{'model':38} {'time [s]':>9} {'ratio':>8} {'peak MiB':>9}")
        for name, fn in rows.items():
            seconds, peak = timed(fn)
            print(f"{name:38} {seconds:9.3f} {seconds / base:8.0f} {peak:9.0f}")


if __name__ == "__main__":
    main()
