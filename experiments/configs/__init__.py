"""`ml_collections` config files for `python -m gradkit.experiments --config=...`."""
