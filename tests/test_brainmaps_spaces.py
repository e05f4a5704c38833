"""Pictures for every space: fsaverage meshes from a FreeSurfer folder, MNI152 volumes, ROIs."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import xarray as xr

from alignment import dims
from alignment.io import InputError
from alignment.viz.brainmaps import map_kind, plot_brain_map, plot_region_chart


def _scores(n_vox, attrs, **coords):
    rng = np.random.default_rng(0)
    return xr.Dataset(
        {dims.R: ((dims.LAYER, dims.VOXEL), rng.uniform(0, 0.5, (2, n_vox)))},
        coords={dims.LAYER: ["a", "b"], **{k: (dims.VOXEL, v) for k, v in coords.items()}},
        attrs=attrs,
    )


def _fake_fsaverage(root):
    """A FreeSurfer subject folder whose surf/ holds an octahedron per hemisphere."""
    surf = root / "fsaverage" / "surf"
    surf.mkdir(parents=True)
    verts = (
        np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=float)
        * 40
    )
    faces = np.array(
        [[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]]
    )
    for h, dx in (("lh", -45), ("rh", 45)):
        nib.freesurfer.write_geometry(
            str(surf / f"{h}.inflated"), verts + np.array([dx, 0, 0]), faces
        )
        nib.freesurfer.write_morph_data(str(surf / f"{h}.sulc"), np.linspace(-1, 1, 6))
    return root / "fsaverage"


def test_fsaverage_map_reads_the_mesh_from_the_freesurfer_folder(tmp_path):
    mesh = _fake_fsaverage(tmp_path)
    hemi = np.array(["left"] * 6 + ["right"] * 6)
    vertex = np.tile(np.arange(6), 2)
    scores = _scores(12, {"space": "fsaverage", "mesh": str(mesh)}, hemi=hemi, vertex=vertex)
    assert map_kind(scores) == "surface"
    fig = plot_brain_map(scores[dims.R].values[0], scores, title="r", colorbar_label="r")
    assert len(fig.axes) == 6  # five views and a colour bar
    assert map_kind(scores.assign_attrs(mesh="")) is None  # no mesh, no ROI labels
    from alignment.viz.brainmaps import plot_surface_map

    with pytest.raises(InputError, match="need its mesh: set mesh:"):
        plot_surface_map(np.zeros(12), hemi, vertex, space="fsaverage6")
    with pytest.raises(InputError, match=r"no surf/lh\.inflated"):
        plot_surface_map(np.zeros(12), hemi, vertex, space="fsaverage", mesh=str(tmp_path))


def test_mni152_volume_gets_slices_and_a_glass_brain():
    affine = np.array([[2, 0, 0, -90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]], float)
    ijk = np.array([[30 + i, 60, 36 + j] for i in range(4) for j in range(3)])
    scores = _scores(
        12,
        {"space": "MNI152", "affine": affine.ravel(), "grid_shape": [91, 109, 91]},
        i=ijk[:, 0], j=ijk[:, 1], k=ijk[:, 2],
    )  # fmt: skip
    assert map_kind(scores) == "volume"
    # one call (nilearn's volume plots are slow): categories, drawn as codes with a legend
    cat = plot_brain_map(
        np.array([0, 1] * 6, float), scores, categorical_labels={0: "a", 1: "b"}, title="best"
    )
    assert [t.get_text() for t in cat.legends[0].get_texts()] == ["a", "b"]
    assert len(cat.axes) >= 4  # three orthogonal slices + the glass brain


def test_roi_level_data_get_a_chart_with_region_names():
    names = np.array(["lh.A1", "rh.A1", "L_IFG"])
    scores = _scores(3, {"space": "roi"}, roi=names)
    assert map_kind(scores) == "regions"
    fig = plot_brain_map(np.array([0.1, 0.3, np.nan]), scores, colorbar_label="r")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["lh.A1", "rh.A1", "L_IFG"]  # in data order, the first one on top
    widths = sorted(p.get_width() for p in fig.axes[0].patches)
    assert widths == pytest.approx([0.0, 0.1, 0.3])
    # several voxels per region (BOLD5000): the mean, with the voxel count in the label
    fig = plot_region_chart([1.0, 3.0, 5.0], ["PPA", "PPA", "LOC"])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["PPA (2)", "LOC"]
    assert sorted(p.get_width() for p in fig.axes[0].patches) == [2.0, 5.0]
