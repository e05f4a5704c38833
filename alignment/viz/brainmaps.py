"""Brain maps on the fsaverage5 inflated surface, and helpers over Scores objects.

Maps are drawn with plain matplotlib. Once per view, the mesh's faces that face the camera are
painted back to front (flat-shaded by the angle to the viewer, as
``nilearn.plotting.plot_surf`` does with the matplotlib engine) into a cached image of face
indices; each map then colours the faces and shows the result with ``imshow``. A five-view
map thus takes a fraction of a second, which matters because a report draws dozens of them.
Only the vertices that carry data are coloured; the rest of the mesh shows the sulcal depth in
grey, so "no data" never looks like "zero".

The Scores helpers (:func:`check_scores`, :func:`roi_groups`, :func:`is_untrained`, ...) are
shared by :mod:`alignment.viz.profiles` and :mod:`alignment.report`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io as _io
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import xarray as xr
from matplotlib import colors as mcolors
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from alignment import dims
from alignment.io import InputError, atomic_path

__all__ = [
    "ALL_VOXELS",
    "baseline_label",
    "best_layer_values",
    "check_scores",
    "figure_to_base64_png",
    "is_untrained",
    "layer_names",
    "plot_surface_map",
    "roi_groups",
    "scores_title",
]

#: Group label used when a Scores object has no ROI other than ``dims.NO_ROI``.
ALL_VOXELS = "all"

#: Surface spaces: fsaverage5 comes with nilearn (offline); fsaverage6 and fsaverage are read
#: from a FreeSurfer folder named by the dataset's ``mesh`` (nothing is downloaded).
SURFACE_SPACES = ("fsaverage5", "fsaverage6", "fsaverage")
_OFFLINE_SPACES = ("fsaverage5",)

#: Spaces that get a picture: surfaces, volumes (stat map and glass brain) and ROI-level data
#: (a per-region chart).
SUPPORTED_SPACES = (*SURFACE_SPACES, "MNI152", "native", "roi")

HEMIS = ("left", "right")

# view name -> (hemispheres drawn, camera forward direction, camera up direction), in RAS.
_VIEWS = {
    "left lateral": (("left",), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "right lateral": (("right",), (-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "left medial": (("left",), (-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "right medial": (("right",), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "ventral": (("left", "right"), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0)),
}
_GRID_VIEWS = ("left lateral", "right lateral", "left medial", "right medial")
_VENTRAL_GAP = 6.0  # mm between the two hemispheres in the ventral view
_MAX_LEGEND_ENTRIES = 12
_PX_PER_MM = 2.4  # resolution of the cached face-index images (about 2x the shown size)
_RENDER_VERSION = 1  # bump when _view_geometry or _face_id_image change what they compute


# --------------------------------------------------------------------------------------------
# Scores helpers


def check_scores(
    scores: xr.Dataset,
    variables: Sequence[str] = (dims.R,),
    coords: Sequence[str] = (),
    what: str = "this step",
) -> xr.Dataset:
    """Raise :class:`~alignment.io.InputError` unless ``scores`` holds what a step needs.

    Parameters
    ----------
    scores : xarray.Dataset
        A Scores object (dims ``layer``, ``voxel``).
    variables : sequence of str
        Data variables that must be present.
    coords : sequence of str
        Coordinates that must be present.
    what : str
        The step that needs them, named in the message.

    Returns
    -------
    xarray.Dataset
        ``scores``, unchanged.
    """
    if not isinstance(scores, xr.Dataset):
        raise InputError(f"{what} needs a Scores xarray.Dataset, got {type(scores).__name__}")
    ident = _identity(scores)
    missing_dims = [d for d in (dims.LAYER, dims.VOXEL) if d not in scores.dims]
    if missing_dims:
        raise InputError(
            f"Scores {ident}: {what} needs dims (layer, voxel); missing {missing_dims}, "
            f"found {list(scores.dims)}"
        )
    missing = [v for v in variables if v not in scores.data_vars]
    if missing:
        raise InputError(
            f"Scores {ident}: {what} needs variable(s) {missing}; the object holds "
            f"{sorted(scores.data_vars)}"
        )
    missing = [c for c in coords if c not in scores.coords]
    if missing:
        raise InputError(
            f"Scores {ident}: {what} needs coordinate(s) {missing}; the object holds "
            f"{sorted(scores.coords)}"
        )
    return scores


def _identity(scores: xr.Dataset) -> str:
    keys = ("dataset", "subject", "model", "encoder")
    parts = [f"{k}={scores.attrs[k]}" for k in keys if k in scores.attrs]
    return "(" + ", ".join(parts) + ")" if parts else "(no provenance attrs)"


def is_untrained(scores: xr.Dataset) -> bool:
    """True when the Scores come from an untrained (random-init) model (attr ``untrained``)."""
    value = scores.attrs.get("untrained", 0)
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes"}
    try:
        return bool(int(np.asarray(value).item()))
    except (TypeError, ValueError):
        return bool(value)


def baseline_label(scores: xr.Dataset) -> str:
    """How a baseline model is flagged: a random-feature control or an untrained network."""
    if str(scores.attrs.get("control", "")).strip() not in ("", "0"):
        return "RANDOM-FEATURE CONTROL"
    return "UNTRAINED (random init)"


def scores_title(scores: xr.Dataset) -> str:
    """One-line label: ``model · encoder · dataset · sub-XX``, flagging untrained models."""
    a = scores.attrs
    model = str(a.get("model", "model?"))
    if is_untrained(scores):
        model += f" [{baseline_label(scores)}]"
    parts = [model, str(a.get("encoder", "encoder?")), str(a.get("dataset", "dataset?"))]
    if "subject" in a:
        parts.append(f"sub-{a['subject']}")
    return " · ".join(parts)


def _sorted_by_layer(scores: xr.Dataset) -> xr.Dataset:
    """Scores with layers in model order (by ``layer_index`` when present)."""
    if "layer_index" in scores.coords:
        order = np.argsort(np.asarray(scores["layer_index"].values), kind="stable")
        if not np.array_equal(order, np.arange(order.size)):
            scores = scores.isel({dims.LAYER: order})
    return scores


def layer_names(scores: xr.Dataset) -> list[str]:
    """Layer names in model order."""
    return [str(v) for v in _sorted_by_layer(scores)[dims.LAYER].values]


def _layer_indices(scores: xr.Dataset) -> np.ndarray:
    if "layer_index" in scores.coords:
        return np.asarray(scores["layer_index"].values).astype(int)
    return np.arange(scores.sizes[dims.LAYER])


def _fdr_alpha(scores: xr.Dataset, alpha: float | None) -> float:
    if alpha is not None:
        return float(alpha)
    return float(scores.attrs.get("fdr_alpha", 0.05))


def roi_groups(scores: xr.Dataset) -> dict[str, np.ndarray]:
    """ROI name -> boolean voxel mask, in order of first appearance, without ``none``.

    When no voxel carries an ROI label (or the ``roi`` coordinate is absent), one group
    :data:`ALL_VOXELS` with every voxel is returned, so profiles and tables are never empty.
    """
    n = scores.sizes[dims.VOXEL]
    if dims.ROI not in scores.coords:
        return {ALL_VOXELS: np.ones(n, bool)}
    labels = np.asarray(scores[dims.ROI].values).astype(str)
    names = [str(x) for x in dict.fromkeys(labels.tolist()) if x != dims.NO_ROI]
    if not names:
        return {ALL_VOXELS: np.ones(n, bool)}
    return {name: labels == name for name in names}


def best_layer_values(scores: xr.Dataset, alpha: float | None = None) -> xr.DataArray:
    """Per voxel, the ``layer_index`` of the layer with the highest r, NaN where not significant.

    Parameters
    ----------
    scores : xarray.Dataset
        Scores with variables ``r`` and ``q`` (layer, voxel).
    alpha : float, optional
        FDR level; defaults to the attr ``fdr_alpha`` (0.05 when absent). A voxel counts as
        significant when ``q < alpha`` in at least one layer.

    Returns
    -------
    xarray.DataArray
        Float (voxel,) array named ``best_layer`` with the Scores' voxel coordinates: the
        ``layer_index`` of ``argmax_layer r`` for voxels significant in any layer, NaN for the
        others (and for voxels whose r is NaN in every layer). ``attrs["layer_names"]`` maps the
        index back to names (list in index order).
    """
    check_scores(scores, (dims.R, dims.Q), what="best_layer_values")
    scores = _sorted_by_layer(scores)
    level = _fdr_alpha(scores, alpha)
    r = scores[dims.R].transpose(dims.LAYER, dims.VOXEL).values.astype(float)
    q = scores[dims.Q].transpose(dims.LAYER, dims.VOXEL).values.astype(float)
    finite = np.isfinite(r)
    any_finite = finite.any(axis=0)
    best = np.argmax(np.where(finite, r, -np.inf), axis=0)
    significant = (q < level).any(axis=0) & any_finite
    index = _layer_indices(scores)
    out = np.where(significant, index[best].astype(float), np.nan)
    voxel_coords = {
        name: coord for name, coord in scores.coords.items() if coord.dims == (dims.VOXEL,)
    }
    return xr.DataArray(
        out,
        dims=(dims.VOXEL,),
        coords=voxel_coords,
        name="best_layer",
        attrs={"fdr_alpha": level, "layer_names": layer_names(scores)},
    )


# --------------------------------------------------------------------------------------------
# Rendering


def _surf_dir(mesh: str):
    """The ``surf`` folder of a FreeSurfer subject (``mesh`` is the subject or its surf/)."""
    from pathlib import Path

    path = Path(mesh)
    for cand in (path / "surf", path):
        if (cand / "lh.inflated").exists() and (cand / "rh.inflated").exists():
            return cand
    raise InputError(
        f"{mesh}: no surf/lh.inflated and surf/rh.inflated; mesh: must name a FreeSurfer "
        "subject folder (e.g. $SUBJECTS_DIR/fsaverage) or its surf/ folder"
    )


@functools.lru_cache(maxsize=4)
def _mesh(
    space: str, mesh: str | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """hemi -> (inflated coordinates, faces, sulcal depth).

    fsaverage5 comes with nilearn; other surfaces are read from the FreeSurfer folder ``mesh``
    (``surf/{lh,rh}.inflated`` and, when present, ``surf/{lh,rh}.sulc``).
    """
    if space not in SURFACE_SPACES:
        raise ValueError(f"surface maps are drawn on {SURFACE_SPACES}; got space={space!r}")
    out = {}
    if mesh is None:
        if space not in _OFFLINE_SPACES:
            raise InputError(
                f"brain maps on {space} need its mesh: set mesh: in the dataset entry to a "
                "FreeSurfer folder with surf/lh.inflated (nilearn ships only fsaverage5 offline)"
            )
        from nilearn import datasets

        inflated = datasets.load_fsaverage(space)["inflated"]
        sulc = datasets.load_fsaverage_data(space, mesh_type="inflated", data_type="sulcal")
        for hemi in HEMIS:
            part = inflated.parts[hemi]
            out[hemi] = (
                np.asarray(part.coordinates, dtype=float),
                np.asarray(part.faces, dtype=np.int64),
                np.asarray(sulc.data.parts[hemi], dtype=float).ravel(),
            )
        return out
    import nibabel as nib

    surf = _surf_dir(mesh)
    for hemi, short in (("left", "lh"), ("right", "rh")):
        coords, faces = nib.freesurfer.read_geometry(str(surf / f"{short}.inflated"))
        sulc_path = surf / f"{short}.sulc"
        sulc = (
            np.asarray(nib.freesurfer.read_morph_data(str(sulc_path)), dtype=float)
            if sulc_path.exists()
            else np.zeros(len(coords))
        )
        out[hemi] = (np.asarray(coords, dtype=float), np.asarray(faces, dtype=np.int64), sulc)
    return out


@functools.lru_cache(maxsize=16)
def _view_geometry(space: str, view: str, mesh: str | None = None):
    """Camera-facing faces of one view, sorted back to front.

    Returns ``(polygons (n, 3, 2), faces (n, 3) into the concatenated [left, right] vertex
    array, shade (n,), background grey (n,), xlim, ylim, hemisphere label positions)``.
    """
    surface = _mesh(space, mesh)
    hemis, forward, up = _VIEWS[view]
    forward = np.asarray(forward)
    up = np.asarray(up)
    right = np.cross(forward, up)
    offsets = {"left": 0, "right": surface["left"][0].shape[0]}
    polys, faces, shade, grey, labels = [], [], [], [], []
    for hemi in hemis:
        coords, tri, sulc = surface[hemi]
        coords = coords.copy()
        if len(hemis) == 2:  # both hemispheres in one view: set them side by side
            if hemi == "left":
                coords[:, 0] -= coords[:, 0].max() + _VENTRAL_GAP / 2
            else:
                coords[:, 0] -= coords[:, 0].min() - _VENTRAL_GAP / 2
        xy = coords @ np.stack([right, up]).T
        corners = coords[tri]
        normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-12
        facing = -(normal @ forward)
        keep = facing > 0
        depth = -(corners.mean(axis=1) @ forward)  # larger is nearer the camera
        polys.append(xy[tri[keep]])
        faces.append(tri[keep] + offsets[hemi])
        shade.append(0.5 + 0.5 * facing[keep])
        s = sulc[tri[keep]].mean(axis=1)
        grey.append(0.62 - 0.14 * np.tanh(s / 0.5))  # gyri light, sulci dark
        labels.append((hemi, xy[:, 0].mean(), xy[:, 1].min()))
        depth_keep = depth[keep]
        order = np.argsort(-depth_keep, kind="stable")  # farthest first
        polys[-1], faces[-1], shade[-1], grey[-1] = (
            polys[-1][order],
            faces[-1][order],
            shade[-1][order],
            grey[-1][order],
        )
    polys = np.concatenate(polys)
    pts = polys.reshape(-1, 2)
    pad = 0.02 * (pts.max(axis=0) - pts.min(axis=0))
    xlim = (pts[:, 0].min() - pad[0], pts[:, 0].max() + pad[0])
    ylim = (pts[:, 1].min() - pad[1], pts[:, 1].max() + pad[1])
    return (
        polys,
        np.concatenate(faces),
        np.concatenate(shade),
        np.concatenate(grey),
        xlim,
        ylim,
        labels if len(hemis) == 2 else [],
    )


@functools.lru_cache(maxsize=16)
def _face_id_image(space: str, view: str, mesh: str | None = None) -> np.ndarray:
    """Which face each pixel of a view shows: int image (rows top to bottom), -1 for none.

    The camera-facing faces are painted back to front once, each in a colour that encodes its
    position in :func:`_view_geometry`'s order, without antialiasing; decoding the pixels gives
    a face-index image with correct occlusion. Each map then only looks colours up in it, which
    takes milliseconds instead of drawing ~50,000 polygons.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    polys, *_, xlim, ylim, _labels = _view_geometry(space, view, mesh)
    width_mm, height_mm = xlim[1] - xlim[0], ylim[1] - ylim[0]
    height = round(height_mm * _PX_PER_MM)
    width = round(width_mm * _PX_PER_MM)
    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    fig.patch.set_facecolor((1.0, 1.0, 1.0))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    index = np.arange(len(polys))
    code = np.stack([(index >> 16) & 255, (index >> 8) & 255, index & 255], axis=1) / 255.0
    ax.add_collection(
        PolyCollection(polys, facecolors=code, edgecolors=code, linewidths=0.4, antialiased=False)
    )
    canvas.draw()
    buf = np.asarray(canvas.buffer_rgba())[..., :3].astype(np.int64)
    ids = (buf[..., 0] << 16) | (buf[..., 1] << 8) | buf[..., 2]
    ids[ids >= len(polys)] = -1  # white background (and nothing else) decodes out of range
    return ids


def _cache_dir() -> Path | None:
    """Folder of the on-disk render cache (``$ALIGNMENT_CACHE_DIR``, default
    ``~/.cache/alignment``); None when the variable is set empty (no disk cache)."""
    value = os.environ.get("ALIGNMENT_CACHE_DIR")
    if value is None:
        return Path.home() / ".cache" / "alignment"
    return Path(value) if value else None


def _mesh_identity(space: str, mesh: str | None) -> str:
    """What a cached render depends on: the surface files (or nilearn's version) and the code."""
    if mesh is None:
        import nilearn

        source = f"nilearn-{nilearn.__version__}"
    else:
        surf = _surf_dir(mesh)
        stats = [(surf / f).stat() for f in ("lh.inflated", "rh.inflated")]
        source = f"{surf.resolve()}:" + ",".join(f"{st.st_size}-{st.st_mtime_ns}" for st in stats)
    return f"{_RENDER_VERSION}|{matplotlib.__version__}|{_PX_PER_MM}|{space}|{source}"


@functools.lru_cache(maxsize=16)
def _view_render(space: str, view: str, mesh: str | None = None) -> dict[str, np.ndarray]:
    """Everything a map of one view needs, read from the disk cache when there.

    Loading the mesh and painting the face-index image cost seconds per process; every report
    job would pay them again. The cache entry's name hashes :func:`_mesh_identity`, so a new
    mesh, renderer or matplotlib version renders afresh. Written atomically (parallel jobs).
    """
    folder = _cache_dir()
    path = None
    if folder is not None:
        digest = hashlib.sha1(f"{_mesh_identity(space, mesh)}|{view}".encode()).hexdigest()[:16]
        path = folder / "brainmaps" / f"{space}-{view.replace(' ', '-')}-{digest}.npz"
        if path.exists():
            try:
                with np.load(path) as z:
                    return {k: z[k] for k in z.files}
            except (OSError, ValueError, zipfile.BadZipFile):
                pass  # a damaged entry is rendered again below
    _polys, faces, shade, grey, xlim, ylim, labels = _view_geometry(space, view, mesh)
    surface = _mesh(space, mesh)
    out = {
        "faces": faces,
        "shade": shade,
        "grey": grey,
        "xlim": np.asarray(xlim, dtype=float),
        "ylim": np.asarray(ylim, dtype=float),
        "label_names": np.asarray([name for name, _x, _y in labels], dtype=str),
        "label_xy": np.asarray([(x, y) for _n, x, y in labels], dtype=float).reshape(-1, 2),
        "n_vertices": np.asarray([surface[h][0].shape[0] for h in HEMIS], dtype=np.int64),
        "ids": _face_id_image(space, view, mesh).astype(np.int32),
    }
    if path is not None:
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **out)
        except OSError:
            pass  # a read-only home only costs the time
    return out


def _vertex_array(values, hemi, vertex, space: str, mesh: str | None = None) -> np.ndarray:
    """Scatter per-voxel values into one NaN-filled array over [left, right] mesh vertices."""
    n_left, n_right = (int(n) for n in _view_render(space, "ventral", mesh)["n_vertices"])
    values = np.asarray(values, dtype=float).ravel()
    hemi = np.asarray(hemi).astype(str).ravel()
    vertex = np.asarray(vertex).ravel()
    if not (values.size == hemi.size == vertex.size):
        raise ValueError(
            f"values, hemi and vertex must have one entry per voxel; got {values.size}, "
            f"{hemi.size} and {vertex.size}"
        )
    bad = sorted(set(np.unique(hemi).tolist()) - set(HEMIS))
    if bad:
        raise ValueError(f"hemi must be 'left' or 'right'; got {bad}")
    integral = np.issubdtype(vertex.dtype, np.integer)
    if vertex.size and not integral and not np.all(np.equal(np.mod(vertex, 1), 0)):
        raise ValueError("vertex must hold integer vertex indices")
    vertex = vertex.astype(np.int64)
    size = np.where(hemi == "left", n_left, n_right)
    if vertex.size and ((vertex < 0) | (vertex >= size)).any():
        raise ValueError(
            f"vertex indices out of range for {space} ({n_left} left, {n_right} right vertices)"
        )
    full = np.full(n_left + n_right, np.nan)
    full[np.where(hemi == "left", vertex, vertex + n_left)] = values
    return full


def _face_values(full: np.ndarray, faces: np.ndarray, categorical: bool) -> np.ndarray:
    """One value per face: the mean of its vertices with data (first one for categories).

    A face with any vertex carrying data is coloured, so isolated vertices stay visible.
    """
    v = full[faces]
    has = np.isfinite(v)
    if categorical:
        first = np.argmax(has, axis=1)
        out = v[np.arange(v.shape[0]), first]
    else:
        count = has.sum(axis=1)
        total = np.where(has, v, 0.0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = total / count
    out[~has.any(axis=1)] = np.nan
    return out


def _categories(values: np.ndarray, categorical_labels) -> tuple[list, list[str]]:
    """Codes and their labels, in code order."""
    if isinstance(categorical_labels, Mapping):
        codes = list(categorical_labels)
        labels = [str(categorical_labels[c]) for c in codes]
    else:
        labels = [str(x) for x in categorical_labels]
        codes = list(range(len(labels)))
    present = set(np.unique(values[np.isfinite(values)]).tolist())
    unknown = sorted(present - {float(c) for c in codes})
    if unknown:
        raise ValueError(f"values {unknown[:5]} have no entry in categorical_labels")
    return codes, labels


def plot_surface_map(
    values,
    hemi,
    vertex,
    *,
    space: str = "fsaverage5",
    title: str = "",
    cmap="viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    categorical_labels: Mapping | Sequence[str] | None = None,
    colorbar_label: str = "",
    views: Sequence[str] = (*_GRID_VIEWS, "ventral"),
    mesh: str | None = None,
) -> Figure:
    """Draw per-vertex values on the inflated surface: lateral, medial and ventral views.

    Parameters
    ----------
    values : array-like, shape (n_voxels,)
        One value per voxel; NaN voxels are shown as background, like vertices without data.
    hemi : array-like of str, shape (n_voxels,)
        ``"left"`` or ``"right"`` per voxel.
    vertex : array-like of int, shape (n_voxels,)
        Vertex index into that hemisphere's mesh.
    space : str
        Surface space: ``"fsaverage5"`` (shipped offline by nilearn), ``"fsaverage6"`` or
        ``"fsaverage"`` (read from ``mesh``).
    title : str
        Figure title.
    cmap : str or Colormap
        Colour map (sampled at the categories for a categorical map).
    vmin, vmax : float, optional
        Colour limits; default to the 2nd and 98th percentiles of the finite values. A colour
        bar extends with arrows where data lie outside them.
    categorical_labels : mapping of code to label, or sequence of labels, optional
        Draw a categorical map: ``values`` hold codes (the keys, or positions 0..n-1 in the
        sequence) and the figure shows a legend (a discrete colour bar beyond 12 categories).
    colorbar_label : str
        Label of the colour bar.
    views : sequence of str
        Subset of ``"left lateral", "right lateral", "left medial", "right medial",
        "ventral"``; by default all five (four in a 2 x 2 grid, ventral on the right).
    mesh : str, optional
        FreeSurfer subject folder (or its ``surf/``) with ``{lh,rh}.inflated`` (and ``.sulc``),
        for surfaces nilearn does not ship; never downloaded.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per view plus one colour-bar axes (none for a categorical map with a legend).
    """
    unknown = [v for v in views if v not in _VIEWS]
    if unknown or not views:
        raise ValueError(f"unknown view(s) {unknown}; choose from {list(_VIEWS)}")
    full = _vertex_array(values, hemi, vertex, space, mesh)
    categorical = categorical_labels is not None
    cmap = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
    finite = full[np.isfinite(full)]

    if categorical:
        codes, labels = _categories(full, categorical_labels)
        n_cat = len(codes)
        palette = [cmap(x) for x in (np.linspace(0, 1, n_cat) if n_cat > 1 else [0.5])]
        code_values = np.asarray([float(c) for c in codes])
        code_order = np.argsort(code_values, kind="stable")
        sorted_codes = code_values[code_order]
        norm = None
    else:
        lo = np.nanpercentile(finite, 2) if finite.size else 0.0
        hi = np.nanpercentile(finite, 98) if finite.size else 1.0
        vmin = float(lo if vmin is None else vmin)
        vmax = float(hi if vmax is None else vmax)
        if not vmax > vmin:
            vmax = vmin + (abs(vmin) * 1e-3 or 1e-3)
        norm = mcolors.Normalize(vmin, vmax, clip=True)

    # layout: 2 x 2 grid of hemisphere views (+ ventral column), title row, colour-bar row
    grid = [v for v in views if v in _GRID_VIEWS]
    ventral = "ventral" in views
    n_cols = 2 if len(grid) > 1 else max(len(grid), 0)
    n_rows = int(np.ceil(len(grid) / 2)) if grid else 1
    width_ratios = [1.5] * n_cols + ([1.67 * n_rows / 2] if ventral else [])
    row_h = 1.45  # inches per row of hemisphere views
    fig_h = row_h * (n_rows + 0.08 * (n_rows - 1)) + 1.25
    fig_w = row_h * sum(width_ratios) * 1.06 + 0.2
    fig = Figure(figsize=(fig_w, fig_h))
    gs = fig.add_gridspec(
        n_rows,
        len(width_ratios),
        width_ratios=width_ratios,
        left=0.01,
        right=0.99,
        top=1 - 0.45 / fig_h,
        bottom=0.8 / fig_h,
        wspace=0.02,
        hspace=0.08,
    )
    slots = [(i // 2, i % 2) for i in range(len(grid))]
    placed = list(zip(grid, [gs[r, c] for r, c in slots], strict=True))
    if ventral:
        placed.append(("ventral", gs[:, n_cols]))

    for view, spec in placed:
        ax = fig.add_subplot(spec)
        render = _view_render(space, view, mesh)
        faces, shade, grey, ids = render["faces"], render["shade"], render["grey"], render["ids"]
        xlim, ylim = tuple(render["xlim"]), tuple(render["ylim"])
        fv = _face_values(full, faces, categorical)
        rgb = np.repeat(grey[:, None], 3, axis=1)
        has = np.isfinite(fv)
        if has.any():
            if categorical:
                idx = np.searchsorted(sorted_codes, fv[has])
                rgb[has] = np.asarray(palette)[code_order[idx], :3]
            else:
                rgb[has] = cmap(norm(fv[has]))[:, :3]
        rgb *= shade[:, None]
        image = np.zeros((*ids.shape, 4))
        inside = ids >= 0
        image[inside, :3] = rgb[ids[inside]]
        image[inside, 3] = 1.0
        ax.imshow(image, extent=(*xlim, *ylim), origin="upper", interpolation="antialiased")
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal")
        ax.set_axis_off()
        ax.text(
            0.5, 0.0, view, transform=ax.transAxes, ha="center", va="top", fontsize=8,
            color="0.35",
        )  # fmt: skip
        for name, x in zip(render["label_names"], render["label_xy"][:, 0], strict=True):
            ax.text(
                x, ylim[1], str(name)[0].upper(), ha="center", va="top", fontsize=9, color="0.3"
            )

    if title:
        fig.suptitle(title, fontsize=10.5, y=1 - 0.08 / fig_h, va="top")

    bottom = 0.18 / fig_h
    height = 0.16 / fig_h
    if categorical and n_cat <= _MAX_LEGEND_ENTRIES:
        handles = [Patch(facecolor=palette[i], label=labels[i]) for i in range(n_cat)]
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=min(n_cat, 6),
            fontsize=8,
            frameon=False,
            bbox_to_anchor=(0.5, 0.0),
            title=colorbar_label or None,
            title_fontsize=8,
            handlelength=1.2,
            columnspacing=1.0,
        )
    elif categorical:
        cax = fig.add_axes((0.2, bottom + 0.1 / fig_h, 0.6, height))
        listed = mcolors.ListedColormap(palette)
        bounds = np.arange(n_cat + 1) - 0.5
        cb = fig.colorbar(
            ScalarMappable(norm=mcolors.BoundaryNorm(bounds, n_cat), cmap=listed),
            cax=cax,
            orientation="horizontal",
        )
        step = int(np.ceil(n_cat / 12))
        cb.set_ticks(np.arange(0, n_cat, step))
        cb.set_ticklabels(labels[::step], fontsize=7)
        if colorbar_label:
            cb.set_label(colorbar_label, fontsize=8)
    else:
        cax = fig.add_axes((0.3, bottom + 0.25 / fig_h, 0.4, height))
        below = finite.size and finite.min() < vmin
        above = finite.size and finite.max() > vmax
        extend = {(0, 0): "neither", (1, 0): "min", (0, 1): "max", (1, 1): "both"}[
            (int(bool(below)), int(bool(above)))
        ]
        cb = fig.colorbar(
            ScalarMappable(norm=norm, cmap=cmap),
            cax=cax,
            orientation="horizontal",
            extend=extend,
        )
        cb.ax.tick_params(labelsize=7)
        if colorbar_label:
            cb.set_label(colorbar_label, fontsize=8)
    if not finite.size:
        fig.text(0.5, 0.5, "no vertex to show", ha="center", va="center", color="0.3")
    return fig


def figure_to_base64_png(fig: Figure, dpi: int = 100, close: bool = True) -> str:
    """PNG bytes of ``fig``, base64-encoded as ASCII (for ``data:image/png;base64,...``).

    Figures from this package are built without pyplot (no global state, no backend needed);
    a pyplot figure is closed afterwards unless ``close=False``.
    """
    buf = _io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    finally:
        if close and getattr(fig.canvas, "manager", None) is not None:
            import matplotlib.pyplot as plt  # only pyplot-managed figures need closing

            plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------------------------
# Volumes, ROI-level data, and the choice between them


def _palette(n: int, cmap) -> list:
    cmap = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
    return [cmap(x) for x in (np.linspace(0, 1, n) if n > 1 else [0.5])]


def plot_volume_map(
    values,
    ijk,
    affine,
    grid_shape,
    *,
    space: str = "MNI152",
    title: str = "",
    cmap="viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    categorical_labels: Mapping | Sequence[str] | None = None,
    colorbar_label: str = "",
    background: str | None = None,
) -> Figure:
    """Per-voxel values in a volume: orthogonal slices and, in MNI152, a glass brain.

    Parameters
    ----------
    values : array-like, shape (n_voxels,)
        One value per voxel; NaN voxels are not drawn.
    ijk : array-like of int, shape (n_voxels, 3)
        Voxel indices into the grid.
    affine : array-like, shape (4, 4) or (16,)
        Voxel-to-world matrix of the grid.
    grid_shape : sequence of 3 int
        Shape of the grid.
    space : {"MNI152", "native"}
        MNI152 maps are drawn on nilearn's MNI152 template (shipped offline) with a glass
        brain; native maps on ``background`` (an anatomical image on the same world
        coordinates) or on no background.
    title, cmap, vmin, vmax, categorical_labels, colorbar_label
        As in :func:`plot_surface_map`; categories are drawn as codes 1..n with a legend.
    background : str, optional
        Anatomical image for native volumes.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import nibabel as nib
    from nilearn import plotting

    values = np.asarray(values, dtype=float).ravel()
    ijk = np.asarray(ijk, dtype=np.int64).reshape(-1, 3)
    if ijk.shape[0] != values.size:
        raise ValueError(f"{values.size} values for {ijk.shape[0]} voxel indices")
    grid = np.zeros(tuple(int(n) for n in grid_shape), dtype=np.float32)
    finite = np.isfinite(values)
    categorical = categorical_labels is not None
    if categorical:
        codes, labels = _categories(values, categorical_labels)
        lookup = {float(c): i + 1 for i, c in enumerate(codes)}  # 0 stays "no data"
        shown = np.array([lookup[float(v)] for v in values[finite]], dtype=np.float32)
        palette = _palette(len(codes), cmap)
        cmap = mcolors.ListedColormap(palette)
        vmin, vmax = 0.5, len(codes) + 0.5
    else:
        shown = values[finite]
        if shown.size:
            vmin = float(np.nanpercentile(shown, 2) if vmin is None else vmin)
            vmax = float(np.nanpercentile(shown, 98) if vmax is None else vmax)
        vmin, vmax = (0.0, 1.0) if vmin is None or vmax is None else (vmin, vmax)
        if not vmax > vmin:
            vmax = vmin + 1e-3
        shown = np.clip(shown, vmin, vmax)
        shown = np.where(shown == 0, 1e-6, shown)  # 0 is "no data" in the image
    grid[tuple(ijk[finite].T)] = shown
    img = nib.Nifti1Image(grid, np.asarray(affine, dtype=float).reshape(4, 4))
    mni = space == "MNI152"
    fig = Figure(figsize=(10.0 if mni else 7.0, 3.4))
    if mni:
        from nilearn.datasets import load_mni152_template

        bg = load_mni152_template(resolution=2)  # shipped with nilearn, nothing downloaded
    else:
        bg = background
    axes = fig.add_axes((0.0, 0.12, 0.62 if mni else 1.0, 0.76))
    common = {"cmap": cmap, "vmin": vmin, "vmax": vmax, "colorbar": not categorical,
              "threshold": 1e-9, "figure": fig, "annotate": True}  # fmt: skip
    if not finite.any():
        axes.set_axis_off()
        axes.text(0.5, 0.5, "no voxel to show", ha="center", va="center", color="0.3")
    else:
        plotting.plot_stat_map(
            img, bg_img=bg, axes=axes, display_mode="ortho", black_bg=False, **common
        )
        if mni:
            glass = fig.add_axes((0.63, 0.12, 0.37, 0.76))
            plotting.plot_glass_brain(img, axes=glass, display_mode="z", plot_abs=False, **common)
    if title:
        fig.suptitle(title, fontsize=10.5)
    if categorical:
        handles = [Patch(facecolor=palette[i], label=labels[i]) for i in range(len(labels))]
        fig.legend(
            handles=handles[:_MAX_LEGEND_ENTRIES],
            loc="lower center",
            ncol=6,
            fontsize=8,
            frameon=False,
            title=colorbar_label or None,
            title_fontsize=8,
        )
    elif colorbar_label:
        fig.text(0.5, 0.02, colorbar_label, ha="center", fontsize=8, color="0.3")
    return fig


def plot_region_chart(
    values,
    regions,
    *,
    title: str = "",
    cmap="viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    categorical_labels: Mapping | Sequence[str] | None = None,
    colorbar_label: str = "",
) -> Figure:
    """One bar per region, for ROI-level data (a few regions, no map to draw on).

    Parameters
    ----------
    values : array-like, shape (n_voxels,)
        One value per voxel (or per region for ROI-level data).
    regions : array-like of str, shape (n_voxels,)
        Region of each voxel. Regions with several voxels show their mean (categories: the
        most frequent one) and the voxel count; ``"none"`` is left out.
    title, cmap, vmin, vmax, categorical_labels, colorbar_label
        As in :func:`plot_surface_map`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    values = np.asarray(values, dtype=float).ravel()
    regions = np.asarray(regions).astype(str).ravel()
    if regions.size != values.size:
        raise ValueError(f"{values.size} values for {regions.size} region labels")
    names = [r for r in dict.fromkeys(regions.tolist()) if r != dims.NO_ROI] or [dims.NO_ROI]
    categorical = categorical_labels is not None
    if categorical:
        codes, labels = _categories(values, categorical_labels)
        palette = _palette(len(codes), cmap)
    rows = []
    for name in names:
        v = values[(regions == name) & np.isfinite(values)]
        n = int((regions == name).sum())
        if categorical:
            code = float(np.bincount(v.astype(int)).argmax()) if v.size else np.nan
            rows.append((name, code, n))
        else:
            rows.append((name, float(v.mean()) if v.size else np.nan, n))
    height = 0.9 + 0.28 * len(rows)
    fig = Figure(figsize=(6.4, height))
    ax = fig.add_axes((0.28, 0.6 / height + 0.05, 0.62, 1 - 1.0 / height - 0.05))
    y = np.arange(len(rows))[::-1]
    if categorical:
        index = {float(c): i for i, c in enumerate(codes)}
        colours = [
            palette[index[c]] if np.isfinite(c) else (0.85, 0.85, 0.85, 1) for _, c, _ in rows
        ]
        ax.barh(y, [1.0 if np.isfinite(c) else 0.0 for _, c, _ in rows], color=colours)
        for yy, (_, c, _), colour in zip(y, rows, colours, strict=True):
            text = labels[index[c]] if np.isfinite(c) else "not significant"
            dark = np.dot(colour[:3], (0.299, 0.587, 0.114)) < 0.5
            ax.text(0.02, yy, text, va="center", fontsize=8, color="white" if dark else "black")
        ax.set_xticks([])
        ax.set_xlabel(colorbar_label, fontsize=8)
    else:
        cm = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
        vals = np.array([v for _, v, _ in rows])
        lo = float(np.nanmin(vals)) if vmin is None and np.isfinite(vals).any() else (vmin or 0.0)
        hi = float(np.nanmax(vals)) if vmax is None and np.isfinite(vals).any() else (vmax or 1.0)
        norm = mcolors.Normalize(min(lo, 0.0), hi if hi > lo else lo + 1e-3)
        ax.barh(
            y, np.nan_to_num(vals), color=[cm(norm(v)) if np.isfinite(v) else "0.85" for v in vals]
        )
        ax.axvline(0, color="0.3", lw=0.8)
        for yy, v in zip(y, vals, strict=True):
            if not np.isfinite(v):
                ax.text(0.0, yy, " no value (not significant or no data)", va="center",
                        fontsize=7, color="0.4")  # fmt: skip
        ax.set_xlabel(colorbar_label, fontsize=8)
        ax.tick_params(labelsize=7)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{n} ({k})" if k > 1 else n for n, _, k in rows], fontsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def map_kind(scores: xr.Dataset) -> str | None:
    """How a Scores (or Responses) object can be pictured: ``"surface"``, ``"volume"``,
    ``"regions"`` or None, from its ``space`` attr, voxel coordinates and provenance."""
    space = str(scores.attrs.get("space", "fsaverage5"))
    coords = set(scores.coords)
    if space in SURFACE_SPACES and {dims.HEMI, dims.VERTEX} <= coords:
        hemis = set(np.asarray(scores[dims.HEMI].values).astype(str).tolist())
        if hemis <= set(HEMIS) and (space in _OFFLINE_SPACES or scores.attrs.get("mesh")):
            return "surface"
    if {"i", "j", "k"} <= coords and "affine" in scores.attrs and "grid_shape" in scores.attrs:
        return "volume"
    # ROI-level data, or native voxels with ROI labels and no grid (BOLD5000, Pereira)
    if (
        space in ("roi", "native")
        and dims.ROI in coords
        and (np.asarray(scores[dims.ROI].values).astype(str) != dims.NO_ROI).any()
    ):
        return "regions"
    return None


def plot_brain_map(values, scores: xr.Dataset, **kwargs) -> Figure:
    """Draw per-voxel ``values`` of ``scores`` as its space allows (see :func:`map_kind`).

    Surfaces go to :func:`plot_surface_map` (fsaverage5, or fsaverage6/fsaverage with the
    ``mesh`` attr), volumes with ``i, j, k`` and an ``affine`` to :func:`plot_volume_map`, and
    ROI-level data to :func:`plot_region_chart`. ``kwargs``: title, cmap, vmin, vmax,
    categorical_labels, colorbar_label.
    """
    kind = map_kind(scores)
    if kind == "surface":
        return plot_surface_map(
            values,
            scores[dims.HEMI].values,
            scores[dims.VERTEX].values,
            space=str(scores.attrs.get("space", "fsaverage5")),
            mesh=scores.attrs.get("mesh") or None,
            **kwargs,
        )
    if kind == "volume":
        ijk = np.stack([scores[c].values for c in ("i", "j", "k")], axis=1)
        return plot_volume_map(
            values,
            ijk,
            np.asarray(scores.attrs["affine"], dtype=float),
            np.asarray(scores.attrs["grid_shape"]).astype(int).tolist(),
            space="MNI152" if scores.attrs.get("space") == "MNI152" else "native",
            background=scores.attrs.get("anat") or None,
            **kwargs,
        )
    if kind == "regions":
        return plot_region_chart(values, scores[dims.ROI].values, **kwargs)
    raise InputError(
        f"Scores {_identity(scores)}: nothing to draw on in space {scores.attrs.get('space')!r} "
        "(no surface vertices, volume grid or ROI labels)"
    )
