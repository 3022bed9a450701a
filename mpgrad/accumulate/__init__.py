"""The accumulation layer: how a dot product or a sum is added up (models as data), the
drivers that apply a model to matrix products and sums, hardware presets and error bounds."""

from . import hardware, software
from .blockfma import BlockFMA
from .bounds import accumulation_error_bound
from .drivers import check_inputs, default_model, dot, matmul_model, products, reduce_sum
from .hardware import HARDWARE
from .mma import mma
from .models import MODELS, Chunked, Exact, Model, Pairwise, Sequential, Tree, error_bound
from .order import summation_tree
from .probing import ProbeError, ProbeResult, probe

__all__ = ["Exact", "Sequential", "Pairwise", "Chunked", "BlockFMA", "Tree", "Model", "MODELS",
           "hardware", "software", "HARDWARE", "dot", "matmul_model", "reduce_sum", "default_model",
           "check_inputs", "products", "error_bound", "accumulation_error_bound", "mma",
           "summation_tree", "probe", "ProbeResult", "ProbeError"]
