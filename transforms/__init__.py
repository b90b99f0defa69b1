"""Primitives: small optax transformations, one concern each."""

from gradkit import _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    {
        "apollo": [
            "LimitNormGrowthState", "ScaleByApolloRatiosState", "limit_norm_growth",
            "scale_by_apollo", "scale_by_apollo_ratios",
        ],
        "coordinate_clipping": [
            "clip_coordinates_top_fraction", "scale_by_adam_clipped_first_moment",
        ],
        "cosmos": ["ScaleByCosmosState", "scale_by_cosmos"],
        "dice_sgd": ["DiceSgdAggregateState", "dice_sgd", "dice_sgd_aggregate", "dp_sgd"],
        "distributed_spsa": ["DistributedSpsaInfo", "distributed_spsa_step"],
        "estimator_mixing": [
            "mix_gradients", "mixing_weight_from_samples", "mse_optimal_mixing_weight",
        ],
        "fedhyper": [
            "EstimateFedHyperLocalLrState", "ScaleByFedHyperClientLrState",
            "ScaleByFedHyperGlobalState", "estimate_fedhyper_local_lr",
            "scale_by_fedhyper_client_lr", "scale_by_fedhyper_global",
        ],
        "float_leaves": ["float_leaves_only"],
        "friction": ["ScaleByFrictionState", "scale_by_friction"],
        "gsnr_scaling": ["scale_by_gsnr_at_init"],
        "guard": ["GuardState", "guard"],
        "hypergradient": ["ScaleByHypergradientLrState", "scale_by_hypergradient_lr"],
        "igt": [
            "ScaleByHarpgState", "ScaleByNormalizedIgtState", "scale_by_harpg",
            "scale_by_normalized_igt",
        ],
        "loss_aware_partition": [
            "PARAMETER_FUNCTION_ARGS", "loss_aware", "masked", "multi_transform", "partition",
        ],
        "low_rank": [
            "LowRankProjectorState", "ProjectLowRankState", "make_projector", "project",
            "project_back", "project_low_rank",
        ],
        "matrix_view": ["as_matrix", "check_matrix"],
        "moments": [
            "EmaFromFirstUpdateState", "ScaleByAdanOfficialState", "debiased_ema",
            "ema_from_first_update", "scale_by_adabelief", "scale_by_adam_eps_before_correction",
            "scale_by_adam_lookahead", "scale_by_adan_official", "scale_by_rectified_belief",
            "trace_with_dampening",
        ],
        "natural_gradient": ["PreconditionNaturalFisherState", "precondition_natural_fisher"],
        "newton_schulz": [
            "newton_schulz_orthogonalize", "newton_schulz_whiten", "orthogonalize_newton_schulz",
            "whiten_newton_schulz",
        ],
        "normalization": [
            "normalize_axis", "normalize_sinkhorn", "rms_normalize", "sinkhorn_normalize",
        ],
        "nuclear_norm": ["add_nuclear_norm_subgradient", "nuclear_norm_subgradient"],
        "one_byte": ["one_byte_decode", "one_byte_encode"],
        "optimistic": [
            "OptimisticMultiplicativeWeightsState", "optimistic_multiplicative_weights",
            "scale_by_optimistic_omd",
        ],
        "quantization": ["dequantize_blockwise", "dynamic_map", "quantize_blockwise"],
        "quantized_state": [
            "NothingQuantizedWarning", "PlanEntry", "QuantizedArray", "QuantizedState",
            "quantization_plan", "quantized", "quantized_view",
        ],
        "radial_projection": ["ProjectRadialState", "project_radial"],
        "sara": ["RestrictToSmallWeightsState", "restrict_to_small_weights"],
        "sign_momentum": ["scale_by_sign_momentum"],
        "trained_rank_pruning": [
            "ProjectTrainedRankState", "project_trained_rank", "truncation_mask",
        ],
        "tree_checks": ["check_updates_match_params"],
        "variance_modulation": [
            "ScaleByAgvmState", "module_dissimilarity", "precondition_like_adam", "scale_by_agvm",
        ],
        "zeroth_order": [
            "EstimateSpsaGradientState", "estimate_spsa_gradient", "small_magnitude_mask",
            "spsa_gradient",
        ],
    },
)
