"""One training step of the article's MLP under a recipe, next to plain NumPy float32.

Run: python benchmarks/bench_train_step.py [--recipe mixed_float16] [--batch 128] [--steps 20]
Not a test: prints the median time of one step (forward, backward, loss scaling, SGD) and
the peak memory NumPy allocates during one step, for each, their ratios (measured in the
same run), and where the mpgrad step spends its time, by op.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np

import mpgrad
from timing import timed
from mpgrad.autodiff import engine
from mpgrad.demo.data import synthetic

from mpgrad.demo.train import Trainer


def numpy_step(params: dict, x: np.ndarray, y: np.ndarray, lr: float) -> float:
    """Forward, backward and SGD of Linear-ReLU-Linear + softmax cross-entropy, float32."""
    w1, b1, w2, b2 = params["w1"], params["b1"], params["w2"], params["b2"]
    h = x @ w1.T + b1
    r = np.maximum(h, 0)
    z = r @ w2.T + b2
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.log(p[np.arange(n), y]).mean()
    dz = p
    dz[np.arange(n), y] -= 1
    dz /= n
    grads = {"w2": dz.T @ r, "b2": dz.sum(axis=0)}
    dr = dz @ w2
    dh = dr * (h > 0)
    grads["w1"], grads["b1"] = dh.T @ x, dh.sum(axis=0)
    for k, g in grads.items():
        params[k] -= np.float32(lr) * g
    return float(loss)


def op_split(trainer: Trainer, x: np.ndarray, y: np.ndarray, steps: int) -> dict:
    """Seconds per step spent in each op's apply (forward, and backward's ops)."""
    spent: dict = defaultdict(float)
    modules = (engine, mpgrad.ops.elementwise, mpgrad.ops.reduce, mpgrad.ops.linalg,
               mpgrad.ops.shape, mpgrad.ops.fused)
    original = engine.apply

    def traced_apply(op, *args, **params):
        t = time.perf_counter()
        out = original(op, *args, **params)
        spent[op.name] += time.perf_counter() - t
        return out

    for module in modules:
        module.apply = traced_apply
    try:
        start = time.perf_counter()
        for _ in range(steps):
            trainer.step(x, y)
        total = time.perf_counter() - start
    finally:
        for module in modules:
            module.apply = original
    spent["(everything else)"] = total - sum(spent.values())
    return {k: v / steps for k, v in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default="mixed_float16")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    data = synthetic()
    rng = np.random.default_rng(0)
    bound1, bound2 = 1 / np.sqrt(64), 1 / np.sqrt(500)
    params = {"w1": rng.uniform(-bound1, bound1, (500, 64)).astype(np.float32),
              "b1": rng.uniform(-bound1, bound1, 500).astype(np.float32),
              "w2": rng.uniform(-bound2, bound2, (10, 500)).astype(np.float32),
              "b2": rng.uniform(-bound2, bound2, 10).astype(np.float32)}
    x = data.x_train[:args.batch].astype(np.float32)
    y = data.y_train[:args.batch]
    base_t, base_m = timed(lambda: numpy_step(params, x, y, 0.05), max(args.steps, 50))
    trainer = Trainer(args.recipe, 64, 10, hidden=500, lr=0.01, optimizer="sgd")
    trainer.step(x, y)  # warm up
    t, m = timed(lambda: trainer.step(x, y), args.steps)
    print(f"MLP 64-500-10, batch {args.batch}")
    print(f"{'':28} {'step [ms]':>10} {'peak MiB':>9}")
    print(f"{'NumPy float32 (baseline)':28} {base_t * 1e3:10.3f} {base_m:9.2f}")
    print(f"{'mpgrad ' + args.recipe:28} {t * 1e3:10.3f} {m:9.2f}")
    print(f"ratio: time {t / base_t:.1f}x, peak memory {m / base_m:.1f}x")
    print(f"\nwhere an mpgrad step spends its time ({args.recipe}, ms per step):")
    split = op_split(trainer, x, y, args.steps)
    for name, sec in sorted(split.items(), key=lambda kv: -kv[1]):
        print(f"  {name:24} {sec * 1e3:8.2f}")


if __name__ == "__main__":
    main()
