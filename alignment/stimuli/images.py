"""Image stimulus sets: the procedural demo images and reading an image table.

The demo images are simple objects of a few categories (faces, houses, stars, bars) drawn at
varying positions, sizes and colours on a textured background, so that a position-sensitive
("retinotopic") and a category-selective response can be planted on top of model features.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from alignment.io import InputError, require_file

CATEGORIES = ("face", "house", "star", "bar")


def _draw_object(draw: ImageDraw.ImageDraw, category: str, cx: float, cy: float, r: float, colour):
    if category == "face":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        eye = max(1.0, r / 5)
        for dx in (-r / 2.5, r / 2.5):
            draw.ellipse([cx + dx - eye, cy - r / 3 - eye, cx + dx + eye, cy - r / 3 + eye], fill=0)
        draw.line(
            [cx - r / 2, cy + r / 2.5, cx + r / 2, cy + r / 2.5], fill=0, width=max(1, int(r / 6))
        )
    elif category == "house":
        draw.rectangle([cx - r * 0.8, cy - r * 0.1, cx + r * 0.8, cy + r], fill=colour)
        draw.polygon([(cx - r, cy - r * 0.1), (cx + r, cy - r * 0.1), (cx, cy - r)], fill=colour)
        draw.rectangle([cx - r / 5, cy + r / 3, cx + r / 5, cy + r], fill=0)
    elif category == "star":
        angles = np.linspace(0, 2 * np.pi, 11)[:-1] - np.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        draw.polygon(
            [(cx + a * np.cos(t), cy + a * np.sin(t)) for a, t in zip(radii, angles, strict=True)],
            fill=colour,
        )
    elif category == "bar":
        draw.rectangle([cx - r, cy - r / 4, cx + r, cy + r / 4], fill=colour)
    else:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")


def generate_images(
    n_images: int, image_size: int = 64, categories=CATEGORIES, random_state: int = 0
) -> tuple[list[Image.Image], pd.DataFrame]:
    """Draw procedural object images with known category, position and size.

    Parameters
    ----------
    n_images : int
        Number of images; categories are balanced (round-robin) and shuffled.
    image_size : int
        Width and height in pixels.
    categories : sequence of str
        Object categories, a subset of :data:`CATEGORIES`.
    random_state : int
        Seed: the same seed draws the same images.

    Returns
    -------
    images : list of PIL.Image
        RGB images.
    table : DataFrame
        One row per image: stimulus_id, category, x, y (object centre as a fraction of the
        width/height, origin top-left), size (radius as a fraction of the width), quadrant.
    """
    rng = np.random.default_rng(random_state)
    cats = np.array([categories[i % len(categories)] for i in range(n_images)])
    rng.shuffle(cats)
    images, rows = [], []
    for i, category in enumerate(cats):
        background = rng.integers(60, 140)
        noise = rng.normal(0, 12, (image_size, image_size, 3))
        pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
        img = Image.fromarray(pixels, "RGB")
        r = rng.uniform(0.12, 0.22) * image_size
        cx, cy = rng.uniform(r, image_size - r, size=2)
        colour = tuple(int(c) for c in rng.integers(120, 256, size=3))
        _draw_object(ImageDraw.Draw(img), str(category), cx, cy, r, colour)
        images.append(img)
        x, y = cx / image_size, cy / image_size
        quadrant = ("upper" if y < 0.5 else "lower") + "-" + ("left" if x < 0.5 else "right")
        rows.append(
            {
                "stimulus_id": f"img{i:04d}",
                "category": str(category),
                "x": x,
                "y": y,
                "size": r / image_size,
                "quadrant": quadrant,
            }
        )
    return images, pd.DataFrame(rows)


def read_image_table(path: str | Path) -> pd.DataFrame:
    """Read a stimulus table (TSV or CSV) with columns ``stimulus_id`` and ``path``.

    Relative image paths are resolved against the table's folder. Raises
    :class:`~alignment.io.InputError` naming the table for a missing column, duplicate ids or a
    missing image file.
    """
    path = require_file(path, "stimulus table")
    table = pd.read_csv(
        path, sep="\t" if path.suffix in (".tsv", ".txt") else ",", dtype={"stimulus_id": str}
    )
    missing = {"stimulus_id", "path"} - set(table.columns)
    if missing:
        raise InputError(
            f"{path}: missing column(s) {sorted(missing)}; found {list(table.columns)}"
        )
    duplicated = table["stimulus_id"][table["stimulus_id"].duplicated()].tolist()
    if duplicated:
        raise InputError(f"{path}: duplicate stimulus_id(s) {duplicated[:5]}")
    table["path"] = [str(p if Path(p).is_absolute() else path.parent / p) for p in table["path"]]
    absent = [p for p in table["path"] if not Path(split_reference(p)[0]).exists()]
    if absent:
        raise InputError(f"{path}: {len(absent)} image file(s) missing, first: {absent[0]}")
    return table


_REFERENCE = re.compile(r"^(?P<file>.+\.(?:hdf5|h5))#(?P<key>[^\[]+)\[(?P<index>\d+)\]$")


def split_reference(path: str) -> tuple[str, str | None, int | None]:
    """``file.hdf5#key[index]`` -> (file, key, index); a plain path -> (path, None, None).

    Image tables may point into an HDF5 array of images (e.g. NSD's
    ``nsd_stimuli.hdf5#imgBrick[2950]``, 0-based), so no image is ever copied out.
    """
    m = _REFERENCE.match(str(path))
    if m is None:
        return str(path), None, None
    return m["file"], m["key"], int(m["index"])


def image_reference(file: str | Path, key: str, index: int) -> str:
    """The table entry for image ``index`` (0-based) of array ``key`` in an HDF5 file."""
    return f"{file}#{key}[{int(index)}]"


class _HDF5Images:
    """Open HDF5 files, one handle per file, for reading single images lazily."""

    def __init__(self):
        self._files = {}

    def read(self, file: str, key: str, index: int) -> Image.Image:
        import h5py

        if file not in self._files:
            try:
                self._files[file] = h5py.File(file, "r")
            except OSError as err:
                raise InputError(f"{file}: cannot be read as HDF5 ({err})") from err
        fh = self._files[file]
        if key not in fh:
            raise InputError(f"{file}: no dataset {key!r} (image reference #{key}[{index}])")
        arr = fh[key]
        if index >= arr.shape[0]:
            raise InputError(f"{file}: image {index} out of range, {key} holds {arr.shape[0]}")
        pixels = np.asarray(arr[index])
        if pixels.ndim == 3 and pixels.shape[0] == 3 and pixels.shape[-1] != 3:
            pixels = np.moveaxis(pixels, 0, -1)  # (3, H, W) -> (H, W, 3)
        if pixels.dtype != np.uint8:
            pixels = np.clip(pixels, 0, 255).astype(np.uint8)
        return Image.fromarray(pixels).convert("RGB")


def _open_image(path: str, hdf5: _HDF5Images) -> Image.Image:
    file, key, index = split_reference(path)
    if key is not None:
        return hdf5.read(file, key, index)
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError as err:
        raise InputError(f"{path}: cannot be read as an image ({err})") from err


class LazyImages(Sequence):
    """Images opened on access: ``images[i]`` is a PIL image, ``images[a:b]`` a list of them.

    For stimulus sets too large to hold in memory at once (NSD: 10,000 images per subject).
    """

    def __init__(self, paths):
        self.paths = [str(p) for p in paths]
        self._hdf5 = _HDF5Images()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return [_open_image(p, self._hdf5) for p in self.paths[item]]
        return _open_image(self.paths[item], self._hdf5)


#: Above this many images, :func:`load_images` opens them lazily.
LAZY_ABOVE = 2000


def load_images(paths, lazy: bool | None = None):
    """Open images as RGB, naming the file that cannot be read.

    Paths may be image files or HDF5 references (``file.hdf5#key[index]``). With ``lazy``
    (default: more than :data:`LAZY_ABOVE` images) a :class:`LazyImages` sequence is returned,
    whose slices are lists; otherwise a list.
    """
    paths = [str(p) for p in paths]
    if lazy is None:
        lazy = len(paths) > LAZY_ABOVE
    if lazy:
        return LazyImages(paths)
    return LazyImages(paths)[:]
