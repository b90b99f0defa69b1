"""Alias of `gradkit.curvature_products`, kept for imports written against it.

The curvature-vector products live at the bottom of the package, in
`gradkit.curvature_products`, so that transforms, second-order methods and
implicit differentiation can all use them without importing one another.
"""

from gradkit.curvature_products import gauss_newton_vector_product, hessian_vector_product

__all__ = ["gauss_newton_vector_product", "hessian_vector_product"]
