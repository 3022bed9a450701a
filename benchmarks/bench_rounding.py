"""Throughput of mpgrad.round_to next to NumPy/ml_dtypes astype and a plain copy (same run).

Run: python benchmarks/bench_rounding.py [--n 16000000]
Not a test: it prints times and ratios, it asserts nothing.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import ml_dtypes
import numpy as np

import mpgrad


def best_time(fn, repeat: int) -> float:
    """Best wall time of fn() over repeat runs (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def peak_bytes(fn) -> int:
    """Peak memory NumPy allocates while fn() runs."""
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=16_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x64 = rng.standard_normal(args.n) * 2.0 ** rng.integers(-12, 8, args.n)
    x32 = x64.astype(np.float32)
    cases = [("float32 -> bfloat16", x32, "bfloat16", ml_dtypes.bfloat16),
             ("float32 -> float16", x32, "float16", np.float16),
             ("float64 -> float8_e4m3fn", x64, "float8_e4m3fn", ml_dtypes.float8_e4m3fn)]
    print(f"n = {args.n:,} elements, best of {args.repeat}; ratio = time / astype time")
    print(f"{'conversion':26} {'method':26} {'time [ms]':>10} {'Melem/s':>9} {'ratio':>7}"
          f" {'peak MiB':>9}")
    for label, x, fmt, dtype in cases:
        base = best_time(lambda: x.astype(dtype), args.repeat)
        rows = [("plain copy", lambda: x.copy()),
                ("astype (baseline)", lambda: x.astype(dtype)),
                ("round_to nearest_even", lambda: mpgrad.round_to(x, fmt)),
                ("round_to stochastic", lambda: mpgrad.round_to(x, fmt, "stochastic", rng=1))]
        for name, fn in rows:
            t = base if name.startswith("astype") else best_time(fn, args.repeat)
            peak = peak_bytes(fn) / 2 ** 20
            print(f"{label:26} {name:26} {t * 1e3:10.1f} {args.n / t / 1e6:9.1f} "
                  f"{t / base:7.2f} {peak:9.0f}")


if __name__ == "__main__":
    main()
