"""Low-level (nuisance) feature sets: a model kind (``kind: lowlevel``) with no network.

They go through the features verb, store and cache key like any model, so a banded encoder can
pair an LLM layer with them ("layer 8 beyond word rate"):

- **narratives** (one row per word, resampled to TRs by the Lanczos path like every word
  feature): ``word_rate`` (1 per word, so its Lanczos sum is the number of words per TR) and
  ``phoneme_rate`` (the phonemes of each word). Phonemes come from the phone tier (``phone`` or
  ``phones``, any case) of the TextGrids named by ``phones`` (a path, ``{run}`` is replaced by
  the run label); without it, a documented proxy: the letters of the word (alphabetic
  characters), which track the phoneme count of English words closely. The store's
  ``phoneme_source`` attribute says which.
- **images**: ``luminance`` (mean of the ITU-R 601 luma in [0, 1]), ``contrast`` (RMS
  contrast: the standard deviation of that luma) and ``spatial_frequency``: the energy of the
  luma in ``n_bands`` bands of radial frequency (octaves below Nyquist, in cycles per pixel,
  the lowest band reaching down to the first non-zero frequency; Parseval-normalised, so the
  bands sum to the variance of the image, the square of its RMS contrast).

Each descriptor group is one layer; unit names are stored in the ``unit_name`` coordinate.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from pathlib import Path

import numpy as np
import pandas as pd

from alignment.io import InputError

TEXT_LAYERS = ("word_rate", "phoneme_rate")
IMAGE_LAYERS = ("luminance", "contrast", "spatial_frequency")
LETTERS_PROXY = "letters (proxy: alphabetic characters per word; no phone tier given)"
PHONE_TIERS = ("phone", "phones")


def band_edges(n_bands: int) -> np.ndarray:
    """Edges (cycles per pixel) of ``n_bands`` bands: octaves ending at Nyquist (0.5), the
    lowest band reaching down to (not including) 0, e.g. 0, 0.125, 0.25, 0.5 for 3 bands."""
    if not isinstance(n_bands, int | np.integer) or n_bands < 1:
        raise InputError(f"lowlevel: n_bands must be a positive integer, got {n_bands!r}")
    edges = 0.5 / 2.0 ** np.arange(n_bands, -1, -1)
    edges[0] = 0.0
    return edges


def band_names(n_bands: int) -> list[str]:
    """Unit names of the spatial-frequency bands, e.g. ``sf_0.25-0.5cpp``."""
    edges = band_edges(n_bands)
    return [f"sf_{a:.3g}-{b:.3g}cpp" for a, b in itertools.pairwise(edges)]


def image_descriptors(pixels: np.ndarray, n_bands: int = 4) -> dict[str, np.ndarray]:
    """Luminance, RMS contrast and spatial-frequency band energies of one image.

    Parameters
    ----------
    pixels : ndarray (height, width, 3) or (height, width)
        RGB or grey pixels, uint8 (0-255) or float in [0, 1].
    n_bands : int
        Bands of radial frequency (:func:`band_edges`): (0.25, 0.5], (0.125, 0.25]... cycles
        per pixel, the lowest one down to 0 (DC excluded).

    Returns
    -------
    dict with ``luminance`` (1,), ``contrast`` (1,) and ``spatial_frequency`` (n_bands,),
    lowest band first.
    """
    x = np.asarray(pixels, dtype=np.float64)
    if np.asarray(pixels).dtype == np.uint8:
        x = x / 255.0
    if x.ndim == 3:
        x = x[..., :3] @ np.array([0.299, 0.587, 0.114])  # ITU-R 601-2 luma, as PIL's "L"
    if x.ndim != 2:
        raise ValueError(f"an image must be (height, width[, 3]), got shape {np.shape(pixels)}")
    mean = x.mean()
    power = np.abs(np.fft.fft2(x - mean)) ** 2 / x.size**2  # sums to the variance (Parseval)
    fy = np.fft.fftfreq(x.shape[0])[:, None]
    fx = np.fft.fftfreq(x.shape[1])[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    edges = band_edges(n_bands)
    # the top band takes the corners above Nyquist (diagonal frequencies up to 0.707)
    upper = np.append(edges[1:-1], np.inf)
    lower = edges[:-1]
    bands = np.array(
        [power[(radius > lo) & (radius <= hi)].sum() for lo, hi in zip(lower, upper, strict=True)]
    )
    return {
        "luminance": np.array([mean]),
        "contrast": np.array([x.std()]),
        "spatial_frequency": bands,
    }


def _letters(word: str) -> int:
    return max(1, len(re.findall(r"[^\W\d_]", str(word))))


def _phone_tier(path: Path):
    from alignment.stimuli.narrative import SILENCE_LABELS, read_textgrid

    tiers = read_textgrid(path)
    names = [n for n in tiers if n.strip().lower() in PHONE_TIERS]
    if not names:
        raise InputError(f"{path}: no phone tier ('phone' or 'phones'); tiers: {list(tiers)}")
    table = tiers[names[0]]
    labels = table["label"].str.strip().str.lower()
    return table[~labels.isin(SILENCE_LABELS)]


def phone_files(pattern: str, runs) -> dict[str, Path]:
    """The TextGrid of every run (``{run}`` in ``pattern`` replaced by the run label)."""
    out = {}
    for run in dict.fromkeys(str(r) for r in runs):
        path = Path(str(pattern).replace("{run}", run))
        if not path.is_file():
            raise InputError(f"models: lowlevel phones: {path} (run {run!r}) does not exist")
        out[run] = path
    return out


def phoneme_counts(words: pd.DataFrame, pattern: str | None = None) -> tuple[np.ndarray, str]:
    """Phonemes of every word, and where they come from.

    With ``pattern`` (TextGrids with a phone tier, ``{run}`` replaced by the run label), a word
    gets the phones whose midpoint falls within its [onset, offset) interval; else the letter
    proxy (:data:`LETTERS_PROXY`).
    """
    if not pattern:
        return np.array([_letters(w) for w in words["word"]], dtype=np.float32), LETTERS_PROXY
    counts = np.zeros(len(words), dtype=np.float32)
    files = phone_files(pattern, words["run"])
    runs = words["run"].astype(str).to_numpy()
    for run, path in files.items():
        phones = _phone_tier(path)
        mid = ((phones["onset"] + phones["offset"]) / 2).to_numpy()
        rows = np.flatnonzero(runs == run)
        on, off = words["onset"].to_numpy()[rows], words["offset"].to_numpy()[rows]
        counts[rows] = [((mid >= a) & (mid < b)).sum() for a, b in zip(on, off, strict=True)]
    return counts, f"phone tier of {pattern}"


def text_features(words: pd.DataFrame, pattern: str | None = None) -> tuple[dict, dict]:
    """Per-word ``word_rate`` and ``phoneme_rate`` layers (rows = words) and provenance."""
    counts, source = phoneme_counts(words, pattern)
    layers = {
        "word_rate": np.ones((len(words), 1), dtype=np.float32),
        "phoneme_rate": counts[:, None],
    }
    return layers, {"phoneme_source": source}


def files_digest(paths) -> str:
    """Content hash of files (a cache-key entry: the phone tiers change the numbers)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


def unit_names(layer: str, n_bands: int) -> list[str]:
    """Unit names of a low-level layer."""
    if layer == "spatial_frequency":
        return band_names(n_bands)
    return [layer]
