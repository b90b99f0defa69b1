"""Named optimizers: short recipes chaining gradkit/optax primitives."""

from gradkit import _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    {
        "adabelief": ["adabelief"],
        "adamp": ["adamp", "sgdp"],
        "adan": ["adan"],
        "apollo": ["apollo", "apollo_mini"],
        "baselines": ["adamw", "sgd"],
        "coordinate_clipping": ["adam_clip", "sgd_clip"],
        "cosmos": ["cosmos"],
        "diffgrad": ["diffgrad"],
        "eight_bit": ["adabelief8bit", "adam8bit", "adamw8bit", "lion8bit", "momentum8bit"],
        "frugal": ["frugal"],
        "frugal_subsets": ["frugal_block", "frugal_coord"],
        "galore": ["galore", "natural_galore"],
        "large_batch": ["lamb", "lars"],
        "lion": ["lion"],
        "matrix_labels": ["matrix_labels"],
        "muon": ["muon"],
        "sara": ["sara"],
        "scale": ["scale"],
        "sgd_sai": ["sgd_sai"],
        "sinkgd": ["sinkgd"],
        "swan": ["swan"],
        "trained_rank_pruning": ["trp", "trp_labels"],
        "zeroth_order": ["MezoStep", "matrices_only", "mezo", "mezo_step", "sparse_mezo"],
    },
)
