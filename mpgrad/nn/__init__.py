"""mpgrad.nn: modules, layers, initialisation and functional ops built from mpgrad primitives."""

from . import functional, init
from .layers import GELU, MLP, Dropout, LayerNorm, Linear, ReLU, Sequential
from .checkpoint import CHECKPOINT_VERSION, load, save
from .module import LoadResult, Module

__all__ = ["Module", "Linear", "ReLU", "GELU", "Sequential", "MLP", "LayerNorm", "Dropout",
           "save", "load", "LoadResult", "CHECKPOINT_VERSION", "functional", "init"]
