"""Loss scaling: torch-style GradScaler and jmp-style immutable loss scales (docs/amp.md)."""

from .grad_scaler import GradScaler, OptState, unscale_values, update_scale
from .loss_scale import (DynamicLossScale, LossScale, NoOpLossScale, StaticLossScale,
                         all_finite, select_tree, tree_map)

__all__ = ["GradScaler", "OptState", "unscale_values", "update_scale", "NoOpLossScale",
           "StaticLossScale", "DynamicLossScale", "LossScale", "all_finite", "select_tree",
           "tree_map"]
