"""Print how each rounding mode rounds a few float64 values to float16 (docs table)."""

import numpy as np

import mpgrad

u = 2.0 ** -10  # float16's ulp in [1, 2)
values = {"1 + u/4": 1 + u / 4, "1 + u/2 (tie)": 1 + u / 2, "1 + 3u/2 (tie)": 1 + 3 * u / 2,
          "1 + 3u/4": 1 + 3 * u / 4, "-(1 + u/4)": -(1 + u / 4), "65520 (overflow)": 65520.0,
          "2^-25 (tiny)": 2.0 ** -25}
modes = [m for m in mpgrad.MODES if m != "stochastic"]
print("| x | " + " | ".join(modes) + " |")
print("|---|" + "---|" * len(modes))
for label, x in values.items():
    cells = []
    for mode in modes:
        y = float(mpgrad.round_to(np.float64(x), "float16", mode))
        if 1 <= abs(y) < 2:
            k = round((abs(y) - 1) / u)
            text = "1" if k == 0 else "1 + u" if k == 1 else f"1 + {k}u"
            cells.append((f"-({text})" if k else "-1") if y < 0 else text)
        else:
            cells.append(repr(y))
    print(f"| {label} | " + " | ".join(cells) + " |")
st = mpgrad.round_to(np.full(100_000, 1 + u / 4), "float16", "stochastic", rng=0)
print(f"\nstochastic, 100000 draws of 1 + u/4: fraction rounded up = "
      f"{np.mean(st.astype(np.float64) > 1):.4f} (expected 0.25)")
