"""The same program gives the same bits whatever the BLAS thread count.

The computation runs in fresh subprocesses with OPENBLAS_NUM_THREADS (and the other common
thread variables) set to 1 and to 2; the hashes of every result and gradient must agree.
"""

import os
import subprocess
import sys
import textwrap


PROGRAM = textwrap.dedent("""
    import hashlib, numpy as np, mpgrad
    from mpgrad.accumulate import hardware
    mpgrad.manual_seed(7)
    a = mpgrad.randn(48, 500, dtype="bf16", requires_grad=True)
    b = mpgrad.randn(500, 40, dtype="bf16", requires_grad=True)
    h = hashlib.sha256()
    loss = (mpgrad.tanh(a @ b) * 0.5).sum() + mpgrad.matmul(a, b, accumulate=hardware.H100_FP16).mean()
    loss.backward()
    for t in (loss, a.grad, b.grad, mpgrad.randn(1000, dtype="fp16").to("e4m3", "stochastic")):
        h.update(t.numpy().tobytes())
    print(h.hexdigest())
""")


def run(threads: int) -> str:
    env = dict(os.environ)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    done = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_same_bits_with_one_and_two_blas_threads():
    one, two = run(1), run(2)
    assert len(one) == 64 and one == two
