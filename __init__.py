"""gradkit: composable optax gradient transformations for optimizer research."""

from gradkit import implicit, layers, optimizers, second_order, transforms
from gradkit.memory import state_nbytes
from gradkit.registry import create, names

__all__ = [
    "create",
    "implicit",
    "layers",
    "names",
    "optimizers",
    "second_order",
    "state_nbytes",
    "transforms",
]
__version__ = "0.1.0"
