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
from alignment.metrics.stats import PermutationResult, fdr_bh, permutation_null

__all__ = [
    "NCSNRCeiling",
    "NormalisedScores",
    "PermutationResult",
    "ROIBootstrap",
    "SplitHalfCeiling",
    "algonauts_score",
    "bootstrap_roi_means",
    "fdr_bh",
    "foldwise",
    "isc_ceiling",
    "ncsnr_ceiling",
    "normalised_scores",
    "pearson_r",
    "permutation_null",
    "r2_score",
    "split_half_ceiling",
]
