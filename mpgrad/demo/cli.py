"""Command line: `mpgrad formats`, `mpgrad describe`, `mpgrad train`, `mpgrad compare`,
`mpgrad probe` (also as `python -m mpgrad ...`)."""

from __future__ import annotations

import argparse
import inspect
import os
import sys

from ..accumulate.hardware import HARDWARE
from ..accumulate.probing import compare, load_vectors
from ..numerics.bits import describe
from ..numerics.formats import FORMATS
from .data import load
from .recipes import DEFAULT_RECIPES, get_recipe
from .table import text_table
from .train import results_table, train

__all__ = ["main", "formats_table", "probe_table"]


def formats_table() -> str:
    """The built-in formats as a text table."""
    head = ("name", "e", "m", "bias", "max", "min normal", "min subnormal", "eps",
            "inf", "nan", "-0", "storage")
    return text_table(head, [
        (f.name, str(f.exponent_bits), str(f.fraction_bits), str(f.bias), f"{f.max:.6g}",
         f"{f.smallest_normal:.6g}", f"{f.smallest_subnormal:.6g}", f"{f.eps:.6g}",
         "yes" if f.infinities else "no", f.nan, "yes" if f.signed_zero else "no",
         str(f.storage))
        for f in FORMATS.values()])


def _training_options(p: argparse.ArgumentParser) -> None:
    """The options shared by train and compare, with mpgrad.demo.train.train's defaults."""
    default = {k: v.default for k, v in inspect.signature(train).parameters.items()}
    p.add_argument("--steps", type=int, default=default["steps"])
    p.add_argument("--batch-size", type=int, default=default["batch_size"])
    p.add_argument("--lr", type=float, default=default["lr"])
    p.add_argument("--momentum", type=float, default=default["momentum"])
    p.add_argument("--seed", type=int, default=default["seed"])
    p.add_argument("--hidden", type=int, default=default["hidden"])
    p.add_argument("--data", default=default["data"],
                   help="auto (digits if scikit-learn is installed, else synthetic), "
                   "synthetic or digits")
    p.add_argument("--plot", metavar="FILE.png", help="draw the loss curves (needs matplotlib)")


class _Progress:
    """A progress line on stderr: redrawn about every 2% of a run on a terminal, else a
    new line every 10% (for logs)."""

    def __init__(self, name: str, steps: int) -> None:
        self.name, self.steps, self.tty = name, steps, sys.stderr.isatty()
        self.every = max(1, steps // (50 if self.tty else 10))

    def __call__(self, step: int, loss: float) -> None:
        if step % self.every == 0 or step == self.steps:
            last = step == self.steps or not self.tty
            start = "\r" if self.tty else ""
            print(f"{start}{self.name}: step {step}/{self.steps}  loss {loss:.4f}",
                  end="\n" if last else "", file=sys.stderr, flush=True)


def probe_table(path: str) -> str:
    """Which hardware presets reproduce the recorded cases in path, and how many each misses."""
    (a, b, c, d), (fa, fb, fo) = load_vectors(path)
    misses = compare(HARDWARE, a, b, c, d, out=fo)
    if not misses:
        raise ValueError(f"no preset takes {fa.name} x {fb.name} inputs with {fo.name} output")
    rows = sorted(misses.items(), key=lambda kv: (kv[1], kv[0]))
    head = f"{d.size} outputs of {fa.name} x {fb.name} -> {fo.name}, K = {a.shape[-1]}"
    return head + "\n" + text_table(("preset", "mismatches", "reproduces"), [
        (name, str(n), "yes" if n == 0 else "no") for name, n in rows])


def _pyplot():
    """matplotlib.pyplot on the Agg backend, or an ImportError saying how to install it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("--plot needs matplotlib: pip install matplotlib") from err
    return plt


def _plot(results: list, path: str) -> None:
    """Loss curves of the runs into a PNG file."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        ax.plot(r.losses, label=r.recipe)
    ax.set(xlabel="step", ylabel="training loss", yscale="log")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def _run(args, names: list[str]) -> list:
    """Train each recipe with the command's options; print the table."""
    for name in names:
        get_recipe(name)  # unknown names fail before any training
    if args.plot:
        _pyplot()  # so does a missing matplotlib
    data = load(args.data, args.seed)
    print(f"data: {data.name} ({len(data.y_train)} train / {len(data.y_test)} test, "
          f"{data.features} features, {data.classes} classes); MLP {data.features}-"
          f"{args.hidden}-{data.classes}, SGD lr {args.lr} momentum {args.momentum}, "
          f"batch {args.batch_size}, {args.steps} steps, seed {args.seed}", file=sys.stderr)
    results = [train(name, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                     momentum=args.momentum, seed=args.seed, data=data, hidden=args.hidden,
                     progress=_Progress(name, args.steps)) for name in names]
    print(results_table(results))
    if args.plot:
        _plot(results, args.plot)
    return results


def main(argv: list[str] | None = None) -> int:
    """Entry point of the mpgrad command."""
    parser = argparse.ArgumentParser(prog="mpgrad", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("formats", help="print the table of built-in number formats")
    d = sub.add_parser("describe", help="show how a value is stored in a format")
    d.add_argument("value", type=float)
    d.add_argument("format", nargs="*", default=list(FORMATS), help="formats (default: all)")
    d.add_argument("--mode", default="nearest_even")
    t = sub.add_parser("train", help="train the demo MLP under one recipe")
    t.add_argument("--recipe", default="mixed_float16")
    t.add_argument("--out", metavar="FILE.npz", help="save losses, scales and per-step "
                   "parameter hashes")
    _training_options(t)
    c = sub.add_parser("compare", help="train the demo MLP under several recipes, one table")
    c.add_argument("--recipes", default=",".join(DEFAULT_RECIPES),
                   help="comma-separated recipe names (default: all built-in recipes)")
    c.add_argument("--out", metavar="DIR", help="save each run as DIR/RECIPE.npz")
    _training_options(c)
    pr = sub.add_parser("probe", help="which matrix-unit presets reproduce recorded cases")
    pr.add_argument("--vectors", required=True, metavar="FILE.npz",
                    help="a, b, c, d (raw bits) and a_format, b_format, out (see "
                    "mpgrad.accumulate.probing.save_vectors)")
    args = parser.parse_args(argv)
    try:
        if args.command == "formats":
            print(formats_table())
        elif args.command == "describe":
            print("\n\n".join(str(describe(args.value, f, args.mode)) for f in args.format))
        elif args.command == "probe":
            print(probe_table(args.vectors))
        elif args.command == "train":
            (result,) = _run(args, [args.recipe])
            if args.out:
                result.save(args.out)
        else:
            results = _run(args, [n.strip() for n in args.recipes.split(",") if n.strip()])
            if args.out:
                os.makedirs(args.out, exist_ok=True)
                for r in results:
                    r.save(os.path.join(args.out, f"{r.recipe}.npz"))
    except (ValueError, ImportError) as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
