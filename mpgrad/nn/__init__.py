"""mpgrad.nn: modules, layers, initialisation and functional ops built from mpgrad primitives."""

from . import functional, init
from .layers import GELU, MLP, Dropout, LayerNorm, Linear, ReLU, Sequential
from .module import CHECKPOINT_VERSION, LoadResult, Module, load, save

__all__ = ["Module", "Linear", "ReLU", "GELU", "Sequential", "MLP", "LayerNorm", "Dropout",
           "save", "load", "LoadResult", "CHECKPOINT_VERSION", "functional", "init"]
