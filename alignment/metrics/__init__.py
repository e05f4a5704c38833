"""Scores, noise ceilings and statistics shared by every encoder (DESIGN.md section 5)."""

from alignment.metrics.bootstrap import ROIBootstrap, bootstrap_roi_means
from alignment.metrics.ceilings import (
    NCSNRCeiling,
    NormalisedScores,
    SplitHalfCeiling,
    algonauts_score,
    isc_ceiling,
    ncsnr_ceiling,
    normalised_scores,
    split_half_ceiling,
)
from alignment.metrics.correlation import foldwise, pearson_r, r2_score
from alignment.metrics.rsa import (
    RDMCeiling,
    compare_rdms,
    kendall_tau_a,
    linear_cka,
    rdm,
    rdm_noise_ceiling,
    rdm_permutation_test,
)
from alignment.metrics.stats import PermutationResult, fdr_bh, permutation_null

__all__ = [
    "NCSNRCeiling",
    "NormalisedScores",
    "PermutationResult",
    "RDMCeiling",
    "ROIBootstrap",
    "SplitHalfCeiling",
    "algonauts_score",
    "bootstrap_roi_means",
    "compare_rdms",
    "fdr_bh",
    "foldwise",
    "isc_ceiling",
    "kendall_tau_a",
    "linear_cka",
    "ncsnr_ceiling",
    "normalised_scores",
    "pearson_r",
    "permutation_null",
    "r2_score",
    "rdm",
    "rdm_noise_ceiling",
    "rdm_permutation_test",
    "split_half_ceiling",
]
