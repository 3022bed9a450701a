"""Precision recipes for training, as data: where parameters live, what computes in which
format, how the update is rounded and whether the loss is scaled (docs/training.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..numerics.formats import Format, as_format

__all__ = ["Recipe", "RECIPES", "DEFAULT_RECIPES", "get_recipe"]


@dataclass(frozen=True)
class Recipe:
    """One way to train in mixed precision.

    param: the format the model's parameters (and the data fed to it) are stored in.
    autocast: None (every op promotes from its inputs, so a float16 model computes in
      float16 throughout, loss included) or a format for mpgrad.autocast (matmuls in it,
      softmax/loss in float32, as torch.autocast).
    master: None, or the format of the optimizer's master copy of the weights.
    update_mode: how the new parameter value is rounded ("nearest_even"/"stochastic").
    kahan: Kahan-compensated parameter updates (a compensation buffer in param format).
    scaler: None (no loss scaling), or GradScaler keyword arguments (dynamic scaling).
    """

    name: str
    description: str
    param: Format | str = "float32"
    autocast: Format | str | None = None
    master: Format | str | None = None
    update_mode: str = "nearest_even"
    kahan: bool = False
    scaler: dict | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "param", as_format(self.param))
        for name in ("autocast", "master"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, as_format(getattr(self, name)))


RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("fp32", "everything in float32: the baseline"),
    Recipe("seed_naive_fp16", "the seed article's literal pipeline: weights, activations, "
           "gradients, loss and update all float16, no loss scaling", param="float16"),
    Recipe("mixed_float16", "float32 weights (the master copy), float16 matmuls via "
           "autocast, float32 softmax/loss, dynamic loss scaling (torch AMP)",
           autocast="float16", scaler={}),
    Recipe("mixed_bfloat16", "float32 weights, bfloat16 matmuls via autocast, no loss "
           "scaling (bfloat16 has float32's range)", autocast="bfloat16"),
    Recipe("pure_bfloat16", "weights, activations, gradients and update in bfloat16, "
           "updates rounded to nearest", param="bfloat16"),
    Recipe("bfloat16_stochastic", "pure bfloat16 with stochastically rounded updates",
           param="bfloat16", update_mode="stochastic"),
    Recipe("bfloat16_kahan", "pure bfloat16 with Kahan-compensated updates",
           param="bfloat16", kahan=True),
]}

DEFAULT_RECIPES = ("fp32", "seed_naive_fp16", "mixed_float16", "mixed_bfloat16",
                   "pure_bfloat16", "bfloat16_stochastic", "bfloat16_kahan")


def get_recipe(recipe: Recipe | str) -> Recipe:
    """A Recipe, or a built-in one by name (the error lists the names)."""
    if isinstance(recipe, Recipe):
        return recipe
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    return RECIPES[recipe]
