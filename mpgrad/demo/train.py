"""The training demo: the seed article's MLP trained under a Recipe, with what went wrong
counted (skipped steps, underflowed gradients, lost updates) and every step hashed."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import nn
from ..amp import GradScaler
from ..autodiff.engine import no_grad
from ..autodiff.policy import autocast
from ..autodiff.tensor import Tensor
from ..nn import functional as F
from ..numerics.files import atomic_write
from ..numerics.rounding import record_rounding
from ..optim import SGD
from .data import Dataset, load
from .recipes import Recipe, get_recipe
from .table import text_table

__all__ = ["RunResult", "Trainer", "train", "param_hash", "results_table"]


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
                      lost_updates=self.lost_updates, seconds=self.seconds)
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


class Trainer:
    """The MLP (features -> hidden -> ReLU -> classes), its SGD optimizer and loss scaler
    under a recipe; step() makes one update."""

    def __init__(self, recipe: Recipe | str, features: int, classes: int, hidden: int = 500,
                 lr: float = 0.01, momentum: float = 0.0, seed: int = 0) -> None:
        self.recipe = recipe = get_recipe(recipe)
        self.model = nn.MLP((features, hidden, classes), dtype=recipe.param, rng=seed)
        self.opt = SGD(self.model.parameters(), lr=lr, momentum=momentum,
                       master_dtype=recipe.master, update_mode=recipe.update_mode,
                       kahan=recipe.kahan, rng=seed)
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
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        return loss, scale, stats.to_zero


def train(recipe: Recipe | str, steps: int = 300, batch_size: int = 128, lr: float = 0.01,
          momentum: float = 0.0, seed: int = 0, data: Dataset | str = "auto",
          hidden: int = 500, progress: Callable[[int, float], None] | None = None) -> RunResult:
    """Train the MLP with SGD under the recipe on seeded random batches (with replacement)."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    data = load(data, seed) if isinstance(data, str) else data
    run = Trainer(recipe, data.features, data.classes, hidden, lr, momentum, seed)
    names = [n for n, _ in run.model.named_parameters()]
    batches = np.random.default_rng(seed + 1)
    losses, scales = np.empty(steps), np.ones(steps)
    hashes = np.empty((steps, len(names)), dtype=np.uint64)
    underflows, start = 0, time.perf_counter()
    for step in range(steps):
        idx = batches.integers(0, len(data.y_train), batch_size)
        loss, scales[step], flushed = run.step(data.x_train[idx], data.y_train[idx])
        underflows += flushed
        losses[step] = loss.item()
        hashes[step] = [param_hash(p) for p in run.model.parameters()]
        if progress is not None:
            progress(step + 1, losses[step])
    seconds = time.perf_counter() - start
    test_loss, accuracy = _evaluate(run.model, run.recipe, data)
    scaler = run.scaler
    return RunResult(run.recipe.name, data.name, losses, scales, hashes, names, test_loss,
                     accuracy, scaler.skipped_steps if scaler else 0,
                     scaler.get_scale() if scaler else 1.0, underflows, run.opt.lost_updates,
                     seconds)


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
