"""Implicit differentiation and bilevel solvers (issue 7: not built yet)."""
