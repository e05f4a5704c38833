"""Attention maps of routing encoders overlaid on the stimulus images.

An attention map is one query's cross-attention over the token grid (rows, columns), summing
to 1; it is upsampled bilinearly to the image and drawn over it, so the reader sees where
each ROI's query looks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

__all__ = ["attention_maps", "head_attention_maps", "plot_attention_overlays", "upsample_map"]

PREFIX = "attention_"
HEAD_PREFIX = "head_attention_"


def attention_maps(ds: xr.Dataset, layer: str | None = None) -> dict[str, np.ndarray]:
    """Maps of an ``attention.nc`` Dataset: ``{"<hemi> <roi>": (stimuli, rows, columns)}``.

    Variables are named ``attention_<hemi>_<roi>`` by
    :meth:`alignment.encoders.routing.RoutingEncoder.interpret`; with a ``layer`` dimension,
    ``layer`` picks one (default: the last).
    """
    if "layer" in ds.dims:
        ds = ds.sel(layer=layer) if layer is not None else ds.isel(layer=-1)
    out = {}
    for name, var in ds.data_vars.items():
        if not str(name).startswith(PREFIX) or var.ndim != 3:
            continue
        hemi, _, roi = str(name)[len(PREFIX) :].partition("_")
        out[f"{hemi} {roi}"] = np.asarray(var.values, dtype=np.float32)
    return out


def head_attention_maps(
    ds: xr.Dataset, layer: str | None = None, position: bool = True, by_norm: bool = False
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Maps of the position-only heads (or the other heads) of an ``attention.nc`` Dataset.

    Reads the per-head variables ``head_attention_<hemi>_<roi>`` (stimulus, head, row,
    column) and the ``position_head`` coordinate written by
    :func:`alignment.encoders.routing.label_attention`, and averages the chosen heads.

    Parameters
    ----------
    ds : xarray.Dataset
    layer : str, optional
        With a ``layer`` dimension, the layer (default: the last).
    position : bool
        Average the position-only heads (True) or the others (False).
    by_norm : bool
        Weight each head, per image, by the norm of what it adds to the query's output
        (``head_norm_<hemi>_<roi>``), so heads the query barely uses count little; a plain
        mean where the norms are missing.

    Returns
    -------
    maps : dict
        ``{"<hemi> <roi>": (stimuli, rows, columns)}``; empty when the Dataset has no per-head
        maps or no head of the kind asked for.
    heads : list of int
        The heads averaged.
    """
    if "layer" in ds.dims:
        ds = ds.sel(layer=layer) if layer is not None else ds.isel(layer=-1)
    if "position_head" not in ds.coords:
        return {}, []
    chosen = np.flatnonzero(np.asarray(ds["position_head"].values, dtype=bool) == position)
    if not len(chosen):
        return {}, []
    out = {}
    for name, var in ds.data_vars.items():
        if not str(name).startswith(HEAD_PREFIX) or "head" not in var.dims:
            continue
        hemi, _, roi = str(name)[len(HEAD_PREFIX) :].partition("_")
        values = var.isel(head=chosen)
        norm_name = f"head_norm_{hemi}_{roi}"
        if by_norm and norm_name in ds and "head" in ds[norm_name].dims:
            w = ds[norm_name].isel(head=chosen)
            values = (values * w).sum("head") / w.sum("head").clip(min=1e-12)
        else:
            values = values.mean("head")
        out[f"{hemi} {roi}"] = np.asarray(values.values, dtype=np.float32)
    return out, [int(h) for h in chosen]


def upsample_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a (rows, columns) map to ``size`` = (height, width) pixels."""
    from PIL import Image

    img = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F")
    return np.asarray(img.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32)


def plot_attention_overlays(
    images: Sequence,
    maps: Mapping[str, np.ndarray],
    labels: Sequence[str] | None = None,
    title: str = "",
    alpha: float = 0.6,
) -> Figure:
    """One row per image: the image, then each query's attention drawn over it.

    Parameters
    ----------
    images : sequence of PIL.Image or None
        The stimuli (None draws the maps on a grey background).
    maps : mapping of query label to ndarray (n_images, rows, columns)
        Attention of each query for the same images, in order.
    labels : sequence of str, optional
        One caption per image (e.g. stimulus ids).
    title : str
    alpha : float
        Opacity of the attention layer.
    """
    names = list(maps)
    n = len(images)
    fig = Figure(figsize=(1.9 * (len(names) + 1), 1.9 * n + 0.5), layout="constrained")
    axes = fig.subplots(n, len(names) + 1, squeeze=False)
    for i, img in enumerate(images):
        arr = np.asarray(img.convert("RGB")) if img is not None else np.full((64, 64, 3), 200)
        size = arr.shape[:2]
        for j in range(len(names) + 1):
            ax = axes[i, j]
            ax.imshow(arr, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(labels[i] if labels is not None else f"image {i}", fontsize=8)
                if i == 0:
                    ax.set_title("image", fontsize=9)
                continue
            att = maps[names[j - 1]][i]
            # one scale per query (column): a diffuse map looks dim next to a focused one
            top = max(float(np.max(maps[names[j - 1]])), 1e-12)
            up = upsample_map(att / top, size)
            ax.imshow(up, cmap="inferno", alpha=alpha, vmin=0, vmax=1, interpolation="nearest")
            if i == 0:
                ax.set_title(names[j - 1], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
