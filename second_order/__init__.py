"""Curvature estimators and the optimizers that use them (issue 5: not built yet)."""
