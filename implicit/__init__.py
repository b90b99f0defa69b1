"""Implicit differentiation of inner solves and bilevel solvers.

- `inner_solver`: run any optax/gradkit transformation on an inner objective
  and differentiate its solution implicitly (jaxopt-backed custom_root) or by
  unrolling; `implicit_root` / `implicit_fixed_point` attach the implicit
  rule to any solver; `linear_solver` picks CG, normal CG, GMRES or a
  Neumann series.
- `implicit_hypergradient`: ∇ₓf(x, y*(x)) with the inner Hessian only through
  Hessian-vector products.
- Bilevel solvers with one interface (`BilevelSolver`: init, update, run):
  `bo_rep`, `penalty_method`, `lv_hba`.

jaxopt is imported only in `gradkit.implicit._backend`. The hypergradient
learning-rate transformation is `gradkit.transforms.scale_by_hypergradient_lr`.
"""

from gradkit import _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    {
        "bilevel_solver": ["BilevelSolver"],
        "bo_rep": ["BoRepState", "bo_rep"],
        "hypergradient": [
            "HypergradientInfo", "check_bilevel_objectives", "implicit_hypergradient",
        ],
        "inner_solve": ["InnerInfo", "inner_solver"],
        "linear_solve": ["linear_solver", "solve_neumann"],
        "lv_hba": ["LvHbaState", "lv_hba"],
        "penalty": ["PenaltyState", "penalty_method"],
        "root": ["implicit_fixed_point", "implicit_root"],
    },
)
