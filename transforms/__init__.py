"""Primitives: small optax transformations, one concern each."""

from gradkit.transforms.tree_checks import check_updates_match_params
