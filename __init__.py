"""gradkit: composable optax gradient transformations for optimizer research.

Every public name is imported on first use (PEP 562, see `gradkit._lazy`):
`import gradkit` loads no submodule, so jax, flax, jaxopt and scipy are
imported only by the parts that need them.
"""

from gradkit import _lazy

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    {
        "hyperparams": ["inject_hyperparams"],
        "memory": ["state_nbytes", "state_nbytes_breakdown"],
        "registry": ["create", "names"],
        "transforms.guard": ["guard"],
        "transforms.loss_aware_partition": ["loss_aware", "masked", "multi_transform", "partition"],
    },
    [
        "batch_size",
        "column_row_sampling",
        "flax_helpers",
        "implicit",
        "layers",
        "optimizers",
        "privacy",
        "regularizers",
        "schedules",
        "second_order",
        "transforms",
    ],
    discover=False,
)
