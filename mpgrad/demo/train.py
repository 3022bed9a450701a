"""The training demo: the seed article's MLP trained under a Recipe, with what went wrong
counted (skipped steps, underflowed gradients, lost updates) and every step hashed."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from .. import nn
from ..amp import GradScaler
from ..autodiff.engine import no_grad
from ..autodiff.policy import autocast
from ..autodiff.tensor import Tensor
from ..nn import functional as F
from ..diagnostics import Histogram, Report, merged, text_table, track
from ..numerics.files import atomic_write
from ..numerics.formats import float16
from ..numerics.rounding import record_rounding, to_float64
from ..optim import SGD, Adam
from .data import Dataset, load
from .recipes import Recipe, get_recipe

__all__ = ["OPTIMIZERS", "RunResult", "Trainer", "train", "param_hash", "results_table",
           "diagnosis"]


def param_hash(t: Tensor) -> int:
    """A 64-bit hash of a tensor's format name and stored bits (equal iff same bits, w.h.p.)."""
    h = hashlib.blake2b(t.dtype.name.encode() + t.data.tobytes(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


@dataclass
class RunResult:
    """Everything one training run measured; `save` writes it to an .npz file."""

    recipe: str
    data: str
    losses: np.ndarray          # the training loss of each step (its stored value)
    scales: np.ndarray          # the loss scale used at each step (1 without scaling)
    hashes: np.ndarray          # (steps, parameters) uint64: param_hash after each step
    names: list[str]            # parameter names, the columns of hashes
    test_loss: float
    accuracy: float
    skipped_steps: int
    final_scale: float
    underflows: int             # gradient roundings in backward whose nonzero value became 0
    lost_updates: int           # parameter elements whose nonzero update was rounded away
    seconds: float
    lost_by_step: np.ndarray | None = None  # (steps, parameters): lost updates of each
    grad_below: np.ndarray | None = None    # per step: see Trainer.grad_below
    report: Report | None = None            # train(diagnose=True): diagnostics.track's
    grad_histogram: Histogram | None = None  # diagnose: module-output gradients / scale

    def final_loss(self, last: int = 20) -> float:
        """The mean training loss over the last steps (NaN or inf if one of them is)."""
        return float(np.mean(self.losses[-last:]))

    def first_nonfinite(self) -> int | None:
        """The first step (counted from 1) whose loss was NaN or infinite, or None."""
        bad = np.flatnonzero(~np.isfinite(self.losses))
        return int(bad[0]) + 1 if bad.size else None

    def save(self, path: str | os.PathLike) -> None:
        """Write losses, scales, hashes and the summary numbers to an .npz file at exactly
        path (no pickle; atomic: a temporary file beside it, then renamed)."""
        arrays = dict(recipe=np.array(self.recipe), data=np.array(self.data),
                      losses=self.losses, scales=self.scales, hashes=self.hashes,
                      names=np.array(self.names), test_loss=self.test_loss,
                      accuracy=self.accuracy, skipped_steps=self.skipped_steps,
                      final_scale=self.final_scale, underflows=self.underflows,
                      lost_updates=self.lost_updates, seconds=self.seconds,
                      **{k: v for k in ("lost_by_step", "grad_below")
                         if (v := getattr(self, k)) is not None})
        atomic_write(path, lambda file: np.savez(file, **arrays))


def _evaluate(model: nn.Module, recipe: Recipe, data: Dataset) -> tuple[float, float]:
    """(test loss, accuracy) with the recipe's forward pass."""
    model.eval()
    with no_grad(), _autocast(recipe):
        logits = model(Tensor(data.x_test, recipe.param))
        loss = F.cross_entropy(logits, data.y_test).item()
    pred = np.argmax(logits.to_float64(), axis=1)
    model.train()
    return loss, float(np.mean(pred == data.y_test))


def _autocast(recipe: Recipe):
    return autocast(recipe.autocast) if recipe.autocast is not None else contextlib.nullcontext()


OPTIMIZERS = {"adam": Adam, "sgd": SGD}  # torch.optim's defaults otherwise (eps 1e-8, ...)


class Trainer:
    """The MLP (features -> hidden -> ReLU -> classes; hidden may be a tuple of widths), its
    optimizer (Adam or SGD) and loss scaler under a recipe; step() makes one update."""

    def __init__(self, recipe: Recipe | str, features: int, classes: int,
                 hidden: int | tuple = 256, lr: float = 1e-3, momentum: float = 0.0,
                 seed: int = 0, optimizer: str = "adam") -> None:
        self.recipe = recipe = get_recipe(recipe)
        widths = (hidden,) if isinstance(hidden, int) else tuple(hidden)
        self.model = nn.MLP((features, *widths, classes), dtype=recipe.param, rng=seed)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                             f"{optimizer!r}")
        if optimizer == "adam" and momentum != 0:
            raise ValueError("momentum is SGD's; Adam's moments are its betas (default)")
        extra = {"momentum": momentum} if optimizer == "sgd" else {}
        self.opt = OPTIMIZERS[optimizer](
            self.model.parameters(), lr=lr, master_dtype=recipe.master,
            update_mode=recipe.update_mode, kahan=recipe.kahan, rng=seed, **extra)
        self.scaler = GradScaler(**recipe.scaler) if recipe.scaler is not None else None

    def step(self, x: np.ndarray, y: np.ndarray) -> tuple[Tensor, float, int]:
        """One update on a batch: (the loss, the loss scale used, gradient values flushed to
        zero in the backward pass)."""
        self.opt.zero_grad()
        with _autocast(self.recipe):
            loss = F.cross_entropy(self.model(Tensor(x, self.recipe.param)), y)
        scale = self.scaler.get_scale() if self.scaler else 1.0
        with record_rounding() as stats:
            (self.scaler.scale(loss) if self.scaler else loss).backward()
        self.last_grad_below = self.grad_below(scale)
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        return loss, scale, stats.to_zero

    def grad_below(self, scale: float = 1.0, fmt=float16) -> float:
        """The fraction of the nonzero parameter-gradient values (divided by the loss scale)
        below fmt's smallest subnormal: what fmt would flush to zero (values already flushed
        in the backward pass are zeros: `RoundingStats.to_zero` counts those)."""
        grads = [g[g != 0] for p in self.model.parameters() if p.grad is not None
                 for g in [to_float64(p.grad.data)]]
        n = sum(g.size for g in grads)
        tiny = sum(int(np.count_nonzero(np.abs(g) < fmt.smallest_subnormal * scale))
                   for g in grads)
        return tiny / n if n else 0.0

    def lost_by_param(self) -> list[int]:
        """Lost updates so far of each parameter, in model.named_parameters() order."""
        return [self.opt.lost_by_param.get(p, 0) for p in self.model.parameters()]


def train(recipe: Recipe | str, steps: int = 200, batch_size: int = 128, lr: float = 1e-3,
          momentum: float = 0.0, seed: int = 0, data: Dataset | str = "synthetic",
          hidden: int | tuple = 256, progress: Callable[[int, float], None] | None = None,
          diagnose: bool = False, optimizer: str = "adam") -> RunResult:
    """Train the MLP with Adam (or SGD) under the recipe on seeded random batches (with
    replacement); diagnose: also run every step under diagnostics.track (the result's
    report and grad_histogram)."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    data = load(data, seed) if isinstance(data, str) else data
    run = Trainer(recipe, data.features, data.classes, hidden, lr, momentum, seed, optimizer)
    names = [n for n, _ in run.model.named_parameters()]
    batches = np.random.default_rng(seed + 1)
    losses, scales, below = np.empty(steps), np.ones(steps), np.empty(steps)
    hashes = np.empty((steps, len(names)), dtype=np.uint64)
    lost = np.zeros((steps + 1, len(names)), dtype=np.int64)
    underflows, start, report, grads = 0, time.perf_counter(), None, None
    for step in range(steps):
        idx = batches.integers(0, len(data.y_train), batch_size)
        with track(run.model, histograms=True) if diagnose else contextlib.nullcontext() as seen:
            loss, scales[step], flushed = run.step(data.x_train[idx], data.y_train[idx])
        if diagnose:
            report = _merged_reports(report, seen)
            grads = _merged_grads(grads, seen, scales[step])
        underflows += flushed
        losses[step], below[step] = loss.item(), run.last_grad_below
        hashes[step] = [param_hash(p) for p in run.model.parameters()]
        lost[step + 1] = run.lost_by_param()
        if progress is not None:
            progress(step + 1, losses[step])
    seconds = time.perf_counter() - start
    test_loss, accuracy = _evaluate(run.model, run.recipe, data)
    scaler = run.scaler
    return RunResult(run.recipe.name, data.name, losses, scales, hashes, names, test_loss,
                     accuracy, scaler.skipped_steps if scaler else 0,
                     scaler.get_scale() if scaler else 1.0, underflows, run.opt.lost_updates,
                     seconds, np.diff(lost, axis=0), below, report, grads)


def _merged_reports(total: Report | None, step: Report) -> Report:
    """The counts of two tracked blocks together, and the first non-finite result of both."""
    if total is None:
        return step
    for key, counts in step.counts.items():
        total.counts.setdefault(key, type(counts)()).add(counts)
    total.first_nonfinite = total.first_nonfinite or step.first_nonfinite
    return total


def _merged_grads(total: Histogram | None, step: Report, scale: float) -> Histogram | None:
    """All module outputs' gradient histograms of a step, divided by its loss scale, added."""
    for slot in step.histograms.values():
        if "grad" in slot:
            h = slot["grad"].scaled(1 / scale)
            total = h if total is None else merged(total, h)
    return None if total is None else replace(total, name="module-output gradients / scale")


def _final_loss_cell(r: RunResult) -> str:
    """The final loss, and the first non-finite loss with its step if there was one."""
    step = r.first_nonfinite()
    tail = "" if step is None else f" (first {r.losses[step - 1]:.4f} at step {step})"
    return f"{r.final_loss():.4f}{tail}"


def results_table(results: list[RunResult]) -> str:
    """The comparison table printed by `mpgrad compare`."""
    head = ("recipe", "final loss", "test loss", "accuracy", "skipped", "loss scale",
            "grad underflows", "lost updates", "time [s]")
    return text_table(head, [(r.recipe, _final_loss_cell(r), f"{r.test_loss:.4f}",
                      f"{100 * r.accuracy:.1f}%", str(r.skipped_steps), f"{r.final_scale:g}",
                      str(r.underflows), str(r.lost_updates), f"{r.seconds:.1f}")
                     for r in results], right=True)


def diagnosis(r: RunResult) -> str:
    """What `mpgrad train --diagnose` prints after the table: the loss-scale trajectory,
    lost updates per parameter, gradient values below float16's floor, the track report."""
    changes = np.flatnonzero(np.diff(r.scales)) + 1
    trajectory = ", ".join([f"{r.scales[0]:g} at step 1"] + [f"{r.scales[i]:g} at step {i + 1}"
                                                              for i in changes[:12]])
    more = f" (and {len(changes) - 12} more changes)" if len(changes) > 12 else ""
    lost = text_table(("parameter", "lost updates", "in the last step"), [
        (n, str(int(r.lost_by_step[:, i].sum())), str(int(r.lost_by_step[-1, i])))
        for i, n in enumerate(r.names)], right=True)
    lines = [f"{r.recipe}: loss scale {trajectory}{more}", lost,
             f"nonzero parameter-gradient values below float16's smallest subnormal (after "
             f"unscaling): {100 * r.grad_below.mean():.2f}% on average, "
             f"{100 * r.grad_below[-1]:.2f}% in the last step"]
    if r.report is not None:
        lines.append(r.report.summary())
    return "\n".join(lines)
