"""Brain maps on the fsaverage surface and layer profiles, drawn from Scores objects."""

from alignment.viz.brainmaps import (
    baseline_label,
    best_layer_values,
    check_scores,
    figure_to_base64_png,
    is_untrained,
    plot_surface_map,
    roi_groups,
    scores_title,
)
from alignment.viz.profiles import plot_layer_profiles, roi_layer_profile

__all__ = [
    "baseline_label",
    "best_layer_values",
    "check_scores",
    "figure_to_base64_png",
    "is_untrained",
    "plot_layer_profiles",
    "plot_surface_map",
    "roi_groups",
    "roi_layer_profile",
    "scores_title",
]
