"""Command line: `mpgrad formats`, `mpgrad describe`, `mpgrad train`, `mpgrad compare`,
`mpgrad probe`, `mpgrad vectors`, `mpgrad check` (also as `python -m mpgrad ...`)."""

from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
from importlib.metadata import version
from typing import Callable

from ..accumulate.hardware import HARDWARE
from ..accumulate.probing import compare, load_vectors
from ..numerics.bits import describe
from ..numerics.files import atomic_write, output_path
from ..numerics.formats import FORMATS, as_format
from ..numerics.rounding import MODES
from ..numerics.cases import LEVELS
from ..numerics.vectors import DETERMINISTIC_MODES, check, vectors
from ..testing.golden import Report, parse_tolerance
from ..testing.golden import check as check_golden
from .data import DATASETS, load
from .recipes import DEFAULT_RECIPES, RECIPES, get_recipe
from .shards import (SHARD_CASES, SHARD_ELEMENTS, SHARD_LINES, Sharding, check_vectors,
                     vectors_text)
from .shards import check_golden as check_golden_sharded
from ..diagnostics import plot, text_table
from .train import OPTIMIZERS, diagnosis, results_table, train

__all__ = ["main", "formats_table", "probe_table", "check_table", "PLOT_SUFFIXES"]

PLOT_SUFFIXES = (".png", ".pdf", ".svg")  # what --plot writes (matplotlib's Agg backend)


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


def _integer(least: int) -> Callable[[str], int]:
    """An argparse type: an integer >= least."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value
    return parse


def _rate(text: str) -> float:
    """An argparse type: a finite number >= 0 (learning rate, momentum)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _recipe_names(text: str) -> list[str]:
    """An argparse type: comma-separated names of built-in recipes, each once."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no recipe given; choose from {', '.join(RECIPES)}")
    for i, name in enumerate(names):
        try:
            get_recipe(name)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        if name in names[:i]:
            raise argparse.ArgumentTypeError(f"recipe {name!r} is given twice")
    return names


def _training_options(p: argparse.ArgumentParser) -> None:
    """The options shared by train and compare, with mpgrad.demo.train.train's defaults."""
    default = {k: v.default for k, v in inspect.signature(train).parameters.items()}
    p.add_argument("--steps", type=_integer(1), default=default["steps"])
    p.add_argument("--batch-size", type=_integer(1), default=default["batch_size"])
    p.add_argument("--lr", type=_rate, default=default["lr"])
    p.add_argument("--optimizer", default=default["optimizer"], choices=OPTIMIZERS,
                   help="adam (default: torch's defaults, betas 0.9/0.999, eps 1e-8) or sgd")
    p.add_argument("--momentum", type=_rate, default=default["momentum"], help="SGD's")
    p.add_argument("--seed", type=_integer(0), default=default["seed"])
    p.add_argument("--hidden", type=_integer(1), default=default["hidden"])
    p.add_argument("--data", default=default["data"], choices=("auto", *DATASETS),
                   help="synthetic (embedded, the default), digits (needs scikit-learn) or "
                   "auto (digits if scikit-learn is installed, else synthetic)")
    p.add_argument("--plot", metavar="FILE.png", help="draw the loss curves into a "
                   f"{'/'.join(PLOT_SUFFIXES)} file (needs matplotlib)")


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
    """Loss curves of the runs into an image file (its format from the suffix)."""
    plt = _pyplot()
    grads = [r.grad_histogram for r in results if r.grad_histogram is not None]
    fig, axes = plt.subplots(1 + bool(grads), 1, figsize=(7, 4 + 3.5 * bool(grads)),
                             squeeze=False)
    ax = axes[0, 0]
    for r in results:
        ax.plot(r.losses, label=r.recipe)
    ax.set(xlabel="step", ylabel="training loss", yscale="log")
    ax.legend()
    if grads:  # --diagnose: the gradients before and after the last loss scale
        scale = results[0].scales[-1] if results[0].scales[-1] != 1 else 2.0 ** 16
        plot([grads[0], grads[0].scaled(scale)], ax=axes[1, 0],
             title=f"{results[0].recipe}: gradients of module outputs, and times {scale:g}")
    kind = os.path.splitext(path)[1].lower().lstrip(".")
    atomic_write(path, lambda file: fig.savefig(file, format=kind, dpi=120,
                                                bbox_inches="tight"))
    plt.close(fig)


def _output(option: str, path: str, **checks) -> str:
    """output_path(path, **checks), its error naming the option."""
    try:
        return output_path(path, **checks)
    except ValueError as err:
        raise ValueError(f"{option}: {err}") from None


def _check_outputs(args, names: list[str]) -> None:
    """Refuse --plot and --out paths that cannot be written, before any work; create the
    folder of compare --out."""
    if args.plot is not None:
        _output("--plot", args.plot, suffixes=PLOT_SUFFIXES)
        _pyplot()  # a missing matplotlib, too
    if args.out is not None and args.command == "train":
        _output("--out", args.out)
    elif args.out is not None:
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise ValueError(f"--out: {args.out!r} is a file; compare --out takes a folder "
                             "(created if absent)")
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as err:
            raise ValueError(f"--out: cannot create the folder {args.out!r}: "
                             f"{err.strerror}") from None
        for name in names:
            _output("--out", os.path.join(args.out, f"{name}.npz"))


def _run(args, names: list[str]) -> list:
    """Check the outputs, train each recipe with the command's options, print the table,
    write the plot and the --out files."""
    _check_outputs(args, names)
    data = load(args.data, args.seed)
    print(f"data: {data.name} ({len(data.y_train)} train / {len(data.y_test)} test, "
          f"{data.features} features, {data.classes} classes); MLP {data.features}-"
          f"{args.hidden}-{data.classes}, {args.optimizer} lr {args.lr}"
          f"{f' momentum {args.momentum}' if args.optimizer == 'sgd' else ''}, "
          f"batch {args.batch_size}, {args.steps} steps, seed {args.seed}", file=sys.stderr)
    diagnose = getattr(args, "diagnose", False)
    results = [train(name, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                     momentum=args.momentum, seed=args.seed, data=data, hidden=args.hidden,
                     progress=_Progress(name, args.steps), diagnose=diagnose,
                     optimizer=args.optimizer)
               for name in names]
    print(results_table(results))
    if diagnose:
        print("\n".join(diagnosis(r) for r in results))
    if args.plot is not None:
        _plot(results, args.plot)
    if args.out is not None and args.command == "train":
        results[0].save(args.out)
    elif args.out is not None:
        for r in results:
            r.save(os.path.join(args.out, f"{r.recipe}.npz"))
    return results


def _describe(value: float, names: list[str], mode: str) -> list[str]:
    """Print value described in each format; return the errors of the names that failed."""
    texts, errors = [], []
    for name in names:
        try:
            texts.append(str(describe(value, name, mode)))
        except ValueError as err:
            errors.append(str(err))
    if texts:
        print("\n\n".join(texts), flush=True)
    return errors


def _sharding(args) -> Sharding | None:
    """The sharding options given (None: none, the single-process run)."""
    how = Sharding(args.workers, args.scheduler, args.shard_dir, args.shard_size)
    return None if how == Sharding() else how


def _print(text: str) -> None:
    """Write text to stdout; a reader such as `head` that stops early is no error."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _vectors(args, command: argparse.ArgumentParser) -> int:
    """`mpgrad vectors`: write TestFloat-format vectors, or check a results file (exit 0/1/2)."""
    how = _sharding(args)
    if args.check is None:
        if args.op is None or args.format is None:
            command.error("give OP and FORMAT to generate vectors, or --check FILE")
        if args.exhaustive and args.level is not None:
            command.error("--level chooses the --count cases; --exhaustive writes every case")
        path = None if args.o is None else output_path(args.o)
        options = dict(level=args.level or 1, count=args.count, exhaustive=args.exhaustive,
                       seed=args.seed)
        mode = args.mode or "nearest_even"
        if how is None:
            text = "".join(line + "\n" for line in vectors(args.op, args.format, mode, **options))
        else:
            text = vectors_text(args.op, args.format, mode, how=how, **options)
        if path is None:
            _print(text)
        else:
            atomic_write(path, lambda file: file.write(text.encode()))
        return 0
    try:
        if how is None:
            with open(args.check, encoding="ascii") as file:
                total, bad = check(file.readlines(), args.op, args.format, args.mode)
        else:
            total, bad = check_vectors(args.check, args.op, args.format, args.mode, how=how)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        print(f"mpgrad vectors: cannot check {args.check}: {err}", file=sys.stderr)
        return 2
    print(f"{total} cases, {len(bad)} mismatches")
    for m in bad[:10]:
        print(f"line {m.line_number}: {m.line}   expected {m.expected}")
    return 1 if bad else 0


def _format(text: str) -> str:
    """An argparse type: a format name (checked before any file)."""
    try:
        return as_format(text).name
    except (TypeError, ValueError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _ulps(text: str) -> float:
    """An argparse type: an accuracy in ulps, a finite number >= 0.5."""
    value = _rate(text)
    if value < 0.5:
        raise argparse.ArgumentTypeError(f"must be at least 0.5 (correctly rounded), got {text}")
    return value


def _tolerance(text: str) -> str:
    """An argparse type: a tolerance mpgrad.golden.check takes (checked before any file)."""
    try:
        parse_tolerance(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def check_table(report: Report) -> str:
    """A golden-file report as a text table, the offenders and a PASS/FAIL line."""
    rows = [(r.name, r.format, "x".join(map(str, r.shape)) or "scalar", str(r.count),
             str(r.bit_equal), str(r.within), "-" if r.max_ulps is None else str(r.max_ulps),
             " ".join(f"{k}:{n}" for k, n in r.histogram), "ok" if r.passed else "FAIL")
            for r in report.rows]
    lines = [f"golden {report.golden}, tolerance {report.tolerance}", text_table(
        ("tensor", "format", "shape", "elements", "bit-equal", "within", "max ulps",
         "ulps histogram", "result"), rows)]
    for r in report.rows:
        for o in r.offenders:
            lines.append(f"{r.name}{list(o.index)}: golden {o.golden!r} ({o.golden_bits}), "
                         f"candidate {o.candidate!r} ({o.candidate_bits}), "
                         f"{'NaN vs number' if o.ulps is None else f'{o.ulps} ulps'}")
    lines.append("PASS" if report.passed else "FAIL")
    return "\n".join(lines)


def _check(args) -> int:
    """`mpgrad check`: compare a candidate with a golden file (exit 0 pass, 1 fail, 2
    unusable input)."""
    how = _sharding(args)
    options = dict(tolerance=args.tolerance, compute=args.compute, ulps=args.ulps,
                   model=None if args.model is None else HARDWARE[args.model])
    try:
        if how is None:
            report = check_golden(args.golden, args.candidate, **options)
        else:
            report = check_golden_sharded(args.golden, args.candidate, how=how, **options)
    except OSError as err:
        print(f"mpgrad check: cannot read {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"mpgrad check: {err}", file=sys.stderr)
        return 2
    print(report.to_json() if args.json else check_table(report))
    return 0 if report.passed else 1


def _shard_options(p: argparse.ArgumentParser, size_help: str) -> None:
    """--workers, --scheduler, --shard-dir, --shard-size: the work cut into shards (run on
    Dask when --workers or --scheduler is given), with the single-process run's result."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_integer(1), metavar="N", help="run the shards on a "
                       "Dask LocalCluster of N worker processes (needs mpgrad[dask])")
    where.add_argument("--scheduler", metavar="ADDRESS", help="run the shards on the Dask "
                       "cluster at ADDRESS (its workers need mpgrad installed)")
    p.add_argument("--shard-dir", metavar="DIR", help="keep each finished shard in DIR "
                   "(created if absent); a rerun computes only the shards missing there")
    p.add_argument("--shard-size", type=_integer(1), metavar="N", help=size_help)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the mpgrad command."""
    parser = argparse.ArgumentParser(prog="mpgrad", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mpgrad {version('mpgrad')}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("formats", help="print the table of built-in number formats")
    d = sub.add_parser("describe", help="show how a value is stored in a format")
    d.add_argument("value", type=float)
    d.add_argument("format", nargs="*", default=list(FORMATS), help="formats (default: all)")
    d.add_argument("--mode", default="nearest_even", choices=MODES)
    t = sub.add_parser("train", help="train the demo MLP under one recipe")
    t.add_argument("--recipe", default="mixed_float16", choices=RECIPES)
    t.add_argument("--out", metavar="FILE.npz", help="save losses, scales and per-step "
                   "parameter hashes to this file (written atomically)")
    t.add_argument("--diagnose", action="store_true", help="run every step under "
                   "mpgrad.diagnostics.track and print its report, the loss-scale trajectory "
                   "and lost updates per parameter; with --plot, add the gradient histogram")
    _training_options(t)
    c = sub.add_parser("compare", help="train the demo MLP under several recipes, one table")
    c.add_argument("--recipes", type=_recipe_names, default=",".join(DEFAULT_RECIPES),
                   help="comma-separated recipe names (default: all built-in recipes)")
    c.add_argument("--out", metavar="DIR", help="save each run as DIR/RECIPE.npz (DIR is "
                   "created if absent)")
    _training_options(c)
    pr = sub.add_parser("probe", help="which matrix-unit presets reproduce recorded cases")
    pr.add_argument("--vectors", required=True, metavar="FILE.npz",
                    help="a, b, c, d (raw bits) and a_format, b_format, out (see "
                    "mpgrad.accumulate.probing.save_vectors)")
    v = sub.add_parser("vectors", help="TestFloat-format conformance vectors, or --check a "
                       "results file")
    v.add_argument("op", nargs="?", help="add, sub, mul, div, sqrt, fma or to:FORMAT")
    v.add_argument("format", nargs="?", help="operand format (a name, or eXmY)")
    v.add_argument("--mode", choices=DETERMINISTIC_MODES, help="rounding mode (default "
                   "nearest_even; with --check, the file's header)")
    amount = v.add_mutually_exclusive_group()
    amount.add_argument("--count", type=_integer(1), default=10_000,
                        help="cases of the --level (default 10000)")
    amount.add_argument("--exhaustive", action="store_true", help="every operand combination")
    v.add_argument("--level", type=int, choices=LEVELS, help="TestFloat's case level: 1 "
                   "(default) the special operands crossed, then random bit patterns; 2 "
                   "TestFloat's level-2 sign/exponent x significand patterns crossed, with "
                   "TestFloat-style random operands between them")
    v.add_argument("--seed", type=_integer(0), default=0)
    v.add_argument("-o", metavar="FILE", help="write to FILE (atomically) instead of stdout")
    v.add_argument("--check", metavar="FILE", help="re-compute every line of a results file")
    _shard_options(v, f"cases per shard (default {SHARD_CASES}; with --check, lines: "
                   f"{SHARD_LINES})")
    ch = sub.add_parser("check", help="compare a candidate with a golden file (exit 0 pass, "
                        "1 fail, 2 unusable input)")
    ch.add_argument("golden", metavar="GOLDEN", help="a file mpgrad.golden.record wrote")
    ch.add_argument("candidate", metavar="CANDIDATE", help="a golden-format file to check")
    ch.add_argument("--tolerance", type=_tolerance, default="bits", help="bits (bit-equal, "
                    "any NaN for a NaN), ulps=N (at most N ulps apart) or bound (within the "
                    "rigorous bound of the op the golden file records, see assert_close)")
    ch.add_argument("--compute", type=_format, help="with --tolerance bound: the format the "
                    "candidate computes in (default: the recorded one, else the output's)")
    ch.add_argument("--model", choices=sorted(HARDWARE), metavar="PRESET", help="with "
                    "--tolerance bound: the candidate's accumulation model, a hardware preset "
                    "(H100_FP16, MI300_BF16, ...; default: any order in --compute)")
    ch.add_argument("--ulps", type=_ulps, default=0.5, help="with --tolerance bound: the "
                    "accuracy of its exp/log/erf/tanh/rsqrt in ulps (default 0.5)")
    ch.add_argument("--json", action="store_true", help="print the report as JSON")
    _shard_options(ch, f"elements of a tensor per shard (default {SHARD_ELEMENTS})")
    args = parser.parse_args(argv)
    command = sub.choices[args.command]
    try:
        if args.command == "vectors":
            return _vectors(args, command)
        if args.command == "check":
            return _check(args)
        if args.command == "formats":
            print(formats_table())
        elif args.command == "describe":
            errors = _describe(args.value, args.format, args.mode)
            if errors:
                command.error("\n".join(errors))
        elif args.command == "probe":
            print(probe_table(args.vectors))
        else:
            _run(args, [args.recipe] if args.command == "train" else args.recipes)
    except (ValueError, ImportError) as err:
        command.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
