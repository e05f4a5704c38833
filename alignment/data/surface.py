"""Regions on the fsaverage5 cortex that nilearn ships (no download).

ROIs are placed as the vertices of the pial surface nearest to a seed coordinate (fsaverage
coordinates are close to MNI), which is enough to lay synthetic data on real anatomy and to draw
it on the inflated surface.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

HEMIS = ("left", "right")


@lru_cache(maxsize=2)
def pial_coordinates(space: str = "fsaverage5") -> dict[str, np.ndarray]:
    """Pial vertex coordinates per hemisphere, (n_vertices, 3) each."""
    from nilearn import datasets

    mesh = datasets.load_fsaverage(space)["pial"]
    return {h: np.asarray(mesh.parts[h].coordinates) for h in HEMIS}


def mirrored(seed, hemi: str) -> np.ndarray:
    """A right-hemisphere seed (positive x) moved to ``hemi``."""
    seed = np.asarray(seed, dtype=float).copy()
    seed[0] = abs(seed[0]) * (1 if hemi == "right" else -1)
    return seed


def nearest_vertices(seed, hemi: str, n: int, space: str = "fsaverage5") -> np.ndarray:
    """Indices of the ``n`` vertices of ``hemi`` nearest to ``seed`` (mirrored to that hemi)."""
    coords = pial_coordinates(space)[hemi]
    dist = np.linalg.norm(coords - mirrored(seed, hemi), axis=1)
    return np.argsort(dist, kind="stable")[:n]


def place_rois(
    mask_seeds: list, mask_radius: float, rois: dict[str, dict], space: str = "fsaverage5"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lay out an experiment's voxels: a mask of vertices plus named ROIs inside it.

    Parameters
    ----------
    mask_seeds : list of (x, y, z)
        Right-hemisphere seeds; the mask is every vertex within ``mask_radius`` mm of a seed in
        either hemisphere.
    mask_radius : float
        Radius in mm.
    rois : dict
        ROI name to {"seed": (x, y, z), "n": vertices per hemisphere, "hemis": ["left", "right"]}.
        ROIs are claimed in order; a vertex belongs to at most one ROI.

    Returns
    -------
    hemi, vertex, roi : ndarrays (n_voxels,)
    """
    coords = pial_coordinates(space)
    hemi_out, vertex_out, roi_out = [], [], []
    for hemi in HEMIS:
        dist = np.min(
            [np.linalg.norm(coords[hemi] - mirrored(s, hemi), axis=1) for s in mask_seeds], axis=0
        )
        labels = np.full(len(coords[hemi]), "none", dtype=object)
        for name, spec in rois.items():
            if hemi not in spec.get("hemis", HEMIS):
                continue
            free = nearest_vertices(spec["seed"], hemi, len(labels), space)
            free = free[labels[free] == "none"][: spec["n"]]
            labels[free] = name
        keep = np.flatnonzero((dist <= mask_radius) | (labels != "none"))
        hemi_out.append(np.full(len(keep), hemi))
        vertex_out.append(keep)
        roi_out.append(labels[keep].astype(str))
    return np.concatenate(hemi_out), np.concatenate(vertex_out), np.concatenate(roi_out)
