"""Curvature: products with the Hessian, diagonal estimators, and the optimizers built on them."""

from gradkit import _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    {
        "adahessian": ["adahessian", "scale_by_adahessian"],
        "approx_newton": ["approx_newton", "scale_by_approx_newton"],
        "hutchinson": ["estimate_hutchinson_diagonal", "hutchinson_diagonal", "spatial_average"],
        "lanczos": ["lanczos_quadrature", "spectral_density", "top_eigenvalue"],
        "mfac": ["mfac", "mfac_inverse_product", "precondition_mfac"],
        "operators": ["empirical_fisher_operator", "gauss_newton_operator", "hessian_operator"],
        "products": ["gauss_newton_vector_product", "hessian_vector_product"],
        "sophia": [
            "estimate_gauss_newton_bartlett_diagonal", "sampled_cross_entropy", "sophia",
            "sophia_g",
        ],
    },
)
